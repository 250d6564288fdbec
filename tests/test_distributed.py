"""Several devices and several processes.

- `localize` split over 8 simulated CPU devices gives the detections of one device, for
  `mvdr-als`, `somp-ml` and `learned` (slow: a subprocess with a time limit; `mvdr-als` and
  `learned` stalled in jaxlib 0.10's CPU LAPACK kernels while the 8 devices ran at once, see
  `rismvdr.localize.registry._per_device`).
- `rismvdr.train.distributed.initialize` reads the environment variables of the Several machines page and refuses a
  partial or malformed set with a one-line error.
- Slow (JAX's real multi-process runtime, several processes on 127.0.0.1, one CPU device each;
  each needs minutes on the 2-core CPU): two processes of `rismvdr train --distributed --config
  tiny` log the loss curve of one process with two simulated devices and leave a checkpoint one
  process restores; killing one process makes the other exit non-zero within a bounded time
  with a one-line error, and `--resume` with two processes reaches the final step. Two processes of
  `rismvdr localize --distributed` write the CSV and maps of one process, byte for byte. Two
  processes of `rismvdr train-refiner --distributed` on a tiny backbone log the refiner loss of
  one process (one device) and leave a checkpoint one process loads. The
  commands are the documentation's (page "Several machines"), with only the port changed.
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
@pytest.mark.parametrize("method", ["mvdr-als", "somp-ml", "learned"])
def test_localize_on_8_devices_equals_one(method):
    """11 scenes, 2 a device: one call of 16 rows on 8 simulated CPU devices (5 padded) against 6
    calls on one, in a subprocess with a time limit: a deadlock in XLA's CPU runtime (every pool
    thread waiting in a batched LAPACK call, `rismvdr.localize.registry._per_device`) fails the
    test instead of hanging it."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", _LOCALIZE_8, method], env=env, capture_output=True, text=True,
                          timeout=900)  # measured 80-110 s each on the loaded 2-core machine
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.splitlines()[-1])
    a, b = ({k: np.asarray(v) for k, v in res[n].items()} for n in ("1", "8"))
    np.testing.assert_array_equal(b["valid"], a["valid"], err_msg=f"{method}: valid")  # the same sources
    v = a["valid"]
    assert v.sum() > 0, "no detections: the comparison would be empty"
    # CPU devices run the one-device program on each device's rows in turn (`_per_device`): the
    # same numbers bit for bit, not only to float32 rounding (a fused program on accelerators)
    for name in ("phi", "theta", "r", "score_db"):
        np.testing.assert_array_equal(b[name][v], a[name][v], err_msg=f"{method}: {name}")
    np.testing.assert_array_equal(b["power_db"], a["power_db"], err_msg=f"{method}: power_db")


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


def test_localize_refuses_another_process_devices():
    """`devices=` takes this process's devices only; a device of another process is named."""

    class Foreign:
        process_index = jax.process_index() + 1

        def __repr__(self):
            return "CpuDevice(id=99)"

    cfg = get_scenario("seed")
    with pytest.raises(ValueError, match=r"devices: CpuDevice\(id=99\) belongs to process 1.*distributed=True"):
        localize("mvdr-als", simulate(cfg, 3, 2), scenario_geometry(cfg), settings_for_scenario(cfg),
                 progress=False, devices=[jax.local_devices()[0], Foreign()])


def test_cli_distributed_flags_are_documented():
    from rismvdr.cli import build_parser

    for command in ("train", "train-refiner", "localize"):
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "--distributed" in text and "JAX_COORDINATOR_ADDRESS" in text
        assert "--distributed-timeout-s" in text and "seconds" in text


# ------------------------------------------------------------------------------------------
# several processes (slow): the Several machines page's commands
# ------------------------------------------------------------------------------------------
README = Path(__file__).resolve().parents[1] / "docs" / "several-machines.md"
RISMVDR = Path(sys.executable).with_name("rismvdr")


def _readme_commands() -> dict[str, list[str]]:
    """The commands of the page's "Several machines" block, by role: `start` (2 processes),
    `one` (one process, two devices), `resume` (2 processes); each as its argv plus its env."""
    text = README.read_text()
    block = text.split("# Several machines", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out: dict[str, list[str]] = {"start": [], "one": [], "resume": []}
    for ln in lines:
        role = "resume" if "--resume" in ln else "start" if "--distributed" in ln else "one"
        out[role].append(ln)
    assert [len(out[k]) for k in ("start", "one", "resume")] == [2, 1, 2], out
    return out


def _readme_localize_commands() -> dict[str, list[str]]:
    """The second block of the page's "Several machines" section, by role: `simulate` (1),
    `start` (2 processes of `localize --distributed`), `one` (one process)."""
    text = README.read_text().split("# Several machines", 1)[1]
    block = text.split("```bash", 2)[2].split("```", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out: dict[str, list[str]] = {"simulate": [], "start": [], "one": []}
    for ln in lines:
        out["simulate" if " simulate " in ln else "start" if "--distributed" in ln else "one"].append(ln)
    assert [len(out[k]) for k in ("simulate", "start", "one")] == [1, 2, 1], out
    assert all(" localize " in ln for ln in out["start"] + out["one"]), out
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(line: str, port: int) -> tuple[list[str], dict]:
    """(argv, environment) of a documented command line: the address -> 127.0.0.1:port, `rismvdr` ->
    this environment's, one CPU device unless the line sets XLA_FLAGS."""
    words = line.replace("10.0.0.1:23456", f"127.0.0.1:{port}").split()
    env = dict(os.environ, JAX_PLATFORMS="cpu", RISMVDR_COMPILE_CACHE="0",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    while "=" in words[0]:
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    assert words[0] == "rismvdr", line
    return [str(RISMVDR)] + words[1:], env


def _popen(line: str, *, port: int, workdir: Path, log: Path) -> subprocess.Popen:
    """Start a documented command line: the address -> 127.0.0.1:port, the work directory -> `workdir`,
    `rismvdr` -> this environment's; one CPU device unless the line sets XLA_FLAGS; output to `log`.*"""
    argv, env = _command(line, port)
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
    one error line; the page's --resume commands (two processes) then reach step 40."""
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


def _run_in(line: str, *, port: int, cwd: Path, log: Path) -> subprocess.Popen:
    """Start a documented command line in `cwd` (its file names are relative): the address ->
    127.0.0.1:port, `rismvdr` -> this environment's, one CPU device; output to `log`.*"""
    argv, env = _command(line, port)
    argv += ["-q"] if argv[1] == "localize" else []
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"))


@pytest.mark.slow
def test_two_processes_localize_like_one_process(tmp_path):
    """The README's localize commands: two processes of `rismvdr localize --distributed` (one CPU
    device each; 5 scenes in batches of 2: process 0 runs batches 0 and 2, process 1 batch 1)
    both exit 0; process 0 alone writes the detections CSV and the maps, equal to a one-process
    run's byte for byte (CSV) and bit for bit (maps)."""
    cmds, port = _readme_localize_commands(), _free_port()
    sim = _run_in(cmds["simulate"][0], port=port, cwd=tmp_path, log=tmp_path / "sim")
    assert sim.wait(timeout=600) == 0, (tmp_path / "sim.err").read_text()[-3000:]
    procs = [_run_in(ln, port=port, cwd=tmp_path, log=tmp_path / f"p{i}") for i, ln in enumerate(cmds["start"])]
    for i, p in enumerate(procs):
        assert p.wait(timeout=1500) == 0, (tmp_path / f"p{i}.err").read_text()[-3000:]
    ref = _run_in(cmds["one"][0], port=port, cwd=tmp_path, log=tmp_path / "one")
    assert ref.wait(timeout=1500) == 0, (tmp_path / "one.err").read_text()[-3000:]

    assert "detections in 5 scenes" in (tmp_path / "p0.out").read_text()
    assert "detections" not in (tmp_path / "p1.out").read_text()  # process 0 writes and reports
    csv2, csv1 = (tmp_path / "detections.csv").read_text(), (tmp_path / "detections-1p.csv").read_text()
    assert len(csv1.splitlines()) > 1, "no detections: the comparison would be empty"
    assert csv2 == csv1
    with np.load(tmp_path / "maps.npz") as m2, np.load(tmp_path / "maps-1p.npz") as m1:
        assert sorted(m2.files) == sorted(m1.files)
        for key in m1.files:
            np.testing.assert_array_equal(m2[key], m1[key], err_msg=key)


def _readme_refiner_commands() -> dict[str, list[str]]:
    """The third block of the README's "Several machines" section, by role: `backbone` (one
    process of `rismvdr train`), `start` (2 processes of `train-refiner --distributed`), `one`
    (one process of `train-refiner`, one device)."""
    text = README.read_text().split("# Several machines", 1)[1]
    block = text.split("```bash", 3)[3].split("```", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out: dict[str, list[str]] = {"backbone": [], "start": [], "one": []}
    for ln in lines:
        out["backbone" if " train " in ln else "start" if "--distributed" in ln else "one"].append(ln)
    assert [len(out[k]) for k in ("backbone", "start", "one")] == [1, 2, 1], out
    assert all(" train-refiner " in ln for ln in out["start"] + out["one"]), out
    return out


@pytest.mark.slow
def test_two_processes_train_refiner_like_one_process(tmp_path):
    """The README's refiner commands: a tiny backbone (one process), then two processes of
    `rismvdr train-refiner --distributed` on it (one CPU device each) and one process with one
    device and the same global batch (two simulated CPU devices in one process stall in jaxlib
    0.10's LAPACK kernels, README "Several machines"): both exit 0, every step's refiner loss equals the one-process run's (1e-4
    relative), process 0 alone wrote the metrics, and the refiner checkpoint loads in this one
    process (`load_learned`, the loader of `localize --checkpoint`) with the one-process run's
    parameters."""
    from rismvdr.localize.weights import load_learned

    cmds, port = _readme_refiner_commands(), _free_port()
    bb = tmp_path / "bb"
    # the backbone directory -> this test's (`_popen` sets --workdir)
    line = lambda ln: ln.replace("--backbone /shared/runs/tiny-bb ", f"--backbone {bb} ")  # noqa: E731
    assert all(line(ln) != ln for ln in cmds["start"] + cmds["one"]), cmds
    steps = int(next(w for w in cmds["one"][0].split() if w.startswith("steps=")).split("=")[1])
    back = _popen(cmds["backbone"][0], port=port, workdir=bb, log=tmp_path / "bb")
    assert back.wait(timeout=900) == 0, (tmp_path / "bb.err").read_text()[-3000:]

    two, one = tmp_path / "two", tmp_path / "one"
    procs = [_popen(line(ln), port=port, workdir=two, log=tmp_path / f"p{i}") for i, ln in enumerate(cmds["start"])]
    for i, p in enumerate(procs):
        assert p.wait(timeout=900) == 0, (tmp_path / f"p{i}.err").read_text()[-3000:]
    ref = _popen(line(cmds["one"][0]), port=port, workdir=one, log=tmp_path / "one")
    assert ref.wait(timeout=900) == 0, (tmp_path / "one.err").read_text()[-3000:]

    a, b = _losses(two), _losses(one)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))  # once each: process 1 wrote no rows
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4 * abs(b[step]), (step, a[step], b[step])
    assert f"done: {steps} steps" in (tmp_path / "p0.out").read_text()
    assert "done" not in (tmp_path / "p1.out").read_text()  # the summary is process 0's

    m2, m1 = load_learned(two, step="latest"), load_learned(one, step="latest")
    assert m2.has_refiner and m2.info["stage"] == "refiner" and m2.refiner_cfg == m1.refiner_cfg
    for x, y in zip(jax.tree_util.tree_leaves(m2.refiner_params), jax.tree_util.tree_leaves(m1.refiner_params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    frozen = load_learned(bb).backbone_params
    for x, y in zip(jax.tree_util.tree_leaves(m2.backbone_params), jax.tree_util.tree_leaves(frozen)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # the backbone stayed frozen
