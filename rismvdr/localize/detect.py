"""K-free peak detection on a 2.5D spectrum (conventions section 6): the one detector of rismvdr.

Per scene: local maxima (3 x 3) of the plane-maximised map (none at all when the map holds a
non-finite value or is flat, i.e. its dynamic range is at most `flat_db`: a map of all-zero or
degenerate data says nothing about where sources are); a threshold (`db`: within T dB of
the global maximum; `mad`: above median + z * MAD of the map in dB; `none`: every local
maximum, for methods that cap the count themselves); greedy non-maximum suppression at the
detection gate in (phi, theta, r_plane); at most `k_max`; then each peak is refined in
continuous (phi, theta, r) by damped Newton ascent on `log P` with autodiff through the shared
steering function, inside a trust region around the grid peak and inside the grid's box;
finally a 3-D NMS. A peak whose refined score is not finite is never valid. Output is
fixed-size and padded with a `valid` mask, so detection jits and vmaps over scenes; the number
of sources is the number of valid entries.

Coarse-to-fine search (`detect(..., fine=...)`, `GridSpec.search == "coarse-to-fine"`): the map
is computed on a coarse grid (`GridSpec.coarse_grid`: the angle steps `coarse_factor` times the
fine ones, `coarse_planes` range planes), its `coarse_candidates` highest local maxima are
refined off the grid by the same Newton ascent (scaled by the fine grid's steps, its trust
region widened by a coarse cell), and the threshold, NMS and cap act on the refined scores. The
fine grid is never evaluated. With `refine` off the coarse grid peaks are the detections (the
learned methods' ML polish refines them on the measurements). Same fixed shapes, one program
per batch.

The `db` and `mad` thresholds are relative to the map itself, so a map of pure noise still has
peaks that pass them: on its own this detector reports up to `k_max` sources on a noise-only
scene. The false-alarm control is the next stage, on the measurements rather than the map:
`rismvdr.localize.localize` hands the detections of every method not already F-tested to
`rismvdr.localize.significance`, which keeps a detection only while its F statistic in the
joint least-squares fit of `y` passes the compressive methods' Bonferroni threshold (per-scene
false-alarm bound 1 %; `DetectorConfig.significance`, default "f-test", "none" turns it off).

Refinement works in scaled coordinates `z = (phi / dphi, theta / dtheta, (1/r) / du)` (grid
steps), where the spectrum's curvature is O(1). For a linear array theta is fixed.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.defaults import K_MAX
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.scenarios import Gates
from rismvdr.physics.spectra import Grid, Spectrum25D, SpectrumOperator, operator_spectrum
from rismvdr.physics.steering import steering
from rismvdr.programs import stored_jit

__all__ = [
    "DetectorConfig",
    "RefinerGuard",
    "Detections",
    "detect",
    "detect_peaks_2d",
    "coarse_to_fine_peaks",
    "gate_nms",
    "refine_peaks",
]


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Detector settings (hashable: a static argument of the jitted detector)."""

    threshold_mode: Literal["db", "mad", "none"] = "db"
    threshold_db: float = 12.0  # `db` mode: keep peaks within this many dB of the global max
    mad_z: float = 5.0  # `mad` mode: keep peaks above median + z * MAD (map in dB)
    k_max: int = K_MAX  # at most this many detections per scene
    n_candidates: int = 32  # local maxima considered before NMS (highest first)
    gates: Gates = Gates()  # NMS gate, SI (the evaluation's detection gate, conventions section 7)
    refine: bool = True  # continuous 3-D refinement of each peak
    refine_iters: int = 8  # fixed Newton iteration count (jittable)
    trust_cells: tuple[float, float, float] = (2.0, 2.0, 1.5)  # phi, theta (cells), 1/r (planes)
    max_step_cells: float = 0.5  # per-iteration step bound, in grid cells
    curvature_floor: float = 0.1  # eigenvalue floor of -Hessian (saddle-free Newton)
    flat_db: float = 1e-3  # a map whose max - min (dB) is at most this has no peaks (e.g. all-zero data)
    # "f-test": `rismvdr.localize.localize` tests each detection on the measurements and drops the
    # insignificant ones (`rismvdr.localize.significance`; `detect` alone has no measurements);
    # "none": the detector's peaks as they are.
    significance: Literal["f-test", "none"] = "f-test"
    # Coarse-to-fine search only (`detect(..., fine=...)`): this many local maxima of the coarse
    # map (highest first; at least k_max) are refined off the grid, with this many Newton iterations (they start
    # up to a coarse cell away; validation, `mvdr-als`, 1000 scenes: F1 0.5825 with 8, 0.5861
    # with 16, full grid 0.5867), before the threshold and the NMS.
    coarse_candidates: int = 12
    coarse_refine_iters: int = 16

    def validate(self) -> None:
        for name in ("threshold_db", "mad_z", "flat_db", "max_step_cells", "curvature_floor"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: must be finite, got {getattr(self, name)!r}")
        if self.threshold_mode not in ("db", "mad", "none"):
            raise ValueError(f"threshold_mode: expected 'db', 'mad' or 'none', got {self.threshold_mode!r}")
        if self.significance not in ("f-test", "none"):
            raise ValueError(f"significance: expected 'f-test' or 'none', got {self.significance!r}")
        if self.k_max < 1:
            raise ValueError(f"k_max: must be >= 1, got {self.k_max}")
        if self.n_candidates < self.k_max:
            raise ValueError(f"n_candidates: must be >= k_max ({self.k_max}), got {self.n_candidates}")
        if self.threshold_db < 0 or self.mad_z < 0 or self.flat_db < 0:
            raise ValueError("threshold_db, mad_z, flat_db: must be >= 0")
        if self.coarse_candidates < 1:
            raise ValueError(f"coarse_candidates: must be >= 1, got {self.coarse_candidates}")
        if self.refine_iters < 0 or self.coarse_refine_iters < 0:
            raise ValueError(f"refine_iters, coarse_refine_iters: must be >= 0, got {self.refine_iters}, "
                             f"{self.coarse_refine_iters}")
        if not isinstance(self.gates, Gates):
            raise ValueError(f"gates: expected a Gates (SI units), got {type(self.gates).__name__}")


@dataclasses.dataclass(frozen=True)
class RefinerGuard:
    """When the refiner's probability map is not trusted (then MVDR peaks on R_blend are used)."""

    min_std: float = 1e-4  # a flatter map is rejected
    saturated_level: float = 0.99  # a map with more than `max_saturated` of cells above this...
    max_saturated: float = 0.10  # ...is rejected
    max_local_maxima: int = 2000
    peak_threshold: float | None = None  # probability a refiner peak needs (None: the model's calibrated one)
    log_every: int = 100  # log one fallback in this many


class Detections(NamedTuple):
    """Fixed-size detections, `[..., k_max]` each; entries with `valid == False` are padding.

    phi, theta in radians, r in metres, score_db = 10 log10 of the spectrum at the detection.
    Valid entries come first, in decreasing score.
    """

    phi: jax.Array
    theta: jax.Array
    r: jax.Array
    score_db: jax.Array
    valid: jax.Array

    @property
    def count(self) -> jax.Array:
        return jnp.sum(self.valid, axis=-1)


def gate_nms(phi, theta, r, score, valid, gates: Gates, cap):
    """Greedy NMS in decreasing score at the detection gate; keeps at most `cap`.

    A candidate is suppressed when a kept one of higher score lies within the gate in phi,
    theta and r at once. Jittable (a fixed-count loop over the candidates).

    Args:
      phi, theta, r, score: `[C]` candidates (radians, radians, metres, any score).
      valid: `[C]` bool, which candidates exist (the others are never kept).
      gates: the gate (SI).
      cap: int (or traced int), the most candidates kept.

    Returns:
      (phi, theta, r, score, keep), `[C]` each: the candidates re-ordered, kept first by score.
    """
    order = jnp.argsort(jnp.where(valid, -score, jnp.inf))
    phi, theta, r, score, valid = (x[order] for x in (phi, theta, r, score, valid))
    # The detector's comparison dtypes: angle gates as NumPy float64 scalars (with x64 on, angles
    # are compared in float64), the range gate as a weak Python float (the array's dtype).
    g_phi, g_th, g_r = np.float64(gates.phi), np.float64(gates.theta), gates.r
    close = (
        (jnp.abs(phi[:, None] - phi[None, :]) <= g_phi)
        & (jnp.abs(theta[:, None] - theta[None, :]) <= g_th)
        & (jnp.abs(r[:, None] - r[None, :]) <= g_r)
    )
    n = phi.shape[0]

    def body(i, keep):
        suppressed = jnp.any(keep & close[i] & (jnp.arange(n) < i))
        ok = valid[i] & ~suppressed & (jnp.sum(keep) < cap)
        return keep.at[i].set(ok)

    keep = jax.lax.fori_loop(0, n, body, jnp.zeros(n, bool))
    order2 = jnp.argsort(jnp.where(keep, -score, jnp.inf))
    return tuple(x[order2] for x in (phi, theta, r, score)) + (keep[order2],)


def _local_maxima(power, cfg: DetectorConfig):
    """The map in dB and its 3 x 3 local maxima (none in a map that holds NaN/inf or is flat:
    all-zero data makes every cell a "maximum")."""
    db = 10.0 * jnp.log10(jnp.maximum(power, jnp.finfo(power.dtype).tiny))
    neigh = jax.lax.reduce_window(
        db, -jnp.inf, jax.lax.max, (3, 3), (1, 1), ((1, 1), (1, 1))
    )
    usable = jnp.all(jnp.isfinite(power)) & (jnp.max(db) - jnp.min(db) > cfg.flat_db)
    return db, (db >= neigh) & usable


def _mad_level(db, cfg: DetectorConfig):
    """The `mad` mode's level: median + z * MAD of the map in dB."""
    med = jnp.median(db)
    mad = jnp.median(jnp.abs(db - med))
    return med + cfg.mad_z * mad


def detect_peaks_2d(power, plane, grid: Grid, cfg: DetectorConfig, cap=None):
    """Grid peaks of one scene's 2.5D map: local maxima, threshold, NMS, cap (no peaks at all
    for a map that holds a non-finite value or is flat within `cfg.flat_db`).

    Args:
      power: `[T, P]` plane-maximised spectrum (linear).
      plane: `[T, P]` int index of the best range plane.
      grid: the grid the map was computed on.
      cfg: detector settings.
      cap: optional traced int, a per-scene cap below `k_max` (MUSIC's estimated order).

    Returns:
      `[k_max]` arrays (phi, theta, r, score_db, valid), kept peaks first.
    """
    phi_g, th_g, r_g = (jnp.asarray(x, power.dtype) for x in grid.arrays())
    db, is_peak = _local_maxima(power, cfg)
    if cfg.threshold_mode == "db":
        is_peak &= db >= jnp.max(db) - cfg.threshold_db
    elif cfg.threshold_mode == "mad":
        is_peak &= db >= _mad_level(db, cfg)
    flat = jnp.where(is_peak, db, -jnp.inf).reshape(-1)
    n_cand = min(cfg.n_candidates, flat.shape[0])
    score, idx = jax.lax.top_k(flat, n_cand)
    ti, pi = jnp.divmod(idx, power.shape[1])
    phi, theta, r = phi_g[pi], th_g[ti], r_g[plane.reshape(-1)[idx]]
    valid = jnp.isfinite(score)
    cap = cfg.k_max if cap is None else jnp.minimum(cap, cfg.k_max)
    out = gate_nms(phi, theta, r, score, valid, cfg.gates, cap)
    return tuple(x[: cfg.k_max] for x in out)


def refine_peaks(op: SpectrumOperator, geometry: ArrayGeometry, grid: Grid, cfg: DetectorConfig,
                 phi, theta, r, *, model: str = "exact", precision: str = "highest"):
    """Continuous 3-D refinement of peaks of one scene (damped saddle-free Newton on log P).

    Each iteration scales the Newton step so that no component exceeds `max_step_cells`
    (keeping its direction), evaluates the full, half, quarter and eighth step and keeps the
    best of those and the current point, so `log P` never decreases; steps stay inside the
    trust region around the start and inside the grid's box. Fixed iteration count.

    Args:
      op: the scene's spectrum operator (`W` `[q, N]`).
      phi, theta, r: `[K]` starting points (radians, radians, metres).

    Returns:
      (phi, theta, r, log10-power score in dB) refined, `[K]` each.
    """
    steps, lo, hi = grid.scaling()
    dtype = jnp.real(op.W).dtype
    steps_j = jnp.asarray(steps, dtype)
    mask = jnp.asarray([1.0, 0.0 if geometry.linear else 1.0, 1.0], dtype)
    geo = geometry.astype(dtype)

    def log_p(z):
        x = z * steps_j
        a = steering(geo, x[0], x[1], 1.0 / x[2], model=model, dtype=op.W.dtype)
        return jnp.log(operator_spectrum(op, a, precision=precision))

    grad_f = jax.grad(log_p)
    hess_f = jax.hessian(log_p)
    trust = jnp.asarray(cfg.trust_cells, dtype)
    lo_j, hi_j = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)

    def refine_one(z0):
        zlo = jnp.maximum(lo_j, z0 - trust * mask)
        zhi = jnp.minimum(hi_j, z0 + trust * mask)

        def body(_, carry):
            z, f = carry
            g = grad_f(z) * mask
            h = -hess_f(z) * mask[:, None] * mask[None, :] + jnp.diag(1.0 - mask)
            vals, vecs = jnp.linalg.eigh(h)
            vals = jnp.maximum(jnp.abs(vals), cfg.curvature_floor)
            step = vecs @ ((vecs.T @ g) / vals)
            # Scale the whole step (not each component): clipping components separately turns
            # the Newton direction off a curved near-field ridge and stalls the ascent.
            big = jnp.maximum(jnp.max(jnp.abs(step)), cfg.max_step_cells)
            step = step * (cfg.max_step_cells / big) * mask
            frac = jnp.array([1.0, 0.5, 0.25, 0.125], dtype)[:, None]
            cands = jnp.clip(z[None, :] + frac * step[None, :], zlo[None, :], zhi[None, :])
            fc = jax.vmap(log_p)(cands)
            fc = jnp.where(jnp.isfinite(fc), fc, -jnp.inf)
            best = jnp.argmax(fc)
            better = fc[best] > f
            return jnp.where(better, cands[best], z), jnp.where(better, fc[best], f)

        f0 = log_p(z0)
        z, f = jax.lax.fori_loop(0, cfg.refine_iters, body, (z0, f0))
        return z, f

    z0 = jnp.stack([phi / steps_j[0], theta / steps_j[1], (1.0 / r) / steps_j[2]], axis=-1)
    z, f = jax.vmap(refine_one)(z0)
    x = z * steps_j[None, :]
    return x[:, 0], x[:, 1], 1.0 / x[:, 2], f * (10.0 / np.log(10.0))


def coarse_to_fine_peaks(op: SpectrumOperator, power, plane, geometry: ArrayGeometry, grid: Grid, fine: Grid,
                         cfg: DetectorConfig, cap=None, *, model: str = "exact", precision: str = "highest"):
    """Peaks of one scene from a coarse map, refined off the grid (the coarse-to-fine search).

    The `max(cfg.coarse_candidates, cfg.k_max)` highest 3 x 3 local maxima of the coarse map
    (none for a non-finite or flat map) are refined by `refine_peaks` in the fine grid's scaled
    coordinates (`cfg.coarse_refine_iters` iterations, the trust region widened by one coarse
    cell); then the threshold (`db`: within T dB of the highest refined score; `mad`: above
    median + z * MAD of the coarse map in dB), the gate NMS and the cap act on the refined
    scores. With `cfg.refine` off: the `cfg.n_candidates` highest local maxima of the coarse
    map, thresholded and NMS'd on the coarse grid (`detect_peaks_2d`).

    Args:
      op: the scene's spectrum operator (`W` `[q, N]`).
      power, plane: `[T, P]` plane-maximised coarse map and its best plane index.
      grid: the coarse grid of the map; fine: the grid whose steps scale the refinement (and whose
        box bounds it).
      cap: optional traced int, a per-scene cap below `k_max`.

    Returns:
      `[k_max]` arrays (phi, theta, r, score_db, valid), kept peaks first.
    """
    if not cfg.refine:
        return detect_peaks_2d(power, plane, grid, cfg, cap)
    phi_g, th_g, r_g = (jnp.asarray(x, power.dtype) for x in grid.arrays())
    db, is_peak = _local_maxima(power, cfg)
    flat = jnp.where(is_peak, db, -jnp.inf).reshape(-1)
    score, idx = jax.lax.top_k(flat, min(max(cfg.coarse_candidates, cfg.k_max), flat.shape[0]))
    ti, pi = jnp.divmod(idx, power.shape[1])
    phi, theta, r = phi_g[pi], th_g[ti], r_g[plane.reshape(-1)[idx]]
    fine_steps, _, _ = fine.scaling()
    coarse_steps, _, _ = grid.scaling()
    ratio = np.maximum(coarse_steps / fine_steps, 1.0)
    wide = dataclasses.replace(cfg, trust_cells=tuple(float(t + q) for t, q in zip(cfg.trust_cells, ratio)),
                               refine_iters=cfg.coarse_refine_iters)
    phi, theta, r, score2 = refine_peaks(op, geometry, fine, wide, phi, theta, r, model=model, precision=precision)
    valid = jnp.isfinite(score) & jnp.isfinite(score2)
    score = jnp.where(valid, score2, -jnp.inf)
    if cfg.threshold_mode == "db":
        valid &= score >= jnp.max(score) - cfg.threshold_db
    elif cfg.threshold_mode == "mad":
        valid &= score >= _mad_level(db, cfg)
    cap = cfg.k_max if cap is None else jnp.minimum(cap, cfg.k_max)
    out = gate_nms(phi, theta, r, score, valid, cfg.gates, cap)
    return tuple(x[: cfg.k_max] for x in out)


@functools.partial(stored_jit, static_argnames=("grid", "cfg", "model", "precision", "fine"))
def _detect(op, spec: Spectrum25D, geometry, cap, *, grid, cfg, model, precision, fine):
    def one(op1, power, plane, cap1):
        if fine is not None:
            phi, theta, r, score, valid = coarse_to_fine_peaks(op1, power, plane, geometry, grid, fine, cfg, cap1,
                                                               model=model, precision=precision)
            return Detections(phi, theta, r, jnp.where(valid, score, -jnp.inf), valid)
        phi, theta, r, score, valid = detect_peaks_2d(power, plane, grid, cfg, cap1)
        if cfg.refine:
            phi, theta, r, score2 = refine_peaks(
                op1, geometry, grid, cfg, phi, theta, r, model=model, precision=precision
            )
            valid = valid & jnp.isfinite(score2)  # a peak with a non-finite score is never valid
            score = jnp.where(valid, score2, score)
            phi, theta, r, score, valid = gate_nms(phi, theta, r, score, valid, cfg.gates, cfg.k_max)
        return Detections(phi, theta, r, jnp.where(valid, score, -jnp.inf), valid)

    return jax.vmap(one)(op, spec.power, spec.plane, cap)


def detect(
    op: SpectrumOperator,
    spec: Spectrum25D,
    geometry: ArrayGeometry,
    grid: Grid,
    cfg: DetectorConfig = DetectorConfig(),
    *,
    cap=None,
    model: str = "exact",
    precision: str = "highest",
    fine: Grid | None = None,
) -> Detections:
    """Detect sources in a batch of 2.5D spectra (jit + vmap over scenes).

    `fine=None` (the full grid search): peaks of the map on `grid`, refined. With `fine` given,
    `spec` is a coarse map on `grid` and the coarse-to-fine search runs (`coarse_to_fine_peaks`):
    its highest local maxima are refined off the grid in `fine`'s steps, and the threshold and NMS
    act on the refined scores; the fine grid itself is never evaluated. On the 2-core CPU it is
    several times cheaper than the full map at the same F1 (docs: experiments, coarse-to-fine);
    on accelerators the full grid is one large GEMM and the coarse-to-fine search is not measured
    there, so `search="full"` is the reference to keep where it is the faster one.

    Args:
      op: batched spectrum operator (`W` `[B, q, N]`) the maps were computed from; used to
        refine peaks off the grid.
      spec: `Spectrum25D` with `power`/`plane` `[B, T, P]`.
      geometry: array geometry (linear arrays: theta is not refined).
      grid: the grid of `spec`.
      cfg: detector settings.
      cap: optional `[B]` ints, a per-scene cap on the number of detections (e.g. MUSIC's
        estimated order); the detector's own `k_max` always applies.
      model: steering model used for refinement (the one the spectrum used).
      fine: the fine grid of a coarse-to-fine search (`GridSpec.search_grids`), or None.

    Returns:
      `Detections` with `[B, k_max]` arrays.
    """
    cfg.validate()
    b = spec.power.shape[0]
    cap = jnp.full((b,), cfg.k_max, jnp.int32) if cap is None else jnp.asarray(cap, jnp.int32)
    if cap.shape != (b,):
        raise ValueError(f"cap: expected shape [{b}], got {cap.shape}")
    return _detect(op, spec, geometry, cap, grid=grid, cfg=cfg, model=model, precision=precision, fine=fine)
