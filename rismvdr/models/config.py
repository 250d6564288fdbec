"""The models' configurations and their deferred definitions, without Flax.

`ModelConfig` (the network hyperparameters a person chooses), `BackboneConfig` (everything that
fixes a backbone's shape), `RefinerConfig` (the Stage-2 refiner's) and `DeferredDef`, a
module's static definition built from its config on first use. This module imports no Flax: an
exported model is read (`rismvdr.localize.weights`) and a stored program is run
(`rismvdr.programs`) without the network's code, which only tracing needs.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Literal, Mapping

import numpy as np

from rismvdr.defaults import EXIST_THRESHOLD, K_MAX, PHI_RANGE_DEG, R_RANGE_M, THETA_RANGE_DEG
from rismvdr.physics.geometry import ArrayGeometry, from_positions
from rismvdr.physics.scenarios import SceneConfig, scenario_geometry
from rismvdr.physics.spectra import Grid, make_grid

__all__ = ["ModelConfig", "BackboneConfig", "backbone_config_for", "REFINER_INPUTS", "RefinerConfig", "DeferredDef"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The backbone's network hyperparameters: what a person chooses (`TrainConfig.model`, HPO's
    `model.*` keys). The scenario fixes the rest of the shape (`BackboneConfig`)."""

    widths: tuple[int, ...] = (16, 32, 64)  # U-Net trunk channel widths per stage
    dilations: tuple[int, ...] = (2, 4)  # bottleneck dilations
    groups: int = 8  # GroupNorm groups (divides every width)
    covariance: Literal["structured", "factor"] = "structured"  # R from the slots | a general factor
    rank: int = 5  # factor columns of the `factor` variant (structured: k_max)
    beta: float = 0.0  # R_blend = (1 - beta) R_pred + beta R_samp (ALS)
    beam_phi_step_deg: float = 2.0  # beamspace grid of the front end and the heat map, degrees
    beam_theta_step_deg: float = 2.0
    beam_planes: int = 8  # range planes (uniform in 1/r) of the front end
    nms_cells: int = 1  # slot selection: local maxima in a (2 nms_cells + 1)^2 window
    leash_max: float = 1e3  # column-norm leash: |f_j| <= leash_max * sqrt(N)

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        if self.covariance not in ("structured", "factor"):
            raise ValueError(f"covariance: expected 'structured' or 'factor', got {self.covariance!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta: must be in [0, 1], got {self.beta}")
        for name in ("rank", "beam_planes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.nms_cells < 0:
            raise ValueError(f"nms_cells: must be >= 0, got {self.nms_cells}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), flat."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError (missing ones take defaults)."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**{k: _tuples(v) if isinstance(v, list) else v for k, v in d.items()})


def _plain(value):
    """A config value in plain JSON types: tuples (nested too) become lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value):
    """Inverse of `_plain` for one value: lists (nested too) become tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneConfig(ModelConfig):
    """Everything that fixes a backbone's shape: the `ModelConfig` hyperparameters plus what the
    scenario fixes (geometry, measurement shape, search box) and the inference settings. Stored
    flat (`to_dict`) in every checkpoint and exported model."""

    positions: tuple[tuple[float, float, float], ...]  # element positions [N, 3], metres
    wavelength: float  # metres
    n_measurements: int  # M (= N in full-array mode)
    n_snapshots: int  # L
    full_array: bool = False  # True: y_l = x_l + n_l (no H, no codes)
    phi_deg: tuple[float, float] = PHI_RANGE_DEG  # search box (degrees, degrees, metres)
    theta_deg: tuple[float, float] = THETA_RANGE_DEG
    r_m: tuple[float, float] = R_RANGE_M
    k_max: int = K_MAX  # slots
    leash_eps: float = 1e-6
    range_scan: int = 48  # inference: LS range scan of each slot over this many 1/r points (0: off)
    exist_threshold: float = EXIST_THRESHOLD  # slots at least this probable count as sources in the range scan
    steering_model: Literal["exact", "fresnel", "far"] = "exact"

    def geometry(self) -> ArrayGeometry:
        return from_positions(np.asarray(self.positions, np.float64), self.wavelength)

    @property
    def n_elements(self) -> int:
        return len(self.positions)

    def beam_grid(self) -> Grid:
        theta = (0.0, 0.0) if self.geometry().linear else self.theta_deg
        return make_grid(self.phi_deg, theta, self.r_m, phi_step_deg=self.beam_phi_step_deg,
                         theta_step_deg=self.beam_theta_step_deg, n_planes=self.beam_planes)

    def validate(self) -> None:
        super().validate()
        for name in ("k_max", "n_measurements", "n_snapshots"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        t, p, _ = self.beam_grid().shape
        if t * p < self.k_max:
            raise ValueError(f"beam grid: {t} x {p} cells cannot hold k_max = {self.k_max} slots")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackboneConfig:
        """Inverse of `to_dict` (reads every stored backbone: run directories, exported models)."""
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"{cls.__name__}: missing fields {missing}")
        d = dict(d)
        d["positions"] = tuple(tuple(float(v) for v in p) for p in d["positions"])
        return super().from_dict(d)


def backbone_config_for(scene_cfg: SceneConfig, model: ModelConfig = ModelConfig(), **overrides) -> BackboneConfig:
    """A backbone with the hyperparameters `model`, shaped for a scenario; `overrides` replace
    single fields (of either kind)."""
    geo = scenario_geometry(scene_cfg)
    full = scene_cfg.mode == "full"
    hyper = {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)}
    hyper.update(widths=tuple(model.widths), dilations=tuple(model.dilations))
    base = BackboneConfig(
        **hyper,
        positions=tuple(tuple(float(v) for v in p) for p in np.asarray(geo.positions)),
        wavelength=float(geo.wavelength),
        n_measurements=scene_cfg.n_elements if full else scene_cfg.n_bs,
        n_snapshots=scene_cfg.n_snapshots,
        full_array=full,
        phi_deg=tuple(scene_cfg.phi_deg),
        theta_deg=tuple(scene_cfg.theta_deg),
        r_m=tuple(scene_cfg.r_m),
        steering_model=scene_cfg.steering_model,
    )
    return dataclasses.replace(base, **overrides)


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


@dataclasses.dataclass(frozen=True)
class DeferredDef:
    """The static definition (`rismvdr.models.params.ModelDef`) of the backbone or refiner that
    `cfg` describes, built on first use (abstractly: `nnx.eval_shape`, no initialisation).

    Building it imports Flax and the network's code, a few tenths of a second that a call whose
    program is already traced and stored (`rismvdr.programs`) never needs. `apply` and `module`
    are `ModelDef`'s, and check the parameters against the module first (count, shapes, dtypes),
    so weights that do not fit their config fail where they are first used, with the index of the
    first array that does not fit. Equal configs give equal (and hashable) definitions.
    """

    cfg: BackboneConfig | RefinerConfig

    def built(self) -> tuple[Any, tuple]:
        """(`ModelDef`, the module's abstract parameter leaves: shapes and dtypes)."""
        return _abstract_def(self.cfg)

    def check(self, params) -> None:
        """Raise ValueError unless `params` (leaves, arrays or tracers) fit the module."""
        ref = self.built()[1]
        if len(params) != len(ref):
            raise ValueError(f"weights: {len(params)} arrays, the model has {len(ref)}")
        for i, (a, b) in enumerate(zip(params, ref)):
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(f"weights: array {i} has shape {tuple(a.shape)}, the model expects {tuple(b.shape)}")
            if np.dtype(a.dtype) != np.dtype(b.dtype):
                raise ValueError(f"weights: array {i} has dtype {np.dtype(a.dtype)}, the model expects "
                                 f"{np.dtype(b.dtype)}")

    def module(self, params):
        """The module with `params` merged in."""
        self.check(params)
        return self.built()[0].module(params)

    def apply(self, params, *args, **kwargs):
        return self.module(params)(*args, **kwargs)


@functools.lru_cache(maxsize=8)
def _abstract_def(cfg) -> tuple[Any, tuple]:
    # Imported here, on first use: the network's modules load Flax (see the class docstring).
    return importlib.import_module("rismvdr.models.params").abstract_def(cfg)
