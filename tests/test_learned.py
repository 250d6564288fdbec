"""Learned methods end to end (tiny config): train -> checkpoint -> localize through the CLI,
the refiner stage, export/load, guardrails, and the physics steps the learned path uses
(range scan, ML from a starting point)."""
import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.cli import main
from rismvdr.eval.evaluation import evaluate_detections, truth_crb
from rismvdr.io import load_scenes, scenes_from_file
from rismvdr.localize.compressive import (
    add_candidates,
    compressive_context,
    continue_batch,
    localize_from_start,
    polish_batch,
    polish_thresholds,
    rescan_batch,
)
from rismvdr.localize.detect import RefinerGuard
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.scenarios import Gates
from rismvdr.localize.learned import (
    default_weights_dir,
    learned_detector,
    load_learned,
    matched_filter_factor,
    refiner_grid,
    refiner_inputs,
    refiner_map_ok,
)
from rismvdr.models.refiner import REFINER_INPUTS, RefinerConfig
from rismvdr.physics.compressive import (
    CompressiveConfig,
    apply_operators,
    atom_scores,
    backprojected_scores,
    dictionary,
    f_thresholds,
    ls_fit,
    ml_from_start,
    ml_polish,
    ml_rescan,
    range_scan,
    scene_operators,
)
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.physics.spectra import make_grid, grid_steering
from rismvdr.physics.steering import steering
from rismvdr.train.checkpoint import restore_run
from rismvdr.train.export import export_model

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny backbone and refiner trained through the CLI, plus a small scene file."""
    base = tmp_path_factory.mktemp("learned")
    # One device: the 8 simulated CPU devices of the test session share 2 cores, and a run
    # sharded over them is slow there (sharding itself is tested in test_train.py).
    assert main(["train", "--config", TINY, "--workdir", str(base / "bb"), "-q", "--devices", "1"]) == 0
    assert main(["train-refiner", "--backbone", str(base / "bb"), "--workdir", str(base / "rf"), "-q",
                 "--set", "steps=2", "--devices", "1"]) == 0
    assert main(["simulate", "--scenes", "6", "--seed", "7", "--out", str(base / "s.npz")]) == 0
    return base


def _csv_rows(path):
    return Path(path).read_text().strip().splitlines()


@pytest.mark.slow  # trains a tiny backbone and refiner through the CLI: minutes on 2 cores (make test-slow)
@pytest.mark.parametrize("method,ckpt", [("learned", "bb"), ("learned-refiner", "rf"), ("learned-ml", "bb")])
def test_localize_learned_through_cli(run, method, ckpt, capsys):
    out = run / f"{method}.csv"
    rc = main(["localize", str(run / "s.npz"), "--method", method, "--checkpoint", str(run / ckpt),
               "--out", str(out), "-q", "--phi-step-deg", "4", "--theta-step-deg", "4", "--planes", "4"])
    assert rc == 0
    rows = _csv_rows(out)
    assert rows[0].startswith("scene,phi_deg,theta_deg,r_m")
    assert main(["evaluate", str(run / "s.npz"), str(out), "--out", str(run / f"{method}.json"), "--no-crb"]) == 0
    m = json.loads((run / f"{method}.json").read_text())
    assert m["n_scenes"] == 6 and 0.0 <= m["f1"] <= 1.0
    if method == "learned-refiner":
        assert "refiner map rejected in" in capsys.readouterr().out


@pytest.mark.slow  # trains a tiny backbone and refiner through the CLI: minutes on 2 cores (make test-slow)
def test_finishing_flags_through_cli(run, capsys):
    """`--no-polish` / `--residual-passes` / `--no-map-threshold` / `--range-rescan` / `--map-refine` /
    `--continuation` reach `LearnedSettings`: the CLI's rows equal the library's with the same settings (and
    `--no-polish` is the detector's output, not the polished one); `learned-ml` refuses
    `--continuation backbone`."""
    sf = load_scenes(run / "s.npz")
    scenes = scenes_from_file(sf)
    model = load_learned(run / "bb")
    base = settings_for_scenario(get_scenario("seed")).with_grid(phi_step_deg=4, theta_step_deg=4, n_planes=4)
    grid_flags = ["--phi-step-deg", "4", "--theta-step-deg", "4", "--planes", "4"]
    rows = {}
    for name, flags, learned in (("raw", ["--no-polish"], dict(polish=False)),
                                 ("polish", ["--residual-passes", "0"], dict(residual_passes=0)),
                                 ("every-peak", ["--no-map-threshold"], dict(map_threshold=False)),
                                 ("rescan", ["--range-rescan", "24"], dict(range_rescan=24)),
                                 ("map-refine", ["--map-refine"], dict(map_refine=True)),
                                 ("continuation", ["--continuation", "backprojection"],
                                  dict(continuation="backprojection"))):
        out = run / f"finish-{name}.csv"
        assert main(["localize", str(run / "s.npz"), "--method", "learned", "--checkpoint", str(run / "bb"),
                     "--out", str(out), "-q", *grid_flags, *flags]) == 0
        rows[name] = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)
        settings = base.replace(learned=dataclasses.replace(base.learned, **learned))
        d = localize("learned", scenes, sf.geometry(), settings, progress=False, keep_maps=False,
                     model=model).detections
        v = np.asarray(d.valid)
        assert len(rows[name]) == v.sum(), name
        np.testing.assert_allclose(np.sort(rows[name][:, 1]), np.sort(np.rad2deg(np.asarray(d.phi)[v])), atol=1e-3)
        assert np.allclose(np.sort(rows[name][:, 7]), np.sort(np.asarray(d.score_db)[v]), atol=1e-2), name
    # the scores differ in kind: the detector's map in dB against each source's F statistic in dB
    assert not (len(rows["raw"]) == len(rows["polish"]) and np.allclose(rows["raw"][:, 7], rows["polish"][:, 7]))
    capsys.readouterr()
    assert main(["localize", str(run / "s.npz"), "--method", "learned-ml", "--checkpoint", str(run / "bb"),
                 "--out", str(run / "never.csv"), "-q", "--continuation", "backbone"]) == 2
    assert "--continuation backbone: learned-ml is learned with" in capsys.readouterr().err
    assert not (run / "never.csv").exists()


def test_learned_detector_threshold_and_refinement_follow_the_finishing_stage():
    base = settings_for_scenario(get_scenario("seed"))
    assert base.learned.map_threshold and not base.learned.map_refine and base.detector.refine
    # the default: the map's threshold, the grid peaks unrefined (the polish refines them)
    assert learned_detector(base) == dataclasses.replace(base.detector, refine=False)
    for polish, map_threshold, map_refine, mode, refine in (
            (True, False, False, "none", False), (True, True, True, base.detector.threshold_mode, True),
            (True, False, True, "none", True),
            (False, False, False, base.detector.threshold_mode, True),
            (False, True, False, base.detector.threshold_mode, True)):
        s = base.replace(learned=dataclasses.replace(base.learned, polish=polish, map_threshold=map_threshold,
                                                     map_refine=map_refine))
        det = learned_detector(s)
        assert (det.threshold_mode, det.refine) == (mode, refine)
        assert dataclasses.replace(det, threshold_mode=base.detector.threshold_mode, refine=True) == base.detector
    # --no-refine (the detector's own switch) wins over map_refine
    off = base.replace(detector=dataclasses.replace(base.detector, refine=False),
                       learned=dataclasses.replace(base.learned, map_refine=True))
    assert not learned_detector(off).refine


def test_checkpoint_errors(run, tmp_path):
    assert main(["localize", str(run / "s.npz"), "--method", "learned", "--checkpoint", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["localize", str(run / "s.npz"), "--method", "mvdr-als", "--checkpoint", str(run / "bb"),
                 "--out", str(tmp_path / "x.csv")]) == 2


def test_export_round_trip(run, tmp_path):
    m = load_learned(run / "rf", step="latest")
    assert m.has_refiner and m.info["stage"] == "refiner"
    export_model(m, tmp_path / "exp")
    m2 = load_learned(tmp_path / "exp")
    assert m2.backbone_cfg == m.backbone_cfg and m2.refiner_cfg == m.refiner_cfg
    for a, b in zip(m.backbone_params + m.refiner_params, m2.backbone_params + m2.refiner_params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert main(["export", str(run / "bb"), "--out", str(tmp_path / "exp2"), "--step", "latest"]) == 0
    assert not load_learned(tmp_path / "exp2").has_refiner


@pytest.mark.parametrize("step", ["best", "latest"])
def test_run_loader_matches_the_trainers_checkpointer(run, step):
    """Inference reads run directories through Orbax without the trainer; it restores the same
    step, record and weights as the trainer's own `restore_run` ("best" falls back to latest)."""
    m = load_learned(run / "bb", step=step)
    try:
        state, config, metrics = restore_run(run / "bb" / "checkpoints", step=step)
    except FileNotFoundError:  # no step with a finite validation objective
        state, config, metrics = restore_run(run / "bb" / "checkpoints", step="latest")
    assert m.info == {**config, "metrics": metrics}
    for a, b in zip(m.backbone_params, state["train"]["ema"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # trains a tiny backbone and refiner through the CLI: minutes on 2 cores (make test-slow)
def test_refiner_with_the_measurements_map_trains_exports_and_localizes(run, tmp_path):
    """A refiner reading two maps (R_blend's MVDR and the measurements' Bartlett) goes through
    training, checkpoint, export and `learned-refiner` like the one-map refiner."""
    assert main(["train-refiner", "--backbone", str(run / "bb"), "--workdir", str(tmp_path / "rf2"), "-q",
                 "--set", "steps=2", "--set", "refiner.inputs=('blend', 'bartlett')", "--devices", "1"]) == 0
    m = load_learned(tmp_path / "rf2", step="latest")
    assert m.refiner_cfg.inputs == ("blend", "bartlett")
    export_model(m, tmp_path / "exp")
    assert load_learned(tmp_path / "exp").refiner_cfg == m.refiner_cfg
    out = tmp_path / "det.csv"
    assert main(["localize", str(run / "s.npz"), "--method", "learned-refiner", "--checkpoint", str(tmp_path / "exp"),
                 "--out", str(out), "-q", "--phi-step-deg", "4", "--theta-step-deg", "4", "--planes", "4"]) == 0
    assert _csv_rows(out)[0].startswith("scene,phi_deg,theta_deg,r_m")


def test_refiner_config_inputs():
    assert RefinerConfig().inputs == ("blend",) and set(REFINER_INPUTS) == {"blend", "bartlett"}
    cfg = RefinerConfig(inputs=["bartlett", "blend"])
    assert cfg.inputs == ("bartlett", "blend") and RefinerConfig.from_dict(cfg.to_dict()) == cfg
    assert RefinerConfig.from_dict({"widths": [8, 16]}).inputs == ("blend",)  # records before the field
    for bad in ((), ("blend", "blend"), ("samp",), "music"):
        with pytest.raises(ValueError, match="^refiner.inputs"):
            RefinerConfig(inputs=bad)


@pytest.fixture(scope="module")
def small_batch():
    """Three RIS-mode scenes and one full-array scene batch of the seed scenario (complex128)."""
    ris = simulate(get_scenario("seed", dtype="complex128"), 11, 3)
    full = simulate(get_scenario("full", dtype="complex128"), 12, 2)
    return ris, full


def _backprojected_numpy(sc):
    """`[B, N, L]` back-projected snapshots `G_l^H y_l` (NumPy), scaled to `sum |z|^2 = N`."""
    y = np.asarray(sc.y)
    if sc.H is None:
        z = np.swapaxes(y, -1, -2)
    else:
        H, c = np.asarray(sc.H), np.asarray(sc.codes)
        z = np.stack([np.stack([np.conj(c[b, l]) * (H[b].conj().T @ y[b, l]) for l in range(y.shape[1])], axis=-1)
                      for b in range(y.shape[0])])
    n = z.shape[1]
    return z * np.sqrt(n / np.sum(np.abs(z) ** 2, axis=(1, 2), keepdims=True))


def test_matched_filter_factor_is_the_backprojected_snapshots(small_batch):
    for sc in small_batch:  # RIS mode and full-array mode
        np.testing.assert_allclose(np.asarray(matched_filter_factor(sc)), _backprojected_numpy(sc), rtol=0, atol=1e-10)


def test_refiner_inputs_bartlett_channel_matches_numpy(run, small_batch):
    """The "bartlett" channel: max over range planes of `10 log10(sum_l |a^H z_l|^2 / N)` on the
    coarse grid (NumPy, float64); the "blend" channel is the map the one-map refiner reads."""
    ris, _ = small_batch
    model = load_learned(run / "bb")  # the tiny backbone (seed geometry): cheap to apply
    rcfg = RefinerConfig(grid_phi=7, grid_theta=5, planes=3, inputs=("blend", "bartlett"))
    db, op = refiner_inputs(model, rcfg, ris, delta_rel=1e-2)
    assert db.shape == (3, 5, 7, 2) and db.dtype == jnp.float32
    bcfg = model.backbone_cfg
    a = np.asarray(grid_steering(bcfg.geometry(), refiner_grid(bcfg, rcfg), dtype=jnp.complex128))  # [T, P, R, N]
    z = _backprojected_numpy(ris)  # [B, N, L]
    n = a.shape[-1]
    want = np.max(np.sum(np.abs(np.einsum("tprn,bnl->btprl", a.conj(), z)) ** 2, axis=-1) / n, axis=-1)
    np.testing.assert_allclose(np.asarray(db[..., 1]), 10 * np.log10(want), rtol=0, atol=1e-4)  # float32 dB
    one, op1 = refiner_inputs(model, dataclasses.replace(rcfg, inputs=("blend",)), ris, delta_rel=1e-2)
    np.testing.assert_array_equal(np.asarray(one[..., 0]), np.asarray(db[..., 0]))
    np.testing.assert_array_equal(np.asarray(op1.W), np.asarray(op.W))


def test_refiner_config_reads_the_shipped_record():
    record = json.loads((default_weights_dir() / "model.json").read_text())["refiner"]
    cfg = RefinerConfig.from_dict(record)
    assert cfg.to_dict() == {"inputs": ["blend"], **record}  # a record without `inputs` reads the one map
    assert load_learned().refiner_cfg == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        RefinerConfig.from_dict({**record, "width": 3})


def test_refiner_guardrails():
    g = RefinerGuard()
    rng = np.random.default_rng(0)
    good = np.full((41, 61), 0.01, np.float32)
    good[10, 20] = 0.9
    assert bool(refiner_map_ok(jnp.asarray(good), g))
    assert not bool(refiner_map_ok(jnp.full((41, 61), 0.3, jnp.float32), g))  # flat
    bad = good.copy()
    bad[0, 0] = np.nan
    assert not bool(refiner_map_ok(jnp.asarray(bad), g))  # non-finite
    sat = good.copy()
    sat[:10] = 0.999
    assert not bool(refiner_map_ok(jnp.asarray(sat), g))  # saturated
    noisy = rng.uniform(0, 0.4, (41, 61)).astype(np.float32)
    assert not bool(refiner_map_ok(jnp.asarray(noisy), RefinerGuard(max_local_maxima=50)))  # too many maxima


def _noise_free(k, seed):
    cfg = get_scenario("seed", k_min=k, k_max=k, snr_db=(60.0, 60.0), dtype="complex128")
    sc = simulate(cfg, seed, 1)[0]
    geo = scenario_geometry(cfg)
    E = scene_operators(sc.H, sc.codes, cfg.n_snapshots, cfg.n_elements, sc.y.dtype)
    return cfg, sc, geo, E


def test_range_scan_recovers_range_noise_free():
    cfg, sc, geo, E = _noise_free(2, 3)
    inv_r = jnp.linspace(1.0 / 10.0, 1.0 / 0.5, 96)
    r0 = jnp.full(sc.r.shape, 3.0)
    r = range_scan(sc.y, E, geo, sc.phi, sc.theta, r0, sc.mask, inv_r)
    # each source's range against the others at their (wrong) start ranges: within a scan cell
    du = float(inv_r[1] - inv_r[0])
    err_u = np.abs(1.0 / np.asarray(r) - 1.0 / np.asarray(sc.r))
    assert np.all(err_u < du), (np.asarray(r), np.asarray(sc.r))


@pytest.mark.parametrize("picks", ["dictionary", "backprojection"])
def test_ml_from_start_refines_and_adds_missing_source(picks):
    cfg, sc, geo, E = _noise_free(3, 11)
    grid = make_grid(cfg.phi_deg, cfg.theta_deg, cfg.r_m, phi_step_deg=4.0, theta_step_deg=4.0, n_planes=6)
    a_flat = grid_steering(geo, grid, dtype=jnp.complex128).reshape(-1, cfg.n_elements)
    ccfg = CompressiveConfig(k_max=5, ml_iters=15)
    thr = f_thresholds(cfg.n_bs, cfg.n_snapshots, 5, a_flat.shape[0], ccfg)
    D = dictionary(E, a_flat)
    norms = jnp.sum(jnp.abs(D) ** 2, axis=1)
    phi_g, th_g, r_g = grid.arrays()
    t, p, rr = grid.shape
    coords = (jnp.asarray(np.broadcast_to(phi_g[None, :, None], (t, p, rr)).reshape(-1)),
              jnp.asarray(np.broadcast_to(th_g[:, None, None], (t, p, rr)).reshape(-1)),
              jnp.asarray(np.broadcast_to(r_g[None, None, :], (t, p, rr)).reshape(-1)))
    # start: sources 0 and 1 slightly off, source 2 missing
    d = np.deg2rad(0.8)
    phi0 = jnp.asarray(np.r_[np.asarray(sc.phi[:2]) + d, 0.0, 0.0, 0.0])
    th0 = jnp.asarray(np.r_[np.asarray(sc.theta[:2]) - d, 0.0, 0.0, 0.0])
    r0 = jnp.asarray(np.r_[np.asarray(sc.r[:2]) * 1.05, 5.0, 5.0, 5.0])
    m0 = jnp.asarray([True, True, False, False, False])
    scores = functools.partial(backprojected_scores, sc.H, sc.codes, a_flat) if picks == "backprojection" else None
    phi, theta, r, mask, f = jax.jit(lambda *a: ml_from_start(sc.y, E, D, norms, coords, thr, geo, grid, *a, ccfg,
                                                              scores=scores))(phi0, th0, r0, m0)
    assert int(jnp.sum(mask)) == 3
    est = np.stack([np.asarray(phi)[np.asarray(mask)], np.asarray(theta)[np.asarray(mask)]], -1)
    for k in range(3):
        dist = np.min(np.abs(est - np.array([float(sc.phi[k]), float(sc.theta[k])])).max(-1))
        assert dist < np.deg2rad(0.1)


POLISH_ANGLE_DEG = 0.01  # noise-free (60 dB, complex128): the ML lands on the truth
POLISH_RANGE_M = 1e-3


def test_ml_polish_refines_the_sources_and_drops_a_spurious_start():
    cfg, sc, geo, E = _noise_free(3, 11)
    grid = make_grid(cfg.phi_deg, cfg.theta_deg, cfg.r_m, phi_step_deg=2.0, theta_step_deg=2.0, n_planes=8)
    ccfg = CompressiveConfig(k_max=5, ml_iters=30)
    thr = f_thresholds(cfg.n_bs, cfg.n_snapshots, 5, int(np.prod(grid.shape)), ccfg)
    d = np.deg2rad(0.8)
    # sources 0..2 off by 0.8 deg and 5 % in range, a spurious start far from every source first
    spur = (np.deg2rad(-55.0), np.deg2rad(25.0), 9.0)
    phi0 = jnp.asarray(np.r_[spur[0], np.asarray(sc.phi[:3]) + d, 0.0])
    th0 = jnp.asarray(np.r_[spur[1], np.asarray(sc.theta[:3]) - d, 0.0])
    r0 = jnp.asarray(np.r_[spur[2], np.asarray(sc.r[:3]) * 1.05, 5.0])
    m0 = jnp.asarray([True, True, True, True, False])
    phi, theta, r, mask, f, e = jax.jit(lambda *a: ml_polish(sc.y, E, geo, grid, *a, thr, ccfg))(phi0, th0, r0, m0)
    mask = np.asarray(mask)
    assert mask.sum() == 3, np.asarray(f)
    assert np.all(np.asarray(f)[mask] > thr[2]) and np.all(np.isinf(np.asarray(f)[~mask]))
    for k in range(3):
        j = np.argmin(np.where(mask, np.abs(np.asarray(phi) - float(sc.phi[k])), np.inf))
        assert abs(float(phi[j]) - float(sc.phi[k])) < np.deg2rad(POLISH_ANGLE_DEG)
        assert abs(float(theta[j]) - float(sc.theta[k])) < np.deg2rad(POLISH_ANGLE_DEG)
        assert abs(float(r[j]) - float(sc.r[k])) < POLISH_RANGE_M
    # the residual is the measurements minus the fit: at 60 dB about 1e-6 of their energy
    assert float(jnp.sum(jnp.abs(e) ** 2)) < 1e-5 * float(jnp.sum(jnp.abs(sc.y) ** 2))


def test_ml_rescan_leaves_a_wrong_range_basin():
    """Directions right, one range far off (60 dB): the range search and the polish from it land
    on the optimum the ML started at the truth reaches, and the new fit is kept."""
    cfg, sc, geo, E = _noise_free(2, 5)
    grid = make_grid(cfg.phi_deg, cfg.theta_deg, cfg.r_m, phi_step_deg=2.0, theta_step_deg=2.0, n_planes=8)
    ccfg = CompressiveConfig(k_max=5, ml_iters=30, ml_early_stop=False)
    thr = f_thresholds(cfg.n_bs, cfg.n_snapshots, 5, int(np.prod(grid.shape)), ccfg)
    mask = jnp.asarray([True, True, False, False, False])
    pad = lambda x, fill: jnp.concatenate([x[:2], jnp.full((3,), fill, x.dtype)])  # noqa: E731
    phi0, th0 = pad(sc.phi, 0.0), pad(sc.theta, 0.0)
    r_true = np.asarray(sc.r[:2])
    r0 = pad(jnp.asarray(np.r_[9.5 if r_true[0] < 5 else 1.0, r_true[1]]), 1.0)
    _, e0 = ls_fit(apply_operators(E, steering(geo, phi0, th0, r0, dtype=sc.y.dtype).T), sc.y, mask)
    inv_r = jnp.linspace(1.0 / 10.0, 1.0 / 0.5, 96)
    phi, theta, r, m, f, e, kept = ml_rescan(sc.y, E, geo, grid, phi0, th0, r0, mask, e0, thr, ccfg, inv_r)
    assert bool(kept) and int(jnp.sum(m)) == 2
    pt, tt, rt, _, _, et = ml_polish(sc.y, E, geo, grid, phi0, th0, pad(sc.r, 1.0), mask, thr, ccfg)
    for k in range(2):
        j = int(np.argmin(np.where(np.asarray(m), np.abs(np.asarray(phi) - float(sc.phi[k])), np.inf)))
        assert abs(float(r[j]) - float(rt[k])) < 1e-5, (np.asarray(r), np.asarray(rt))  # the same optimum
        assert abs(float(phi[j]) - float(pt[k])) < 1e-7 and abs(float(theta[j]) - float(tt[k])) < 1e-7
        assert abs(float(r[j]) - r_true[k]) < 3 * POLISH_RANGE_M  # and it is the truth's (60 dB)
    np.testing.assert_allclose(float(jnp.sum(jnp.abs(e) ** 2)), float(jnp.sum(jnp.abs(et) ** 2)), rtol=1e-6)
    assert float(jnp.sum(jnp.abs(e) ** 2)) < 1e-5 * float(jnp.sum(jnp.abs(sc.y) ** 2))


@pytest.mark.slow  # a batch of rescans on the seed scenario (make test-slow)
def test_rescan_batch_never_explains_less_and_keeps_the_sources():
    """On noisy scenes started near the truth (directions 0.5 deg off, ranges 30 % off), the kept
    fit per scene has no more residual energy and no fewer sources than the given one; and
    `points` below 3 is refused."""
    cfg = get_scenario("seed", k_min=2, k_max=3)
    sc = simulate(cfg, 21, 6)
    geo = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg)
    thr = polish_thresholds(settings, geo, cfg.n_bs, cfg.n_snapshots)
    k = settings.detector.k_max
    pad = lambda x, fill: jnp.concatenate([x, jnp.full(x.shape[:1] + (k - x.shape[1],), fill, x.dtype)], 1)  # noqa: E731
    d = np.deg2rad(0.5)
    phi0, th0 = pad(jnp.where(sc.mask, sc.phi + d, 0.0), 0.0), pad(jnp.where(sc.mask, sc.theta - d, 0.0), 0.0)
    r0, m0 = pad(jnp.where(sc.mask, sc.r * 1.3, 1.0), 1.0), pad(sc.mask, False)
    res, resid = polish_batch(sc.y, sc.H, sc.codes, thr, geo, settings, phi0, th0, r0, m0)  # the start: a polished fit
    out, e, kept = rescan_batch(sc.y, sc.H, sc.codes, thr, geo, settings, res, resid, points=48)
    rss0, rss1 = (np.sum(np.abs(np.asarray(x)) ** 2, axis=(1, 2)) for x in (resid, e))
    assert np.all(rss1 <= rss0 * (1 + 1e-6)) and np.all(np.asarray(out.valid).sum(1) >= np.asarray(res.valid).sum(1))
    np.testing.assert_allclose(np.asarray(out.rss), rss1, rtol=1e-4)
    same = ~np.asarray(kept)
    np.testing.assert_array_equal(np.asarray(out.phi)[same], np.asarray(res.phi)[same])
    with pytest.raises(ValueError, match="^points"):
        rescan_batch(sc.y, sc.H, sc.codes, thr, geo, settings, res, resid, points=2)


@pytest.mark.parametrize("full_array", [False, True])
def test_backprojected_scores_match_numpy(full_array):
    """`sum_l |a_g^H G_l^H r_l|^2` against a NumPy float64 double loop; in full-array mode (G = I,
    every atom of norm N) it is N times the dictionary's normalised `atom_scores`."""
    rng = np.random.default_rng(4)
    l, m, n, g = 5, 6, 9, 13
    cplx = lambda *shape: rng.standard_normal(shape) + 1j * rng.standard_normal(shape)  # noqa: E731
    a = np.exp(1j * rng.uniform(-np.pi, np.pi, (g, n)))
    if full_array:
        H = codes = None
        E, m = np.eye(n, dtype=complex)[None], n
    else:
        H, codes = cplx(m, n), np.exp(1j * rng.uniform(-np.pi, np.pi, (l, n)))
        E = H[None] * codes[:, None, :]  # G_l = H diag(c_l)
    resid = cplx(l, m)
    ref = np.array([sum(abs(np.vdot(a[j], E[min(i, E.shape[0] - 1)].conj().T @ resid[i])) ** 2 for i in range(l))
                    for j in range(g)])
    jx = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
    got = np.asarray(backprojected_scores(jx(H), jx(codes), jnp.asarray(a), jnp.asarray(resid)))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    if full_array:
        D = dictionary(jnp.asarray(E), jnp.asarray(a))
        norms = jnp.sum(jnp.abs(D) ** 2, axis=1)
        np.testing.assert_allclose(got, n * np.asarray(atom_scores(D, norms, jnp.asarray(resid))), rtol=1e-12)


@pytest.mark.parametrize("scenario", ["seed", pytest.param("full", marks=pytest.mark.slow)])  # full: L = 64
def test_continue_batch_adds_the_missing_source_and_stops(scenario):
    """60 dB scenes of 3 sources (RIS mode and full-array mode), fitted with 2 (the third missing):
    the continuation adds the third at the truth and nothing more; a complete fit comes back with
    the same sources; the residual and `rss` are those of the returned fit."""
    cfg = get_scenario(scenario, k_min=3, k_max=3, snr_db=(60.0, 60.0))
    sc = simulate(cfg, 13, 4)
    geo = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg)
    thr = polish_thresholds(settings, geo, sc.y.shape[-1], sc.y.shape[-2])  # M measurements, L snapshots
    a_flat = compressive_context(settings, geo, sc).a_flat
    k = settings.detector.k_max
    pad = lambda x, fill: jnp.concatenate([x, jnp.full(x.shape[:1] + (k - x.shape[1],), fill, x.dtype)], 1)  # noqa: E731
    two = jnp.arange(3) < 2
    res, _ = polish_batch(sc.y, sc.H, sc.codes, thr, geo, settings, pad(sc.phi, 0.0), pad(sc.theta, 0.0),
                          pad(sc.r, 1.0), pad(sc.mask & two[None], False))
    assert np.all(np.asarray(res.valid).sum(1) == 2)
    out, e = continue_batch(sc.y, sc.H, sc.codes, a_flat, thr, geo, settings, res)
    assert np.all(np.asarray(out.valid).sum(1) == 3)
    for s in range(sc.y.shape[0]):
        v = np.asarray(out.valid[s])
        for j in range(3):
            d = np.abs(np.asarray(out.phi[s])[v] - float(sc.phi[s, j])) + np.abs(np.asarray(out.theta[s])[v]
                                                                               - float(sc.theta[s, j]))
            assert np.min(d) < np.deg2rad(0.05), (s, j)
    np.testing.assert_allclose(np.asarray(out.rss), np.sum(np.abs(np.asarray(e)) ** 2, axis=(1, 2)), rtol=1e-4)
    assert np.all(np.asarray(out.rss) < 1e-4 * np.sum(np.abs(np.asarray(sc.y)) ** 2, axis=(1, 2)))
    again, _ = continue_batch(sc.y, sc.H, sc.codes, a_flat, thr, geo, settings, out)
    np.testing.assert_array_equal(np.asarray(again.valid).sum(1), 3)
    np.testing.assert_allclose(np.sort(np.asarray(again.phi)[np.asarray(again.valid)]),
                               np.sort(np.asarray(out.phi)[np.asarray(out.valid)]), atol=1e-6)


def test_learned_ml_is_learned_with_the_ml_continuation(run):
    """`learned-ml` = `learned` with `LearnedSettings.continuation` "backprojection" (same
    detections on the same map search); the continuation's choices are checked;
    `localize_from_start` refuses an unknown `picks`."""
    scenes = scenes_from_file(load_scenes(run / "s.npz"))
    model = load_learned(run / "bb")
    geo = scenario_geometry(get_scenario("seed"))
    base = settings_for_scenario(get_scenario("seed")).with_grid(phi_step_deg=4, theta_step_deg=4, n_planes=4,
                                                                 search="coarse-to-fine")
    ml = localize("learned-ml", scenes, geo, base, progress=False, model=model).detections
    s = base.replace(learned=dataclasses.replace(base.learned, continuation="backprojection"))
    ref = localize("learned", scenes, geo, s, progress=False, model=model).detections
    for a, b in zip(ml, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="continuation"):
        dataclasses.replace(base.learned, continuation="dictionary")
    ctx = compressive_context(base, geo, scenes)
    z = jnp.zeros(scenes.y.shape[:1] + (5,))
    with pytest.raises(ValueError, match="^picks"):
        localize_from_start(scenes.y, scenes.H, scenes.codes, ctx.a_flat, ctx.thresholds, geo, ctx.grid, ctx.cfg,
                            z, z, z + 1.0, z > 0, picks="somp")


def test_add_candidates_fills_free_slots_in_order_and_skips_known_sources():
    g = Gates.from_deg(5.0, 5.0, 1.0)
    deg = np.deg2rad
    phi, theta, r = (jnp.asarray(x) for x in ([deg(10.0), deg(-20.0), 0.0], [0.0, deg(5.0), 0.0], [2.0, 4.0, 1.0]))
    mask = jnp.asarray([True, True, False])
    # candidate 0 sits on source 0 (skipped), candidate 1 is new, candidate 2 does not exist
    cphi, cth, cr = (jnp.asarray(x) for x in ([deg(12.0), deg(40.0), deg(-50.0)], [deg(1.0), deg(-10.0), 0.0],
                                              [2.5, 6.0, 3.0]))
    cmask = jnp.asarray([True, True, False])
    p, t, rr, m = add_candidates(phi, theta, r, mask, cphi, cth, cr, cmask, g)
    np.testing.assert_array_equal(np.asarray(m), [True, True, True])
    np.testing.assert_allclose(np.asarray(p), [deg(10.0), deg(-20.0), deg(40.0)])
    np.testing.assert_allclose(np.asarray(rr), [2.0, 4.0, 6.0])
    # no free slot: the sources stay as they are
    p, _, _, m = add_candidates(phi, theta, r, jnp.asarray([True, True, True]), cphi, cth, cr, cmask, g)
    np.testing.assert_allclose(np.asarray(p), np.asarray(phi))
    assert bool(jnp.all(m))


LEARNED_CRB_FACTOR = 3.0  # the target for the shipped model: azimuth RMSE / sqrt(CRB), K = 1, 25 dB


@pytest.mark.slow  # 100 scenes of the learned method: about a minute on 2 cores (make test-slow)
def test_shipped_learned_is_near_the_crb_single_source_25db():
    cfg = get_scenario("seed", k_min=1, k_max=1, snr_db=(25.0, 25.0))
    scenes = simulate(cfg, 5, 100)
    geo = scenario_geometry(cfg)
    det = localize("learned", scenes, geo, settings_for_scenario(cfg), progress=False, keep_maps=False).detections
    ev = evaluate_detections(scenes, det.phi, det.theta, det.r, det.valid, crb=truth_crb(scenes, geo))
    assert ev["recall"] >= 0.95
    assert ev["rmse_over_sqrt_crb_phi"] <= LEARNED_CRB_FACTOR, ev["rmse_over_sqrt_crb_phi"]


@pytest.mark.parametrize("search", ["full", "coarse-to-fine"])
@pytest.mark.parametrize("continuation", ["backbone", "backprojection"])
@pytest.mark.parametrize("map_refine", [False, True])
def test_the_learned_detector_refines_coarse_peaks_unless_the_ml_continuation_follows(search, continuation,
                                                                                      map_refine):
    """`learned_detector`: the map's peaks are refined when `map_refine` says so, and always under
    a coarse-to-fine search unless the greedy ML continuation (`learned-ml`) follows the polish."""
    base = settings_for_scenario(get_scenario("seed")).with_grid(search=search)
    s = base.replace(learned=dataclasses.replace(base.learned, continuation=continuation, map_refine=map_refine))
    refined = map_refine or (search == "coarse-to-fine" and continuation == "backbone")
    assert learned_detector(s).refine is refined
    off = s.replace(learned=dataclasses.replace(s.learned, polish=False))
    assert learned_detector(off) == off.detector  # no finishing stage: the detector as it is
