"""rismvdr: multi-source near-field localization through a reconfigurable intelligent surface.

The public API, re-exported explicitly from the layers that define it:

- physics (`rismvdr.physics`): `ArrayGeometry`, `upa`, `ula`, `from_positions`, `steering`,
  `SceneConfig`, `SCENARIOS`, `get_scenario`, `scenario_geometry`, `Gates`, `Scene`,
  `simulate`, `simulate_scene`;
- localization (`rismvdr.localize`): `localize`, the registry `METHODS` / `method_names`,
  `LocalizerSettings`, `settings_for_scenario`, `DetectorConfig`, `Detections`,
  `LocalizationResult`, `load_learned`, `LearnedModel`;
- files (`rismvdr.files`): `load_scenes`, `save_scenes`, `scenes_from_file`,
  `scene_file_from_scenes`, `write_detections_csv`, `read_detections_csv`;
- evaluation (`rismvdr.eval`): `evaluate_detections`, `truth_crb`.

Training (`rismvdr.train`), the HPO (`rismvdr.hpo`) and the benchmarks (`rismvdr.bench`) are
imported from their packages.

>>> import jax, rismvdr
>>> cfg = rismvdr.get_scenario("seed", k_min=1, k_max=1, snr_db=(20.0, 20.0))
>>> scenes = rismvdr.simulate(cfg, jax.random.key(0), 2)
>>> res = rismvdr.localize("mvdr-oracle", scenes, rismvdr.scenario_geometry(cfg),
...                        rismvdr.settings_for_scenario(cfg), progress=False)
>>> int(res.detections.valid.sum()) >= 2
True
"""
from rismvdr.eval.evaluation import evaluate_detections, truth_crb
from rismvdr.files import (
    load_scenes,
    read_detections_csv,
    save_scenes,
    scene_file_from_scenes,
    scenes_from_file,
    write_detections_csv,
)
from rismvdr.localize import (
    METHODS,
    DetectorConfig,
    Detections,
    LearnedModel,
    LocalizationResult,
    LocalizerSettings,
    load_learned,
    localize,
    method_names,
    settings_for_scenario,
)
from rismvdr.physics import (
    SCENARIOS,
    ArrayGeometry,
    Scene,
    SceneConfig,
    from_positions,
    get_scenario,
    scenario_geometry,
    simulate,
    simulate_scene,
    steering,
    ula,
    upa,
)
from rismvdr.physics.scenarios import Gates

__version__ = "0.1.0"

__all__ = [
    # physics
    "ArrayGeometry", "from_positions", "ula", "upa", "steering",
    "SCENARIOS", "SceneConfig", "get_scenario", "scenario_geometry", "Gates",
    "Scene", "simulate", "simulate_scene",
    # localization
    "METHODS", "method_names", "localize", "LocalizationResult", "LocalizerSettings", "settings_for_scenario",
    "DetectorConfig", "Detections", "LearnedModel", "load_learned",
    # files
    "load_scenes", "save_scenes", "scenes_from_file", "scene_file_from_scenes", "write_detections_csv",
    "read_detections_csv",
    # evaluation
    "evaluate_detections", "truth_crb",
    "__version__",
]
