"""Defaults the package states once: the search box, the source cap and the slot threshold.

Every config, function signature and command-line flag that has one of these defaults reads it
from here. The module imports nothing (no JAX), so `rismvdr --help` shows the defaults without
loading the numerical stack.
"""
from __future__ import annotations

__all__ = ["PHI_RANGE_DEG", "THETA_RANGE_DEG", "R_RANGE_M", "K_MAX", "EXIST_THRESHOLD"]

#: Azimuth box (min, max), degrees: where the seed scenario draws sources and where the
#: localizers search (the front half-space's central +-60 degrees).
PHI_RANGE_DEG: tuple[float, float] = (-60.0, 60.0)
#: Elevation box (min, max), degrees (a linear array uses (0, 0)).
THETA_RANGE_DEG: tuple[float, float] = (-30.0, 30.0)
#: Range box (min, max), metres.
R_RANGE_M: tuple[float, float] = (0.5, 10.0)
#: At most this many sources per scene: the simulator's cap (and truth padding), the detector's
#: and the compressive localizer's detections, the backbone's slots.
K_MAX: int = 5
#: Existence probability a backbone slot needs to count as a source (learned methods' inference).
EXIST_THRESHOLD: float = 0.5
