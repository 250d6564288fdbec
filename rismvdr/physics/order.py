"""Model-order estimation from covariance eigenvalues: MDL and AIC (Wax and Kailath 1985).

For eigenvalues `l_1 >= ... >= l_p` of a covariance estimated from `L` snapshots and a
candidate order `k`, with `g` and `a` the geometric and arithmetic means of the `p - k`
smallest:

    LL(k)  = -L (p - k) log(g / a)
    MDL(k) = LL(k) + k (2p - k) log(L) / 2
    AIC(k) = 2 LL(k) + 2 k (2p - k)

and the order is the argmin over `k = 0 .. p - 1`. Pure jittable functions.
"""
from __future__ import annotations

import jax.numpy as jnp

__all__ = ["information_criteria", "estimate_order"]


def information_criteria(eigvals, n_snapshots: int):
    """MDL and AIC values for every candidate order.

    Args:
      eigvals: `[..., p]` eigenvalues (any order; negatives from rounding clipped).
      n_snapshots: L.

    Returns:
      (mdl, aic), each `[..., p]` indexed by k.
    """
    lam = jnp.sort(jnp.maximum(jnp.real(eigvals), 0.0), axis=-1)[..., ::-1]
    p = lam.shape[-1]
    tiny = jnp.finfo(lam.dtype).tiny
    loglam = jnp.log(jnp.maximum(lam, tiny))
    # Suffix sums give the noise-set means for every k in one pass.
    suffix_log = jnp.flip(jnp.cumsum(jnp.flip(loglam, -1), -1), -1)  # sum_{i >= k} log l_i
    suffix_sum = jnp.flip(jnp.cumsum(jnp.flip(lam, -1), -1), -1)
    k = jnp.broadcast_to(jnp.arange(p, dtype=lam.dtype), lam.shape)  # explicit: batched input
    m = p - k
    log_g = suffix_log / m
    log_a = jnp.log(jnp.maximum(suffix_sum / m, tiny))
    ll = -n_snapshots * m * (log_g - log_a)
    free = k * (2 * p - k)
    mdl = ll + 0.5 * free * jnp.log(float(n_snapshots))
    aic = 2.0 * ll + 2.0 * free
    return mdl, aic


def estimate_order(eigvals, n_snapshots: int, *, criterion: str = "mdl", max_order: int | None = None):
    """Order estimate `argmin_k criterion(k)`, optionally capped at `max_order`.

    Returns:
      `[...]` int32 order.
    """
    if criterion not in ("mdl", "aic"):
        raise ValueError(f"criterion: expected 'mdl' or 'aic', got {criterion!r}")
    mdl, aic = information_criteria(eigvals, n_snapshots)
    vals = mdl if criterion == "mdl" else aic
    k = jnp.argmin(vals, axis=-1).astype(jnp.int32)
    if max_order is not None:
        k = jnp.minimum(k, max_order)
    return k

