"""Small numerical helpers shared by the kernels (trailing-axis conventions, `[..., N, N]`).

Written once here and used by physics, models and the losses: the Hermitian transpose and
part, a broadcast identity, `|z|^2` with a finite gradient at 0, and the real dtype of a
complex one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["real_dtype", "abs2", "herm", "hermitise", "eye_like", "cho_solve"]


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

