"""Array geometry: element positions in the array frame of conventions section 1.

The array lies in the y-z plane with boresight +x and the phase reference at the origin.
`ArrayGeometry` is a frozen dataclass registered as a pytree: `positions` and `wavelength`
are leaves (so a geometry can be passed through `jit`), `linear` is static metadata that
says whether elevation is identifiable (conventions section 1: a linear array cannot resolve it).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.physics._validation import check_finite, check_positive

__all__ = ["ArrayGeometry", "upa", "ula", "from_positions", "bs_ula"]


@dataclasses.dataclass(frozen=True)
class ArrayGeometry:
    """Element positions and carrier wavelength.

    Attributes:
      positions: `[N, 3]` element positions in metres (array frame, x = boresight); NumPy
        float64 when built by the constructors below, a jax array once passed through jit.
      wavelength: carrier wavelength in metres (scalar).
      linear: True when all elements lie on one line (along y: `from_positions` refuses any
        other line); elevation is then not identifiable and grids, detection and the CRB work
        on (phi, r) with theta known.
    """

    positions: jax.Array
    wavelength: jax.Array
    linear: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def n_elements(self) -> int:
        return int(self.positions.shape[-2])

    @property
    def wavenumber(self) -> jax.Array:
        """`k = 2 pi / wavelength` in rad/m."""
        return 2.0 * jnp.pi / self.wavelength

    @property
    def aperture(self) -> float:
        """Largest distance between two elements, metres (host-side, concrete geometry only)."""
        p = np.asarray(self.positions)
        return float(np.max(np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)))

    def fraunhofer_distance(self) -> float:
        """`2 D^2 / wavelength`, metres: beyond it the far-field model is accurate."""
        return 2.0 * self.aperture**2 / float(self.wavelength)

    def astype(self, dtype) -> "ArrayGeometry":
        """Same geometry with positions and wavelength in a real `dtype`."""
        if isinstance(self.positions, np.ndarray):  # keep host constants on the host
            return ArrayGeometry(self.positions.astype(dtype), np.asarray(self.wavelength, dtype), self.linear)
        return ArrayGeometry(
            jnp.asarray(self.positions, dtype), jnp.asarray(self.wavelength, dtype), self.linear
        )


jax.tree_util.register_dataclass(
    ArrayGeometry, data_fields=["positions", "wavelength"], meta_fields=["linear"]
)


#: Largest sine of the angle between a linear array and the y axis that still counts as along y.
_ALONG_Y_TOL = 1e-6


def _is_collinear(positions: np.ndarray, tol: float = 1e-9) -> bool:
    centred = positions - positions.mean(axis=0, keepdims=True)
    if positions.shape[0] < 3:
        return True
    s = np.linalg.svd(centred, compute_uv=False)
    return bool(s[1] <= tol * max(s[0], 1e-300))


def _check_along_y(positions: np.ndarray) -> None:
    """Refuse a linear array whose line is not along y (conventions section 1).

    A line resolves the cone angle to itself, which is the azimuth with elevation known only
    when the line is the y axis; along any other direction, holding theta known and searching
    (phi, r) would be wrong.
    """
    if positions.shape[0] < 2:
        return  # one element: no direction
    centred = positions - positions.mean(axis=0, keepdims=True)
    d = np.linalg.svd(centred)[2][0]  # the line's unit direction
    d = d if d[np.argmax(np.abs(d))] > 0 else -d
    if np.hypot(d[0], d[2]) > _ALONG_Y_TOL:
        shown = ", ".join(f"{v:.3g}" for v in np.round(d, 3) + 0.0)
        raise ValueError(f"positions: a linear array must lie along y (conventions section 1); these elements lie "
                         f"along ({shown})")


def from_positions(positions, wavelength: float) -> ArrayGeometry:
    """Geometry from user positions, taken as they are (no re-centring).

    Args:
      positions: `[N, 3]` element positions in metres.
      wavelength: carrier wavelength in metres, > 0.

    Raises:
      ValueError: naming `positions` or `wavelength` if shapes or values are invalid, or if the
        elements lie on one line that is not along y (conventions section 1: a linear array
        lies along y, with elevation known).
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 1:
        raise ValueError(f"positions: expected shape [N, 3] with N >= 1, got {p.shape}")
    check_finite("positions", p)
    check_positive("wavelength", wavelength)
    if p.shape[0] > 1:
        d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        if np.min(d) <= 0:
            raise ValueError("positions: two elements share the same position")
    linear = _is_collinear(p)
    if linear:
        _check_along_y(p)
    # Host (NumPy) leaves: constants under any trace, moved to the device when used.
    return ArrayGeometry(p, np.asarray(float(wavelength)), linear)


def upa(nh: int, nv: int, spacing_h: float, spacing_v: float, *, wavelength: float) -> ArrayGeometry:
    """Uniform planar array in the y-z plane, centred at the origin.

    Element `n = v * nh + h` sits at `y = (h - (nh - 1)/2) * spacing_h`,
    `z = (v - (nv - 1)/2) * spacing_v` (metres).
    """
    if int(nh) < 1 or int(nv) < 1:
        raise ValueError(f"nh, nv: expected >= 1, got {nh}, {nv}")
    check_positive("spacing_h", spacing_h)
    check_positive("spacing_v", spacing_v)
    h = np.arange(nh) - (nh - 1) / 2.0
    v = np.arange(nv) - (nv - 1) / 2.0
    vv, hh = np.meshgrid(v, h, indexing="ij")  # [nv, nh]: element n = v * nh + h
    pos = np.stack(
        [np.zeros(nh * nv), hh.reshape(-1) * spacing_h, vv.reshape(-1) * spacing_v], axis=-1
    )
    return from_positions(pos, wavelength)


def ula(n: int, spacing: float, *, wavelength: float) -> ArrayGeometry:
    """Uniform linear array along y, centred at the origin (`linear=True`)."""
    if int(n) < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    check_positive("spacing", spacing)
    y = (np.arange(n) - (n - 1) / 2.0) * spacing
    pos = np.stack([np.zeros(n), y, np.zeros(n)], axis=-1)
    return from_positions(pos, wavelength)


def bs_ula(n: int, spacing: float, distance: float, azimuth: float, elevation: float) -> np.ndarray:
    """Element positions of a base-station ULA facing the surface (conventions section 9).

    The centre sits at `distance * [cos(el) cos(az), cos(el) sin(az), sin(el)]` from the surface's
    origin; the axis is horizontal and perpendicular to that direction, `[-sin(az), cos(az), 0]`,
    so the array is broadside to the surface's centre. Element `m` is at
    `centre + (m - (n - 1) / 2) * spacing * axis`.

    Args:
      n: number of elements (M), >= 1.
      spacing: element spacing, metres, > 0.
      distance: metres, > 0.
      azimuth, elevation: radians.

    Returns:
      `[n, 3]` float64 positions, metres.
    """
    if int(n) < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    check_positive("spacing", spacing)
    check_positive("distance", distance)
    ce = np.cos(elevation)
    centre = distance * np.array([ce * np.cos(azimuth), ce * np.sin(azimuth), np.sin(elevation)])
    axis = np.array([-np.sin(azimuth), np.cos(azimuth), 0.0])
    offsets = (np.arange(int(n)) - (int(n) - 1) / 2.0) * float(spacing)
    return centre[None, :] + offsets[:, None] * axis[None, :]
