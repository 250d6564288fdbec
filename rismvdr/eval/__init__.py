"""Evaluation: the metrics of conventions section 7, the CRB glue, objectives, tables and plots.

`evaluate_files(scenes_path, detections_path, ...)` scores a detections CSV against a scene
file's truth in one call (what `rismvdr evaluate` runs); `evaluate_detections` does the same
for arrays in memory. Both are imported from `rismvdr.eval.evaluation` on first use, so the
light modules of this package (`rismvdr.eval.objective`) load without JAX.
"""
from rismvdr.lazy import lazy_exports

__all__ = ["evaluate_files", "evaluate_detections", "truth_crb", "scene_pssr_db"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), dict.fromkeys(__all__, "rismvdr.eval.evaluation"))
