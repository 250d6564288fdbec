"""The default search space, usable by path (`--space configs/hpo_space.py`): the packaged
`rismvdr.configs.hpo_space` (`--space hpo_space`, the default). Copy that file to tune another space."""
from rismvdr.configs.hpo_space import get_space  # noqa: F401
