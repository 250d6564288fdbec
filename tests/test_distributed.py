"""Several devices and several processes.

- `localize` split over 8 simulated CPU devices gives the detections of one device, for
  `mvdr-als`, `somp-ml` and `learned` (slow: a subprocess with a time limit).
- `rismvdr.train.distributed.initialize` reads the README's environment variables and refuses a
  partial or malformed set with a one-line error.
- Slow (JAX's real multi-process runtime, several processes on 127.0.0.1, one CPU device each;
  each needs minutes on the 2-core CPU): two processes of `rismvdr train --distributed --config
  tiny` log the loss curve of one process with two simulated devices and leave a checkpoint one
  process restores; killing one process makes the other exit non-zero within a bounded time
  with a one-line error, and `--resume` with two processes reaches the final step. The commands
  are the README's (section "Several machines"), with only the port changed.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.train import distributed

SMALL = dict(phi_step_deg=2.0, theta_step_deg=2.0, n_planes=8)
# one device against eight (complex64 scenes): the eight run each device's rows as one fused program
# (`shard_map`), the one runs the method's separate jitted stages; the same bounds as batch-size
# independence in tests/test_methods.py (radians, metres, dB)
DET_TOL = {"phi": 1e-3, "theta": 1e-3, "r": 2e-2, "score_db": 2e-2}
MAP_TOL_DB = 2e-2
# the tiny config's run for the multi-process tests: no peak metrics (they would compile the whole
# localizer in every process), every step logged
TRAIN_SETS = ["--set", "val_peak_scenes=0"]


# ------------------------------------------------------------------------------------------
# localize over 8 devices
# ------------------------------------------------------------------------------------------
_LOCALIZE_8 = """
import json, sys
import jax, numpy as np
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
assert jax.local_device_count() == 8
cfg = get_scenario("seed")
scenes = simulate(cfg, 3, 11)
settings = settings_for_scenario(cfg, batch_size=2).with_grid(phi_step_deg=2.0, theta_step_deg=2.0, n_planes=8)
out = {}
for n in (1, 8):
    res = localize(sys.argv[1], scenes, scenario_geometry(cfg), settings, progress=False,
                   devices=jax.local_devices()[:n])
    out[n] = {k: np.asarray(v).tolist() for k, v in zip(res.detections._fields, res.detections)}
    out[n]["power_db"] = res.power_db.tolist()
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.xfail(reason="not yet seen to pass: XLA's CPU runtime stalled on 8 simulated devices of the 2-core "
                          "machine (probably jaxlib 0.10's parallel batched LAPACK deadlock, benchmarks/README.md); "
                          "runs, and reports XPASS when it works", strict=False)
@pytest.mark.parametrize("method", ["mvdr-als", "somp-ml", "learned"])
def test_localize_on_8_devices_equals_one(method):
    """11 scenes, 2 a device: one call of 16 rows on 8 simulated CPU devices (5 padded) against 6
    calls on one, in a subprocess with a time limit (XLA's CPU runtime was seen to stall running
    these programs on 8 simulated devices of the loaded 2-core machine)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", _LOCALIZE_8, method], env=env, capture_output=True, text=True,
                          timeout=300)  # it stalls rather than fails: see the xfail
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.splitlines()[-1])
    a, b = ({k: np.asarray(v) for k, v in res[n].items()} for n in ("1", "8"))
    np.testing.assert_array_equal(b["valid"], a["valid"], err_msg=f"{method}: valid")  # the same sources
    v = a["valid"]
    assert v.sum() > 0, "no detections: the comparison would be empty"
    for name, tol in DET_TOL.items():
        np.testing.assert_allclose(b[name][v], a[name][v], rtol=0, atol=tol, err_msg=f"{method}: {name}")
    np.testing.assert_allclose(b["power_db"], a["power_db"], rtol=0, atol=MAP_TOL_DB)


def test_localize_devices_empty_is_an_error():
    cfg = get_scenario("seed")
    with pytest.raises(ValueError, match="devices"):
        localize("mvdr-als", simulate(cfg, 3, 2), scenario_geometry(cfg), settings_for_scenario(cfg),
                 progress=False, devices=[])


# ------------------------------------------------------------------------------------------
# the environment --distributed reads
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, match", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, "JAX_NUM_PROCESSES: not set"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS: not set"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "integer"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"\[0, 1\]"),
])
def test_initialize_refuses_a_partial_or_bad_environment(monkeypatch, env, match):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        distributed.initialize(timeout_s=5)
    assert jax.process_count() == 1


def test_one_process_is_main_and_errors_pass_through():
    assert distributed.is_main()
    with pytest.raises(KeyError):  # one process: the guard changes nothing
        with distributed.lost_process_guard(lambda: "step 3"):
            raise KeyError("x")


def test_cli_distributed_flags_are_documented():
    from rismvdr.cli import build_parser

    for command in ("train", "train-refiner"):
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "--distributed" in text and "JAX_COORDINATOR_ADDRESS" in text
        assert "--distributed-timeout-s" in text and "seconds" in text


# ------------------------------------------------------------------------------------------
# several processes (slow): the README's commands
# ------------------------------------------------------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"
RISMVDR = Path(sys.executable).with_name("rismvdr")


def _readme_commands() -> dict[str, list[str]]:
    """The commands of the README's "Several machines" block, by role: `start` (2 processes),
    `one` (one process, two devices), `resume` (2 processes); each as its argv plus its env."""
    text = README.read_text()
    block = text.split("## Several machines", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out: dict[str, list[str]] = {"start": [], "one": [], "resume": []}
    for ln in lines:
        role = "resume" if "--resume" in ln else "start" if "--distributed" in ln else "one"
        out[role].append(ln)
    assert [len(out[k]) for k in ("start", "one", "resume")] == [2, 1, 2], out
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _popen(line: str, *, port: int, workdir: Path, log: Path) -> subprocess.Popen:
    """Start a README command line: the address -> 127.0.0.1:port, the work directory -> `workdir`,
    `rismvdr` -> this environment's; one CPU device unless the line sets XLA_FLAGS; output to `log`.*"""
    words = line.replace("10.0.0.1:23456", f"127.0.0.1:{port}").split()
    env = dict(os.environ, JAX_PLATFORMS="cpu", RISMVDR_COMPILE_CACHE="0",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    while "=" in words[0]:
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    assert words[0] == "rismvdr", line
    argv = [str(RISMVDR)] + words[1:]
    i = argv.index("--workdir")
    argv[i + 1] = str(workdir)
    return subprocess.Popen(argv + ["-q"], env=env, stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"))


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    """Both processes exit 0; the loss of every step equals the one-process run's (1e-4
    relative); process 0 alone wrote the metrics; the checkpoint restores in this one process
    and holds the one-process run's parameters."""
    from rismvdr.train.checkpoint import restore_run

    cmds, port = _readme_commands(), _free_port()
    two, one = tmp_path / "two", tmp_path / "one"
    procs = [_popen(ln, port=port, workdir=two, log=tmp_path / f"p{i}") for i, ln in enumerate(cmds["start"])]
    for i, p in enumerate(procs):
        assert p.wait(timeout=1500) == 0, (tmp_path / f"p{i}.err").read_text()[-3000:]
    ref = _popen(cmds["one"][0], port=port, workdir=one, log=tmp_path / "one")
    assert ref.wait(timeout=1500) == 0, (tmp_path / "one.err").read_text()[-3000:]

    a, b = _losses(two), _losses(one)
    assert sorted(a) == sorted(b) == list(range(1, 41))  # once each: process 1 wrote no rows
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4 * abs(b[step]), (step, a[step], b[step])
    assert "done: 40 steps" in (tmp_path / "p0.out").read_text()
    assert "done" not in (tmp_path / "p1.out").read_text()  # the summary is process 0's

    s2, cfg2, _ = restore_run(two / "checkpoints")
    s1, cfg1, _ = restore_run(one / "checkpoints")
    assert cfg2 == cfg1
    assert int(np.asarray(s2["train"]["step"])) == 40
    for x, y in zip(jax.tree_util.tree_leaves(s2["train"]["params"]), jax.tree_util.tree_leaves(s1["train"]["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_lost_process_stops_the_other_and_resume_finishes(tmp_path):
    """Process 1 is killed once a checkpoint exists: process 0 exits non-zero within 60 s with
    one error line; the README's --resume commands (two processes) then reach step 40."""
    cmds, work = _readme_commands(), tmp_path / "run"
    port = _free_port()
    procs = [_popen(ln, port=port, workdir=work, log=tmp_path / f"p{i}") for i, ln in enumerate(cmds["start"])]
    deadline = time.time() + 1500
    while time.time() < deadline and not (work / "checkpoints" / "3").is_dir():
        assert procs[0].poll() is None, (tmp_path / "p0.err").read_text()[-3000:]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    rc = procs[0].wait(timeout=120)
    took = time.time() - t0
    procs[1].wait(timeout=30)
    err = (tmp_path / "p0.err").read_text()
    assert rc != 0 and took < 60, (rc, took, err[-3000:])
    lines = [ln for ln in err.splitlines() if ln.startswith("rismvdr train: error:")]
    assert len(lines) == 1 and "--resume" in lines[0], err[-3000:]
    assert "Traceback" not in err

    port = _free_port()
    procs = [_popen(ln, port=port, workdir=work, log=tmp_path / f"r{i}") for i, ln in enumerate(cmds["resume"])]
    for i, p in enumerate(procs):
        assert p.wait(timeout=1500) == 0, (tmp_path / f"r{i}.err").read_text()[-3000:]
    assert "done: 40 steps" in (tmp_path / "r0.out").read_text()
    assert sorted(_losses(work)) == list(range(1, 41))
