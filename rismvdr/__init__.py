"""rismvdr: multi-source near-field localization through a reconfigurable intelligent surface.

Public API, re-exported explicitly. Physics kernels live in `rismvdr.physics`.
"""
from rismvdr.physics import (
    ArrayGeometry,
    SCENARIOS,
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

__version__ = "0.1.0"

__all__ = [
    "ArrayGeometry", "SCENARIOS", "Scene", "SceneConfig", "from_positions", "get_scenario",
    "scenario_geometry", "simulate", "simulate_scene", "steering", "ula", "upa", "__version__",
]
