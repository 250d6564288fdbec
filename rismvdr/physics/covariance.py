"""Covariance estimators of the surface field (conventions section 5).

Measurement model of one scene (conventions section 3): snapshot `l = 1..L` gives `y_l = G_l x_l + n_l`
with `G_l = H diag(c_l)`, so `G_l x = H (c_l * x)`. Arrays: `y` `[L, M]`, `H` `[M, N]`,
`codes` `[L, N]`. In full-array mode `H` and `codes` are None and `G_l = I_N` (M = N).

Estimators (each written for ONE scene over the trailing axes; batch with `jax.vmap` or
`estimate_covariance`):

- `sample_covariance`: `R = (1/L) sum_l y_l y_l^H` (full-array mode).
- `matched_filter_covariance`: `xhat_l = G_l^H y_l`, `R = (1/L) sum_l xhat_l xhat_l^H`.
- `ridge_ls_covariance`: `xhat_l = G_l^H (G_l G_l^H + mu_l I_M)^-1 y_l`, same average, with the
  *relative* ridge `mu_l = lam * tr(G_l G_l^H) / M`.
- `als_covariance`: rank-r factor `F` `[N, r]` and coefficients `z_l` `[r]` with
  `y_l ~= G_l F z_l`, fitted by alternating ridge least squares over a fixed number of
  iterations (`jax.lax.scan`, differentiable), `R = F (sum_l z_l z_l^H / L) F^H`.

Every estimator returns a `CovEstimate(R, factor)`: `R` `[N, N]` Hermitian with trace N, and
`factor` `[N, q]` with `factor @ factor^H == R` (to rounding), ready for a low-rank (Woodbury)
MVDR. An all-zero input gives `R = 0` and `factor = 0` (there is nothing to normalise).

All estimates are invariant to the scales of `y`, `H` and `codes` (the data are rescaled to unit
size before any arithmetic, which also keeps complex64 away from overflow and underflow). Every
matmul/einsum runs at `precision` (default `HIGHEST`: TF32 measurably degrades MVDR spectra).
Outputs keep the input dtype (complex64 or complex128; mixed inputs are promoted to the
widest).

The public functions validate concrete inputs on the host (`ValueError` whose message starts
with the argument's name) and skip the value checks under a trace, so they stay jittable and
vmappable.
"""
from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.physics._validation import (
    check_complex,
    check_finite,
    check_ndim,
    check_shape,
    is_concrete,
)
from rismvdr.physics.linalg import abs2, hermitise, real_dtype

__all__ = [
    "COVARIANCE_METHODS",
    "batched_covariance",
    "CovEstimate",
    "AlsFit",
    "trace_normalize",
    "unit_rms",
    "sample_covariance",
    "matched_filter_covariance",
    "adjoint_apply",
    "ridge_ls_covariance",
    "als_fit",
    "als_covariance",
    "estimate_covariance",
]

_HI = jax.lax.Precision.HIGHEST

COVARIANCE_METHODS = ("sample", "matched_filter", "ridge_ls", "als")
_ALIASES = {"als_lowrank": "als"}  # the conventions' / seed's name for "als"

FSolver = Literal["auto", "primal", "dual"]


class CovEstimate(NamedTuple):
    """A covariance estimate of the surface field (batched: every array gains leading axes).

    Attributes:
      R: `[N, N]` Hermitian, trace N (0 for an all-zero input).
      factor: `[N, q]` with `factor @ factor^H == R`: q = L for `sample`, `matched_filter` and
        `ridge_ls` (scaled snapshots), q = min(rank, L) for `als`.
    """

    R: jax.Array
    factor: jax.Array | None


class AlsFit(NamedTuple):
    """The fitted ALS model `y_l ~= G_l F z_l` of one scene (batched: leading axes added).

    Attributes:
      F: `[N, r]` factor, in the units of the inputs (`G_l F z_l` approximates `y_l`).
      z: `[L, r]` coefficients, row l is `z_l`.
      objective: `[2 * n_iter]` penalised objective
        `(sum_l ||y_l - G_l F z_l||^2 + mu (||F||^2 + sum_l ||z_l||^2)) / sum_l ||y_l||^2`
        of the normalised problem, after each half-step (z-step, F-step, z-step, ...). Every
        half-step minimises it exactly over one block, so it never increases (to rounding).
      residual: `[2 * n_iter]` relative data misfit `sum_l ||y_l - G_l F z_l||^2 / sum_l ||y_l||^2`
        after each half-step (a diagnostic: with a ridge it need not be monotone).
    """

    F: jax.Array
    z: jax.Array
    objective: jax.Array
    residual: jax.Array


# ------------------------------------------------------------------------------------------
# Small numerical helpers (one scene, trailing axes)
# ------------------------------------------------------------------------------------------


def _max_abs(x):
    """`max |x|` with no gradient (only ever a pre-scale that cancels exactly), 1 if x == 0."""
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(x)))
    return jnp.where(m > 0, m, jnp.ones_like(m))


def _safe_sqrt(v):
    """sqrt(v) for v > 0, 1 otherwise (value and gradient both finite)."""
    ok = v > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, v, jnp.ones_like(v))), jnp.ones_like(v))


def _rms(x):
    """Root-mean-square of the entries of `x` without overflow/underflow; 1 for an all-zero x."""
    m = _max_abs(x)
    return m * _safe_sqrt(jnp.mean(abs2(x / m)))


def _chol_solve(a, b):
    """Solve `a x = b` for Hermitian positive-definite `a` `[..., n, n]`, `b` `[..., n, k]`."""
    c = jnp.linalg.cholesky(hermitise(a))
    w = jax.lax.linalg.triangular_solve(c, b, left_side=True, lower=True)
    return jax.lax.linalg.triangular_solve(
        c, w, left_side=True, lower=True, transpose_a=True, conjugate_a=True
    )


def _from_factor(x, precision):
    """`CovEstimate` from a factor `x` `[N, q]`: scale so that tr(x x^H) = N, R = x x^H."""
    n = x.shape[0]
    real = real_dtype(x)
    x = x / _max_abs(x)  # exact pre-scale: the trace normalisation below cancels it
    energy = jnp.sum(abs2(x))
    ok = energy > 0
    scale = jnp.where(ok, jnp.sqrt(jnp.asarray(n, real) / jnp.where(ok, energy, 1)), 0)
    x = x * scale.astype(x.dtype)
    r = hermitise(jnp.matmul(x, jnp.conj(x).T, precision=precision))
    return CovEstimate(R=r, factor=x)


def _normalise_scene(y, h, codes):
    """Rescale to `rms(y) = 1` and a unit-gain channel, `mean_l tr(G_l G_l^H) / M = 1`.

    Returns (y, h, codes, y_scale, g_scale) with the originals equal to
    `y * y_scale` and `G_l * g_scale`. In full-array mode `G_l = I` already has unit gain.
    """
    real = real_dtype(y)
    y_scale = _rms(y)
    y = y / y_scale
    if h is None:
        return y, None, None, y_scale, jnp.ones((), real)
    mh, mc = _max_abs(h), _max_abs(codes)
    h, codes = h / mh, codes / mc
    l, m = y.shape
    # tr(G_l G_l^H) = sum_n |c_ln|^2 sum_m |H_mn|^2
    gain2 = jnp.sum(jnp.sum(abs2(codes), axis=0) * jnp.sum(abs2(h), axis=0)) / (l * m)
    g = _safe_sqrt(gain2)
    return y, h / g, codes, y_scale, mh * mc * g


def adjoint_apply(w, h, codes, precision=_HI):
    """The back-projection `G_l^H w_l` for every l: `[L, M] -> [L, N]` (identity in full-array
    mode, `h` None); `G_l = H diag(c_l)`."""
    if h is None:
        return w
    return jnp.conj(codes) * jnp.matmul(w, jnp.conj(h), precision=precision)


def _forward_apply(x, h, codes, precision):
    """`G_l x_l` for every l: `[L, N] -> [L, M]` (identity in full-array mode)."""
    if h is None:
        return x
    return jnp.matmul(codes * x, h.T, precision=precision)


def _cast(dtype, *arrays):
    return tuple(None if a is None else jnp.asarray(a).astype(dtype) for a in arrays)


def _common_dtype(y, h, codes):
    arrays = [a for a in (y, h, codes) if a is not None]
    return jnp.result_type(*arrays)


# ------------------------------------------------------------------------------------------
# Host-side validation
# ------------------------------------------------------------------------------------------


def _validate_scene(y, h, codes, *, batched: bool = False) -> None:
    """Shape, dtype and value checks of one scene (or a batch `[S, ...]`)."""
    lead = 1 if batched else 0
    check_complex("y", _dtype_of(y))
    check_ndim("y", y, 2 + lead)
    check_shape("y", y, (None,) * (2 + lead))
    check_finite("y", y)
    if (h is None) != (codes is None):
        missing = "codes" if codes is None else "H"
        raise ValueError(
            f"{missing}: H and codes go together (both given in RIS mode, both None in "
            f"full-array mode); got {missing}=None"
        )
    if h is None:
        return
    l, m = np.shape(y)[-2:]
    s = (np.shape(y)[0],) if batched else ()
    check_complex("H", _dtype_of(h))
    check_ndim("H", h, (2, 3) if batched else 2)
    if np.ndim(h) == 3:
        check_shape("H", h, s + (m, None))
    else:
        check_shape("H", h, (m, None))
    check_finite("H", h)
    n = np.shape(h)[-1]
    check_complex("codes", _dtype_of(codes))
    check_ndim("codes", codes, (2, 3) if batched else 2)
    if np.ndim(codes) == 3:
        check_shape("codes", codes, s + (l, n))
    else:
        check_shape("codes", codes, (l, n))
    check_finite("codes", codes)


def _validate_lam(lam, *, strict: bool) -> None:
    if not is_concrete(lam):
        return
    a = np.asarray(lam)
    if a.ndim != 0 or not np.isfinite(a) or (a <= 0 if strict else a < 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"lam: must be a finite scalar {bound}, got {lam!r}")


def _validate_als_args(rank, n_iter, f_solver, n: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= n:
        raise ValueError(f"rank: must be an integer in [1, N={n}], got {rank!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise ValueError(f"n_iter: must be an integer >= 1, got {n_iter!r}")
    if f_solver not in ("auto", "primal", "dual"):
        raise ValueError(f"f_solver: expected 'auto', 'primal' or 'dual', got {f_solver!r}")


def _dtype_of(x):
    """dtype of an array, tracer or array-like (np.result_type on a jax array is deprecated)."""
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _n_elements(y, h) -> int:
    return int(np.shape(y)[-1] if h is None else np.shape(h)[-1])


# ------------------------------------------------------------------------------------------
# Public API: normalisation
# ------------------------------------------------------------------------------------------


@jax.jit
def unit_rms(y):
    """Scale each scene's measurements to unit root-mean-square, without overflow or underflow.

    Nothing in rismvdr depends on the units of `y` (every estimator, spectrum, F statistic and
    learned feature is scale-free), but float32 sums of `|y|^2` overflow above about 1e19 and
    underflow below about 1e-19: `rismvdr.localize` therefore hands every method `unit_rms(y)`.
    Direct callers of the kernels that square `y` (`rismvdr.physics.compressive`, the
    learned backbone) should do the same; the estimators here rescale internally.

    Args:
      y: `[..., L, M]` complex measurements (leading batch axes are scenes).

    Returns:
      (`[..., L, M]` `y / s`, `[...]` real scales `s`): `s` is the RMS of the scene's entries,
      computed after a max-abs pre-scale (no squared quantity of the original size), and 0 for
      an all-zero scene, which is returned unchanged (zeros).

    >>> import jax.numpy as jnp
    >>> y, s = unit_rms(jnp.full((1, 2, 3), 1e30 + 0j, jnp.complex64))
    >>> float(jnp.abs(y).max()), float(s[0]) == float(jnp.float32(1e30))
    (1.0, True)
    """
    y = jnp.asarray(y)
    m = jnp.max(jnp.abs(y), axis=(-2, -1))
    ok = m > 0
    m_safe = jnp.where(ok, m, 1).astype(m.dtype)
    x = y / m_safe[..., None, None].astype(y.dtype)
    rms = m_safe * jnp.sqrt(jnp.mean(abs2(x), axis=(-2, -1)))
    s = jnp.where(ok, rms, 0).astype(m.dtype)
    return x * (m_safe / jnp.where(ok, rms, 1))[..., None, None].astype(y.dtype), s


def trace_normalize(R, target=None):
    """Hermitise `R` and scale it to trace `target`.

    Args:
      R: `[..., N, N]` square matrices.
      target: desired trace (default N).

    Returns:
      `[..., N, N]` `(R + R^H) / 2` scaled so that its (real) trace is `target`. A matrix
      whose trace is zero (or too small to divide by) is only Hermitised.

    >>> import jax.numpy as jnp
    >>> float(jnp.trace(trace_normalize(2.0 * jnp.eye(3, dtype=jnp.complex64))).real)
    3.0
    """
    R = jnp.asarray(R)
    n = R.shape[-1]
    real = jnp.finfo(R.dtype).dtype if jnp.issubdtype(R.dtype, jnp.inexact) else jnp.float32
    target = jnp.asarray(n if target is None else target, real)
    R = hermitise(R)
    tr = jnp.real(jnp.trace(R, axis1=-2, axis2=-1))
    ok = jnp.abs(tr) > jnp.abs(target) * jnp.finfo(real).tiny
    scale = jnp.where(ok, target / jnp.where(ok, tr, 1), 1).astype(R.dtype)
    return R * scale[..., None, None]


# ------------------------------------------------------------------------------------------
# Cores (no validation; one scene)
# ------------------------------------------------------------------------------------------


def _sample_core(y, precision):
    y, *_ = _normalise_scene(y, None, None)
    l = y.shape[0]
    return _from_factor(y.T / jnp.sqrt(jnp.asarray(l, real_dtype(y))), precision)


def _matched_filter_core(y, h, codes, precision):
    y, h, codes, _, _ = _normalise_scene(y, h, codes)
    xhat = adjoint_apply(y, h, codes, precision)  # [L, N]
    l = y.shape[0]
    return _from_factor(xhat.T / jnp.sqrt(jnp.asarray(l, real_dtype(y))), precision)


def _ridge_ls_core(y, h, codes, lam, precision):
    y, h, codes, _, _ = _normalise_scene(y, h, codes)
    real = real_dtype(y)
    l, m = y.shape
    lam = jnp.asarray(lam, real)
    if h is None:  # G_l = I: xhat_l = y_l / (1 + lam)
        xhat = y / (1 + lam).astype(y.dtype)
    else:
        # G_l G_l^H = H diag(|c_l|^2) H^H, formed per snapshot (no unit-modulus assumption).
        ggh = jnp.einsum(
            "mn,ln,kn->lmk", h, abs2(codes).astype(h.dtype), jnp.conj(h), precision=precision
        )  # [L, M, M]
        mu = lam * jnp.real(jnp.trace(ggh, axis1=-2, axis2=-1)) / m  # [L], relative ridge
        a = ggh + mu[:, None, None].astype(h.dtype) * jnp.eye(m, dtype=h.dtype)[None, :, :]
        w = _chol_solve(a, y[:, :, None])[:, :, 0]  # (G_l G_l^H + mu_l I)^-1 y_l
        xhat = adjoint_apply(w, h, codes, precision)
    return _from_factor(xhat.T / jnp.sqrt(jnp.asarray(l, real)), precision)


def _als_init(y, h, codes, rank, precision):
    """Top-`rank` eigenvectors of the matched-filter covariance `[N, rank]`, orthonormal.

    Computed from the `[L, L]` Gram matrix of the matched-filter snapshots (cheap, batches well
    on accelerators). Columns beyond the numerical rank (at most L) are zero; they stay zero
    through ALS, so the fit then has lower rank. No gradient flows through the
    initialisation (eigenvector derivatives are undefined for repeated eigenvalues).
    """
    x = jax.lax.stop_gradient(adjoint_apply(y, h, codes, precision)).T  # [N, L]
    l = x.shape[1]
    k = min(rank, l)
    gram = hermitise(jnp.matmul(jnp.conj(x).T, x, precision=precision))  # [L, L]
    w, v = jnp.linalg.eigh(gram)  # ascending
    w, v = w[::-1][:k], v[:, ::-1][:, :k]
    keep = w > jnp.finfo(w.dtype).eps * l * jnp.maximum(w[0], jnp.finfo(w.dtype).tiny)
    inv = jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, w, 1)), 0)
    u = jnp.matmul(x, v, precision=precision) * inv.astype(x.dtype)[None, :]
    if k < rank:
        u = jnp.concatenate([u, jnp.zeros((u.shape[0], rank - k), u.dtype)], axis=1)
    return u


def _als_core(y, h, codes, lam, rank, n_iter, f_solver, precision) -> AlsFit:
    y, h, codes, y_scale, g_scale = _normalise_scene(y, h, codes)
    real = real_dtype(y)
    cdt = y.dtype
    l, m = y.shape
    n = _n_elements(y, h)
    mu = jnp.asarray(lam, real)
    energy = jnp.sum(abs2(y))
    energy = jnp.where(energy > 0, energy, 1)
    eye_r = jnp.eye(rank, dtype=y.dtype)
    if h is None:
        solver = "full"
    elif f_solver == "auto":
        solver = "dual" if l * m <= n * rank else "primal"
    else:
        solver = f_solver

    if solver == "dual":
        # K[(l,m),(l',m')] = (z_l . conj z_l') (G_l G_l'^H)[m, m']; G G^H does not change.
        ggh = jnp.einsum(
            "mn,ln,kn,pn->lmpk", h, codes, jnp.conj(h), jnp.conj(codes), precision=precision
        )  # [L, M, L, M]
    elif solver == "primal":
        hh = jnp.matmul(jnp.conj(h).T, h, precision=precision)  # [N, N]
        xmf = adjoint_apply(y, h, codes, precision)  # [L, N] = G_l^H y_l

    def z_step(f):
        if h is None:
            a = jnp.matmul(jnp.conj(f).T, f, precision=precision) + mu.astype(cdt) * eye_r
            rhs = jnp.matmul(jnp.conj(f).T, y.T, precision=precision)  # [r, L]
            return _chol_solve(a, rhs).T
        b = jnp.einsum("mn,ln,na->lma", h, codes, f, precision=precision)  # B_l = G_l F
        a = jnp.einsum("lma,lmb->lab", jnp.conj(b), b, precision=precision)
        a = a + mu.astype(cdt) * eye_r[None, :, :]
        rhs = jnp.einsum("lma,lm->la", jnp.conj(b), y, precision=precision)
        return _chol_solve(a, rhs[:, :, None])[:, :, 0]

    def f_step(z):
        if solver == "full":
            # F (Z^T conj Z + mu I) = Y^T conj Z  <=>  F^H = A^-1 Z^T conj Y
            a = jnp.matmul(z.T, jnp.conj(z), precision=precision) + mu.astype(cdt) * eye_r
            fh = _chol_solve(a, jnp.matmul(z.T, jnp.conj(y), precision=precision))
            return jnp.conj(fh).T
        if solver == "dual":
            # vec F = A^H (A A^H + mu I)^-1 y, rows of A are (z_l^T kron G_l): an [LM, LM] solve.
            zz = jnp.matmul(z, jnp.conj(z).T, precision=precision)  # [L, L]
            k = (zz[:, None, :, None] * ggh).reshape(l * m, l * m)
            k = k + mu.astype(cdt) * jnp.eye(l * m, dtype=y.dtype)
            w = _chol_solve(k, y.reshape(l * m, 1)).reshape(l, m)
            xw = adjoint_apply(w, h, codes, precision)  # [L, N] = G_l^H w_l
            return jnp.matmul(xw.T, jnp.conj(z), precision=precision)
        # primal: sum_l kron(conj z_l z_l^T, G_l^H G_l) + mu I, an [rN, rN] solve.
        u = z[:, :, None] * codes[:, None, :]  # [L, r, N], u[l,a,n] = z_la c_ln
        wgt = jnp.einsum("lan,lbk->anbk", jnp.conj(u), u, precision=precision)
        normal = (wgt * hh[None, :, None, :]).reshape(rank * n, rank * n)
        normal = normal + mu.astype(cdt) * jnp.eye(rank * n, dtype=y.dtype)
        rhs = jnp.matmul(jnp.conj(z).T, xmf, precision=precision)  # [r, N]
        vec = _chol_solve(normal, rhs.reshape(rank * n, 1))
        return vec.reshape(rank, n).T

    def measure(f, z):
        pred = _forward_apply(jnp.matmul(z, f.T, precision=precision), h, codes, precision)
        misfit = jnp.sum(abs2(y - pred))
        penalty = mu * (jnp.sum(abs2(f)) + jnp.sum(abs2(z)))
        return (misfit + penalty) / energy, misfit / energy

    def step(carry, _):
        f, _z = carry
        z = z_step(f)
        obj1, res1 = measure(f, z)
        f = f_step(z)
        obj2, res2 = measure(f, z)
        return (f, z), (jnp.stack([obj1, obj2]), jnp.stack([res1, res2]))

    f0 = _als_init(y, h, codes, rank, precision)
    z0 = jnp.zeros((l, rank), cdt)
    (f, z), (obj, res) = jax.lax.scan(step, (f0, z0), None, length=n_iter)
    # back to the input units: y ~= G F z  with  y = y_n * y_scale,  G = G_n * g_scale
    t = jnp.sqrt(y_scale / g_scale).astype(cdt)
    return AlsFit(F=f * t, z=z * t, objective=obj.reshape(-1), residual=res.reshape(-1))


def _als_estimate(fit: AlsFit, precision) -> CovEstimate:
    """`R = F C F^H`, `C = Z^T conj(Z) / L`, as `R = Fw Fw^H` with `Fw = F T^H` where
    `conj(Z) / sqrt(L) = Q T` (QR): `T^H T = C`, so `T^H` is the Cholesky factor of C, found
    without forming C. `Fw` has min(rank, L) columns."""
    f, z = fit.F, fit.z
    l = z.shape[0]
    # Rescale first: the estimate is scale-free and this keeps float32 sums in range.
    f, z = f / _max_abs(f), z / _max_abs(z)
    _, t = jnp.linalg.qr(jnp.conj(z) / jnp.sqrt(jnp.asarray(l, real_dtype(z))), mode="reduced")
    fw = jnp.matmul(f, jnp.conj(t).T, precision=precision)
    return _from_factor(fw, precision)


@functools.partial(jax.jit, static_argnames=("precision",))
def _sample_jit(y, *, precision):
    return _sample_core(y, precision)


@functools.partial(jax.jit, static_argnames=("precision",))
def _matched_filter_jit(y, h, codes, *, precision):
    return _matched_filter_core(y, h, codes, precision)


@functools.partial(jax.jit, static_argnames=("precision",))
def _ridge_ls_jit(y, h, codes, lam, *, precision):
    return _ridge_ls_core(y, h, codes, lam, precision)


@functools.partial(jax.jit, static_argnames=("rank", "n_iter", "f_solver", "precision"))
def _als_fit_jit(y, h, codes, lam, *, rank, n_iter, f_solver, precision):
    return _als_core(y, h, codes, lam, rank, n_iter, f_solver, precision)


@functools.partial(jax.jit, static_argnames=("rank", "n_iter", "f_solver", "precision"))
def _als_jit(y, h, codes, lam, *, rank, n_iter, f_solver, precision):
    fit = _als_core(y, h, codes, lam, rank, n_iter, f_solver, precision)
    return _als_estimate(fit, precision)


# ------------------------------------------------------------------------------------------
# Public API: one scene
# ------------------------------------------------------------------------------------------


def sample_covariance(y, *, precision=_HI) -> CovEstimate:
    """Sample covariance of full-array snapshots, `R = (1/L) sum_l y_l y_l^H`, trace N.

    Args:
      y: `[L, N]` complex snapshots of the surface field (full-array mode).
      precision: matmul precision.

    Returns:
      `CovEstimate(R [N, N], factor [N, L])`, factor = scaled `y^T / sqrt(L)`.

    Raises:
      ValueError: `y` not complex, not 2-D, empty, or with a non-finite entry.

    >>> import jax.numpy as jnp
    >>> est = sample_covariance(jnp.ones((4, 3), jnp.complex64))
    >>> est.R.shape, est.factor.shape
    ((3, 3), (3, 4))
    """
    _validate_scene(y, None, None)
    (y,) = _cast(jnp.result_type(y), y)
    return _sample_jit(y, precision=precision)


def matched_filter_covariance(y, H=None, codes=None, *, precision=_HI) -> CovEstimate:
    """Matched-filter covariance: `xhat_l = G_l^H y_l`, `R = (1/L) sum_l xhat_l xhat_l^H`.

    Args:
      y: `[L, M]` complex measurements.
      H: `[M, N]` complex channel (None in full-array mode).
      codes: `[L, N]` complex RIS codes (None in full-array mode).
      precision: matmul precision.

    Returns:
      `CovEstimate(R [N, N], factor [N, L])`, trace N, factor = scaled `xhat^T / sqrt(L)`.

    Raises:
      ValueError: a non-complex, mis-shaped, empty or non-finite input, or only one of
        `H`/`codes` given; the message starts with the argument's name.
    """
    _validate_scene(y, H, codes)
    y, H, codes = _cast(_common_dtype(y, H, codes), y, H, codes)
    return _matched_filter_jit(y, H, codes, precision=precision)


def ridge_ls_covariance(y, H=None, codes=None, *, lam=1e-2, precision=_HI) -> CovEstimate:
    """Ridge least-squares covariance: `xhat_l = G_l^H (G_l G_l^H + mu_l I_M)^-1 y_l`.

    The ridge is relative: `mu_l = lam * tr(G_l G_l^H) / M` (for unit-modulus codes this is
    `lam * ||H||_F^2 / M`, the same for every snapshot), so the estimate does not depend on the
    scale of `H`. Solved with a Cholesky factorisation per snapshot (`[M, M]`), no inverse.
    In full-array mode `xhat_l = y_l / (1 + lam)`, i.e. the sample covariance.

    Args:
      y: `[L, M]` complex measurements.
      H: `[M, N]` complex channel (None in full-array mode).
      codes: `[L, N]` complex RIS codes (None in full-array mode).
      lam: relative ridge, >= 0 (seed: 1e-2). lam = 0 is the minimum-norm solution and needs
        `G_l G_l^H` nonsingular.
      precision: matmul precision.

    Returns:
      `CovEstimate(R [N, N], factor [N, L])`, trace N.

    Raises:
      ValueError: bad inputs (see `matched_filter_covariance`) or `lam` negative/non-finite.
    """
    _validate_scene(y, H, codes)
    _validate_lam(lam, strict=False)
    y, H, codes = _cast(_common_dtype(y, H, codes), y, H, codes)
    return _ridge_ls_jit(y, H, codes, lam, precision=precision)


def als_fit(
    y, H=None, codes=None, *, rank: int = 5, n_iter: int = 4, lam=1e-2,
    f_solver: FSolver = "auto", precision=_HI,
) -> AlsFit:
    """Rank-`rank` alternating-least-squares fit `y_l ~= G_l F z_l` of one scene.

    Minimises, over `F` `[N, r]` and `z_l` `[r]`, on data rescaled to `rms(y) = 1` and a
    unit-gain channel (`mean_l tr(G_l G_l^H) = M`):

        J = sum_l ||y_l - G_l F z_l||^2 + lam (||F||_F^2 + sum_l ||z_l||^2).

    `lam` is therefore relative (on the original data the ridge is
    `lam * rms(y) * sqrt(mean_l tr(G_l G_l^H) / M)`), the same weight on both blocks (which
    fixes the scale ambiguity `F D, D^-1 z`), and the fit is invariant to the scales of y and H.
    Each iteration is a z-step (for every l, ridge LS of `y_l` on `B_l = G_l F` `[M, r]`) then an
    F-step (ridge LS for vec F: the rows of the stacked system are `z_l^T kron G_l`, normal
    matrix `sum_l kron(conj(z_l) z_l^T, G_l^H G_l)` `[N r, N r]`). The F-step is solved in the
    `primal` form (`[N r, N r]` Cholesky) or the equivalent `dual` form (push-through identity,
    `[L M, L M]` Cholesky); `auto` picks the smaller. Full-array mode solves `[r, r]` systems.
    A fixed number of iterations runs in `jax.lax.scan`, so gradients pass through.

    Initialisation (deterministic): `F_0` = the top-`rank` eigenvectors of the matched-filter
    covariance (from the `[L, L]` Gram matrix of the snapshots `G_l^H y_l`); no gradient flows
    through it. If `rank > L`, the extra columns start (and stay) at zero.

    Args:
      y: `[L, M]` complex measurements.
      H: `[M, N]` complex channel (None in full-array mode).
      codes: `[L, N]` complex RIS codes (None in full-array mode).
      rank: r, 1 <= r <= N (seed: 5).
      n_iter: number of (z-step, F-step) iterations, >= 1 (seed: 4).
      lam: relative ridge, > 0 (seed: 1e-2).
      f_solver: `auto`, `primal` or `dual` (same result; a speed knob).
      precision: matmul precision.

    Returns:
      `AlsFit(F [N, r], z [L, r], objective [2 n_iter], residual [2 n_iter])`.

    Raises:
      ValueError: bad inputs (see `matched_filter_covariance`), `rank`, `n_iter`, `lam` or
        `f_solver` out of range.
    """
    _validate_scene(y, H, codes)
    _validate_lam(lam, strict=True)
    _validate_als_args(rank, n_iter, f_solver, _n_elements(y, H))
    y, H, codes = _cast(_common_dtype(y, H, codes), y, H, codes)
    return _als_fit_jit(
        y, H, codes, lam, rank=int(rank), n_iter=int(n_iter), f_solver=f_solver, precision=precision
    )


def als_covariance(
    y, H=None, codes=None, *, rank: int = 5, n_iter: int = 4, lam=1e-2,
    f_solver: FSolver = "auto", precision=_HI,
) -> CovEstimate:
    """The seed's `als_lowrank` R_samp: `R = F (sum_l z_l z_l^H / L) F^H`, trace N.

    See `als_fit` for the model, the relative ridge and the initialisation. The factor form is
    `Fw = F T^H` `[N, min(rank, L)]` where `T^H T = sum_l z_l z_l^H / L` (from a QR of the
    coefficients, i.e. the Cholesky factor of the coefficient covariance), scaled with the
    trace normalisation, so `R = Fw Fw^H` for a low-rank (Woodbury) MVDR.

    Args:
      y: `[L, M]` complex measurements.
      H: `[M, N]` complex channel (None in full-array mode).
      codes: `[L, N]` complex RIS codes (None in full-array mode).
      rank: r, 1 <= r <= N (seed: 5).
      n_iter: iterations, >= 1 (seed: 4).
      lam: relative ridge, > 0 (seed: 1e-2).
      f_solver: `auto`, `primal` or `dual`.
      precision: matmul precision.

    Returns:
      `CovEstimate(R [N, N], factor [N, min(rank, L)])`.

    Raises:
      ValueError: as `als_fit`.
    """
    _validate_scene(y, H, codes)
    _validate_lam(lam, strict=True)
    _validate_als_args(rank, n_iter, f_solver, _n_elements(y, H))
    y, H, codes = _cast(_common_dtype(y, H, codes), y, H, codes)
    return _als_jit(
        y, H, codes, lam, rank=int(rank), n_iter=int(n_iter), f_solver=f_solver, precision=precision
    )


# ------------------------------------------------------------------------------------------
# Public API: a batch of scenes
# ------------------------------------------------------------------------------------------

_METHOD_KWARGS = {
    "sample": {"precision"},
    "matched_filter": {"precision"},
    "ridge_ls": {"lam", "precision"},
    "als": {"rank", "n_iter", "lam", "f_solver", "precision"},
}


@functools.partial(
    jax.jit, static_argnames=("method", "rank", "n_iter", "f_solver", "precision")
)
def batched_covariance(y, h, codes, lam, *, method, rank, n_iter, f_solver, precision) -> CovEstimate:
    """`estimate_covariance` without its host-side checks, for traced use inside a jitted caller
    (e.g. a model's R_samp input): every argument given, `method` already canonical.

    Args:
      y: `[S, L, M]`; h: `[S, M, N]`, shared `[M, N]` or None; codes: `[S, L, N]`, `[L, N]` or None.
      lam: ridge of `ridge_ls`/`als`; method: one of `COVARIANCE_METHODS`; rank, n_iter,
        f_solver: ALS settings; precision: matmul precision.

    Returns:
      `CovEstimate(R [S, N, N], factor [S, N, q])`.
    """
    def one(y1, h1, c1):
        if method == "sample":
            return _sample_core(y1, precision)
        if method == "matched_filter":
            return _matched_filter_core(y1, h1, c1, precision)
        if method == "ridge_ls":
            return _ridge_ls_core(y1, h1, c1, lam, precision)
        fit = _als_core(y1, h1, c1, lam, rank, n_iter, f_solver, precision)
        return _als_estimate(fit, precision)

    h_axis = None if h is None or h.ndim == 2 else 0
    c_axis = None if codes is None or codes.ndim == 2 else 0
    return jax.vmap(one, in_axes=(0, h_axis, c_axis))(y, h, codes)


def estimate_covariance(method: str, y, H=None, codes=None, **kwargs) -> CovEstimate:
    """Covariance estimates of a batch of scenes: validated once, then one jitted `vmap`.

    Args:
      method: `sample`, `matched_filter`, `ridge_ls` or `als` (alias `als_lowrank`).
      y: `[S, L, M]` complex measurements.
      H: `[S, M, N]` or shared `[M, N]` complex channel (None in full-array mode).
      codes: `[S, L, N]` or shared `[L, N]` complex RIS codes (None in full-array mode).
      **kwargs: the method's keyword arguments (`lam`, `rank`, `n_iter`, `f_solver`,
        `precision`), defaults as in the single-scene functions.

    Returns:
      `CovEstimate(R [S, N, N], factor [S, N, q])`.

    Raises:
      ValueError: unknown `method`, bad inputs (message starts with the argument's name),
        `sample` given `H`/`codes`, or a keyword value out of range.
      TypeError: a keyword the method does not take.
    """
    name = _ALIASES.get(method, method)
    if name not in COVARIANCE_METHODS:
        raise ValueError(f"method: expected one of {COVARIANCE_METHODS}, got {method!r}")
    unknown = set(kwargs) - _METHOD_KWARGS[name]
    if unknown:
        raise TypeError(f"estimate_covariance: method {name!r} takes no {sorted(unknown)}")
    if name == "sample" and (H is not None or codes is not None):
        raise ValueError("H: method 'sample' is for full-array mode (H=None, codes=None)")
    _validate_scene(y, H, codes, batched=True)
    lam = kwargs.get("lam", 1e-2)
    rank, n_iter = kwargs.get("rank", 5), kwargs.get("n_iter", 4)
    f_solver, precision = kwargs.get("f_solver", "auto"), kwargs.get("precision", _HI)
    if name == "ridge_ls":
        _validate_lam(lam, strict=False)
    if name == "als":
        _validate_lam(lam, strict=True)
        _validate_als_args(rank, n_iter, f_solver, _n_elements(y, H))
    y, H, codes = _cast(_common_dtype(y, H, codes), y, H, codes)
    return batched_covariance(
        y, H, codes, lam, method=name, rank=int(rank), n_iter=int(n_iter),
        f_solver=f_solver, precision=precision,
    )
