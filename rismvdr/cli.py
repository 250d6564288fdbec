"""The `rismvdr` command line: simulate, localize, evaluate, plot, demo, methods, train,
train-refiner, export, hpo (and hpo export), hpo2.

Every command has `--help`; units are in flag names (`*_deg`, `*_m`, `*_db`). Files follow
SPEC section 8 and are written atomically. A malformed input gives a one-line error naming
the key and a non-zero exit status (2).

Compiled programs are kept in a per-user persistent cache (`rismvdr.files.compile_cache_dir`:
`$RISMVDR_CACHE_DIR`, else `$XDG_CACHE_HOME/rismvdr/jax`, else `~/.cache/rismvdr/jax`), so a
command run again on the same shapes does not compile again; `--no-compile-cache` or
`RISMVDR_COMPILE_CACHE=0` turns it off.

The commands only parse, call one library function and print. Library defaults are read from
the library (`_default`), never restated; modules that load Flax, Optax, Orbax, Optuna or
Matplotlib are imported by the commands that need them, so `rismvdr --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import math
import sys
import time
from pathlib import Path

import jax

from rismvdr.bench.accuracy import run_accuracy
from rismvdr.bench.demo import run_demo
from rismvdr.bench.speed import PARTS, run_speed
from rismvdr.bench.sweeps import DEFAULT_SWEEPS, SCENES_PER_POINT, SCENES_PER_POINT_QUICK, SWEEPS
from rismvdr.configs import CONFIGS, DEFAULT_SPACE, config_file, load_named_config, space_file
from rismvdr.eval import metrics, plots
from rismvdr.eval.evaluation import evaluate_detections, scene_pssr_db, truth_crb
from rismvdr.eval.objective import E2E_SCENES, E2E_SEED, F1_WEIGHT, TEST_SEED, XYZ_NORM_M
from rismvdr.files import (
    CACHE_DIR_ENV,
    COMPILE_CACHE_ENV,
    check_output_dir,
    check_output_file,
    enable_compile_cache,
    enable_default_compile_cache,
    load_scenes,
    read_detections_csv,
    read_json,
    read_maps,
    replaced_together,
    save_scenes,
    scenario_from_meta,
    scene_file_from_scenes,
    scenes_from_file,
    sigterm_raises,
    to_jsonable,
    write_detections_csv,
    write_json,
    write_maps,
)
from rismvdr.localize.registry import METHODS, localize
from rismvdr.localize.settings import CONTINUATIONS, LocalizerSettings, settings_for_scenario
from rismvdr.localize.weights import load_learned
from rismvdr.physics.scenarios import DEFAULT_GATES, Gates, get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.train.config import REFINER_PHASES, TrainConfig, apply_overrides
from rismvdr.train.distributed import (ProcessLostError, exit_now, initialize as initialize_distributed, is_main,
                                       lost_process_guard)

__all__ = ["main", "build_parser"]

log = logging.getLogger("rismvdr")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _default(function, name: str):
    """The default of `function`'s parameter `name`: the library states it once, `--help` shows it."""
    return inspect.signature(function).parameters[name].default


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        try:
            return tuple(float(x) for x in text.split(","))
        except ValueError:
            pass
    return text


def parse_overrides(items) -> dict:
    """`["k_min=3", "snr_db=10,10"]` -> `{"k_min": 3, "snr_db": (10.0, 10.0)}`."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        value = _parse_value(value)
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def _settings(args, sf):
    """Localizer settings: the scene file's scenario box if recorded, then CLI overrides."""
    cfg = scenario_from_meta(sf.meta)
    base = settings_for_scenario(cfg) if cfg is not None else LocalizerSettings()
    det_kw = {k: v for k, v in dict(
        threshold_mode=args.threshold_mode, threshold_db=args.threshold_db, mad_z=args.mad_z,
        k_max=args.k_max, refine=None if not args.no_refine else False, significance=args.significance,
    ).items() if v is not None}
    grid_kw = {k: v for k, v in dict(
        phi_deg=args.phi_range_deg and tuple(args.phi_range_deg),
        theta_deg=args.theta_range_deg and tuple(args.theta_range_deg),
        r_m=args.r_range_m and tuple(args.r_range_m),
        phi_step_deg=args.phi_step_deg, theta_step_deg=args.theta_step_deg, n_planes=args.planes,
    ).items() if v is not None}
    kw = {k: v for k, v in dict(
        steering_model=args.steering_model, precision=args.precision, batch_size=args.batch_size,
    ).items() if v is not None}
    det = dataclasses.replace(base.detector, **det_kw)
    det.validate()
    if args.residual_passes is not None and args.residual_passes < 0:
        raise ValueError(f"--residual-passes: must be an integer >= 0, got {args.residual_passes}")
    if args.range_rescan is not None and (args.range_rescan < 0 or 0 < args.range_rescan < 3):
        raise ValueError(f"--range-rescan: must be 0 (off) or an integer >= 3, got {args.range_rescan}")
    if args.continuation == "backbone" and getattr(args, "method", None) == "learned-ml":
        raise ValueError("--continuation backbone: learned-ml is learned with the 'backprojection' continuation; "
                         "use --method learned for the backbone's")
    learned_kw = {k: v for k, v in dict(
        polish=None if not args.no_polish else False, residual_passes=args.residual_passes,
        range_rescan=args.range_rescan, continuation=args.continuation,
        map_threshold=False if args.no_map_threshold else None, map_refine=True if args.map_refine else None,
    ).items() if v is not None}
    learned = dataclasses.replace(base.learned, **learned_kw)
    return base.with_grid(**grid_kw).replace(detector=det, learned=learned, **kw)


def _learned_model(args):
    """The model for learned methods: --checkpoint if given, else the shipped weights."""
    if not METHODS[args.method].learned:
        if getattr(args, "checkpoint", None):
            raise ValueError(f"--checkpoint: method {args.method!r} is not a learned method")
        return None
    return load_learned(args.checkpoint, step=_step_arg(args.checkpoint_step))


def _step_arg(text: str) -> str | int:
    """A checkpoint step flag: "best", "latest" or a step number."""
    return int(text) if text.isdigit() else text


def _add_localizer_flags(p):
    p.add_argument("--checkpoint", help="learned methods: a training run directory (--workdir of train / "
                   "train-refiner) or an exported model directory (default: the shipped weights)")
    p.add_argument("--checkpoint-step", default="best", help="learned methods with a run directory: 'best' "
                   "(lowest validation objective), 'latest' or a step number (default best)")
    g = p.add_argument_group("search grid and detector (defaults: the scene file's scenario, else the seed box)")
    g.add_argument("--phi-range-deg", type=float, nargs=2, metavar=("MIN", "MAX"), help="azimuth search box, degrees (default -60 60)")
    g.add_argument("--theta-range-deg", type=float, nargs=2, metavar=("MIN", "MAX"), help="elevation search box, degrees (default -30 30; a linear array uses 0 0)")
    g.add_argument("--r-range-m", type=float, nargs=2, metavar=("MIN", "MAX"), help="range search box, metres (default 0.5 10)")
    g.add_argument("--phi-step-deg", type=float, help="azimuth grid step, degrees (default 1)")
    g.add_argument("--theta-step-deg", type=float, help="elevation grid step, degrees (default 1)")
    g.add_argument("--planes", type=int, help="number of range planes, uniform in 1/r (default 16)")
    g.add_argument("--threshold-mode", choices=("db", "mad", "none"), help="peak threshold: 'db' = within --threshold-db of the map maximum (default), 'mad' = above median + z*MAD of the map in dB, 'none' = every local maximum")
    g.add_argument("--threshold-db", type=float, help="dB below the map maximum for mode 'db' (default 12)")
    g.add_argument("--mad-z", type=float, help="z for mode 'mad' (default 5)")
    g.add_argument("--k-max", type=int, help="at most this many detections per scene (default 5)")
    g.add_argument("--no-refine", action="store_true", help="skip the continuous 3-D refinement of grid peaks (learned methods "
                   "with the ML polish skip it unless --map-refine)")
    g.add_argument("--significance", choices=("f-test", "none"), help="'f-test' (default): keep a detection of a "
                   "spectrum method (MVDR, MUSIC, Bartlett) only if it passes the compressive methods' F test on the "
                   "measurements (per-scene false-alarm bound 1 %%, dimensionless); 'none': every peak the threshold "
                   "passes (up to --k-max even on pure noise)")
    g.add_argument("--no-polish", action="store_true", help="learned methods: report the detector's peaks on the "
                   "MVDR map as they are, without the ML refinement on the measurements, the F test and the residual "
                   "pass (the pre-2026-12 behaviour, for comparison)")
    g.add_argument("--no-map-threshold", action="store_true", help="learned methods: send every local maximum of "
                   "the MVDR map (up to --k-max) to the finishing stage, whose F test on the measurements alone decides "
                   "(default: the peaks that pass --threshold-mode; ignored with --no-polish)")
    g.add_argument("--map-refine", action="store_true", help="learned methods: refine the MVDR map's peaks off "
                   "the grid (the detector's 3-D refinement) before the ML polish (default off: the polish refines "
                   "them on the measurements; ignored with --no-polish or --no-refine)")
    g.add_argument("--residual-passes", type=int, help="learned methods: passes of the backbone over the residual of "
                   "the polished fit, each adding the sources it finds (count, default 1; 0: polish only)")
    g.add_argument("--continuation", choices=CONTINUATIONS, help="learned methods: what searches the residual of "
                   "the polished fit for missed sources: 'backbone' (--residual-passes passes of the network; default "
                   "of learned and learned-refiner) or 'backprojection' (the greedy ML continuation of the compressive "
                   "methods, picks by the matched filter of the back-projected residual, each F-tested; no dictionary). "
                   "learned-ml always uses 'backprojection'")
    g.add_argument("--range-rescan", type=int, help="learned methods: last, search each source's range over this many "
                   "values of 1/r across the range box at its fitted angles, refine from there and keep that fit when "
                   "it explains more of the measurements (count of candidates, evenly spaced in 1/r, >= 3; default 48, "
                   "LearnedSettings.range_rescan; 0: off)")
    g.add_argument("--steering-model", choices=("exact", "fresnel", "far"), help="steering model of the search (default: the scenario's, else exact)")
    g.add_argument("--precision", choices=("highest", "fast"), help="matmul precision: 'highest' (default) or 'fast' (TF32 on recent GPUs)")
    g.add_argument("--batch-size", type=int, help="scenes per jitted call (default 32)")


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    check_output_file(args.out, "--out")
    cfg = get_scenario(args.scenario, **parse_overrides(args.set))
    t0 = time.perf_counter()
    scenes = simulate(cfg, jax.random.key(args.seed), args.scenes, batch_size=args.batch_size)
    meta = dict(scenario=cfg.name, seed=args.seed, n_scenes=args.scenes, config=dataclasses.asdict(cfg),
                generator="rismvdr simulate")
    save_scenes(args.out, scene_file_from_scenes(scenes, scenario_geometry(cfg), meta=meta))
    print(f"wrote {args.scenes} scenes ({cfg.name}, seed {args.seed}) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_localize(args) -> int:
    check_output_file(args.out, "--out")
    if args.maps_out:
        check_output_file(args.maps_out, "--maps-out")
    _maybe_distributed(args)
    sf = load_scenes(args.scenes)
    settings = _settings(args, sf)
    scenes = scenes_from_file(sf, model=settings.steering_model)
    try:  # --distributed: each process runs its share of the batches, every process gets every result
        with lost_process_guard(lambda: "localize", advice=_RERUN, keep=(ValueError,)):
            res = localize(args.method, scenes, sf.geometry(), settings, progress=not args.quiet,
                           model=_learned_model(args), distributed=args.distributed)
    except ProcessLostError as e:
        print(f"rismvdr {args.command}: error: {e}", file=sys.stderr, flush=True)
        exit_now(1)
    if not is_main():
        return 0  # process 0 writes the outputs
    d = res.detections
    with replaced_together():  # the CSV and the maps of one run: both new, or both as they were
        write_detections_csv(args.out, d.phi, d.theta, d.r, d.score_db, d.valid)
        if args.maps_out:
            write_maps(args.maps_out, res.power_db, res.plane, res.grid)
    if res.fallbacks is not None:
        print(f"{args.method}: refiner map rejected in {res.fallbacks} of {sf.n_scenes} scenes (MVDR fallback)")
    n = int(d.valid.sum())
    print(f"{args.method}: {n} detections in {sf.n_scenes} scenes ({res.seconds:.1f} s) -> {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    check_output_file(args.out, "--out")
    for flag, value, unit in (("--gate-phi-deg", args.gate_phi_deg, "degrees"),
                              ("--gate-theta-deg", args.gate_theta_deg, "degrees"),
                              ("--gate-r-m", args.gate_r_m, "metres"), ("--snr-bin-db", args.snr_bin_db, "dB")):
        if not value > 0:
            raise ValueError(f"{flag}: must be > 0 {unit}, got {value:g}")
    sf = load_scenes(args.scenes)
    if not sf.has_truth:
        raise ValueError(f"{args.scenes}: key 'gt_phi': missing, evaluation needs the truth")
    det = read_detections_csv(args.detections, n_scenes=sf.n_scenes)
    cfg = scenario_from_meta(sf.meta)
    model = cfg.steering_model if cfg is not None else "exact"
    scenes = scenes_from_file(sf, model=model)
    pssr = None
    if args.maps:
        power_db, _, grid = read_maps(args.maps)
        if power_db.shape[0] != sf.n_scenes:
            raise ValueError(f"{args.maps}: key 'power_db': {power_db.shape[0]} scenes, the scene file has {sf.n_scenes}")
        pssr = scene_pssr_db(power_db, det.phi, det.theta, det.valid, grid)
    crb = truth_crb(scenes, sf.geometry(), model=model) if not args.no_crb else None
    gates = Gates.from_deg(args.gate_phi_deg, args.gate_theta_deg, args.gate_r_m)
    ev = evaluate_detections(scenes, det.phi, det.theta, det.r, det.valid, score_db=det.score_db,
                             pssr=pssr, crb=crb, gates=gates, snr_bin_db=args.snr_bin_db)
    label = args.label or Path(args.detections).stem
    out = dict(method=label, test_set=_test_set(sf, args.scenes), **ev)
    write_json(args.out, to_jsonable(out))
    print(metrics.format_table({label: ev}))
    print(f"wrote {args.out}")
    return 0


def _test_set(sf, path) -> dict:
    meta = sf.meta or {}
    return dict(file=str(path), scenario=meta.get("scenario"), seed=meta.get("seed"), n_scenes=sf.n_scenes)


def cmd_plot(args) -> int:
    check_output_file(args.out, "--out")
    if args.what == "scene":
        sf = load_scenes(args.scenes)
        if not 0 <= args.index < sf.n_scenes:
            raise ValueError(f"--index: must lie in [0, {sf.n_scenes - 1}], got {args.index}")
        settings = _settings(args, sf)
        scenes = scenes_from_file(sf, model=settings.steering_model)[args.index: args.index + 1]
        res = localize(args.method, scenes, sf.geometry(), settings, progress=False, model=_learned_model(args))
        d = res.detections
        if args.detections:
            fd = read_detections_csv(args.detections, n_scenes=sf.n_scenes)
            dets = tuple(a[args.index][fd.valid[args.index]] for a in (fd.phi, fd.theta, fd.r))
        else:
            dets = tuple(a[0][d.valid[0]] for a in (d.phi, d.theta, d.r))
        truth = None
        if sf.has_truth:
            m = sf.truth_mask[args.index]
            truth = tuple(a[args.index][m] for a in (sf.gt_phi, sf.gt_theta, sf.gt_r))
        plots.plot_scene_map(args.out, res.power_db[0], res.plane[0], res.grid, truth=truth, detections=dets,
                             title=f"{args.method} 2.5D spectrum, scene {args.index} of {args.scenes}")
    else:
        ms = {}
        for path in args.metrics:
            m = read_json(path, "metrics")
            ms[m.get("method", Path(path).stem)] = m
        plots.plot_snr_curves(args.out, ms, title="per-SNR-bin metrics")
    print(f"wrote {args.out}")
    return 0


def cmd_methods(args) -> int:
    for m in METHODS.values():
        flags = [t for t, on in (("needs truth", m.needs_truth), ("full-array only", m.full_array_only),
                                 ("RIS only", m.ris_only), ("learned: --checkpoint or shipped weights", m.learned))
                 if on]
        print(f"{m.name:16s} {m.description}" + (f" [{', '.join(flags)}]" if flags else ""))
    return 0


def _train_config(args):

    if args.from_hpo:
        best = read_json(args.from_hpo, "--from-hpo")
        if "config" not in best:
            raise ValueError(f"--from-hpo: {args.from_hpo}: key 'config': missing (write it with `rismvdr hpo export`)")
        cfg = TrainConfig.from_dict(best["config"])
    elif args.config:
        cfg = load_named_config(args.config)
    else:
        raise ValueError(f"--config: a config is needed: a packaged name ({', '.join(CONFIGS)}) or a config "
                         "file, or --from-hpo / --resume")
    return apply_overrides(cfg, args.set or [])


def _stored_train_config(workdir):
    from rismvdr.train.checkpoint import Checkpointer  # deferred: Orbax, for the training commands only

    ck = Path(workdir) / "checkpoints"
    if not ck.is_dir():
        return None
    with Checkpointer(ck, read_only=True) as c:
        steps = c.steps()
        if not steps:
            return None
        # the run's config (the same in every step) from the newest step whose files are intact;
        # `fit` then names and skips a damaged one
        intact = [s for s in reversed(steps) if c.check(s) is None] or steps[-1:]
        return TrainConfig.from_dict(c.read_config(intact[0])["train"])


_RERUN = "run every process again"  # what a lost process of `localize --distributed` leaves to do


def _maybe_distributed(args):
    if getattr(args, "distributed", False):  # coordinator, process count and id from the environment
        if args.distributed_timeout_s < 1:
            raise ValueError(f"--distributed-timeout-s: must be >= 1 s, got {args.distributed_timeout_s}")
        advice = _RERUN if args.command == "localize" else "restart every process with --resume"
        initialize_distributed(timeout_s=args.distributed_timeout_s, command=f"rismvdr {args.command}",
                               advice=advice)


def _fit(args, fit, *a, **kw) -> dict:
    """`fit(*a, **kw)`; a lost process of a `--distributed` run: one line on stderr and exit 1 at
    once (JAX's shutdown barrier would wait for the lost process, then abort with a stack trace)."""
    try:
        return fit(*a, **kw)
    except ProcessLostError as e:
        print(f"rismvdr {args.command}: error: {e}", file=sys.stderr, flush=True)
        exit_now(1)


def cmd_train(args) -> int:
    from rismvdr.train.trainer import fit  # deferred: Orbax and the trainer, for the training commands only

    check_output_dir(args.workdir, "--workdir")
    _maybe_distributed(args)
    if args.resume and not (args.config or args.from_hpo):
        cfg = _stored_train_config(args.workdir)
        if cfg is None:
            raise ValueError(f"--resume: no checkpoint in {args.workdir}")
        cfg = apply_overrides(cfg, args.set or [])
    else:
        cfg = _train_config(args)
    if cfg.stage != "backbone":
        cfg = cfg.replace(stage="backbone")
    out = _fit(args, fit, cfg, args.workdir, resume=args.resume, n_devices=args.devices, progress=not args.quiet,
               stop_at=args.stop_at)
    if is_main():
        _print_fit(out)
    return 0


def cmd_train_refiner(args) -> int:
    from rismvdr.train.trainer import fit  # deferred: Orbax and the trainer, for the training commands only

    check_output_dir(args.workdir, "--workdir")
    _maybe_distributed(args)
    backbone = load_learned(args.backbone, step=_step_arg(args.backbone_step))
    if args.config or args.from_hpo:
        cfg = _train_config(args)  # --set already applied
    else:
        cfg = _stored_train_config(args.workdir) if args.resume else None
        if cfg is None:  # the backbone run's own config, Stage-2 phases
            cfg = TrainConfig.from_dict(backbone.info["train"]) if "train" in backbone.info else TrainConfig()
            cfg = cfg.replace(phases=REFINER_PHASES)
        cfg = apply_overrides(cfg.replace(stage="refiner"), args.set or [])
    if all(p.weights.heatmap == 0.0 for p in cfg.phases):
        cfg = cfg.replace(phases=REFINER_PHASES)
    cfg = cfg.replace(stage="refiner")
    cfg.validate()
    out = _fit(args, fit, cfg, args.workdir, resume=args.resume, n_devices=args.devices, progress=not args.quiet,
               stop_at=args.stop_at, backbone=backbone)
    if is_main():
        _print_fit(out)
    return 0


def _print_fit(out: dict) -> None:
    val = out.get("validation") or {}
    keys = [k for k in ("val/peak_f1", "val/peak_precision", "val/peak_recall", "val/objective") if k in val]
    summary = ", ".join(f"{k[4:]} {val[k]:.3f}" for k in keys)
    print(f"{out['status']}: {out['steps']} steps ({out['skipped']} skipped) in {out['seconds']:.0f} s"
          + (f"; validation: {summary}" if summary else "") + f" -> {out['workdir']}")


def cmd_hpo(args) -> int:
    """`rismvdr hpo`: one study (surrogate or end-to-end objective); `rismvdr hpo export`."""
    if args.hpo_command == "export":
        return cmd_hpo_export(args)
    if args.hpo_command == "trials":
        return cmd_hpo_trials(args)
    import rismvdr.hpo as hpo  # start-up time: only the hpo commands load optuna and the trainer

    for flag, value in (("--config", args.config), ("--workdir", args.workdir), ("--trials", args.trials)):
        if value is None:
            raise ValueError(f"{flag}: required (or use `rismvdr hpo export`)")
    kw = cmd_hpo_common(args)
    settings = hpo.make_settings(kw["config"], overrides=args.set or [], space=kw["space"], workdir=args.workdir,
                                 epochs=args.epochs, objective=args.objective, **kw["settings"])
    study_name = args.study or settings.base.name
    study = hpo.run_study(settings, study_name=study_name, n_trials=args.trials, pruner=args.pruner,
                          sampler_seed=args.sampler_seed, **kw["run"])
    cmd_hpo_summary(study, args)
    return 0


def cmd_hpo2(args) -> int:
    """`rismvdr hpo2`: surrogate stage 1, end-to-end rerun of its top-k, reranked table."""
    import rismvdr.hpo as hpo  # start-up time: only the hpo commands load optuna and the trainer

    kw = cmd_hpo_common(args)
    s1 = hpo.make_settings(kw["config"], overrides=args.set or [], space=kw["space"], workdir=args.workdir,
                           epochs=args.stage1_epochs, objective="surrogate", **kw["settings"])
    s2 = hpo.make_settings(s1.base, space=kw["space"], workdir=args.workdir, epochs=args.stage2_epochs,
                           objective="e2e", **kw["settings"])
    name = args.study or s1.base.name
    _, study2 = hpo.run_hpo2(s1, s2, study_name=name, stage1_trials=args.stage1_trials, topk=args.stage2_topk,
                             pruner=args.pruner, sampler_seed=args.sampler_seed, **kw["run"])
    print(f"stage 2 ({name}-s2): the top {args.stage2_topk} stage-1 parameter sets, end-to-end, reranked")
    print(hpo.format_rerank(hpo.rerank(study2)))
    cmd_hpo_summary(study2, args)
    return 0


def cmd_hpo_common(args) -> dict:
    """The flags `hpo` and `hpo2` share: the config and space files, ObjectiveSettings fields and
    run_study keywords."""
    import optuna  # deferred: Optuna, for the hpo commands only

    import rismvdr.hpo as hpo  # start-up time: only the hpo commands load optuna and the trainer

    if args.config is None or args.workdir is None:
        raise ValueError("--config and --workdir: required")
    check_output_dir(args.workdir, "--workdir")
    storage = args.storage or hpo.default_storage(args.workdir)
    cache = None if args.compile_cache in ("none", "") else (args.compile_cache or str(Path(args.workdir) / "jax_cache"))
    if args.workers == 1:
        enable_compile_cache(cache)  # trials run in this process
    verbosity = optuna.logging.INFO if args.verbose else optuna.logging.WARNING
    optuna.logging.set_verbosity(verbosity)
    settings = dict(e2e_scenes=args.e2e_scenes, e2e_seed=args.e2e_seed, xyz_norm_m=args.xyz_norm_m,
                    f1_weight=args.f1_weight, n_devices=args.devices, max_skipped_steps=args.max_skipped_steps)
    run = dict(storage=storage, workers=args.workers, heartbeat_interval=args.heartbeat_s,
               grace_period=args.grace_s, compile_cache=cache, verbosity=verbosity)
    return {"config": config_file(args.config), "space": space_file(args.space), "settings": settings, "run": run}


def cmd_hpo_summary(study, args) -> None:
    from optuna.trial import TrialState  # deferred: Optuna, for the hpo commands only

    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    try:
        best = study.best_trial
    except ValueError:
        print(f"[{study.study_name}] no complete trial ({counts})")
        return
    storage = f" --storage {args.storage}" if args.storage else ""
    print(f"[{study.study_name}] best value {best.value:.4g} (trial {best.number}, params {best.params}); "
          f"trials: {counts}\nexport: rismvdr hpo export --study {study.study_name} --workdir {args.workdir}"
          f"{storage} --out best.json")


def cmd_hpo_export(args) -> int:
    import rismvdr.hpo as hpo  # start-up time: only the hpo commands load optuna and the trainer

    if args.storage is None and args.workdir is None:
        raise ValueError("--workdir or --storage: required (where the study lives)")
    storage = args.storage or hpo.default_storage(args.workdir)
    rec = hpo.export_best(args.study, storage, args.out, trial=args.trial)
    print(f"wrote {args.out}: study {rec['study']}, trial {rec['trial']}, value {rec['value']:.4g}; "
          f"train it with: rismvdr train --from-hpo {args.out} --workdir RUN_DIR")
    return 0


def cmd_hpo_trials(args) -> int:
    import rismvdr.hpo as hpo  # start-up time: only the hpo commands load optuna and the trainer

    if args.storage is None and args.workdir is None:
        raise ValueError("--workdir or --storage: required (where the study lives)")
    storage = args.storage or hpo.default_storage(args.workdir)
    rows = hpo.trials_table(args.study, storage)
    hpo.write_trials_csv(rows, args.out)
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    print(f"wrote {args.out}: {len(rows)} trials of {args.study} ("
          + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ")")
    return 0


def cmd_export(args) -> int:
    from rismvdr.train.export import export_run  # deferred: the train layer, for this command only

    check_output_dir(args.out, "--out")
    out = export_run(args.workdir, args.out, step=_step_arg(args.step), backbone_only=args.backbone_only,
                     refiner_peak_threshold=args.refiner_peak_threshold, record_check=args.record_check)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {args.workdir} ({args.step}) to {out} ({size / 1e6:.2f} MB)")
    return 0


def cmd_demo(args) -> int:
    check_output_dir(args.out, "--out")
    run_demo(args.out, n_scenes=args.scenes, seed=args.seed, methods=args.methods, scenario=args.scenario)
    return 0


def cmd_bench(args) -> int:

    check_output_dir(args.out, "--out")
    t0 = time.perf_counter()
    result = run_accuracy(args.out, n_scenes=args.scenes, seed=args.seed, methods=args.methods,
                          sweeps=tuple(args.sweeps), snr_values_db=tuple(args.snr_db) if args.snr_db else None,
                          quick=args.quick, progress=not args.quiet, resume=args.resume)
    meta = result["meta"]
    print(f"bench accuracy: wall time {time.perf_counter() - t0:.1f} s"
          + f" ({meta['n_scenes']} scenes per point; methods {', '.join(meta['methods'])})")
    return 0


def cmd_bench_speed(args) -> int:
    check_output_dir(args.out, "--out")
    run_speed(args.out, quick=args.quick, parts=tuple(args.parts), methods=args.methods, seed=args.seed,
              precision=args.precision, max_chunk_mb=args.max_chunk_mb, timeout_s=args.timeout_s,
              deadline_s=args.deadline_s, method_scenes=args.method_scenes, method_batch=args.method_batch, progress=not args.quiet,
              command=" ".join(["rismvdr", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None)
    return 0


# ------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rismvdr",
        description="Near-field multi-source localization (azimuth, elevation, range; number of sources unknown) "
                    "through a reconfigurable intelligent surface or a planar array.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--no-compile-cache", action="store_true", help="do not keep compiled programs in the "
                   f"per-user cache (${COMPILE_CACHE_ENV}=0 does the same; ${CACHE_DIR_ENV} moves it; default "
                   "$XDG_CACHE_HOME/rismvdr/jax, else ~/.cache/rismvdr/jax)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate a test set of scenes into a .npz scene file (SPEC section 8)",
                       description="Simulate scenes of a named scenario (SPEC section 4) as a pure function of (scenario, seed).")
    s.add_argument("--scenario", default="seed", help="scenario name: 'seed' (RIS, M=16, L=16) or 'full' (full array, L=64) (default seed)")
    s.add_argument("--scenes", type=int, default=1000, help="number of scenes (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="PRNG seed; (scenario, seed, scenes) names a test set (default 0)")
    s.add_argument("--out", required=True, help="output scene file (.npz)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a scenario field, e.g. --set k_min=3 --set k_max=3 --set snr_db=10,10 "
                        "(angles in *_deg fields in degrees, ranges in metres); repeatable")
    s.add_argument("--batch-size", type=int, default=_default(simulate, "batch_size"),
                   help="scenes per jitted call (memory bound; results do not depend on it; default %(default)s)")
    s.set_defaults(func=cmd_simulate)

    loc = sub.add_parser("localize", help="localize the sources of every scene of a scene file",
                         description="Run a registered method through the shared 2.5D spectrum + K-free detector.")
    loc.add_argument("scenes", help="scene file (.npz)")
    loc.add_argument("--method", default="mvdr-als", choices=list(METHODS), help="localization method (see `rismvdr methods`)")
    loc.add_argument("--out", required=True, help="detections CSV: scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db")
    loc.add_argument("--maps-out", help="optional .npz with the 2.5D maps (dB) for PSSR and plots")
    loc.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    loc.add_argument("--distributed", action="store_true", help="several processes (hosts), each started with "
                     "the same command: join the run described by JAX_COORDINATOR_ADDRESS (host:port of process 0), "
                     "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or detected by JAX (Slurm, Open MPI); each process "
                     "localizes its share of the batches on its own devices, process 0 gathers them and writes "
                     "--out and --maps-out, the same files as one process (README: Several machines)")
    loc.add_argument("--distributed-timeout-s", type=int, default=100, help="--distributed: seconds to wait for "
                     "every process to join, and seconds without a heartbeat after which a process counts as lost "
                     "and the others stop with an error (default %(default)s)")
    _add_localizer_flags(loc)
    loc.set_defaults(func=cmd_localize)

    ev = sub.add_parser("evaluate", help="score detections against the truth in the scene file (SPEC section 7)")
    ev.add_argument("scenes", help="scene file (.npz) with truth")
    ev.add_argument("detections", help="detections CSV from `rismvdr localize`")
    ev.add_argument("--out", required=True, help="metrics JSON")
    ev.add_argument("--label", help="method label stored in the JSON (default: the CSV file name)")
    ev.add_argument("--maps", help="maps .npz from `localize --maps-out` to report PSSR (dB)")
    ev.add_argument("--no-crb", action="store_true", help="skip the Cramer-Rao bound (RMSE / sqrt(CRB))")
    gates = DEFAULT_GATES.as_report()
    ev.add_argument("--gate-phi-deg", type=float, default=gates["phi_deg"],
                    help="azimuth gate of a true positive, degrees (default %(default)g)")
    ev.add_argument("--gate-theta-deg", type=float, default=gates["theta_deg"],
                    help="elevation gate, degrees (default %(default)g)")
    ev.add_argument("--gate-r-m", type=float, default=gates["r_m"], help="range gate, metres (default %(default)g)")
    ev.add_argument("--snr-bin-db", type=float, default=_default(evaluate_detections, "snr_bin_db"),
                    help="width of the SNR bins of the breakdown, dB (default %(default)g)")
    ev.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("plot", help="plots: a scene's 2.5D map, or metrics against SNR")
    psub = pl.add_subparsers(dest="what", required=True, metavar="WHAT")
    ps = psub.add_parser("scene", help="2.5D spectrum of one scene with truth (circles) and detections (crosses)")
    ps.add_argument("scenes", help="scene file (.npz)")
    ps.add_argument("--index", type=int, default=0, help="scene index, 0-based (default 0)")
    ps.add_argument("--method", default="mvdr-als", choices=list(METHODS), help="method whose spectrum is drawn")
    ps.add_argument("--detections", help="optional detections CSV to mark instead of the method's own")
    ps.add_argument("--out", required=True, help="output PNG")
    _add_localizer_flags(ps)
    ps.set_defaults(func=cmd_plot)
    pm = psub.add_parser("snr", help="F1, median position error and azimuth RMSE with sqrt(CRB) against SNR, per method")
    pm.add_argument("metrics", nargs="+", help="metrics JSON files from `rismvdr evaluate`")
    pm.add_argument("--out", required=True, help="output PNG")
    pm.set_defaults(func=cmd_plot)

    d = sub.add_parser("demo", help="simulate a seed-regime test set, localize it with every method (learned ones with the shipped weights), evaluate, report")
    d.add_argument("--out", default="demo_report", help="report folder (default demo_report)")
    d.add_argument("--scenes", type=int, default=_default(run_demo, "n_scenes"),
                   help="test-set size (default %(default)s; the README table uses 1000)")
    d.add_argument("--seed", type=int, default=_default(run_demo, "seed"),
                   help="PRNG seed of the test set (default %(default)s)")
    d.add_argument("--scenario", default=_default(run_demo, "scenario"), help="scenario name (default %(default)s)")
    d.add_argument("--methods", nargs="+", help="methods to run (default: every method that applies; learned ones when the shipped model fits the scenario)")
    d.set_defaults(func=cmd_demo)

    be = sub.add_parser("bench", help="benchmarks: `bench accuracy` (F1, errors and RMSE / sqrt(CRB) against "
                        "SNR, K and L, per method) and `bench speed` (scenes/s and peak memory)")
    bsub = be.add_subparsers(dest="bench", required=True, metavar="WHAT")
    ba = bsub.add_parser("accuracy", help="accuracy sweeps on the seed scenario: base set, SNR (K = 1, 3), K, L",
                         description="Suites B1 (blind: each method finds K), B2 (oracle K: music-oracle-k, "
                                     "mvdr-oracle, somp-ml-oracle-k) and bound (ml-oracle: the ML fit started at "
                                     "the truth; every record carries f1_bound and f1_over_bound). Writes accuracy.json (flat records), accuracy.csv, "
                                     "accuracy.md (F1 tables) and PNG plots to --out.")
    ba.add_argument("--out", required=True, help="report folder")
    ba.add_argument("--quick", action="store_true", help=f"under 10 min on a 2-core CPU: {SCENES_PER_POINT_QUICK} "
                    "scenes per point "
                    "(unless --scenes), the methods mvdr-oracle, mvdr-als, somp-ml, learned, music-oracle-k and the bound "
                    "ml-oracle (unless --methods: then the bound runs only if named), SNR -10 0 10 20 dB (unless --snr-db), K 1 3 5, L 4 16 32, range bins 0.5-2, 4-6, 8-10 m")
    ba.add_argument("--scenes", type=int, help=f"scenes per point (default {SCENES_PER_POINT}; --quick "
                    f"{SCENES_PER_POINT_QUICK})")
    ba.add_argument("--seed", type=int, default=0, help="PRNG seed; each point's scenes use fold_in(seed, a stable hash of the point), "
                    "so a point's test set does not depend on the other points run (default 0)")
    ba.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                    help="methods to run (default: every registered method that applies)")
    ba.add_argument("--sweeps", nargs="+", choices=SWEEPS, default=list(DEFAULT_SWEEPS),
                    help=f"sweeps to run (default {' '.join(DEFAULT_SWEEPS)}): "
                    "base set, SNR at K = 1 and 3 (snr = snr_k1 + snr_k3), K at 10 dB, L at 10 dB K = 3, r: source "
                    "range bins 0.5-2 .. 8-10 m at 10 dB K = 3 (search box unchanged), and ula: the "
                    "near-field full-array case of the literature (scenario ula15: 15-element half-wavelength ULA, "
                    "L = 100, K = 2, r 3.5-15 m) against SNR, MUSIC and MVDR only, with RMSE / sqrt(CRB)")
    ba.add_argument("--snr-db", type=float, nargs="+",
                    help="SNR values of the snr and ula sweeps, dB (default -10 to 25 in 5 dB steps; "
                    "--quick: -10 0 10 20)")
    ba.add_argument("--resume", action="store_true", help="keep the records of an interrupted run in "
                    "--out/accuracy.json (same scenes per point and seed) and run only what it lacks")
    ba.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ba.set_defaults(func=cmd_bench)
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
    bs.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                    help="methods of the methods part (default every RIS-mode method)")
    bs.add_argument("--method-scenes", type=int, help="timed scenes per method (default CPU 128, quick 32; "
                    "GPU 1024, quick 256)")
    bs.add_argument("--method-batch", type=int, help="scenes per jitted call in the methods part (default "
                    "CPU 32, GPU 256)")
    bs.add_argument("--precision", choices=("highest", "fast"), default=_default(run_speed, "precision"),
                    help="matmul precision of the JAX spectrum paths (fast allows TF32 on GPUs; default %(default)s)")
    bs.add_argument("--max-chunk-mb", type=float, default=_default(run_speed, "max_chunk_mb"),
                    help="bound on the spectrum's per-chunk intermediate, MiB (default %(default)g)")
    bs.add_argument("--timeout-s", type=float, default=_default(run_speed, "timeout_s"), help="per-measurement "
                    "wall-clock limit, seconds; a worker past it is killed and recorded as a timeout (default "
                    "%(default)g)")
    bs.add_argument("--deadline-s", type=float, help="wall-clock budget of the whole run, seconds: measurements "
                    "not started in time are recorded as skipped and the report is still written (default none)")
    bs.add_argument("--seed", type=int, default=_default(run_speed, "seed"),
                    help="PRNG seed of the simulated scenes (default %(default)s)")
    bs.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    bs.set_defaults(func=cmd_bench_speed)

    def train_flags(t, *, stage):
        t.add_argument("--config", help=f"a packaged config ({', '.join(CONFIGS)}) or a config file defining "
                       "get_config() (e.g. configs/seed.py; a Python file: it is executed, pass only files you trust)"
                       + ("; default: the backbone run's config" if stage == "refiner" else ""))
        t.add_argument("--from-hpo", help="best.json from `rismvdr hpo export`: train with that configuration")
        t.add_argument("--workdir", required=True, help="run directory: checkpoints/, metrics.jsonl, config.json, "
                       "loss_curve.png")
        t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir "
                       "(exactly: data depends only on the seed and the step)")
        t.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field (dotted path, Python literal), e.g. --set steps=2000 "
                            "--set optim.lr=1e-3 --set model.widths=(16,32,64) --set scene.snr_db=(10,10); repeatable")
        t.add_argument("--devices", type=int, help="data-parallel devices (default: all visible)")
        t.add_argument("--distributed", action="store_true", help="several processes (hosts): join the run "
                       "described by JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and "
                       "JAX_PROCESS_ID, or detected by JAX (Slurm, Open MPI); the global batch is split over "
                       "every process's devices; process 0 writes the logs and metrics (README: Several machines)")
        t.add_argument("--distributed-timeout-s", type=int, default=100, help="--distributed: seconds to wait "
                       "for every process to join, and seconds without a heartbeat after which a process "
                       "counts as lost and the others stop with an error (default %(default)s)")
        t.add_argument("--stop-at", type=int, help="stop and checkpoint after this many steps (resume later)")
        t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="Stage 1: train the covariance backbone on simulated scenes",
                       description="Train the backbone with scenes simulated on the device; SIGTERM/Ctrl-C "
                                   "checkpoints and exits cleanly (continue with --resume).")
    train_flags(t, stage="backbone")
    t.set_defaults(func=cmd_train)
    tr = sub.add_parser("train-refiner", help="Stage 2: train the SpectrumRefiner on a frozen backbone's MVDR maps",
                        description="Frozen backbone -> low-rank MVDR spectra on the coarse refiner grid (and, "
                                    "with --set refiner.inputs=('blend','bartlett'), the measurements' Bartlett "
                                    "map of the back-projected snapshots as a second channel) -> SpectrumRefiner, "
                                    "heat-map (focal) loss only.")
    tr.add_argument("--backbone", required=True, help="backbone run directory (or exported model directory)")
    tr.add_argument("--backbone-step", default="best", help="'best', 'latest' or a step number (default best)")
    train_flags(tr, stage="refiner")
    tr.set_defaults(func=cmd_train_refiner)
    def hpo_flags(h):
        h.add_argument("--config", help=f"a packaged config ({', '.join(CONFIGS)}) or a config file defining "
                       "get_config(): the base (full-training) config the search starts from (a Python file: it "
                       "is executed, pass only files you trust)")
        h.add_argument("--workdir", help="HPO directory: trials/<study>/<number>/ (one training run per trial), "
                       "hpo.journal (the default storage), jax_cache/")
        h.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base-config field "
                       "(dotted path, Python literal), as for train; repeatable")
        h.add_argument("--space", default=DEFAULT_SPACE, help="a packaged search space or a file defining "
                       "get_space() (a Python file: it is executed, pass only files you trust; default "
                       "%(default)s: rismvdr/configs/hpo_space.py)")
        h.add_argument("--storage", help="a journal file path or an SQLAlchemy URL, e.g. "
                       "postgresql+psycopg2://user@host:5432/db for workers on many machines (default "
                       "<workdir>/hpo.journal; never sqlite: with --workers > 1)")
        h.add_argument("--study", help="study name (default: the config's name)")
        h.add_argument("--workers", type=int, default=1, help="worker processes on this host sharing the study "
                       "(default 1: in this process); the same command may also be started several times")
        h.add_argument("--e2e-scenes", type=int, default=E2E_SCENES, help="end-to-end objective: scenes of the "
                       "fixed validation subset (default %(default)s)")
        h.add_argument("--e2e-seed", type=int, default=E2E_SEED, help="end-to-end objective: seed of that subset "
                       f"(default %(default)s; {TEST_SEED} is the test set and is refused)")
        h.add_argument("--xyz-norm-m", type=float, default=XYZ_NORM_M, help="end-to-end objective: metres that "
                       "rmse_xyz_all is divided by (default %(default)g)")
        h.add_argument("--f1-weight", type=float, default=F1_WEIGHT, help="end-to-end objective: weight of 1 - F1 "
                       "(default %(default)g)")
        h.add_argument("--max-skipped-steps", type=int, default=0, help="a trial with more skipped "
                       "(non-finite) updates is pruned (default 0)")
        h.add_argument("--sampler-seed", type=int, help="TPE sampler seed (worker i uses seed + i; default random)")
        h.add_argument("--devices", type=int, help="data-parallel devices per trial (default: all visible)")
        h.add_argument("--heartbeat-s", type=int, default=60, help="seconds between heartbeats of a running "
                       "trial (default 60)")
        h.add_argument("--grace-s", type=int, default=300, help="a running trial without a heartbeat for this "
                       "many seconds (a crashed worker on another host) is failed; one whose worker process on "
                       "this host is gone is failed at once (default 300)")
        h.add_argument("--compile-cache", help="persistent XLA compilation cache directory shared by the "
                       "trials (default <workdir>/jax_cache; 'none' disables)")

    hp = sub.add_parser("hpo", help="hyperparameter search of the Stage-1 backbone (Optuna); `hpo export` "
                        "writes the best configuration",
                        description="Each trial samples the search space, trains --epochs validation periods "
                                    "(epochs x eval_every steps) with pruning and returns the surrogate "
                                    "validation score or the end-to-end objective "
                                    "(rmse_xyz_all / xyz_norm + f1_weight (1 - F1), production inference). "
                                    "A line per finished trial; optuna-dashboard <workdir>/hpo.journal "
                                    "shows the study.")
    hpo_flags(hp)
    hp.add_argument("--objective", choices=("surrogate", "e2e"), default="surrogate", help="surrogate: "
                    "val/objective when the config has val_peak_scenes > 0, else the validation losses weighted "
                    "by the config's final-phase weights; e2e: localize('learned') on the full grid with the "
                    "trial's best checkpoint (default surrogate)")
    hp.add_argument("--trials", type=int, help="finished (complete + pruned) trials the study ends with, "
                    "across all workers (rerunning tops it up)")
    hp.add_argument("--epochs", type=int, default=3, help="validation periods per trial (steps = epochs x "
                    "eval_every; default 3)")
    hp.add_argument("--pruner", choices=("median", "none"), default="median", help="median: from the 6th "
                    "trial on, a trial worse than the median of the others at the same epoch stops; none: no "
                    "pruning (default median)")
    hsub = hp.add_subparsers(dest="hpo_command", metavar="{export,trials}")
    hsub.required = False
    he = hsub.add_parser("export", help="write the best trial of a study as best.json (for train --from-hpo)")
    he.add_argument("--study", required=True, help="study name (hpo2: <name>-s2 holds the reranked trials)")
    he.add_argument("--workdir", help="HPO directory whose hpo.journal holds the study")
    he.add_argument("--storage", help="journal file or SQLAlchemy URL (default <workdir>/hpo.journal)")
    he.add_argument("--out", required=True, help="output JSON: config, params, value, study, trial, user_attrs")
    he.add_argument("--trial", type=int, help="export this COMPLETE trial (its number in the study) instead of "
                                              "the best one, e.g. one chosen by a larger evaluation")
    ht = hsub.add_parser("trials", help="write every trial of a study (state, value, value per validation period, "
                         "duration, parameters) as a CSV table")
    ht.add_argument("--study", required=True, help="study name (hpo2: <name>-s1 and <name>-s2)")
    ht.add_argument("--workdir", help="HPO directory whose hpo.journal holds the study")
    ht.add_argument("--storage", help="journal file or SQLAlchemy URL (default <workdir>/hpo.journal)")
    ht.add_argument("--out", required=True, help="output CSV: trial, state, value, value_per_period (JSON), "
                    "duration_s (seconds), start, complete (ISO times), status, param.<name> per parameter")
    hp.set_defaults(func=cmd_hpo, hpo_command=None)

    h2 = sub.add_parser("hpo2", help="two-stage search: many surrogate trials, then the top-k rerun end-to-end",
                        description="Stage 1: --stage1-trials surrogate trials (study <name>-s1). Stage 2: "
                                    "the --stage2-topk best stage-1 parameter sets rerun exactly with "
                                    "--stage2-epochs and the end-to-end objective (study <name>-s2), reranked.")
    hpo_flags(h2)
    h2.add_argument("--stage1-trials", type=int, required=True, help="finished stage-1 trials")
    h2.add_argument("--stage1-epochs", type=int, default=2, help="validation periods per stage-1 trial (default 2)")
    h2.add_argument("--stage2-topk", type=int, required=True, help="best stage-1 parameter sets rerun in stage 2")
    h2.add_argument("--stage2-epochs", type=int, default=6, help="validation periods per stage-2 trial (default 6)")
    h2.add_argument("--pruner", choices=("median", "none"), default="median", help="stage-1 pruner "
                    "(stage 2 never prunes; default median)")
    h2.set_defaults(func=cmd_hpo2)

    ex = sub.add_parser("export", help="export a run's EMA weights as model.npz + model.json (what the package ships)")
    ex.add_argument("workdir", help="run directory of train or train-refiner")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--step", default="best", help="'best', 'latest' or a step number (default best)")
    ex.add_argument("--backbone-only", action="store_true", help="leave the refiner out")
    ex.add_argument("--record-check", type=int, metavar="N", help="evaluate the learned methods on the first N "
                    "scenes (seed 0) of the model's scenario and store their F1 with the model (the test suite "
                    "re-checks the shipped model against it)")
    ex.add_argument("--refiner-peak-threshold", type=float, help="probability a refiner peak needs, stored with "
                    "the model (calibrate it on a validation set, never on the test set; default: the run's)")
    ex.set_defaults(func=cmd_export)

    m = sub.add_parser("methods", help="list the registered localization methods")
    m.set_defaults(func=cmd_methods)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.no_compile_cache:
        enable_default_compile_cache()
    try:
        _check_finite_flags(args)
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: no temporary file is left behind
            return args.func(args)
    except (ValueError, OSError, EOFError) as e:  # bad input or an unwritable output: one line, status 2
        print(f"rismvdr {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)
        print("terminated" if signum != 2 else "interrupted", file=sys.stderr)
        return 128 + signum


def _one_line(e: BaseException) -> str:
    """An expected error as one line; an OSError names its file ("x.csv: Permission denied")."""
    if isinstance(e, OSError) and e.strerror:
        files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return f"{files}: {e.strerror}" if files else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_finite_flags(args) -> None:
    """Every number flag is finite (`--mad-z nan`, `--threshold-db inf` are refused by name)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"--{name.replace('_', '-')}: must be a finite number, got {v}")


if __name__ == "__main__":
    sys.exit(main())
