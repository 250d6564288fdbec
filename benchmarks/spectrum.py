"""Scenes per second of the 2.5D MVDR spectrum on the seed grid, rismvdr against NumPy.

Grid (the original system's): phi 361 x theta 181 over the seed box (-60..60 deg, -30..30 deg,
1/3 deg steps) x 8 range planes uniform in 1/r over 0.5..10 m, seed surface (12 x 12 UPA,
half-wavelength spacing, N = 144, wavelength 0.3 m): G = 522,728 grid points.

Paths (each measured in its own subprocess, so its peak host memory is its own):
- `dense`:    rismvdr `mvdr_operator` (Cholesky whitening) + `spectrum_25d`, a batch of scenes.
- `woodbury`: rismvdr `mvdr_lowrank_operator` (rank 5) + `spectrum_25d`, a batch of scenes.
- `numpy`:    the original system's formula, one scene at a time on the CPU, complex64:
              `Ri = np.linalg.inv(R + d I)`, `P = einsum('ng,nm,mg->g', A.conj(), Ri, A)`, then
              max / argmax over the planes; one warm-up scene, then `--numpy-scenes` timed. Run
              twice: with the environment as it is, and with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
              removed; the faster one is the baseline.

Covariances: `R_true` of simulated seed scenes with K = 5 (rank 5); Woodbury takes the top-5
eigen factor `F` of each (exact: R_true has rank 5). The grid steering is built once and
reused across the batch and repetitions. A JAX timing covers operator build + 2.5D spectrum
(max over planes with the argmax plane), after a warm-up call (compilation excluded), median
of `--reps` repetitions with `block_until_ready`.

Runs unchanged on a GPU: JAX picks the device; the NumPy baseline stays on the CPU.

    python benchmarks/spectrum.py                 # default batches for the platform
    python benchmarks/spectrum.py --quick         # fewer repetitions and batches
    python benchmarks/spectrum.py --paths woodbury,numpy --batch 32 --precision fast
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
RANK = 5
GRID = dict(phi_deg=(-60.0, 60.0), theta_deg=(-30.0, 30.0), r_m=(0.5, 10.0),
            phi_step_deg=1.0 / 3.0, theta_step_deg=1.0 / 3.0, n_planes=8)


# ------------------------------------------------------------------------------------------
# Worker side: one path, one process
# ------------------------------------------------------------------------------------------
def _setup(n_scenes: int, seed: int):
    """Seed geometry, grid, grid steering `[T, P, R, N]` complex64 and `R_true` `[S, N, N]`."""
    import jax

    from rismvdr.physics import get_scenario, scenario_geometry, simulate
    from rismvdr.physics.spectra import grid_steering, make_grid

    cfg = get_scenario("seed", k_min=RANK, k_max=RANK)
    geometry = scenario_geometry(cfg)
    grid = make_grid(GRID["phi_deg"], GRID["theta_deg"], GRID["r_m"], phi_step_deg=GRID["phi_step_deg"],
                     theta_step_deg=GRID["theta_step_deg"], n_planes=GRID["n_planes"])
    assert grid.shape == (181, 361, 8), grid.shape
    a_grid = jax.block_until_ready(grid_steering(geometry, grid))  # built once
    scenes = simulate(cfg, jax.random.key(seed), n_scenes)
    return grid, a_grid, scenes.R_true


def _peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _device_peak_mib():
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def worker_jax(path: str, batch: int, reps: int, precision: str, max_chunk_mb: float, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rismvdr.physics import spectra

    grid, a_grid, R = _setup(batch, seed)
    if path == "dense":
        build = jax.jit(spectra.mvdr_operator)
        inputs = R
    else:
        vals, vecs = jnp.linalg.eigh(R)  # ascending; R_true has rank 5
        inputs = vecs[..., -RANK:] * jnp.sqrt(jnp.maximum(vals[..., -RANK:], 0.0))[..., None, :]
        build = jax.jit(spectra.mvdr_lowrank_operator, static_argnames=("precision",))
    inputs = jax.block_until_ready(inputs)

    def run():
        op = build(inputs) if path == "dense" else build(inputs, precision=precision)
        spec = spectra.spectrum_25d(op, a_grid, precision=precision, max_chunk_mb=max_chunk_mb)
        return jax.block_until_ready(spec)

    t0 = time.perf_counter()
    spec = run()  # warm-up: compilation
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    t, p, r, n = a_grid.shape
    op = build(inputs) if path == "dense" else build(inputs, precision=precision)
    chunk = spectra._chunk_cells(  # informative only (private)
        t * p, batch, op.W.shape[1], r, n, 4, max_chunk_mb, spectra._platform(op.W, a_grid))
    return dict(
        path=path, batch=batch, precision=precision, reps=reps, times_s=times,
        median_s=float(np.median(times)), scenes_per_s=batch / float(np.median(times)),
        first_call_s=first, chunk_cells=chunk, max_chunk_mb=max_chunk_mb,
        peak_rss_mib=_peak_rss_mib(), device_peak_mib=_device_peak_mib(),
        finite=bool(np.all(np.isfinite(np.asarray(spec.power)))),
    )


def worker_numpy(n_scenes: int, seed: int) -> dict:
    import numpy as np

    grid, a_grid, R = _setup(n_scenes + 1, seed)
    t, p, r, n = a_grid.shape
    A = np.ascontiguousarray(np.asarray(a_grid).reshape(-1, n).T)  # [N, G] complex64
    R = np.asarray(R)  # complex64
    del a_grid
    def one(Rs):
        d = 1e-2 * np.real(np.trace(Rs)) / n
        Ri = np.linalg.inv(Rs + d * np.eye(n, dtype=R.dtype))
        denom = np.einsum("ng,nm,mg->g", A.conj(), Ri, A, optimize=True)
        spec = 1.0 / np.real(denom).reshape(t, p, r)
        return spec.max(-1), spec.argmax(-1)

    t0 = time.perf_counter()
    one(R[-1])  # warm-up scene (first-touch of the temporaries, BLAS start-up), not timed
    first = time.perf_counter() - t0
    times = []
    for s in range(n_scenes):
        t0 = time.perf_counter()
        power, plane = one(R[s])
        times.append(time.perf_counter() - t0)
    return dict(
        path="numpy", batch=1, precision="complex64", reps=n_scenes, times_s=times, first_call_s=first,
        median_s=float(np.median(times)), scenes_per_s=1.0 / float(np.median(times)),
        peak_rss_mib=_peak_rss_mib(), device_peak_mib=None,
        finite=bool(np.all(np.isfinite(power))) and plane.shape == (t, p),
        openblas_env={k: os.environ.get(k) for k in OPENBLAS_VARS},
    )


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
def _run_worker(args: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def worker_info() -> dict:
    """Machine and library facts (run in a worker: the driver never initialises a backend, so
    it holds no accelerator memory while the measurements run)."""
    import jax
    import numpy as np

    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    dev = jax.devices()[0]
    return dict(
        host=socket.gethostname(), platform=platform.platform(), python=platform.python_version(),
        cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
        load_avg_1_5_15=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        jax=jax.__version__, jaxlib=jaxlib_version,
        numpy=np.__version__, backend=jax.default_backend(), device_kind=dev.device_kind,
        device_count=jax.device_count(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        openblas_env={k: os.environ.get(k) for k in OPENBLAS_VARS},
        xla_flags=os.environ.get("XLA_FLAGS"),
    )


def _exe() -> str:
    """The Python executable, relative to the repository root when inside it."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(ROOT))
    except ValueError:
        return str(exe)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default=None,
                    help="comma-separated batch sizes for the JAX paths (default: CPU 8,32 for "
                         "woodbury and 8 for dense; GPU 64,256 and 64)")
    ap.add_argument("--paths", default="dense,woodbury,numpy", help="subset of dense,woodbury,numpy")
    ap.add_argument("--quick", action="store_true", help="2 repetitions, one batch size, 1 NumPy scene")
    ap.add_argument("--precision", default="highest", choices=("highest", "fast"))
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, quick 2)")
    ap.add_argument("--numpy-scenes", type=int, default=None, help="NumPy scenes timed (default 2)")
    ap.add_argument("--max-chunk-mb", type=float, default=256.0, help="spectrum_25d chunk bound, MiB")
    ap.add_argument("--seed", type=int, default=0, help="PRNG seed of the simulated scenes")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/spectrum_<host>.json)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:  # one measurement, JSON on the last stdout line
        if args._worker == "info":
            res = worker_info()
        elif args._worker == "numpy":
            res = worker_numpy(args.numpy_scenes, args.seed)
        else:
            res = worker_jax(args._worker, int(args.batch), args.reps, args.precision,
                             args.max_chunk_mb, args.seed)
        print(json.dumps(res))
        return 0

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = sorted(set(paths) - {"dense", "woodbury", "numpy"})
    if bad:
        ap.error(f"--paths: unknown {bad}")
    machine = _run_worker(["info"])
    gpu = machine["backend"] != "cpu"
    reps = args.reps or (2 if args.quick else 5)
    n_np = args.numpy_scenes or (1 if args.quick else 2)
    if args.batch:
        batches = {p: [int(b) for b in args.batch.split(",")] for p in ("dense", "woodbury")}
    elif gpu:
        batches = {"dense": [64], "woodbury": [64] if args.quick else [64, 256]}
    else:
        batches = {"dense": [8], "woodbury": [32] if args.quick else [8, 32]}

    print(f"# 2.5D MVDR spectrum, seed grid 361 x 181 x 8, N = 144 ({machine['device_kind']}, "
          f"{machine['cpu_count']} CPUs, load {machine['load_avg_1_5_15']})", flush=True)
    results = []
    if "numpy" in paths:
        common = ["--numpy-scenes", str(n_np), "--seed", str(args.seed)]
        env_np = dict(os.environ, JAX_PLATFORMS="cpu")
        res = _run_worker(["numpy", *common], env_np)
        res["variant"] = "env as is"
        results.append(res)
        print(f"numpy (env as is): {res['scenes_per_s']:.4f} scenes/s", flush=True)
        env_unset = {k: v for k, v in env_np.items() if k not in OPENBLAS_VARS}
        res = _run_worker(["numpy", *common], env_unset)
        res["variant"] = "OPENBLAS_CORETYPE/L2_SIZE unset"
        results.append(res)
        print(f"numpy (OPENBLAS_* unset): {res['scenes_per_s']:.4f} scenes/s", flush=True)
    for path in ("dense", "woodbury"):
        if path not in paths:
            continue
        for b in batches[path]:
            res = _run_worker([path, "--batch", str(b), "--reps", str(reps), "--precision", args.precision,
                               "--max-chunk-mb", str(args.max_chunk_mb), "--seed", str(args.seed)])
            res["variant"] = (f"rank {RANK}" if path == "woodbury" else "Cholesky") + f", {args.precision}"
            results.append(res)
            print(f"{path} batch {b}: {res['scenes_per_s']:.3f} scenes/s", flush=True)

    np_rates = [r["scenes_per_s"] for r in results if r["path"] == "numpy"]
    baseline = max(np_rates) if np_rates else None
    for r in results:
        r["ratio_vs_numpy"] = r["scenes_per_s"] / baseline if baseline else None

    checks = {}
    if baseline and not gpu:
        best = {p: max((r["ratio_vs_numpy"] for r in results if r["path"] == p), default=None)
                for p in ("dense", "woodbury")}
        if best["woodbury"] is not None:
            checks["woodbury_ge_10x_numpy"] = best["woodbury"] >= 10.0
        if best["dense"] is not None:
            checks["dense_ge_1x_numpy"] = best["dense"] >= 1.0

    print()
    print("| path | variant | batch | scenes/s | ratio vs NumPy | peak host RSS (MiB) | device peak (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{r['ratio_vs_numpy']:.1f}x" if r["ratio_vs_numpy"] else "-"
        dev = f"{r['device_peak_mib']:.0f}" if r.get("device_peak_mib") else "-"
        print(f"| {r['path']} | {r['variant']} | {r['batch']} | {r['scenes_per_s']:.3g} | {ratio} | "
              f"{r['peak_rss_mib']:.0f} | {dev} |")
    if checks:
        print("\nchecks:", ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()))

    out = Path(args.out) if args.out else HERE / "results" / (
        "spectrum_" + re.sub(r"[^A-Za-z0-9_.-]", "_", machine["host"]) + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = dict(
        benchmark="2.5D MVDR spectrum, scenes/s",
        grid=dict(n_phi=361, n_theta=181, **GRID),
        array=dict(kind="UPA 12 x 12", n_elements=144, wavelength_m=0.3, spacing_m=0.15),
        covariance=(f"R_true of simulated seed scenes, K = {RANK} (seed {args.seed}); "
                    f"Woodbury F = top-{RANK} eigen factor"),
        timing="median of reps after a warm-up call; JAX: operator build + spectrum_25d, block_until_ready; "
               "NumPy: inv + einsum + max over planes, one scene at a time after one warm-up scene",
        memory="peak_rss_mib: ru_maxrss of the worker process (host); device_peak_mib: "
               "jax memory_stats peak_bytes_in_use where the backend reports it",
        precision=args.precision, command=" ".join([_exe(), *sys.argv]),
        machine=machine, load_avg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        baseline_numpy_scenes_per_s=baseline, checks=checks, results=results,
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
