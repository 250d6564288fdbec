"""The one method protocol of the registry.

A registered method's `make(scenes, geometry, settings, model) -> Runner` prepares everything
that is fixed for a run (grids, steering, thresholds, jitted functions); `Runner.run(batch)`
turns a scene batch `[B]` into `(Detections [B, k_max], Spectrum25D [B, T, P], extras)`, where
`extras` maps names to per-scene `[B]` arrays (MUSIC's `order`, the refiner's `fallback` flag).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from rismvdr.physics.spectra import Grid

__all__ = ["Runner"]


class Runner(NamedTuple):
    """A prepared method: `run(batch) -> (Detections, Spectrum25D, extras)` and the maps' grid."""

    run: Callable
    grid: Grid
