"""Physics kernels: geometry, steering, simulation, covariance estimators, spectra.

Pure functions of arrays plus frozen config/geometry pytrees; jittable and vmappable.
"""
from rismvdr.physics.geometry import ArrayGeometry, from_positions, ula, upa
from rismvdr.physics.scenarios import SCENARIOS, SceneConfig, get_scenario, scenario_geometry
from rismvdr.physics.simulate import Scene, simulate, simulate_scene, stack_scenes
from rismvdr.physics.steering import STEERING_MODELS, path_difference, steering, unit_direction

__all__ = [
    "ArrayGeometry", "from_positions", "ula", "upa",
    "SCENARIOS", "SceneConfig", "get_scenario", "scenario_geometry",
    "Scene", "simulate", "simulate_scene", "stack_scenes",
    "STEERING_MODELS", "path_difference", "steering", "unit_direction",
]
