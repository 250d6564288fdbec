"""`rismvdr hpo run | two-stage | export | trials`: hyperparameter search of the Stage-1 backbone."""
from __future__ import annotations

import argparse
from pathlib import Path

from rismvdr.cli.common import DEFAULT_SPACE, SEED_MAX, check_counts, check_positive, outputs
from rismvdr.cli.train import add_config_flags
from rismvdr.eval.objective import E2E_SCENES, E2E_SEED, F1_WEIGHT, TEST_SEED, XYZ_NORM_M

__all__ = ["SUBCOMMANDS", "add_parser", "check", "run"]

#: The subcommands of `rismvdr hpo`.
SUBCOMMANDS = ("run", "two-stage", "export", "trials")


def add_parser(sub) -> None:
    hp = sub.add_parser("hpo", help="hyperparameter search of the Stage-1 backbone (Optuna): `hpo run`, "
                        "`hpo two-stage`, `hpo export`, `hpo trials`",
                        description="Search the Stage-1 backbone's hyperparameters with Optuna (`run`: one "
                                    "study; `two-stage`: surrogate trials, then the best rerun end-to-end), then "
                                    "write the best configuration (`export`) or every trial (`trials`). "
                                    "optuna-dashboard <workdir>/hpo.journal shows a study.")
    hsub = hp.add_subparsers(dest="hpo_command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    _add_run(hsub)
    _add_two_stage(hsub)
    _add_export(hsub)
    _add_trials(hsub)


def _search_flags(h: argparse.ArgumentParser) -> None:
    """The flags `hpo run` and `hpo two-stage` share."""
    add_config_flags(h, base="the base (full-training) config the search starts from", required=True)
    h.add_argument("--workdir", required=True, help="HPO directory: trials/<study>/<number>/ (one training run per "
                   "trial), hpo.journal (the default storage), jax_cache/")
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
                   "(dimensionless; default %(default)g)")
    h.add_argument("--max-skipped-steps", type=int, default=0, help="a trial with more skipped "
                   "(non-finite) updates is pruned (count, default 0)")
    h.add_argument("--sampler-seed", type=int, help="TPE sampler seed (worker i uses seed + i; default random)")
    h.add_argument("--devices", type=int, help="data-parallel devices per trial, a count (default: all visible)")
    h.add_argument("--heartbeat-s", type=int, default=60, help="seconds between heartbeats of a running "
                   "trial (default 60)")
    h.add_argument("--grace-s", type=int, default=300, help="a running trial without a heartbeat for this "
                   "many seconds (a crashed worker on another host) is failed; one whose worker process on "
                   "this host is gone is failed at once (default 300)")
    h.add_argument("--compile-cache", help="persistent XLA compilation cache directory shared by the "
                   "trials (default <workdir>/jax_cache; 'none' disables)")
    outputs(h, dirs=("workdir",))
    h.set_defaults(handler=__name__)


def _add_run(hsub) -> None:
    hr = hsub.add_parser("run", help="one study: surrogate or end-to-end objective, a line per finished trial",
                         description="Each trial samples the search space, trains --epochs validation periods "
                                     "(epochs x eval_every steps) with pruning and returns the surrogate "
                                     "validation score or the end-to-end objective "
                                     "(rmse_xyz_all / xyz_norm + f1_weight (1 - F1), production inference). "
                                     "A line per finished trial; optuna-dashboard <workdir>/hpo.journal "
                                     "shows the study.")
    _search_flags(hr)
    hr.add_argument("--objective", choices=("surrogate", "e2e"), default="surrogate", help="surrogate: "
                    "val/objective when the config has val_peak_scenes > 0, else the validation losses weighted "
                    "by the config's final-phase weights; e2e: localize('learned') on the full grid with the "
                    "trial's best checkpoint (default surrogate)")
    hr.add_argument("--trials", type=int, required=True, help="finished (complete + pruned) trials the study ends "
                    "with, across all workers (rerunning tops it up)")
    hr.add_argument("--epochs", type=int, default=3, help="validation periods per trial (steps = epochs x "
                    "eval_every; default 3)")
    hr.add_argument("--pruner", choices=("median", "none"), default="median", help="median: from the 6th "
                    "trial on, a trial worse than the median of the others at the same epoch stops; none: no "
                    "pruning (default median)")


def _add_two_stage(hsub) -> None:
    h2 = hsub.add_parser("two-stage", help="two-stage search: many surrogate trials, then the top-k rerun "
                         "end-to-end",
                         description="Stage 1: --stage1-trials surrogate trials (study <name>-s1). Stage 2: "
                                     "the --stage2-topk best stage-1 parameter sets rerun exactly with "
                                     "--stage2-epochs and the end-to-end objective (study <name>-s2), reranked.")
    _search_flags(h2)
    h2.add_argument("--stage1-trials", type=int, required=True, help="finished stage-1 trials (count)")
    h2.add_argument("--stage1-epochs", type=int, default=2, help="validation periods per stage-1 trial (default 2)")
    h2.add_argument("--stage2-topk", type=int, required=True, help="best stage-1 parameter sets rerun in stage 2 "
                    "(count)")
    h2.add_argument("--stage2-epochs", type=int, default=6, help="validation periods per stage-2 trial (default 6)")
    h2.add_argument("--pruner", choices=("median", "none"), default="median", help="stage-1 pruner "
                    "(stage 2 never prunes; default median)")


def _study_flags(h: argparse.ArgumentParser, *, study: str) -> None:
    h.add_argument("--study", required=True, help=f"study name ({study})")
    h.add_argument("--workdir", help="HPO directory whose hpo.journal holds the study")
    h.add_argument("--storage", help="journal file or SQLAlchemy URL (default <workdir>/hpo.journal)")
    h.set_defaults(handler=__name__)


def _add_export(hsub) -> None:
    he = hsub.add_parser("export", help="write the best trial of a study as best.json (for train --from-hpo)",
                         description="The best COMPLETE trial of a study (or --trial N) as JSON: its full "
                                     "training config, parameters, value and user attributes.")
    _study_flags(he, study="two-stage: <name>-s2 holds the reranked trials")
    he.add_argument("--out", required=True, help="output JSON: config, params, value, study, trial, user_attrs")
    he.add_argument("--trial", type=int, help="export this COMPLETE trial (its number in the study) instead of "
                                              "the best one, e.g. one chosen by a larger evaluation")
    outputs(he, files=("out",), inputs=("--storage",))


def _add_trials(hsub) -> None:
    ht = hsub.add_parser("trials", help="write every trial of a study (state, value, value per validation period, "
                         "duration, parameters) as a CSV table",
                         description="One CSV row per trial of a study, for analysis outside Optuna.")
    _study_flags(ht, study="two-stage: <name>-s1 and <name>-s2")
    ht.add_argument("--out", required=True, help="output CSV: trial, state, value, value_per_period (JSON), "
                    "duration_s (seconds), start, complete (ISO times), status, param.<name> per parameter")
    outputs(ht, files=("out",), inputs=("--storage",))


def check(args: argparse.Namespace) -> None:
    if args.hpo_command in ("export", "trials"):
        check_counts(args, {"--trial": (0, None)})
        return
    check_counts(args, {"--workers": (1, None), "--e2e-scenes": (1, None), "--e2e-seed": (0, SEED_MAX),
                        "--max-skipped-steps": (0, None), "--sampler-seed": (0, SEED_MAX), "--devices": (1, None),
                        "--heartbeat-s": (1, None), "--grace-s": (1, None), "--trials": (1, None),
                        "--epochs": (1, None), "--stage1-trials": (1, None), "--stage1-epochs": (1, None),
                        "--stage2-topk": (1, None), "--stage2-epochs": (1, None)})
    check_positive(args, {"--xyz-norm-m": "metres"})
    if args.f1_weight < 0:
        raise ValueError(f"--f1-weight: must be >= 0, got {args.f1_weight:g}")


def run(args: argparse.Namespace) -> int:
    return {"run": _run, "two-stage": _two_stage, "export": _export, "trials": _trials}[args.hpo_command](args)


def _run(args: argparse.Namespace) -> int:
    """`rismvdr hpo run`: one study (surrogate or end-to-end objective)."""
    import rismvdr.hpo as hpo  # deferred: Optuna and the trainer, for the hpo commands only

    kw = _common(args)
    settings = hpo.make_settings(kw["config"], overrides=args.set or [], space=kw["space"], workdir=args.workdir,
                                 epochs=args.epochs, objective=args.objective, **kw["settings"])
    _open(args, kw)
    study_name = args.study or settings.base.name
    study = hpo.run_study(settings, study_name=study_name, n_trials=args.trials, pruner=args.pruner,
                          sampler_seed=args.sampler_seed, **kw["run"])
    _summary(study, args)
    return 0


def _two_stage(args: argparse.Namespace) -> int:
    """`rismvdr hpo two-stage`: surrogate stage 1, end-to-end rerun of its top-k, reranked table."""
    import rismvdr.hpo as hpo  # deferred: Optuna and the trainer, for the hpo commands only

    kw = _common(args)
    s1 = hpo.make_settings(kw["config"], overrides=args.set or [], space=kw["space"], workdir=args.workdir,
                           epochs=args.stage1_epochs, objective="surrogate", **kw["settings"])
    s2 = hpo.make_settings(s1.base, space=kw["space"], workdir=args.workdir, epochs=args.stage2_epochs,
                           objective="e2e", **kw["settings"])
    _open(args, kw)
    name = args.study or s1.base.name
    _, study2 = hpo.run_hpo2(s1, s2, study_name=name, stage1_trials=args.stage1_trials, topk=args.stage2_topk,
                             pruner=args.pruner, sampler_seed=args.sampler_seed, **kw["run"])
    print(f"stage 2 ({name}-s2): the top {args.stage2_topk} stage-1 parameter sets, end-to-end, reranked")
    print(hpo.format_rerank(hpo.rerank(study2)))
    _summary(study2, args)
    return 0


def _common(args: argparse.Namespace) -> dict:
    """What `run` and `two-stage` share: the config and space files, ObjectiveSettings fields and
    run_study keywords (nothing is opened or written: `_open`)."""
    import optuna  # deferred: Optuna, for the hpo commands only

    import rismvdr.hpo as hpo  # deferred: Optuna and the trainer, for the hpo commands only
    from rismvdr.configs import config_file, space_file  # deferred: loads Flax and JAX

    storage = args.storage or hpo.default_storage(args.workdir)
    cache = args.compile_cache or str(Path(args.workdir) / "jax_cache")
    cache = None if args.compile_cache in ("none", "") else cache
    verbosity = optuna.logging.INFO if args.verbose else optuna.logging.WARNING
    optuna.logging.set_verbosity(verbosity)
    settings = dict(e2e_scenes=args.e2e_scenes, e2e_seed=args.e2e_seed, xyz_norm_m=args.xyz_norm_m,
                    f1_weight=args.f1_weight, n_devices=args.devices, max_skipped_steps=args.max_skipped_steps)
    run_kw = dict(storage=storage, workers=args.workers, heartbeat_interval=args.heartbeat_s,
                  grace_period=args.grace_s, compile_cache=cache, verbosity=verbosity)
    return {"config": config_file(args.config), "space": space_file(args.space), "settings": settings, "run": run_kw}


def _open(args: argparse.Namespace, kw: dict) -> None:
    """After every check that reads only files: the storage can be opened, then the compilation
    cache directory (the first thing written) is set up for trials run in this process."""
    from rismvdr.hpo.storage import check_storage  # deferred: Optuna, for the hpo commands only
    from rismvdr.io import enable_compile_cache  # deferred: loads JAX

    check_storage(kw["run"]["storage"], flag="--storage" if args.storage else "--workdir")
    if args.workers == 1:
        enable_compile_cache(kw["run"]["compile_cache"])  # trials run in this process


def _summary(study, args: argparse.Namespace) -> None:
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


def _storage(args: argparse.Namespace) -> str:
    import rismvdr.hpo as hpo  # deferred: Optuna and the trainer, for the hpo commands only

    from rismvdr.hpo.storage import check_storage  # deferred: Optuna, for the hpo commands only

    if args.storage is None and args.workdir is None:
        raise ValueError("--workdir or --storage: required (where the study lives)")
    storage = args.storage or hpo.default_storage(args.workdir)
    check_storage(storage, flag="--storage" if args.storage else "--workdir")
    return storage


def _export(args: argparse.Namespace) -> int:
    import rismvdr.hpo as hpo  # deferred: Optuna and the trainer, for the hpo commands only

    rec = hpo.export_best(args.study, _storage(args), args.out, trial=args.trial)
    print(f"wrote {args.out}: study {rec['study']}, trial {rec['trial']}, value {rec['value']:.4g}; "
          f"train it with: rismvdr train --from-hpo {args.out} --workdir RUN_DIR")
    return 0


def _trials(args: argparse.Namespace) -> int:
    import rismvdr.hpo as hpo  # deferred: Optuna and the trainer, for the hpo commands only

    rows = hpo.trials_table(args.study, _storage(args))
    hpo.write_trials_csv(rows, args.out)
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    print(f"wrote {args.out}: {len(rows)} trials of {args.study} ("
          + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ")")
    return 0
