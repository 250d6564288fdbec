"""Training losses: covariance fidelity, factor regularisers, set and heatmap supervision.

Every loss is a pure JAX function of ONE scene over its trailing axes (callers `vmap` over the
batch); all are jittable and differentiable, and their dtype follows the inputs (complex64 /
float32 in training, complex128 / float64 in tests). No SVD or eigendecomposition appears
anywhere: their gradients were non-finite in the original system; subspaces are handled with
Cholesky solves of diagonally loaded Gram matrices instead.

| loss                    | trains                  | inputs (one scene)                            |
|-------------------------|-------------------------|-----------------------------------------------|
| `cov_nmse`              | covariance head         | `R_hat`, `R_true` `[N, N]`                    |
| `orthogonality_penalty` | factor head             | `F` `[N, r]`                                  |
| `subspace_alignment`    | factor head             | `F` `[N, r]`, true steering `[K, N]`          |
| `aux_set_loss`          | auxiliary slot head     | slots `[S]`, truth `[K]`                      |
| `peak_contrast`         | covariance (MVDR shape) | `R` `[N, N]`, truth `[K]`, geometry           |
| `heatmap_loss`          | spectrum refiner        | logits `[T, P]`, truth `[K]`, grid axes       |

`weighted_total` combines named terms with a Python-level skip of zero weights, so a caller
that trains only the refiner computes nothing but `heatmap_loss` (its fast path).

Padded truth slots (`mask` False) may hold any value, NaN included: they are replaced by
harmless constants before use, so they reach neither the value nor the gradient.
"""
from __future__ import annotations

import functools
import itertools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rismvdr.physics.covariance import trace_normalize  # the one trace normalisation (re-exported)
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.steering import steering
from rismvdr.physics.linalg import abs2, eye_like, herm, hermitise, real_dtype

__all__ = [
    "trace_normalize",
    "cov_nmse",
    "orthogonality_penalty",
    "subspace_alignment",
    "aux_set_loss",
    "peak_contrast",
    "gaussian_blob_targets",
    "focal_loss",
    "heatmap_loss",
    "weighted_total",
]

_HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _real_trace(R):
    return jnp.real(jnp.trace(R, axis1=-2, axis2=-1))


def _masked_mean(values, mask):
    """`sum(mask * values) / max(sum(mask), 1)` for `[K]` values; 0 when no entry is valid."""
    mask = mask.astype(values.dtype)
    return jnp.sum(mask * values) / jnp.maximum(jnp.sum(mask), 1.0)


def _check_ndim(name: str, x, ndim: int) -> None:
    if np.ndim(x) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {np.shape(x)}")


def _check_len(name: str, x, n: int, what: str) -> None:
    if np.shape(x) != (n,):
        raise ValueError(f"{name}: expected shape [{n}] ({what}), got {list(np.shape(x))}")


def _wrap(x):
    """Wrap angles to `(-pi, pi]` (gradient 1 everywhere: the shift is piecewise constant)."""
    two_pi = 2.0 * np.pi
    return x - two_pi * jnp.ceil((x - np.pi) / two_pi)


def _huber(x, delta):
    """Huber loss normalised by its threshold: `x^2/(2 d)` for `|x| <= d`, `|x| - d/2` beyond."""
    return optax.huber_loss(x, delta=delta) / delta


# ------------------------------------------------------------------------------------------
# Covariance fidelity
# ------------------------------------------------------------------------------------------
def cov_nmse(R_hat, R_true):
    """Normalised squared error of a covariance estimate, after trace normalisation to N.

    `nmse = ||Rn_hat - Rn_true||_F^2 / ||Rn_true||_F^2`, `Rn = trace_normalize(R)`; invariant
    to positive scalings of either argument.

    Args:
      R_hat: `[..., N, N]` estimate.
      R_true: `[..., N, N]` reference (e.g. `A diag(p) A^H`).

    Returns:
      `[...]` real.
    """
    if np.shape(R_hat)[-2:] != np.shape(R_true)[-2:]:
        raise ValueError(f"R_hat: shape {np.shape(R_hat)} does not match R_true {np.shape(R_true)}")
    a = trace_normalize(R_hat)
    b = trace_normalize(R_true)
    num = jnp.sum(abs2(a - b), axis=(-2, -1))
    den = jnp.sum(abs2(b), axis=(-2, -1))
    return num / jnp.maximum(den, jnp.finfo(den.dtype).tiny)


# ------------------------------------------------------------------------------------------
# Factor regularisers (no SVD / eig: Gram matrices and Cholesky solves only)
# ------------------------------------------------------------------------------------------
def orthogonality_penalty(F):
    """Scale-free distance of a factor's columns from an orthogonal, equal-norm set.

    With `Fs = F / sqrt(mean_j ||f_j||^2)` (so `tr(Fs^H Fs) = r`):
    `penalty = ||Fs^H Fs - I_r||_F^2 / r`, 0 exactly when the columns are orthogonal with equal
    norms. Computed from the Gram matrix `G = F^H F` scaled by `r / tr(G)`.

    Args:
      F: `[N, r]` complex factor.

    Returns:
      Real scalar.
    """
    _check_ndim("F", F, 2)
    r = F.shape[-1]
    G = jnp.matmul(herm(F), F, precision=_HIGHEST)  # [r, r]
    tr = _real_trace(G)
    mean_norm2 = jnp.maximum(tr / r, jnp.finfo(tr.dtype).tiny)
    D = G / mean_norm2.astype(G.dtype) - eye_like(G)
    return jnp.sum(abs2(D)) / r


def subspace_alignment(F, a_true, mask, *, eps: float = 1e-6):
    """One minus the mean fraction of each true steering vector's energy inside span(F).

    `P_F a = F C^-1 F^H a`, `C = F^H F + eps tr(F^H F)/r I_r` (a loaded projector onto span(F),
    applied by a Cholesky solve), and

    `loss = 1 - sum_k mask_k ||P_F a_k||^2 / ||a_k||^2 / max(sum_k mask_k, 1)`.

    In [0, 1]: 0 (up to O(eps)) when every valid `a_k` lies in span(F), 1 when all are
    orthogonal to it, 1 when no truth is valid.

    Args:
      F: `[N, r]` complex factor (e.g. the learned covariance factor).
      a_true: `[K, N]` true steering vectors (rows).
      mask: `[K]` bool, valid truths.
      eps: relative diagonal loading of the Gram matrix (keeps the solve well posed when F is
        rank deficient).

    Returns:
      Real scalar.
    """
    _check_ndim("F", F, 2)
    _check_ndim("a_true", a_true, 2)
    n, r = F.shape
    k = a_true.shape[0]
    if a_true.shape[1] != n:
        raise ValueError(f"a_true: last axis {a_true.shape[1]} does not match N = {n} of F")
    _check_len("mask", mask, k, "one flag per true source")
    real = real_dtype(F)
    a = jnp.where(mask[:, None], a_true, jnp.zeros((), a_true.dtype)).astype(F.dtype)  # [K, N]
    G = jnp.matmul(herm(F), F, precision=_HIGHEST)  # [r, r]
    load = eps * jnp.maximum(_real_trace(G) / r, jnp.finfo(real).tiny)
    chol = jnp.linalg.cholesky(hermitise(G) + load.astype(G.dtype) * eye_like(G))
    b = jnp.matmul(herm(F), a.T, precision=_HIGHEST)  # F^H a_k, [r, K]
    x = jax.scipy.linalg.cho_solve((chol, True), b)  # C^-1 F^H a_k, [r, K]
    proj = jnp.matmul(F, x, precision=_HIGHEST)  # P_F a_k, [N, K]
    num = jnp.sum(abs2(proj), axis=0)  # [K]
    den = jnp.sum(abs2(a), axis=1)  # [K]
    frac = num / jnp.maximum(den, jnp.finfo(real).tiny)
    return 1.0 - _masked_mean(frac, mask)


# ------------------------------------------------------------------------------------------
# Permutation-invariant auxiliary slot loss
# ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _assignments(n_pred: int, n_true: int) -> np.ndarray:
    """All injective maps truth -> pred slot: `[n_pred! / (n_pred - n_true)!, n_true]` int32."""
    perms = list(itertools.permutations(range(n_pred), n_true))
    return np.asarray(perms, dtype=np.int32).reshape(len(perms), n_true)


def aux_set_loss(
    pred_phi,
    pred_theta,
    pred_r,
    pred_logit,
    true_phi,
    true_theta,
    true_r,
    mask,
    *,
    angle_delta: float = float(np.deg2rad(2.0)),
    log_r_delta: float = 0.1,
    exist_weight: float = 1.0,
    exist_gate: tuple[float, float] | None = None,
):
    """Set loss of S predicted slots against K padded truths, minimised over assignments.

    Each true slot k is assigned a distinct pred slot `s = pi(k)`; the pair cost is

    `c(k, s) = h(wrap(phi_s - phi_k), d_a) + h(wrap(theta_s - theta_k), d_a)
              + h(log r_s - log r_k, d_r)`,

    `h(x, d)` the Huber loss divided by `d`, `wrap` onto `(-pi, pi]`. All `S!/(S-K)!`
    assignments (at most 120 for S = K = 5) are enumerated from a constant index table; the
    best one, `pi* = argmin_pi sum_k mask_k c(k, pi(k))`, is chosen under `stop_gradient`, and

    `regression = sum_k mask_k c(k, pi*(k)) / max(sum_k mask_k, 1)`,
    `existence = mean_s BCE(logit_s, [s is assigned to a valid truth])`,
    `loss = regression + exist_weight * existence`.

    Padded truths contribute nothing to the regression, and the slots they are assigned to
    get existence target 0. The loss is invariant to permuting pred slots or truth slots.

    Args:
      pred_phi, pred_theta: `[S]` predicted angles, radians.
      pred_r: `[S]` predicted ranges, metres (> 0).
      pred_logit: `[S]` existence logits.
      true_phi, true_theta: `[K]` true angles, radians (any value where padded).
      true_r: `[K]` true ranges, metres.
      mask: `[K]` bool, valid truths. Requires `S >= K`.
      angle_delta: Huber threshold for angles, radians (default 2 degrees).
      log_r_delta: Huber threshold for log range.
      exist_weight: weight of the existence term.
      exist_gate: optional (phi, theta) gate in radians: an assigned slot's existence target
        is 1 only if its angle errors are inside the gate (a slot assigned to a far-away truth
        is not a detection of it). None: the seed's rule (every assigned slot has target 1).

    Returns:
      `(loss, assignment)`: real scalar, and `[K]` int32 pred slot of each true slot under
      `pi*` (-1 where the truth is padded).
    """
    s = np.shape(pred_phi)[0] if np.ndim(pred_phi) == 1 else -1
    for name, x in (("pred_phi", pred_phi), ("pred_theta", pred_theta), ("pred_r", pred_r),
                    ("pred_logit", pred_logit)):
        _check_len(name, x, s, "one entry per predicted slot")
    k = np.shape(true_phi)[0] if np.ndim(true_phi) == 1 else -1
    for name, x in (("true_phi", true_phi), ("true_theta", true_theta), ("true_r", true_r),
                    ("mask", mask)):
        _check_len(name, x, k, "one entry per true slot")
    if k > s:
        raise ValueError(f"pred_phi: {s} predicted slots cannot cover {k} true slots (need S >= K)")

    real = real_dtype(jnp.result_type(pred_phi, pred_theta, pred_r))
    tiny = jnp.finfo(real).tiny
    pphi, ptheta, pr = (jnp.asarray(x, real) for x in (pred_phi, pred_theta, pred_r))
    zero = jnp.zeros((), real)
    tphi = jnp.where(mask, jnp.asarray(true_phi, real), zero)
    ttheta = jnp.where(mask, jnp.asarray(true_theta, real), zero)
    tr = jnp.where(mask, jnp.asarray(true_r, real), jnp.ones((), real))

    # Pair costs [K, S].
    cost = (
        _huber(_wrap(pphi[None, :] - tphi[:, None]), angle_delta)
        + _huber(_wrap(ptheta[None, :] - ttheta[:, None]), angle_delta)
        + _huber(jnp.log(jnp.maximum(pr, tiny))[None, :] - jnp.log(jnp.maximum(tr, tiny))[:, None],
                 log_r_delta)
    )
    valid = mask.astype(real)
    perms = jnp.asarray(_assignments(s, k))  # [A, K]
    rows = jnp.broadcast_to(jnp.arange(k), perms.shape)
    per_perm = jnp.sum(cost[rows, perms] * valid[None, :], axis=1)  # [A]
    best = jnp.argmin(jax.lax.stop_gradient(per_perm))
    assign = perms[best]  # [K]
    regression = per_perm[best] / jnp.maximum(jnp.sum(valid), 1.0)

    logits = jnp.asarray(pred_logit)
    onehot = jax.nn.one_hot(assign, s, dtype=logits.dtype)  # [K, S]
    hit = mask
    if exist_gate is not None:
        dphi = jnp.abs(_wrap(pphi[assign] - tphi))
        dth = jnp.abs(_wrap(ptheta[assign] - ttheta))
        hit = mask & (dphi <= exist_gate[0]) & (dth <= exist_gate[1])
    target = jax.lax.stop_gradient(jnp.sum(onehot * hit.astype(logits.dtype)[:, None], axis=0))  # [S] in {0, 1}
    existence = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
    loss = regression + exist_weight * existence.astype(real)
    return loss, jnp.where(mask, assign, -1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------
# Local MVDR / Capon peak contrast at the true sources
# ------------------------------------------------------------------------------------------
def peak_contrast(
    R,
    phi,
    theta,
    r,
    mask,
    geometry: ArrayGeometry,
    *,
    delta_rel: float = 1e-2,
    stencil: int = 3,
    step_rad: float = 0.10,
    tau: float = 0.10,
    model: str = "exact",
):
    """Local MVDR contrast: how sharply the Capon spectrum of `R` peaks at each true source.

    `Rl = R + delta I`, `delta = delta_rel tr(R)/N`, factorised once (`Rl = L L^H`). For each
    true source k, at its true range `r_k`, the Capon log-spectrum

    `logP(phi, theta) = -log(a^H Rl^-1 a) = -log ||L^-1 a||^2`

    is evaluated on the `s x s` stencil `(phi_k + i step, theta_k + j step)`,
    `i, j = -(s//2) .. s//2` (all stencil steering vectors are right-hand sides of one
    triangular solve), and

    `loss_k = -log_softmax(logP / tau)[centre]`,  `loss = mean over valid k` (0 if none).

    Invariant to positive scalings of `R` (the loading scales with it, softmax ignores the
    resulting shift). Steering vectors come from the shared `steering` function.

    Args:
      R: `[N, N]` Hermitian covariance (Hermitised here).
      phi, theta: `[K]` true angles, radians.
      r: `[K]` true ranges, metres.
      mask: `[K]` bool, valid sources.
      geometry: array geometry with N elements.
      delta_rel: diagonal loading relative to `tr(R)/N` (seed: 1e-2).
      stencil: odd stencil width s (seed: 3).
      step_rad: stencil step in both angles, radians (seed: 0.10).
      tau: softmax temperature (seed: 0.10).
      model: steering model (`exact`, `fresnel`, `far`).

    Returns:
      Real scalar.
    """
    _check_ndim("R", R, 2)
    n = R.shape[-1]
    if R.shape != (n, n):
        raise ValueError(f"R: expected a square [N, N] matrix, got {list(R.shape)}")
    if geometry.n_elements != n:
        raise ValueError(f"geometry: {geometry.n_elements} elements do not match N = {n} of R")
    k = np.shape(phi)[0] if np.ndim(phi) == 1 else -1
    for name, x in (("phi", phi), ("theta", theta), ("r", r), ("mask", mask)):
        _check_len(name, x, k, "one entry per true source")
    stencil = int(stencil)
    if stencil < 1 or stencil % 2 == 0:
        raise ValueError(f"stencil: must be a positive odd integer, got {stencil}")

    real = real_dtype(R)
    cdtype = jnp.result_type(R, jnp.complex64)
    R = hermitise(jnp.asarray(R, cdtype))
    tr = _real_trace(R)
    delta = jnp.maximum(delta_rel * tr / n, jnp.finfo(real).tiny)
    chol = jnp.linalg.cholesky(R + delta.astype(cdtype) * eye_like(R))

    zero = jnp.zeros((), real)
    phi = jnp.where(mask, jnp.asarray(phi, real), zero)
    theta = jnp.where(mask, jnp.asarray(theta, real), zero)
    r = jnp.where(mask, jnp.asarray(r, real), jnp.ones((), real))
    half = stencil // 2
    off = jnp.asarray(step_rad * np.arange(-half, half + 1), real)  # [s]
    phis = phi[:, None, None] + off[None, :, None]  # [K, s, 1]   (i: phi offset)
    thetas = theta[:, None, None] + off[None, None, :]  # [K, 1, s]   (j: theta offset)
    a = steering(geometry.astype(real), phis, thetas, r[:, None, None], model=model, dtype=cdtype)
    a = a.reshape(k * stencil * stencil, n)  # [K s s, N]
    w = jax.scipy.linalg.solve_triangular(chol, a.T, lower=True)  # L^-1 a, [N, K s s]
    quad = jnp.sum(abs2(w), axis=0)  # a^H Rl^-1 a
    logp = -jnp.log(jnp.maximum(quad, jnp.finfo(real).tiny)).reshape(k, stencil * stencil)
    centre = (stencil * stencil) // 2  # (i, j) = (0, 0)
    per_source = -jax.nn.log_softmax(logp / tau, axis=-1)[:, centre]  # [K]
    return _masked_mean(per_source, mask)


# ------------------------------------------------------------------------------------------
# Heatmap supervision of the spectrum refiner
# ------------------------------------------------------------------------------------------
def _axis_step(axis):
    """Mean step of a uniform axis (1 for an axis of length 1)."""
    m = axis.shape[0]
    if m < 2:
        return jnp.ones((), axis.dtype)
    return (axis[-1] - axis[0]) / (m - 1)


def gaussian_blob_targets(phi, theta, mask, phi_axis, theta_axis, *, sigma_cells: float = 2.0):
    """Heatmap targets: one Gaussian blob per valid source, max-blended (the seed's).

    `target[t, p] = max_k mask_k exp(-(zp^2 + zt^2) / 2)`,
    `zp = (phi_p - phi_k) / (s dphi)`, `zt = (theta_t - theta_k) / (s dtheta)`,

    `s = sigma_cells`, `dphi`, `dtheta` the axis steps (1 for an axis of length 1). All zero
    where no source is valid.

    Args:
      phi, theta: `[K]` true angles, radians.
      mask: `[K]` bool, valid sources.
      phi_axis: `[P]` uniform azimuth axis, radians (NumPy or jax array).
      theta_axis: `[T]` uniform elevation axis, radians.
      sigma_cells: blob standard deviation in grid cells.

    Returns:
      `[T, P]` real in [0, 1], in the floating dtype of `phi`/`theta`.
    """
    k = np.shape(phi)[0] if np.ndim(phi) == 1 else -1
    for name, x in (("phi", phi), ("theta", theta), ("mask", mask)):
        _check_len(name, x, k, "one entry per true source")
    _check_ndim("phi_axis", phi_axis, 1)
    _check_ndim("theta_axis", theta_axis, 1)
    real = real_dtype(jnp.result_type(phi, theta))
    pa = jnp.asarray(phi_axis, real)
    ta = jnp.asarray(theta_axis, real)
    zero = jnp.zeros((), real)
    phi = jnp.where(mask, jnp.asarray(phi, real), zero)
    theta = jnp.where(mask, jnp.asarray(theta, real), zero)
    zp = (pa[None, None, :] - phi[:, None, None]) / (sigma_cells * _axis_step(pa))  # [K, 1, P]
    zt = (ta[None, :, None] - theta[:, None, None]) / (sigma_cells * _axis_step(ta))  # [K, T, 1]
    blobs = jnp.exp(-0.5 * (zp * zp + zt * zt))  # [K, T, P]
    blobs = jnp.where(mask[:, None, None], blobs, zero)
    return jnp.max(blobs, axis=0, initial=zero)


def focal_loss(logits, target, *, alpha: float = 0.25, gamma: float = 2.0):
    """Binary focal loss with soft targets, from logits (the seed's), mean over all cells.

    With `p = sigmoid(x)`:
    `pos = -alpha (1 - p)^gamma t log p`, `neg = -(1 - alpha) p^gamma (1 - t) log(1 - p)`,
    `loss = mean(pos + neg)`. Computed as `log p = log_sigmoid(x)`,
    `log(1 - p) = log_sigmoid(-x)` and `p^gamma = exp(gamma log p)`: finite in value and
    gradient for any finite logit.

    Args:
      logits: `[...]` real.
      target: `[...]` soft targets in [0, 1], same shape.
      alpha: positive-class weight.
      gamma: focusing exponent (>= 0).

    Returns:
      Real scalar in the dtype of `logits`.

    >>> import jax.numpy as jnp
    >>> round(float(focal_loss(jnp.zeros(4), jnp.ones(4))), 4)  # 0.25 * 0.5^2 * log 2
    0.0433
    """
    if np.shape(logits) != np.shape(target):
        raise ValueError(f"target: shape {np.shape(target)} does not match logits {np.shape(logits)}")
    x = jnp.asarray(logits)
    t = jnp.asarray(target, x.dtype)
    log_p = jax.nn.log_sigmoid(x)
    log_q = jax.nn.log_sigmoid(-x)
    pos = -alpha * jnp.exp(gamma * log_q) * t * log_p
    neg = -(1.0 - alpha) * jnp.exp(gamma * log_p) * (1.0 - t) * log_q
    return jnp.mean(pos + neg)


def heatmap_loss(
    logits,
    phi,
    theta,
    mask,
    phi_axis,
    theta_axis,
    *,
    sigma_cells: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
):
    """Refiner loss: focal loss of `[T, P]` logits against the max-blended Gaussian blobs.

    `loss = focal_loss(logits, gaussian_blob_targets(phi, theta, mask, axes))`; needs nothing
    but the refiner's output and the truth (the refiner-only fast path).

    Args:
      logits: `[T, P]` refiner logits (theta rows, phi columns).
      phi, theta: `[K]` true angles, radians.
      mask: `[K]` bool, valid sources.
      phi_axis: `[P]` azimuth axis, radians.
      theta_axis: `[T]` elevation axis, radians.
      sigma_cells, alpha, gamma: see `gaussian_blob_targets` and `focal_loss`.

    Returns:
      Real scalar in the dtype of `logits`.
    """
    _check_ndim("phi_axis", phi_axis, 1)
    _check_ndim("theta_axis", theta_axis, 1)
    want = [np.shape(theta_axis)[0], np.shape(phi_axis)[0]]
    if list(np.shape(logits)) != want:
        got = list(np.shape(logits))
        raise ValueError(f"logits: expected shape [T, P] = {want} of the grid axes, got {got}")
    target = gaussian_blob_targets(phi, theta, mask, phi_axis, theta_axis, sigma_cells=sigma_cells)
    return focal_loss(logits, target.astype(jnp.result_type(logits)), alpha=alpha, gamma=gamma)


# ------------------------------------------------------------------------------------------
# Combination
# ------------------------------------------------------------------------------------------
def weighted_total(terms: dict[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """`sum_name weights[name] * terms[name]` over the names whose weight is non-zero.

    The skip happens in Python, so a caller need not compute zero-weight terms at all; terms
    without a weight are ignored.

    Args:
      terms: name -> loss value (scalars, typically).
      weights: name -> Python float weight.

    Returns:
      The weighted sum (a zero scalar when every weight is zero).

    Raises:
      KeyError: a term with a non-zero weight is missing from `terms`.

    >>> import jax.numpy as jnp
    >>> float(weighted_total({"cov": jnp.asarray(2.0)}, {"cov": 0.5, "heatmap": 0.0}))
    1.0
    """
    total = None
    for name, w in weights.items():
        if w == 0:
            continue
        if name not in terms:
            raise KeyError(f"weighted_total: term {name!r} has weight {w} but is missing from terms "
                           f"(have {sorted(terms)})")
        part = w * terms[name]
        total = part if total is None else total + part
    if total is None:
        dtype = jnp.result_type(*terms.values()) if terms else jnp.float32
        return jnp.zeros((), dtype)
    return total
