"""rismvdr: multi-source near-field localization through a reconfigurable intelligent surface.

The public API, re-exported from the layers that define it:

- physics (`rismvdr.physics`): `ArrayGeometry`, `upa`, `ula`, `from_positions`, `steering`,
  `SceneConfig`, `SCENARIOS`, `get_scenario`, `scenario_geometry`, `Gates`, `Scene`,
  `simulate`, `simulate_scene`;
- localization (`rismvdr.localize`): `localize`, the registry `METHODS` / `method_names`,
  `LocalizerSettings`, `settings_for_scenario`, `DetectorConfig`, `Detections`,
  `LocalizationResult`, `load_learned`, `LearnedModel`;
- files (`rismvdr.io`): `load_scenes`, `save_scenes`, `scenes_from_file`,
  `scene_file_from_scenes`, `write_detections_csv`, `read_detections_csv`;
- evaluation (`rismvdr.eval`): `evaluate_files`, `evaluate_detections`, `truth_crb`.

Each name is imported from its module when it is first used (PEP 562), so `import rismvdr`
(and `rismvdr --help`) does not load JAX. Training (`rismvdr.train`), the HPO (`rismvdr.hpo`)
and the benchmarks (`rismvdr.bench`) are imported from their packages.

Docstrings cite the project's conventions (frames, models, scenarios, metrics, files) as
"conventions section N": the sections of the Conventions page of the documentation
(`docs/conventions.md`).

>>> import jax, rismvdr
>>> cfg = rismvdr.get_scenario("seed", k_min=1, k_max=1, snr_db=(20.0, 20.0))
>>> scenes = rismvdr.simulate(cfg, jax.random.key(0), 2)
>>> res = rismvdr.localize("mvdr-oracle", scenes, rismvdr.scenario_geometry(cfg),
...                        rismvdr.settings_for_scenario(cfg), progress=False)
>>> int(res.detections.valid.sum()) >= 2
True
"""
import importlib
import sys
import types

#: Public name -> the module that defines it.
_SOURCES = {
    # physics
    **dict.fromkeys(("ArrayGeometry", "from_positions", "ula", "upa", "steering", "SCENARIOS", "SceneConfig",
                     "get_scenario", "scenario_geometry", "Scene", "simulate", "simulate_scene"), "rismvdr.physics"),
    "Gates": "rismvdr.physics.scenarios",
    # localization
    **dict.fromkeys(("METHODS", "method_names", "localize", "LocalizationResult", "LocalizerSettings",
                     "settings_for_scenario", "DetectorConfig", "Detections", "LearnedModel", "load_learned"),
                    "rismvdr.localize"),
    # files
    **dict.fromkeys(("load_scenes", "save_scenes", "scenes_from_file", "scene_file_from_scenes",
                     "write_detections_csv", "read_detections_csv"), "rismvdr.io"),
    # evaluation
    **dict.fromkeys(("evaluate_files", "evaluate_detections", "truth_crb"), "rismvdr.eval.evaluation"),
}

__all__ = [*_SOURCES, "__version__"]


def __getattr__(name: str):
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # deferred: read once, on first use

        try:
            globals()["__version__"] = version("rismvdr")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            globals()["__version__"] = "0+unknown"
        return globals()["__version__"]
    raise AttributeError(f"module 'rismvdr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module: a public name that is also a subpackage's name (`localize`) stays the
    public function when the import system binds the subpackage to it on its first import."""

    def __setattr__(self, name: str, value) -> None:
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return  # the subpackage stays reachable as sys.modules["rismvdr.<name>"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
