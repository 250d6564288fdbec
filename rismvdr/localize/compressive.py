"""Compressive methods (`somp`, `somp-ml`): batch drivers over the physics kernels, finished by
the detector's gate NMS.

The kernels (SOMP, off-grid ML, order re-test, ML from a start) live in
`rismvdr.physics.compressive` and act on one scene; here they are batched (jit, then
`lax.map` over groups of vmapped scenes) and duplicates are merged at the detection gate
(`rismvdr.localize.detect.gate_nms`). `learned-ml` uses `localize_from_start` with a learned
method's detections as the start.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.localize.detect import Detections, gate_nms
from rismvdr.localize.runner import Runner
from rismvdr.localize.settings import LocalizerSettings
from rismvdr.physics.compressive import (
    CompressiveConfig,
    AtomOperator,
    CompressiveResult,
    apply_operators,
    atom_norms,
    atom_scores,
    backprojected_scores,
    f_thresholds,
    ls_fit,
    ml_continue,
    ml_from_start,
    ml_polish,
    ml_refine,
    ml_rescan,
    order_retest,
    scene_operators,
    somp,
    source_fstats,
    somp_ml,
)
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.linalg import abs2
from rismvdr.physics.scenarios import DEFAULT_GATES, Gates
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import Grid, Spectrum25D, grid_steering
from rismvdr.physics.steering import steering
from rismvdr.programs import stored_jit

__all__ = [
    "CompressiveContext",
    "add_candidates",
    "polish_batch",
    "rescan_batch",
    "continue_batch",
    "polish_thresholds",
    "scene_group_size",
    "bound_method",
    "compressive_context",
    "compressive_method",
    "localize_compressive",
    "localize_from_start",
    "PICKS",
]


class CompressiveContext(NamedTuple):
    """What a compressive run fixes once: the dictionary grid, its flattened steering `[G, N]`,
    the F-test thresholds `[k_max]` and the config."""

    grid: Grid
    a_flat: jax.Array
    thresholds: np.ndarray
    cfg: CompressiveConfig


def compressive_context(settings: LocalizerSettings, geometry: ArrayGeometry, scenes: Scene) -> CompressiveContext:
    """The dictionary grid, steering and thresholds for scenes shaped like `scenes`."""
    grid = settings.dictionary_grid(geometry.linear)
    a_flat = grid_steering(geometry, grid, model=settings.steering_model, dtype=scenes.y.dtype)
    a_flat = a_flat.reshape(-1, a_flat.shape[-1])
    ccfg = settings.compressive_config()
    thresholds = f_thresholds(int(scenes.y.shape[-1]), int(scenes.y.shape[-2]), ccfg.k_max,
                              int(a_flat.shape[0]), ccfg)
    return CompressiveContext(grid, a_flat, thresholds, ccfg)


def compressive_method(ml: bool):
    """A registry `make` for SOMP (`ml=False`, grid positions) or SOMP + ML + order re-test.

    Maps are SOMP's first-step score on the dictionary grid; no extras.
    """
    def make(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings, model=None) -> Runner:
        ctx = compressive_context(settings, geometry, scenes)
        gates = settings.detector.gates

        def run(batch: Scene):
            res, spec = localize_compressive(batch.y, batch.H, batch.codes, ctx.a_flat, ctx.thresholds, geometry,
                                             ctx.grid, ctx.cfg, gates=gates, ml=ml, model=settings.steering_model)
            return Detections(res.phi, res.theta, res.r, res.score_db, res.valid), spec, {}

        return Runner(run, ctx.grid)

    return make


def bound_method(kind: str):
    """A registry `make` for the accuracy limits, which read the truth.

    * `kind="ml"` (`ml-oracle`): the compressive ML refinement (`ml_refine`, the kernel of
      `somp-ml`) started at the true positions with the true K, no order test: what an
      efficient estimator achieves when it is started at the answer, the estimation limit of
      these measurements under the detection gates (a weak source it cannot hold within the
      gate is not locatable by any estimator started elsewhere either).
    * `kind="somp-k"` (`somp-ml-oracle-k`): `somp-ml` with the order forced to the true K (no F
      test, no re-test): isolates the greedy start from the stopping rule.

    Scores are each source's F statistic (dB) in the final fit; duplicates are merged by the
    same gate NMS as `somp-ml`. Maps: SOMP's first-step score on the dictionary grid.
    """
    if kind not in ("ml", "somp-k"):
        raise ValueError(f"kind: 'ml' or 'somp-k', got {kind!r}")

    def make(scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings, model=None) -> Runner:
        ctx = compressive_context(settings, geometry, scenes)
        gates = settings.detector.gates

        def run(batch: Scene):
            phi0, th0, r0, m0 = (_pad_slots(x, ctx.cfg.k_max, fill)
                                 for x, fill in ((batch.phi, 0.0), (batch.theta, 0.0), (batch.r, 1.0),
                                                 (batch.mask, False)))
            res, spec = _bound_batch(batch.y, batch.H, batch.codes, ctx.a_flat, jnp.asarray(ctx.thresholds),
                                     geometry, phi0, th0, r0, m0, grid=ctx.grid, cfg=ctx.cfg, gates=gates,
                                     kind=kind, model=settings.steering_model)
            return Detections(res.phi, res.theta, res.r, res.score_db, res.valid), spec, {}

        return Runner(run, ctx.grid)

    return make


def _pad_slots(x, k: int, fill):
    """Truth `[B, K_scene]` cut or padded to `[B, k]` slots (a scene with more sources than the
    detector's `k_max` keeps its first `k`)."""
    x = jnp.asarray(x)
    if x.shape[-1] >= k:
        return x[..., :k]
    pad = jnp.full(x.shape[:-1] + (k - x.shape[-1],), fill, x.dtype)
    return jnp.concatenate([x, pad], axis=-1)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "gates", "kind", "model"))
def _bound_batch(y, H, codes, a_flat, thresholds, geometry, phi0, theta0, r0, mask0, *, grid, cfg, gates, kind,
                 model):
    real = jnp.real(y).dtype
    coords = _flat_coords(grid, real)
    l, n = y.shape[1], a_flat.shape[-1]
    geo = geometry.astype(real)

    def one(y1, h1, c1, p0, t0, rr0, m0):
        E = scene_operators(h1, c1, l, n, y1.dtype)
        D = AtomOperator(E, a_flat)
        norms = atom_norms(D)
        if kind == "ml":
            phi, theta, r, _ = ml_refine(y1, E, geo, grid, p0.astype(real), t0.astype(real), rr0.astype(real), m0,
                                         cfg, model=model)
            mask = m0
            first = atom_scores(D, norms, y1)
        else:
            phi, theta, r, mask, _, _, first = somp_ml(y1, E, D, norms, coords, thresholds, geo, grid, cfg,
                                                        model=model, order=jnp.sum(m0))
        a = steering(geo, phi, theta, r, model=model, dtype=y1.dtype)
        B = apply_operators(E, a.T)
        f, _ = source_fstats(y1, B, mask)  # each source's F, no order test
        f = jnp.where(mask, f, 0.0)
        _, e = ls_fit(B, y1, mask)
        score = 10.0 * jnp.log10(jnp.maximum(f, 1e-30))
        phi, theta, r, score, valid = gate_nms(phi, theta, r, score, mask, gates, cfg.k_max)
        res = CompressiveResult(phi, theta, r, jnp.where(valid, score, -jnp.inf), valid,
                                jnp.sum(mask).astype(jnp.int32), jnp.sum(abs2(e)))
        return res, _plane_max(first, grid)

    return jax.lax.map(lambda args: one(*args), (y, H, codes, phi0, theta0, r0, mask0),
                       batch_size=scene_group_size(y.shape[0], y.shape[1], cfg.k_max,
                                                   width=cfg.search_width if kind == "somp-k" else 1))


#: `localize_from_start`'s criteria of the greedy picks: the dictionary's atom scores (`atom_scores`,
#: as `somp-ml`) or the matched filter of the back-projected residual (`backprojected_scores`: no
#: dictionary is built).
PICKS = ("dictionary", "backprojection")


def localize_from_start(y, H, codes, a_flat, thresholds, geometry: ArrayGeometry, grid: Grid,
                        cfg: CompressiveConfig, phi0, theta0, r0, mask0, *, gates: Gates = DEFAULT_GATES,
                        model: str = "exact", picks: str = "dictionary") -> CompressiveResult:
    """`ml_from_start` for a batch (`[S, ...]` inputs as in `localize_compressive`; starting
    detections `[S, K_max]`), its greedy picks by `picks` (one of `PICKS`). Returns a
    `CompressiveResult` with `[S, K_max]` arrays."""
    cfg.validate()
    if picks not in PICKS:
        raise ValueError(f"picks: expected one of {PICKS}, got {picks!r}")
    return _from_start_batch(y, H, codes, a_flat, jnp.asarray(thresholds), geometry, phi0, theta0, r0, mask0,
                             grid=grid, cfg=cfg, gates=gates, model=model, picks=picks)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "gates", "model", "picks"))
def _from_start_batch(y, H, codes, a_flat, thresholds, geometry, phi0, theta0, r0, mask0, *, grid, cfg, gates,
                      model, picks):
    real = jnp.real(y).dtype
    coords = _flat_coords(grid, real)
    l, n = y.shape[1], a_flat.shape[-1]
    geo = geometry.astype(real)

    def one(y1, h1, c1, p0, t0, rr0, m0):
        E = scene_operators(h1, c1, l, n, y1.dtype)
        if picks == "dictionary":
            D = AtomOperator(E, a_flat)
            scores = functools.partial(atom_scores, D, atom_norms(D))
        else:
            scores = functools.partial(backprojected_scores, h1, c1, a_flat)
        phi, theta, r, mask, f = ml_from_start(y1, E, None, None, coords, thresholds, geo, grid,
                                               p0.astype(real), t0.astype(real), rr0.astype(real), m0, cfg,
                                               model=model, scores=scores)
        _, e = ls_fit(apply_operators(E, steering(geo, phi, theta, r, model=model, dtype=y1.dtype).T), y1, mask)
        score = 10.0 * jnp.log10(jnp.maximum(f, 1e-30))
        phi, theta, r, score, valid = gate_nms(phi, theta, r, score, mask, gates, cfg.k_max)
        return CompressiveResult(phi, theta, r, jnp.where(valid, score, -jnp.inf), valid,
                                 jnp.sum(valid).astype(jnp.int32), jnp.sum(abs2(e)))

    return jax.lax.map(lambda args: one(*args), (y, H, codes, phi0, theta0, r0, mask0),
                       batch_size=scene_group_size(y.shape[0], y.shape[1], cfg.k_max, largest=1))


def polish_thresholds(settings: LocalizerSettings, geometry: ArrayGeometry, n_meas: int, n_snap: int) -> np.ndarray:
    """The F-test thresholds `[k_max]` of `polish_batch` for scenes of `n_meas` x `n_snap`: those of
    the compressive methods (Bonferroni over the dictionary grid's atoms), so every method's
    detections face the same significance test."""
    grid = settings.dictionary_grid(geometry.linear)
    return f_thresholds(int(n_meas), int(n_snap), settings.detector.k_max, int(np.prod(grid.shape)),
                        settings.compressive_config())


def polish_batch(y, H, codes, thresholds, geometry: ArrayGeometry, settings: LocalizerSettings, phi0, theta0, r0,
                 mask0, *, ml_iters: int | None = None):
    """`ml_polish` for a batch: ML refinement + F-test re-test of given detections, then the gate NMS.

    Args:
      y: `[S, L, M]` (unit RMS, as `rismvdr.localize.localize` passes it); H: `[S, M, N]` or None;
        codes: `[S, L, N]` or None.
      thresholds: `[k_max]` from `polish_thresholds`.
      phi0, theta0, r0, mask0: `[S, k_max]` starting detections.
      ml_iters: Levenberg-Marquardt iterations (default: the compressive config's).

    Returns:
      (`CompressiveResult` with `[S, k_max]` arrays, score = 10 log10 F; residual `[S, L, M]` of
      the final fit, for a further detection pass on what the sources leave unexplained).
    """
    cfg = settings.compressive_config()
    if ml_iters is not None:
        cfg = dataclasses.replace(cfg, ml_iters=int(ml_iters))
    cfg.validate()
    return _polish_batch(y, H, codes, jnp.asarray(thresholds), geometry, phi0, theta0, r0, mask0,
                         grid=settings.dictionary_grid(geometry.linear), cfg=cfg,
                         gates=settings.detector.gates, model=settings.steering_model)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "gates", "model"))
def _polish_batch(y, H, codes, thresholds, geometry, phi0, theta0, r0, mask0, *, grid, cfg, gates, model):
    real = jnp.real(y).dtype
    l, n = y.shape[1], geometry.positions.shape[0]
    geo = geometry.astype(real)

    def one(y1, h1, c1, p0, t0, rr0, m0):
        E = scene_operators(h1, c1, l, n, y1.dtype)
        phi, theta, r, mask, f, e = ml_polish(y1, E, geo, grid, p0.astype(real), t0.astype(real), rr0.astype(real),
                                              m0, thresholds, cfg, model=model)
        return _fit_result(phi, theta, r, mask, f, e, gates, cfg.k_max), e

    return jax.lax.map(lambda args: one(*args), (y, H, codes, phi0, theta0, r0, mask0),
                       batch_size=scene_group_size(y.shape[0], l, cfg.k_max))


def _fit_result(phi, theta, r, mask, f, e, gates: Gates, k_max: int) -> CompressiveResult:
    """One scene's fitted sources (F statistics `f`, residual `e`) as a `CompressiveResult`:
    score = 10 log10 F, then the gate NMS."""
    score = 10.0 * jnp.log10(jnp.maximum(jnp.where(mask, f, 0.0), 1e-30))
    phi, theta, r, score, valid = gate_nms(phi, theta, r, score, mask, gates, k_max)
    return CompressiveResult(phi, theta, r, jnp.where(valid, score, -jnp.inf), valid,
                             jnp.sum(valid).astype(jnp.int32), jnp.sum(abs2(e)))


def rescan_batch(y, H, codes, thresholds, geometry: ArrayGeometry, settings: LocalizerSettings,
                 res: CompressiveResult, resid, *, points: int, ml_iters: int | None = None):
    """`ml_rescan` for a batch of fitted scenes (e.g. `polish_batch`'s result and residual): each
    source's range searched over `points` values of 1/r across the search box at its fitted
    angles, the sources refined from there, and that fit kept per scene when it explains more of
    `y` with no fewer sources; then the gate NMS.

    Returns:
      (`CompressiveResult` `[S, k_max]`, score = 10 log10 F; residual `[S, L, M]`; kept `[S]` bool).
    """
    if int(points) < 3:
        raise ValueError(f"points: the range scan needs >= 3 candidates, got {points!r}")
    cfg = settings.compressive_config()
    if ml_iters is not None:
        cfg = dataclasses.replace(cfg, ml_iters=int(ml_iters))
    cfg.validate()
    r_lo, r_hi = settings.search.r_m
    real = jnp.real(y).dtype
    inv_r = jnp.linspace(1.0 / r_hi, 1.0 / r_lo, int(points), dtype=real)
    return _rescan_batch(y, H, codes, jnp.asarray(thresholds), geometry, res, resid, inv_r,
                         grid=settings.dictionary_grid(geometry.linear), cfg=cfg, gates=settings.detector.gates,
                         model=settings.steering_model)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "gates", "model"))
def _rescan_batch(y, H, codes, thresholds, geometry, res, resid, inv_r, *, grid, cfg, gates, model):
    real = jnp.real(y).dtype
    l, n = y.shape[1], geometry.positions.shape[0]
    geo = geometry.astype(real)

    def one(y1, h1, c1, old, e0):
        E = scene_operators(h1, c1, l, n, y1.dtype)
        # padding slots get a harmless in-box position (they stay masked in every fit)
        p0, t0 = (jnp.where(old.valid, x, 0.0).astype(real) for x in (old.phi, old.theta))
        r0 = jnp.where(old.valid, old.r, 1.0 / inv_r[-1]).astype(real)
        phi, theta, r, mask, f, e, kept = ml_rescan(y1, E, geo, grid, p0, t0, r0, old.valid, e0, thresholds, cfg,
                                                    inv_r, model=model)
        new = _fit_result(phi, theta, r, mask, f, e, gates, cfg.k_max)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(kept, a, b.astype(a.dtype)), new, old)
        return out, jnp.where(kept, e, e0), kept

    return jax.lax.map(lambda args: one(*args), (y, H, codes, res, resid),
                       batch_size=scene_group_size(y.shape[0], l, cfg.k_max))


def continue_batch(y, H, codes, a_flat, thresholds, geometry: ArrayGeometry, settings: LocalizerSettings,
                   res: CompressiveResult, *, ml_iters: int | None = None):
    """`ml_continue` for a batch of fitted scenes (e.g. `polish_batch`'s result), its picks by the
    matched filter of the back-projected residual (`backprojected_scores`) over the dictionary
    grid's points: no dictionary is built. Then the F-test order re-test and the gate NMS.

    Args:
      a_flat: `[G, N]` steering of the dictionary grid (`compressive_context(...).a_flat`).
      res: the fit, `[S, k_max]` arrays; thresholds: `[k_max]` from `polish_thresholds`.
      ml_iters: Levenberg-Marquardt iterations of each step's refinement (default: the compressive
        config's).

    Returns:
      (`CompressiveResult` `[S, k_max]`, score = 10 log10 F; residual `[S, L, M]`).
    """
    cfg = settings.compressive_config()
    if ml_iters is not None:
        cfg = dataclasses.replace(cfg, ml_iters=int(ml_iters))
    cfg.validate()
    return _continue_batch(y, H, codes, a_flat, jnp.asarray(thresholds), geometry, res,
                           grid=settings.dictionary_grid(geometry.linear), cfg=cfg, gates=settings.detector.gates,
                           model=settings.steering_model)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "gates", "model"))
def _continue_batch(y, H, codes, a_flat, thresholds, geometry, res, *, grid, cfg, gates, model):
    real = jnp.real(y).dtype
    coords = _flat_coords(grid, real)
    l, n = y.shape[1], a_flat.shape[-1]
    geo = geometry.astype(real)

    def one(y1, h1, c1, old):
        E = scene_operators(h1, c1, l, n, y1.dtype)
        # padding slots get a harmless in-box position (they stay masked until a pick fills them)
        p0, t0 = (jnp.where(old.valid, x, 0.0).astype(real) for x in (old.phi, old.theta))
        r0 = jnp.where(old.valid, old.r, coords[2][0]).astype(real)
        scores = functools.partial(backprojected_scores, h1, c1, a_flat)
        phi, theta, r, mask, f, e = ml_continue(y1, E, scores, coords, thresholds, geo, grid, p0, t0, r0, old.valid,
                                                cfg, model=model)
        return _fit_result(phi, theta, r, mask, f, e, gates, cfg.k_max), e

    return jax.lax.map(lambda args: one(*args), (y, H, codes, res),
                       batch_size=scene_group_size(y.shape[0], l, cfg.k_max, largest=1))


def add_candidates(phi, theta, r, mask, cphi, ctheta, cr, cmask, gates: Gates):
    """Fill the free slots of one scene's sources with new candidates, in the candidates' order,
    skipping a candidate within the angle gate of a kept source (jittable; vmap for a batch).

    Args:
      phi, theta, r, mask: `[K]` sources (radians, metres) and which slots hold one.
      cphi, ctheta, cr, cmask: `[C]` candidates and which exist.

    Returns:
      (phi, theta, r, mask) `[K]`: the kept sources first, then the admitted candidates.
    """
    near = ((jnp.abs(cphi[:, None] - phi[None, :]) <= gates.phi)
            & (jnp.abs(ctheta[:, None] - theta[None, :]) <= gates.theta) & mask[None, :])
    cmask = cmask & ~jnp.any(near, axis=1)
    cat = lambda a, b: jnp.concatenate([a, b.astype(a.dtype)])  # noqa: E731
    all_m = jnp.concatenate([mask, cmask])
    order = jnp.argsort(~all_m)[: mask.shape[0]]  # stable: kept sources, then candidates in order
    return cat(phi, cphi)[order], cat(theta, ctheta)[order], cat(r, cr)[order], all_m[order]


def _flat_coords(grid: Grid, real):
    """(phi, theta, r) `[G]` of the grid flattened in (theta, phi, plane) order."""
    phi_g, th_g, r_g = grid.arrays()
    t, p, rr = grid.shape
    return (jnp.asarray(np.broadcast_to(phi_g[None, :, None], (t, p, rr)).reshape(-1), real),
            jnp.asarray(np.broadcast_to(th_g[:, None, None], (t, p, rr)).reshape(-1), real),
            jnp.asarray(np.broadcast_to(r_g[None, None, :], (t, p, rr)).reshape(-1), real))


def _plane_max(score, grid: Grid) -> Spectrum25D:
    t, p, rr = grid.shape
    vol = score.reshape(t, p, rr)
    return Spectrum25D(jnp.max(vol, axis=-1), jnp.argmax(vol, axis=-1).astype(jnp.int32))


def localize_compressive(y, H, codes, a_flat, thresholds, geometry: ArrayGeometry, grid: Grid,
                         cfg: CompressiveConfig, *, gates: Gates = DEFAULT_GATES, ml: bool = True,
                         model: str = "exact") -> tuple[CompressiveResult, Spectrum25D]:
    """SOMP (+ ML + order re-test) for a batch of scenes (jit + vmap inside).

    Args:
      y: `[S, L, M]`; H: `[S, M, N]` or None; codes: `[S, L, N]` or None.
      a_flat: `[G, N]` steering of `grid` flattened in (theta, phi, plane) order
        (`grid_steering(...).reshape(-1, N)`), built once.
      thresholds: `[K_max]` from `f_thresholds`.
      gates: the gate of the final duplicate merge (SI).

    Returns:
      (`CompressiveResult` with `[S, K_max]` arrays, `Spectrum25D` of SOMP's first-step score).
    """
    cfg.validate()
    return _localize_batch(y, H, codes, a_flat, jnp.asarray(thresholds), geometry, grid=grid, cfg=cfg,
                           gates=gates, ml=ml, model=model)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "gates", "ml", "model"))
def _localize_batch(y, H, codes, a_flat, thresholds, geometry, *, grid, cfg, gates, ml, model):
    real = jnp.real(y).dtype
    flat_phi, flat_th, flat_r = _flat_coords(grid, real)
    l, n = y.shape[1], a_flat.shape[-1]
    geo = geometry.astype(real)

    def one(y1, h1, c1):
        E = scene_operators(h1, c1, l, n, y1.dtype)
        D = AtomOperator(E, a_flat)
        norms = atom_norms(D)
        rss = jnp.zeros((), real)
        if ml:
            phi, theta, r, mask, order, f, first = somp_ml(
                y1, E, D, norms, (flat_phi, flat_th, flat_r), thresholds, geo, grid, cfg, model=model)
            a = steering(geo, phi, theta, r, model=model, dtype=y1.dtype)
            if cfg.retest:
                mask, f = order_retest(y1, apply_operators(E, a.T), mask, thresholds, cfg)
            _, e = ls_fit(apply_operators(E, a.T), y1, mask)
            rss = jnp.sum(abs2(e))
        else:
            idx, order, f, first = somp(y1, D, norms, thresholds, cfg)
            mask = jnp.arange(cfg.k_max) < order
            phi, theta, r = flat_phi[idx], flat_th[idx], flat_r[idx]
        score = 10.0 * jnp.log10(jnp.maximum(f, 1e-30))
        phi, theta, r, score, valid = gate_nms(phi, theta, r, score, mask, gates, cfg.k_max)
        res = CompressiveResult(phi, theta, r, jnp.where(valid, score, -jnp.inf), valid, order, rss)
        return res, _plane_max(first, grid)

    # Scenes in vmapped groups (`scene_group_size`), sequentially.
    return jax.lax.map(lambda args: one(*args), (y, H, codes),
                       batch_size=scene_group_size(y.shape[0], l, cfg.k_max, width=cfg.search_width))


#: jaxlib 0.10 on the CPU splits a batched LAPACK call over XLA's thread pool when batch x cost
#: reaches 2e5 FLOP and blocks until the pieces finish, which deadlocks when as many such calls
#: run at once as the pool has threads (seen: `somp-ml` at L = 64 stopped at 0 % CPU inside
#: `lapack_ctrsm_ffi`). The largest batched LAPACK call here is `ml_refine`'s Jacobian solve
#: (`vp_residual_jacobian`): 3 k_max right-hand sides x L snapshots x the scenes of one vmapped
#: group, each a pair of triangular solves of at most 3 k_max^2 FLOP; the group is kept under
#: the split threshold.
_LAPACK_SPLIT_FLOP = 2e5


def scene_group_size(n_scenes: int, n_snap: int, k_max: int, *, largest: int = 2, width: int = 1) -> int:
    """Scenes per vmapped group of the compressive drivers: at most `largest`, and few enough that
    the batched LAPACK calls run inline (`_LAPACK_SPLIT_FLOP`).

    The groups run one after another (`lax.map`), and a vmapped group runs its early-stopped
    loops until its slowest scene is done, so small groups waste less; on the CPU, XLA was
    measured to slow down by >50x when these loop nests were vmapped over 12 or more scenes at
    once. Measured on the 2-core CPU (32 seed scenes, ms per batch, groups of 1 / 2 / 4 / 8):
    the polish 53 / 52 / 63 / 78, the range rescan 85 / 58 / 62 / 69, the greedy ML
    continuation 178 / 208 / 221 / 252 (hence `largest=1` there), `somp-ml` 1570 / 1465 /
    1563, `ml-oracle` 972 / 918 / 1007.
    """
    per_scene = 3 * k_max * n_snap * 3 * k_max ** 2 * int(width)  # `width`: fits vmapped per scene
    return int(max(1, min(int(largest), n_scenes, (_LAPACK_SPLIT_FLOP - 1) // per_scene)))
