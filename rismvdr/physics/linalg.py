"""Small numerical helpers shared by the kernels (trailing-axis conventions, `[..., N, N]`).

Written once here and used by physics, models and the losses: the Hermitian transpose and
part, a broadcast identity, `|z|^2` with a finite gradient at 0, the real dtype of a
complex one, and the parts of the large complex products of the maps.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["real_dtype", "abs2", "herm", "hermitise", "eye_like", "cho_solve", "cmatmul_parts"]


def real_dtype(x):
    """Real floating dtype matching `x` (an array or a dtype): complex64 -> float32,
    complex128 -> float64, float32 -> float32."""
    return jnp.finfo(jnp.result_type(x, jnp.float32)).dtype


def abs2(z) -> jax.Array:
    """`|z|^2` as `re^2 + im^2`: unlike `abs(z)**2`, its gradient is finite at `z = 0`."""
    if jnp.iscomplexobj(z):
        return jnp.real(z) ** 2 + jnp.imag(z) ** 2
    return z * z


def herm(x) -> jax.Array:
    """Conjugate transpose over the last two axes."""
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def hermitise(R) -> jax.Array:
    """Hermitian part `(R + R^H) / 2` over the last two axes."""
    return 0.5 * (R + herm(R))


def eye_like(R) -> jax.Array:
    """Identity broadcast to `R`'s shape `[..., N, N]` and dtype (no implicit rank promotion)."""
    return jnp.broadcast_to(jnp.eye(R.shape[-1], dtype=R.dtype), R.shape)


def cho_solve(chol, b, *, lower: bool = True) -> jax.Array:
    """Solve `A x = b` from the Cholesky factor `chol` `[..., n, n]` of `A`, `b` `[..., n, k]`,
    with the batch axes of both broadcast to one shape first.

    `jax.scipy.linalg.cho_solve` broadcasts them itself, but the CPU lowering of jax 0.9 (what
    Python 3.11 installs) refuses a factor shared along a batch axis (`[1, n, n]` against
    `[L, n, k]`: "Batching dimension corresponds to two sizes"); broadcasting first gives every
    jax the same batched call.
    """
    batch = jnp.broadcast_shapes(chol.shape[:-2], b.shape[:-2])
    chol = jnp.broadcast_to(chol, batch + chol.shape[-2:])
    b = jnp.broadcast_to(b, batch + b.shape[-2:])
    return jax.scipy.linalg.cho_solve((chol, lower), b)


def cmatmul_parts(a, b, *, precision=jax.lax.Precision.HIGHEST) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of `jnp.matmul(a, b)` for complex `a` and `b`, as three real
    products on the CPU.

    For a large product whose parts are reduced at once (`|a b|^2` summed over snapshots: the
    beamspace map, the SOMP atom norms), real GEMMs with the reduction fused after them run about
    twice as fast on XLA's CPU backend as the complex GEMM followed by the reduction
    (`[512, 144] x [144, 15128]`, complex64, then `|.|^2` averaged over 16 rows, 2-core AVX-512
    VM: 49 ms with four real products against 83-105 ms complex). Gauss's form needs three:
    `t1 = (re a + im a) re b`, `t2 = re a (im b - re b)`, `t3 = im a (re b + im b)`, real part
    `t1 - t3`, imaginary part `t1 + t2` (`[2, 256, 144] x [144, 15128]`, `|.|^2` summed over the
    256 rows: 42 ms against 50-53 ms for four, same process). On other platforms the complex
    product is kept and split. The parts agree with the complex product's to rounding (on that
    product both forms were within 3e-7 relative of a float64 reference). Inside a vmapped while
    loop the four-product form was measured slower than the complex product (the greedy ML
    continuation's back-projected scores: 252 -> 307 ms per batch), so it is not a general
    replacement for it.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)

    def native(a, b):
        z = jnp.matmul(a, b, precision=precision)
        return jnp.real(z), jnp.imag(z)

    def three_real(a, b):
        ar, ai, br, bi = jnp.real(a), jnp.imag(a), jnp.real(b), jnp.imag(b)
        mm = lambda x, y: jnp.matmul(x, y, precision=precision)  # noqa: E731
        t1 = mm(ar + ai, br)
        return t1 - mm(ai, br + bi), t1 + mm(ar, bi - br)

    return jax.lax.platform_dependent(a, b, cpu=three_real, default=native)
