"""`rismvdr bench speed`: scenes per second and peak memory of every stage, against the
original system's formula measured in the same run.

Every measurement runs in its own worker process (`python -m rismvdr.bench.speed_worker`), so its
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
  forward/backward, Optax update, EMA) for the packaged configs `seed` (backbone) and
  `seed_refiner` (refiner on the shipped backbone). No NumPy counterpart.

Outputs in `--out` (`rismvdr.bench.speed_report`): `speed.json` (`{"meta": ..., "records":
[...]}`; `pandas.DataFrame(json.load(f)["records"])`), `speed.csv`, `speed.md` (one table) and
`speed.png` (ratios). The JSON is rewritten after every measurement, so an interrupted run
keeps what it measured. The measurements themselves are `rismvdr.bench.speed_worker`; the NumPy
formula is `rismvdr.bench.baselines`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from rismvdr.bench.speed_report import speed_markdown, write_speed_report
from rismvdr.configs import config_file
from rismvdr.localize.registry import METHODS, method_names

__all__ = ["PARTS", "RANK", "SPECTRUM_GRID", "PRECISIONS", "MAX_CHUNK_MB", "TIMEOUT_S", "METHOD_SCENES_CPU", "METHOD_SCENES_CPU_QUICK",
           "METHOD_SCENES_GPU", "METHOD_SCENES_GPU_QUICK", "METHOD_BATCH_CPU", "METHOD_BATCH_GPU",
           "GRID_LABELS", "plan_measurements", "run_speed"]

#: What `--parts` chooses from (all by default).
PARTS = ("spectrum", "detect", "methods", "train")
#: Matmul precisions of the JAX spectrum paths (`fast` allows TF32 on GPUs).
PRECISIONS = ("highest", "fast")
#: Bound on `spectrum_25d`'s per-chunk intermediate, MiB.
MAX_CHUNK_MB = 256.0
#: Wall-clock limit of one measurement (worker process), seconds.
TIMEOUT_S = 600.0
#: Timed scenes per method in the `methods` part, per backend, full run and `--quick`.
METHOD_SCENES_CPU = 128
METHOD_SCENES_CPU_QUICK = 32
METHOD_SCENES_GPU = 1024
METHOD_SCENES_GPU_QUICK = 256
#: Scenes per jitted call in the `methods` part, per backend.
METHOD_BATCH_CPU = 32
METHOD_BATCH_GPU = 256
#: Rank of `R_true` in the spectrum measurements (K = 5 seed scenes): the Woodbury path's rank.
RANK = 5
#: The original system's evaluation grid: 361 x 181 x 8 = 522,728 points.
SPECTRUM_GRID = dict(phi_deg=(-60.0, 60.0), theta_deg=(-30.0, 30.0), r_m=(0.5, 10.0),
                     phi_step_deg=1.0 / 3.0, theta_step_deg=1.0 / 3.0, n_planes=8)
#: Report labels of the measurement grids (`seed361`: `SPECTRUM_GRID`; `default`: the default settings).
GRID_LABELS = {"seed361": "361 x 181 x 8", "default": "121 x 61 x 16"}


def plan_measurements(*, gpu: bool, quick: bool, parts=PARTS, methods=None, torch_cuda: bool = False,
                      seed: int = 0, precision: str = "highest", max_chunk_mb: float = MAX_CHUNK_MB,
                      method_scenes: int | None = None, method_batch: int | None = None) -> list[dict]:
    """The worker specs of a run, in the order they run (baselines first)."""
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
        for config, stage in (("seed", "backbone"), ("seed_refiner", "refiner")):
            for b in ([32, 256] if gpu and not quick else [32] if not gpu else [256]):
                specs.append(dict(kind="train", part="train", name=stage, config=str(config_file(config)),
                                  stage=stage, grid=None, batch=b, reps=(3 if quick else 10) if not gpu else 20,
                                  **common))
    if "methods" in parts:
        b = method_batch or (METHOD_BATCH_GPU if gpu else METHOD_BATCH_CPU)
        if gpu:
            n = method_scenes or (METHOD_SCENES_GPU_QUICK if quick else METHOD_SCENES_GPU)
        else:
            n = method_scenes or (METHOD_SCENES_CPU_QUICK if quick else METHOD_SCENES_CPU)
        for name in names:
            grid = "somp 61 x 31 x 8" if METHODS[name].maps_grid == "dictionary" else "default"
            specs.append(dict(kind="method", part="methods", name=name, grid=grid, batch=min(b, n), scenes=n,
                              reps=1, **common))
    return specs


def _run_worker(spec: dict, env: dict | None, timeout_s: float) -> dict:
    """Run one measurement in a worker process; its result, `status` ("ok", "failed: <stderr tail>"
    or "timeout after ...") and `wall_s`."""
    cmd = [sys.executable, "-m", "rismvdr.bench.speed_worker", json.dumps(spec)]
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


def run_speed(out, *, quick: bool = False, parts=PARTS, methods=None, seed: int = 0, precision: str = "highest",
              max_chunk_mb: float = MAX_CHUNK_MB, timeout_s: float = TIMEOUT_S, deadline_s: float | None = None,
              method_scenes: int | None = None, method_batch: int | None = None, progress: bool = True,
              command: str | None = None) -> dict:
    """Run the speed bench (one worker process per measurement) and write the report folder.

    Args:
      out: report folder (created).
      quick: fewer repetitions, scenes and batch sizes.
      parts: subset of `PARTS`.
      methods: localization methods of the `methods` part (default every RIS-mode method).
      seed: PRNG seed of the simulated scenes.
      precision: matmul precision of the JAX spectrum paths, one of `PRECISIONS`.
      max_chunk_mb: `spectrum_25d` chunk bound, MiB.
      timeout_s: per-worker wall-clock limit; a worker past it is killed and recorded as such.
      deadline_s: wall-clock budget of the whole run: a worker gets at most the time left, and
        measurements not started by then are recorded as skipped (the report is still written).
      method_scenes, method_batch: timed scenes and batch size of the `methods` part (default
        `METHOD_SCENES_*` and `METHOD_BATCH_*` of the backend and mode).
      progress: tqdm bar over measurements.
      command: the command line recorded in the report.

    Returns:
      `{"meta": ..., "records": [...]}` as written to `speed.json`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
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
        if spec["kind"] == "method" and METHODS[spec["name"]].search == "coarse-to-fine":
            grid_label += " searched coarse to fine"  # the method's default (`Method.search`)
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
        write_speed_report(out, meta, records, final=False)
    bar.close()
    meta.update(partial=False, wall_s=time.perf_counter() - t0,
                load_avg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    written = write_speed_report(out, meta, records, final=True)
    print(speed_markdown(records, meta))
    print(f"wrote {', '.join(written)} to {out} (wall time {meta['wall_s']:.0f} s)")
    return dict(meta=meta, records=records)
