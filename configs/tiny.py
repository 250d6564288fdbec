"""`tiny`, usable by path (`--config configs/tiny.py`): the packaged `rismvdr.configs.tiny` (`--config tiny`)."""
from rismvdr.configs.tiny import get_config  # noqa: F401
