"""Settings of the localizers, one representation per concept.

`LocalizerSettings` groups what the methods share: the search grid (`GridSpec`: the box and its
sampling), the detector (`DetectorConfig`, whose `gates` are the one gate, SI), the compressive
methods' dictionary sampling and config, the covariance-estimator knobs, the learned methods'
knobs, and the batching. Angles of the box and grid steps are in degrees because they are typed
by people (CLI flags, scenario configs); `rismvdr.physics.spectra.make_grid` converts them.

>>> from rismvdr.physics.scenarios import get_scenario
>>> s = settings_for_scenario(get_scenario("seed")).with_grid(n_planes=8)
>>> s.grid().shape
(61, 121, 8)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

from rismvdr.defaults import EXIST_THRESHOLD, PHI_RANGE_DEG, R_RANGE_M, THETA_RANGE_DEG
from rismvdr.localize.detect import DetectorConfig, RefinerGuard
from rismvdr.physics.compressive import CompressiveConfig
from rismvdr.physics.scenarios import SceneConfig
from rismvdr.physics.spectra import Grid, make_grid

__all__ = [
    "SEARCHES",
    "GridSpec",
    "EstimatorSettings",
    "CompressiveSettings",
    "LearnedSettings",
    "CONTINUATIONS",
    "DEPLOYMENT_SEARCH_WIDTH",
    "LocalizerSettings",
    "settings_for_scenario",
]


#: `GridSpec.search`'s choices.
SEARCHES = ("auto", "full", "coarse-to-fine")


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A 2.5D search grid: the box and its sampling (phi, theta rows; range planes in 1/r)."""

    phi_deg: tuple[float, float] = PHI_RANGE_DEG  # search box = grid extent, degrees
    theta_deg: tuple[float, float] = THETA_RANGE_DEG
    r_m: tuple[float, float] = R_RANGE_M  # metres
    phi_step_deg: float = 1.0
    theta_step_deg: float = 1.0
    n_planes: int = 16  # range planes, uniform in 1/r
    # How the detector searches the map (`rismvdr.localize.detect.detect`): "full" evaluates the
    # map on this grid; "coarse-to-fine" evaluates it on `coarse_grid` (angle steps `coarse_factor`
    # times these, `coarse_planes` planes) and refines its highest local maxima off the grid in
    # this grid's steps, never evaluating this grid (the methods' maps are then the coarse maps);
    # "auto": each method's own default (`rismvdr.localize.registry.Method.search`: coarse-to-fine
    # where its validation F1 was that of the full grid; docs: experiments, coarse-to-fine), "full"
    # where a method is run without the registry.
    search: Literal["auto", "full", "coarse-to-fine"] = "auto"
    coarse_factor: float = 3.0
    coarse_planes: int = 8

    def __post_init__(self):
        def box(name, lo_hi, lo, hi, strict=False):
            ok = (isinstance(lo_hi, tuple) and len(lo_hi) == 2
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                          for x in lo_hi))
            if not ok or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"{name}: expected (min, max) with min <= max, got {lo_hi!r}")
            if lo_hi[0] < lo or lo_hi[1] > hi or (strict and lo_hi[0] <= lo):
                raise ValueError(f"{name}: the search box must lie in ({lo:g}, {hi:g}), got {lo_hi!r}")

        # The front half-space: a planar or linear array cannot tell phi from 180 deg - phi.
        box("phi_deg", self.phi_deg, -90.0, 90.0)
        box("theta_deg", self.theta_deg, -90.0, 90.0)
        box("r_m", self.r_m, 0.0, math.inf, strict=True)
        for name in ("phi_step_deg", "theta_step_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
        for name in ("n_planes", "coarse_planes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search: expected one of {SEARCHES}, got {self.search!r}")
        f = self.coarse_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and f >= 1):
            raise ValueError(f"coarse_factor: must be a finite number >= 1, got {f!r}")

    def grid(self, linear: bool = False) -> Grid:
        """The grid; a linear array (no elevation resolution) gets the single row theta = 0."""
        theta = (0.0, 0.0) if linear and self.theta_deg[0] != self.theta_deg[1] else self.theta_deg
        return make_grid(self.phi_deg, theta, self.r_m, phi_step_deg=self.phi_step_deg,
                         theta_step_deg=self.theta_step_deg, n_planes=self.n_planes)

    def coarse_grid(self, linear: bool = False) -> Grid:
        """The coarse-to-fine search's coarse grid: the box in `coarse_factor` times the angle
        steps, `coarse_planes` range planes."""
        return dataclasses.replace(self, phi_step_deg=self.phi_step_deg * self.coarse_factor,
                                   theta_step_deg=self.theta_step_deg * self.coarse_factor,
                                   n_planes=self.coarse_planes).grid(linear)

    def search_grids(self, linear: bool = False) -> tuple[Grid, Grid | None]:
        """(the grid the map is evaluated on, the fine grid of a coarse-to-fine search or None):
        `(grid, None)` for "full" (and "auto"), `(coarse_grid, grid)` for "coarse-to-fine"; the pair
        is what `spectrum_25d` and `detect(..., fine=)` take."""
        if self.search == "coarse-to-fine":
            return self.coarse_grid(linear), self.grid(linear)
        return self.grid(linear), None


@dataclasses.dataclass(frozen=True)
class EstimatorSettings:
    """Covariance estimators and the MVDR loading of the spectrum methods."""

    delta_rel: float = 1e-2  # MVDR diagonal loading relative to tr(R)/N
    als_rank: int = 5  # an array of N < als_rank elements gets rank N
    als_iters: int = 4
    als_lam: float = 1e-2
    ridge_lam: float = 1e-2


@dataclasses.dataclass(frozen=True)
class CompressiveSettings:
    """The compressive methods (`somp`, `somp-ml`, and `learned-ml`'s ML stage)."""

    phi_step_deg: float = 2.0  # SOMP dictionary: the search box sampled in these steps
    theta_step_deg: float = 2.0
    n_planes: int = 8
    # Its `k_max` and `search_gate` are replaced by the detector's (`LocalizerSettings.compressive_config`):
    # one count cap and one gate for every method.
    config: CompressiveConfig = CompressiveConfig()


#: `LearnedSettings.continuation`'s choices.
CONTINUATIONS = ("backbone", "backprojection")


@dataclasses.dataclass(frozen=True)
class LearnedSettings:
    """The learned methods' inference knobs."""

    exist_threshold: float = EXIST_THRESHOLD  # slots below this existence probability are dropped
    refiner_guard: RefinerGuard = RefinerGuard()  # learned-refiner: when to fall back to MVDR peaks
    # The physics that finishes the network's answer (`rismvdr.localize.learned`): the joint ML
    # refinement of the detections on the measurements and the F-test re-test (`ml_polish`), then
    # `residual_passes` passes of the backbone over the residual of that fit, whose slots fill free
    # places and are polished in turn. polish=False: the detector's peaks on the MVDR map as they are.
    polish: bool = True
    residual_passes: int = 1
    # What searches the residual of the first polish for sources the network missed: "backbone"
    # (`residual_passes` passes of the network, `learned`) or "backprojection" (the greedy ML
    # continuation of the compressive methods, its picks by the matched filter of the back-projected
    # residual, no dictionary: `learned-ml`).
    continuation: str = "backbone"
    polish_iters: int = 10  # Levenberg-Marquardt iterations of each polish
    # Last: each source's range searched over this many 1/r values across the box at its fitted angles
    # (`physics.compressive.ml_rescan`), refined from there, kept when the fit explains more (0: off).
    # Validation (1000 scenes each of seed 1 / seed 2): F1 0.7997 / 0.8063 off, 0.8022 / 0.8123 with 48
    # (96: 0.8019 / 0.8123), false positives per scene 0.346 / 0.362 -> 0.339 / 0.345; it costs about
    # a sixth of `learned`'s CPU throughput.
    range_rescan: int = 48
    # map_threshold=True: the shared detector's threshold (`DetectorConfig.threshold_mode`) picks
    # the MVDR map's peaks that go to the finishing stage. False: every local maximum (up to k_max,
    # threshold_mode "none") goes to it and the F test on the measurements alone decides; with
    # polish=False the threshold always applies. Validation (seed 1, 1000 scenes / seed 2, 1000
    # scenes): F1 0.7997 / 0.8063 with it, 0.7992 / 0.8042 without, so the default keeps it.
    map_threshold: bool = True
    # map_refine=True: the shared detector's continuous 3-D refinement (`DetectorConfig.refine`) moves
    # the MVDR map's peaks off the grid before the finishing stage. False: the grid peaks go to the
    # polish as they are, which refines them on the measurements anyway (with polish=False the
    # detector's `refine` always applies). Validation, `learned` / `learned-ml` (seed 1, 1000 scenes;
    # seed 2, 1000 scenes): F1 0.8022 / 0.8163 and 0.8127 / 0.8257 with it, 0.8033 / 0.8160 and
    # 0.8117 / 0.8260 without; without it `learned-ml` ran a batch of 32 in 1320 ms instead of 1495
    # (2-core CPU; docs: experiments), so the default leaves it off. It applies to `learned-refiner`'s refiner
    # peaks too: F1 0.8037 / 0.8130 with it, 0.8046 / 0.8135 without.
    map_refine: bool = False
    # slot_range_scan=True: the backbone's slots get their ranges from its least-squares range scan
    # (`BackboneConfig.range_scan` points) before R_blend is built, in the first pass and in the residual
    # passes. False: the network's own ranges; the polish fits the ranges on the measurements and the
    # range rescan (`range_rescan`) searches the whole box at the end anyway. Validation (seed 7, 1000
    # scenes) / test (seed 0, 1000): `learned` 0.8259 / 0.8116 with the scan, 0.8264 / 0.8119 without;
    # `learned-ml` 0.8331 / 0.8162 with it, 0.8319 / 0.8155 without. The scan was about 50 ms of each
    # backbone pass of a 32-scene batch (2-core CPU; docs: experiments, throughput). The refiner's
    # inputs (`learned-refiner`) keep the model's own setting.
    slot_range_scan: bool = False

    def __post_init__(self):
        if not 0.0 <= float(self.exist_threshold) <= 1.0:
            raise ValueError(f"learned.exist_threshold: must lie in [0, 1], got {self.exist_threshold!r}")
        if int(self.residual_passes) != self.residual_passes or self.residual_passes < 0:
            raise ValueError(f"learned.residual_passes: must be an integer >= 0, got {self.residual_passes!r}")
        if self.continuation not in CONTINUATIONS:
            raise ValueError(f"learned.continuation: expected one of {CONTINUATIONS}, got {self.continuation!r}")
        if int(self.range_rescan) != self.range_rescan or self.range_rescan < 0 or 0 < self.range_rescan < 3:
            raise ValueError(f"learned.range_rescan: must be 0 (off) or an integer >= 3, got {self.range_rescan!r}")
        if int(self.polish_iters) != self.polish_iters or self.polish_iters < 0:
            raise ValueError(f"learned.polish_iters: must be an integer >= 0, got {self.polish_iters!r}")


@dataclasses.dataclass(frozen=True)
class LocalizerSettings:
    """Everything shared by the methods (hashable: a static argument of the jitted builders)."""

    search: GridSpec = GridSpec()  # the box and the grid of the maps
    steering_model: str = "exact"  # the scenes' steering model (spectra, refinement, ML)
    precision: str = "highest"  # matmul precision: highest | fast
    detector: DetectorConfig = DetectorConfig()
    estimator: EstimatorSettings = EstimatorSettings()
    compressive: CompressiveSettings = CompressiveSettings()
    learned: LearnedSettings = LearnedSettings()
    batch_size: int = 32  # scenes per jitted call
    max_chunk_mb: float = 256.0  # bound on the grid-evaluation intermediate per chunk

    def grid(self, linear: bool = False) -> Grid:
        """The fine grid of the search (the maps' grid under `search.search == "full"`)."""
        return self.search.grid(linear)

    def search_grids(self, linear: bool = False) -> tuple[Grid, Grid | None]:
        """(the maps' grid, the fine grid of a coarse-to-fine search or None): `GridSpec.search_grids`."""
        return self.search.search_grids(linear)

    def dictionary_grid(self, linear: bool = False) -> Grid:
        """The compressive methods' dictionary grid: the search box in the dictionary's steps."""
        c = self.compressive
        spec = dataclasses.replace(self.search, phi_step_deg=c.phi_step_deg, theta_step_deg=c.theta_step_deg,
                                   n_planes=c.n_planes)
        return spec.grid(linear)

    def with_search_default(self, search: str) -> LocalizerSettings:
        """A copy whose search is `search` where it is "auto" (a method's default); else `self`."""
        if self.search.search != "auto":
            return self
        return self.with_grid(search=search)

    def compressive_config(self) -> CompressiveConfig:
        """The compressive config with the detector's `k_max` and its angle gate as the greedy
        search's `search_gate`."""
        gates = self.detector.gates
        return dataclasses.replace(self.compressive.config, k_max=self.detector.k_max,
                                   search_gate=(float(gates.phi), float(gates.theta)))

    def replace(self, **kw) -> LocalizerSettings:
        """A copy with top-level fields replaced."""
        return dataclasses.replace(self, **kw)

    def with_grid(self, **kw) -> LocalizerSettings:
        """A copy with fields of the search grid (`GridSpec`) replaced."""
        return dataclasses.replace(self, search=dataclasses.replace(self.search, **kw))


#: `somp-ml`'s greedy candidates per step on a fixed deployment channel (`settings_for_scenario`).
#: On `seed-los` the greedy search's single pick often ends at a worse fit than the true sources'
#: (17 of 25 scenes of three sources where it found three); trying several separated candidates per
#: step finds better ones: validation F1 (seed 3, 1000 scenes) 0.274 with 1, 0.323 with 8, 0.331
#: with 16 (docs: methods, compressive). On `seed`'s per-scene i.i.d. channels 8 gave the same F1
#: (0.8321 against 0.8322) and costs more time per step, so the default stays 1 there.
DEPLOYMENT_SEARCH_WIDTH: int = 8


def settings_for_scenario(cfg: SceneConfig, **overrides) -> LocalizerSettings:
    """Settings whose search box is the scenario's box, whose steering model is its model and
    whose detector gate is its gate; on a fixed deployment channel (`cfg.is_deployment`) the greedy
    search of `somp-ml` tries `DEPLOYMENT_SEARCH_WIDTH` candidates per step. `overrides` replace
    top-level fields."""
    compressive = CompressiveSettings()
    if cfg.is_deployment:
        compressive = dataclasses.replace(compressive, config=dataclasses.replace(
            compressive.config, search_width=DEPLOYMENT_SEARCH_WIDTH))
    base = LocalizerSettings(search=GridSpec(phi_deg=cfg.phi_deg, theta_deg=cfg.theta_deg, r_m=cfg.r_m),
                             steering_model=cfg.steering_model, detector=DetectorConfig(gates=cfg.gates),
                             compressive=compressive)
    return base.replace(**overrides)
