"""Deterministic (conditional) Cramer-Rao bound of source positions (conventions sections 3 and 7).

Model (conventions section 3), snapshot `l = 1..L`:

    y_l = G_l A(eta) s_l + n_l,    n_l ~ CN(0, sigma^2 I_M),

with `G_l = H diag(c_l)` (RIS mode, H `[M, N]` and codes `c_l` known) or `G_l = I_N`
(full-array mode, M = N). `A = [a(eta_1) .. a(eta_K)]` uses the shared `steering` function.
H, the codes and sigma^2 are known; the symbols `s_{k,l}` are unknown *deterministic*
nuisance parameters (the "conditional" or "deterministic" model of Stoica & Nehorai, 1989).

Fisher information. The real parameter vector is `(eta, Re s, Im s)`; eta holds, per source,
the parameters named in `params` (default: `phi, theta, r`; `phi, r` for a linear geometry,
whose theta is known and held at the given value; angles only for the `far` model, which has
no range information). For a circular Gaussian with mean `mu_l = G_l A s_l`,
`J_ij = (2 / sigma^2) Re sum_l (d mu_l / d alpha_i)^H (d mu_l / d alpha_j)`.
With `B_l = G_l A` (`[M, K]`, the derivative of `mu_l` w.r.t. `Re s_l`; `1j B_l` for `Im s_l`)
and `D_l = d mu_l / d eta = G_l (dA/d eta) s_l` (`[M, P]`, column `(i, k)` is
`G_l (d a_k / d eta_{i,k}) s_{k,l}`), the Schur complement of the (block-diagonal over l)
symbol block is the concentrated Fisher matrix

    F_eta = (2 / sigma^2) Re sum_l D_l^H P_perp(B_l) D_l,
    P_perp(B) = I - B (B^H B)^-1 B^H,

(the real span of `{B_l, 1j B_l}` is the complex column span of `B_l`, so projecting the
stacked real derivatives is the complex projection). `CRB(eta) = F_eta^-1` bounds the
covariance of any unbiased estimator of eta when s is unknown.

Since `P_perp(B_l)` does not depend on the symbols, `D_l^H P_perp D_l` is
`(Q_l^H Q_l) .* (conj(s~_l) s~_l^T)` with `Q_l = P_perp(B_l) G_l dA/deta` (symbols of each
column's source `s~_l`): F_eta is *linear* in the outer products `s_l s_l^H`. Two versions:

- exact (`crb`, `crb_std`): the realised symbols `[L, K]` enter as they are.
- asymptotic/expected-power (`crb_expected`, `crb_expected_std`, `crb_scenes`): each
  `s_l s_l^H` is replaced by its expectation `diag(p)` (so `sum_l s_l s_l^H -> L diag(p)`),
  which is the expected concentrated Fisher matrix `E_s[F_eta]` for `s_{k,l} ~ CN(0, p_k)`.
  Its inverse is the commonly reported bound; since the inverse is convex it is a lower bound
  of `E_s[CRB]` (Jensen), and exact and expected agree as L grows. This is the version that
  can be computed from a `Scene`, which keeps the true powers but not the realised symbols.

Numerics: `dA/deta` comes from `jax.jacfwd` of `steering` (no hand-written derivatives).
`P_perp(B_l) X` is the residual of a least-squares fit of X on B_l: Cholesky of
`B_l^H B_l`, one step of iterative refinement, `X - B_l C` (no M x M projector, no explicit
inverse). F_eta (P x P, small) is symmetrically equilibrated by its diagonal and inverted with
a Cholesky solve. Compute in float64 (`jax_enable_x64`) for reference-grade bounds; float32
inputs are computed in float32.

Singular Fisher matrix: when the equilibrated F_eta is numerically singular (reciprocal
condition number `<= P * eps`, a non-positive diagonal entry, or a failed Cholesky), e.g.
two coincident sources, a zero-power source or too few measurements, the parameters are not
(locally) identifiable and the bound is infinite: the CRB of the real sources then has `+inf`
on its diagonal and NaN off it (so `crb_std` gives `inf`). No exception is raised (it jits).

Padding: a `mask` `[K]` (False for padding, as in `Scene.mask`) keeps shapes fixed for jit
and vmap. A padded source's column of `B_l` is set to zero (it is not part of the model; its
Gram diagonal gets a 1 so the Cholesky stays valid), and its rows/columns of F_eta are replaced
by the identity, decoupling them; its CRB rows/columns and standard deviations are NaN.

Parameter layout: `eta` is parameter-major, `[phi_1..phi_K, theta_1..theta_K, r_1..r_K]`,
keeping only the parameters in `params` (always in the order phi, theta, r): P = 3K, or 2K
for a linear geometry / the far model on a planar array, or K for the far model on a
linear array. Units: radians and metres (CRB in rad^2, m^2, rad m).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.physics._validation import (
    check_finite,
    check_ndim,
    check_positive,
    check_shape,
    is_concrete,
)
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.steering import STEERING_MODELS, steering

__all__ = [
    "CRB_PARAMS",
    "CRBStd",
    "default_params",
    "crb",
    "crb_std",
    "crb_expected",
    "crb_expected_std",
    "crb_scenes",
]

_HI = jax.lax.Precision.HIGHEST
CRB_PARAMS = ("phi", "theta", "r")


class CRBStd(NamedTuple):
    """Square roots of the CRB diagonal, one entry per source (`[..., K]` each).

    Attributes:
      phi: azimuth std bound, radians.
      theta: elevation std bound, radians; NaN where theta is not estimated (linear geometry:
        theta is known).
      r: range std bound, metres; NaN where r is not estimated (far model).
    Padded sources (mask False) are NaN; a non-identifiable scene gives `inf`.
    """

    phi: jax.Array
    theta: jax.Array
    r: jax.Array


def default_params(geometry: ArrayGeometry, model: str = "exact") -> tuple[str, ...]:
    """The parameters the CRB is computed for by default.

    `(phi, theta, r)`; without `theta` for a linear geometry (elevation is known, conventions
    section 1); without `r` for the `far` model (a plane wave carries no range information).
    """
    if model not in STEERING_MODELS:
        raise ValueError(f"model: expected one of {STEERING_MODELS}, got {model!r}")
    out = ["phi"]
    if not geometry.linear:
        out.append("theta")
    if model != "far":
        out.append("r")
    return tuple(out)


def _resolve_params(geometry: ArrayGeometry, model: str, params) -> tuple[str, ...]:
    if model not in STEERING_MODELS:
        raise ValueError(f"model: expected one of {STEERING_MODELS}, got {model!r}")
    if params is None:
        return default_params(geometry, model)
    if isinstance(params, str):
        params = (params,)
    params = tuple(params)
    unknown = [p for p in params if p not in CRB_PARAMS]
    if unknown or not params or len(set(params)) != len(params):
        raise ValueError(
            f"params: expected distinct names from {CRB_PARAMS}, at least one, got {params!r}"
        )
    if geometry.linear and "theta" in params:
        raise ValueError("params: a linear geometry cannot resolve elevation; drop 'theta'")
    if model == "far" and "r" in params:
        raise ValueError("params: the far model carries no range information; drop 'r'")
    return tuple(p for p in CRB_PARAMS if p in params)  # canonical order


# ----------------------------------------------------------------------------- kernels ----


def _steering_jacobian(geometry, phi, theta, r, *, model, params):
    """`A^T` `[K, N]` and `dA/deta` as `[N, P]` (parameter-major columns), via jacfwd."""
    idx = [CRB_PARAMS.index(p) for p in params]

    def one(eta3):  # eta3 = (phi, theta, r) of one source -> (a, a), a [N]
        a = steering(geometry, eta3[0], eta3[1], eta3[2], model=model)
        return a, a

    eta = jnp.stack([phi, theta, r], axis=-1)  # [K, 3]
    jac, a = jax.vmap(jax.jacfwd(one, has_aux=True))(eta)  # [K, N, 3], [K, N]
    jac = jac[:, :, jnp.asarray(idx)]  # [K, N, p]
    n = a.shape[-1]
    dadeta = jnp.transpose(jac, (1, 2, 0)).reshape(n, -1)  # [N, p*K], column i*K + k
    return a, dadeta


def _project_out(b, x, mask):
    """`P_perp(b) x = x - b (b^H b)^-1 b^H x` for `b` `[M, K]` (padded columns zero), `x` `[M, P]`.

    Least-squares residual: Cholesky of the Gram matrix (with 1 on padded diagonals), one step of
    iterative refinement.
    """
    bh = jnp.conj(b.T)
    gram = jnp.matmul(bh, b, precision=_HI)
    gram = gram + jnp.diag((~mask).astype(gram.dtype))
    gram = 0.5 * (gram + jnp.conj(gram.T))
    chol = jax.scipy.linalg.cho_factor(gram, lower=True)
    coef = jax.scipy.linalg.cho_solve(chol, jnp.matmul(bh, x, precision=_HI))
    res = x - jnp.matmul(b, coef, precision=_HI)
    coef = jax.scipy.linalg.cho_solve(chol, jnp.matmul(bh, res, precision=_HI))
    return res - jnp.matmul(b, coef, precision=_HI)


def _fisher(geometry, phi, theta, r, noise_var, h, codes, mask, symbols, power, n_snapshots, *,
            model, params):
    """Concentrated Fisher matrix `[P, P]` of eta (unmasked; padded rows still present).

    Exactly one of `symbols` `[L, K]` (exact) or `power` `[K]` (expected power) is given.
    """
    n_p = len(params)
    a, dadeta = _steering_jacobian(geometry, phi, theta, r, model=model, params=params)
    b = (a * mask[:, None].astype(a.dtype)).T  # [N, K], padded columns zero
    if symbols is not None:
        s_cols = jnp.tile(symbols, (1, n_p))  # [L, P]: symbol of each column's source
    else:
        blocks = jnp.kron(jnp.ones((n_p, n_p), power.dtype), jnp.diag(power))  # [P, P]
    if h is None:  # full-array mode: G_l = I for all l, one projection
        q = _project_out(b, dadeta, mask)  # [N, P]
        gram = jnp.matmul(jnp.conj(q.T), q, precision=_HI)  # [P, P]
        if symbols is not None:
            weight = jnp.einsum("lp,lq->pq", jnp.conj(s_cols), s_cols, precision=_HI)
        else:
            weight = n_snapshots * blocks
        f = gram * weight
    else:  # RIS mode: G_l = H diag(c_l)
        gb = jnp.einsum("mn,ln,nk->lmk", h, codes, b, precision=_HI)  # [L, M, K]
        gd = jnp.einsum("mn,ln,np->lmp", h, codes, dadeta, precision=_HI)  # [L, M, P]
        q = jax.vmap(_project_out, in_axes=(0, 0, None))(gb, gd, mask)  # [L, M, P]
        if symbols is not None:
            qs = q * s_cols[:, None, :]
            f = jnp.einsum("lmp,lmq->pq", jnp.conj(qs), qs, precision=_HI)
        else:
            f = jnp.einsum("lmp,lmq->pq", jnp.conj(q), q, precision=_HI) * blocks
    fim = (2.0 / noise_var) * jnp.real(f)
    return 0.5 * (fim + fim.T)


def _invert_fisher(fim, valid):
    """CRB `[P, P]` from the Fisher matrix; padded entries NaN, singular -> inf diag / NaN."""
    real = fim.dtype
    both = valid[:, None] & valid[None, :]
    fim = jnp.where(both, fim, 0.0) + jnp.diag((~valid).astype(real))
    d = jnp.diagonal(fim)
    bad_diag = jnp.any(~(d > 0))
    scale = jnp.where(d > 0, 1.0 / jnp.sqrt(jnp.where(d > 0, d, 1.0)), 1.0)
    fn = fim * scale[:, None] * scale[None, :]
    fn = 0.5 * (fn + fn.T)
    lam = jnp.linalg.eigvalsh(fn)
    n_p = fim.shape[-1]
    eps = jnp.finfo(real).eps
    ill = (lam[0] <= n_p * eps * lam[-1]) | bad_diag
    chol = jax.scipy.linalg.cho_factor(jnp.where(ill, jnp.eye(n_p, dtype=real), fn), lower=True)
    inv = jax.scipy.linalg.cho_solve(chol, jnp.eye(n_p, dtype=real))
    inv = 0.5 * (inv + inv.T)
    ill = ill | ~jnp.all(jnp.isfinite(inv))
    out = inv * (scale[:, None] * scale[None, :])  # outer product exactly symmetric
    eye = jnp.eye(n_p, dtype=bool)
    singular = jnp.where(eye, jnp.inf, jnp.nan).astype(real)
    out = jnp.where(ill, singular, out)
    return jnp.where(both, out, jnp.nan)


@functools.partial(jax.jit, static_argnames=("model", "params"))
def _crb_core(geometry, phi, theta, r, noise_var, h, codes, mask, symbols, power, n_snapshots, *,
              model, params):
    fim = _fisher(geometry, phi, theta, r, noise_var, h, codes, mask, symbols, power, n_snapshots,
                  model=model, params=params)
    valid = jnp.tile(mask, (len(params),))
    return _invert_fisher(fim, valid)


def _std_from_matrix(c, n_sources: int, params) -> CRBStd:
    """Per-source std arrays `[..., K]` from CRB matrices `[..., P, P]` (parameter-major)."""
    diag = jnp.diagonal(c, axis1=-2, axis2=-1)
    std = jnp.sqrt(diag)  # NaN stays NaN, inf stays inf
    nan = jnp.full(c.shape[:-2] + (n_sources,), jnp.nan, c.dtype)
    out = {}
    for name in CRB_PARAMS:
        if name in params:
            i = params.index(name)
            out[name] = std[..., i * n_sources:(i + 1) * n_sources]
        else:
            out[name] = nan
    return CRBStd(**out)


# ---------------------------------------------------------------------- host validation ----


def _prepare(geometry, phi, theta, r, noise_var, h, codes, mask, extra_complex=(), extra_real=()):
    """Validate concrete inputs and cast everything to one real / complex dtype pair."""
    if not isinstance(geometry, ArrayGeometry):
        raise ValueError(f"geometry: expected an ArrayGeometry, got {type(geometry).__name__}")
    for name, v in (("phi", phi), ("theta", theta), ("r", r)):
        check_ndim(name, v, 1)
        check_finite(name, v)
    k = np.shape(phi)[0]
    if k < 1:
        raise ValueError("phi: expected at least one source, got shape [0]")
    check_shape("theta", theta, (k,))
    check_shape("r", r, (k,))
    check_positive("r", r)
    check_ndim("noise_var", noise_var, 0)
    check_positive("noise_var", noise_var)
    n = geometry.n_elements
    if (h is None) != (codes is None):
        raise ValueError("H, codes: give both (RIS mode) or neither (full-array mode)")
    if h is not None:
        check_ndim("H", h, 2)
        check_shape("H", h, (None, n))
        check_finite("H", h)
        check_ndim("codes", codes, 2)
        check_shape("codes", codes, (None, n))
        check_finite("codes", codes)
    if mask is None:
        mask = np.ones(k, bool)
    else:
        check_shape("mask", mask, (k,))
        if is_concrete(mask) and np.asarray(mask).dtype != np.bool_:
            raise ValueError(f"mask: expected a bool array, got {np.asarray(mask).dtype}")
    arrays = [jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(r), jnp.asarray(noise_var)]
    arrays += [jnp.asarray(x) for x in extra_real]
    cplx = [jnp.asarray(x) for x in extra_complex if x is not None]
    if h is not None:
        cplx += [jnp.asarray(h), jnp.asarray(codes)]
    dt = jnp.result_type(*arrays, *cplx, jnp.float32)
    real = jnp.finfo(dt).dtype
    cdt = jnp.result_type(real, jnp.complex64)
    cast_r = lambda x: jnp.asarray(x, real)  # noqa: E731
    cast_c = lambda x: None if x is None else jnp.asarray(x, cdt)  # noqa: E731
    return (
        geometry.astype(real), cast_r(phi), cast_r(theta), cast_r(r), cast_r(noise_var),
        cast_c(h), cast_c(codes), jnp.asarray(mask, bool), real, cast_c,
    )


# ---------------------------------------------------------------------------- public API ----


def crb(geometry: ArrayGeometry, phi, theta, r, symbols, noise_var, H=None, codes=None, *,
        model: str = "exact", params: Sequence[str] | None = None, mask=None) -> jax.Array:
    """Exact deterministic CRB of eta given the realised symbols.

    `F_eta = (2/sigma^2) Re sum_l D_l^H P_perp(G_l A) D_l`, `D_l = G_l (dA/deta) s_l`,
    `CRB = F_eta^-1` (see the module docstring for the derivation and edge cases).

    Args:
      geometry: array geometry, positions `[N, 3]` metres.
      phi, theta, r: `[K]` true azimuth, elevation (radians) and range (metres, > 0). For a
        linear geometry theta is known and held at the given value.
      symbols: `[L, K]` complex realised symbols `s_{k,l}` (snapshot-major, as the simulator).
      noise_var: scalar sigma^2 > 0 (linear).
      H: `[M, N]` complex channel (RIS mode) or None (full-array mode, `G_l = I_N`).
      codes: `[L, N]` complex RIS codes (RIS mode) or None.
      model: steering model, `exact` (default), `fresnel` or `far`.
      params: parameters bounded, a subset of `("phi", "theta", "r")` (the others are known);
        default `default_params(geometry, model)`: no theta for a linear geometry, no r for far.
      mask: optional `[K]` bool, False for padded sources.

    Returns:
      `[P, P]` CRB, parameter-major `[phi_1..phi_K, theta_1..theta_K, r_1..r_K]` restricted to
      `params` (rad^2, m^2, rad m). Padded entries NaN; a singular Fisher matrix gives `inf`
      on the diagonal and NaN off it.

    >>> import numpy as np
    >>> from rismvdr.physics import upa
    >>> g = upa(4, 4, 0.15, 0.15, wavelength=0.3)
    >>> s = np.ones((8, 1), np.complex64)
    >>> crb(g, np.array([0.2]), np.array([0.1]), np.array([1.5]), s, 0.1).shape
    (3, 3)

    Raises:
      ValueError: naming the argument: non-finite or mis-shaped inputs, `r <= 0`,
        `noise_var <= 0`, H without codes, unknown model or params.
    """
    params = _resolve_params(geometry, model, params)
    check_ndim("symbols", symbols, 2)
    check_finite("symbols", symbols)
    k = np.shape(phi)[0] if np.ndim(phi) == 1 else None
    check_shape("symbols", symbols, (None, k))
    if codes is not None:
        check_ndim("codes", codes, 2)
    if codes is not None and np.shape(codes)[0] != np.shape(symbols)[0]:
        raise ValueError(
            f"codes: expected one code per snapshot ({np.shape(symbols)[0]} from symbols), "
            f"got shape {list(np.shape(codes))}"
        )
    g, phi, theta, r, nv, h, codes, mask, real, cast_c = _prepare(
        geometry, phi, theta, r, noise_var, H, codes, mask, extra_complex=(symbols,)
    )
    return _crb_core(g, phi, theta, r, nv, h, codes, mask, cast_c(symbols), None, None,
                     model=model, params=params)


def crb_expected(geometry: ArrayGeometry, phi, theta, r, power, noise_var, H=None, codes=None, *,
                 n_snapshots: int | None = None, model: str = "exact",
                 params: Sequence[str] | None = None, mask=None) -> jax.Array:
    """Asymptotic/expected-power deterministic CRB: `s_l s_l^H -> diag(p)` in each snapshot.

    The concentrated Fisher matrix is linear in `s_l s_l^H`; replacing each by `diag(p)` gives
    `E_s[F_eta]` for `s_{k,l} ~ CN(0, p_k)` (`sum_l s_l s_l^H -> L diag(p)`). Same arguments and
    output as `crb`, with:

    Args:
      power: `[K]` source powers `p_k >= 0` (linear).
      n_snapshots: L. Required in full-array mode; in RIS mode it is `codes.shape[0]` (if given
        it must agree).
    """
    params = _resolve_params(geometry, model, params)
    check_ndim("power", power, 1)
    check_finite("power", power)
    if is_concrete(power) and np.any(np.asarray(power) < 0):
        raise ValueError("power: must be >= 0")
    if np.ndim(phi) == 1:
        check_shape("power", power, (np.shape(phi)[0],))
    if codes is not None:
        check_ndim("codes", codes, 2)
        l_codes = np.shape(codes)[0]
        if n_snapshots is not None and int(n_snapshots) != l_codes:
            raise ValueError(f"n_snapshots: {n_snapshots} disagrees with codes ({l_codes} rows)")
        n_snapshots = l_codes
    if n_snapshots is None:
        raise ValueError("n_snapshots: required in full-array mode (no codes)")
    if int(n_snapshots) < 1:
        raise ValueError(f"n_snapshots: must be >= 1, got {n_snapshots}")
    g, phi, theta, r, nv, h, codes, mask, real, _ = _prepare(
        geometry, phi, theta, r, noise_var, H, codes, mask, extra_real=(power,)
    )
    return _crb_core(g, phi, theta, r, nv, h, codes, mask, None, jnp.asarray(power, real),
                     jnp.asarray(n_snapshots, real), model=model, params=params)


def crb_std(geometry: ArrayGeometry, phi, theta, r, symbols, noise_var, H=None, codes=None, *,
            model: str = "exact", params: Sequence[str] | None = None, mask=None) -> CRBStd:
    """`sqrt(diag(crb(...)))` as per-source arrays `CRBStd(phi, theta, r)`, each `[K]`.

    Radians and metres. Parameters not estimated (theta of a linear geometry, r of the far model,
    or any left out of `params`) are NaN, as are padded sources.
    """
    params_r = _resolve_params(geometry, model, params)
    c = crb(geometry, phi, theta, r, symbols, noise_var, H, codes, model=model, params=params_r,
            mask=mask)
    return _std_from_matrix(c, np.shape(phi)[0], params_r)


def crb_expected_std(geometry: ArrayGeometry, phi, theta, r, power, noise_var, H=None, codes=None,
                     *, n_snapshots: int | None = None, model: str = "exact",
                     params: Sequence[str] | None = None, mask=None) -> CRBStd:
    """`sqrt(diag(crb_expected(...)))` as per-source arrays `CRBStd(phi, theta, r)`, each `[K]`."""
    params_r = _resolve_params(geometry, model, params)
    c = crb_expected(geometry, phi, theta, r, power, noise_var, H, codes, n_snapshots=n_snapshots,
                     model=model, params=params_r, mask=mask)
    return _std_from_matrix(c, np.shape(phi)[0], params_r)


@functools.partial(jax.jit, static_argnames=("model", "params"))
def _scenes_core(geometry, phi, theta, r, noise_var, h, codes, mask, power, n_snapshots, *,
                 model, params):
    def one(phi, theta, r, nv, h, codes, mask, power):
        return _crb_core(geometry, phi, theta, r, nv, h, codes, mask, None, power, n_snapshots,
                         model=model, params=params)

    return jax.vmap(one)(phi, theta, r, noise_var, h, codes, mask, power)


def crb_scenes(scenes, geometry: ArrayGeometry, *, model: str = "exact",
               params: Sequence[str] | None = None, batch_size: int = 256) -> CRBStd:
    """Expected-power CRB std of every true source of a batch of simulated scenes.

    Uses `crb_expected` per scene (the simulator keeps the true powers, not the realised
    symbols) with the scene's H, codes, noise_var, truth and mask, batched with `vmap`.

    Args:
      scenes: a `Scene` (`rismvdr.physics.simulate`), batched `[S, ...]` or a single scene.
      geometry: the geometry the scenes were simulated with.
      model: steering model (the scenario's `steering_model`).
      params: as in `crb`.
      batch_size: scenes per jitted call (bounds memory; results do not depend on it).

    Returns:
      `CRBStd` with `[S, K_max]` arrays (`[K_max]` for a single scene): radians and metres,
      NaN for padded sources and parameters not estimated, `inf` where not identifiable.
    """
    params = _resolve_params(geometry, model, params)
    single = np.ndim(scenes.phi) == 1
    sc = jax.tree_util.tree_map(lambda x: x[None], scenes) if single else scenes
    check_ndim("scenes.phi", sc.phi, 2)
    s, k = np.shape(sc.phi)
    for name in ("theta", "r", "power", "mask"):
        check_shape(f"scenes.{name}", getattr(sc, name), (s, k))
    for name in ("phi", "theta", "r", "power"):
        check_finite(f"scenes.{name}", getattr(sc, name))
    check_positive("scenes.r", sc.r)
    check_shape("scenes.noise_var", sc.noise_var, (s,))
    check_positive("scenes.noise_var", sc.noise_var)
    n_snapshots = np.shape(sc.y)[-2]
    n = geometry.n_elements
    if sc.H is not None:
        check_shape("scenes.H", sc.H, (s, None, n))
        check_shape("scenes.codes", sc.codes, (s, n_snapshots, n))
    elif np.shape(sc.y)[-1] != n:
        raise ValueError(f"scenes.y: full-array mode needs M = N = {n}, got {np.shape(sc.y)[-1]}")
    arrays = [jnp.asarray(x) for x in (sc.phi, sc.theta, sc.r, sc.noise_var, sc.power)]
    real = jnp.finfo(jnp.result_type(*arrays, jnp.float32)).dtype
    cdt = jnp.result_type(real, jnp.complex64)
    cr = lambda x: jnp.asarray(x, real)  # noqa: E731
    cc = lambda x: None if x is None else jnp.asarray(x, cdt)  # noqa: E731
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    arrays = (cr(sc.phi), cr(sc.theta), cr(sc.r), cr(sc.noise_var), cc(sc.H), cc(sc.codes),
              jnp.asarray(sc.mask, bool), cr(sc.power))
    g = geometry.astype(real)
    bs = min(int(batch_size), s)
    parts = []
    for lo in range(0, s, bs):
        idx = jnp.asarray(np.minimum(np.arange(lo, lo + bs), s - 1))  # fixed shape: one trace
        chunk = [None if x is None else x[idx] for x in arrays]
        c = _scenes_core(g, *chunk, jnp.asarray(n_snapshots, real), model=model, params=params)
        parts.append(c[: min(bs, s - lo)])
    c = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    out = _std_from_matrix(c, k, params)
    return CRBStd(*(x[0] for x in out)) if single else out
