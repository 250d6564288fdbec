"""`seed`, usable by path (`--config configs/seed.py`): the packaged `rismvdr.configs.seed` (`--config seed`)."""
from rismvdr.configs.seed import get_config  # noqa: F401
