"""Spatial spectra (conventions section 6): MVDR dense and low-rank (Woodbury), Bartlett, MUSIC,
and their 2.5D evaluation over a (phi, theta) grid times a set of range planes.

Every spectrum here is a function of one quadratic form. A per-scene *operator* `W` `[q, N]`
is built once from the covariance (the only place a factorisation happens), and the spectrum
at a steering vector `a` is a scalar function of `w = ||W a||^2` and `||a||^2`:

- MVDR dense, `R + delta I = L L^H`, `W = L^-1` (whitening):      `P = 1 / w`
- MVDR low rank, `R = F F^H`, `C = delta I_r + F^H F = Lc Lc^H`,
  `W = Lc^-1 F^H` (Woodbury):                                     `P = delta / (||a||^2 - w)`
- MUSIC, `W = E_s^H` (signal subspace of dimension K):            `P = 1 / (||a||^2 - w)`
- Bartlett, `R = U diag(l) U^H`, `W = diag(sqrt l) U^H`:          `P = w / N`

with `delta = delta_rel * tr(R) / N`. No covariance is ever inverted explicitly. Spectra scale
with `R` (MVDR's is homogeneous of degree 1 in `R`, MUSIC's of degree 0), so any units work as
long as `tr(R) / N` stays well inside the dtype's range (float32: about 1e-30 .. 1e30; the
estimators of `rismvdr.physics.covariance` return trace N). An all-zero `R` (or factor) gives a
flat, finite spectrum (MVDR with unit loading, MUSIC with an empty signal subspace, Bartlett 0),
in which the detector finds no peak. The same
operator serves the grid (`spectrum_25d`) and continuous points (`operator_spectrum`, used by
the detector's 3-D refinement with autodiff), so grid and refinement see one spectrum.

Grid steering vectors are built once (`grid_steering`) and reused across a batch of scenes;
grid evaluation is chunked over angular cells so memory stays bounded (`max_chunk_mb`), and each
chunk is one real GEMM for the whole batch (complex products written in real form: the same
flops, which CPU backends run at about twice the complex rate); a lower-triangular `W` (dense
MVDR) is evaluated by row blocks that skip its zeros.
Matmul precision is one setting: `highest` (default) or `fast` (the backend's default, TF32
on recent NVIDIA GPUs: measured there to move Woodbury spectra by up to 0.49 dB near peaks).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.defaults import PHI_RANGE_DEG, R_RANGE_M, THETA_RANGE_DEG
from rismvdr.physics._validation import check_complex, check_finite, check_hermitian, check_ndim
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.steering import steering
from rismvdr.physics.linalg import eye_like, hermitise
from rismvdr.programs import stored_jit

__all__ = [
    "Grid",
    "make_grid",
    "grid_steering",
    "SpectrumOperator",
    "mvdr_operator",
    "mvdr_lowrank_operator",
    "music_operator",
    "bartlett_operator",
    "bartlett_factor_operator",
    "operator_spectrum",
    "mvdr_spectrum",
    "mvdr_lowrank_spectrum",
    "music_spectrum",
    "bartlett_spectrum",
    "Spectrum25D",
    "spectrum_25d",
    "matmul_precision",
]

Precision = Literal["highest", "fast"]


def matmul_precision(precision: Precision):
    """Map the library's precision setting to `jax.lax.Precision`."""
    if precision == "highest":
        return jax.lax.Precision.HIGHEST
    if precision == "fast":
        return jax.lax.Precision.DEFAULT
    raise ValueError(f"precision: expected 'highest' or 'fast', got {precision!r}")


# ------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Grid:
    """A 2.5D search grid: angles in radians, range planes in metres (hashable, host-side)."""

    phi: tuple[float, ...]
    theta: tuple[float, ...]
    r: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(n_theta, n_phi, n_planes)`."""
        return len(self.theta), len(self.phi), len(self.r)

    def scaling(self):
        """Grid steps and box in the scaled coordinates `(phi/dphi, theta/dtheta, (1/r)/du)`
        used by off-grid refinement (curvature O(1) per cell).

        Returns:
          (steps `[3]` = (dphi rad, dtheta rad, du 1/m), lower `[3]`, upper `[3]` box corners in
          scaled units). A single theta row uses dphi as its step; a single plane 0.1 / r.
        """
        phi, theta, r = self.arrays()
        dphi = float(np.diff(phi).mean()) if len(phi) > 1 else np.deg2rad(1.0)
        dth = float(np.diff(theta).mean()) if len(theta) > 1 else dphi
        inv = 1.0 / r
        du = float(np.abs(np.diff(inv)).mean()) if len(r) > 1 else 0.1 * float(inv[0])
        lo = np.array([phi.min() / dphi, theta.min() / dth, inv.min() / du])
        hi = np.array([phi.max() / dphi, theta.max() / dth, inv.max() / du])
        return np.array([dphi, dth, du]), lo, hi

    def arrays(self, dtype=np.float64):
        return (np.asarray(self.phi, dtype), np.asarray(self.theta, dtype), np.asarray(self.r, dtype))


def _axis(lo: float, hi: float, step: float) -> np.ndarray:
    if hi < lo:
        raise ValueError(f"grid: max {hi} below min {lo}")
    if step <= 0:
        raise ValueError(f"step: must be > 0, got {step}")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return lo + step * np.arange(n)


def make_grid(
    phi_deg: tuple[float, float] = PHI_RANGE_DEG,
    theta_deg: tuple[float, float] = THETA_RANGE_DEG,
    r_m: tuple[float, float] = R_RANGE_M,
    *,
    phi_step_deg: float = 1.0,
    theta_step_deg: float = 1.0,
    n_planes: int = 16,
) -> Grid:
    """Detection grid: phi and theta in `*_step_deg` steps (inclusive ends), `n_planes` range
    planes uniform in 1/r between `r_m[0]` and `r_m[1]` (near-field phase varies with 1/r).

    A degenerate theta range (min == max) gives one theta row (linear arrays, conventions section 1).
    """
    if int(n_planes) < 1:
        raise ValueError(f"n_planes: must be >= 1, got {n_planes}")
    if r_m[0] <= 0 or r_m[1] < r_m[0]:
        raise ValueError(f"r_m: expected 0 < min <= max, got {r_m}")
    phi = _axis(*phi_deg, phi_step_deg)
    theta = _axis(*theta_deg, theta_step_deg)
    if n_planes == 1:
        inv_r = np.array([2.0 / (1.0 / r_m[0] + 1.0 / r_m[1])])
        inv_r = 1.0 / inv_r
    else:
        inv_r = np.linspace(1.0 / r_m[0], 1.0 / r_m[1], int(n_planes))
    r = 1.0 / inv_r
    return Grid(
        tuple(np.deg2rad(phi).tolist()), tuple(np.deg2rad(theta).tolist()), tuple(r.tolist())
    )


def grid_steering(geometry: ArrayGeometry, grid: Grid, *, model: str = "exact", dtype=jnp.complex64):
    """Steering vectors for every grid point, built once per (geometry, grid).

    Returns:
      `[T, P, R, N]` complex array (theta, phi, range plane, element).
    """
    real = jnp.finfo(jnp.dtype(dtype)).dtype
    phi, theta, r = (jnp.asarray(x, real) for x in grid.arrays())
    return steering(
        geometry.astype(real),
        phi[None, :, None],
        theta[:, None, None],
        r[None, None, :],
        model=model,
        dtype=dtype,
    )


# ------------------------------------------------------------------------------------------
# Operators: one factorisation per scene, then every spectrum is a function of ||W a||^2
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SpectrumOperator:
    """Per-scene quadratic-form operator (batch axes lead).

    Attributes:
      W: `[..., q, N]` complex.
      scale: `[...]` real: the numerator `delta` of low-rank MVDR (1 otherwise).
      kind: `inverse` (P = 1/w), `complement` (P = scale/(|a|^2 - w)) or `direct` (P = w/N).
      lower: True when `W` is square and lower triangular (dense MVDR's `L^-1`): entries above
        the diagonal are zero, and the 2.5D evaluation skips them (about 5/8 of the flops).
    """

    W: jax.Array
    scale: jax.Array
    kind: str = dataclasses.field(metadata=dict(static=True))
    lower: bool = dataclasses.field(default=False, metadata=dict(static=True))


jax.tree_util.register_dataclass(
    SpectrumOperator, data_fields=["W", "scale"], meta_fields=["kind", "lower"]
)


def _loading(delta_rel, tr, n: int, real):
    """MVDR diagonal loading `delta_rel * tr(R) / N`; 1 where `tr(R) == 0` (an all-zero
    covariance: the spectrum is then flat, `1 / ||a||^2` in the units of 1, instead of NaN)."""
    return jnp.where(tr > 0, delta_rel * tr / n, 1.0).astype(real)


def mvdr_operator(R, *, delta_rel: float = 1e-2) -> SpectrumOperator:
    """Dense MVDR via whitening: `R + delta I = L L^H`, `W = L^-1`, `P(a) = 1/||W a||^2`.

    Args:
      R: `[..., N, N]` Hermitian PSD covariance (an all-zero `R` gives a flat spectrum).
      delta_rel: diagonal loading relative to `tr(R)/N`.
    """
    R = hermitise(R)
    n = R.shape[-1]
    real = jnp.finfo(R.dtype).dtype
    tr = jnp.real(jnp.trace(R, axis1=-2, axis2=-1))
    delta = _loading(delta_rel, tr, n, real)
    chol = jnp.linalg.cholesky(R + delta[..., None, None] * eye_like(R))
    W = jax.scipy.linalg.solve_triangular(chol, eye_like(R), lower=True)
    return SpectrumOperator(W, jnp.ones_like(tr), "inverse", lower=True)


def mvdr_lowrank_operator(F, *, delta_rel: float = 1e-2, precision: Precision = "highest") -> SpectrumOperator:
    """Low-rank MVDR via Woodbury for `R = F F^H`: cost O(N r) per grid point.

    `(F F^H + delta I)^-1 = (I - F C^-1 F^H) / delta` with `C = delta I_r + F^H F`, so
    `a^H (R + delta I)^-1 a = (||a||^2 - ||Lc^-1 F^H a||^2) / delta`.

    Args:
      F: `[..., N, r]` complex factor (an all-zero `F`, e.g. no sources, gives a flat spectrum).
      delta_rel: diagonal loading relative to `tr(F F^H)/N`.
    """
    prec = matmul_precision(precision)
    n = F.shape[-2]
    real = jnp.finfo(F.dtype).dtype
    Fh = jnp.conj(jnp.swapaxes(F, -1, -2))  # [..., r, N]
    tr = jnp.sum(jnp.abs(F) ** 2, axis=(-2, -1))
    delta = _loading(delta_rel, tr, n, real)
    FhF = jnp.matmul(Fh, F, precision=prec)  # [..., r, r]
    C = FhF + delta[..., None, None] * eye_like(FhF)
    chol = jnp.linalg.cholesky(hermitise(C))
    W = jax.scipy.linalg.solve_triangular(chol, Fh, lower=True)
    return SpectrumOperator(W, delta, "complement")


def music_operator(R, n_sources, *, max_sources: int | None = None) -> SpectrumOperator:
    """MUSIC with a signal subspace of `n_sources` eigenvectors (may be a traced int).

    `P(a) = 1 / ||E_n^H a||^2 = 1 / (||a||^2 - ||E_s^H a||^2)`. Only the top `max_sources`
    eigenvectors are kept in `W` (static; default and at most N - 1), rows beyond `n_sources`
    zeroed. An all-zero `R` has no signal subspace (`W = 0`: a flat spectrum).
    """
    R = hermitise(R)
    n = R.shape[-1]
    q = n - 1 if max_sources is None else min(int(max_sources), n - 1)
    _, vecs = jnp.linalg.eigh(R)  # ascending
    top = vecs[..., :, ::-1][..., :, :q]  # [..., N, q] descending
    empty = ~jnp.any(R != 0, axis=(-2, -1))  # eigh of 0 returns an arbitrary basis
    k = jnp.where(empty, 0, jnp.asarray(n_sources))[..., None]  # [..., 1]
    keep = (jnp.arange(q).reshape((1,) * (k.ndim - 1) + (q,)) < k).astype(R.dtype)  # [..., q]
    W = jnp.conj(jnp.swapaxes(top, -1, -2)) * keep[..., :, None]
    real = jnp.finfo(R.dtype).dtype
    return SpectrumOperator(W, jnp.ones(R.shape[:-2], real), "complement")


def bartlett_operator(R) -> SpectrumOperator:
    """Bartlett (conventional beamformer): `P(a) = a^H R a / N` with `W = diag(sqrt l) U^H`."""
    R = hermitise(R)
    vals, vecs = jnp.linalg.eigh(R)
    real = jnp.finfo(R.dtype).dtype
    W = jnp.sqrt(jnp.maximum(vals, 0.0)).astype(R.dtype)[..., :, None] * jnp.conj(
        jnp.swapaxes(vecs, -1, -2)
    )
    return SpectrumOperator(W, jnp.ones(R.shape[:-2], real), "direct")


def bartlett_factor_operator(F) -> SpectrumOperator:
    """Bartlett for `R = F F^H` without an eigendecomposition: `W = F^H` (`[..., q, N]`), so
    `P(a) = ||F^H a||^2 / N = a^H R a / N` at O(N q) per grid point."""
    real = jnp.finfo(F.dtype).dtype
    W = jnp.conj(jnp.swapaxes(F, -1, -2))
    return SpectrumOperator(W, jnp.ones(F.shape[:-2], real), "direct")


def _finish(kind: str, w, a_norm2, scale, n: int):
    """Spectrum from the quadratic form `w = ||W a||^2` (broadcast over trailing grid axes)."""
    tiny = jnp.finfo(w.dtype).tiny
    if kind == "inverse":
        return 1.0 / jnp.maximum(w, tiny)
    if kind == "complement":
        eps = jnp.finfo(w.dtype).eps
        return scale / jnp.maximum(a_norm2 - w, eps * a_norm2)
    if kind == "direct":
        return w / n
    raise ValueError(f"kind: unknown {kind!r}")


def operator_spectrum(op: SpectrumOperator, a, *, precision: Precision = "highest"):
    """Spectrum of one operator at steering vectors `a` `[G, N]` (or `[N]`): returns `[G]`.

    Differentiable in `a` (the detector refines peaks with autodiff through this).
    """
    prec = matmul_precision(precision)
    wa = jnp.einsum("qn,...n->...q", op.W, a, precision=prec)
    w = jnp.sum(jnp.real(wa) ** 2 + jnp.imag(wa) ** 2, axis=-1)
    a_norm2 = jnp.sum(jnp.real(a) ** 2 + jnp.imag(a) ** 2, axis=-1)
    return _finish(op.kind, w, a_norm2, op.scale, op.W.shape[-1])


def _check_cov(name, R, a=None):
    check_ndim(name, R, (2, 3))
    check_complex(name, R)
    check_finite(name, R)
    check_hermitian(name, R)
    if a is not None:
        check_ndim("a", a, (1, 2))
        if np.shape(a)[-1] != np.shape(R)[-1]:
            raise ValueError(f"a: last axis {np.shape(a)[-1]} does not match N = {np.shape(R)[-1]} of {name}")


def mvdr_spectrum(R, a, *, delta_rel: float = 1e-2, precision: Precision = "highest"):
    """Dense MVDR (Capon) spectrum `1 / (a^H (R + delta I)^-1 a)`.

    Args:
      R: `[N, N]` or `[B, N, N]` Hermitian covariance.
      a: `[G, N]` steering vectors (rows).

    Returns:
      `[G]` or `[B, G]` real spectrum.
    """
    _check_cov("R", R, a)
    op = mvdr_operator(jnp.asarray(R), delta_rel=delta_rel)
    return _map_ops(op, jnp.asarray(a), precision)


def mvdr_lowrank_spectrum(F, a, *, delta_rel: float = 1e-2, precision: Precision = "highest"):
    """Low-rank MVDR spectrum for `R = F F^H`, `F` `[N, r]` or `[B, N, r]`, via Woodbury."""
    check_ndim("F", F, (2, 3))
    check_complex("F", F)
    check_finite("F", F)
    if np.shape(a)[-1] != np.shape(F)[-2]:
        raise ValueError(f"a: last axis {np.shape(a)[-1]} does not match N = {np.shape(F)[-2]} of F")
    op = mvdr_lowrank_operator(jnp.asarray(F), delta_rel=delta_rel, precision=precision)
    return _map_ops(op, jnp.asarray(a), precision)


def music_spectrum(R, a, n_sources, *, precision: Precision = "highest"):
    """MUSIC pseudo-spectrum with a signal subspace of `n_sources` (int or `[B]`)."""
    _check_cov("R", R, a)
    k = np.asarray(n_sources)
    if np.any(k < 0) or np.any(k >= np.shape(R)[-1]):
        raise ValueError(f"n_sources: must lie in [0, N-1], got {n_sources}")
    op = music_operator(jnp.asarray(R), jnp.asarray(k))
    return _map_ops(op, jnp.asarray(a), precision)


def bartlett_spectrum(R, a, *, precision: Precision = "highest"):
    """Bartlett spectrum `a^H R a / N`."""
    _check_cov("R", R, a)
    op = bartlett_operator(jnp.asarray(R))
    return _map_ops(op, jnp.asarray(a), precision)


def _map_ops(op: SpectrumOperator, a, precision):
    if op.W.ndim == 2:
        return operator_spectrum(op, a, precision=precision)
    return jax.vmap(lambda o: operator_spectrum(o, a, precision=precision))(op)


# ------------------------------------------------------------------------------------------
# 2.5D evaluation
# ------------------------------------------------------------------------------------------
def _platform(*arrays) -> str:
    """Platform the computation runs on (the arrays' device, else the default backend)."""
    for x in arrays:
        try:
            return next(iter(x.devices())).platform
        except (AttributeError, jax.errors.ConcretizationTypeError, StopIteration, TypeError):
            continue
    return jax.default_backend()


class Spectrum25D(NamedTuple):
    """Max over range planes of a spectrum on a (theta, phi) grid.

    Attributes:
      power: `[B, T, P]` spectrum (linear) at the best plane.
      plane: `[B, T, P]` int32 index of the best range plane.
    """

    power: jax.Array
    plane: jax.Array


# CPU evaluation is GEMM-bound: chunks of about this many grid rows (cells x planes) keep the
# steering chunk and the GEMM output in cache (measured on a 2-core AVX-512 host, seed grid:
# 1024-2048-row chunks ran 1.1-1.3x faster than chunks bounded only by 256 MiB). Accelerators
# want few, large GEMMs: there only `max_chunk_mb` bounds the chunk.
_CPU_CHUNK_ROWS = 1024


def _chunk_cells(
    n_cells: int, batch: int, q: int, planes: int, n: int, itemsize: int, max_chunk_mb: float,
    platform: str,
) -> int:
    """Angular cells per chunk. `itemsize` is that of the real dtype of the computation.

    Per cell the chunk holds the real steering rows `[planes, 2N]`, the GEMM output
    `[planes, 2 q B]` and its square: `max_chunk_mb` bounds their total. On a CPU the chunk is
    also capped at `_CPU_CHUNK_ROWS` rows.
    """
    cols = 2 * q * batch
    per_cell = max(1, planes * (2 * n + 2 * cols) * itemsize)
    c = int(max_chunk_mb * 2**20 // per_cell)
    if platform == "cpu":
        c = min(c, max(1, _CPU_CHUNK_ROWS // planes))
    return int(min(max(c, 1), n_cells))


_TRIANGULAR_BLOCKS = 4  # row blocks of a lower-triangular W: (4 + 1) / (2 * 4) = 5/8 of the flops


def _real_gemm_operator(W):
    """`[B, q, N]` complex -> `[N, 2, 2, q, B]` real `M` such that, with the steering rows in
    interleaved real form `x = [re a_0, im a_0, re a_1, im a_1, ...]` (`[2N]`),
    `x @ M.reshape(2N, 2qB)` is `[re(W a), im(W a)]` ordered (part, k, b), batch innermost.

    Complex GEMMs run at about half the rate of real ones on CPU backends; in this real form
    every product is a plain f32/f64 GEMM with the same number of flops.
    """
    wr, wi = jnp.real(W), jnp.imag(W)  # [B, q, N]
    coef_re = jnp.stack([wr, wi], axis=0)  # coefficient of re(a_n) in (re, im) of (W a)_k
    coef_im = jnp.stack([-wi, wr], axis=0)  # coefficient of im(a_n)
    M = jnp.stack([coef_re, coef_im], axis=-1)  # [part, B, q, N, re/im of a]
    return jnp.transpose(M, (3, 4, 0, 2, 1))  # [N, re/im of a, part, q, B]


@functools.partial(stored_jit, static_argnames=("chunk", "precision"))
def _spectrum_25d(op: SpectrumOperator, a_cells, *, chunk: int, precision: Precision):
    """`a_cells` `[C, R, N]` -> (power `[B, C]`, plane `[B, C]`)."""
    prec = matmul_precision(precision)
    dtype = jnp.result_type(op.W.dtype, a_cells.dtype)
    real = jnp.finfo(dtype).dtype
    b, q, n = op.W.shape
    n_cells, planes, _ = a_cells.shape
    M = _real_gemm_operator(op.W.astype(dtype))  # [N, 2, 2, q, B]
    if op.lower and q == n:
        # Row block [lo, hi) of a lower-triangular W only sees a_0 .. a_{hi-1}: one GEMM per
        # block over that prefix of the interleaved steering rows.
        edges = np.linspace(0, n, min(_TRIANGULAR_BLOCKS, n) + 1).astype(int)
        blocks = [(int(hi), M[:hi, :, :, lo:hi, :].reshape(2 * hi, 2 * (hi - lo) * b))
                  for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
    else:
        blocks = [(n, M.reshape(2 * n, 2 * q * b))]
    scale = op.scale.astype(real)

    def cells(a):  # a: [c, R, N] complex -> ([c, B], [c, B])
        c = a.shape[0]
        x = jnp.stack([jnp.real(a), jnp.imag(a)], axis=-1).astype(real)
        x = x.reshape(c * planes, 2 * n)  # plane-major rows, one GEMM for the whole batch
        w = jnp.zeros((c * planes, b), real)
        for hi, m in blocks:
            out = jnp.matmul(x[:, : 2 * hi], m, precision=prec).reshape(c * planes, -1, b)
            w = w + jnp.sum(out * out, axis=1)  # ||W a||^2, no sqrt
        w = w.reshape(c, planes, b)
        a_norm2 = jnp.sum(x * x, axis=-1).reshape(c, planes, 1)
        p = _finish(op.kind, w, a_norm2, scale[None, None, :], n)  # [c, R, B]
        return jnp.max(p, axis=1), jnp.argmax(p, axis=1).astype(jnp.int32)

    n_full = n_cells // chunk

    def body(_, i):
        return None, cells(jax.lax.dynamic_slice_in_dim(a_cells, i * chunk, chunk, axis=0))

    _, (power, plane) = jax.lax.scan(body, None, jnp.arange(n_full))  # [n_full, chunk, B]
    power, plane = power.reshape(n_full * chunk, b), plane.reshape(n_full * chunk, b)
    if n_cells % chunk:  # remainder: one smaller chunk
        p_tail, i_tail = cells(a_cells[n_full * chunk :])
        power = jnp.concatenate([power, p_tail], axis=0)
        plane = jnp.concatenate([plane, i_tail], axis=0)
    return power.T, plane.T


def spectrum_25d(
    op: SpectrumOperator,
    a_grid,
    *,
    precision: Precision = "highest",
    max_chunk_mb: float = 256.0,
) -> Spectrum25D:
    """Evaluate a batch of operators on a 2.5D grid, reduced by max over range planes.

    Args:
      op: operator with `W` `[B, q, N]` (from `mvdr_operator` etc., vmapped over scenes).
      a_grid: `[T, P, R, N]` grid steering vectors from `grid_steering` (built once).
      precision: `highest` (default) or `fast`.
      max_chunk_mb: bound on the intermediate memory per chunk of angular cells, MiB.

    Returns:
      `Spectrum25D(power [B, T, P], plane [B, T, P])`.
    """
    if op.W.ndim != 3:
        raise ValueError(f"op: expected a batched operator with W [B, q, N], got {op.W.shape}")
    if a_grid.ndim != 4 or a_grid.shape[-1] != op.W.shape[-1]:
        raise ValueError(f"a_grid: expected [T, P, R, N={op.W.shape[-1]}], got {a_grid.shape}")
    t, p, r, n = a_grid.shape
    b, q = op.W.shape[0], op.W.shape[1]
    real = jnp.finfo(jnp.result_type(op.W.dtype, a_grid.dtype)).dtype
    chunk = _chunk_cells(
        t * p, b, q, r, n, jnp.dtype(real).itemsize, max_chunk_mb, _platform(op.W, a_grid)
    )
    power, plane = _spectrum_25d(op, a_grid.reshape(t * p, r, n), chunk=chunk, precision=precision)
    return Spectrum25D(power.reshape(b, t, p), plane.reshape(b, t, p))
