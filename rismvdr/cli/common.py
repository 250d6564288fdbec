"""What the commands share: flag groups, checks made before JAX loads, helpers of their `run`.

The parser is built from this module, `rismvdr.defaults` and the standard library only, so
`rismvdr --help`, every command's `--help` and a refused flag never load JAX. A few names and
defaults that the library states in modules that load JAX are mirrored below for the parser;
`tests/test_cli.py` checks each mirror against the library.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

from rismvdr.defaults import K_MAX, PHI_RANGE_DEG, R_RANGE_M, THETA_RANGE_DEG
from rismvdr.io.atomic import check_output_dir, check_output_file

__all__ = [
    "METHOD_NAMES", "DEFAULT_METHOD", "CONTINUATIONS", "CONFIG_NAMES", "DEFAULT_SPACE", "CACHE_DIR_ENV",
    "COMPILE_CACHE_ENV", "pairs", "outputs", "check_outputs", "check_output_file", "check_output_dir",
    "check_finite_flags", "SEED_MAX", "check_counts", "check_positive", "check_step", "one_line", "step_arg",
    "add_localizer_flags", "BOX_FLAGS", "check_localizer_flags",
    "localizer_settings", "learned_model", "RERUN", "add_distributed_flags", "check_distributed_flags",
    "maybe_distributed", "report_lost_process",
]

# ------------------------------------------------------------------------------------------
# Mirrors of library names (the library's modules load JAX; tests/test_cli.py checks these)
# ------------------------------------------------------------------------------------------
#: `rismvdr.localize.registry.METHODS`, in registry order.
METHOD_NAMES = ("mvdr-oracle", "mvdr-als", "mvdr-ridge", "mvdr-mf", "mvdr-sample", "music-mdl", "music-aic",
                "music-oracle-k", "bartlett", "somp", "somp-ml", "ml-oracle", "somp-ml-oracle-k", "learned",
                "learned-refiner", "learned-ml")
#: The method of `localize` and `plot scene` when `--method` is not given.
DEFAULT_METHOD = "mvdr-als"
#: `rismvdr.localize.settings.CONTINUATIONS`.
CONTINUATIONS = ("backbone", "backprojection")
#: `rismvdr.configs.CONFIGS`: the packaged training configs.
CONFIG_NAMES = ("seed", "seed_refiner", "seed_los", "tiny")
#: `rismvdr.localize.settings.SEARCHES`: the map searches of `GridSpec.search`.
SEARCHES = ("auto", "full", "coarse-to-fine")
#: `rismvdr.configs.DEFAULT_SPACE`: the search space of `hpo run` / `hpo two-stage`.
DEFAULT_SPACE = "hpo_space"
#: `rismvdr.io.CACHE_DIR_ENV` and `rismvdr.io.COMPILE_CACHE_ENV`.
CACHE_DIR_ENV = "RISMVDR_CACHE_DIR"
COMPILE_CACHE_ENV = "RISMVDR_COMPILE_CACHE"


def pairs(values) -> str:
    """`(-60.0, 60.0)` -> `"-60 60"`: a (min, max) default as `--help` shows it."""
    return " ".join(f"{v:g}" for v in values)


# ------------------------------------------------------------------------------------------
# Checks before any work (and before JAX loads)
# ------------------------------------------------------------------------------------------
def outputs(parser: argparse.ArgumentParser, *, files: tuple[str, ...] = (), dirs: tuple[str, ...] = (),
            inputs: tuple[str, ...] = ()) -> None:
    """Declare which flags of `parser` name an output file or directory (by `dest`) and which
    name inputs (as written on the command line: `SCENES` for a positional argument, `--maps`
    for a flag; one may hold a list): `main` checks them (`check_outputs`) before it loads JAX
    or the command reads anything."""
    parser.set_defaults(output_files=files, output_dirs=dirs, input_paths=inputs)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_").lower()


def _paths(args: argparse.Namespace, flags, *, existing: bool) -> list[tuple[str, str]]:
    """(flag, resolved path) of every path the flags hold (symlinks followed); with `existing`,
    only those on disk (an input flag may name a packaged config or a database URL instead)."""
    out = []
    for flag in flags:
        value = getattr(args, _dest(flag), None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v and (not existing or os.path.exists(v)):
                out.append((flag, os.path.realpath(os.fspath(v))))
    return out


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written, or that is one of the command's inputs or
    another of its outputs (compared resolved, symlinks followed), naming both flags.

    Raises:
      ValueError: as `rismvdr.io.check_output_file` / `check_output_dir`, or "--out: is the
        same file as SCENES ..." (one line).
    """
    files, dirs = getattr(args, "output_files", ()), getattr(args, "output_dirs", ())
    for dest in files:
        if getattr(args, dest, None):
            check_output_file(getattr(args, dest), "--" + dest.replace("_", "-"))
    for dest in dirs:
        if getattr(args, dest, None):
            check_output_dir(getattr(args, dest), "--" + dest.replace("_", "-"))
    seen = _paths(args, getattr(args, "input_paths", ()), existing=True)
    for flag, path in _paths(args, ["--" + d.replace("_", "-") for d in (*files, *dirs)], existing=False):
        for other_flag, other in seen:
            if path == other:
                raise ValueError(f"{flag}: {path!r} is the same file as {other_flag}; "
                                 "an output never overwrites an input or another output")
        seen.append((flag, path))


def check_finite_flags(args: argparse.Namespace) -> None:
    """Every number flag is finite (`--mad-z nan`, `--threshold-db inf` are refused by name)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"--{name.replace('_', '-')}: must be a finite number, got {v}")


#: The largest seed a command takes: JAX's and NumPy's generators keep 32 bits of a seed, so a
#: larger one would silently alias a smaller one (2**32 would be the test set's seed 0).
SEED_MAX = 2**32 - 1


def check_counts(args: argparse.Namespace, ranges: dict[str, tuple[int, int | None]]) -> None:
    """Each integer flag of `ranges` that was given lies in its (min, max) (max None: no bound).

    Args:
      args: the parsed flags.
      ranges: flag as spelled on the command line (`"--batch-size"`) -> (min, max).

    Raises:
      ValueError: "--batch-size: must be an integer >= 1, got 0" (one line).
    """
    for flag, (low, high) in ranges.items():
        value = getattr(args, _dest(flag), None)
        if value is None or (value >= low and (high is None or value <= high)):
            continue
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{flag}: must be an integer {allowed}, got {value}")


def check_positive(args: argparse.Namespace, units: dict[str, str]) -> None:
    """Each number flag of `units` (flag -> its unit) that was given is > 0.

    Raises:
      ValueError: "--timeout-s: must be > 0 s, got 0" (one line).
    """
    for flag, unit in units.items():
        value = getattr(args, _dest(flag), None)
        if value is not None and not value > 0:
            raise ValueError(f"{flag}: must be > 0{' ' + unit if unit else ''}, got {value:g}")


def check_step(flag: str, text: str | None) -> None:
    """A checkpoint step flag holds 'best', 'latest' or a step number (`step_arg`).

    Raises:
      ValueError: "--step: expected 'best', 'latest' or a step number >= 0, got '-3'".
    """
    if text is not None and text not in ("best", "latest") and not (text.isascii() and text.isdigit()):
        raise ValueError(f"{flag}: expected 'best', 'latest' or a step number >= 0, got {text!r}")


def one_line(e: BaseException) -> str:
    """An expected error as one line; an OSError names its file ("x.csv: Permission denied")."""
    if isinstance(e, OSError) and e.strerror:
        files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return f"{files}: {e.strerror}" if files else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def step_arg(text: str) -> str | int:
    """A checkpoint step flag: "best", "latest" or a step number."""
    return int(text) if text.isdigit() else text


# ------------------------------------------------------------------------------------------
# Localizer flags (localize, plot scene)
# ------------------------------------------------------------------------------------------
def add_localizer_flags(p: argparse.ArgumentParser) -> None:
    """The learned model, search grid and detector flags of `localize` and `plot scene`."""
    p.add_argument("--checkpoint", help="learned methods: a training run directory (--workdir of train / "
                   "train-refiner) or an exported model directory (default: the shipped weights)")
    p.add_argument("--checkpoint-step", default="best", help="learned methods with a run directory: 'best' "
                   "(lowest validation objective), 'latest' or a step number (default best)")
    g = p.add_argument_group("search grid and detector (defaults: the scene file's scenario, else the seed box)")
    g.add_argument("--search", choices=SEARCHES, help="map search: 'full' (every grid point), 'coarse-to-fine' "
                   "(a grid 3x coarser in angle with 8 range planes, its best local maxima refined off the grid) or "
                   "'auto' (each method's default: coarse-to-fine for mvdr-oracle, mvdr-als, music-mdl, "
                   "learned and learned-ml, full for the others; default auto)")
    g.add_argument("--phi-range-deg", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"azimuth search box, degrees (default {pairs(PHI_RANGE_DEG)})")
    g.add_argument("--theta-range-deg", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"elevation search box, degrees (default {pairs(THETA_RANGE_DEG)}; a linear array uses 0 0)")
    g.add_argument("--r-range-m", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"range search box, metres (default {pairs(R_RANGE_M)})")
    g.add_argument("--phi-step-deg", type=float, help="azimuth grid step, degrees (default 1)")
    g.add_argument("--theta-step-deg", type=float, help="elevation grid step, degrees (default 1)")
    g.add_argument("--planes", type=int, help="number of range planes, uniform in 1/r (default 16)")
    g.add_argument("--threshold-mode", choices=("db", "mad", "none"), help="peak threshold: 'db' = within "
                   "--threshold-db of the map maximum (default), 'mad' = above median + z*MAD of the map in dB, "
                   "'none' = every local maximum")
    g.add_argument("--threshold-db", type=float, help="dB below the map maximum for mode 'db' (default 12)")
    g.add_argument("--mad-z", type=float, help="z for mode 'mad', in MADs of the map in dB (dimensionless; "
                   "default 5)")
    g.add_argument("--k-max", type=int, help=f"at most this many detections per scene (count, default {K_MAX})")
    g.add_argument("--no-refine", action="store_true", help="skip the continuous 3-D refinement of grid peaks "
                   "(learned methods with the ML polish skip it unless --map-refine)")
    g.add_argument("--significance", choices=("f-test", "none"), help="'f-test' (default): keep a detection of a "
                   "spectrum method (MVDR, MUSIC, Bartlett) only if it passes the compressive methods' F test on the "
                   "measurements (per-scene false-alarm bound 1 %%, dimensionless); 'none': every peak the threshold "
                   "passes (up to --k-max even on pure noise)")
    g.add_argument("--no-polish", action="store_true", help="learned methods: report the detector's peaks on the "
                   "MVDR map as they are, without the ML refinement on the measurements, the F test and the residual "
                   "pass (the earlier behaviour, for comparison)")
    g.add_argument("--no-map-threshold", action="store_true", help="learned methods: send every local maximum of "
                   "the MVDR map (up to --k-max) to the finishing stage, whose F test on the measurements alone "
                   "decides (default: the peaks that pass --threshold-mode; ignored with --no-polish)")
    g.add_argument("--map-refine", action="store_true", help="learned methods: refine the MVDR map's peaks off "
                   "the grid (the detector's 3-D refinement) before the ML polish (default off: the polish refines "
                   "them on the measurements; ignored with --no-polish or --no-refine)")
    g.add_argument("--residual-passes", type=int, help="learned methods: passes of the backbone over the residual of "
                   "the polished fit, each adding the sources it finds (count, default 1; 0: polish only)")
    g.add_argument("--continuation", choices=CONTINUATIONS, help="learned methods: what searches the residual of "
                   "the polished fit for missed sources: 'backbone' (--residual-passes passes of the network; default "
                   "of learned and learned-refiner) or 'backprojection' (the greedy ML continuation of the compressive "
                   "methods, picks by the matched filter of the back-projected residual, each F-tested; no "
                   "dictionary). learned-ml always uses 'backprojection'")
    g.add_argument("--range-rescan", type=int, help="learned methods: last, search each source's range over this many "
                   "values of 1/r across the range box at its fitted angles, refine from there and keep that fit when "
                   "it explains more of the measurements (count of candidates, evenly spaced in 1/r, >= 3; default 48, "
                   "LearnedSettings.range_rescan; 0: off)")
    g.add_argument("--search-width", type=int, help="somp-ml (and somp-ml-oracle-k): candidates tried at each "
                   "greedy step, the best atoms outside each other's detection gate, each refined with the sources "
                   "found so far, the lowest residual kept (count >= 1; default 8 when the file's scenario has a fixed "
                   "deployment channel, channel los or rician, else 1; time grows about linearly with it)")
    g.add_argument("--steering-model", choices=("exact", "fresnel", "far"),
                   help="steering model of the search (default: the scenario's, else exact)")
    g.add_argument("--precision", choices=("highest", "fast"),
                   help="matmul precision: 'highest' (default) or 'fast' (TF32 on recent GPUs)")
    g.add_argument("--batch-size", type=int, help="scenes per jitted call (count, default 32)")


#: The search-box flags: flag -> (the `GridSpec` / `SceneConfig` field it replaces, the box's limits).
BOX_FLAGS = {"--phi-range-deg": ("phi_deg", -90.0, 90.0), "--theta-range-deg": ("theta_deg", -90.0, 90.0),
             "--r-range-m": ("r_m", 0.0, math.inf)}


def check_localizer_flags(args: argparse.Namespace) -> None:
    """The localizer flags' checks that need no library (run before the scene file is read)."""
    for flag, (field, low, high) in BOX_FLAGS.items():
        box = getattr(args, _dest(flag))
        if box is None:
            continue
        lo, hi = box
        unit = "degrees" if flag.endswith("-deg") else "metres"
        if lo > hi:
            raise ValueError(f"{flag}: {field}: expected MIN <= MAX, got {lo:g} {hi:g}")
        if lo < low or hi > high or (high == math.inf and lo <= low):  # GridSpec's limits; a range is > 0
            raise ValueError(f"{flag}: {field}: the search box must lie in ({low:g}, {high:g}) {unit}, "
                             f"got {lo:g} {hi:g}")
    check_positive(args, {"--phi-step-deg": "degrees", "--theta-step-deg": "degrees"})
    check_counts(args, {"--planes": (1, None), "--k-max": (1, None), "--batch-size": (1, None),
                        "--residual-passes": (0, None), "--search-width": (1, None)})
    for flag in ("--threshold-db", "--mad-z"):
        value = getattr(args, _dest(flag))
        if value is not None and value < 0:
            raise ValueError(f"{flag}: must be >= 0, got {value:g}")
    if args.range_rescan is not None and (args.range_rescan < 0 or 0 < args.range_rescan < 3):
        raise ValueError(f"--range-rescan: must be 0 (off) or an integer >= 3, got {args.range_rescan}")
    check_step("--checkpoint-step", args.checkpoint_step)
    if args.continuation == "backbone" and getattr(args, "method", None) == "learned-ml":
        raise ValueError("--continuation backbone: learned-ml is learned with the 'backprojection' continuation; "
                         "use --method learned for the backbone's")


def localizer_settings(args: argparse.Namespace, sf):
    """Localizer settings: the scene file's scenario (its box, steering model and gate) if
    recorded, with the flags over it (a box flag replaces the file's box before it is checked).

    Raises:
      SceneFileError: the file's scenario gives settings that cannot be (its box wider than the
        front half-space, say), naming the file, the key `meta` and the field.
    """
    from rismvdr.io import SceneFileError, scenario_from_meta  # deferred: the library loads JAX
    from rismvdr.localize.settings import LocalizerSettings, settings_for_scenario  # deferred: as above

    box = {field: tuple(getattr(args, _dest(flag))) for flag, (field, _, _) in BOX_FLAGS.items()
           if getattr(args, _dest(flag)) is not None}
    cfg = scenario_from_meta(sf.meta, source=args.scenes)
    base = LocalizerSettings()
    if cfg is not None:
        try:
            base = settings_for_scenario(dataclasses.replace(cfg, **box))
        except ValueError as e:
            problem = one_line(e)
            flag = next((f for f, (field, _, _) in BOX_FLAGS.items() if problem.startswith(f"{field}:")), None)
            hint = f"; {flag} MIN MAX searches another box" if flag else ""
            raise SceneFileError(args.scenes, "meta", f"config.{problem} (the file's scenario){hint}") from None
    det_kw = {k: v for k, v in dict(
        threshold_mode=args.threshold_mode, threshold_db=args.threshold_db, mad_z=args.mad_z,
        k_max=args.k_max, refine=None if not args.no_refine else False, significance=args.significance,
    ).items() if v is not None}
    grid_kw = {k: v for k, v in dict(
        **box, phi_step_deg=args.phi_step_deg, theta_step_deg=args.theta_step_deg, n_planes=args.planes,
        search=getattr(args, "search", None),
    ).items() if v is not None}
    kw = {k: v for k, v in dict(
        steering_model=args.steering_model, precision=args.precision, batch_size=args.batch_size,
    ).items() if v is not None}
    det = dataclasses.replace(base.detector, **det_kw)
    det.validate()
    learned_kw = {k: v for k, v in dict(
        polish=None if not args.no_polish else False, residual_passes=args.residual_passes,
        range_rescan=args.range_rescan, continuation=args.continuation,
        map_threshold=False if args.no_map_threshold else None, map_refine=True if args.map_refine else None,
    ).items() if v is not None}
    learned = dataclasses.replace(base.learned, **learned_kw)
    compressive = base.compressive
    if getattr(args, "search_width", None) is not None:
        compressive = dataclasses.replace(compressive, config=dataclasses.replace(
            compressive.config, search_width=args.search_width))
    return base.with_grid(**grid_kw).replace(detector=det, learned=learned, compressive=compressive, **kw)


def learned_model(args: argparse.Namespace):
    """The model for learned methods: --checkpoint if given, else the shipped weights."""
    from rismvdr.localize.registry import METHODS  # deferred: the library loads JAX

    if not METHODS[args.method].learned:
        if getattr(args, "checkpoint", None):
            raise ValueError(f"--checkpoint: method {args.method!r} is not a learned method")
        return None
    from rismvdr.localize.weights import load_learned  # deferred: loads Flax, which only the learned methods use

    return load_learned(args.checkpoint, step=step_arg(args.checkpoint_step), refiner=METHODS[args.method].refiner)


# ------------------------------------------------------------------------------------------
# Several processes (localize, train, train-refiner)
# ------------------------------------------------------------------------------------------
#: What a lost process of `localize --distributed` leaves to do.
RERUN = "run every process again"


def add_distributed_flags(p: argparse.ArgumentParser, *, what: str) -> None:
    """`--distributed` and `--distributed-timeout-s`; `what` says what each process does."""
    p.add_argument("--distributed", action="store_true", help="several processes (hosts): join the run "
                   "described by JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and "
                   f"JAX_PROCESS_ID, or detected by JAX (Slurm, Open MPI); {what} (README: Several machines)")
    p.add_argument("--distributed-timeout-s", type=int, default=100, help="--distributed: seconds to wait for "
                   "every process to join, and seconds without a heartbeat after which a process counts as lost "
                   "and the others stop with an error (default %(default)s)")


def check_distributed_flags(args: argparse.Namespace) -> None:
    """`--distributed-timeout-s` is at least 1 s (before JAX loads)."""
    if args.distributed_timeout_s < 1:
        raise ValueError(f"--distributed-timeout-s: must be an integer >= 1 s, got {args.distributed_timeout_s}")


def maybe_distributed(args: argparse.Namespace) -> None:
    """Join the `--distributed` run (coordinator, process count and id from the environment)."""
    if not getattr(args, "distributed", False):
        return
    check_distributed_flags(args)
    from rismvdr.train.distributed import initialize  # deferred: JAX's distributed runtime

    advice = RERUN if args.command == "localize" else "restart every process with --resume"
    initialize(timeout_s=args.distributed_timeout_s, command=f"rismvdr {args.command}", advice=advice)


def report_lost_process(args: argparse.Namespace, error: Exception) -> None:
    """A lost process of a `--distributed` run: one line on stderr and exit 1 at once (JAX's
    shutdown barrier would wait for the lost process, then abort with a stack trace)."""
    from rismvdr.train.distributed import exit_now  # deferred: JAX's distributed runtime

    print(f"rismvdr {args.command}: error: {error}", file=sys.stderr, flush=True)
    exit_now(1)
