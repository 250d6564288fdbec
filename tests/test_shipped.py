"""The shipped model (`rismvdr/weights/seed`) loads on a fresh install and localizes a small test
set with the F1 recorded for it at export (`rismvdr export --record-check N`)."""
import jax
import numpy as np
import pytest

from rismvdr.eval.evaluation import evaluate_detections
from rismvdr.localize.learned import default_weights_dir, load_learned
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate


def test_shipped_model_reproduces_its_recorded_f1():
    assert (default_weights_dir() / "model.json").is_file(), "the package must ship its trained model"
    size = sum(f.stat().st_size for f in default_weights_dir().iterdir())
    assert size <= 20e6
    model = load_learned()
    check = model.info["check"]
    cfg = get_scenario(check["scenario"], **{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in check["scene_overrides"]})
    scenes = simulate(cfg, jax.random.key(check["seed"]), check["n_scenes"])
    res = localize("learned", scenes, scenario_geometry(cfg), settings_for_scenario(cfg), progress=False,
                   model=model)
    d = res.detections
    v = d.valid
    assert np.all(np.diff(v.astype(int), axis=-1) <= 0)  # valid entries first
    for x, (lo, hi) in ((d.phi, np.deg2rad(cfg.phi_deg)), (d.theta, np.deg2rad(cfg.theta_deg)), (d.r, cfg.r_m)):
        assert np.all(np.isfinite(x[v])) and np.all((x[v] >= lo - 1e-6) & (x[v] <= hi + 1e-6))
    assert np.all(np.isfinite(res.power_db))
    f1 = evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid)["f1"]
    assert f1 == pytest.approx(check["f1"]["learned"], abs=check["tolerance"])
    assert f1 >= 0.5  # a working localizer, not a collapsed one
