"""The one method protocol of the registry.

A registered method's `make(scenes, geometry, settings, model) -> Runner` prepares everything
that is fixed for a run (grids, steering, thresholds, jitted functions); `Runner.run(batch)`
turns a scene batch `[B]` into `(Detections [B, k_max], Spectrum25D [B, T, P], extras)`, where
`extras` maps names to per-scene `[B]` arrays (MUSIC's `order`, the refiner's `fallback` flag).
`single_device_sharding` places a run's arrays on one device.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from rismvdr.physics.spectra import Grid

__all__ = ["Runner", "single_device_sharding"]


class Runner(NamedTuple):
    """A prepared method: `run(batch) -> (Detections, Spectrum25D, extras)` and the maps' grid."""

    run: Callable
    grid: Grid


def single_device_sharding(device) -> jax.sharding.Sharding:
    """The sharding that places an array on `device` alone (`jax.sharding.make_single_device_sharding`
    where jax has it; its `SingleDeviceSharding` class is deprecated from jax 0.12)."""
    make = getattr(jax.sharding, "make_single_device_sharding", None)
    return make(device) if make is not None else jax.sharding.SingleDeviceSharding(device)
