"""Localization: the one detector, the method registry and every method family.

`detect` (the detector), `registry` (methods and the `localize` batching loop), `runner` (the
method protocol), `settings`, the families `classical`, `compressive` and `learned`, and
`weights` (loading trained models without the trainer). The names below are re-exported.
"""
from rismvdr.localize.detect import DetectorConfig, Detections, RefinerGuard
from rismvdr.localize.registry import METHODS, LocalizationResult, Method, localize, method_names
from rismvdr.localize.runner import Runner
from rismvdr.localize.settings import GridSpec, LocalizerSettings, settings_for_scenario
from rismvdr.localize.weights import LearnedModel, default_weights_dir, load_learned

__all__ = [
    "DetectorConfig",
    "Detections",
    "RefinerGuard",
    "METHODS",
    "Method",
    "LocalizationResult",
    "localize",
    "method_names",
    "Runner",
    "GridSpec",
    "LocalizerSettings",
    "settings_for_scenario",
    "LearnedModel",
    "load_learned",
    "default_weights_dir",
]
