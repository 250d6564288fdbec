"""`seed_refiner`, usable by path (`--config configs/seed_refiner.py`): the packaged
`rismvdr.configs.seed_refiner` (`--config seed_refiner`)."""
from rismvdr.configs.seed_refiner import get_config  # noqa: F401
