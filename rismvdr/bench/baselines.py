"""The original system's MVDR formula, the speed bench's denominator.

The PyTorch original computed the MVDR map with an explicit inverse and a three-operand
einsum, one scene at a time. `numpy_original_mvdr` is that formula in NumPy; the speed bench's
`numpy` measurement times it on the CPU and its `torch` measurement times the same lines in
PyTorch on CUDA (`rismvdr.bench.speed_worker`). rismvdr itself never forms the inverse
(Cholesky whitening or Woodbury, `rismvdr.physics.spectra`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["numpy_original_mvdr"]


def numpy_original_mvdr(R, A, delta_rel: float = 1e-2):
    """The original system's MVDR formula in NumPy (the speed bench's denominator).

    `P = 1 / Re(einsum('ng,nm,mg->g', conj(A), inv(R + d I), A))`, `d = delta_rel tr(R) / N`:
    an explicit inverse and a three-operand einsum, as the PyTorch original computed it.

    Args:
      R: `[N, N]` covariance.
      A: `[N, G]` steering vectors (columns).

    Returns:
      `[G]` real spectrum.
    """
    n = R.shape[-1]
    d = delta_rel * np.real(np.trace(R)) / n
    Ri = np.linalg.inv(R + d * np.eye(n, dtype=R.dtype))
    denom = np.einsum("ng,nm,mg->g", A.conj(), Ri, A, optimize=True)
    return 1.0 / np.maximum(np.real(denom), 1e-12)
