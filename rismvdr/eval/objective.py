"""The end-to-end objective: one number (minimise) that ranks learned localizers.

`e2e_objective(m) = rmse_xyz_all_m / XYZ_NORM_M + F1_WEIGHT (1 - F1)` (2 m and 10: the seed's
weighting) of a metrics dict from `rismvdr.eval.evaluation.evaluate_detections`. Training ranks
its checkpoints by it (`val/objective`, on the capped validation subset); HPO's `e2e` objective
computes it with the production inference path on a fixed validation subset, `E2E_SCENES`
scenes of seed `E2E_SEED`. Seed `TEST_SEED` is the test set and is refused for tuning
(`check_validation_seed`).

>>> e2e_objective({"rmse_xyz_all_m": 1.0, "f1": 0.5})
5.5
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["XYZ_NORM_M", "F1_WEIGHT", "E2E_SCENES", "E2E_SEED", "TEST_SEED", "e2e_objective",
           "check_validation_seed"]

XYZ_NORM_M = 2.0  # metres that rmse_xyz_all is divided by
F1_WEIGHT = 10.0  # weight of 1 - F1
E2E_SCENES = 200  # scenes of the fixed end-to-end validation subset
E2E_SEED = 1  # its seed (the validation seed)
TEST_SEED = 0  # the test set's seed: never tuned on


def e2e_objective(metrics: Mapping[str, float], *, xyz_norm: float = XYZ_NORM_M,
                  f1_weight: float = F1_WEIGHT) -> float:
    """The seed's end-to-end objective (minimise): `rmse_xyz_all / xyz_norm + f1_weight (1 - F1)`.

    Args:
      metrics: `evaluate_detections` output; reads `rmse_xyz_all_m` (metres) and `f1`.
      xyz_norm: metres that the position RMSE is divided by.
      f1_weight: weight of `1 - F1`.

    Returns:
      The objective; no matched pair at all (a non-finite or missing RMSE) counts as
      `rmse_xyz_all = xyz_norm`, a non-finite or missing F1 as 0.
    """
    rmse = metrics.get("rmse_xyz_all_m", float("nan"))
    if not np.isfinite(rmse):
        rmse = xyz_norm
    f1 = metrics.get("f1", 0.0)
    f1 = 0.0 if not np.isfinite(f1) else f1
    return float(rmse / xyz_norm + f1_weight * (1.0 - f1))


def check_validation_seed(seed: int, *, name: str = "seed") -> None:
    """Raise ValueError (naming the argument `name`) when `seed` is the test set's seed."""
    if int(seed) == TEST_SEED:
        raise ValueError(f"{name}: seed {TEST_SEED} is the test set; tune on a validation seed "
                         f"(default {E2E_SEED})")
