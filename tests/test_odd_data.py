"""Odd inputs that a method or the evaluation must answer correctly or refuse in one line.

- A scene whose Fisher matrix is singular (two sources at one position) has an undefined CRB:
  the set's RMSE / sqrt(CRB) comes from the other scenes, and the metrics count it.
- A linear array whose line is not the y axis is refused (conventions section 1: theta is
  known only for a line along y).
- `learned-refiner` with a backbone-only model is refused, not `learned` in every scene.
- Too few measurements per snapshot (M) for the learned methods' fit and F test are refused
  before any model is loaded or traced.
"""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from rismvdr.eval import metrics
from rismvdr.eval.evaluation import evaluate_detections, truth_crb
from rismvdr.io import to_jsonable
from rismvdr.localize.learned import learned_method, learned_ml_method, make_refiner_runner, refiner_method
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.geometry import from_positions, ula, upa
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

SMALL_GRID = dict(phi_step_deg=4.0, theta_step_deg=4.0, n_planes=4)
LEARNED = ("learned", "learned-refiner", "learned-ml")
CRB_KEYS = ("sqrt_crb_phi_deg", "sqrt_crb_theta_deg", "sqrt_crb_r_m",
            "rmse_over_sqrt_crb_phi", "rmse_over_sqrt_crb_theta", "rmse_over_sqrt_crb_r")


# ------------------------------------------------------------------------------------------
# A singular Fisher matrix in one scene
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coincident():
    """Four two-source scenes; scene 0's second source sits on its first. Estimates: the truth
    moved by a fixed offset."""
    cfg = get_scenario("seed", k_min=2, k_max=2)
    geometry = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(5), 4)

    def dup(a):
        a = np.array(a)
        a[0, 1] = a[0, 0]
        return a

    scenes = dataclasses.replace(scenes, phi=dup(scenes.phi), theta=dup(scenes.theta), r=dup(scenes.r))
    est = [np.asarray(scenes.phi) + 0.01, np.asarray(scenes.theta) - 0.01, np.asarray(scenes.r) + 0.1]
    return scenes, geometry, est


def test_coincident_sources_leave_one_scene_out_of_the_crb(coincident):
    scenes, geometry, est = coincident
    valid = np.asarray(scenes.mask)
    crb = truth_crb(scenes, geometry)
    assert np.all(np.isinf(np.asarray(crb.phi)[0])) and np.all(np.isfinite(np.asarray(crb.phi)[1:]))
    ev = evaluate_detections(scenes, *est, valid, crb=crb)
    assert ev["tp"] == 8 and ev["n_scenes_crb_undefined"] == 1
    for key in CRB_KEYS:
        assert math.isfinite(ev[key]) and ev[key] > 0, key
    # The set's figures are those of the other scenes alone.
    rest = np.arange(1, 4)
    sub = scenes[rest]
    ev_rest = evaluate_detections(sub, *(a[rest] for a in est), valid[rest], crb=truth_crb(sub, geometry))
    assert ev_rest["n_scenes_crb_undefined"] == 0
    for key in CRB_KEYS:
        assert ev[key] == pytest.approx(ev_rest[key], rel=1e-12), key
    # The other numbers still count scene 0; its group reports the bound as undefined.
    assert ev["n_scenes"] == 4 and ev["rmse_phi_deg"] == pytest.approx(np.rad2deg(0.01))
    group = ev["per_k"]["2"]
    assert group["n_scenes_crb_undefined"] == 1 and group["rmse_over_sqrt_crb_r"] == ev["rmse_over_sqrt_crb_r"]
    j = json.loads(json.dumps(to_jsonable(ev), allow_nan=False))
    assert j["n_scenes_crb_undefined"] == 1


def test_undefined_scene_alone_and_per_pair():
    """Direct metrics: an `inf` or NaN bound marks its scene undefined (whole scene), a parameter
    NaN everywhere (theta of a linear array) marks none, and the pairs carry NaN bounds."""
    gt = np.zeros((3, 2)), np.zeros((3, 2)), np.array([[2.0, 5.0]] * 3)
    est = gt[0] + 0.01, gt[1], gt[2] + 0.2
    sq = np.array([[np.inf, np.inf], [0.02, 0.02], [0.01, np.nan]])  # scenes 0 and 2 undefined
    no_theta = np.full((3, 2), np.nan)
    m = metrics.evaluate(*est, *gt, sqrt_crb_phi=sq, sqrt_crb_theta=no_theta, sqrt_crb_r=np.full((3, 2), 0.1))
    assert m["n_scenes_crb_undefined"] == 2
    assert m["rmse_over_sqrt_crb_phi"] == pytest.approx(0.01 / 0.02)
    assert m["rmse_over_sqrt_crb_r"] == pytest.approx(0.2 / 0.1)  # scene 1 only, as for phi
    assert math.isnan(m["rmse_over_sqrt_crb_theta"])
    pairs = metrics.match_pairs(*est, *gt, sqrt_crb_phi=sq, sqrt_crb_r=np.full((3, 2), 0.1))
    undefined = np.isin(pairs.scene, [0, 2])
    assert np.all(np.isnan(pairs.sqrt_crb_phi[undefined])) and np.all(np.isnan(pairs.sqrt_crb_r[undefined]))
    assert np.all(np.isfinite(pairs.sqrt_crb_r[~undefined]))
    # Every scene undefined: no figure, all counted; no bound at all: nothing counted.
    all_inf = metrics.evaluate(*est, *gt, sqrt_crb_phi=np.full((3, 2), np.inf))
    assert all_inf["n_scenes_crb_undefined"] == 3 and math.isnan(all_inf["rmse_over_sqrt_crb_phi"])
    none = metrics.evaluate(*est, *gt)
    assert none["n_scenes_crb_undefined"] == 0 and math.isnan(none["rmse_over_sqrt_crb_phi"])


# ------------------------------------------------------------------------------------------
# Linear arrays off the y axis
# ------------------------------------------------------------------------------------------
_T = np.arange(5)[:, None] * 0.15


@pytest.mark.parametrize("positions,shown", [
    (_T * np.array([0.0, 0.0, 1.0]), "(0, 0, 1)"),
    (_T * np.array([0.0, 0.0, -1.0]) + np.array([0.0, 0.3, 0.1]), "(0, 0, 1)"),
    (_T * np.array([1.0, 0.0, 0.0]), "(1, 0, 0)"),
    (_T * np.array([0.0, 0.6, 0.8]), "(0, 0.6, 0.8)"),
    (np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.15]]), "(0, 0, 1)"),  # two elements: always a line
])
def test_linear_array_off_y_is_refused(positions, shown):
    with pytest.raises(ValueError, match=r"^positions: a linear array must lie along y \(conventions section 1\); "
                                         r"these elements lie along " + shown.replace("(", r"\(").replace(")", r"\)")
                                         + "$"):
        from_positions(positions, 0.3)


def test_a_column_upa_is_refused_and_lines_along_y_stay_linear():
    with pytest.raises(ValueError, match=r"^positions: a linear array must lie along y .* along \(0, 0, 1\)$"):
        upa(1, 4, 0.15, 0.15, wavelength=0.3)
    assert ula(7, 0.15, wavelength=0.3).linear and upa(4, 1, 0.15, 0.15, wavelength=0.3).linear
    shifted = _T * np.array([0.0, -1.0, 0.0]) + np.array([0.1, 0.2, 0.3])  # along y, off the origin
    assert from_positions(shifted, 0.3).linear
    assert from_positions(np.zeros((1, 3)), 0.3).linear  # one element: no direction to refuse
    assert not upa(3, 3, 0.15, 0.15, wavelength=0.3).linear


# ------------------------------------------------------------------------------------------
# Learned methods: a model without a refiner, too few measurements
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(untrained_tiny_model):
    """Untrained tiny models (no training): with and without the refiner."""
    full = untrained_tiny_model
    return full, full._replace(refiner_cfg=None, refiner_def=None, refiner_params=None)


def _setup(n_scenes=2, **overrides):
    cfg = get_scenario("seed", **overrides)
    return (simulate(cfg, jax.random.key(0), n_scenes), scenario_geometry(cfg),
            settings_for_scenario(cfg).with_grid(**SMALL_GRID))


def test_refiner_method_refuses_a_backbone_only_model(models):
    full, backbone_only = models
    scenes, geometry, settings = _setup()
    msg = r"^model: untrained tiny has no refiner; use 'learned' or a run of train-refiner$"
    with pytest.raises(ValueError, match=msg):
        localize("learned-refiner", scenes, geometry, settings, model=backbone_only, progress=False)
    with pytest.raises(ValueError, match=msg):
        make_refiner_runner(backbone_only, geometry, settings)
    refiner_method(scenes, geometry, settings, full)  # builds its runner
    learned_ml_method(scenes, geometry, settings, backbone_only)
    res = localize("learned", scenes, geometry, settings, model=backbone_only, progress=False)
    assert res.detections.valid.shape == (2, settings.detector.k_max)


def _m_min(n_snap: int, k_max: int, n_pos: int = 3) -> int:
    """Smallest M whose fit of k_max sources (a symbol per snapshot and n_pos positions each)
    leaves a residual: 2 M L > k_max (2 L + n_pos), and M > k_max."""
    m = k_max + 1
    while 2 * m * n_snap <= k_max * (2 * n_snap + n_pos):
        m += 1
    return m


@pytest.mark.parametrize("method", LEARNED)
def test_one_measurement_per_snapshot_is_refused(models, method):
    full, _ = models
    scenes, geometry, settings = _setup(n_bs=1)
    with pytest.raises(ValueError, match=r"^scenes: M = 1 measurements per snapshot \(L = 16 snapshots\).* M >= 6 "):
        localize(method, scenes, geometry, settings, model=full, progress=False)


@pytest.mark.parametrize("n_snap,k_max", [(1, 5), (1, 1), (2, 3), (16, 5), (4, 2)])
def test_too_few_measurements_for_the_fit(models, n_snap, k_max):
    """Just below the smallest M every learned method refuses (M > k_max is not enough when L is
    small: the fit would interpolate y); at it, each builds its runner."""
    full, _ = models
    m_min = _m_min(n_snap, k_max)
    for m, ok in ((m_min - 1, False), (m_min, True)):
        scenes, geometry, settings = _setup(n_bs=m, n_snapshots=n_snap)
        settings = dataclasses.replace(settings, detector=dataclasses.replace(settings.detector, k_max=k_max))
        for make in (learned_method, refiner_method, learned_ml_method):
            if ok:
                make(scenes, geometry, settings, full)
            else:
                with pytest.raises(ValueError, match=rf"^scenes: M = {m} measurements per snapshot .* M >= {m_min} "):
                    make(scenes, geometry, settings, full)
