"""Localization: the one detector, the method registry and every method family.

`detect` (the detector), `registry` (methods and the `localize` batching loop), `runner` (the
method protocol), `settings`, the families `classical`, `compressive` and `learned`, and
`weights` (loading trained models without the trainer). The names below are re-exported and
imported on first use (PEP 562): the learned family and `weights` load Flax, which the other
methods never need, so `from rismvdr.localize import localize` does not import it.
"""
from rismvdr.lazy import lazy_exports

#: Public name -> the module of `rismvdr.localize` that defines it.
_SOURCES = {
    **dict.fromkeys(("DetectorConfig", "Detections", "RefinerGuard"), "rismvdr.localize.detect"),
    **dict.fromkeys(("METHODS", "LocalizationResult", "Method", "localize", "method_names"),
                    "rismvdr.localize.registry"),
    **dict.fromkeys(("Runner",), "rismvdr.localize.runner"),
    **dict.fromkeys(("GridSpec", "LocalizerSettings", "settings_for_scenario"), "rismvdr.localize.settings"),
    **dict.fromkeys(("LearnedModel", "load_learned", "default_weights_dir"), "rismvdr.localize.weights"),
}

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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _SOURCES)
