"""Method registry: every localizer is a function from a scene batch to detections, and every
one goes through the same 2.5D spectrum evaluation and the same detector (`rismvdr.localize.detect`),
so comparisons between methods are fair.

A method builds one spectrum operator per scene (`rismvdr.physics.spectra`), optionally a
per-scene cap on the count (MUSIC's estimated order), and hands both to the shared pipeline:
`spectrum_25d` on the grid -> `detect` (peaks, threshold, NMS, 3-D refinement, NMS).

| method | covariance / operator | count |
|---|---|---|
| `mvdr-oracle` | R_true from the stored truth (Woodbury on `A diag(sqrt p)`) | detector |
| `mvdr-als` | ALS low-rank R_samp (Woodbury on its factor) | detector |
| `mvdr-ridge` | ridge-LS back-projection covariance | detector |
| `mvdr-mf` | matched-filter covariance | detector |
| `mvdr-sample` | sample covariance (full-array mode only) | detector |
| `music-mdl`, `music-aic` | MUSIC on the default covariance (ALS in RIS mode, sample in full mode) | MDL / AIC order |
| `music-oracle-k` | same MUSIC, true K given (the seed's "oracle" benchmark) | true K |
| `bartlett` | Bartlett on the default covariance (factor form when it has one) | detector |
| `somp`, `somp-ml` | compressive: SOMP on the measurements (+ off-grid ML), `physics.compressive` | F test |
| `learned` | MVDR (Woodbury) on the trained backbone's R_blend (`rismvdr.localize.learned`) | detector |
| `learned-refiner` | low-rank MVDR map -> SpectrumRefiner -> peaks -> MVDR range plane -> 3-D refinement; guarded, falls back to `learned` | refiner map |
| `learned-ml` | `learned` detections as the start of the compressive ML refinement + F-test order search | F test |

MDL/AIC use the top `min(L, N)` eigenvalues of the matched-filter covariance in RIS mode
(the ALS estimate has rank <= r and so no noise eigenvalues to test) and of the sample
covariance in full-array mode, with L snapshots.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rismvdr.localize.detect import DetectorConfig, Detections, RefinerGuard, detect
from rismvdr.physics.compressive import CompressiveConfig, f_thresholds, localize_compressive, localize_from_start
from rismvdr.physics.covariance import estimate_covariance
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.order import estimate_order
from rismvdr.physics.scenarios import SceneConfig
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import (
    Grid,
    SpectrumOperator,
    bartlett_factor_operator,
    bartlett_operator,
    grid_steering,
    make_grid,
    matmul_precision,
    music_operator,
    mvdr_lowrank_operator,
    mvdr_operator,
    spectrum_25d,
)
from rismvdr.physics.steering import steering

__all__ = [
    "LocalizerSettings",
    "Method",
    "METHODS",
    "method_names",
    "LocalizationResult",
    "localize",
    "settings_for_scenario",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LocalizerSettings:
    """Everything shared by the methods: search box and grid, detector, estimator knobs."""

    phi_deg: tuple[float, float] = (-60.0, 60.0)  # search box = grid extent, degrees
    theta_deg: tuple[float, float] = (-30.0, 30.0)
    r_m: tuple[float, float] = (0.5, 10.0)
    phi_step_deg: float = 1.0
    theta_step_deg: float = 1.0
    n_planes: int = 16  # range planes, uniform in 1/r
    steering_model: str = "exact"
    detector: DetectorConfig = DetectorConfig()
    delta_rel: float = 1e-2  # MVDR diagonal loading relative to tr(R)/N
    precision: str = "highest"  # matmul precision: highest | fast
    als_rank: int = 5
    als_iters: int = 4
    als_lam: float = 1e-2
    ridge_lam: float = 1e-2
    batch_size: int = 32  # scenes per jitted call
    somp_phi_step_deg: float = 2.0  # compressive methods: SOMP dictionary grid
    somp_theta_step_deg: float = 2.0
    somp_planes: int = 8
    somp_pfa: float = 0.01  # per-scene false-alarm bound of the K-free stopping rule
    ml_iters: int = 10  # Levenberg-Marquardt iterations after each greedy step (ML refinement)
    max_chunk_mb: float = 256.0  # bound on the grid-evaluation intermediate per chunk
    exist_threshold: float = 0.5  # learned methods: slots below this existence probability are dropped
    refiner_guard: RefinerGuard = RefinerGuard()  # learned-refiner: when to fall back to MVDR peaks

    def grid(self, linear: bool = False) -> Grid:
        theta = (0.0, 0.0) if linear and self.theta_deg[0] != self.theta_deg[1] else self.theta_deg
        return make_grid(self.phi_deg, theta, self.r_m, phi_step_deg=self.phi_step_deg,
                         theta_step_deg=self.theta_step_deg, n_planes=self.n_planes)

    def somp_grid(self, linear: bool = False) -> Grid:
        theta = (0.0, 0.0) if linear and self.theta_deg[0] != self.theta_deg[1] else self.theta_deg
        return make_grid(self.phi_deg, theta, self.r_m, phi_step_deg=self.somp_phi_step_deg,
                         theta_step_deg=self.somp_theta_step_deg, n_planes=self.somp_planes)

    def compressive(self) -> CompressiveConfig:
        return CompressiveConfig(k_max=self.detector.k_max, pfa=self.somp_pfa, ml_iters=self.ml_iters)

    def replace(self, **kw) -> "LocalizerSettings":
        return dataclasses.replace(self, **kw)


def settings_for_scenario(cfg: SceneConfig, **overrides) -> LocalizerSettings:
    """Settings whose search box is the scenario's box and whose gates are its gates."""
    det = DetectorConfig(gate_phi_deg=cfg.gate_phi_deg, gate_theta_deg=cfg.gate_theta_deg,
                         gate_r_m=cfg.gate_r_m)
    base = LocalizerSettings(phi_deg=cfg.phi_deg, theta_deg=cfg.theta_deg, r_m=cfg.r_m,
                             steering_model=cfg.steering_model, detector=det)
    return base.replace(**overrides)


# ------------------------------------------------------------------------------------------
# Operators per method (batch in, batch out; run inside one jit per method and batch shape)
# ------------------------------------------------------------------------------------------
def _prec(s: LocalizerSettings):
    return matmul_precision(s.precision)


def _cov(kind: str, scenes: Scene, s: LocalizerSettings):
    if kind == "als":
        return estimate_covariance("als", scenes.y, scenes.H, scenes.codes, rank=s.als_rank,
                                   n_iter=s.als_iters, lam=s.als_lam, precision=_prec(s))
    if kind == "ridge_ls":
        return estimate_covariance("ridge_ls", scenes.y, scenes.H, scenes.codes, lam=s.ridge_lam,
                                   precision=_prec(s))
    return estimate_covariance(kind, scenes.y, scenes.H, scenes.codes, precision=_prec(s))


def _default_cov(scenes: Scene, s: LocalizerSettings):
    return _cov("sample" if scenes.full_array else "als", scenes, s)


def _order_eigvals(scenes: Scene, s: LocalizerSettings):
    est = _cov("sample" if scenes.full_array else "matched_filter", scenes, s)
    n, l = est.R.shape[-1], scenes.y.shape[-2]
    vals = jnp.linalg.eigvalsh(est.R)[..., ::-1][..., : min(l, n)]
    return vals, l


def _lowrank(factor, s: LocalizerSettings) -> SpectrumOperator:
    return jax.vmap(lambda f: mvdr_lowrank_operator(f, delta_rel=s.delta_rel, precision=s.precision))(factor)


def _mvdr_from(kind):
    def build(scenes: Scene, geometry, s: LocalizerSettings):
        est = _cov(kind, scenes, s)
        n, q = est.factor.shape[-2], est.factor.shape[-1]
        if q < n:  # Woodbury is exact here and cheaper
            return _lowrank(est.factor, s), None
        return jax.vmap(lambda r: mvdr_operator(r, delta_rel=s.delta_rel))(est.R), None
    return build


def _oracle(scenes: Scene, geometry, s: LocalizerSettings):
    if scenes.phi.shape[-1] == 0:
        raise ValueError("scenes: method 'mvdr-oracle' needs the truth (gt_phi, gt_theta, gt_r)")
    real = jnp.finfo(scenes.y.dtype).dtype
    a = steering(geometry.astype(real), scenes.phi, scenes.theta, scenes.r,
                 model=s.steering_model, dtype=scenes.y.dtype)  # [S, K, N]
    f = jnp.swapaxes(a * jnp.sqrt(scenes.power)[..., None].astype(a.dtype), -1, -2)  # [S, N, K]
    return _lowrank(f, s), None


def _music(criterion):
    def build(scenes: Scene, geometry, s: LocalizerSettings):
        est = _default_cov(scenes, s)
        kmax = s.detector.k_max
        if criterion == "oracle":
            if scenes.mask.shape[-1] == 0:
                raise ValueError("scenes: method 'music-oracle-k' needs the truth (true K)")
            k = jnp.sum(scenes.mask, axis=-1).astype(jnp.int32)
        else:
            vals, l = _order_eigvals(scenes, s)
            k = estimate_order(vals, l, criterion=criterion, max_order=kmax)
        k = jnp.clip(k, 0, min(kmax, est.R.shape[-1] - 1))
        op = jax.vmap(lambda r, kk: music_operator(r, kk, max_sources=kmax))(est.R, k)
        return op, k
    return build


def _bartlett(scenes: Scene, geometry, s: LocalizerSettings):
    est = _default_cov(scenes, s)
    n, q = est.factor.shape[-2], est.factor.shape[-1]
    if q < n:  # the factor form is exact (R = F F^H) and O(N q) per grid point
        return bartlett_factor_operator(est.factor), None
    return jax.vmap(bartlett_operator)(est.R), None


class Method(NamedTuple):
    """A registered localizer. Spectrum methods give `build`: (scenes, geometry, settings) ->
    (SpectrumOperator [B], cap [B] | None), then the shared spectrum + detector run. Direct
    methods (compressive ML) give `run`: (scenes, geometry, settings, context) ->
    (Detections [B], Spectrum25D [B]) and finish with the detector's gate NMS themselves."""

    name: str
    description: str
    build: Callable | None = None
    needs_truth: bool = False
    full_array_only: bool = False
    ris_only: bool = False
    run: Callable | None = None
    grid: str = "spectrum"  # which grid the maps use: "spectrum" or "somp"
    learned: bool = False  # needs a trained model (`localize(..., model=)`, default: shipped weights)


def _compressive(ml: bool):
    def run(scenes: Scene, geometry, s: LocalizerSettings, ctx):
        det = s.detector
        gates = (np.deg2rad(det.gate_phi_deg), np.deg2rad(det.gate_theta_deg), det.gate_r_m)
        res, spec = localize_compressive(
            scenes.y, scenes.H, scenes.codes, ctx["a_flat"], ctx["thresholds"], geometry, ctx["grid"],
            s.compressive(), gates=gates, ml=ml, model=s.steering_model)
        return Detections(res.phi, res.theta, res.r, res.score_db, res.valid), spec
    return run


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mvdr-oracle", "MVDR on R_true built from the stored truth (upper reference)", _oracle, needs_truth=True),
        Method("mvdr-als", "MVDR on the ALS low-rank sample covariance (the seed's R_samp)", _mvdr_from("als")),
        Method("mvdr-ridge", "MVDR on the ridge-LS back-projection covariance", _mvdr_from("ridge_ls"), ris_only=True),
        Method("mvdr-mf", "MVDR on the matched-filter covariance", _mvdr_from("matched_filter"), ris_only=True),
        Method("mvdr-sample", "MVDR on the sample covariance (full-array mode)", _mvdr_from("sample"), full_array_only=True),
        Method("music-mdl", "MUSIC, order from MDL with L snapshots", _music("mdl")),
        Method("music-aic", "MUSIC, order from AIC with L snapshots", _music("aic")),
        Method("music-oracle-k", "MUSIC with the true K given (the seed's oracle benchmark)", _music("oracle"), needs_truth=True),
        Method("bartlett", "Bartlett beamformer on the default covariance", _bartlett),
        Method("somp", "simultaneous OMP on the measurements, K-free F-test stopping (grid positions)",
               run=_compressive(False), grid="somp"),
        Method("somp-ml", "SOMP + off-grid variable-projection ML (Levenberg-Marquardt) + order re-test",
               run=_compressive(True), grid="somp"),
        Method("learned", "MVDR on the learned backbone's R_blend (shipped weights unless --checkpoint)",
               learned=True),
        Method("learned-refiner", "learned low-rank MVDR map -> SpectrumRefiner peaks -> MVDR range -> 3-D "
               "refinement, with guardrails and MVDR fallback", learned=True),
        Method("learned-ml", "learned detections as the start of the compressive ML refinement and F-test "
               "order search", learned=True),
    )
}


def method_names(*, full_array: bool | None = None, with_truth: bool = True) -> list[str]:
    """Registered methods usable for a measurement mode (None: all)."""
    out = []
    for m in METHODS.values():
        if full_array is True and m.ris_only or full_array is False and m.full_array_only:
            continue
        if m.needs_truth and not with_truth:
            continue
        out.append(m.name)
    return out


# ------------------------------------------------------------------------------------------
# The shared pipeline
# ------------------------------------------------------------------------------------------
class LocalizationResult(NamedTuple):
    """Host-side result of `localize` over S scenes.

    Attributes:
      detections: `Detections` with `[S, k_max]` NumPy arrays (radians, metres, dB, bool).
      power_db: `[S, T, P]` float32 plane-maximised spectrum map in dB (for plots and PSSR).
      plane: `[S, T, P]` int best range-plane index.
      order: `[S]` per-scene cap given to the detector (MUSIC's order), or None.
      grid: the grid of the maps.
      seconds: wall time of the whole run (compilation included).
      fallbacks: `learned-refiner`: scenes whose refiner map was rejected by the guardrails
        (MVDR peaks on R_blend used instead); None for other methods.
    """

    detections: Detections
    power_db: np.ndarray
    plane: np.ndarray
    order: np.ndarray | None
    grid: Grid
    seconds: float
    fallbacks: int | None = None


def _somp_context(settings: LocalizerSettings, geometry, scenes: Scene):
    """(SOMP grid, flattened dictionary steering `[G, N]`, F-test thresholds, config), built
    once per run."""
    grid = settings.somp_grid(geometry.linear)
    a_flat = grid_steering(geometry, grid, model=settings.steering_model, dtype=scenes.y.dtype)
    a_flat = a_flat.reshape(-1, a_flat.shape[-1])
    ccfg = settings.compressive()
    thresholds = f_thresholds(int(scenes.y.shape[-1]), int(scenes.y.shape[-2]), ccfg.k_max,
                              int(a_flat.shape[0]), ccfg)
    return grid, a_flat, thresholds, ccfg


def _pad_batch(scenes: Scene, lo: int, hi: int, size: int) -> Scene:
    idx = np.minimum(np.arange(lo, lo + size), hi - 1)
    return jax.tree_util.tree_map(lambda a: a[idx], scenes)


def localize(
    method: str,
    scenes: Scene,
    geometry: ArrayGeometry,
    settings: LocalizerSettings = LocalizerSettings(),
    *,
    progress: bool = True,
    keep_maps: bool = True,
    model=None,
) -> LocalizationResult:
    """Localize every scene with a registered method through the shared detector.

    Args:
      method: a name from `METHODS`.
      scenes: batched `Scene` (from `simulate` or `rismvdr.files.scenes_from_file`).
      geometry: the array geometry of the scenes.
      settings: grid, detector and estimator settings (`settings_for_scenario(cfg)` matches a
        scenario's box and gates).
      progress: show a tqdm bar over batches (auto-off when not a terminal).
      keep_maps: return the 2.5D maps (S x T x P floats) as well.
      model: learned methods: a `rismvdr.localize.learned.LearnedModel` (default: the shipped weights).

    Raises:
      ValueError: unknown method, or a method that does not apply to these scenes.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(METHODS)}")
    m = METHODS[method]
    full = scenes.full_array
    if m.full_array_only and not full:
        raise ValueError(f"method: {method!r} needs full-array scenes (no H/codes)")
    if m.ris_only and full:
        raise ValueError(f"method: {method!r} needs RIS-mode scenes (H and codes)")
    if m.needs_truth and scenes.mask.shape[-1] == 0:
        raise ValueError(f"method: {method!r} needs scenes with truth")
    t0 = time.perf_counter()
    n_scenes = int(scenes.y.shape[0])
    bs = max(1, min(settings.batch_size, n_scenes))
    fallbacks = None
    if m.learned:
        from rismvdr.localize import learned as _learned

        model = _learned.load_learned() if model is None else model
        _learned.check_scenes(model, scenes)
        runner = _learned.make_runner(model, "learned-refiner" if method == "learned-refiner" else "learned",
                                      geometry, settings, guard=settings.refiner_guard,
                                      exist_threshold=settings.exist_threshold)
        grid = settings.grid(geometry.linear)
        fallbacks = 0 if method == "learned-refiner" else None
        if method == "learned-ml":
            sgrid, a_flat, thresholds, ccfg = _somp_context(settings, geometry, scenes)
            det_cfg = settings.detector
            gates = (np.deg2rad(det_cfg.gate_phi_deg), np.deg2rad(det_cfg.gate_theta_deg), det_cfg.gate_r_m)
    elif m.run is None:
        grid = settings.grid(geometry.linear)
        a_grid = grid_steering(geometry, grid, model=settings.steering_model, dtype=scenes.y.dtype)
        build = jax.jit(m.build, static_argnums=(2,))
    else:
        grid, a_flat, thresholds, _ = _somp_context(settings, geometry, scenes)
        ctx = dict(a_flat=a_flat, thresholds=thresholds, grid=grid)
    parts, maps, planes, orders = [], [], [], []
    bar = tqdm(total=n_scenes, desc=method, unit="scene", disable=None if progress else True, leave=False)
    for lo in range(0, n_scenes, bs):
        hi = min(lo + bs, n_scenes)
        batch = _pad_batch(scenes, lo, hi, bs)
        cap = None
        if m.learned:
            det, spec, fb = runner(model.backbone_params, model.refiner_params, batch)
            if method == "learned-ml":
                res = localize_from_start(batch.y, batch.H, batch.codes, a_flat, thresholds, geometry, sgrid, ccfg,
                                          det.phi, det.theta, det.r, det.valid, gates=gates,
                                          model=settings.steering_model)
                det = Detections(res.phi, res.theta, res.r, res.score_db, res.valid)
            if fallbacks is not None:
                new_fb = int(np.sum(np.asarray(fb)[: hi - lo]))
                guard = settings.refiner_guard
                if new_fb and (fallbacks // guard.log_every != (fallbacks + new_fb) // guard.log_every
                               or fallbacks == 0):
                    log.warning("learned-refiner: refiner map rejected, MVDR fallback used (%d scenes so far)",
                                fallbacks + new_fb)
                fallbacks += new_fb
        elif m.run is None:
            op, cap = build(batch, geometry, settings)
            spec = spectrum_25d(op, a_grid, precision=settings.precision, max_chunk_mb=settings.max_chunk_mb)
            det = detect(op, spec, geometry, grid, settings.detector, cap=cap,
                         model=settings.steering_model, precision=settings.precision)
        else:
            det, spec = m.run(batch, geometry, settings, ctx)
        det, spec = jax.device_get((det, spec))
        n = hi - lo
        parts.append(Detections(*(np.asarray(x)[:n] for x in det)))
        if keep_maps:
            maps.append(10.0 * np.log10(np.maximum(np.asarray(spec.power[:n]), 1e-30)).astype(np.float32))
            planes.append(np.asarray(spec.plane[:n]))
        if cap is not None:
            orders.append(np.asarray(cap)[:n])
        bar.update(n)
    bar.close()
    detections = Detections(*(np.concatenate(x) for x in zip(*parts)))
    return LocalizationResult(
        detections=detections,
        power_db=np.concatenate(maps) if keep_maps else None,
        plane=np.concatenate(planes) if keep_maps else None,
        order=np.concatenate(orders) if orders else None,
        grid=grid,
        seconds=time.perf_counter() - t0,
        fallbacks=fallbacks,
    )
