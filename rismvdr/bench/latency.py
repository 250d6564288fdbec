"""`rismvdr bench latency`: how long a user waits for one command, start-up included.

Every measurement is a whole process timed wall-clock from the driver (`time.perf_counter`
around `subprocess.run`; the child's user + system CPU time is recorded beside it). The commands
run through the `rismvdr` console script next to `sys.executable` (else `python -m rismvdr.cli`):

* `rismvdr --help` (the parser only: no JAX is loaded);
* `rismvdr simulate` of 1 scene of the seed scenario;
* `rismvdr localize` of that one scene with each method (default: every method that applies to a
  seed-scenario file, the learned ones with the shipped weights; `rismvdr methods` lists them).

`simulate` and `localize` run with a cold compilation cache (a fresh empty `RISMVDR_CACHE_DIR`
for every run: every program compiles) and with a warm one (one directory per command, filled by
its warm-up run and kept: every program loads). The reference is `python -c "import jax"`, the
floor of any command that computes.

Every process of a series reads and writes its modules' compiled bytecode in one folder of the
series (`PYTHONPYCACHEPREFIX`), whatever `PYTHONDONTWRITEBYTECODE` says where the bench was
started: the warm-up round compiles the sources of JAX and of rismvdr alike, and the timed rounds
read them back, as after a `pip install` (which writes the bytecode). Without it, an editable
install in an environment that writes no bytecode compiles rismvdr's sources in every process
(about 0.1 s of a one-scene call), while the reference reads JAX's installed bytecode.

The series: a warm-up round, then `repeats` timed rounds; each round runs every command once, in
the same order, with the reference run right before each of them, so that the reference sees the
same machine drift as the commands. A command's row gives the median, min and max of its timed
runs and `ratio_to_import_jax`: its median over the median of every timed reference run of the
same series.

Outputs in `--out`: `latency.json` (`{"meta": ..., "records": [...], "runs": [...]}`; `records`
one row per command and cache, `runs` every run with its seconds, warm-up included; each loads
with `pandas.DataFrame(json.load(f)[key])`; `meta["machine"]` the CPU model, cores, Python,
versions and the load average before and after) and `latency.md` (one table). The JSON is
rewritten after every run, so an interrupted series keeps what it measured.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from rismvdr.bench.machine import VERSIONED, cpu_model, package_version
from rismvdr.bench.report import fmt_number
from rismvdr.io import CACHE_DIR_ENV, COMPILE_CACHE_ENV, atomic_write, write_json
from rismvdr.localize.registry import METHODS, method_names

__all__ = ["REPEATS", "QUICK_METHODS", "TIMEOUT_S", "CACHES", "REFERENCE", "Command", "cli_prefix",
           "default_methods", "plan_commands", "latency_markdown", "run_latency"]

#: Timed runs of every command (after one warm-up run).
REPEATS = 3
#: The methods of `--quick` (which also times 1 run per command).
QUICK_METHODS = ("somp-ml", "learned")
#: Wall-clock limit of one run, seconds; a run past it is killed and recorded as a timeout.
TIMEOUT_S = 600.0
#: Compilation cache states: `cold` a fresh empty cache directory per run, `warm` the command's
#: own directory, filled by its warm-up run.
CACHES = ("cold", "warm")
#: The label of the reference command, `python -c "import jax"`.
REFERENCE = "python -c 'import jax'"


class Command(NamedTuple):
    """One command of the series.

    Attributes:
      label: how the report names it (`rismvdr localize --method somp-ml`).
      argv: the full argument vector run.
      cache: `"cold"`, `"warm"` (see `CACHES`) or None: no persistent compilation cache
        (`RISMVDR_COMPILE_CACHE=0`; for commands that compile nothing).
    """

    label: str
    argv: tuple[str, ...]
    cache: str | None = None


def cli_prefix() -> list[str]:
    """How to start the `rismvdr` command: the console script next to `sys.executable` when it
    exists, else `sys.executable -m rismvdr.cli`."""
    script = Path(sys.executable).with_name("rismvdr.exe" if os.name == "nt" else "rismvdr")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rismvdr.cli"]


def default_methods() -> list[str]:
    """Every method that applies to a seed-scenario (RIS) file and needs no model beyond the
    shipped weights, in registry order."""
    return method_names(full_array=False)


def plan_commands(work, *, methods=None, cli: list[str] | None = None) -> tuple[list[str], list[Command]]:
    """The setup command and the timed commands of the default series.

    Args:
      work: scratch folder of the series (scene file, detections).
      methods: methods of `localize` (default `default_methods()`).
      cli: how to start `rismvdr` (default `cli_prefix()`).

    Returns:
      `(setup, commands)`: `setup` writes the one-scene file every `localize` reads (run once,
      untimed, before the series); `commands` in the order each round runs them.
    """
    work = Path(work)
    cli = list(cli or cli_prefix())
    names = list(methods) if methods else default_methods()
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown {', '.join(bad)}; known: {', '.join(METHODS)}")
    full_only = [m for m in names if METHODS[m].full_array_only]
    if full_only:
        raise ValueError(f"methods: {', '.join(full_only)} apply to full-array files only, not to a seed-scenario file")
    scene = work / "scene.npz"
    simulate = ["simulate", "--scenario", "seed", "--scenes", "1", "--seed", "0"]
    setup = [*cli, *simulate, "--out", str(scene)]
    commands = [Command("rismvdr --help", (*cli, "--help"))]
    commands += [Command("rismvdr simulate --scenes 1", (*cli, *simulate, "--out", str(work / f"simulate-{c}.npz")), c)
                 for c in CACHES]
    for m in names:
        commands += [Command(f"rismvdr localize --method {m}",
                             (*cli, "localize", str(scene), "--method", m, "--out", str(work / f"det-{m}-{c}.csv")), c)
                     for c in CACHES]
    return setup, commands


def _load_avg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _machine(env: dict, timeout_s: float) -> dict:
    """The machine record: no JAX backend starts in this process; the one the commands see is
    asked of a child process."""
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                host=socket.gethostname(), platform=platform.platform(), python=platform.python_version(),
                cpu_model=cpu_model(), cpu_count=os.cpu_count(), versions={m: package_version(m) for m in VERSIONED},
                jax_platforms=env.get("JAX_PLATFORMS"), xla_flags=env.get("XLA_FLAGS"), backend=None,
                device_kind=None)
    code = "import jax; print(jax.default_backend()); print(jax.devices()[0].device_kind)"
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and len(lines) >= 2:
            info.update(backend=lines[-2], device_kind=lines[-1])
    except subprocess.TimeoutExpired:
        pass
    return info


def _time(argv, env: dict, timeout_s: float) -> dict:
    """Run one process; its wall-clock `seconds`, CPU seconds (`cpu_s`, user + system of the
    child) and `status` ("ok", "failed (exit N): <stderr tail>" or "timeout after N s")."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(seconds=time.perf_counter() - t0, cpu_s=None, status=f"timeout after {timeout_s:.0f} s")
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])[-400:]
        return dict(seconds=seconds, cpu_s=cpu, status=f"failed (exit {proc.returncode}): {tail}")
    return dict(seconds=seconds, cpu_s=cpu, status="ok")


def _summary(runs: list[dict], commands: list[Command]) -> list[dict]:
    """One record per command and cache (the reference first) from the timed runs."""
    def stats(label, cache):
        return [r["seconds"] for r in runs if r["command"] == label and r["cache"] == cache and not r["warmup"]
                and r["status"] == "ok"]

    ref = stats(REFERENCE, None)
    ref_median = statistics.median(ref) if ref else None
    records = []
    for label, cache in [(REFERENCE, None)] + [(c.label, c.cache) for c in commands]:
        s = stats(label, cache)
        timed = [r for r in runs if r["command"] == label and r["cache"] == cache and not r["warmup"]]
        failed = [r["status"] for r in timed if r["status"] != "ok"]
        med = statistics.median(s) if s else None
        cpu = [r["cpu_s"] for r in timed if r["status"] == "ok" and r["cpu_s"] is not None]
        records.append(dict(command=label, cache=cache, n=len(s), median_s=med, min_s=min(s) if s else None,
                            max_s=max(s) if s else None, cpu_median_s=statistics.median(cpu) if cpu else None,
                            ratio_to_import_jax=med / ref_median if med is not None and ref_median else None,
                            status="ok" if not failed else failed[-1]))
    return records


def latency_markdown(records: list[dict], meta: dict) -> str:
    """The report's table (`latency.md`), headed by the machine, the load and the command line."""
    m = meta["machine"]
    v = m.get("versions", {})
    load = [" ".join(f"{x:.2f}" for x in la) if la else "n/a"
            for la in (meta.get("load_avg_before"), meta.get("load_avg_after"))]
    runs = f"{meta['repeats']} timed run{'s' if meta['repeats'] > 1 else ''}"
    lines = ["# rismvdr latency bench", "",
             f"{m.get('cpu_count')} CPUs ({m.get('cpu_model')}), backend {m.get('backend')}, Python {m.get('python')}, "
             f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}; {m.get('date')}; load average (1, 5, 15 min) "
             f"before {load[0]}, after {load[1]}. Command: `{meta['command']}`. Wall-clock seconds of the "
             f"whole process: median and min-max of {runs} after a warm-up run (the reference: of its run "
             f"before each of them); ratio: the median over the reference's median, measured in the same "
             f"series. Cache: the compilation cache, cold (an empty directory) or warm (filled by the "
             f"command's warm-up run). Python bytecode: compiled by the warm-up round into a folder of the "
             f"series and read back by the timed runs, for JAX and rismvdr alike.", "",
             "| command | cache | median s | min-max s | ratio to import jax |",
             "|---|---|---:|---:|---:|"]
    for r in records:
        if r["median_s"] is None:
            cells = [r["status"], "-", "-"]
        else:
            cells = [f"{r['median_s']:.2f}", f"{r['min_s']:.2f}-{r['max_s']:.2f}",
                     f"{fmt_number(r['ratio_to_import_jax'], '.2f', '-')}x"]
        lines.append(f"| `{r['command']}` | {r['cache'] or '-'} | {cells[0]} | {cells[1]} | {cells[2]} |")
    return "\n".join(lines)


def _write(out: Path, meta: dict, records: list[dict], runs: list[dict], final: bool) -> None:
    write_json(out / "latency.json", dict(meta=meta, records=records, runs=runs))
    if final:
        with atomic_write(out / "latency.md") as f:
            f.write(latency_markdown(records, meta) + "\n")


def run_latency(out, *, methods=None, repeats: int = REPEATS, quick: bool = False,
                commands: list[Command] | None = None, timeout_s: float = TIMEOUT_S, progress: bool = True,
                command: str | None = None) -> dict:
    """Time whole commands as a user runs them and write the report folder.

    Args:
      out: report folder (created).
      methods: methods of the `localize` commands (default `default_methods()`; with `quick`,
        `QUICK_METHODS`).
      repeats: timed runs of every command, after one warm-up run (`quick`: 1).
      quick: 1 timed run, methods `QUICK_METHODS` (unless `methods`).
      commands: the commands to time in place of the default series (no setup runs; the
        reference is always added).
      timeout_s: wall-clock limit of one run, seconds.
      progress: a line per run on stderr.
      command: the command line recorded in the report.

    Returns:
      `{"meta": ..., "records": [...], "runs": [...]}` as written to `latency.json`.

    Raises:
      ValueError: `repeats` below 1, or an unknown method or one that does not apply to a
        seed-scenario file.
      RuntimeError: the setup run (the scene file) failed.
    """
    if quick:
        repeats = 1
        methods = methods or list(QUICK_METHODS)
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1, got {repeats}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rismvdr-latency-"))
    base = {k: v for k, v in os.environ.items()
            if k not in (CACHE_DIR_ENV, COMPILE_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR")}
    base["TQDM_DISABLE"] = "1"
    base.pop("PYTHONDONTWRITEBYTECODE", None)  # the series' own bytecode folder (the module docstring)
    base["PYTHONPYCACHEPREFIX"] = str(work / "bytecode")
    try:
        setup = None
        if commands is None:
            setup, commands = plan_commands(work, methods=methods)
        commands = list(commands)
        reference = Command(REFERENCE, (sys.executable, "-c", "import jax"))
        meta = dict(generator="rismvdr bench latency", command=command or "rismvdr bench latency", quick=quick,
                    repeats=repeats, methods=list(methods) if methods else None, cli=cli_prefix(),
                    load_avg_before=_load_avg(), load_avg_after=None, partial=True,
                    bytecode="one folder per series (PYTHONPYCACHEPREFIX), written by the warm-up round")
        meta["machine"] = _machine(dict(base, **{COMPILE_CACHE_ENV: "0"}), timeout_s)
        t0 = time.perf_counter()
        if setup is not None:
            res = _time(setup, dict(base, **{CACHE_DIR_ENV: str(work / "setup-cache")}), timeout_s)
            if res["status"] != "ok":
                raise RuntimeError(f"latency bench: the setup run {' '.join(setup)} {res['status']}")
        warm_dirs = {i: work / f"warm-{i}" for i, c in enumerate(commands) if c.cache == "warm"}
        runs: list[dict] = []
        total = 2 * len(commands) * (repeats + 1)
        for rnd in range(repeats + 1):
            for i, cmd in enumerate(commands):
                for c in (reference, cmd):
                    if c.cache == "cold":
                        cache_dir = Path(tempfile.mkdtemp(prefix="cold-", dir=work))
                    elif c.cache == "warm":
                        cache_dir = warm_dirs[i]
                    else:
                        cache_dir = None
                    env = dict(base, **{COMPILE_CACHE_ENV: "0"}) if cache_dir is None else \
                        dict(base, **{CACHE_DIR_ENV: str(cache_dir)})
                    res = _time(c.argv, env, timeout_s)
                    if c.cache == "cold":
                        shutil.rmtree(cache_dir, ignore_errors=True)
                    runs.append(dict(command=c.label, cache=c.cache, round=rnd, warmup=rnd == 0, **res))
                    if progress:
                        what = "warm-up" if rnd == 0 else f"run {rnd}/{repeats}"
                        cache = f" ({c.cache} cache)" if c.cache else ""
                        shown = f"{res['seconds']:.2f} s" if res["status"] == "ok" else res["status"]
                        print(f"[{len(runs)}/{total}] {what}: {c.label}{cache}: {shown}", file=sys.stderr, flush=True)
                    _write(out, meta, _summary(runs, commands), runs, final=False)
        meta.update(partial=False, wall_s=time.perf_counter() - t0, load_avg_after=_load_avg())
        records = _summary(runs, commands)
        _write(out, meta, records, runs, final=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(latency_markdown(records, meta))
    print(f"wrote latency.json, latency.md to {out} (wall time {meta['wall_s']:.0f} s)")
    return dict(meta=meta, records=records, runs=runs)
