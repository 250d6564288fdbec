"""`rismvdr bench accuracy` (accuracy sweeps), `rismvdr bench speed` (throughput and memory) and
`rismvdr bench latency` (how long one command takes, start-up included)."""
from __future__ import annotations

import argparse
import sys
import time

from rismvdr.cli.common import METHOD_NAMES, SEED_MAX, check_counts, check_positive, outputs

__all__ = ["add_parser", "check", "run"]

# The library's names and defaults that the parser shows (tests/test_cli.py checks each):
#: `rismvdr.bench.sweeps`: SWEEPS, DEFAULT_SWEEPS, SCENES_PER_POINT, SCENES_PER_POINT_QUICK.
SWEEPS = ("base", "snr", "snr_k1", "snr_k3", "k", "l", "r", "ula", "deploy", "deploy_random", "deploy_designed",
          "nmse", "phase_error", "failure")
DEFAULT_SWEEPS = ("base", "snr", "k", "l", "r", "ula")
SCENES_PER_POINT = 200
SCENES_PER_POINT_QUICK = 16
#: `rismvdr.bench.speed.PARTS` and `run_speed`'s defaults.
PARTS = ("spectrum", "detect", "methods", "train")
SPEED_DEFAULTS = dict(seed=0, precision="highest", max_chunk_mb=256.0, timeout_s=600.0)
#: `rismvdr.bench.latency`: `run_latency`'s defaults, QUICK_METHODS, and `default_methods()` (the
#: methods that apply to a seed-scenario file: all but the full-array-only `mvdr-sample`).
LATENCY_DEFAULTS = dict(repeats=3, timeout_s=600.0)
LATENCY_QUICK_METHODS = ("somp-ml", "learned")
LATENCY_METHODS = tuple(m for m in METHOD_NAMES if m != "mvdr-sample")


def add_parser(sub) -> None:
    be = sub.add_parser("bench", help="benchmarks: `bench accuracy` (F1, errors and RMSE / sqrt(CRB) against "
                        "SNR, K and L, per method), `bench speed` (scenes/s and peak memory) and `bench latency` "
                        "(seconds a user waits for one command)")
    bsub = be.add_subparsers(dest="bench", required=True, metavar="WHAT")
    _add_accuracy(bsub)
    _add_speed(bsub)
    _add_latency(bsub)


def _add_accuracy(bsub) -> None:
    ba = bsub.add_parser("accuracy", help="accuracy sweeps on the seed scenario: base set, SNR (K = 1, 3), K, L",
                         description="Suites B1 (blind: each method finds K), B2 (oracle K: music-oracle-k, "
                                     "mvdr-oracle, somp-ml-oracle-k) and bound (ml-oracle: the ML fit started at "
                                     "the truth; every record carries f1_bound and f1_over_bound). Writes "
                                     "accuracy.json (flat records), accuracy.csv, accuracy.md (F1 tables) and PNG "
                                     "plots to --out.")
    ba.add_argument("--out", required=True, help="report folder")
    ba.add_argument("--quick", action="store_true", help=f"under 10 min on a 2-core CPU: {SCENES_PER_POINT_QUICK} "
                    "scenes per point (unless --scenes), the methods mvdr-oracle, mvdr-als, somp-ml, learned, "
                    "music-oracle-k and the bound ml-oracle (unless --methods: then the bound runs only if named), "
                    "SNR -10 0 10 20 dB (unless --snr-db), K 1 3 5, L 4 16 32, range bins 0.5-2, 4-6, 8-10 m")
    ba.add_argument("--scenes", type=int, help=f"scenes per point (default {SCENES_PER_POINT}; --quick "
                    f"{SCENES_PER_POINT_QUICK})")
    ba.add_argument("--seed", type=int, default=0, help="PRNG seed; each point's scenes use fold_in(seed, a stable "
                    "hash of the point), so a point's test set does not depend on the other points run (default 0)")
    ba.add_argument("--methods", nargs="+", choices=METHOD_NAMES, metavar="METHOD",
                    help="methods to run (default: every registered method that applies)")
    ba.add_argument("--sweeps", nargs="+", choices=SWEEPS, default=list(DEFAULT_SWEEPS),
                    help=f"sweeps to run (default {' '.join(DEFAULT_SWEEPS)}): "
                    "base set, SNR at K = 1 and 3 (snr = snr_k1 + snr_k3), K at 10 dB, L at 10 dB K = 3, r: source "
                    "range bins 0.5-2 .. 8-10 m at 10 dB K = 3 (search box unchanged), and ula: the "
                    "near-field full-array case of the literature (scenario ula15: 15-element half-wavelength ULA, "
                    "L = 100, K = 2, r 3.5-15 m) against SNR, MUSIC and MVDR only, with RMSE / sqrt(CRB). "
                    "Deployment sweeps (named only; on the seed-los deployment, every point the same sources and "
                    "noise): deploy = deploy_random + deploy_designed (random and CRB-designed codes, continuous, "
                    "2-bit, 1-bit), nmse (channel_nmse_db -30 -20 -10 dB), phase_error (code_phase_error_deg 0 5 10 "
                    "20 deg) and failure (element_failure 0 0.05 0.1), the last three with designed 2-bit codes")
    ba.add_argument("--snr-db", type=float, nargs="+",
                    help="SNR values of the snr and ula sweeps, dB (default -10 to 25 in 5 dB steps; "
                    "--quick: -10 0 10 20)")
    ba.add_argument("--resume", action="store_true", help="keep the records of an interrupted run in "
                    "--out/accuracy.json (same scenes per point and seed) and run only what it lacks")
    ba.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    outputs(ba, dirs=("out",))
    ba.set_defaults(handler=__name__)


def _add_speed(bsub) -> None:
    bs = bsub.add_parser(
        "speed", help="scenes/s and peak memory: 2.5D spectrum (dense, Woodbury), detection, every method, "
        "train step, against the original NumPy formula measured in the same run",
        description="Each measurement runs in its own worker process (its peak memory is its own); timings "
                    "exclude compilation. spectrum: the original 361 x 181 x 8 grid (G = 522,728, N = 144) "
                    "from rank-5 R_true, rismvdr dense (Cholesky) and Woodbury against the NumPy formula "
                    "inv + einsum one scene at a time (and PyTorch on CUDA when importable); detect: the "
                    "shared detector on 121 x 61 x 16 mvdr-oracle maps; methods: every method end to end on "
                    "seed scenes; train: the packaged seed and seed_refiner configs' steps. Writes "
                    "speed.json, speed.csv, speed.md and speed.png to --out.")
    bs.add_argument("--out", required=True, help="report folder")
    bs.add_argument("--quick", action="store_true", help="fewer repetitions, scenes and batch sizes (CPU: "
                    "5 min on 2 cores; the full run takes about 6)")
    bs.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default all)")
    bs.add_argument("--methods", nargs="+", choices=METHOD_NAMES, metavar="METHOD",
                    help="methods of the methods part (default every RIS-mode method)")
    bs.add_argument("--method-scenes", type=int, help="timed scenes per method (default CPU 128, quick 32; "
                    "GPU 1024, quick 256)")
    bs.add_argument("--method-batch", type=int, help="scenes per jitted call in the methods part (default "
                    "CPU 32, GPU 256)")
    bs.add_argument("--precision", choices=("highest", "fast"), default=SPEED_DEFAULTS["precision"],
                    help="matmul precision of the JAX spectrum paths (fast allows TF32 on GPUs; default %(default)s)")
    bs.add_argument("--max-chunk-mb", type=float, default=SPEED_DEFAULTS["max_chunk_mb"],
                    help="bound on the spectrum's per-chunk intermediate, MiB (default %(default)g)")
    bs.add_argument("--timeout-s", type=float, default=SPEED_DEFAULTS["timeout_s"], help="per-measurement "
                    "wall-clock limit, seconds; a worker past it is killed and recorded as a timeout (default "
                    "%(default)g)")
    bs.add_argument("--deadline-s", type=float, help="wall-clock budget of the whole run, seconds: measurements "
                    "not started in time are recorded as skipped and the report is still written (default none)")
    bs.add_argument("--seed", type=int, default=SPEED_DEFAULTS["seed"],
                    help="PRNG seed of the simulated scenes (default %(default)s)")
    bs.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    outputs(bs, dirs=("out",))
    bs.set_defaults(handler=__name__)


def _add_latency(bsub) -> None:
    bl = bsub.add_parser(
        "latency", help="seconds a user waits for one command (start-up and compilation included), cold and "
        "warm compilation cache, against `python -c 'import jax'` measured in the same series",
        description="Times whole processes wall-clock: `rismvdr --help`, `rismvdr simulate` of 1 seed scene "
                    "and `rismvdr localize` of that scene with each method, the last two with a cold "
                    "compilation cache (a fresh empty RISMVDR_CACHE_DIR per run) and a warm one (the "
                    "command's own directory, filled by its warm-up run). Every command gets a warm-up run, "
                    "then --repeats timed runs; `python -c 'import jax'` runs right before each of them and "
                    "each command's ratio is its median over the median of those reference runs. Writes "
                    "latency.json (machine, load average before and after, every run's seconds) and "
                    "latency.md (the table) to --out, and prints the table; a line per run on stderr.")
    bl.add_argument("--out", required=True, help="report folder")
    bl.add_argument("--methods", nargs="+", choices=LATENCY_METHODS, metavar="METHOD",
                    help="methods of the localize commands (default: every method that applies to a "
                    "seed-scenario file, the learned ones with the shipped weights; see `rismvdr methods`)")
    bl.add_argument("--repeats", type=_at_least_one, default=LATENCY_DEFAULTS["repeats"],
                    help="timed runs of every command, after one warm-up run (default %(default)s)")
    bl.add_argument("--quick", action="store_true", help="1 timed run per command, methods "
                    f"{' and '.join(LATENCY_QUICK_METHODS)} (unless --methods): 3-5 min on a 2-core CPU; the full run takes 20-30 min")
    bl.add_argument("--timeout-s", type=float, default=LATENCY_DEFAULTS["timeout_s"], help="wall-clock limit "
                    "of one run, seconds; a run past it is killed and recorded as a timeout (default %(default)g)")
    bl.add_argument("-q", "--quiet", action="store_true", help="no progress line per run on stderr")
    outputs(bl, dirs=("out",))
    bl.set_defaults(handler=__name__)


def _at_least_one(text: str) -> int:
    """An integer flag of at least 1 (refused by argparse, before JAX loads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check(args: argparse.Namespace) -> None:
    check_counts(args, {"--scenes": (1, None), "--method-scenes": (1, None), "--method-batch": (1, None),
                        "--seed": (0, SEED_MAX)})
    check_positive(args, {"--max-chunk-mb": "MiB", "--timeout-s": "s", "--deadline-s": "s"})


def run(args: argparse.Namespace) -> int:
    if args.bench == "latency":
        from rismvdr.bench.latency import run_latency  # deferred: loads the library

        run_latency(args.out, methods=args.methods, repeats=args.repeats, quick=args.quick,
                    timeout_s=args.timeout_s, progress=not args.quiet,
                    command=" ".join(["rismvdr", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None)
        return 0
    if args.bench == "accuracy":
        from rismvdr.bench.accuracy import run_accuracy  # deferred: loads JAX

        t0 = time.perf_counter()
        result = run_accuracy(args.out, n_scenes=args.scenes, seed=args.seed, methods=args.methods,
                              sweeps=tuple(args.sweeps), snr_values_db=tuple(args.snr_db) if args.snr_db else None,
                              quick=args.quick, progress=not args.quiet, resume=args.resume)
        meta = result["meta"]
        print(f"bench accuracy: wall time {time.perf_counter() - t0:.1f} s"
              + f" ({meta['n_scenes']} scenes per point; methods {', '.join(meta['methods'])})")
        return 0
    from rismvdr.bench.speed import run_speed  # deferred: loads the library

    run_speed(args.out, quick=args.quick, parts=tuple(args.parts), methods=args.methods, seed=args.seed,
              precision=args.precision, max_chunk_mb=args.max_chunk_mb, timeout_s=args.timeout_s,
              deadline_s=args.deadline_s, method_scenes=args.method_scenes, method_batch=args.method_batch,
              progress=not args.quiet,
              command=" ".join(["rismvdr", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None)
    return 0
