"""Host-side input validation for the public API (JAX never raises inside jit).

Every check raises `ValueError` whose message starts with the argument's name, so a user
knows which input is wrong. These run on concrete arrays only; under a trace they are
skipped (`is_concrete`), since the caller's public wrapper already validated the inputs.
"""
from __future__ import annotations

import jax
import numpy as np

__all__ = [
    "is_concrete",
    "check_finite",
    "check_positive",
    "check_ndim",
    "check_shape",
    "check_complex",
    "check_hermitian",
]


def is_concrete(x) -> bool:
    """True if `x` holds values (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def _host(x):
    return np.asarray(x)


def check_finite(name: str, x) -> None:
    """Raise if `x` has a NaN or Inf entry."""
    if not is_concrete(x):
        return
    a = _host(x)
    if a.size and not np.all(np.isfinite(a)):
        n_bad = int(np.sum(~np.isfinite(a)))
        raise ValueError(f"{name}: contains {n_bad} non-finite value(s) (NaN or Inf)")


def check_positive(name: str, x) -> None:
    """Raise if any entry of `x` is not finite and strictly positive."""
    if not is_concrete(x):
        return
    a = _host(x)
    check_finite(name, a)
    if a.size and np.any(a <= 0):
        raise ValueError(f"{name}: must be > 0, got min {float(np.min(a))}")


def check_ndim(name: str, x, ndims) -> None:
    """Raise unless `x.ndim` is one of `ndims` (an int or a tuple)."""
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if np.ndim(x) not in ndims:
        raise ValueError(f"{name}: expected {' or '.join(map(str, ndims))} dimensions, got shape {np.shape(x)}")


def check_shape(name: str, x, shape) -> None:
    """Raise unless `x.shape` matches `shape` (None entries match anything)."""
    s = np.shape(x)
    if len(s) != len(shape) or any(e is not None and e != a for e, a in zip(shape, s)):
        want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(s)}")
    if any(a == 0 for a in s):
        raise ValueError(f"{name}: empty array (shape {list(s)})")


def check_complex(name: str, x) -> None:
    """Raise unless `x` has a complex dtype."""
    dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
    if not np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{name}: expected a complex dtype, got {dtype}")


def check_hermitian(name: str, x, rtol: float | None = None) -> None:
    """Raise if the trailing `[N, N]` matrices of `x` are not Hermitian within `rtol`.

    The default tolerance is 1e-4 of the largest entry for single precision and 1e-10 for
    double precision: a matrix built as `A A^H` in either precision passes.
    """
    if not is_concrete(x):
        return
    a = _host(x)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name}: expected square [..., N, N] matrices, got shape {list(a.shape)}")
    if rtol is None:
        rtol = 1e-10 if a.dtype in (np.complex128, np.float64) else 1e-4
    scale = max(float(np.max(np.abs(a))), 1e-300)
    err = float(np.max(np.abs(a - np.conj(np.swapaxes(a, -1, -2))))) if a.size else 0.0
    if err > rtol * scale:
        raise ValueError(
            f"{name}: not Hermitian (max |R - R^H| = {err:.3g}, {err / scale:.3g} of max |R|)"
        )
