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


def test_the_backbone_alone_is_the_shipped_backbone():
    """`load_learned(refiner=False)` (what every learned method but `learned-refiner` loads) is the
    shipped model without its refiner: the same backbone, weights and record."""
    from rismvdr.localize.registry import METHODS

    full, alone = load_learned(), load_learned(refiner=False)
    assert full.has_refiner and not alone.has_refiner and alone.refiner_cfg is None
    assert alone.backbone_cfg == full.backbone_cfg and alone.info == full.info
    assert len(alone.backbone_params) == len(full.backbone_params)
    for a, b in zip(alone.backbone_params, full.backbone_params):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [m.name for m in METHODS.values() if m.refiner] == ["learned-refiner"]
    assert all(m.learned for m in METHODS.values() if m.refiner)


def test_the_shipped_model_is_read_without_building_its_network():
    """The exported model's definitions are deferred (`DeferredDef`): equal for equal configs,
    built on first use, and the file's arrays fit them (count, shapes, dtypes); arrays that do
    not fit are refused naming the first one."""
    from rismvdr.models.config import DeferredDef
    from rismvdr.models.params import abstract_def

    model = load_learned()
    for cfg, mdef, params in ((model.backbone_cfg, model.backbone_def, model.backbone_params),
                              (model.refiner_cfg, model.refiner_def, model.refiner_params)):
        assert isinstance(mdef, DeferredDef) and mdef == DeferredDef(cfg) and hash(mdef) == hash(DeferredDef(cfg))
        mdef.check(params)
        ref = abstract_def(cfg)[1]
        assert [(p.shape, p.dtype) for p in params] == [(r.shape, r.dtype) for r in ref]
        with pytest.raises(ValueError, match=f"weights: {len(params) - 1} arrays, the model has {len(params)}"):
            mdef.check(params[:-1])
        bad = list(params)
        bad[2] = np.zeros(bad[2].shape + (1,), np.float32)
        with pytest.raises(ValueError, match="weights: array 2 has shape"):
            mdef.module(bad)
        bad[2] = np.zeros(params[2].shape, np.float64)
        with pytest.raises(ValueError, match="weights: array 2 has dtype float64, the model expects float32"):
            mdef.apply(bad)
