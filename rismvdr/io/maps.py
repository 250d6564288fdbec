"""Maps files (`rismvdr localize --maps-out`): the 2.5D maps of a localization run.

An `.npz` with `MAP_KEYS`, written atomically (`atomic_write`):

| key | dtype, shape | meaning |
|---|---|---|
| `power_db` | float `[S, n_theta, n_phi]` | plane-maximised spectrum, dB |
| `plane` | integer `[S, n_theta, n_phi]` | the range plane (index into `grid_r`) of each maximum |
| `grid_phi` | float64 `[n_phi]` | azimuth grid, radians, increasing |
| `grid_theta` | float64 `[n_theta]` | elevation grid, radians, increasing |
| `grid_r` | float64 `[n_planes]` | range planes, metres, > 0 |

`read_maps` reads it with the scene files' guards (`allow_pickle=False`, every member's
header checked against the bytes it holds).
"""
from __future__ import annotations

import os

import numpy as np

from rismvdr.io.atomic import atomic_write
from rismvdr.io.scenes import _npz_members
from rismvdr.physics.spectra import Grid

__all__ = ["MAP_KEYS", "write_maps", "read_maps"]

#: Keys of a maps file, in the order they are written.
MAP_KEYS = ("power_db", "plane", "grid_phi", "grid_theta", "grid_r")


def write_maps(path, power_db, plane, grid: Grid) -> None:
    """Write the 2.5D maps of a localization run as an `.npz` (atomic).

    Args:
      path: output file.
      power_db: `[S, n_theta, n_phi]` plane-maximised spectrum, dB.
      plane: `[S, n_theta, n_phi]` integer, the range plane of each maximum.
      grid: the search grid (written as `grid_phi` `[n_phi]` rad, `grid_theta` `[n_theta]` rad,
        `grid_r` `[n_planes]` m).
    """
    phi, theta, r = grid.arrays()
    with atomic_write(path, "wb") as f:
        np.savez(f, power_db=power_db, plane=plane, grid_phi=phi, grid_theta=theta, grid_r=r)


def read_maps(path) -> tuple[np.ndarray, np.ndarray, Grid]:
    """Read a maps file of `write_maps`: `(power_db, plane, grid)`.

    Raises:
      ValueError: one line naming the file (and the key): not an `.npz` archive (empty, another
        format, a member whose header declares more data than it holds), a key missing, or
        maps that do not lie on their grid (`power_db` and `plane` `[S, n_theta, n_phi]` with
        the grid's lengths, `plane` an index into `grid_r`, the angles finite and increasing, the
        ranges > 0).
    """
    path = os.fspath(path)

    def fail(key, problem):
        where = f"{path}: key '{key}'" if key is not None else path
        raise ValueError(f"{where}: {problem}")

    z = _npz_members(path, fail)
    for key in MAP_KEYS:
        if key not in z:
            fail(key, "missing (write it with localize --maps-out)")
    axes = {}
    for key in ("grid_phi", "grid_theta", "grid_r"):
        a = z[key]
        if a.ndim != 1 or a.size < 1 or a.dtype.kind not in "fiu" or not np.all(np.isfinite(a)):
            fail(key, f"expected a non-empty 1-D array of finite numbers, got {a.dtype} {list(a.shape)}")
        if key != "grid_r" and a.size > 1 and not np.all(np.diff(a) > 0):
            fail(key, "not increasing")
        axes[key] = a
    n_theta, n_phi, n_r = axes["grid_theta"].size, axes["grid_phi"].size, axes["grid_r"].size
    power_db, plane = z["power_db"], z["plane"]
    for key, a in (("power_db", power_db), ("plane", plane)):
        if a.ndim != 3 or a.shape[1:] != (n_theta, n_phi):
            fail(key, f"shape {list(a.shape)} does not fit the file's grid: expected [S, {n_theta}, {n_phi}] "
                      "(n_theta from grid_theta, n_phi from grid_phi)")
    if power_db.dtype.kind != "f":
        fail("power_db", f"expected floats (dB), got {power_db.dtype}")
    if plane.shape != power_db.shape:
        fail("plane", f"shape {list(plane.shape)} differs from power_db's {list(power_db.shape)}")
    if plane.dtype.kind not in "iu" or (plane.size and (plane.min() < 0 or plane.max() >= n_r)):
        fail("plane", f"expected integer indices into grid_r (0..{n_r - 1})")
    if np.any(axes["grid_r"] <= 0):
        fail("grid_r", f"ranges must be > 0 m, got min {float(axes['grid_r'].min())}")
    grid = Grid(tuple(axes["grid_phi"].tolist()), tuple(axes["grid_theta"].tolist()), tuple(axes["grid_r"].tolist()))
    return power_db, plane, grid
