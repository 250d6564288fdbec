"""Learned localizers at inference: a trained backbone (+ refiner) as registry methods.

Models are loaded by `rismvdr.localize.weights` (exported directories, run directories read
through Orbax, the shipped weights) without the trainer; `LearnedModel`, `load_learned` and
`default_weights_dir` are re-exported here.

Methods (registered in `rismvdr.localize.registry`):
- `learned`: MVDR (Woodbury) on the backbone's R_blend factor -> shared 2.5D spectrum + detector
  (`learned_detector`: its grid peaks, not refined off the grid unless `map_refine`), then
  `finish_detections`: the joint ML refinement of the detections on the measurements with the
  F-test re-test (`ml_polish`), and one pass of the backbone over the residual of that fit, whose
  slots fill free places and are polished in turn. The network finds the sources; a few
  Levenberg-Marquardt steps of the likelihood make their positions as accurate as the measurements
  allow, which the MVDR peaks of the network's own R_pred cannot (they only re-find its slots).
- `learned-refiner`: the seed's Stage-2 path. Low-rank MVDR map on the coarse refiner grid
  (range planes max-reduced; with `RefinerConfig.inputs` also the Bartlett map of the
  measurements' matched-filter covariance, `refiner_inputs`) -> SpectrumRefiner -> probability map -> 2-D NMS and threshold
  -> best range plane by MVDR -> (with `LearnedSettings.map_refine`, or without the finishing
  stage: 3-D refinement, the shared detector's `refine_peaks` on the same MVDR operator) ->
  `finish_detections`. Guardrails fall back to `learned` for a map that is
  non-finite, too flat, saturated or has too many local maxima (`RefinerGuard`); the run's extras
  flag each fallback.
- `learned-ml`: `learned` whose finishing stage searches the residual with the compressive
  methods' greedy ML continuation instead of the backbone (`LearnedSettings.continuation`
  "backprojection", `rismvdr.localize.compressive.continue_batch`): its picks come from the matched
  filter of the back-projected residual on the dictionary grid's points, so no dictionary
  `[L, M, G]` is built (building it is most of `somp-ml`'s cost).

Every method ends in the same gate NMS; the maps are the MVDR spectra on R_blend.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.defaults import EXIST_THRESHOLD
from rismvdr.localize.compressive import (
    add_candidates,
    continue_batch,
    polish_batch,
    polish_thresholds,
    rescan_batch,
)
from rismvdr.localize.detect import Detections, DetectorConfig, RefinerGuard, detect, gate_nms, refine_peaks
from rismvdr.localize.runner import Runner
from rismvdr.localize.settings import LocalizerSettings
from rismvdr.localize.weights import LearnedModel, default_weights_dir, load_learned
from rismvdr.models.config import BackboneConfig, RefinerConfig
from rismvdr.physics.covariance import batched_covariance, unit_rms
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import (
    Grid,
    bartlett_factor_operator,
    grid_steering,
    make_grid,
    mvdr_lowrank_operator,
    operator_spectrum,
    spectrum_25d,
)
from rismvdr.physics.steering import steering
from rismvdr.programs import stored_jit

__all__ = [
    "LearnedModel",
    "load_learned",
    "default_weights_dir",
    "check_scenes",
    "als_samp_factor",
    "backbone_factor",
    "learned_operator",
    "refiner_grid",
    "matched_filter_factor",
    "refiner_inputs",
    "refiner_map_ok",
    "make_learned_runner",
    "finish_detections",
    "learned_detector",
    "make_refiner_runner",
    "learned_method",
    "refiner_method",
    "learned_ml_method",
]


def refiner_grid(bcfg: BackboneConfig, rcfg: RefinerConfig) -> Grid:
    """The Stage-2 coarse grid: `grid_phi` x `grid_theta` points over the box, `planes` planes."""
    def step(lo_hi, n):
        return (lo_hi[1] - lo_hi[0]) / max(int(n) - 1, 1) if int(n) > 1 else 1.0
    theta = (0.0, 0.0) if bcfg.geometry().linear else bcfg.theta_deg
    return make_grid(bcfg.phi_deg, theta, bcfg.r_m, phi_step_deg=step(bcfg.phi_deg, rcfg.grid_phi),
                     theta_step_deg=step(theta, rcfg.grid_theta) if theta[1] > theta[0] else 1.0,
                     n_planes=int(rcfg.planes))


# ------------------------------------------------------------------------------------------
# Inference kernels (jittable; batch in, batch out)
# ------------------------------------------------------------------------------------------
def check_scenes(model: LearnedModel, scenes) -> None:
    """Host-side check that scenes fit the model (raises ValueError naming the mismatch)."""
    cfg = model.backbone_cfg
    if scenes.full_array != cfg.full_array:
        raise ValueError("scenes: the model was trained for " + ("full-array" if cfg.full_array else "RIS-mode")
                         + " scenes")
    n = scenes.y.shape[-1] if scenes.full_array else scenes.H.shape[-1]
    if n != cfg.n_elements:
        raise ValueError(f"scenes: N = {n} elements, the model was trained for N = {cfg.n_elements}")


def als_samp_factor(scenes):
    """Factor `[B, N, q]` of the ALS R_samp (the seed's: rank 5, 4 iterations, ridge 1e-2) of
    a batch, for `R_blend` when beta > 0 (traced use: no host-side validation)."""
    est = batched_covariance(scenes.y, scenes.H, scenes.codes, 1e-2, method="sample" if scenes.H is None else "als",
                             rank=5, n_iter=4, f_solver="auto", precision=jax.lax.Precision.HIGHEST)
    return est.factor


def backbone_factor(model: LearnedModel, scenes, *, exist_threshold: float = EXIST_THRESHOLD, samp_factor=None,
                    refine_range: bool = True):
    """R_blend factor `[B, N, q]` of a batch. In the structured variant, slots whose existence
    probability is below `exist_threshold` are removed (their columns zeroed). With beta > 0 the
    ALS R_samp is estimated from the scenes unless `samp_factor` is given. A scene whose `y` is
    all zero gets an all-zero factor (nothing was measured: its MVDR map is flat, no peaks),
    not the network's answer to a blank input. `refine_range`: the slots' ranges by the
    backbone's least-squares range scan (`BackboneConfig.range_scan`), else the network's own."""
    if model.backbone_cfg.beta > 0 and samp_factor is None:
        samp_factor = als_samp_factor(scenes)
    out = model.backbone_def.apply(model.backbone_params, scenes.y, scenes.H, scenes.codes, samp_factor,
                                   refine_range=refine_range)
    f = out.factor
    if model.backbone_cfg.covariance == "structured" and exist_threshold > 0:
        keep = jax.nn.sigmoid(out.logit) >= exist_threshold  # [B, K]
        k = keep.shape[-1]
        cols = jnp.concatenate([keep, jnp.ones(keep.shape[:-1] + (f.shape[-1] - k,), bool)], axis=-1)
        f = f * cols[:, None, :].astype(f.dtype)
        # Never an all-zero factor: keep the strongest slot so the spectrum stays defined.
        empty = ~jnp.any(keep, axis=-1)
        f = jnp.where(empty[:, None, None], out.factor * (jnp.arange(f.shape[-1]) == 0)[None, None, :]
                      .astype(f.dtype), f)
    f = jnp.where(_measured(scenes)[:, None, None], f, jnp.zeros((), f.dtype))
    return f, out


def _measured(scenes):
    """`[B]` bool: the scene's `y` holds a nonzero entry."""
    return jnp.any(scenes.y != 0, axis=(-2, -1))


def learned_operator(model: LearnedModel, scenes, *, delta_rel: float, precision: str,
                     exist_threshold: float = EXIST_THRESHOLD, samp_factor=None, refine_range: bool = True):
    """Batched MVDR (Woodbury) operator on R_blend (`backbone_factor`)."""
    f, _ = backbone_factor(model, scenes, exist_threshold=exist_threshold, samp_factor=samp_factor,
                           refine_range=refine_range)
    return jax.vmap(lambda x: mvdr_lowrank_operator(x, delta_rel=delta_rel, precision=precision))(f)


def _refiner_peaks(prob, op1, geometry, fine_grid: Grid, rgrid: Grid, det, threshold: float, *, model,
                   precision):
    """Peaks of one scene's refiner probability map `[T, P]` (coarse grid): local maxima above
    `threshold`, best range plane of each by the MVDR operator over the detection
    grid's planes, gate NMS, then the shared 3-D refinement and NMS."""
    real = prob.dtype
    phi_g, th_g, _ = (jnp.asarray(x, real) for x in rgrid.arrays())
    r_planes = jnp.asarray(fine_grid.arrays()[2], real)
    neigh = jax.lax.reduce_window(prob, -jnp.inf, jax.lax.max, (3, 3), (1, 1), ((1, 1), (1, 1)))
    is_peak = (prob >= neigh) & (prob >= threshold)
    flat = jnp.where(is_peak, prob, -jnp.inf).reshape(-1)
    score, idx = jax.lax.top_k(flat, min(det.n_candidates, flat.shape[0]))
    ti, pi = jnp.divmod(idx, prob.shape[1])
    phi, theta = phi_g[pi], th_g[ti]
    geo = geometry.astype(real)
    a = steering(geo, phi[:, None], theta[:, None], r_planes[None, :], model=model, dtype=op1.W.dtype)
    mvdr = operator_spectrum(op1, a, precision=precision)  # [C, planes]
    r = r_planes[jnp.argmax(mvdr, axis=-1)]
    valid = jnp.isfinite(score)
    phi, theta, r, score, valid = gate_nms(phi, theta, r, score, valid, det.gates, det.k_max)
    phi, theta, r, score, valid = (x[: det.k_max] for x in (phi, theta, r, score, valid))
    if det.refine:
        phi, theta, r, score = refine_peaks(op1, geometry, fine_grid, det, phi, theta, r, model=model,
                                            precision=precision)
        valid = valid & jnp.isfinite(score)  # as in the shared detector
        phi, theta, r, score, valid = gate_nms(phi, theta, r, score, valid, det.gates, det.k_max)
    return phi, theta, r, jnp.where(valid, score, -jnp.inf), valid


def matched_filter_factor(scenes):
    """Factor `[B, N, L]` of the matched-filter covariance of a batch (`physics.covariance`,
    the estimator of `mvdr-mf`): the back-projected snapshots `G_l^H y_l` (`y_l` in full-array
    mode), scaled to trace N. Its Bartlett map is the measurements' own matched-filter map."""
    return batched_covariance(scenes.y, scenes.H, scenes.codes, 0.0, method="matched_filter", rank=0, n_iter=0,
                              f_solver="auto", precision=jax.lax.Precision.HIGHEST).factor


def refiner_inputs(model: LearnedModel, rcfg: RefinerConfig, scenes, *, delta_rel: float, precision: str = "highest",
                   steering_model: str = "exact", max_chunk_mb: float = 256.0, geometry: ArrayGeometry | None = None):
    """The refiner's input maps of a batch (traced): `rcfg.inputs` in order, each on the coarse
    grid (`refiner_grid`) with its range planes max-reduced, in dB (`models.refiner.REFINER_INPUTS`).
    `geometry`: the scenes' array (default: the model's).

    Returns:
      (`[B, T, P, C]` float32 dB maps, the batched MVDR operator on R_blend with the refiner's
      slot threshold `rcfg.exist_threshold`, which picks each refiner peak's range plane).
    """
    bcfg = model.backbone_cfg
    geometry = bcfg.geometry() if geometry is None else geometry
    a_r = grid_steering(geometry, refiner_grid(bcfg, rcfg), model=steering_model, dtype=scenes.y.dtype)
    op = learned_operator(model, scenes, delta_rel=delta_rel, precision=precision,
                          exist_threshold=float(rcfg.exist_threshold))
    maps = []
    for name in rcfg.inputs:
        if name == "blend":
            chan = op
        elif name == "bartlett":  # the matched-filter covariance's factor: the back-projected snapshots G_l^H y_l
            chan = bartlett_factor_operator(matched_filter_factor(scenes))
        else:
            raise ValueError(f"refiner input: unknown map {name!r}")
        power = spectrum_25d(chan, a_r, precision=precision, max_chunk_mb=max_chunk_mb).power
        maps.append(10.0 * jnp.log10(jnp.maximum(power, 1e-30)).astype(jnp.float32))
    return jnp.stack(maps, axis=-1), op


def refiner_map_ok(prob, guard: RefinerGuard):
    """Guardrail of one `[T, P]` probability map: finite, not flat, not saturated, not too many
    local maxima."""
    finite = jnp.all(jnp.isfinite(prob))
    p = jnp.where(jnp.isfinite(prob), prob, 0.0)
    # Strict local maxima: above all 8 neighbours (a flat background holds none).
    padded = jnp.pad(p, 1, constant_values=-jnp.inf)
    t, w = p.shape
    shifts = [padded[1 + i: 1 + i + t, 1 + j: 1 + j + w] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    n_max = jnp.sum(p > jnp.max(jnp.stack(shifts), axis=0))
    return (finite & (jnp.std(p) >= guard.min_std)
            & (jnp.mean(p > guard.saturated_level) <= guard.max_saturated)
            & (n_max <= guard.max_local_maxima))


def _learned_detections(model: LearnedModel, geometry: ArrayGeometry, settings: LocalizerSettings, scenes):
    """`learned` on a batch (traced): (MVDR operator on R_blend, its 2.5D spectrum on the maps' grid
    (`settings.search_grids`), detections)."""
    prec = settings.precision
    grid, fine = settings.search_grids(geometry.linear)
    op = learned_operator(model, scenes, delta_rel=settings.estimator.delta_rel, precision=prec,
                          exist_threshold=settings.learned.exist_threshold,
                          refine_range=settings.learned.slot_range_scan)
    a_grid = grid_steering(geometry, grid, model=settings.steering_model, dtype=scenes.y.dtype)
    spec = spectrum_25d(op, a_grid, precision=prec, max_chunk_mb=settings.max_chunk_mb)
    det = detect(op, spec, geometry, grid, learned_detector(settings), model=settings.steering_model,
                 precision=prec, fine=fine)
    return op, spec, det


def learned_detector(settings: LocalizerSettings) -> DetectorConfig:
    """The shared detector's settings for a learned MVDR map. With the finishing stage on:
    `LearnedSettings.map_threshold` off keeps every local maximum (up to k_max), since the F test
    on the measurements decides what is a source; `LearnedSettings.map_refine` off skips the
    detector's 3-D refinement of the full grid's peaks, since the ML polish refines them on the
    measurements. A coarse-to-fine search refines its coarse peaks (the search's second half)
    unless the greedy ML continuation (`continuation="backprojection"`, `learned-ml`) follows the
    polish: started from peaks on a 3x coarser grid, the polish lands in the wrong range basin on
    a low-rank channel, which the residual backbone pass does not repair (`learned`, `seed-los`,
    300 scenes, a model fine-tuned there: F1 0.121 unrefined, 0.208 refined, 0.207 on the full
    grid) and the greedy continuation does (`learned-ml`, 1000 `seed` validation scenes: 0.8331
    unrefined, 0.8329 refined). Without the finishing stage, `settings.detector` as it is."""
    ls = settings.learned
    if not ls.polish:
        return settings.detector
    kw = {}
    if not ls.map_threshold:
        kw["threshold_mode"] = "none"
    coarse_refined = settings.search.search == "coarse-to-fine" and ls.continuation != "backprojection"
    if not ls.map_refine and not coarse_refined:
        kw["refine"] = False
    return dataclasses.replace(settings.detector, **kw)


def finish_detections(model: LearnedModel, geometry: ArrayGeometry, settings: LocalizerSettings, thresholds,
                      scenes, det: Detections) -> Detections:
    """The physics that finishes a learned method's detections (traced; `settings.learned`):

    1. `ml_polish` on the measurements: the joint off-grid ML refinement of the detected sources
       (a few Levenberg-Marquardt steps of the concentrated likelihood, which reach the CRB from a
       start in its basin) and the F-test re-test, the same K-free significance test as the
       compressive methods (it is what rejects the network's answer on noise-only data);
    2. the search of the residual for sources the first pass missed, by `continuation`:
       "backprojection": the greedy ML continuation (`continue_batch`: the grid point of the
       dictionary grid that the back-projected residual's matched filter ranks first joins, all
       sources are refined, the addition is kept if its F test passes, until one fails), or
       "backbone": `residual_passes` times, the backbone over the residual of that fit (the measurements minus
       the fitted sources, at unit RMS): its slots whose existence probability reaches
       `exist_threshold` fill the free places (`add_candidates`), and all sources are polished
       again. A source the first pass missed (masked by a stronger neighbour, or below the
       detector's threshold) stands out in the residual. No dictionary is searched.

    3. with `range_rescan` > 0: `rescan_batch`, each source's range searched over the whole box at its
       fitted angles (jointly with the others), the sources refined from there, and that fit kept
       where it explains more of `y` with no fewer sources. The network and the first polish find
       the direction; the range of a distant source has a flat likelihood, and a refinement started
       in the wrong range basin stays there.

    Scores are `10 log10` of each source's F statistic; `polish=False` returns `det` unchanged;
    `polish_iters` sets the Levenberg-Marquardt iterations of each polish.
    """
    ls = settings.learned
    if not ls.polish:
        return det
    polish = lambda d: polish_batch(scenes.y, scenes.H, scenes.codes, thresholds, geometry, settings,  # noqa: E731
                                    d.phi, d.theta, d.r, d.valid, ml_iters=ls.polish_iters)
    res, resid = polish(det)
    if ls.continuation == "backprojection":
        a_flat = grid_steering(geometry, settings.dictionary_grid(geometry.linear), model=settings.steering_model,
                               dtype=scenes.y.dtype)
        res, resid = continue_batch(scenes.y, scenes.H, scenes.codes, a_flat.reshape(-1, a_flat.shape[-1]),
                                    thresholds, geometry, settings, res, ml_iters=ls.polish_iters)
    live = _measured(scenes)
    for _ in range(int(ls.residual_passes) if ls.continuation == "backbone" else 0):
        rest = dataclasses.replace(scenes, y=unit_rms(resid)[0])
        samp = als_samp_factor(rest) if model.backbone_cfg.beta > 0 else None
        out = model.backbone_def.apply(model.backbone_params, rest.y, rest.H, rest.codes, samp,
                                       refine_range=ls.slot_range_scan)
        cand = (jax.nn.sigmoid(out.logit) >= ls.exist_threshold) & live[:, None]
        start = jax.vmap(lambda *a: add_candidates(*a, settings.detector.gates))(
            res.phi, res.theta, res.r, res.valid, out.phi, out.theta, out.r, cand)
        res, resid = polish(Detections(*start[:3], jnp.zeros_like(start[0]), start[3]))
    if ls.range_rescan:
        res, resid, _ = rescan_batch(scenes.y, scenes.H, scenes.codes, thresholds, geometry, settings, res, resid,
                                     points=int(ls.range_rescan), ml_iters=ls.polish_iters)
    return Detections(res.phi, res.theta, res.r, res.score_db, res.valid)


def _thresholds(settings: LocalizerSettings, geometry: ArrayGeometry, scenes: Scene):
    """The F-test thresholds for the scenes' own M and L (static shapes: computed once per
    trace), never the training data's: a scene with fewer snapshots needs a higher threshold."""
    n_snap, n_meas = scenes.y.shape[-2:]
    return polish_thresholds(settings, geometry, n_meas, n_snap)


#: The jitted runners of the last few (model architecture, geometry, settings): `localize` builds
#: its runner on every call, and a new jitted closure is traced again (about 2 s for `learned` on
#: the CPU, more than a batch of 32 scenes takes), so the runners are reused across calls. The
#: parameters are arguments of the runners, so models of one architecture share them.
_RUNNERS: collections.OrderedDict = collections.OrderedDict()
_RUNNERS_KEPT = 8


def _reused(make):
    @functools.wraps(make)
    def cached(model: LearnedModel, geometry: ArrayGeometry, settings: LocalizerSettings):
        key = _program_key(make.__name__, model, geometry, settings) + (model.backbone_def, model.refiner_def)
        if key not in _RUNNERS:
            _RUNNERS[key] = make(model, geometry, settings)
            while len(_RUNNERS) > _RUNNERS_KEPT:
                _RUNNERS.popitem(last=False)
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]

    return cached


def _program_key(name: str, model: LearnedModel, geometry: ArrayGeometry, settings: LocalizerSettings) -> tuple:
    """What a runner (`name`: its builder) closes over: the architecture (its configs; the
    parameters are arguments), the settings and the geometry; the key of its stored programs
    (`rismvdr.programs`) and, with the module definitions, of `_RUNNERS`."""
    pos = np.asarray(geometry.positions)
    return (name, model.backbone_cfg, model.refiner_cfg, settings, pos.shape, pos.dtype.str,
            hashlib.sha256(pos.tobytes()).hexdigest(), float(geometry.wavelength))


@_reused
def make_learned_runner(model: LearnedModel, geometry: ArrayGeometry, settings: LocalizerSettings):
    """A jitted `(backbone_params, scenes) -> (Detections, Spectrum25D)`: MVDR on R_blend through
    the shared spectrum and detector, finished on the measurements (`finish_detections`)."""
    def run(bparams, scenes):
        m = model._replace(backbone_params=bparams)
        thresholds = _thresholds(settings, geometry, scenes)
        _, spec, det = _learned_detections(m, geometry, settings, scenes)
        return finish_detections(m, geometry, settings, thresholds, scenes, det), spec

    return stored_jit(run, key=_program_key("make_learned_runner", model, geometry, settings))


@_reused
def make_refiner_runner(model: LearnedModel, geometry: ArrayGeometry, settings: LocalizerSettings):
    """A jitted `(backbone_params, refiner_params, scenes) -> (Detections, Spectrum25D, fallback)`
    of `learned-refiner` (fallback `[B]` bool: the refiner map was rejected by the guardrails, and
    the `learned` detections were used).

    Raises:
      ValueError: the model has no refiner.
    """
    _require_refiner(model)
    grid = settings.grid(geometry.linear)
    det_cfg = learned_detector(settings)  # its gates, k_max, candidates and 3-D refinement (map_refine)
    prec = settings.precision
    guard = settings.learned.refiner_guard

    def run(bparams, rparams, scenes):
        m = model._replace(backbone_params=bparams, refiner_params=rparams)
        thresholds = _thresholds(settings, geometry, scenes)
        _, spec, base = _learned_detections(m, geometry, settings, scenes)
        b = spec.power.shape[0]
        rcfg = model.refiner_cfg
        rgrid = refiner_grid(model.backbone_cfg, rcfg)
        # The refiner sees the maps it was trained on (R_blend with its own slot threshold, ...).
        db, op = refiner_inputs(m, rcfg, scenes, delta_rel=settings.estimator.delta_rel, precision=prec,
                                steering_model=settings.steering_model, max_chunk_mb=settings.max_chunk_mb,
                                geometry=geometry)
        prob = m.refiner_def.module(rparams).probabilities(db)  # [B, T, P]
        live = _measured(scenes)  # an all-zero scene: the refiner is not asked (no fallback either)
        ok = jax.vmap(lambda p: refiner_map_ok(p, guard))(prob) & live
        thr = guard.peak_threshold
        thr = float(rcfg.peak_threshold) if thr is None else float(thr)
        peaks = jax.vmap(lambda p, o: _refiner_peaks(p, o, geometry, grid, rgrid, det_cfg, thr,
                                                     model=settings.steering_model, precision=prec))(prob, op)
        pick = lambda a, c: jnp.where(ok.reshape((b,) + (1,) * (a.ndim - 1)), a, c)  # noqa: E731
        out = Detections(*(pick(a, c) for a, c in zip(peaks, base)))
        return finish_detections(m, geometry, settings, thresholds, scenes, out), spec, ~ok & live

    return stored_jit(run, key=_program_key("make_refiner_runner", model, geometry, settings))


# ------------------------------------------------------------------------------------------
# Registry methods (`make(scenes, geometry, settings, model) -> Runner`)
# ------------------------------------------------------------------------------------------
def _check_measurements(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings) -> None:
    """Refuse scenes whose measurements cannot carry the finishing stage's fit and F test.

    The polish fits up to `k_max` sources, each with a complex symbol per snapshot and its
    position (3 real parameters; 2 on a linear array, whose theta is known), and the F test
    needs M > k_max and a residual beyond that fit: `2 M L > k_max (2 L + 3)`. With fewer
    measurements the fit interpolates `y` and every detection passes the test (or scores NaN).

    Raises:
      ValueError: naming M, L and the smallest M that would do.
    """
    n_snap, n_meas = (int(v) for v in scenes.y.shape[-2:])
    k_max = int(settings.detector.k_max)
    n_pos = 2 if geometry.linear else 3
    m_min = max(k_max + 1, (k_max * (2 * n_snap + n_pos)) // (2 * n_snap) + 1)
    if n_meas < m_min:
        raise ValueError(f"scenes: M = {n_meas} measurements per snapshot (L = {n_snap} snapshots) are too few for "
                         f"the learned methods' fit and F test of up to k_max = {k_max} sources; they need "
                         f"M >= {m_min} here (or a smaller k_max)")


def _require_refiner(model: LearnedModel) -> LearnedModel:
    """`model` if it has a refiner; `learned-refiner` would otherwise be `learned` in every scene."""
    if not model.has_refiner:
        raise ValueError(f"model: {model.source} has no refiner; use 'learned' or a run of train-refiner")
    return model


def _checked(model: LearnedModel | None, scenes: Scene, geometry: ArrayGeometry,
             settings: LocalizerSettings, *, refiner: bool = False) -> LearnedModel:
    """The model (default: the shipped weights, with their refiner if `refiner`) once the scenes
    fit it and the learned methods."""
    _check_measurements(scenes, geometry, settings)
    model = load_learned(refiner=refiner) if model is None else model
    check_scenes(model, scenes)
    return model


def learned_method(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings,
                   model: LearnedModel | None = None) -> Runner:
    """`learned` (default model: the shipped weights); no extras.

    Raises:
      ValueError: scenes the model was not trained for, or too few measurements per snapshot
        (M) for the fit and F test of the finishing stage.
    """
    model = _checked(model, scenes, geometry, settings)
    jitted = make_learned_runner(model, geometry, settings)

    def run(batch: Scene):
        det, spec = jitted(model.backbone_params, batch)
        return det, spec, {}

    return Runner(run, settings.search_grids(geometry.linear)[0])


def refiner_method(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings,
                   model: LearnedModel | None = None) -> Runner:
    """`learned-refiner`; extras: `fallback` `[B]` bool.

    Raises:
      ValueError: a model without a refiner (a backbone-only run or export), scenes the model was
        not trained for, or too few measurements per snapshot (M).
    """
    model = _require_refiner(_checked(model, scenes, geometry, settings, refiner=True))
    jitted = make_refiner_runner(model, geometry, settings)

    def run(batch: Scene):
        det, spec, fallback = jitted(model.backbone_params, model.refiner_params, batch)
        return det, spec, {"fallback": fallback}

    return Runner(run, settings.search_grids(geometry.linear)[0])


def learned_ml_method(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings,
                      model: LearnedModel | None = None) -> Runner:
    """`learned-ml`: `learned` with the ML continuation (`LearnedSettings.continuation`
    "backprojection"): the network's MVDR detections polished, continued greedily by the
    compressive methods' ML steps (picks by the back-projected residual's matched filter, no
    dictionary), re-tested and range-rescanned; the maps are `learned`'s; no extras."""
    ml = dataclasses.replace(settings, learned=dataclasses.replace(settings.learned, continuation="backprojection"))
    return learned_method(scenes, geometry, ml, model)
