"""Training machinery: 8 devices == 1 device, exact resume, NaN steps skipped, SIGTERM saves,
overfitting a small pool, configs and overrides."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rismvdr.eval.objective import e2e_objective
from rismvdr.localize.weights import load_learned
from rismvdr.models.backbone import BackboneConfig
from rismvdr.train.config import (
    REFINER_PHASES,
    LossWeights,
    Phase,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
    weights_at,
)
from rismvdr.train.trainer import Trainer, fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def tiny():
    return load_config(TINY)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_config_round_trip_and_overrides(tiny):
    assert TrainConfig.from_dict(tiny.to_dict()) == tiny
    assert from_dict(to_dict(tiny)) == tiny  # the old module-level spelling
    cfg = apply_overrides(tiny, ["optim.lr=1e-4", "model.widths=(4,4,4)", "steps=9", "scene.snr_db=(10,10)"])
    assert cfg.optim.lr == 1e-4 and cfg.model.widths == (4, 4, 4) and cfg.steps == 9
    assert cfg.scene_config().snr_db == (10.0, 10.0)
    for bad, match in (("optim.nope=1", "unknown field"), ("steps=abc", "integer"), ("optim=3", "section"),
                       ("scene.bogus=1", "bogus"), ("noequals", "key=value")):
        with pytest.raises(ValueError, match=match):
            apply_overrides(tiny, [bad])


def test_shipped_records_load():
    """The shipped model's flat backbone record and its training config read back unchanged, and
    the training config's `model` section builds exactly that backbone."""
    record = json.loads((ROOT / "rismvdr" / "weights" / "seed" / "model.json").read_text())
    shipped = BackboneConfig.from_dict(record["backbone"])
    assert shipped.to_dict() == record["backbone"]
    train = TrainConfig.from_dict(record["train"])
    assert train.to_dict()["model"] == record["train"]["model"]
    assert train.backbone_config() == shipped
    cfg = apply_overrides(train, ["model.widths=(16,32,64,64)", "model.beta=0.25"])
    assert cfg.backbone_config().widths == (16, 32, 64, 64) and cfg.backbone_config().beta == 0.25


@pytest.mark.slow  # several tiny training runs: about a minute on 2 cores (make test-slow)
def test_stage_is_chosen_once_with_its_backbone(tiny):
    """The stage comes from `cfg.stage`: Stage 2 needs the frozen backbone, Stage 1 refuses one."""
    assert Trainer(tiny, n_devices=1).stage.method == "learned"
    with pytest.raises(ValueError, match="needs a trained backbone"):
        Trainer(tiny.replace(stage="refiner", phases=REFINER_PHASES), n_devices=1)
    backbone = load_learned(ROOT / "rismvdr" / "weights" / "seed")
    with pytest.raises(ValueError, match="trains its own backbone"):
        Trainer(tiny, n_devices=1, backbone=backbone)


def test_phase_weights(tiny):
    cfg = tiny.replace(steps=10, phases=(Phase("a", 0.3, LossWeights(cov=1.0)), Phase("b", 1.0, LossWeights(cov=2.0))))
    assert weights_at(cfg, 0)[1].cov == 1.0 and weights_at(cfg, 2)[1].cov == 1.0
    assert weights_at(cfg, 3)[1].cov == 2.0 and weights_at(cfg, 9) == (1, cfg.phases[1].weights)


def test_e2e_objective():
    assert e2e_objective({"rmse_xyz_all_m": 1.0, "f1": 0.5}) == pytest.approx(0.5 + 5.0)
    assert e2e_objective({"rmse_xyz_all_m": float("nan"), "f1": float("nan")}) == pytest.approx(11.0)


@pytest.mark.slow  # several tiny training runs: about a minute on 2 cores (make test-slow)
def test_eight_devices_match_one(tiny):
    """Data parallel over 8 simulated CPU devices gives the loss and gradients of 1 device."""
    assert len(jax.devices()) >= 8
    cfg = tiny.replace(batch_size=8)
    one, eight = Trainer(cfg, n_devices=1), Trainer(cfg, n_devices=8)
    l1, t1, g1 = one.loss_and_grads(one.params0, 3)
    l8, t8, g8 = eight.loss_and_grads(jax.device_put(eight.params0, eight.rep), 3)
    np.testing.assert_allclose(float(l8), float(l1), rtol=2e-5)
    for k in t1:
        np.testing.assert_allclose(float(t8[k]), float(t1[k]), rtol=2e-5, atol=1e-7)
    for a, b in zip(_leaves(g8), _leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5 * max(1.0, float(np.abs(b).max())))
    with pytest.raises(ValueError, match="multiple"):
        Trainer(cfg.replace(batch_size=12), n_devices=8)


@pytest.mark.slow  # several tiny training runs: about a minute on 2 cores (make test-slow)
def test_resume_equals_straight_run(tiny, tmp_path):
    cfg = tiny.replace(val_peak_scenes=0)
    a = fit(cfg, tmp_path / "straight", n_devices=1, progress=False)
    b1 = fit(cfg, tmp_path / "resumed", n_devices=1, progress=False, stop_at=4)
    assert b1["steps"] == 4 and b1["status"] == "stopped early"
    with pytest.raises(ValueError, match="already holds"):
        fit(cfg, tmp_path / "resumed", n_devices=1, progress=False)
    with pytest.raises(ValueError, match="differs"):
        fit(cfg.replace(seed=5), tmp_path / "resumed", resume=True, n_devices=1, progress=False)
    b2 = fit(cfg, tmp_path / "resumed", resume=True, n_devices=1, progress=False)
    assert a["steps"] == b2["steps"] == cfg.steps
    from rismvdr.train.checkpoint import restore_run

    sa, _, _ = restore_run(tmp_path / "straight" / "checkpoints", "latest")
    sb, _, _ = restore_run(tmp_path / "resumed" / "checkpoints", "latest")
    for x, y in zip(_leaves(sa), _leaves(sb)):
        np.testing.assert_array_equal(x, y)
    lines = [json.loads(s) for s in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/cov" in r for r in lines) and any("loss" in r for r in lines)
    assert (tmp_path / "straight" / "loss_curve.png").stat().st_size > 1000


def test_nan_step_is_skipped_and_counted(tiny, tmp_path):
    cfg = tiny.replace(val_peak_scenes=0, debug_nan_steps=(2,), steps=4, eval_every=4, checkpoint_every=4)
    out = fit(cfg, tmp_path / "nan", n_devices=1, progress=False)
    assert out["status"] == "done" and out["steps"] == 4 and out["skipped"] == 1
    recs = [json.loads(s) for s in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if "finite" in r}
    assert train[3]["finite"] is False and train[3]["skipped"] == 1 and train[4]["finite"] is True
    from rismvdr.train.checkpoint import restore_run

    state, _, _ = restore_run(tmp_path / "nan" / "checkpoints", "latest")
    assert all(np.all(np.isfinite(x)) for x in _leaves(state))


@pytest.mark.slow  # several tiny training runs: about a minute on 2 cores (make test-slow)
def test_overfit_small_pool(tiny, tmp_path):
    """64 fixed scenes: the training loss falls at least 10x (first step against the mean of
    the last 10)."""
    cfg = tiny.replace(train_pool=64, batch_size=16, steps=300, eval_every=10**6, checkpoint_every=10**6,
                       val_peak_scenes=0, val_scenes=8, log_every=1,
                       phases=(Phase("all", 1.0, LossWeights(cov=0.0, subspace=0.0, aux=0.0)),))
    cfg = apply_overrides(cfg, ["optim.lr=1e-2", "optim.warmup_steps=10", "optim.weight_decay=0.0",
                                "model.widths=(16,16,16)"])
    fit(cfg, tmp_path / "overfit", n_devices=1, progress=False)
    recs = [json.loads(s) for s in (tmp_path / "overfit" / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in recs if "loss" in r]
    assert len(loss) == 300
    assert np.mean(loss[-10:]) < loss[0] / 10, (loss[0], loss[-10:])


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    work = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "rismvdr.cli", "train", "--config", str(TINY), "--workdir", str(work), "-q",
           "--set", "steps=100000", "--set", "eval_every=100000", "--set", "checkpoint_every=100000",
           "--set", "val_peak_scenes=0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = work / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.5)
    assert metrics.exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by signal" in out
    from rismvdr.train.checkpoint import Checkpointer

    with Checkpointer(work / "checkpoints", read_only=True) as c:
        assert c.latest_step() is not None and c.latest_step() >= 1


# --- fine-tuning: Stage 1 started from a trained backbone ------------------------------------
def test_init_from_starts_stage1_from_the_given_backbone(monkeypatch, untrained_tiny_model):
    import rismvdr.train.trainer as trainer_mod
    from rismvdr.configs.tiny import get_config

    # a "trained" model: the untrained one with every leaf shifted, so a copy is recognisable
    shifted = untrained_tiny_model._replace(backbone_params=tuple(p + 0.5 for p in untrained_tiny_model.backbone_params),
                                            source="a trained tiny model")
    monkeypatch.setattr(trainer_mod, "load_learned", lambda path=None, **kw: shifted)
    stage = trainer_mod.BackboneStage(get_config().replace(init_from="runs/x"))
    assert len(stage.params0) == len(shifted.backbone_params)
    for a, b in zip(stage.params0, shifted.backbone_params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert stage.record()["init_from"]["source"] == "a trained tiny model"
    assert "init_from" not in trainer_mod.BackboneStage(get_config()).record()


def test_init_from_refuses_another_backbone_and_refiner_stage(monkeypatch, untrained_tiny_model):
    import dataclasses

    import rismvdr.train.trainer as trainer_mod
    from rismvdr.configs.tiny import get_config

    other = untrained_tiny_model._replace(backbone_cfg=dataclasses.replace(untrained_tiny_model.backbone_cfg,
                                                                          n_snapshots=99))
    monkeypatch.setattr(trainer_mod, "load_learned", lambda path=None, **kw: other)
    with pytest.raises(ValueError, match=r"init_from: .*differs in n_snapshots"):
        trainer_mod.BackboneStage(get_config().replace(init_from="shipped"))

    def missing(path=None, **kw):
        raise FileNotFoundError("checkpoint: no model at 'nowhere'")

    monkeypatch.setattr(trainer_mod, "load_learned", missing)
    with pytest.raises(ValueError, match="init_from: checkpoint: no model at 'nowhere'"):
        trainer_mod.BackboneStage(get_config().replace(init_from="nowhere"))
    with pytest.raises(ValueError, match="init_from: fine-tuning starts Stage 1"):
        get_config().replace(init_from="shipped", stage="refiner").validate()


def test_seed_los_config_fits_the_shipped_backbone():
    from rismvdr.configs.seed_los import get_config
    from rismvdr.localize.weights import load_learned

    cfg = get_config()
    assert cfg.scenario == "seed-los" and cfg.init_from == "shipped"
    assert load_learned().backbone_cfg == cfg.backbone_config()
