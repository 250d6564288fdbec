"""Compressive maximum-likelihood localization: work on the measurements, not on a covariance.

Each source has 3 geometric parameters and L symbols, so in the RIS regime (M L = 256
measurements, N = 144 surface elements) the sources are identifiable from `y` although no
covariance of the surface field is. Model of one scene (conventions section 3):
`y_l = G_l A(eta) s_l + n_l`, `G_l = H diag(c_l)` (`G_l = I_N` in full-array mode).

1. **Greedy initialisation (SOMP).** The dictionary holds, for every point `g` of a 2.5D grid
   and every snapshot, the atom `d_{l,g} = G_l a(eta_g)` (grid steering vectors built once for
   all scenes). Each step picks the atom that explains the most residual energy summed over
   snapshots, `sum_l |d_{l,g}^H r_l|^2 / ||d_{l,g}||^2` (normalised per snapshot), then refits all
   symbols of the chosen atoms jointly by least squares. The batch drivers pass the dictionary
   in operator form (`AtomOperator`): the norms are formed once per scene and reduced at once,
   and each step correlates through the back-projected residual, `a_g^H (G_l^H r_l)`, so the
   `[L, M, G]` dictionary is never kept; an explicit one (`dictionary`) gives the same values.
2. **K-free stopping (no noise level needed).** After step k the energy the new atom explains,
   per complex degree of freedom, is compared with the residual's: under "no further source"
   and for a fixed atom, `F_k = ((RSS_{k-1} - RSS_k) / L) / (RSS_k / (M L - k L))` follows
   `F(2L, 2(ML - kL))`. The greedy step takes the best of the dictionary, so the threshold is
   Bonferroni-corrected: `tau_k = F.isf(pfa / G_eff)` with `G_eff = oversample * G` (a
   continuous maximum sits between grid atoms). The order is the number of leading steps
   whose `F_k > tau_k`. `pfa` bounds the per-scene false-alarm probability (the Bonferroni bound
   is conservative; the measured rate on noise-only scenes is in `benchmarks/README.md` and
   tested).
3. **Off-grid maximum likelihood (variable projection).** The symbols are solved in closed
   form, so the concentrated cost is `J(eta) = sum_l ||P_perp(B_l(eta)) y_l||^2` with
   `B_l = G_l A(eta)`. It is minimised by Levenberg-Marquardt on the residual vector, with its
   exact variable-projection Jacobian in closed form (`vp_residual_jacobian`: one forward-mode
   pass of the shared steering function per coordinate and the fit's own Cholesky factor),
   in scaled coordinates `(phi/dphi, theta/dtheta, (1/r)/du)`, inside the scenario box and a trust
   region around the start, for at most `ml_iters` iterations, each scene stopping once its steps
   and cost decrease fall below a tolerance (`CompressiveConfig.ml_early_stop`; fixed shapes: it
   jits and vmaps, a vmapped group running until its last scene converged).
4. **Order re-test.** Each source's contribution `RSS_without_k - RSS` is tested with the same
   F statistic; the least significant source is dropped while it fails the test (fixed loop).
   Duplicates are merged by the detector's gate NMS in the batch drivers
   (`rismvdr.localize.compressive`): physics never imports the detector.

For a linear array theta is known and not refined (conventions section 1).

Units of `y`: the results are scale-free (F statistics are ratios, the ML positions minimise a
residual), but the kernels form `|y|^2` sums in `y`'s dtype, which in float32 overflow above
about 1e19 and lose everything below about 1e-19. Pass each scene at unit RMS
(`rismvdr.physics.covariance.unit_rms`; `rismvdr.localize` does this for every method). An
all-zero `y` passes no F test (no sources).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.defaults import K_MAX
from rismvdr.physics.covariance import adjoint_apply
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.spectra import Grid
from rismvdr.physics.steering import steering
from rismvdr.physics.linalg import abs2, cho_solve, cmatmul_parts

__all__ = [
    "CompressiveConfig",
    "CompressiveResult",
    "f_thresholds",
    "f_isf",
    "scene_operators",
    "dictionary",
    "AtomOperator",
    "atom_norms",
    "somp",
    "somp_ml",
    "ml_refine",
    "ml_refine_fit",
    "ml_from_start",
    "ml_continue",
    "backprojected_scores",
    "ml_polish",
    "range_scan",
    "ml_rescan",
    "order_retest",
    "source_fstats",
    "search_candidates",
    "apply_operators",
    "atom_scores",
    "ls_fit",
    "vp_residual_jacobian",
]

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CompressiveConfig:
    """Settings of the compressive localizer (hashable: static under jit)."""

    k_max: int = K_MAX  # at most this many sources
    pfa: float = 0.01  # per-scene false-alarm bound of the stopping rule (Bonferroni)
    oversample: float = 4.0  # G_eff = oversample * G: off-grid maxima of the noise
    ml_iters: int = 10  # Levenberg-Marquardt iterations after each greedy step (the most, with ml_early_stop)
    trust_cells: float = 3.0  # ML trust region around the start, in grid cells / planes
    max_step_cells: float = 1.0  # per-iteration step bound, grid cells
    retest: bool = True  # drop sources that fail the F test after ML
    # Stop a scene's Levenberg-Marquardt iterations once they converged (a while loop, at most
    # `ml_iters`): an iteration ends it whose step is at most `ml_xtol` grid cells in every
    # coordinate, or whose achieved and predicted cost decreases are both at most `ml_ftol` of the
    # cost (MINPACK's tests). False: always `ml_iters` iterations (a fixed-count loop).
    ml_early_stop: bool = True
    ml_xtol: float = 1e-2
    ml_ftol: float = 1e-5
    # Candidates of each greedy step of `somp_ml`: the highest atom, then the next highest outside
    # the angle gate (`search_gate`: phi, theta, radians) of every candidate taken; each is refined
    # jointly with the sources so far and the fit with the lowest residual is kept. 1: the highest
    # atom alone. `LocalizerSettings.compressive_config` sets the gate to the detector's, and
    # `settings_for_scenario` widens the search on a fixed deployment channel.
    search_width: int = 1
    search_gate: tuple[float, float] = (float(np.deg2rad(5.0)), float(np.deg2rad(5.0)))

    def validate(self) -> None:
        if self.k_max < 1:
            raise ValueError(f"k_max: must be >= 1, got {self.k_max}")
        if not 0.0 < self.pfa < 1.0:
            raise ValueError(f"pfa: must lie in (0, 1), got {self.pfa}")
        if self.oversample < 1.0:
            raise ValueError(f"oversample: must be >= 1, got {self.oversample}")
        if self.ml_iters < 0:
            raise ValueError(f"ml_iters: must be >= 0, got {self.ml_iters}")
        if not (self.ml_xtol >= 0 and self.ml_ftol >= 0):
            raise ValueError(f"ml_xtol, ml_ftol: must be >= 0, got {self.ml_xtol!r}, {self.ml_ftol!r}")
        if int(self.search_width) != self.search_width or self.search_width < 1:
            raise ValueError(f"search_width: must be an integer >= 1, got {self.search_width!r}")
        if len(self.search_gate) != 2 or not all(g > 0 for g in self.search_gate):
            raise ValueError(f"search_gate: must be two angles > 0 (phi, theta; radians), got {self.search_gate!r}")


class CompressiveResult(NamedTuple):
    """Per-scene result (batch axes lead). Angles radians, range metres.

    phi, theta, r: `[K_max]` estimates; score_db: `10 log10` of each source's F statistic;
    valid: `[K_max]` bool; n_greedy: SOMP's order; rss: final residual energy.
    """

    phi: jax.Array
    theta: jax.Array
    r: jax.Array
    score_db: jax.Array
    valid: jax.Array
    n_greedy: jax.Array
    rss: jax.Array


def f_thresholds(n_meas: int, n_snap: int, k_max: int, n_atoms: int, cfg: CompressiveConfig) -> np.ndarray:
    """`[k_max]` thresholds `tau_k` of the F test for k = 1..k_max (host, float64).

    `tau_k` is F's inverse survival function at `pfa / (oversample * n_atoms)` with `2 L` and
    `2 (M - k) L` degrees of freedom (`f_isf`), as `scipy.stats.f.isf` computes it.

    Args:
      n_meas: M; n_snap: L; n_atoms: dictionary size G.
    """
    if n_meas <= k_max:
        raise ValueError(f"n_meas: M = {n_meas} must exceed k_max = {k_max} for the order test")
    alpha = cfg.pfa / (cfg.oversample * n_atoms)
    return np.asarray([f_isf(alpha, 2 * n_snap, 2 * (n_meas - k) * n_snap) for k in range(1, k_max + 1)], np.float64)


def _log_beta_front(a: float, b: float, x: float) -> float:
    """`log(x^a (1 - x)^b / B(a, b))`."""
    return math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz),
    converging for `x < (a + 1) / (a + b + 2)`."""
    tiny = 1e-300

    def nz(v):
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / nz(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 100000):
        for num in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 / nz(1.0 + num * d)
            c = nz(1.0 + num / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            return h
    raise ArithmeticError(f"incomplete beta ({a}, {b}, {x}): the continued fraction did not converge")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function `I_x(a, b)` in float64 (`scipy.special.betainc`)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(_log_beta_front(a, b, x)) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(_log_beta_front(b, a, 1.0 - x)) * _beta_fraction(b, a, 1.0 - x) / b


def f_isf(p: float, d1: float, d2: float) -> float:
    """Inverse survival function of the F distribution: `x` with `P(F(d1, d2) > x) = p`, float64.

    `P(F > x) = I_y(d2 / 2, d1 / 2)` with `y = d2 / (d2 + d1 x)`, solved for `y` by Newton steps
    inside a bisection bracket. The tail is computed directly, not as `1 - p`, so a Bonferroni
    level of 1e-7 or 1e-14 keeps full precision (`scipy.stats.f.isf`, which inverts the CDF at
    `1 - p`, agrees to 1e-8 relative at p = 1e-10). Pure Python: the thresholds are a host-side
    computation, and importing `scipy.special` cost a sixth of `import jax` at every start.

    >>> round(f_isf(0.05, 2.0, 2.0), 12)  # P(F(2, 2) > x) = 1 / (1 + x)
    19.0
    """
    p, d1, d2 = float(p), float(d1), float(d2)
    if not (0.0 < p < 1.0):
        raise ValueError(f"p: must lie in (0, 1), got {p!r}")
    if not (d1 > 0.0 and d2 > 0.0):
        raise ValueError(f"degrees of freedom: must be > 0, got {d1!r}, {d2!r}")
    a, b = d2 / 2.0, d1 / 2.0
    lo, hi, y = 0.0, 1.0, 0.5
    for _ in range(400):
        v = _betainc(a, b, y)
        if v > p:
            hi = y
        else:
            lo = y
        slope = math.exp(_log_beta_front(a, b, y) - math.log(y) - math.log1p(-y))  # dI/dy
        new = y - (v - p) / slope if slope > 0.0 else 0.5 * (lo + hi)
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - y) <= 1e-15 * y or hi - lo <= 1e-300:
            y = new
            break
        y = new
    return d2 * (1.0 - y) / (d1 * y)


def scene_operators(H, codes, n_snapshots: int, n_elements: int, dtype):
    """`G_l` of every snapshot: `[L, M, N]` in RIS mode, `[1, N, N]` (shared identity) in
    full-array mode."""
    if H is None:
        return jnp.eye(n_elements, dtype=dtype)[None]
    return H[None, :, :] * codes[:, None, :]


def apply_operators(E, A):
    """`G_l a_j` for columns `A` `[N, J]`: `[L, M, J]` (or `[1, N, J]` shared)."""
    return jnp.einsum("lmn,nj->lmj", E, A, precision=_HI)


def dictionary(E, a_flat):
    """SOMP dictionary `[L, M, G]` from `G_l` `[L, M, N]` and grid steering `a_flat` `[G, N]`."""
    return apply_operators(E, a_flat.T)


class AtomOperator(NamedTuple):
    """The SOMP dictionary in operator form, never built: its atoms are `d_{l,g} = G_l a_g`.

    Every function here that takes a dictionary `D` takes this form too. The greedy step's
    correlations then go through the back-projected residual, `d_{l,g}^H r_l = a_g^H (G_l^H r_l)`
    (`L N G` multiply-adds instead of reading the `L M G` dictionary), and the atom norms are
    computed once, their product reduced at once and not kept (`atom_norms`). Same values as the
    explicit dictionary to float32 rounding, without a `[L, M, G]` array (31 MB per scene of the
    seed scenario) carried through the greedy steps.

    Attributes:
      E: `[L|1, M, N]` `G_l` (`scene_operators`); a_flat: `[G, N]` grid steering.
    """

    E: jax.Array
    a_flat: jax.Array


def atom_norms(D):
    """`[L|1, G]` `||d_{l,g}||^2` of a dictionary `D` `[L|1, M, G]` or `AtomOperator` (whose
    atoms are formed in real and imaginary parts and reduced at once: `cmatmul_parts`)."""
    if isinstance(D, AtomOperator):
        dr, di = cmatmul_parts(D.E, D.a_flat.T, precision=_HI)  # [L|1, M, G]
        return jnp.sum(dr**2 + di**2, axis=1)
    return jnp.sum(abs2(D), axis=1)


def _n_atoms(D) -> int:
    return D.a_flat.shape[0] if isinstance(D, AtomOperator) else D.shape[-1]


def _atoms_at(D, idx):
    """Columns `[L|1, M, K]` of the atoms `idx` `[K]`."""
    if isinstance(D, AtomOperator):
        return apply_operators(D.E, D.a_flat[idx].T)
    return D[:, :, idx]


def _correlation_power(D, R):
    """`|d_{l,g}^H r_l|^2`: `[L, G]` from `D` (`[L|1, M, G]` or `AtomOperator`) and residuals
    `R` `[L, M]`."""
    if isinstance(D, AtomOperator):
        b = jnp.matmul(jnp.conj(jnp.swapaxes(D.E, -1, -2)), R[..., None], precision=_HI)[..., 0]  # [L, N]: G_l^H r_l
        zr, zi = cmatmul_parts(b, jnp.conj(D.a_flat).T, precision=_HI)
        return zr**2 + zi**2
    if D.shape[0] == 1:
        return abs2(jnp.matmul(R, jnp.conj(D[0]), precision=_HI))
    return abs2(jnp.einsum("lmg,lm->lg", jnp.conj(D), R, precision=_HI))


def atom_scores(D, norms, resid):
    """`[G]` residual energy each dictionary atom explains, summed over snapshots:
    `sum_l |d_{l,g}^H r_l|^2 / ||d_{l,g}||^2` (the greedy step's criterion; `resid = y` gives the
    first step's, i.e. the matched-filter map). `D`: `[L|1, M, G]` or `AtomOperator`; `norms`:
    `atom_norms(D)`."""
    return jnp.sum(_correlation_power(D, resid) / jnp.maximum(norms, 1e-30), axis=0)


def ls_fit(B, y, mask):
    """Joint least-squares symbols of one scene for columns `B` `[L|1, M, K]` (masked columns
    ignored; a 1e-7 relative ridge keeps the Cholesky solve defined).

    Returns (s `[L, K]`, residual `[L, M]`).
    """
    _, _, s, resid = _ls_factor(B, y, mask)
    return s, resid


def _ls_factor(B, y, mask):
    """`ls_fit` with its factors: (masked columns broadcast to `[L, M, K]`, Cholesky factor
    `[L|1, K, K]` of the ridged Gram matrix, s `[L, K]`, residual `[L, M]`)."""
    l = y.shape[0]
    B = B * mask.astype(B.dtype)[None, None, :]
    gram = jnp.einsum("lmk,lmj->lkj", jnp.conj(B), B, precision=_HI)  # [L|1, K, K]: shared G_l once
    B = jnp.broadcast_to(B, (l,) + B.shape[1:])
    diag = jnp.real(jnp.diagonal(gram, axis1=-2, axis2=-1))  # [L|1, K]
    scale = jnp.maximum(jnp.sum(diag, -1, keepdims=True) / jnp.maximum(jnp.sum(mask), 1), 1e-30)
    ridge = jnp.where(mask[None, :], 1e-7 * scale, scale)  # identity on masked slots
    gram = gram + jax.vmap(jnp.diag)(ridge.astype(gram.dtype))
    rhs = jnp.einsum("lmk,lm->lk", jnp.conj(B), y, precision=_HI)
    chol = jnp.linalg.cholesky(gram)
    s = cho_solve(chol, rhs[..., None])[..., 0]
    resid = y - jnp.einsum("lmk,lk->lm", B, s, precision=_HI)
    return B, chol, s, resid


def _greedy_more(k_max: int, thr, order=None):
    """The loop condition of the greedy steps, on a carry `(k, ..., fstat, first)` whose F
    statistics are its second-to-last entry: with `order` given, its first `max(order, 1)` steps
    (the first step's score map is always formed); otherwise while steps remain and the last
    step passed its threshold `thr[k - 1]` (the order is the number of leading steps that pass,
    so the steps after the first rejection cannot change it)."""
    def more(carry):
        k, fstat = carry[0], carry[-2]
        if order is not None:
            return k < jnp.maximum(order, 1)
        last = jnp.maximum(k - 1, 0)
        return (k < k_max) & ((k == 0) | (fstat[last] > thr[last]))
    return more


def somp(y, D, norms, thresholds, cfg: CompressiveConfig):
    """Simultaneous OMP with joint refits and the K-free F-test stopping rule (one scene).

    Args:
      y: `[L, M]` measurements.
      D: `[L|1, M, G]` dictionary or its `AtomOperator`; norms: `[L|1, G]` `||d_{l,g}||^2`
        (`atom_norms`).
      thresholds: `[K_max]` from `f_thresholds`.

    Returns:
      (idx `[K_max]` atom indices, order `[]` int32, F statistics `[K_max]`, first-step score
      map `[G]`). The steps end at the first one that fails the F test (`_greedy_more`): the
      entries of `idx` and of the F statistics after it are 0.
    """
    l, m = y.shape
    k_max = cfg.k_max
    real = jnp.real(y).dtype
    thr = jnp.asarray(thresholds).astype(real)

    def step(carry):
        k, idx, mask, resid, rss, fstat, first = carry
        score = atom_scores(D, norms, resid)  # [G]
        first = jnp.where(k == 0, score, first)
        g = jnp.argmax(jnp.where(jnp.isfinite(score), score, -jnp.inf))
        idx = idx.at[k].set(g.astype(jnp.int32))
        mask = mask.at[k].set(True)
        _, resid_new = ls_fit(_atoms_at(D, idx), y, mask)
        rss_new = jnp.sum(abs2(resid_new))
        dof = (m - (k + 1)) * l
        f = ((rss - rss_new) / l) / jnp.maximum(rss_new / dof, 1e-30)
        fstat = fstat.at[k].set(f)
        return k + 1, idx, mask, resid_new, rss_new, fstat, first

    init = (jnp.zeros((), jnp.int32), jnp.zeros(k_max, jnp.int32), jnp.zeros(k_max, bool), y,
            jnp.sum(abs2(y)), jnp.zeros(k_max, real), jnp.zeros(_n_atoms(D), real))
    _, idx, _, _, _, fstat, first = jax.lax.while_loop(_greedy_more(k_max, thr), step, init)
    passed = fstat > thr
    order = jnp.sum(jnp.cumprod(passed.astype(jnp.int32)))
    return idx, order.astype(jnp.int32), fstat, first


def search_candidates(score, gphi, gth, width: int, gate: tuple[float, float]):
    """`[width]` atom indices of one greedy step's candidates: the highest score, then each next
    highest outside the angle gate (`gate`: phi, theta, radians) of every candidate taken; once
    every atom lies inside a gate, the first candidate again. `score` `[G]`; `gphi`, `gth` `[G]`
    the atoms' angles."""
    s = jnp.where(jnp.isfinite(score), score, -jnp.inf)
    picks = []
    for _ in range(int(width)):
        g = jnp.argmax(s)
        if picks:
            g = jnp.where(jnp.isfinite(s[g]), g, picks[0])
        picks.append(g)
        near = (jnp.abs(gphi - gphi[g]) < gate[0]) & (jnp.abs(gth - gth[g]) < gate[1])
        s = jnp.where(near, -jnp.inf, s)
    return jnp.stack(picks)


def somp_ml(y, E, D, norms, grid_coords, thresholds, geometry: ArrayGeometry, grid: Grid,
            cfg: CompressiveConfig, *, model: str = "exact", order=None):
    """Greedy picks with an off-grid ML refinement of all picked sources after every step.

    Step k picks the dictionary atom that explains the most of the current residual, refines
    the k sources jointly (`ml_refine`), and tests the energy the k-th source explains with
    the F statistic of the refined fit, so a grid mismatch left by an earlier source is not
    mistaken for a new one. The order is the number of leading steps that pass; the sources
    are those of the refined fit at that order. With `cfg.search_width` > 1 a step refines that
    many separated candidates (`search_candidates`) and keeps the fit with the lowest residual.

    Args:
      y: `[L, M]`; E: `[L|1, M, N]`; D, norms: dictionary and atom norms (see `somp`).
      grid_coords: (phi, theta, r) `[G]` each, the dictionary's grid points.
      order: `[]` int, optional: force the order (e.g. the true K of a bound method) instead of
        the F test; the sources are then those of the refined fit after `order` steps.

    Returns:
      (phi, theta, r `[K_max]`, mask `[K_max]`, order, F statistics `[K_max]`, first-step score
      map `[G]`). The steps end at the first one that fails the F test, or after `order` steps
      where it is given (`_greedy_more`); the F statistics of the steps not run are 0.
    """
    l, m = y.shape
    k_max = cfg.k_max
    real = jnp.real(y).dtype
    gphi, gth, gr = grid_coords

    def refine(eta, mask):  # the refined sources and the residual of their fit
        phi, theta, r, rss, e, _ = ml_refine_fit(y, E, geometry, grid, eta[:, 0], eta[:, 1], eta[:, 2], mask, cfg,
                                                 model=model)
        return jnp.where(mask[:, None], jnp.stack([phi, theta, r], -1), eta), rss, e

    thr = jnp.asarray(thresholds).astype(real)
    if order is not None:
        order = jnp.clip(jnp.asarray(order), 0, k_max).astype(jnp.int32)

    def step(carry):
        k, eta, mask, resid, rss, hist, fstat, first = carry
        score = atom_scores(D, norms, resid)
        first = jnp.where(k == 0, score, first)
        mask = mask.at[k].set(True)
        g = search_candidates(score, gphi, gth, cfg.search_width, cfg.search_gate)
        start = lambda gi: eta.at[k].set(jnp.stack([gphi[gi], gth[gi], gr[gi]]))  # noqa: E731
        if cfg.search_width == 1:
            eta, rss_new, resid_new = refine(start(g[0]), mask)
        else:  # each candidate refined with the sources so far; the lowest residual kept
            etas, rsss, resids = jax.vmap(lambda gi: refine(start(gi), mask))(g)
            best = jnp.argmin(jnp.where(jnp.isfinite(rsss), rsss, jnp.inf))
            eta, rss_new, resid_new = etas[best], rsss[best], resids[best]
        dof = (m - (k + 1)) * l
        fstat = fstat.at[k].set(((rss - rss_new) / l) / jnp.maximum(rss_new / dof, 1e-30))
        hist = hist.at[k + 1].set(eta)
        return k + 1, eta, mask, resid_new, rss_new, hist, fstat, first

    eta0 = jnp.concatenate([jnp.zeros((k_max, 2), real), jnp.full((k_max, 1), float(grid.r[-1]), real)], -1)
    init = (jnp.zeros((), jnp.int32), eta0, jnp.zeros(k_max, bool), y, jnp.sum(abs2(y)),
            jnp.broadcast_to(eta0, (k_max + 1, k_max, 3)), jnp.zeros(k_max, real), jnp.zeros(_n_atoms(D), real))
    *_, hist, fstat, first = jax.lax.while_loop(_greedy_more(k_max, thr, order), step, init)
    if order is None:
        order = jnp.sum(jnp.cumprod((fstat > thr).astype(jnp.int32))).astype(jnp.int32)
    eta = hist[order]
    mask = jnp.arange(k_max) < order
    return eta[:, 0], eta[:, 1], eta[:, 2], mask, order, fstat, first


def _columns(geometry, E, z, steps, model, dtype):
    return apply_operators(E, _atoms(geometry, z, steps, model, dtype).T)


def _atoms(geometry, z, steps, model, dtype):
    """Steering vectors `[K, N]` of sources at scaled coordinates `z` `[K, 3]`."""
    x = z * steps[None, :]
    return steering(geometry, x[:, 0], x[:, 1], 1.0 / x[:, 2], model=model, dtype=dtype)


def vp_residual_jacobian(y, E, geometry: ArrayGeometry, z, steps, mask, *, model: str = "exact"):
    """Residual of the concentrated (variable-projection) least-squares fit of one scene and its
    exact Jacobian with respect to the scaled source coordinates, in closed form.

    With `B = G A(eta)` (masked columns zero), `s = (B^H B)^-1 B^H y` and `e = y - B s`, the
    derivative along one coordinate of source k is (Golub and Pereyra 1973)
    `de = -P_perp (dB_k s_k) - B (B^H B)^-1 e_k (dB_k^H e)`, where `dB_k = G da_k` is the only
    column that moves. `da_k` comes from one forward-mode pass of the shared `steering` per
    coordinate (a source's steering vector depends on its own coordinates only), and the Gram
    matrix's Cholesky factor of the fit is reused, so the Jacobian costs about one extra solve
    with `3 K` right-hand sides, instead of `3 K` tangents through the whole fit (`jax.jacfwd`;
    measured equal to 5e-7 relative in float32; `tests/test_compressive.py` checks it against
    central differences of a NumPy float64 residual). The 1e-7 ridge of `ls_fit` is treated as
    constant.

    Args:
      y: `[L, M]`; E: `[L|1, M, N]` from `scene_operators`.
      z: `[K, 3]` scaled coordinates `(phi/dphi, theta/dtheta, (1/r)/du)`; steps `[3]` their
        units (`Grid.scaling`); mask `[K]` which slots are sources.

    Returns:
      (residual `[2 L M]` = real parts then imaginary parts of `e`, Jacobian `[2 L M, 3 K]`,
      columns source-major: `3 k + j`; zero for masked sources).
    """
    a, da = _atoms_tangents(geometry, z, steps, model, y.dtype)
    return _vp_jacobian(y, E, da, mask, *_ls_factor(apply_operators(E, a.T), y, mask))


def _atoms_tangents(geometry, z, steps, model, dtype):
    """Steering vectors `[K, N]` at `z` `[K, 3]` and their derivatives along each scaled
    coordinate, `[3, K, N]` (one forward-mode pass of `steering` per coordinate)."""
    k = z.shape[0]
    real = z.dtype
    a, lin = jax.linearize(lambda zz: _atoms(geometry, zz, steps, model, dtype), z)
    return a, jax.vmap(lin)(jnp.eye(3, dtype=real)[:, None, :] * jnp.ones((1, k, 1), real))


def _vp_jacobian(y, E, da, mask, B, chol, s, e):
    """`vp_residual_jacobian` from the atoms' tangents `da` `[3, K, N]` and the fit's factors
    (`_ls_factor` of the columns at the same point): (residual `[2 L M]`, Jacobian `[2 L M, 3 K]`)."""
    l, k = y.shape[0], da.shape[1]
    dB = jnp.einsum("lmn,jkn->ljmk", E, da, precision=_HI) * mask.astype(y.dtype)[None, None, None, :]
    dB = jnp.broadcast_to(dB, (l,) + dB.shape[1:])  # [L, 3, M, K]
    v = dB * s[:, None, None, :]  # dB_k s_k
    bv = jnp.einsum("lmi,ljmk->likj", jnp.conj(B), v, precision=_HI)  # B^H dB_k s_k: [L, K, K, 3]
    c = jnp.einsum("ljmk,lm->lkj", jnp.conj(dB), e, precision=_HI)  # dB_k^H e: [L, K, 3]
    rhs = bv - jnp.eye(k, dtype=y.dtype)[None, :, :, None] * c[:, None, :, :]
    sol = cho_solve(chol, rhs.reshape(l, k, 3 * k))
    de = jnp.einsum("lmi,lix->lmx", B, sol, precision=_HI) - jnp.transpose(v, (0, 2, 3, 1)).reshape(l, -1, 3 * k)
    resid = jnp.concatenate([jnp.real(e).reshape(-1), jnp.imag(e).reshape(-1)])
    jac = jnp.concatenate([jnp.real(de).reshape(-1, 3 * k), jnp.imag(de).reshape(-1, 3 * k)])
    return resid, jac


def ml_refine(y, E, geometry: ArrayGeometry, grid: Grid, phi, theta, r, mask, cfg: CompressiveConfig,
              *, model: str = "exact"):
    """Variable-projection ML refinement of `K` sources of one scene by Levenberg-Marquardt.

    Each iteration solves the damped normal equations of the exact variable-projection Jacobian
    (`vp_residual_jacobian`, built from the factors of the fit at the current point, which the
    previous iteration's cost evaluation already computed), scales the step to at most
    `cfg.max_step_cells`, keeps it inside the box and the trust region, and accepts it when the
    cost falls (the damping then shrinks, else it grows). At most `cfg.ml_iters` iterations; with
    `cfg.ml_early_stop` a scene stops once a step is below `cfg.ml_xtol` cells, or its achieved and
    predicted cost decreases are below `cfg.ml_ftol` of the cost.

    Args:
      y: `[L, M]`; E: `[L|1, M, N]` from `scene_operators`.
      grid: sets the scaling (grid steps) and the box (grid extents).
      phi, theta, r, mask: `[K]` starting points and which slots are sources.

    Returns:
      (phi, theta, r) refined `[K]`, final residual energy.
    """
    return ml_refine_fit(y, E, geometry, grid, phi, theta, r, mask, cfg, model=model)[:4]


def ml_refine_fit(y, E, geometry: ArrayGeometry, grid: Grid, phi, theta, r, mask, cfg: CompressiveConfig,
                  *, model: str = "exact"):
    """`ml_refine` that also returns the final fit's residual `[L, M]` and the iterations it ran
    (`[]` int32): (phi, theta, r, residual energy, residual, iterations)."""
    steps_np, lo_np, hi_np = grid.scaling()
    real = jnp.real(y).dtype
    steps = jnp.asarray(steps_np, real)
    geo = geometry.astype(real)
    free = jnp.asarray([1.0, 0.0 if geometry.linear else 1.0, 1.0], real)
    fmask = mask.astype(real)[:, None] * free[None, :]  # [K, 3]
    k = phi.shape[0]
    z0 = jnp.stack([phi / steps[0], theta / steps[1], (1.0 / r) / steps[2]], axis=-1)
    zlo = jnp.maximum(jnp.asarray(lo_np, real)[None, :], z0 - cfg.trust_cells)
    zhi = jnp.minimum(jnp.asarray(hi_np, real)[None, :], z0 + cfg.trust_cells)
    zlo, zhi = jnp.minimum(zlo, z0), jnp.maximum(zhi, z0)

    def fit(zf):  # the least-squares fit at zf: its factors (reused by the next Jacobian) and cost
        factors = _ls_factor(_columns(geo, E, zf.reshape(k, 3), steps, model, y.dtype), y, mask)
        return factors, jnp.sum(abs2(factors[3]))

    fm = fmask.reshape(-1)

    def body(carry):
        zf, c, lam, factors = carry[:4]
        _, da = _atoms_tangents(geo, zf.reshape(k, 3), steps, model, y.dtype)
        e, J = _vp_jacobian(y, E, da, mask, *factors)
        J = J * fm[None, :]
        g = J.T @ e
        JtJ = J.T @ J
        d = jnp.diagonal(JtJ)
        A = JtJ + lam * jnp.diag(jnp.maximum(d, 1e-12 * jnp.max(d) + 1e-30)) + jnp.diag(1.0 - fm)
        step = -jnp.linalg.solve(A, g) * fm
        # Scale the whole step (clipping components separately would bend the LM direction).
        step = step * (cfg.max_step_cells / jnp.maximum(jnp.max(jnp.abs(step)), cfg.max_step_cells))
        cand = jnp.clip((zf + step).reshape(k, 3), zlo, zhi).reshape(-1)
        f_new, c_new = fit(cand)
        better = jnp.isfinite(c_new) & (c_new < c)
        pick = lambda new, old: jnp.where(better, new, old)  # noqa: E731
        # Converged (MINPACK's tests): the step taken (inside the box and the trust region) is
        # tiny, or both the cost decrease it achieved and the one its linear model predicted are
        # tiny relative to the cost.
        taken = cand - zf
        predicted = c - jnp.sum(jnp.square(e + J @ taken))
        achieved = jnp.where(better, c - c_new, 0.0)
        done = ((jnp.max(jnp.abs(taken)) <= cfg.ml_xtol)
                | ((predicted <= cfg.ml_ftol * c) & (achieved <= cfg.ml_ftol * c)))
        return (pick(cand, zf), pick(c_new, c), pick(lam * 0.3, lam * 4.0),
                jax.tree_util.tree_map(pick, f_new, factors), carry[4] + 1, done)

    zf0 = z0.reshape(-1)
    f0, c0 = fit(zf0)
    init = (zf0, c0, jnp.asarray(1e-2, real), f0, jnp.zeros((), jnp.int32), jnp.asarray(False))
    if cfg.ml_early_stop:
        out = jax.lax.while_loop(lambda cr: (cr[4] < cfg.ml_iters) & ~cr[5], body, init)
    else:
        out = jax.lax.fori_loop(0, cfg.ml_iters, lambda _, cr: body(cr), init)
    zf, c, factors, n_iter = out[0], out[1], out[3], out[4]
    x = zf.reshape(k, 3) * steps[None, :]
    return x[:, 0], x[:, 1], 1.0 / x[:, 2], c, factors[3], n_iter


def source_fstats(y, B, mask):
    """Each source's F statistic in the joint fit (one scene): the energy it explains given the
    others, `(RSS_without_k - RSS) / L`, over the residual per degree of freedom.

    Args:
      B: `[L|1, M, K]` columns `G_l a(eta_k)` of the current sources; mask `[K]`.

    Returns:
      (F `[K]`, `inf` outside `mask`; the order `sum(mask)`).
    """
    f, order, _ = _source_fstats(y, B, mask)
    return f, order


def _source_fstats(y, B, mask):
    """`source_fstats` with the residual `[L, M]` of the joint fit: (F, order, residual)."""
    l, m = y.shape
    k_all = mask.shape[0]
    _, e = ls_fit(B, y, mask)
    rss = jnp.sum(abs2(e))
    order = jnp.sum(mask)
    dof = jnp.maximum((m - order) * l, 1)

    def without(j):
        _, ej = ls_fit(B, y, mask & (jnp.arange(k_all) != j))
        return jnp.sum(abs2(ej))

    rss_wo = jax.vmap(without)(jnp.arange(k_all))
    f = ((rss_wo - rss) / l) / jnp.maximum(rss / dof, 1e-30)
    return jnp.where(mask, f, jnp.inf), order, e


def order_retest(y, B, mask, thresholds, cfg: CompressiveConfig):
    """Drop, one at a time, the least significant source while its F statistic
    (`source_fstats`) fails.

    Args:
      B: `[L|1, M, K]` columns `G_l a(eta_k)` of the current sources; mask `[K]`.

    Returns:
      (mask, F statistic per source `[K]` for the final set).
    """
    mask, f, _ = _order_retest(y, B, mask, thresholds)
    return mask, f


def _order_retest(y, B, mask, thresholds):
    """`order_retest` with the residual `[L, M]` of the final fit: (mask, F, residual).

    A while loop: the F statistics of a set are computed once, and the loop ends at the first set
    whose least significant source passes (at most `K` drops)."""
    k_all = mask.shape[0]
    real = jnp.real(y).dtype

    def failing(carry):  # the least significant source of the current set fails its test
        mask, f, order = carry[:3]
        tau = thresholds[jnp.clip(order - 1, 0, k_all - 1)].astype(real)
        return (order > 0) & (jnp.min(f) <= tau) & (carry[4] < k_all)

    def drop(carry):
        mask, f, _, _, i = carry
        mask = mask & (jnp.arange(k_all) != jnp.argmin(f))
        return (mask,) + _source_fstats(y, B, mask) + (i + 1,)

    init = (mask,) + _source_fstats(y, B, mask) + (jnp.zeros((), jnp.int32),)
    mask, f, _, e, _ = jax.lax.while_loop(failing, drop, init)
    return mask, jnp.where(mask, f, 0.0), e


def range_scan(y, E, geometry: ArrayGeometry, phi, theta, r, mask, inv_r, *, model: str = "exact"):
    """Range of each source by a 1-D least-squares scan at its fixed angles (one scene).

    For source k and each candidate `u_j = 1/r` of `inv_r`, the measurements are fitted jointly
    with the other sources (`mask`) and source k at `(phi_k, theta_k, 1/u_j)`; the candidate with
    the smallest residual wins, refined by a parabola through its neighbours in `u`. The joint
    fit's residual energy comes from one fit of the other sources per source k: with `e` their
    residual and `g~ = P_perp g_j` the candidate's column projected off them,
    `RSS_j = sum_l ||e_l||^2 - |g~_l^H e_l|^2 / ||g~_l||^2` (one Cholesky factor per source for
    all candidates, instead of one joint fit per candidate). This is one
    coordinate step of the ML of `ml_refine`, over the whole range box: near-field range lives in
    the phase curvature over the aperture, which a coarse set of range planes samples poorly.

    Args:
      y: `[L, M]`; E: `[L|1, M, N]` from `scene_operators`.
      phi, theta, r, mask: `[K]` sources (radians, metres) and which slots are sources.
      inv_r: `[U]` increasing candidates of 1/r (1/m), uniformly spaced.

    Returns:
      `[K]` ranges (metres); entries outside `mask` are scanned as well (against the masked
      sources), so a caller may decide on them afterwards.
    """
    l, k_all = y.shape[0], phi.shape[0]
    a = steering(geometry, phi, theta, r, model=model, dtype=y.dtype)  # [K, N]
    B = apply_operators(E, a.T)  # [L|1, M, K]
    u = inv_r.astype(phi.dtype)

    def one(k):
        others = mask & (jnp.arange(k_all) != k)
        Bo, chol, _, e = _ls_factor(B, y, others)  # e = P_perp(others) y
        a_u = steering(geometry, phi[k], theta[k], 1.0 / u, model=model, dtype=y.dtype)  # [U, N]
        g = jnp.broadcast_to(apply_operators(E, a_u.T), (l,) + (y.shape[1], u.shape[0]))  # [L, M, U]
        coef = cho_solve(chol, jnp.einsum("lmk,lmu->lku", jnp.conj(Bo), g, precision=_HI))
        gp = g - jnp.einsum("lmk,lku->lmu", Bo, coef, precision=_HI)  # P_perp(others) g
        gn = jnp.sum(abs2(gp), axis=1)  # [L, U]
        explained = abs2(jnp.einsum("lmu,lm->lu", jnp.conj(gp), e, precision=_HI))
        floor = 1e-9 * jnp.sum(abs2(g), axis=1)  # a candidate inside the others' span explains nothing
        cost = jnp.sum(abs2(e)) - jnp.sum(jnp.where(gn > floor, explained / jnp.maximum(gn, floor), 0.0), axis=0)
        j = jnp.clip(jnp.argmin(cost), 1, u.shape[0] - 2)
        c0, c1, c2 = cost[j - 1], cost[j], cost[j + 1]
        curv = c0 - 2.0 * c1 + c2
        off = jnp.where(curv > 0, 0.5 * (c0 - c2) / jnp.where(curv > 0, curv, 1.0), 0.0)
        j_best = jnp.argmin(cost)
        du = u[1] - u[0]
        u_best = jnp.where((j_best == j), u[j] + jnp.clip(off, -1.0, 1.0) * du, u[j_best])
        return 1.0 / jnp.clip(u_best, u[0], u[-1])

    return jax.vmap(one)(jnp.arange(k_all))


def ml_polish(y, E, geometry: ArrayGeometry, grid: Grid, phi0, theta0, r0, mask0, thresholds,
              cfg: CompressiveConfig, *, model: str = "exact"):
    """Finish given detections of one scene on its measurements: the joint off-grid ML refinement
    (`ml_refine`) of the sources, then the F-test order re-test (`order_retest`, when
    `cfg.retest`). No dictionary: a fixed, small amount of work (`cfg.ml_iters` Levenberg-Marquardt
    steps of `3 K` parameters and `K` least-squares re-fits), which is what makes it the last stage
    of a learned localizer (and the first of `ml_from_start`).

    Args:
      y: `[L, M]`; E: `[L|1, M, N]` from `scene_operators`.
      grid: sets the ML's scaling (grid steps) and box (grid extents), as in `ml_refine`.
      phi0, theta0, r0, mask0: `[K]` starting detections (radians, metres, bool); they are
        re-ordered, valid ones first.
      thresholds: `[K]` from `f_thresholds`.

    Returns:
      (phi, theta, r, mask) `[K]`, each source's F statistic `[K]` in the final fit (`inf` outside
      `mask`), residual `[L, M]` of the final least-squares fit.
    """
    order = jnp.argsort(~mask0)  # valid starting points first
    phi, theta, r, mask = phi0[order], theta0[order], r0[order], mask0[order]
    phi, theta, r, _ = ml_refine(y, E, geometry, grid, phi, theta, r, mask, cfg, model=model)
    mask, f, e = _retest(y, E, geometry, phi, theta, r, mask, thresholds, cfg, model=model)
    return phi, theta, r, mask, f, e


def _retest(y, E, geometry: ArrayGeometry, phi, theta, r, mask, thresholds, cfg: CompressiveConfig, *, model):
    """The F-test order re-test of a fit (`order_retest`; with `cfg.retest` off, each source's F
    statistic as it is): (mask, F `[K]` (`inf` outside mask with the re-test), residual `[L, M]`)."""
    B = apply_operators(E, steering(geometry, phi, theta, r, model=model, dtype=y.dtype).T)
    if cfg.retest:
        mask, f, e = _order_retest(y, B, mask, jnp.asarray(thresholds))
        f = jnp.where(mask, f, jnp.inf)
    else:
        f, _, e = _source_fstats(y, B, mask)
    return mask, f, e


def ml_rescan(y, E, geometry: ArrayGeometry, grid: Grid, phi, theta, r, mask, resid, thresholds,
              cfg: CompressiveConfig, inv_r, *, model: str = "exact"):
    """Restart one scene's fitted sources from a global range search and keep the better fit.

    Near-field range is the weakly determined coordinate: a Levenberg-Marquardt refinement started
    at a wrong range stays in that range's basin with the direction right. Here each source's
    range is searched over the whole box at its fitted angles, jointly with the other sources
    (`range_scan`), the sources are refined from there (`ml_polish`, with its F-test re-test),
    and that fit replaces the given one only when it leaves less residual energy with no fewer
    sources. A fixed, small amount of work: `K` scans of `U` candidates and one polish.

    Args:
      y: `[L, M]`; E: `[L|1, M, N]` from `scene_operators`.
      grid: sets the ML's scaling and box, as in `ml_refine`.
      phi, theta, r, mask: `[K]` the current fit (e.g. `ml_polish`'s); resid: `[L, M]` its residual.
      thresholds: `[K]` from `f_thresholds`; inv_r: `[U]` increasing, uniformly spaced 1/r candidates.

    Returns:
      (phi, theta, r, mask, F statistic `[K]` (`inf` outside `mask`) of the new fit, its residual
      `[L, M]`, kept: bool, True when the new fit replaced the given one). When it is not kept the
      first six are the new fit's all the same; the caller keeps its own.
    """
    r_scan = range_scan(y, E, geometry, phi, theta, r, mask, inv_r, model=model)
    p1, t1, r1, m1, f1, e1 = ml_polish(y, E, geometry, grid, phi, theta, r_scan, mask, thresholds, cfg, model=model)
    kept = (jnp.sum(abs2(e1)) < jnp.sum(abs2(resid))) & (jnp.sum(m1) >= jnp.sum(mask))
    return p1, t1, r1, m1, f1, e1, kept


def backprojected_scores(H, codes, a_flat, resid):
    """`[G]` residual energy at every grid point by the matched filter of the back-projected
    residual, `sum_l |a_g^H G_l^H r_l|^2`: `atom_scores` without the atom norms `||G_l a_g||^2`,
    hence without the dictionary `[L, M, G]` (`L N G` multiply-adds per call against the
    dictionary's `L M N G` to build). For unit-modulus steering and RIS codes the norms vary
    little over the grid, so it ranks the grid points nearly as `atom_scores` does; it picks the
    start of a greedy step, which the ML refinement and the F test then judge on the measurements.

    Args:
      H: `[M, N]` or None (full-array mode); codes: `[L, N]` or None; a_flat: `[G, N]` grid
        steering; resid: `[L, M]`. The back-projection is `physics.covariance.adjoint_apply`.
    """
    b = adjoint_apply(resid, H, codes, _HI)  # [L, N]: G_l^H r_l
    return jnp.sum(abs2(jnp.matmul(b, jnp.conj(a_flat).T, precision=_HI)), axis=0)


def ml_continue(y, E, scores, grid_coords, thresholds, geometry: ArrayGeometry, grid: Grid, phi, theta, r, mask,
                cfg: CompressiveConfig, *, model: str = "exact"):
    """Greedy continuation of one scene's fit, as the steps of `somp_ml`: while slots are free, the
    grid point that `scores` ranks first in the current residual joins the sources, all of them
    are refined jointly (`ml_refine`), and the addition is kept only if its F statistic passes the
    threshold for the new order; the first rejection ends the search (a while loop: a fit that is
    already complete costs one step).

    Args:
      y: `[L, M]`; E: `[L|1, M, N]`; scores: `resid [L, M] -> [G]` (`atom_scores` of a dictionary,
        or `backprojected_scores`); grid_coords: (phi, theta, r) `[G]` each, the scored grid points;
        thresholds: `[K_max]` from `f_thresholds`.
      phi, theta, r, mask: `[K_max]` the current fit.

    Returns:
      (phi, theta, r, mask) `[K_max]` after the F-test order re-test of the final fit (as
      `ml_polish`), each source's F statistic `[K_max]` (`inf` outside `mask`), residual `[L, M]`.
    """
    k_max = cfg.k_max
    l, m = y.shape
    real = jnp.real(y).dtype
    thresholds = jnp.asarray(thresholds)
    gphi, gth, gr = grid_coords

    def rss_of(phi, theta, r, mask):
        B = apply_operators(E, steering(geometry, phi, theta, r, model=model, dtype=y.dtype).T)
        _, e = ls_fit(B, y, mask)
        return jnp.sum(abs2(e)), e

    def more(carry):
        mask, stopped = carry[3], carry[4]
        return ~stopped & (jnp.sum(mask) < k_max)

    def step(carry):
        phi, theta, r, mask, _, rss, resid = carry
        count = jnp.sum(mask)
        score = scores(resid)
        g = jnp.argmax(jnp.where(jnp.isfinite(score), score, -jnp.inf))
        slot = jnp.argmin(mask)  # first free slot
        cphi, cth, cr = phi.at[slot].set(gphi[g]), theta.at[slot].set(gth[g]), r.at[slot].set(gr[g])
        cmask = mask.at[slot].set(True)
        cphi, cth, cr, rss_new, resid_new, _ = ml_refine_fit(y, E, geometry, grid, cphi, cth, cr, cmask, cfg,
                                                             model=model)
        dof = (m - (count + 1)) * l
        f = ((rss - rss_new) / l) / jnp.maximum(rss_new / jnp.maximum(dof, 1), 1e-30)
        accept = f > thresholds[jnp.clip(count, 0, k_max - 1)].astype(real)
        pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        return (pick(cphi, phi), pick(cth, theta), pick(cr, r), pick(cmask, mask), ~accept, pick(rss_new, rss),
                pick(resid_new, resid))

    rss0, resid0 = rss_of(phi, theta, r, mask)  # the current fit's, carried from step to step
    phi, theta, r, mask, *_ = jax.lax.while_loop(more, step, (phi, theta, r, mask, jnp.asarray(False), rss0, resid0))
    mask, f, e = _retest(y, E, geometry, phi, theta, r, mask, thresholds, cfg, model=model)
    return phi, theta, r, mask, f, e


def ml_from_start(y, E, D, norms, grid_coords, thresholds, geometry: ArrayGeometry, grid: Grid,
                  phi0, theta0, r0, mask0, cfg: CompressiveConfig, *, model: str = "exact", scores=None):
    """ML localization of one scene started from given detections (e.g. a learned method's).

    1. Joint off-grid ML refinement of the starting sources and 2. F-test order re-test: the
       least significant source is dropped while it fails (`ml_polish`; also when the start is
       already polished, as `learned-ml`'s is: 10 more steps from there were measured to help).
    3. Greedy continuation as in `somp_ml` (`ml_continue`): while slots are free, the grid point
       that best explains the residual is added, all sources are refined jointly, and the
       addition is kept only if its F statistic passes the threshold for the new order (else the
       search stops); then the order re-test of the final fit.

    Args:
      y: `[L, M]`; E, D, norms, grid_coords, thresholds: as in `somp_ml`.
      phi0, theta0, r0, mask0: `[K_max]` starting detections (radians, metres, bool).
      scores: optional `resid -> [G]` criterion of the continuation's picks (e.g.
        `backprojected_scores`); default (None) `atom_scores(D, norms, resid)`, and `D`, `norms`
        are then required (else they are not used and may be None).

    Returns:
      (phi, theta, r, mask) `[K_max]`, F statistic per source `[K_max]`.
    """
    if scores is None:
        scores = functools.partial(atom_scores, D, norms)
    phi, theta, r, mask, _, _ = ml_polish(y, E, geometry, grid, phi0, theta0, r0, mask0, thresholds, cfg,
                                          model=model)
    phi, theta, r, mask, f, _ = ml_continue(y, E, scores, grid_coords, thresholds, geometry, grid, phi, theta, r,
                                            mask, cfg, model=model)
    return phi, theta, r, mask, f
