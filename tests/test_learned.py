"""Learned methods end to end (tiny config): train -> checkpoint -> localize through the CLI,
the refiner stage, export/load, guardrails, and the physics steps the learned path uses
(range scan, ML from a starting point)."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.cli import main
from rismvdr.localize.detect import RefinerGuard
from rismvdr.localize.learned import default_weights_dir, load_learned, refiner_map_ok
from rismvdr.models.refiner import RefinerConfig
from rismvdr.physics.compressive import (
    CompressiveConfig,
    dictionary,
    f_thresholds,
    ml_from_start,
    range_scan,
    scene_operators,
)
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.physics.spectra import make_grid, grid_steering
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


def test_refiner_config_reads_the_shipped_record():
    record = json.loads((default_weights_dir() / "model.json").read_text())["refiner"]
    cfg = RefinerConfig.from_dict(record)
    assert cfg.to_dict() == record
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


def test_ml_from_start_refines_and_adds_missing_source():
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
    phi, theta, r, mask, f = jax.jit(lambda *a: ml_from_start(sc.y, E, D, norms, coords, thr, geo, grid, *a, ccfg))(
        phi0, th0, r0, m0)
    assert int(jnp.sum(mask)) == 3
    est = np.stack([np.asarray(phi)[np.asarray(mask)], np.asarray(theta)[np.asarray(mask)]], -1)
    for k in range(3):
        dist = np.min(np.abs(est - np.array([float(sc.phi[k]), float(sc.theta[k])])).max(-1))
        assert dist < np.deg2rad(0.1)
