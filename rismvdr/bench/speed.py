"""`rismvdr bench speed`: scenes per second and peak memory of every stage, against the
original system's formula measured in the same run.

Every measurement runs in its own worker process (`python -m rismvdr.bench.speed`), so its
peak memory is its own: `peak_rss_mib` is the worker's peak host RSS (`ru_maxrss`; it includes
the JAX runtime, see the `info` record's `runtime_rss_mib`), `device_peak_mib` is JAX's
`peak_bytes_in_use` on an accelerator (PyTorch: `torch.cuda.max_memory_allocated`). The driver
never initialises a JAX backend, so it holds no accelerator memory while workers run. Workers
share a persistent compilation cache inside the run, and every timing excludes the first call
(compilation), which is reported separately as `first_call_s`.

Measurements (`part`):

* `spectrum`: the 2.5D MVDR map on the original system's grid (phi 361 x theta 181 in 1/3 deg
  steps over the seed box, 8 planes uniform in 1/r over 0.5..10 m: G = 522,728 points; seed
  12 x 12 UPA, N = 144) from `R_true` of simulated seed scenes with K = 5.
  - `numpy`: the original formula, one scene at a time on the CPU, complex64:
    `Ri = inv(R + d I)`, `P = 1 / einsum('ng,nm,mg->g', conj(A), Ri, A)`, max / argmax over
    the planes. This is the ratio's denominator.
  - `torch`: the same formula in PyTorch on CUDA, one scene at a time (only when torch is
    importable and sees a GPU).
  - `dense`: rismvdr `mvdr_operator` (Cholesky whitening) + `spectrum_25d`, a batch of scenes.
  - `woodbury`: rismvdr `mvdr_lowrank_operator` (rank 5, exact for R_true) + `spectrum_25d`.
* `detect`: the shared detector alone (3 x 3 peaks, threshold, NMS, 3-D Newton refinement,
  3-D NMS) on precomputed `mvdr-oracle` maps of seed scenes on the default grid (1 deg x 1 deg x
  16 planes: 121 x 61 x 16). No ratio: the original has no batched detector to compare with.
* `methods`: every registered localization method end to end (estimator, map or dictionary,
  detector or ML search, host transfer) on seed scenes, default settings (spectrum grid
  121 x 61 x 16, SOMP dictionary 61 x 31 x 8). Ratio against the NumPy formula on the same
  121 x 61 x 16 grid (the spectrum alone: a lower bound on the original pipeline's cost).
* `train`: the jitted training step as training runs it (on-device simulation of the batch,
  forward/backward, Optax update, EMA) for `configs/seed.py` (backbone) and
  `configs/seed_refiner.py` (refiner on the shipped backbone). No NumPy counterpart.

Outputs in `--out`: `speed.json` (`{"meta": ..., "records": [...]}`; `pandas.DataFrame(
json.load(f)["records"])`), `speed.csv`, `speed.md` (one table) and `speed.png` (ratios).
The JSON is rewritten after every measurement, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rismvdr.files import atomic_write, write_json

__all__ = ["PARTS", "SPECTRUM_GRID", "RECORD_KEYS", "numpy_original_mvdr", "plan_measurements", "run_speed",
           "worker"]

PARTS = ("spectrum", "detect", "methods", "train")
RANK = 5
#: The original system's evaluation grid: 361 x 181 x 8 = 522,728 points.
SPECTRUM_GRID = dict(phi_deg=(-60.0, 60.0), theta_deg=(-30.0, 30.0), r_m=(0.5, 10.0),
                     phi_step_deg=1.0 / 3.0, theta_step_deg=1.0 / 3.0, n_planes=8)
GRID_LABELS = {"seed361": "361 x 181 x 8", "default": "121 x 61 x 16"}
RECORD_KEYS = ("part", "name", "variant", "grid", "batch", "scenes", "reps", "scenes_per_s", "median_s",
               "first_call_s", "ratio_vs_numpy", "baseline", "peak_rss_mib", "device_peak_mib", "status",
               "wall_s")
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------
# Worker side: one measurement per process
# ------------------------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _device_peak_mib():
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        return None
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def _grid(name: str):
    from rismvdr.localize.registry import settings_for_scenario
    from rismvdr.physics import get_scenario
    from rismvdr.physics.spectra import make_grid

    if name == "seed361":
        return make_grid(SPECTRUM_GRID["phi_deg"], SPECTRUM_GRID["theta_deg"], SPECTRUM_GRID["r_m"],
                         phi_step_deg=SPECTRUM_GRID["phi_step_deg"], theta_step_deg=SPECTRUM_GRID["theta_step_deg"],
                         n_planes=SPECTRUM_GRID["n_planes"])
    return settings_for_scenario(get_scenario("seed")).grid()


def _rank5_setup(grid_name: str, n_scenes: int, seed: int):
    """Seed geometry, grid steering `[T, P, R, N]` complex64 (built once) and `R_true` of
    `n_scenes` seed scenes with K = 5."""
    import jax

    from rismvdr.physics import get_scenario, scenario_geometry, simulate
    from rismvdr.physics.spectra import grid_steering

    cfg = get_scenario("seed", k_min=RANK, k_max=RANK)
    geometry = scenario_geometry(cfg)
    a_grid = jax.block_until_ready(grid_steering(geometry, _grid(grid_name)))
    scenes = simulate(cfg, jax.random.key(seed), n_scenes)
    return a_grid, scenes.R_true


def _timed(fn, reps: int):
    """(first-call seconds, list of timed seconds): one untimed warm-up call, then `reps`."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def _result(times, per_call_scenes: int, first: float, **extra) -> dict:
    import numpy as np

    med = float(np.median(times))
    return dict(median_s=med, scenes_per_s=per_call_scenes / med, first_call_s=first, times_s=times,
                peak_rss_mib=_peak_rss_mib(), **extra)


def numpy_original_mvdr(R, A, delta_rel: float = 1e-2):
    """The original system's MVDR formula in NumPy (the speed bench's denominator).

    `P = 1 / Re(einsum('ng,nm,mg->g', conj(A), inv(R + d I), A))`, `d = delta_rel tr(R) / N`:
    an explicit inverse and a three-operand einsum, as the PyTorch original computed it.

    Args:
      R: `[N, N]` covariance.
      A: `[N, G]` steering vectors (columns).

    Returns:
      `[G]` real spectrum.
    """
    import numpy as np

    n = R.shape[-1]
    d = delta_rel * np.real(np.trace(R)) / n
    Ri = np.linalg.inv(R + d * np.eye(n, dtype=R.dtype))
    denom = np.einsum("ng,nm,mg->g", A.conj(), Ri, A, optimize=True)
    return 1.0 / np.maximum(np.real(denom), 1e-12)


def _w_numpy(spec: dict) -> dict:
    """The original formula in NumPy, one scene at a time (complex64)."""
    import numpy as np

    a_grid, R = _rank5_setup(spec["grid"], spec["reps"] + 1, spec["seed"])
    t, p, r, n = a_grid.shape
    A = np.ascontiguousarray(np.asarray(a_grid).reshape(-1, n).T)  # [N, G]
    R = np.asarray(R)
    del a_grid
    it = iter(range(len(R)))

    def one():
        spec_ = numpy_original_mvdr(R[next(it)], A).reshape(t, p, r)
        return spec_.max(-1), spec_.argmax(-1)

    first, times = _timed(one, spec["reps"])
    return _result(times, 1, first, device_peak_mib=None)


def _w_torch(spec: dict) -> dict:
    """The original formula in PyTorch on CUDA, one scene at a time (complex64)."""
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    a_grid, R = _rank5_setup(spec["grid"], spec["reps"] + 1, spec["seed"])
    t, p, r, n = a_grid.shape
    dev = torch.device("cuda")
    A = torch.from_numpy(np.ascontiguousarray(np.asarray(a_grid).reshape(-1, n).T)).to(dev)
    Rt = torch.from_numpy(np.array(R)).to(dev)  # a writable host copy
    del a_grid
    eye = torch.eye(n, dtype=Rt.dtype, device=dev)
    it = iter(range(len(Rt)))

    def one():
        Rs = Rt[next(it)]
        d = 1e-2 * torch.real(torch.trace(Rs)) / n
        Ri = torch.linalg.inv(Rs + d * eye)
        denom = torch.einsum("ng,nm,mg->g", A.conj(), Ri, A).real
        spec_ = (1.0 / denom.clamp(min=1e-12)).reshape(t, p, r)
        out = spec_.max(-1)
        torch.cuda.synchronize()
        return out

    torch.cuda.reset_peak_memory_stats()
    first, times = _timed(one, spec["reps"])
    return _result(times, 1, first, device_peak_mib=torch.cuda.max_memory_allocated() / 2**20,
                   torch=torch.__version__)


def _w_spectrum(spec: dict) -> dict:
    """rismvdr's 2.5D map from a batch of covariances (dense) or rank-5 factors (Woodbury)."""
    import jax
    import jax.numpy as jnp

    from rismvdr.physics import spectra

    b, precision = spec["batch"], spec["precision"]
    a_grid, R = _rank5_setup(spec["grid"], b, spec["seed"])
    if spec["name"] == "dense":
        build = jax.jit(spectra.mvdr_operator)
        inputs = R
    else:
        vals, vecs = jnp.linalg.eigh(R)  # ascending; R_true has rank 5
        inputs = vecs[..., -RANK:] * jnp.sqrt(jnp.maximum(vals[..., -RANK:], 0.0))[..., None, :]
        build = jax.jit(lambda F: spectra.mvdr_lowrank_operator(F, precision=precision))
    inputs = jax.block_until_ready(inputs)

    def run():
        s = spectra.spectrum_25d(build(inputs), a_grid, precision=precision, max_chunk_mb=spec["max_chunk_mb"])
        return jax.block_until_ready(s)

    first, times = _timed(run, spec["reps"])
    return _result(times, b, first, device_peak_mib=_device_peak_mib())


def _w_detect(spec: dict) -> dict:
    """The shared detector alone on precomputed `mvdr-oracle` maps."""
    import jax

    from rismvdr.localize.detect import detect
    from rismvdr.localize.registry import METHODS, settings_for_scenario
    from rismvdr.physics import get_scenario, scenario_geometry, simulate
    from rismvdr.physics.spectra import grid_steering, spectrum_25d

    cfg = get_scenario("seed")
    geometry = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg)
    grid = settings.grid()
    scenes = simulate(cfg, jax.random.key(spec["seed"]), spec["batch"])
    op, _ = METHODS["mvdr-oracle"].build(scenes, geometry, settings)
    maps = jax.block_until_ready(spectrum_25d(op, grid_steering(geometry, grid)))

    def run():
        return jax.block_until_ready(detect(op, maps, geometry, grid, settings.detector))

    first, times = _timed(run, spec["reps"])
    return _result(times, spec["batch"], first, device_peak_mib=_device_peak_mib())


def _w_method(spec: dict) -> dict:
    """One localization method end to end: one batch to compile, then `scenes` timed."""
    import jax

    from rismvdr.localize.registry import METHODS, localize, settings_for_scenario
    from rismvdr.physics import get_scenario, scenario_geometry, simulate

    cfg = get_scenario("seed")
    geometry = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg, batch_size=spec["batch"])
    n = spec["scenes"]
    scenes = simulate(cfg, jax.random.key(spec["seed"]), n)
    model = None
    if METHODS[spec["name"]].learned:
        from rismvdr.localize.learned import load_learned

        model = load_learned()
    warm = jax.tree_util.tree_map(lambda a: a[: min(spec["batch"], n)], scenes)
    t0 = time.perf_counter()
    localize(spec["name"], warm, geometry, settings, progress=False, keep_maps=False, model=model)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    localize(spec["name"], scenes, geometry, settings, progress=False, keep_maps=False, model=model)
    dt = time.perf_counter() - t0
    return dict(median_s=dt, scenes_per_s=n / dt, first_call_s=first, times_s=[dt],
                peak_rss_mib=_peak_rss_mib(), device_peak_mib=_device_peak_mib())


def _w_train(spec: dict) -> dict:
    """The jitted train step of a config (stage backbone or refiner) at a batch size."""
    import jax

    from rismvdr.train.config import load_config
    from rismvdr.train.trainer import Trainer

    cfg = load_config(spec["config"]).replace(stage=spec["stage"], batch_size=spec["batch"])
    backbone = None
    if spec["stage"] == "refiner":
        from rismvdr.localize.learned import load_learned

        backbone = load_learned()
    tr = Trainer(cfg, n_devices=1, backbone=backbone)
    state = tr.init_state()
    step = tr.step_fn()
    w = tr.weights(int(0.5 * cfg.steps))  # main-phase loss weights
    box = [state]

    def run():
        box[0], _ = step(box[0], w)
        jax.block_until_ready(box[0])

    first, times = _timed(run, 1)  # compile, then one step to settle
    t0 = time.perf_counter()
    for _ in range(spec["reps"]):
        run()
    dt = (time.perf_counter() - t0) / spec["reps"]
    return dict(median_s=dt, scenes_per_s=spec["batch"] / dt, first_call_s=first, times_s=[dt],
                steps_per_s=1.0 / dt, n_params=tr.n_params, peak_rss_mib=_peak_rss_mib(),
                device_peak_mib=_device_peak_mib())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str):
    """Installed version of a distribution (None when absent)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _w_info(spec: dict) -> dict:
    """Machine, versions, and the RSS of a worker that only started the JAX runtime."""
    import jax
    import jax.numpy as jnp

    import rismvdr.localize.registry  # noqa: F401 - the import cost every worker pays

    jax.block_until_ready(jnp.ones(8) * 2)
    dev = jax.devices()[0]
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(), platform=platform.platform(), python=platform.python_version(),
        cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
        load_avg_1_5_15=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
        xla_flags=os.environ.get("XLA_FLAGS"), runtime_rss_mib=_peak_rss_mib(),
        versions={m: _version(m) for m in ("jax", "jaxlib", "numpy", "scipy", "flax", "optax", "orbax-checkpoint",
                                             "rismvdr", "torch")},
    )
    info["torch"] = None
    try:
        import torch

        info["torch"] = dict(version=torch.__version__, cuda=bool(torch.cuda.is_available()),
                             device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except Exception:  # noqa: BLE001 - torch is optional
        pass
    return info


WORKERS = dict(info=_w_info, numpy=_w_numpy, torch=_w_torch, dense=_w_spectrum, woodbury=_w_spectrum,
               detect=_w_detect, method=_w_method, train=_w_train)


def worker(spec: dict) -> dict:
    """Run one measurement in this process (the worker entry point)."""
    return WORKERS[spec["kind"]](spec)


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
def plan_measurements(*, gpu: bool, quick: bool, parts=PARTS, methods=None, torch_cuda: bool = False,
                      seed: int = 0, precision: str = "highest", max_chunk_mb: float = 256.0,
                      method_scenes: int | None = None, method_batch: int | None = None) -> list[dict]:
    """The worker specs of a run, in the order they run (baselines first)."""
    from rismvdr.localize.registry import METHODS, method_names

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    names = list(methods) if methods else method_names(full_array=False)
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown {', '.join(bad)}; known: {', '.join(METHODS)}")
    common = dict(seed=seed)
    specs: list[dict] = []
    np_reps = 2 if quick else 3
    if "spectrum" in parts:
        specs.append(dict(kind="numpy", part="spectrum", name="numpy", grid="seed361", batch=1, reps=np_reps, **common))
    if "detect" in parts or "methods" in parts:
        specs.append(dict(kind="numpy", part="methods", name="numpy", grid="default", batch=1, reps=np_reps, **common))
    if "spectrum" in parts:
        if torch_cuda:
            specs.append(dict(kind="torch", part="spectrum", name="torch", grid="seed361", batch=1,
                              reps=5 if quick else 20, **common))
        reps = 2 if quick else 5
        dense_b = [64] if gpu else [8]
        wood_b = ([256] if quick else [64, 256]) if gpu else ([32] if quick else [8, 32])
        for name, batches in (("dense", dense_b), ("woodbury", wood_b)):
            for b in batches:
                specs.append(dict(kind=name, part="spectrum", name=name, grid="seed361", batch=b, reps=reps,
                                  precision=precision, max_chunk_mb=max_chunk_mb, **common))
    if "detect" in parts:
        specs.append(dict(kind="detect", part="detect", name="detect", grid="default", batch=256 if gpu else 32,
                          reps=3 if quick else 5, **common))
    if "train" in parts:
        for config, stage in (("seed.py", "backbone"), ("seed_refiner.py", "refiner")):
            for b in ([32, 256] if gpu and not quick else [32] if not gpu else [256]):
                specs.append(dict(kind="train", part="train", name=stage, config=str(REPO / "configs" / config),
                                  stage=stage, grid=None, batch=b, reps=(3 if quick else 10) if not gpu else 20,
                                  **common))
    if "methods" in parts:
        b = method_batch or (256 if gpu else 32)
        n = method_scenes or ((256 if quick else 1024) if gpu else (32 if quick else 128))
        for name in names:
            grid = "somp 61 x 31 x 8" if METHODS[name].run is not None else "default"
            specs.append(dict(kind="method", part="methods", name=name, grid=grid, batch=min(b, n), scenes=n,
                              reps=1, **common))
    return specs


def _run_worker(spec: dict, env: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "rismvdr.bench.speed", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(status=f"timeout after {timeout_s:.0f} s", wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return dict(status="failed: " + " | ".join(tail)[-400:], wall_s=wall)
    res = json.loads(lines[-1])
    res.update(status="ok", wall_s=wall)
    return res


def _variant(spec: dict, precision: str) -> str:
    return {"numpy": "original formula, inv + einsum, complex64, 1 scene/call",
            "torch": "original formula on CUDA, complex64, 1 scene/call",
            "dense": f"Cholesky whitening, {precision}",
            "woodbury": f"rank {RANK}, {precision}",
            "detect": "peaks + Newton refinement + NMS, mvdr-oracle maps",
            "method": "end to end, compile excluded",
            "train": "jitted step incl. on-device simulation, 1 device"}[spec["kind"]]


def _fmt(v, fmt="{:.3g}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _markdown(records: list[dict], meta: dict) -> str:
    m = meta["machine"]
    v = m.get("versions", {})
    lines = ["# rismvdr speed bench", "",
             f"{m.get('device_kind')} ({m.get('backend')}), {m.get('cpu_count')} CPUs ({m.get('cpu_model')}), "
             f"Python {m.get('python')}, jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, NumPy {v.get('numpy')}, "
             f"flax {v.get('flax')}; {m.get('date')}; load average at start {m.get('load_avg_1_5_15')}. "
             f"Command: `{meta['command']}`. Timings exclude the first call (compilation); peak host RSS "
             f"includes the JAX runtime ({_fmt(m.get('runtime_rss_mib'), '{:.0f}')} MiB for a worker that "
             f"does nothing). Ratio: scenes/s over the NumPy original formula on the same grid, measured in "
             f"this run.", "",
             "| part | name | variant | grid | batch | scenes/s | ratio vs NumPy | first call (s) | "
             "peak host RSS (MiB) | device peak (MiB) | status |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        ratio = f"{r['ratio_vs_numpy']:.3g}x" if r.get("ratio_vs_numpy") else "-"
        lines.append(f"| {r['part']} | {r['name']} | {r['variant']} | {r['grid'] or '-'} | {r['batch']} | "
                     f"{_fmt(r.get('scenes_per_s'))} | {ratio} | {_fmt(r.get('first_call_s'), '{:.1f}')} | "
                     f"{_fmt(r.get('peak_rss_mib'), '{:.0f}')} | {_fmt(r.get('device_peak_mib'), '{:.0f}')} | "
                     f"{r['status']} |")
    return "\n".join(lines)


def _plot(path, records) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rismvdr.eval import plots

    rows = [r for r in records if r.get("ratio_vs_numpy")]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    labels = [f"{r['name']} (b{r['batch']}, {r['grid']})" for r in rows]
    ax.barh(range(len(rows)), [r["ratio_vs_numpy"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("scenes/s over the NumPy original formula (spectrum: same grid; methods: the\n"
                  "121 x 61 x 16 spectrum grid, whatever grid or dictionary the method uses)")
    plots.save_figure(fig, path)
    return True


def _write(out: Path, meta: dict, records: list[dict], final: bool) -> list[str]:
    write_json(out / "speed.json", dict(meta=meta, records=records))
    with atomic_write(out / "speed.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(RECORD_KEYS), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in RECORD_KEYS})
    written = ["speed.json", "speed.csv"]
    if final:
        with atomic_write(out / "speed.md") as f:
            f.write(_markdown(records, meta) + "\n")
        written.append("speed.md")
        if _plot(out / "speed.png", records):
            written.append("speed.png")
    return written


def run_speed(out, *, quick: bool = False, parts=PARTS, methods=None, seed: int = 0, precision: str = "highest",
              max_chunk_mb: float = 256.0, timeout_s: float = 600.0, deadline_s: float | None = None,
              method_scenes: int | None = None, method_batch: int | None = None, progress: bool = True,
              command: str | None = None) -> dict:
    """Run the speed bench (one worker process per measurement) and write the report folder.

    Args:
      out: report folder (created).
      quick: fewer repetitions, scenes and batch sizes.
      parts: subset of `PARTS`.
      methods: localization methods of the `methods` part (default every RIS-mode method).
      seed: PRNG seed of the simulated scenes.
      precision: matmul precision of the JAX spectrum paths (`highest` | `fast`).
      max_chunk_mb: `spectrum_25d` chunk bound, MiB.
      timeout_s: per-worker wall-clock limit; a worker past it is killed and recorded as such.
      deadline_s: wall-clock budget of the whole run: a worker gets at most the time left, and
        measurements not started by then are recorded as skipped (the report is still written).
      method_scenes, method_batch: timed scenes and batch size of the `methods` part.
      progress: tqdm bar over measurements.
      command: the command line recorded in the report.

    Returns:
      `{"meta": ..., "records": [...]}` as written to `speed.json`.
    """
    from tqdm.auto import tqdm

    if precision not in ("highest", "fast"):
        raise ValueError(f"precision: expected 'highest' or 'fast', got {precision!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="rismvdr-speed-cache-")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, TQDM_DISABLE="1")
    t0 = time.perf_counter()
    machine = _run_worker(dict(kind="info"), env, timeout_s)
    if machine.get("status") != "ok":
        raise RuntimeError(f"speed bench: the info worker failed: {machine.get('status')}")
    gpu = machine["backend"] != "cpu"
    torch_cuda = bool(machine.get("torch") and machine["torch"].get("cuda"))
    specs = plan_measurements(gpu=gpu, quick=quick, parts=tuple(parts), methods=methods, torch_cuda=torch_cuda,
                              seed=seed, precision=precision, max_chunk_mb=max_chunk_mb,
                              method_scenes=method_scenes, method_batch=method_batch)
    meta = dict(generator="rismvdr bench speed", command=command or "rismvdr bench speed", quick=quick,
                parts=list(parts), seed=seed, precision=precision, deadline_s=deadline_s, machine=machine,
                torch_note=None if torch_cuda else "PyTorch formula not measured: torch not importable or no CUDA",
                spectrum_grid=dict(SPECTRUM_GRID, shape="361 x 181 x 8", points=361 * 181 * 8),
                default_grid="121 x 61 x 16 (1 deg, 16 planes in 1/r over 0.5..10 m)", partial=True)
    records: list[dict] = []
    baselines: dict[str, float] = {}
    bar = tqdm(specs, desc="speed bench", unit="measurement", disable=None if progress else True)
    for spec in bar:
        bar.set_postfix_str(f"{spec['part']}:{spec['name']} b{spec['batch']}")
        # NumPy runs on the CPU; the PyTorch worker builds its inputs with JAX on the CPU so that
        # JAX does not take the GPU memory PyTorch measures.
        env_w = dict(env, JAX_PLATFORMS="cpu") if spec["kind"] in ("numpy", "torch") else env
        left = None if deadline_s is None else deadline_s - (time.perf_counter() - t0)
        if left is not None and left < 5.0:
            res = dict(status="skipped: deadline", wall_s=0.0)
        else:
            res = _run_worker(spec, env_w, timeout_s if left is None else min(timeout_s, left))
        grid_label = GRID_LABELS.get(spec.get("grid"), spec.get("grid"))
        rec = dict(part=spec["part"], name=spec["name"], variant=_variant(spec, precision), grid=grid_label,
                   batch=spec["batch"], scenes=spec.get("scenes"), reps=spec.get("reps"), **res)
        if spec["kind"] == "numpy" and res["status"] == "ok":
            baselines[grid_label] = res["scenes_per_s"]
        base = baselines.get(grid_label) if spec["kind"] in ("numpy", "torch", "dense", "woodbury") else None
        if spec["kind"] == "method":  # every method against the formula on the default spectrum grid
            base = baselines.get(GRID_LABELS["default"])
        ok = res["status"] == "ok"
        rec["ratio_vs_numpy"] = res["scenes_per_s"] / base if ok and base else None
        rec["baseline"] = f"numpy {GRID_LABELS['default'] if spec['kind'] == 'method' else grid_label}" \
            if rec["ratio_vs_numpy"] else None
        records.append(rec)
        rate = f"{res['scenes_per_s']:.3g} scenes/s" if ok else res["status"]
        tqdm.write(f"{spec['part']:8s} {spec['name']:16s} batch {spec['batch']:4d}: {rate}")
        sys.stdout.flush()
        _write(out, meta, records, final=False)
    bar.close()
    meta.update(partial=False, wall_s=time.perf_counter() - t0,
                load_avg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    written = _write(out, meta, records, final=True)
    print(_markdown(records, meta))
    print(f"wrote {', '.join(written)} to {out} (wall time {meta['wall_s']:.0f} s)")
    return dict(meta=meta, records=records)


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="rismvdr speed-bench worker (internal): one measurement, "
                                             "JSON on the last stdout line")
    ap.add_argument("spec", help="JSON measurement spec")
    args = ap.parse_args(argv)
    print(json.dumps(worker(json.loads(args.spec))))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
