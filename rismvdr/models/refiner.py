"""The Stage-2 refiner: the `SpectrumRefiner` its config describes.

`RefinerConfig` (`rismvdr.models.config`, re-exported here) is one type for training
(`TrainConfig.refiner`), checkpoints and exported models (`model.json`'s "refiner" entry, through
`to_dict`/`from_dict`) and inference (`LearnedModel.refiner_cfg`).
"""
from __future__ import annotations

from flax import nnx

from rismvdr.models.config import REFINER_INPUTS, RefinerConfig
from rismvdr.models.unet import SpectrumRefiner

__all__ = ["REFINER_INPUTS", "RefinerConfig", "make_refiner"]


def make_refiner(cfg: RefinerConfig, rngs: nnx.Rngs) -> SpectrumRefiner:
    """The `SpectrumRefiner` a config describes."""
    return SpectrumRefiner(widths=tuple(cfg.widths), dilations=tuple(cfg.dilations), groups=int(cfg.groups),
                           in_channels=len(cfg.inputs), rngs=rngs)
