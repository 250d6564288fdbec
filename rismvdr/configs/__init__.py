"""Named configs shipped with the package, so `pip install rismvdr` is enough to train and tune.

Training configs (each module defines `get_config() -> TrainConfig`):

- `seed`: Stage 1 (backbone) of the shipped model of the `seed` scenario;
- `seed_refiner`: its Stage 2 (the SpectrumRefiner on the frozen backbone);
- `seed_los`: the `seed` backbone fine-tuned on the line-of-sight deployment `seed-los`;
- `tiny`: a seconds-long run for CI and smoke tests.

Search spaces (each module defines `get_space()`, see `rismvdr.hpo`): `hpo_space`, the default
of `rismvdr hpo --space`, and `hpo_space_beta0`, the same without `model.beta`.

`--config` and `--space` take one of these names or the path of a Python file defining the same
function; the checkout's `configs/*.py` files re-export these modules, so
`--config configs/seed.py` and `--config seed` run the same config.

>>> from rismvdr.configs import config_file, load_named_config
>>> config_file("tiny").name
'tiny.py'
>>> load_named_config("tiny").name
'tiny'
"""
from __future__ import annotations

import os
from pathlib import Path

from rismvdr.train.config import TrainConfig, load_config

__all__ = ["CONFIGS", "SPACES", "DEFAULT_SPACE", "config_file", "space_file", "load_named_config"]

#: Packaged training configs, by name (modules of this package defining `get_config()`).
CONFIGS = ("seed", "seed_refiner", "seed_los", "tiny")
#: Packaged search spaces, by name (modules of this package defining `get_space()`).
SPACES = ("hpo_space", "hpo_space_beta0")
#: The search space `rismvdr hpo` / `rismvdr hpo2` use when `--space` is not given.
DEFAULT_SPACE = "hpo_space"

_HERE = Path(__file__).resolve().parent


def _resolve(name_or_path: str | os.PathLike, names: tuple[str, ...], flag: str) -> Path:
    text = os.fspath(name_or_path)
    if text in names:
        return _HERE / f"{text}.py"
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{flag}: {text!r} is neither a packaged name ({', '.join(names)}) nor a file")
    return path


def config_file(name_or_path: str | os.PathLike) -> Path:
    """The file behind `--config`: a packaged config's module file, or the path as given.

    Raises:
      ValueError: `name_or_path` is neither a name in `CONFIGS` nor an existing file.
    """
    return _resolve(name_or_path, CONFIGS, "--config")


def space_file(name_or_path: str | os.PathLike) -> Path:
    """The file behind `--space`: a packaged search space's module file, or the path as given.

    Raises:
      ValueError: `name_or_path` is neither a name in `SPACES` nor an existing file.
    """
    return _resolve(name_or_path, SPACES, "--space")


def load_named_config(name_or_path: str | os.PathLike) -> TrainConfig:
    """The validated `TrainConfig` of a packaged config name or of a config file.

    Raises:
      ValueError: no such name or file, or the file's `get_config()` fails or returns
        something other than a valid `TrainConfig` (the message names `--config`).
    """
    return load_config(config_file(name_or_path))
