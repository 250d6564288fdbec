"""The method registry and the shared `localize` pipeline: every registered method on small RIS
and full-array batches, mode checks, count caps, batch-size independence, settings, and the
oracle's F1 bar on the seed test set.

Cost note: each method compiles its own operator build and detector (a few seconds on CPU), so
the smoke runs use a 2-deg x 2-deg x 8-plane grid, 6 scenes, and are computed once per module
(`runs`). The F1 bar uses the seed's settings (1-deg grid, 16 planes); the 1000-scene bar is
marked `slow`.
"""
import numpy as np
import pytest

import jax

from rismvdr.localize.detect import DetectorConfig, Detections
from rismvdr.eval.evaluation import evaluate_detections
from rismvdr.localize.registry import METHODS, LocalizerSettings, localize, method_names, settings_for_scenario
from rismvdr.physics.scenarios import Gates, get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

DEG = np.pi / 180.0
N_SMOKE = 6
SMALL = dict(phi_step_deg=2.0, theta_step_deg=2.0, n_planes=8)
MODES = ("seed", "full")


def applies(method, mode):
    m = METHODS[method]
    if m.learned and mode == "full":  # the shipped model was trained for the RIS-mode seed scenario
        return False
    return not (m.full_array_only and mode == "seed") and not (m.ris_only and mode == "full")


@pytest.fixture(scope="module")
def seed_scenes():
    """The seed test set (scenario `seed`, key 0): its first 16 scenes."""
    return simulate(get_scenario("seed"), 0, 16)


@pytest.fixture(scope="module")
def data(seed_scenes):
    full_cfg = get_scenario("full")
    return {
        "seed": (get_scenario("seed"), seed_scenes[:N_SMOKE]),
        "full": (full_cfg, simulate(full_cfg, jax.random.key(1, impl="unsafe_rbg"), N_SMOKE)),
    }


@pytest.fixture(scope="module")
def runs(data):
    """Memoised `localize(method, scenes of mode)` on the small grid."""
    cache = {}

    def run(method, mode):
        if (method, mode) not in cache:
            cfg, scenes = data[mode]
            settings = settings_for_scenario(cfg).with_grid(**SMALL)
            cache[method, mode] = localize(method, scenes, scenario_geometry(cfg), settings, progress=False)
        return cache[method, mode]

    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_through_localize(method, mode, data, runs):
    cfg, scenes = data[mode]
    if METHODS[method].learned and applies(method, mode):
        pytest.skip("learned methods: tests/test_learned.py (CLI, tiny model) and tests/test_shipped.py")
    if not applies(method, mode):
        with pytest.raises(ValueError, match="method|trained for"):
            localize(method, scenes, scenario_geometry(cfg), settings_for_scenario(cfg).with_grid(**SMALL),
                     progress=False)
        return
    res = runs(method, mode)
    det = res.detections
    k_max = DetectorConfig().k_max
    assert isinstance(det, Detections)
    for x in det:
        assert isinstance(x, np.ndarray) and x.shape == (N_SMOKE, k_max)
    v = det.valid
    assert v.dtype == bool
    assert np.all(np.diff(v.astype(int), axis=-1) <= 0)  # valid first
    for name in ("phi", "theta", "r", "score_db"):
        assert np.all(np.isfinite(getattr(det, name)[v])), name
    eps = 1e-6  # inside the search box (the scenario's box)
    for x, (lo, hi) in ((det.phi, np.deg2rad(cfg.phi_deg)), (det.theta, np.deg2rad(cfg.theta_deg)),
                        (det.r, cfg.r_m)):
        assert np.all((x[v] >= lo - eps) & (x[v] <= hi + eps))
    t, p, _ = res.grid.shape
    assert res.power_db.shape == res.plane.shape == (N_SMOKE, t, p)
    # The registry says on which grid a method's maps are (the speed bench labels them by it).
    settings = settings_for_scenario(cfg).with_grid(**SMALL).with_search_default(METHODS[method].search)
    linear = scenario_geometry(cfg).linear
    grids = {"search": settings.search_grids(linear)[0], "dictionary": settings.dictionary_grid(linear)}
    assert res.grid == grids[METHODS[method].maps_grid]
    assert np.all(np.isfinite(res.power_db))
    assert res.seconds > 0


def test_method_names_by_mode():
    assert set(method_names()) == set(METHODS)
    assert all(applies(m, "full") for m in method_names(full_array=True) if not METHODS[m].learned)
    assert all(applies(m, "seed") for m in method_names(full_array=False))
    assert "mvdr-sample" not in method_names(full_array=False)
    assert not {"mvdr-ridge", "mvdr-mf"} & set(method_names(full_array=True))
    assert not any(METHODS[m].needs_truth for m in method_names(with_truth=False))


def test_unknown_method_raises(data):
    cfg, scenes = data["seed"]
    with pytest.raises(ValueError, match="method"):
        localize("capon-9000", scenes, scenario_geometry(cfg), progress=False)


@pytest.mark.parametrize("mode", MODES)
def test_music_oracle_k_never_exceeds_true_k(mode, data, runs):
    _, scenes = data[mode]
    res = runs("music-oracle-k", mode)
    true_k = np.asarray(scenes.n_sources)
    assert np.all(res.detections.count <= true_k)
    np.testing.assert_array_equal(res.order, true_k)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["music-mdl", "music-aic"])
def test_music_counts_within_estimated_order(method, mode, runs):
    res = runs(method, mode)
    assert res.order is not None and res.order.shape == (N_SMOKE,)
    assert np.all((res.order >= 0) & (res.order <= DetectorConfig().k_max))
    assert np.all(res.detections.count <= res.order)


def test_non_music_methods_report_no_order(runs):
    assert runs("mvdr-als", "seed").order is None


# localize across batch sizes (complex64 scenes): absolute tolerance per output. Different batch
# shapes compile different kernels; float32 rounding through eigh and the Newton refinement moves
# detections by up to ~2e-4 rad and ~3 mm (measured), far below the detection gates.
BATCH_TOL = {"phi": 1e-3, "theta": 1e-3, "r": 2e-2, "score_db": 2e-2}


def test_results_do_not_depend_on_batch_size(data):
    """Batches of 4 (the last one padded: 4 + 2) and of 8 (one batch of 6) give the same result.

    MUSIC with the true K in full-array mode: a cheap build (the ALS build alone compiles for
    seconds) that also carries the per-scene order through the batches.
    """
    cfg, scenes = data["full"]
    geo = scenario_geometry(cfg)
    out = [localize("music-oracle-k", scenes, geo, settings_for_scenario(cfg, batch_size=bs).with_grid(**SMALL),
                    progress=False) for bs in (4, 8)]
    a, b = out[0].detections, out[1].detections
    np.testing.assert_array_equal(a.valid, b.valid)
    v = a.valid
    assert v.sum() > 0
    for name, tol in BATCH_TOL.items():
        np.testing.assert_allclose(getattr(a, name)[v], getattr(b, name)[v], rtol=0, atol=tol, err_msg=name)
    np.testing.assert_allclose(out[0].power_db, out[1].power_db, atol=BATCH_TOL["score_db"])
    np.testing.assert_array_equal(out[0].order, out[1].order)


def test_settings_for_scenario_copies_box_and_gates():
    cfg = get_scenario("seed", phi_deg=(-40.0, 30.0), theta_deg=(-10.0, 20.0), r_m=(1.0, 6.0),
                       gate_phi_deg=3.0, gate_theta_deg=4.0, gate_r_m=0.5, steering_model="fresnel")
    s = settings_for_scenario(cfg, batch_size=3).with_grid(n_planes=8)
    assert (s.search.phi_deg, s.search.theta_deg, s.search.r_m) == (cfg.phi_deg, cfg.theta_deg, cfg.r_m)
    d = s.detector
    assert d.gates == Gates.from_deg(3.0, 4.0, 0.5) == cfg.gates
    assert s.steering_model == "fresnel"
    assert (s.search.n_planes, s.batch_size) == (8, 3)  # overrides pass through
    assert s.estimator == LocalizerSettings().estimator  # the rest: defaults
    phi, theta, r = s.grid().arrays()
    np.testing.assert_allclose([phi[0], phi[-1]], np.deg2rad(cfg.phi_deg))
    np.testing.assert_allclose([theta[0], theta[-1]], np.deg2rad(cfg.theta_deg))
    np.testing.assert_allclose([r.min(), r.max()], cfg.r_m)
    # the seed scenario gives the seed's settings
    seed = settings_for_scenario(get_scenario("seed"))
    assert seed.grid().shape == (61, 121, 16)
    d = seed.detector
    assert d.gates == Gates.from_deg(5.0, 5.0, 1.0)


def oracle_f1(scenes):
    cfg = get_scenario("seed")
    res = localize("mvdr-oracle", scenes, scenario_geometry(cfg), settings_for_scenario(cfg), progress=False)
    d = res.detections
    return evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid)


def test_mvdr_oracle_f1_on_16_seed_scenes(seed_scenes):
    m = oracle_f1(seed_scenes)
    assert m["f1"] >= 0.9, m["f1"]


@pytest.mark.slow
def test_mvdr_oracle_f1_on_the_1000_scene_seed_set():
    m = oracle_f1(simulate(get_scenario("seed"), 0, 1000))
    assert m["f1"] >= 0.95, m["f1"]
