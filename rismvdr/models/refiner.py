"""The Stage-2 refiner's config: the `SpectrumRefiner`'s shape and the coarse maps it reads.

One type for training (`TrainConfig.refiner`), checkpoints and exported models (`model.json`'s
"refiner" entry, through `to_dict`/`from_dict`) and inference (`LearnedModel.refiner_cfg`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flax import nnx

from rismvdr.models.unet import SpectrumRefiner

__all__ = ["REFINER_INPUTS", "RefinerConfig", "make_refiner"]

#: The maps a refiner can read, each on the coarse grid with its range planes max-reduced:
#: - "blend": MVDR (Woodbury) of the backbone's R_blend (the seed's one input);
#: - "bartlett": Bartlett of the matched-filter covariance (the back-projected snapshots
#:   `G_l^H y_l`; in full-array mode the sample covariance), the measurements' own map.
#: "bartlett" carries what the measurements say independently of the network's slots. (The ALS
#: R_samp's MVDR map was tried as a third: 19 s per batch of 32 against 0.6 s for "blend" in one
#: timing on a loaded 2-core CPU, 6 dB of dynamic range on seed scenes, so it is not offered.)
REFINER_INPUTS = ("blend", "bartlett")


@dataclasses.dataclass(frozen=True)
class RefinerConfig:
    """Stage-2 SpectrumRefiner and its coarse MVDR grid."""

    widths: tuple[int, ...] = (32, 64, 128)  # the seed's 1 -> 32 -> 64 -> 128
    dilations: tuple[int, ...] = (2, 4)
    groups: int = 8
    grid_phi: int = 61  # points over the phi box (61: 2 degrees over +-60)
    grid_theta: int = 41  # points over the theta box (41: 1.5 degrees over +-30)
    planes: int = 8  # range planes, max-reduced into the 2-D map
    exist_threshold: float = 0.0  # slots kept in the map's R_blend (0: all, weighted by existence)
    peak_threshold: float = 0.5  # probability a refiner peak needs (calibrated on validation at export)
    inputs: tuple[str, ...] = ("blend",)  # maps the refiner reads, one channel each (`REFINER_INPUTS`)

    def __post_init__(self):
        inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs)
        bad = [x for x in inputs if x not in REFINER_INPUTS]
        if not inputs or bad or len(set(inputs)) != len(inputs):
            raise ValueError(f"refiner.inputs: expected distinct names from {list(REFINER_INPUTS)}, got {self.inputs!r}")
        object.__setattr__(self, "inputs", inputs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["widths"], d["dilations"], d["inputs"] = list(self.widths), list(self.dilations), list(self.inputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RefinerConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError (missing ones take defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"refiner config: unknown fields {sorted(unknown)}")
        kw = dict(d)
        for k in ("widths", "dilations"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        if "inputs" in kw:
            kw["inputs"] = tuple(str(v) for v in kw["inputs"])
        return cls(**kw)


def make_refiner(cfg: RefinerConfig, rngs: nnx.Rngs) -> SpectrumRefiner:
    """The `SpectrumRefiner` a config describes."""
    return SpectrumRefiner(widths=tuple(cfg.widths), dilations=tuple(cfg.dilations), groups=int(cfg.groups),
                           in_channels=len(cfg.inputs), rngs=rngs)
