"""`seed_los`, usable by path (`--config configs/seed_los.py`): the packaged `rismvdr.configs.seed_los` (`--config seed_los`)."""
from rismvdr.configs.seed_los import get_config  # noqa: F401
