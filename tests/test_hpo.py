"""Hyperparameter search (`rismvdr.hpo`, `rismvdr hpo run`, `rismvdr hpo two-stage`) on the `tiny` config.

Trials train 2 steps (one validation) on one device with a search space of loss scales only:
those enter the jitted step as traced scalars, so every trial compiles the same programs and,
with the persistent compilation cache these tests share, only the first one compiles. The
cache is switched on for this module and off again after it.
"""
import csv
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from rismvdr import hpo
from rismvdr.cli import main
from rismvdr.io import enable_compile_cache
from rismvdr.programs import enable_program_store
from rismvdr.train.config import TrainConfig, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"
SPACE_FILE = ROOT / "configs" / "hpo_space.py"
# Loss scales only: traced in the step, so all trials share one compilation.
TEST_SPACE = {"loss_scale.cell": ("float", 0.5, 2.0, True), "loss_scale.aux": ("float", 0.5, 2.0, True)}
OVERRIDES = ["batch_size=4", "eval_every=2", "val_scenes=8", "val_peak_scenes=0"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("jax_cache")
    enable_compile_cache(path)
    yield str(path)
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    enable_program_store(None)  # enable_compile_cache turned it on


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.py"
    path.write_text(f"def get_space():\n    return {TEST_SPACE!r}\n")
    return path


def _base():
    return apply_overrides(load_config(TINY), OVERRIDES)


def _settings(workdir, **kw):
    kw.setdefault("epochs", 1)
    return hpo.ObjectiveSettings(base=_base(), space=TEST_SPACE, workdir=str(workdir), n_devices=1, **kw)


def _workers_env(monkeypatch):
    """Spawned workers: the same JAX flags as this process (so they hit the same cache)."""
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    monkeypatch.setenv("JAX_NUMPY_RANK_PROMOTION", "raise")


# ------------------------------------------------------------------------------------------
# Space and params (no training)
# ------------------------------------------------------------------------------------------
def test_space_file_builds_every_architecture():
    from flax import nnx

    from rismvdr.models.backbone import Backbone
    from rismvdr.physics.simulate import simulate

    space = hpo.load_space(SPACE_FILE)
    assert {"optim.lr", "optim.weight_decay", "model.widths", "model.covariance", "model.rank"} <= set(space)
    seed = load_config(ROOT / "configs" / "seed.py")
    hpo.check_space(space, seed)
    hpo.check_space(space, load_config(TINY))
    scene = simulate(seed.scene_config(), 0, 1)
    combos = [(w, "factor") for w in space["model.widths"][1]] + [(space["model.widths"][1][0], "structured")]
    assert {c for _, c in combos} == set(space["model.covariance"][1])
    for widths, cov in combos:  # every depth/width; both covariance heads
        cfg = hpo.apply_params(seed, {"model.widths": widths, "model.covariance": cov})
        bcfg = cfg.backbone_config()
        out = nnx.eval_shape(lambda: Backbone(bcfg, rngs=nnx.Rngs(0))(scene.y, scene.H, scene.codes))
        assert out.factor.shape[:2] == (1, 144), (widths, cov)


def test_apply_params_and_space_errors(tmp_path):
    base = _base()
    cfg = hpo.apply_params(base, {"optim.lr": 1e-3, "model.widths": "(8, 16, 32)", "model.covariance": "factor",
                                  "loss_scale.cell": 2.0, "loss_scale.cov": 0.5})
    assert cfg.optim.lr == 1e-3 and cfg.model.widths == (8, 16, 32) and cfg.model.covariance == "factor"
    for p, q in zip(base.phases, cfg.phases):
        assert q.weights.cell == 2.0 * p.weights.cell and q.weights.cov == 0.5 * p.weights.cov
        assert q.until == p.until and q.weights.aux == p.weights.aux
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        hpo.apply_params(base, {"optim.nope": 1.0})
    with pytest.raises(ValueError, match="unknown loss term"):
        hpo.apply_params(base, {"loss_scale.nope": 1.0})
    with pytest.raises(ValueError, match="'model.groups' = 3"):
        hpo.check_space({"model.groups": ("int", 3, 4)}, base)  # 3 does not divide the widths
    bad = tmp_path / "bad.py"
    for text, match in (("def get_space():\n    return {'optim.lr': ('float', 1e-3)}\n", "optim.lr"),
                        ("def get_space():\n    return {'m.w': ('categorical', [(8, 8)])}\n", "as text"),
                        ("x = 1\n", "get_space")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            hpo.load_space(bad)
    with pytest.raises(ValueError, match="SQLite"):
        hpo.run_study(_settings(tmp_path), study_name="s", storage=f"sqlite:///{tmp_path}/x.db", n_trials=1,
                      workers=2)
    with pytest.raises(ValueError, match="test set"):
        _settings(tmp_path, objective="e2e", e2e_seed=0).validate()


def test_nan_trial_is_pruned(tmp_path, monkeypatch):
    """A non-finite validation, or skipped non-finite updates, prune the trial (patched fit)."""
    from rismvdr.train import trainer

    settings = _settings(tmp_path)
    params = {"loss_scale.cell": 1.0, "loss_scale.aux": 1.0}
    for val, skipped, match in ((float("nan"), 0, "non-finite surrogate"), (1.0, 1, "1 non-finite update")):
        def fake_fit(cfg, workdir, *, on_eval, val=val, skipped=skipped, **kw):
            on_eval(cfg.eval_every, {"val/cov": val, "val/subspace": 1.0, "val/aux": 1.0,
                                     "val/beam_heatmap": 1.0, "val/cell": 1.0})
            return {"status": "done", "steps": cfg.steps, "skipped": skipped, "seconds": 0.0}

        monkeypatch.setattr(trainer, "fit", fake_fit)
        trial = optuna.trial.FixedTrial(params)
        with pytest.raises(optuna.TrialPruned, match=match):
            hpo.objective(trial, settings)
        assert match in trial.user_attrs["pruned_reason"]


def test_runtime_error_fails_only_that_trial(tmp_path, monkeypatch):
    """An accelerator runtime error (e.g. out of memory) fails its trial; the study goes on."""
    from rismvdr.train import trainer

    calls = []

    def fake_fit(cfg, workdir, *, on_eval, **kw):
        calls.append(workdir)
        if len(calls) == 1:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")
        on_eval(cfg.eval_every, {"val/cov": 1.0, "val/subspace": 1.0, "val/aux": 1.0, "val/beam_heatmap": 1.0,
                                 "val/cell": float(len(calls))})
        return {"status": "done", "steps": cfg.steps, "skipped": 0, "seconds": 0.0}

    monkeypatch.setattr(trainer, "fit", fake_fit)
    study = hpo.run_study(_settings(tmp_path), study_name="oom", storage=hpo.default_storage(tmp_path),
                          n_trials=2, sampler_seed=0)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "RESOURCE_EXHAUSTED" in study.trials[0].user_attrs["rismvdr_status"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_stale_trial_of_a_crashed_worker_is_failed(tmp_path):
    storage = hpo.make_storage(str(tmp_path / "s.journal"), heartbeat_interval=1, grace_period=5)
    study = optuna.create_study(study_name="s", storage=storage)
    crashed, alive = study.ask(), study.ask()
    storage.record_heartbeat(alive._trial_id)
    storage.set_trial_system_attr(crashed._trial_id, "rismvdr:heartbeat", time.time() - 100.0)
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {crashed.number: TrialState.FAIL, alive.number: TrialState.RUNNING}


# ------------------------------------------------------------------------------------------
# Trials and studies (tiny training)
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # several trials of tiny training runs (make test-slow)
def test_fixed_trial_surrogate(tmp_path, compile_cache):
    settings = _settings(tmp_path)
    params = {"loss_scale.cell": 1.5, "loss_scale.aux": 0.7}
    trial = optuna.trial.FixedTrial(params)
    value = hpo.objective(trial, settings)
    run = tmp_path / "trials" / "fixed" / "0"
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_val = [m for m in vals if "val/cov" in m][-1]
    assert value == pytest.approx(hpo.surrogate_score(last_val, settings.base.phases[-1].weights))
    assert np.isfinite(value) and trial.user_attrs["surrogate"] == value and trial.user_attrs["skipped"] == 0
    full = TrainConfig.from_dict(trial.user_attrs["config"])
    assert full == hpo.apply_params(settings.base, params) and full.steps == settings.base.steps
    stored = json.loads((run / "config.json").read_text())["train"]
    assert stored["steps"] == settings.base.eval_every * settings.epochs


def test_surrogate_study_cli_and_export(tmp_path, compile_cache, space_file, capsys):
    """`rismvdr hpo run` (4 trials, journal in the workdir), then `hpo export` -> train --from-hpo."""
    work = tmp_path / "hpo"
    argv = ["hpo", "run", "--config", TINY, "--workdir", work, "--space", space_file, "--trials", 4, "--epochs", 1,
            "--devices", 1, "--sampler-seed", 0, "--compile-cache", compile_cache]
    argv += [a for s in OVERRIDES for a in ("--set", s)]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert out.count("[tiny] trial ") == 4 and "best value" in out
    study = optuna.load_study(study_name="tiny", storage=hpo.make_storage(str(work / hpo.JOURNAL_NAME)))
    assert len(study.get_trials(states=FINISHED)) == 4
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert set(t.params) == set(TEST_SPACE) and list(t.intermediate_values) == [1]
        assert (work / "trials" / "tiny" / str(t.number) / "checkpoints").is_dir()
    best = tmp_path / "best.json"
    assert main(["hpo", "export", "--study", "tiny", "--workdir", str(work), "--out", str(best)]) == 0
    rec = json.loads(best.read_text())
    assert rec["value"] == study.best_value and rec["params"] == study.best_params
    assert {"config", "params", "value", "study", "trial", "user_attrs"} <= set(rec)
    cfg = TrainConfig.from_dict(rec["config"])
    assert cfg == hpo.apply_params(_base(), rec["params"]) and cfg.to_dict() == rec["config"]
    # `rismvdr train --from-hpo` reads it (the config it would train, before any training)
    import argparse

    from rismvdr.cli.train import train_config

    assert train_config(argparse.Namespace(from_hpo=str(best), config=None, set=[])) == cfg
    # --trial N: a chosen COMPLETE trial, not the best one; an unknown number is refused
    other = max(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, t.number))
    assert other.number != study.best_trial.number  # the export below is not the default's
    chosen = tmp_path / "chosen.json"
    assert main(["hpo", "export", "--study", "tiny", "--workdir", str(work), "--out", str(chosen),
                 "--trial", str(other.number)]) == 0
    rec = json.loads(chosen.read_text())
    assert rec["trial"] == other.number and rec["params"] == other.params and rec["value"] == other.value
    assert TrainConfig.from_dict(rec["config"]) == hpo.apply_params(_base(), other.params)
    capsys.readouterr()
    assert main(["hpo", "export", "--study", "tiny", "--workdir", str(work), "--out", str(chosen),
                 "--trial", "99"]) == 2
    assert "--trial: trial 99 of 'tiny' does not exist" in capsys.readouterr().err
    # `hpo trials`: one CSV row per trial with its state, value, reports and parameters
    table = tmp_path / "trials.csv"
    assert main(["hpo", "trials", "--study", "tiny", "--workdir", str(work), "--out", str(table)]) == 0
    assert "4 trials of tiny" in capsys.readouterr().out
    with open(table, newline="") as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    assert list(next(iter(rows.values())))[: len(hpo.TRIAL_COLUMNS)] == list(hpo.TRIAL_COLUMNS)
    for t in study.get_trials():
        r = rows[t.number]
        assert r["state"] == t.state.name and float(r["duration_s"]) > 0
        assert json.loads(r["value_per_period"]) == {str(k): v for k, v in t.intermediate_values.items()}
        assert (r["value"] == "") if t.value is None else float(r["value"]) == t.value
        for k, v in t.params.items():
            assert r[f"param.{k}"] == str(v)
    assert main(["hpo", "trials", "--study", "nope", "--workdir", str(work), "--out", str(table)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    # a rerun with the cap reached does nothing; another space in the same study is refused
    assert main([str(a) for a in argv]) == 0
    assert len(study.get_trials()) == 4
    i = argv.index("--epochs")
    assert main([str(a) for a in argv[: i + 1] + [2] + argv[i + 2:]]) == 2
    assert "made with another epochs" in capsys.readouterr().err


@pytest.mark.slow  # several trials of tiny training runs (make test-slow)
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_two_workers_share_a_journal_with_a_cap(tmp_path, compile_cache, monkeypatch):
    """Two spawned workers, total capped at 3 finished trials; a crashed worker's RUNNING trial
    (stale heartbeat) is failed and does not block the study."""
    _workers_env(monkeypatch)
    journal = str(tmp_path / "hpo.journal")
    settings = _settings(tmp_path)
    study = hpo.open_study("w", journal, settings, heartbeat_interval=2, grace_period=30)
    crashed = study.ask()  # a worker that died mid-trial
    hpo.make_storage(journal).set_trial_system_attr(crashed._trial_id, "rismvdr:heartbeat", time.time() - 300)
    study = hpo.run_study(settings, study_name="w", storage=journal, n_trials=3, workers=2, sampler_seed=0,
                          heartbeat_interval=2, grace_period=30, compile_cache=compile_cache)
    assert len(study.get_trials(states=FINISHED)) == 3
    assert study.trials[crashed.number].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def _pg_bin():
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return cands[-1].parent if cands else None


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (as an unprivileged user when root)."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[hpo]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    prefix = []
    base = Path(tempfile.mkdtemp(prefix="rismvdr-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = "postgres" if any(p.pw_name == "postgres" for p in pwd.getpwall()) else "nobody"
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    run = lambda *cmd: subprocess.run(prefix + [str(c) for c in cmd], check=True, capture_output=True,  # noqa: E731
                                      text=True, timeout=120, cwd=base)
    try:
        run(bindir / "initdb", "-D", data, "--auth=trust", "-U", "postgres")
        run(bindir / "pg_ctl", "-D", data, "-o", f"-p {port} -k {base} -h 127.0.0.1", "-l", base / "log", "-w",
            "start")
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc} {getattr(exc, 'stderr', '')}")
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE hpo")
        con.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/hpo"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_study(tmp_path, compile_cache, postgres_url):
    settings = _settings(tmp_path)
    study = hpo.run_study(settings, study_name="pg", storage=postgres_url, n_trials=2, sampler_seed=0)
    assert len(study.get_trials(states=FINISHED)) == 2
    storage = hpo.make_storage(postgres_url)
    assert storage.get_heartbeat_interval() == 60  # RDBStorage's own stale-trial heartbeat
    rec = hpo.export_best("pg", postgres_url, tmp_path / "best.json")
    assert TrainConfig.from_dict(rec["config"]) == hpo.apply_params(settings.base, rec["params"])


@pytest.mark.slow  # several trials of tiny training runs (make test-slow)
def test_hpo2_stage2_reruns_the_stage1_topk_exactly(tmp_path, compile_cache):
    s1 = _settings(tmp_path)
    s2 = _settings(tmp_path, objective="e2e", e2e_scenes=2)
    study1, study2 = hpo.run_hpo2(s1, s2, study_name="two", storage=hpo.default_storage(tmp_path),
                                  stage1_trials=3, topk=2, sampler_seed=0)
    done1 = sorted(study1.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, t.number))
    top = [t.params for t in done1[:2]]
    trials2 = study2.get_trials(states=FINISHED)
    assert len(trials2) == 2 and len(study2.trials) == 2
    assert sorted(map(json.dumps, (t.params for t in trials2))) == sorted(map(json.dumps, top))
    by_s1 = {t.number: t.params for t in done1}
    for t in trials2:
        assert by_s1[t.user_attrs["stage1_trial"]] == t.params
        assert {"e2e_f1", "e2e_precision", "e2e_recall", "e2e_rmse_xyz_all_m", "e2e_tp", "e2e_fp",
                "e2e_fn"} <= set(t.user_attrs)
        assert t.value == pytest.approx(t.user_attrs["e2e_objective"])
    rows = hpo.rerank(study2)
    assert [r["rank"] for r in rows] == [1, 2] and "| rank |" in hpo.format_rerank(rows)
    # rerunning the same command finds both stages done: no new trial
    _, again = hpo.run_hpo2(s1, s2, study_name="two", storage=hpo.default_storage(tmp_path), stage1_trials=3,
                            topk=2, sampler_seed=0)
    assert len(again.trials) == 2 and len(optuna.load_study(study_name="two-s1", storage=hpo.make_storage(
        hpo.default_storage(tmp_path))).trials) == 3


# ------------------------------------------------------------------------------------------
# Slow: real non-finite training, the shipped space end to end
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_nan_steps_prune_the_trial_and_the_study_goes_on(tmp_path, compile_cache):
    """`debug_nan_steps` poisons the loss: the update is skipped and counted, the trial pruned."""
    settings = _settings(tmp_path)
    settings = hpo.ObjectiveSettings(**{**settings.__dict__, "base": settings.base.replace(debug_nan_steps=(1,))})
    study = hpo.run_study(settings, study_name="nan", storage=hpo.default_storage(tmp_path), n_trials=2,
                          sampler_seed=0)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all("1 non-finite update" in t.user_attrs["pruned_reason"] and t.user_attrs["skipped"] == 1
               for t in trials)


@pytest.mark.slow
def test_shipped_space_e2e_cli(tmp_path, compile_cache, capsys):
    work = tmp_path / "hpo"
    argv = ["hpo", "run", "--config", TINY, "--workdir", work, "--space", SPACE_FILE, "--trials", 2, "--epochs", 1,
            "--objective", "e2e", "--e2e-scenes", 4, "--devices", 1, "--sampler-seed", 1,
            "--compile-cache", compile_cache]
    argv += [a for s in OVERRIDES for a in ("--set", s)]
    assert main([str(a) for a in argv]) == 0
    study = optuna.load_study(study_name="tiny", storage=hpo.make_storage(str(work / hpo.JOURNAL_NAME)))
    assert len(study.get_trials(states=FINISHED)) == 2
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert set(t.params) == set(hpo.load_space(SPACE_FILE)) and "e2e_f1" in t.user_attrs


# ------------------------------------------------------------------------------------------
# Restarts after a crash
# ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_rerun_fails_a_dead_workers_trial_at_once_and_says_how_long_a_live_one_counts(tmp_path, capsys):
    """A RUNNING trial whose worker (this host, a process that has exited) is gone is failed at
    once; one of a live process, or of another host, keeps counting and the wait is printed."""
    storage = hpo.make_storage(str(tmp_path / "s.journal"), heartbeat_interval=1, grace_period=300)
    study = optuna.create_study(study_name="s", storage=storage)
    gone = subprocess.Popen(["true"])  # a process of this host that has exited
    gone.wait()
    dead, alive, elsewhere, unknown = study.ask(), study.ask(), study.ask(), study.ask()
    host = socket.gethostname()
    for trial, (h, pid) in ((dead, (host, gone.pid)), (alive, (host, os.getppid())), (elsewhere, ("elsewhere", 1))):
        trial.set_user_attr(hpo.WORKER_HOST, h)
        trial.set_user_attr(hpo.WORKER_PID, pid)
    storage.record_heartbeat(alive._trial_id)
    assert hpo.fail_dead_trials(study, grace_period=300) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {dead.number: TrialState.FAIL, alive.number: TrialState.RUNNING,
                      elsewhere.number: TrialState.RUNNING, unknown.number: TrialState.RUNNING}
    assert f"process {gone.pid} on {host} is gone" in study.trials[dead.number].user_attrs["rismvdr_status"]
    out = capsys.readouterr().out
    assert f"trial {alive.number} is RUNNING (worker {host}:{os.getppid()})" in out
    assert "failed as stale in 300 s (--grace-s 300)" in out or "failed as stale in 299 s" in out
    assert f"trial {elsewhere.number} is RUNNING (worker elsewhere:1)" in out
    assert f"trial {unknown.number} is RUNNING (no worker recorded)" in out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_rerun_right_after_sigkill_reaches_the_cap(tmp_path, space_file):
    """`rismvdr hpo run --trials 2` killed with SIGKILL during its first trial, rerun at once (with
    the default --grace-s of 300 s): the rerun fails the dead trial and ends with 2 finished."""
    import signal
    import sys

    work = tmp_path / "hpo"
    argv = [sys.executable, "-m", "rismvdr.cli", "hpo", "run", "--config", str(TINY), "--workdir", str(work), "--space",
            str(space_file), "--trials", "2", "--epochs", "1", "--devices", "1", "--sampler-seed", "0",
            "--compile-cache", "none"] + [a for s in OVERRIDES for a in ("--set", s)]
    env = dict(os.environ, RISMVDR_COMPILE_CACHE="0", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = work / hpo.JOURNAL_NAME
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until trial 0 is RUNNING with its worker recorded
            if journal.is_file():
                try:
                    st = optuna.load_study(study_name="tiny", storage=hpo.make_storage(str(journal)))
                    if any(t.user_attrs.get(hpo.WORKER_PID) == proc.pid
                           for t in st.get_trials(states=(TrialState.RUNNING,))):
                        break
                except KeyError:
                    pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        else:
            pytest.fail("trial 0 never started")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    t0 = time.time()
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "trial 0 failed: its worker process is gone" in rerun.stdout
    study = optuna.load_study(study_name="tiny", storage=hpo.make_storage(str(journal)))
    assert study.trials[0].state == TrialState.FAIL
    assert len(study.get_trials(states=FINISHED)) == 2
    assert time.time() - t0 < 300  # it never waited for --grace-s
