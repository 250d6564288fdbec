"""`rismvdr train` (Stage 1, the covariance backbone) and `rismvdr train-refiner` (Stage 2)."""
from __future__ import annotations

import argparse
from pathlib import Path

from rismvdr.cli.common import (
    CONFIG_NAMES,
    add_distributed_flags,
    check_counts,
    check_distributed_flags,
    check_step,
    maybe_distributed,
    outputs,
    report_lost_process,
    step_arg,
)

__all__ = ["add_parser", "add_config_flags", "check", "train_config", "run"]


def add_config_flags(p: argparse.ArgumentParser, *, base: str, required: bool = False) -> None:
    """`--config` and `--set`: the training config a run (or a search) starts from; `base` says
    what the config is for in this command's help."""
    p.add_argument("--config", required=required, help=f"a packaged config ({', '.join(CONFIG_NAMES)}) or a "
                   "config file defining get_config() (e.g. configs/seed.py; a Python file: it is executed, pass "
                   f"only files you trust): {base}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field (dotted path; each value converted to the field's type, "
                        "rismvdr.overrides), e.g. --set steps=2000 --set optim.lr=1e-3 --set model.widths=16,32,64 "
                        "--set scene.snr_db=10,10 (scene.<field>: a field of the scenario, in its units: degrees, "
                        "metres, dB); repeatable")


def _train_flags(t: argparse.ArgumentParser, *, stage: str) -> None:
    add_config_flags(t, base="the run's config" + ("; default: the backbone run's config" if stage == "refiner"
                                                   else ""))
    t.add_argument("--from-hpo", help="best.json from `rismvdr hpo export`: train with that configuration")
    t.add_argument("--workdir", required=True, help="run directory: checkpoints/, metrics.jsonl, config.json, "
                   "loss_curve.png")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir "
                   "(exactly: data depends only on the seed and the step)")
    t.add_argument("--devices", type=int, help="data-parallel devices, a count (default: all visible)")
    add_distributed_flags(t, what="the global batch is split over every process's devices; process 0 writes the "
                          "logs and metrics")
    t.add_argument("--stop-at", type=int, help="stop and checkpoint after this many steps (resume later)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    outputs(t, dirs=("workdir",), inputs=("--config", "--from-hpo"))
    t.set_defaults(handler=__name__)


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="Stage 1: train the covariance backbone on simulated scenes",
                       description="Train the backbone with scenes simulated on the device; SIGTERM/Ctrl-C "
                                   "checkpoints and exits cleanly (continue with --resume).")
    _train_flags(t, stage="backbone")
    tr = sub.add_parser("train-refiner", help="Stage 2: train the SpectrumRefiner on a frozen backbone's MVDR maps",
                        description="Frozen backbone -> low-rank MVDR spectra on the coarse refiner grid (and, "
                                    "with --set refiner.inputs=blend,bartlett, the measurements' Bartlett "
                                    "map of the back-projected snapshots as a second channel) -> SpectrumRefiner, "
                                    "heat-map (focal) loss only.")
    tr.add_argument("--backbone", required=True, help="backbone run directory (or exported model directory)")
    tr.add_argument("--backbone-step", default="best", help="'best', 'latest' or a step number (default best)")
    _train_flags(tr, stage="refiner")


def check(args: argparse.Namespace) -> None:
    check_counts(args, {"--devices": (1, None), "--stop-at": (1, None)})
    check_distributed_flags(args)
    if args.command == "train-refiner":
        check_step("--backbone-step", args.backbone_step)


def train_config(args: argparse.Namespace):
    """The `TrainConfig` of `--from-hpo` or `--config`, with `--set` applied."""
    from rismvdr.configs import load_named_config  # deferred: loads Flax and JAX
    from rismvdr.io import read_json  # deferred: loads JAX
    from rismvdr.train.config import TrainConfig, apply_overrides  # deferred: loads Flax and JAX

    if args.from_hpo:
        best = read_json(args.from_hpo, "--from-hpo")
        if "config" not in best:
            raise ValueError(f"--from-hpo: {args.from_hpo}: key 'config': missing (write it with `rismvdr hpo export`)")
        cfg = TrainConfig.from_dict(best["config"])
    elif args.config:
        cfg = load_named_config(args.config)
    else:
        raise ValueError(f"--config: a config is needed: a packaged name ({', '.join(CONFIG_NAMES)}) or a config "
                         "file, or --from-hpo / --resume")
    return apply_overrides(cfg, args.set or [])


def _stored_train_config(workdir):
    """The run's config from its newest intact checkpoint, or None without one."""
    from rismvdr.train.checkpoint import Checkpointer  # deferred: Orbax, for the training commands only
    from rismvdr.train.config import TrainConfig  # deferred: loads Flax and JAX

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


def _backbone_config(args: argparse.Namespace):
    from rismvdr.train.config import apply_overrides  # deferred: loads Flax and JAX

    if args.resume and not (args.config or args.from_hpo):
        cfg = _stored_train_config(args.workdir)
        if cfg is None:
            raise ValueError(f"--resume: no checkpoint in {args.workdir}")
        cfg = apply_overrides(cfg, args.set or [])
    else:
        cfg = train_config(args)
    return cfg if cfg.stage == "backbone" else cfg.replace(stage="backbone")


def _refiner_config(args: argparse.Namespace, backbone):
    from rismvdr.train.config import REFINER_PHASES, TrainConfig, apply_overrides  # deferred: loads Flax and JAX

    if args.config or args.from_hpo:
        cfg = train_config(args)  # --set already applied
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
    return cfg


def run(args: argparse.Namespace) -> int:
    from rismvdr.localize.weights import load_learned  # deferred: loads JAX
    from rismvdr.train.distributed import ProcessLostError, is_main  # deferred: loads JAX
    from rismvdr.train.trainer import fit  # deferred: Orbax and the trainer, for the training commands only

    maybe_distributed(args)
    kw = {}
    if args.command == "train-refiner":
        kw["backbone"] = load_learned(args.backbone, step=step_arg(args.backbone_step))
        cfg = _refiner_config(args, kw["backbone"])
    else:
        cfg = _backbone_config(args)
    try:
        out = fit(cfg, args.workdir, resume=args.resume, n_devices=args.devices, progress=not args.quiet,
                  stop_at=args.stop_at, **kw)
    except ProcessLostError as e:
        report_lost_process(args, e)
    if is_main():
        val = out.get("validation") or {}
        keys = [k for k in ("val/peak_f1", "val/peak_precision", "val/peak_recall", "val/objective") if k in val]
        summary = ", ".join(f"{k[4:]} {val[k]:.3f}" for k in keys)
        print(f"{out['status']}: {out['steps']} steps ({out['skipped']} skipped) in {out['seconds']:.0f} s"
              + (f"; validation: {summary}" if summary else "") + f" -> {out['workdir']}")
    return 0
