"""Near-field steering vectors (conventions section 2): the one steering function of rismvdr.

A source at azimuth `phi`, elevation `theta`, range `r` sits at
`u = r [cos(theta) cos(phi), cos(theta) sin(phi), sin(theta)]`. With `k = 2 pi / wavelength`
and `d_n = |u - p_n|`, element n of the steering vector is `a_n = exp(-1j k delta_n)` where

- `exact`:   `delta_n = d_n - r`
- `fresnel`: `delta_n = -p_n.uhat + (|p_n|^2 - (p_n.uhat)^2) / (2 r)`
- `far`:     `delta_n = -p_n.uhat`

`d_n - r` is evaluated as `(|p_n|^2 - 2 p_n.u) / (d_n + r)`, which has no cancellation when
r is much larger than the aperture (important in float32). Everything here is a pure function,
jittable, vmappable and differentiable in (phi, theta, r).
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.physics._validation import check_finite, check_positive, is_concrete
from rismvdr.physics.geometry import ArrayGeometry

__all__ = ["STEERING_MODELS", "unit_direction", "path_difference", "steering"]

SteeringModel = Literal["exact", "fresnel", "far"]
STEERING_MODELS = ("exact", "fresnel", "far")


def unit_direction(phi, theta):
    """Unit vector toward (phi, theta): `[..., 3]` for `phi`, `theta` of shape `[...]`."""
    ct = jnp.cos(theta)
    return jnp.stack([ct * jnp.cos(phi), ct * jnp.sin(phi), jnp.sin(theta)], axis=-1)


def path_difference(geometry: ArrayGeometry, phi, theta, r, *, model: SteeringModel = "exact"):
    """Propagation delay `delta_n` (metres) of each element relative to the origin.

    Args:
      geometry: array geometry with `positions` `[N, 3]`.
      phi, theta, r: broadcastable arrays of shape `[...]` (radians, radians, metres).
      model: `exact`, `fresnel` or `far`.

    Returns:
      `[..., N]` real array, `delta_n = d_n - r` (or its approximation).
    """
    if model not in STEERING_MODELS:
        raise ValueError(f"model: expected one of {STEERING_MODELS}, got {model!r}")
    phi, theta, r = jnp.broadcast_arrays(jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(r))
    dtype = jnp.result_type(phi.dtype, jnp.float32)
    p = jnp.asarray(geometry.positions, dtype)  # [N, 3]
    uhat = unit_direction(phi, theta).astype(dtype)  # [..., 3]
    proj = jnp.einsum("...c,nc->...n", uhat, p, precision=jax.lax.Precision.HIGHEST)  # p.uhat
    if model == "far":
        return -proj
    p2 = jnp.broadcast_to(jnp.sum(p * p, axis=-1), proj.shape)  # |p_n|^2, [..., N] (explicit: no rank promotion)
    rr = r[..., None].astype(dtype)
    if model == "fresnel":
        return -proj + (p2 - proj * proj) / (2.0 * rr)
    # exact: d - r = (|p|^2 - 2 r p.uhat) / (d + r), d = sqrt(r^2 - 2 r p.uhat + |p|^2)
    num = p2 - 2.0 * rr * proj
    d = jnp.sqrt(jnp.maximum(rr * rr + num, 0.0))
    return num / (d + rr)


def steering(geometry: ArrayGeometry, phi, theta, r, *, model: SteeringModel = "exact", dtype=None):
    """Steering vectors `a(phi, theta, r)`, unit modulus, no amplitude taper.

    Args:
      geometry: array geometry, positions `[N, 3]` metres.
      phi: azimuth, radians, shape `[...]` (broadcast with theta and r).
      theta: elevation, radians.
      r: range, metres (> 0).
      model: `exact` (default), `fresnel` or `far`.
      dtype: complex output dtype; default complex64 for float32 inputs, complex128 for float64.

    Returns:
      `[..., N]` complex array with `a_n = exp(-1j k delta_n)`.

    >>> from rismvdr.physics import upa, steering
    >>> g = upa(4, 4, 0.15, 0.15, wavelength=0.3)
    >>> steering(g, 0.1, 0.0, 2.0).shape
    (16,)

    Raises:
      ValueError: (concrete inputs only) non-finite `phi`/`theta`/`r`, `r <= 0`, unknown `model`.
    """
    for name, v in (("phi", phi), ("theta", theta), ("r", r)):
        check_finite(name, v)
    if is_concrete(r):
        check_positive("r", np.asarray(r))
    delta = path_difference(geometry, phi, theta, r, model=model)
    k = 2.0 * jnp.pi / jnp.asarray(geometry.wavelength, delta.dtype)
    phase = -k * delta
    a = jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
    if dtype is not None:
        a = a.astype(dtype)
    return a
