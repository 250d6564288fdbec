"""Tests for rismvdr.train.checkpoint: round trips, retention, resharding, crash safety."""
from __future__ import annotations

import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rismvdr.localize.weights import single_device_sharding
from rismvdr.train import checkpoint as checkpoint_lib
from rismvdr.train.checkpoint import Checkpointer, restore_run

REPO = pathlib.Path(__file__).resolve().parents[1]
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class Params(NamedTuple):
    weight: jax.Array
    bias: jax.Array


def assert_bit_equal(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.tobytes() == expected.tobytes()


def assert_trees_bit_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert_bit_equal(a, e)


def make_state(seed: int = 0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "params": Params(
            weight=jax.random.normal(k1, (4, 3), jnp.float32),
            bias=jax.random.normal(k2, (3,), jnp.float32),
        ),
        "opt": {"mu": Params(jnp.full((4, 3), -0.0, jnp.float32), jnp.zeros(3, jnp.float32))},
        "step": jnp.asarray(7, jnp.int32),
        "key": jax.random.key_data(k3),
    }


def subprocess_env(n_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ----------------------------------------------------------------------------- round trip


def test_round_trip_bit_exact(tmp_path):
    state = make_state()
    assert state["key"].dtype == jnp.uint32 and state["step"].dtype == jnp.int32
    config = {"model": {"hidden": [8, 8], "name": "tiny"}, "lr": 1e-3, "seed": 0, "x64": False}
    metrics = {"val/objective": 0.25, "train/loss": np.float32(1.5), "val/rmse_deg": math.nan}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() is None and ckpt.best_step() is None and ckpt.steps() == []
        assert ckpt.save(3, state, config=config, metrics=metrics)
        assert not ckpt.save(3, state, config=config)  # never overwrites a step
        assert ckpt.steps() == [3] and ckpt.latest_step() == 3 and ckpt.best_step() == 3
        restored = ckpt.restore(target=jax.eval_shape(lambda: state))
        assert isinstance(restored["params"], Params)
        assert_trees_bit_equal(restored, state)
        assert ckpt.read_config() == config
        assert ckpt.read_metrics(3) == {
            "val/objective": 0.25, "train/loss": 1.5, "val/rmse_deg": None
        }

    # Read back on its own, without a target: dicts in place of NamedTuples, same leaves.
    loaded, loaded_config, loaded_metrics = restore_run(tmp_path)
    assert loaded_config == config and loaded_metrics["val/objective"] == 0.25
    assert_trees_bit_equal(loaded["params"], state["params"]._asdict())
    assert_trees_bit_equal(loaded["opt"]["mu"], state["opt"]["mu"]._asdict())
    assert_bit_equal(loaded["step"], state["step"])
    assert_bit_equal(loaded["key"], state["key"])
    # Concrete arrays work as a target too; a numpy-only state round-trips as well.
    again, _, _ = restore_run(tmp_path, 3, target=state)
    assert_trees_bit_equal(again, state)


def test_save_without_metrics_and_numpy_state(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.uint32(9)}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(0, state, config={"a": (1, 2)})
        assert ckpt.read_metrics() is None and ckpt.best_step() is None
        assert ckpt.read_config(0) == {"a": [1, 2]}  # JSON: tuples read back as lists
        restored = ckpt.restore()
    assert_bit_equal(restored["w"], state["w"])
    assert_bit_equal(restored["n"], np.asarray(state["n"]))


@pytest.mark.parametrize(
    "state, match",
    [
        ({"w": jnp.ones(2, jnp.float64)}, "float64"),
        ({"w": jnp.ones(2, jnp.bfloat16)}, "bfloat16"),
        ({"w": 1.0}, "not an array"),
        ({"k": jax.random.key(0)}, "key_data"),
        ({}, "no array leaves"),
    ],
)
def test_save_rejects_bad_state(tmp_path, state, match):
    with Checkpointer(tmp_path) as ckpt, pytest.raises(ValueError, match=f"state: .*{match}"):
        ckpt.save(1, state, config={})
    assert ckpt_steps(tmp_path) == []


def ckpt_steps(directory) -> list[int]:
    return sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit())


def test_save_rejects_bad_config_metrics_and_options(tmp_path):
    state = {"w": jnp.ones(2, jnp.float32)}
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="config"):
            ckpt.save(1, state, config={"f": object()})
        with pytest.raises(ValueError, match="config"):
            ckpt.save(1, state, config={"x": math.inf})
        with pytest.raises(ValueError, match="metrics"):
            ckpt.save(1, state, config={}, metrics={"val/objective": "low"})
        with pytest.raises(ValueError, match="metrics"):
            ckpt.save(1, state, config={}, metrics={"val/objective": np.ones(2)})
        with pytest.raises(ValueError, match="step"):
            ckpt.save(-1, state, config={})
        assert ckpt.steps() == []
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path, best_mode="median")
    with pytest.raises(ValueError, match="keep_latest"):
        Checkpointer(tmp_path, keep_latest=0)


# ----------------------------------------------------------------------------- retention


@pytest.fixture(params=["policy", "pruned"])
def retention(request, monkeypatch):
    """Both retention paths: Orbax preservation policies, and the by-hand fallback for Orbax
    versions without them."""
    if request.param == "pruned":
        monkeypatch.setattr(checkpoint_lib, "_has_preservation_policies", lambda: False)
    return request.param


@pytest.mark.parametrize(
    "best_mode, kept, best, kept_after",
    [
        # metric per step 1..8: 5, 3, NaN, 4, 1, 6, 2, 7; then step 9 ties the best.
        ("min", [2, 5, 7, 8], 5, [5, 7, 9]),  # best three: 1 (5), 2 (7), 3 (2); latest 8
        ("max", [1, 6, 8], 8, [6, 8, 9]),  # best three: 7 (8), 6 (6), 5 (1); latest 8 among them
    ],
)
def test_keeps_best_n_and_latest(tmp_path, retention, best_mode, kept, best, kept_after):
    values = [5.0, 3.0, math.nan, 4.0, 1.0, 6.0, 2.0, 7.0]
    state = {"w": jnp.zeros(4, jnp.float32)}
    with Checkpointer(tmp_path, keep_best=3, keep_latest=1, best_mode=best_mode) as ckpt:
        for step, value in enumerate(values, start=1):
            assert ckpt.save(step, state, config={"step": step}, metrics={"val/objective": value})
            assert ckpt.best_step() != 3
        assert ckpt.steps() == kept and ckpt_steps(tmp_path) == kept
        assert ckpt.latest_step() == 8 and ckpt.best_step() == best
    # A fresh (read-only) view of the directory agrees.
    _, config, metrics = restore_run(tmp_path, "best", best_mode=best_mode)
    assert config == {"step": best} and metrics == {"val/objective": values[best - 1]}
    # Reopened for writing, retention continues from what is on disk.
    with Checkpointer(tmp_path, keep_best=3, keep_latest=1, best_mode=best_mode) as ckpt:
        assert ckpt.steps() == kept and ckpt.best_step() == best
        ckpt.save(9, state, config={"step": 9}, metrics={"val/objective": values[best - 1]})
        assert ckpt.best_step() == 9  # ties go to the later step
        assert ckpt.steps() == kept_after


@pytest.mark.parametrize("best_mode, bad", [("min", math.nan), ("max", math.nan), ("max", math.inf),
                                            ("min", -math.inf)])
def test_non_finite_metric_is_never_best(tmp_path, retention, best_mode, bad):
    state = {"w": jnp.zeros(2, jnp.float32)}
    with Checkpointer(tmp_path, keep_best=1, best_mode=best_mode) as ckpt:
        ckpt.save(1, state, config={}, metrics={"val/objective": 2.0})
        ckpt.save(2, state, config={}, metrics={"val/objective": bad})
        assert ckpt.best_step() == 1 and ckpt.steps() == [1, 2]
        ckpt.save(3, state, config={}, metrics={"other": 1.0})  # no ranking metric: latest only
        assert ckpt.best_step() == 1 and ckpt.steps() == [1, 3]
        ckpt.save(4, state, config={})
        assert ckpt.steps() == [1, 4]


def test_unranked_checkpoints_are_kept_only_as_latest(tmp_path, retention):
    state = {"w": jnp.zeros(2, jnp.float32)}
    with Checkpointer(tmp_path, keep_best=3, keep_latest=1) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state, config={}, metrics={"train/loss": 1.0})
            assert ckpt.steps() == [step]
        ckpt.save(4, state, config={}, metrics={"val/objective": 0.5})
        ckpt.save(5, state, config={}, metrics={"val/objective": math.nan})
        assert ckpt.steps() == [4, 5] and ckpt.best_step() == 4
    with pytest.raises(FileNotFoundError, match="finite"):
        restore_run(tmp_path, "best", best_metric="val/missing")


# ----------------------------------------------------------------------------- resharding


def sharded_state(mesh):
    data = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return {
        "w": jax.device_put(jnp.arange(16 * 3, dtype=jnp.float32).reshape(16, 3) / 7, data),
        "b": jax.device_put(jnp.linspace(-1, 1, 5, dtype=jnp.float32), replicated),
        "step": jax.device_put(jnp.asarray(11, jnp.int32), replicated),
        "key": jax.device_put(jax.random.key_data(jax.random.key(5)), replicated),
    }


def shardings_like(state, data, replicated):
    return {k: (data if k == "w" else replicated) for k in state}


def test_restore_onto_other_meshes_and_device_counts(tmp_path):
    assert jax.device_count() == 8
    mesh8 = jax.make_mesh((8,), ("data",))
    state = sharded_state(mesh8)
    assert len(state["w"].sharding.device_set) == 8
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, config={"mesh": [8]})

        mesh2 = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
        two = shardings_like(
            state,
            NamedSharding(mesh2, PartitionSpec("data")),
            NamedSharding(mesh2, PartitionSpec()),
        )
        one = single_device_sharding(jax.devices()[3])
        for shardings in (two, shardings_like(state, one, one)):
            target = {
                k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
                for k, v in state.items()
            }
            restored = ckpt.restore(target=target)
            for k, v in restored.items():
                assert v.sharding.is_equivalent_to(shardings[k], v.ndim), k
                assert_bit_equal(v, state[k])

        # jax.eval_shape of the sharded state (shardings on an abstract mesh) as the target.
        restored = ckpt.restore(target=jax.eval_shape(lambda: state))
        assert len(restored["w"].sharding.device_set) == 8
        assert_trees_bit_equal(restored, state)

    # A genuinely different device count: a fresh process that sees one CPU device.
    out = tmp_path.parent / f"{tmp_path.name}_restored.npz"
    script = textwrap.dedent(
        f"""
        import jax, numpy as np
        from rismvdr.localize.weights import single_device_sharding
        from rismvdr.train.checkpoint import restore_run
        assert jax.device_count() == 1, jax.devices()
        state, config, _ = restore_run({str(tmp_path)!r})
        target = {{k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=single_device_sharding(jax.devices()[0]))
                  for k, v in state.items()}}
        again, _, _ = restore_run({str(tmp_path)!r}, 1, target=target)
        assert config == {{"mesh": [8]}}, config
        for k in state:
            np.testing.assert_array_equal(np.asarray(state[k]), np.asarray(again[k]))
        np.savez({str(out)!r}, **{{k: np.asarray(v) for k, v in state.items()}})
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(1), cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as restored:
        for k, v in state.items():
            assert_bit_equal(restored[k], v)


# ----------------------------------------------------------------------------- crash safety

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from rismvdr.train.checkpoint import Checkpointer

    def state_for(step):  # ~40 MB, a deterministic function of the step
        return {
            "w": np.arange(10_000_000, dtype=np.float32) * np.float32(1e-3) + np.float32(step),
            "step": np.asarray(step, np.int32),
            "key": np.asarray([step, 12345], np.uint32),
        }

    with Checkpointer(sys.argv[1]) as ckpt:  # resumes after the latest finalised step
        for step in range((ckpt.latest_step() or 0) + 1, 1000):
            ckpt.save(step, state_for(step), config={"step": step})
    """
)


def _dir_names(directory: pathlib.Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []


def _finalised(directory: pathlib.Path) -> list[int]:
    return [int(n) for n in _dir_names(directory) if n.isdigit()]


def _in_progress(directory: pathlib.Path) -> list[int]:
    return [int(n.split(".")[0]) for n in _dir_names(directory)
            if TMP_SUFFIX in n and n.split(".")[0].isdigit()]


def _wait_for(predicate, timeout: float, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())


def _kill_saver_mid_save(directory: pathlib.Path, log: pathlib.Path, delay: float) -> None:
    """Run the saver until it has finalised a new step, then SIGKILL it during a later save."""
    before = max(_finalised(directory), default=0)
    with open(log, "w") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(directory)], env=subprocess_env(1), cwd=REPO,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        new = lambda: max(_finalised(directory), default=0) > before  # noqa: E731
        assert _wait_for(lambda: new() or child.poll() is not None, 90), "no checkpoint in 90 s"
        assert child.poll() is None, log.read_text()[-4000:]
        first = max(_finalised(directory))
        # Its temporary directory marks a later save under way.
        later = lambda: any(s > first for s in _in_progress(directory))  # noqa: E731
        assert _wait_for(later, 30), "the saver never started another save"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, log.read_text()[-4000:]


def test_kill_mid_save_restores_latest_finalised(tmp_path):
    directory = tmp_path / "run"
    # Killed at several points of a save: while writing, and (later) near finalisation.
    for round_, delay in enumerate((0.0, 0.1, 0.2)):
        _kill_saver_mid_save(directory, tmp_path / f"saver{round_}.log", delay)
        latest = max(_finalised(directory))
        state, config, metrics = restore_run(directory)
        assert config == {"step": latest} and metrics is None
        assert_bit_equal(state["step"], np.asarray(latest, np.int32))
        assert_bit_equal(state["key"], np.asarray([latest, 12345], np.uint32))
        w = np.arange(10_000_000, dtype=np.float32) * np.float32(1e-3) + np.float32(latest)
        assert_bit_equal(state["w"], w)

    # A new writer clears the unfinalised leftovers and carries on.
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == latest
        assert ckpt.save(latest + 1, {"w": jnp.ones(2, jnp.float32)}, config={"step": latest + 1})
        assert ckpt.steps() == [latest + 1]
    leftovers = [n for n in _dir_names(directory) if TMP_SUFFIX in n]
    assert not leftovers, _dir_names(directory)


# ----------------------------------------------------------------------------- errors


def test_missing_or_empty_directory_and_bad_step(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        restore_run(missing)
    assert not missing.exists()  # reading never creates the directory
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        restore_run(empty)
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        restore_run(empty, "best")
    # Only a temporary (unfinalised) step directory: still nothing to restore.
    (empty / f"4{TMP_SUFFIX}-123").mkdir()
    with pytest.raises(FileNotFoundError, match="no finalised checkpoint"):
        restore_run(empty)

    with pytest.raises(ValueError, match="step"):
        restore_run(empty, "newest")
    with pytest.raises(ValueError, match="step"):
        restore_run(missing, 1.5)

    run = tmp_path / "run"
    with Checkpointer(run) as ckpt:
        ckpt.save(2, {"w": jnp.ones(2, jnp.float32)}, config={})
    with pytest.raises(FileNotFoundError, match="step 5"):
        restore_run(run, 5)
    state, _, _ = restore_run(run, "latest")
    assert_bit_equal(state["w"], np.ones(2, np.float32))


def test_reopen_with_another_best_metric(tmp_path, retention):
    state = {"w": jnp.zeros(2, jnp.float32)}
    with Checkpointer(tmp_path, keep_best=1) as ckpt:
        ckpt.save(1, state, config={}, metrics={"val/objective": 1.0})
        ckpt.save(2, state, config={}, metrics={"val/objective": 2.0})
    with Checkpointer(tmp_path, keep_best=1, best_metric="val/acc", best_mode="max") as ckpt:
        assert ckpt.steps() == [1, 2] and ckpt.best_step() is None
        ckpt.save(3, state, config={}, metrics={"val/acc": 0.5})
        ckpt.save(4, state, config={}, metrics={"val/objective": 0.1})
        assert ckpt.steps() == [3, 4] and ckpt.best_step() == 3


# ----------------------------------------------------------------------------- damaged checkpoints

def largest_data_files(step_dir):
    """The largest OCDBT data file of the state in each of its data folders (`state/d/`, where
    Orbax merges the data, and `state/ocdbt.process_0/d/`, where the process wrote it): which one
    a restore reads depends on the layout Orbax chose, so damage both."""
    state = step_dir / "state"
    return [max(d.iterdir(), key=lambda f: f.stat().st_size)
            for d in (state / "d", state / "ocdbt.process_0" / "d") if d.is_dir() and any(d.iterdir())]


DAMAGES = {
    # how: (damage the step directory, the file the warning must name)
    "largest ocdbt data file deleted": (lambda d: [f.unlink() for f in largest_data_files(d)], "state"),
    "largest ocdbt data file truncated": (
        lambda d: [f.write_bytes(f.read_bytes()[:10]) for f in largest_data_files(d)], "state"),
    "_METADATA deleted": (lambda d: (d / "state" / "_METADATA").unlink(), "state/_METADATA"),
    "_METADATA not JSON": (lambda d: (d / "state" / "_METADATA").write_text("{garbage"), "state/_METADATA"),
    "commit marker deleted": (lambda d: (d / "commit_success.txt").unlink(), "commit_success.txt"),
    "config item deleted": (lambda d: (d / "config" / "metadata").unlink(), "config/metadata"),
}


def _tiny_backbone_record() -> dict:
    """The shipped model's backbone record, shrunk to a tiny U-Net (cheap to save and load)."""
    import json

    from rismvdr.localize.weights import default_weights_dir

    record = json.loads((default_weights_dir() / "model.json").read_text())["backbone"]
    return dict(record, widths=[8, 8, 8], groups=4)


def _fake_backbone_run(directory, steps=(3, 6, 9, 12)):
    """A run directory as `rismvdr train` leaves it (`checkpoints/<step>` with the state, the
    record and the metrics), its EMA weights the initial parameters times the step."""
    from flax import nnx

    from rismvdr.models.backbone import Backbone, BackboneConfig
    from rismvdr.models.params import split_model

    record = {"stage": "backbone", "backbone": _tiny_backbone_record()}
    _, params = split_model(Backbone(BackboneConfig.from_dict(record["backbone"]), rngs=nnx.Rngs(0)))
    params = [jnp.asarray(p, jnp.float32) for p in params]
    with Checkpointer(directory / "checkpoints", keep_best=len(steps)) as ckpt:
        for s in steps:
            ema = [p * s for p in params]
            ckpt.save(s, {"train": {"ema": ema, "step": jnp.asarray(s, jnp.int32)}}, config=record,
                      metrics={"val/objective": 1.0 / s})  # the later the better: 12 is the best
    return params


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bb_run")
    params = _fake_backbone_run(d)
    return d, params


def _damaged_copy(backbone_run, tmp_path, how, step=12):
    import shutil

    src, params = backbone_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    DAMAGES[how][0](dst / "checkpoints" / str(step))
    return dst, params


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(backbone_run, tmp_path, caplog, how):
    """Checkpoints 3, 6, 9, 12, with 12 damaged: every reader that picks a step itself ("latest",
    "best") uses 9, with one warning line naming step 12 and the damaged file, and nothing else
    (no exception left for Python to print: a read of the damaged step still in flight when
    Orbax closes its event loop is finished first)."""
    from rismvdr.localize.weights import load_learned

    run, params = _damaged_copy(backbone_run, tmp_path, how)
    ckdir = run / "checkpoints"
    want_file = DAMAGES[how][1]
    with caplog.at_level("WARNING"):
        for step in ("latest", "best"):
            caplog.clear()
            model = load_learned(run, step=step)
            np.testing.assert_array_equal(np.asarray(model.backbone_params[0]), np.asarray(params[0] * 9))
            warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "step 12" in r.getMessage()]
            assert len(warnings) == 1 and "\n" not in warnings[0], warnings
            assert f"({want_file}" in warnings[0], warnings[0]
        state, config, metrics = restore_run(ckdir, step="latest")
        assert int(state["train"]["step"]) == 9 and metrics == {"val/objective": 1.0 / 9}
        state, _, _ = restore_run(ckdir, step="best")
        assert int(state["train"]["step"]) == 9
        with Checkpointer(ckdir, keep_best=4) as ckpt:  # a writer resuming: 12 is deleted
            step, state = ckpt.restore_latest(discard_damaged=True)
            assert step == 9 and int(state["train"]["step"]) == 9
            assert ckpt.steps() == [3, 6, 9]
    # the intact step 12 of the source run is the one both rules pick
    assert int(restore_run(backbone_run[0] / "checkpoints", step="latest")[0]["train"]["step"]) == 12


def test_no_intact_checkpoint_is_a_one_line_error(backbone_run, tmp_path):
    from rismvdr.localize.weights import load_learned

    run, _ = _damaged_copy(backbone_run, tmp_path, "_METADATA deleted")
    for s in (3, 6, 9):
        DAMAGES["commit marker deleted"][0](run / "checkpoints" / str(s))
    for call in (lambda: load_learned(run, step="latest"), lambda: restore_run(run / "checkpoints", step="best"),
                 lambda: load_learned(run, step=9)):
        with pytest.raises(ValueError, match="no intact checkpoint") as err:
            call()
        assert "\n" not in str(err.value) and "step 9: commit_success.txt: missing" in str(err.value)
    assert "step 12: state/_METADATA: missing" in str(pytest.raises(ValueError, restore_run, run / "checkpoints").value)


def test_checkpoint_problem_names_nothing_for_an_intact_step(backbone_run):
    from rismvdr.localize.weights import checkpoint_problem

    for s in (3, 6, 9, 12):
        assert checkpoint_problem(backbone_run[0] / "checkpoints" / str(s)) is None
    assert checkpoint_problem(backbone_run[0] / "checkpoints" / "99") == "the step directory is missing"


@pytest.mark.parametrize("how", ["largest ocdbt data file deleted", "largest ocdbt data file truncated"])
def test_checkpoint_problem_names_a_missing_or_truncated_data_file(backbone_run, tmp_path, how):
    """A data file the state's OCDBT tree points into, deleted or cut short, is found from the
    files alone (Orbax is never asked to restore the step) and named."""
    from rismvdr.localize.weights import checkpoint_problem

    src = backbone_run[0] / "checkpoints" / "12"
    damaged = {f"state/{f.relative_to(src / 'state')}" for f in largest_data_files(src)}
    run, _ = _damaged_copy(backbone_run, tmp_path, how)
    problem = checkpoint_problem(run / "checkpoints" / "12")
    word = "missing" if "deleted" in how else "truncated"
    assert problem is not None, how
    file, what = problem.split(": ", 1)
    assert file in damaged and what.startswith(word), problem


_ORPHANED_READS = textwrap.dedent("""
    import asyncio, contextlib, sys, time

    import tensorstore as ts

    from rismvdr.localize.weights import quiet_restore

    async def read(future):
        return await future

    async def fail():
        await asyncio.sleep(0.01)
        raise ValueError("a damaged file")

    async def restore(futures):
        await asyncio.gather(fail(), *(read(f) for f in futures))

    pairs = [ts.Promise.new() for _ in range(20)]  # TensorStore reads still in flight
    try:
        with quiet_restore() if sys.argv[1] == "quiet" else contextlib.nullcontext():
            loop = asyncio.new_event_loop()  # as Orbax runs each restore: a fresh loop, closed at once
            try:
                loop.run_until_complete(restore([future for _, future in pairs]))
            finally:
                asyncio.set_event_loop(None)
                loop.close()
    except ValueError:
        pass
    for promise, _ in pairs:  # the reads finish after the loop has closed
        promise.set_result(None)
    time.sleep(0.2)
    print("done")
""")


def test_quiet_restore_finishes_the_reads_a_failed_restore_leaves_behind():
    """One read of a restore fails while others are in flight: under `quiet_restore` those are
    cancelled before the loop closes, so nothing is printed when they finish (without it, each
    prints "RuntimeError: Event loop is closed")."""
    runs = {mode: subprocess.run([sys.executable, "-c", _ORPHANED_READS, mode], capture_output=True, text=True,
                                 timeout=120, env=subprocess_env(1), cwd=REPO)
            for mode in ("loud", "quiet")}
    assert runs["loud"].stdout.strip() == "done" and "Event loop is closed" in runs["loud"].stderr
    assert runs["quiet"].returncode == 0 and runs["quiet"].stdout.strip() == "done", runs["quiet"].stderr
    assert runs["quiet"].stderr == ""


_RESTORE_LATEST = textwrap.dedent("""
    import logging, sys

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rismvdr.train.checkpoint import restore_run

    state, _, _ = restore_run(sys.argv[1], step="latest")
    print(int(state["train"]["step"]))
""")


def test_a_state_that_fails_to_restore_is_skipped_with_one_line(backbone_run, tmp_path):
    """A data file of the right length but garbled passes the file checks and fails in Orbax:
    the step is skipped with one warning line, and nothing else of the failed restore (tracebacks,
    TensorStore specs, absl or asyncio logs) reaches stderr."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(backbone_run[0], run)
    for f in largest_data_files(run / "checkpoints" / "12"):
        f.write_bytes(bytes((7 * i + 3) % 256 for i in range(f.stat().st_size)))
    proc = subprocess.run([sys.executable, "-c", _RESTORE_LATEST, str(run / "checkpoints")], capture_output=True,
                          text=True, timeout=120, env=subprocess_env(1), cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "9", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING rismvdr.localize.weights: checkpoint step 12 "), lines
    assert "(state" in lines[0] and len(lines[0]) < 600, lines[0]


def _rismvdr(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rismvdr.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env=subprocess_env(1), cwd=REPO)


def _assert_no_noise(stderr: str) -> None:
    for line in stderr.splitlines():
        assert not any(word in line for word in ("Traceback", "Event loop is closed", "tensorstore", "absl")), line


@pytest.mark.slow
def test_cli_resume_and_localize_past_a_damaged_checkpoint_warn_in_one_line(tmp_path):
    """`rismvdr train --resume` and `rismvdr localize --checkpoint` on a run whose latest
    checkpoint lost its largest data file: one warning line naming the step and the file, and
    no tracebacks, TensorStore specs or Orbax logs; with no intact checkpoint, a one-line error."""
    import shutil

    run = tmp_path / "run"
    train = _rismvdr("train", "--config", "tiny", "--workdir", run, "--set", "val_scenes=4",
                     "--set", "val_peak_scenes=2", "-q")
    assert train.returncode == 0, train.stderr
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [3, 6]
    for f in largest_data_files(run / "checkpoints" / "6"):
        f.unlink()
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)

    resume = _rismvdr("train", "--resume", "--workdir", run, "-q")
    assert resume.returncode == 0, resume.stderr
    _assert_no_noise(resume.stderr)
    named = [line for line in resume.stderr.splitlines() if "step 6 " in line]
    assert len(named) == 2, resume.stderr  # the step skipped, then deleted to be saved again
    assert named[0].startswith("WARNING rismvdr.localize.weights: checkpoint step 6 ") and "(state/" in named[0]
    assert "deleting damaged checkpoint step 6 " in named[1]

    scenes = tmp_path / "scenes.npz"
    assert _rismvdr("simulate", "--scenes", "1", "--out", scenes).returncode == 0
    localize = ["localize", scenes, "--method", "learned", "--checkpoint", damaged, "--checkpoint-step", "latest",
                "--out", tmp_path / "det.csv", "-q"]
    loc = _rismvdr(*localize)
    assert loc.returncode == 0, loc.stderr
    _assert_no_noise(loc.stderr)
    lines = loc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING rismvdr.localize.weights: checkpoint step 6 "), lines

    (damaged / "checkpoints" / "3" / "commit_success.txt").unlink()
    loc = _rismvdr(*localize)
    assert loc.returncode != 0
    _assert_no_noise(loc.stderr)
    lines = loc.stderr.splitlines()
    assert [line.split(" in ")[0] for line in lines[:2]] == [
        "WARNING rismvdr.localize.weights: checkpoint step 6", "WARNING rismvdr.localize.weights: checkpoint step 3"]
    assert len(lines) == 3 and lines[2].startswith("rismvdr localize: error: ") and "no intact checkpoint" in lines[2]
