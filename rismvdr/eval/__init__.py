"""Evaluation: the metrics of conventions section 7, the CRB glue, objectives, tables and plots.

`evaluate_files(scenes_path, detections_path, ...)` scores a detections CSV against a scene
file's truth in one call (what `rismvdr evaluate` runs); `evaluate_detections` does the same
for arrays in memory. Both are imported from `rismvdr.eval.evaluation` on first use, so the
light modules of this package (`rismvdr.eval.objective`) load without JAX.
"""
import importlib

__all__ = ["evaluate_files", "evaluate_detections", "truth_crb", "scene_pssr_db"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("rismvdr.eval.evaluation"), name)
    raise AttributeError(f"module 'rismvdr.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
