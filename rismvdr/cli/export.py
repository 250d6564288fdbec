"""`rismvdr export-model`: a training run's EMA weights as the files the package ships."""
from __future__ import annotations

import argparse

from rismvdr.cli.common import check_counts, check_step, outputs, step_arg

__all__ = ["add_parser", "check", "run"]


def add_parser(sub) -> None:
    ex = sub.add_parser("export-model", help="export a run's EMA weights as model.npz + model.json (what the "
                        "package ships)",
                        description="Write a training run's EMA weights (model.npz, float32) and its record "
                                    "(model.json: the backbone and refiner configs, the training record, "
                                    "optionally the F1 check) to a directory that --checkpoint and "
                                    "rismvdr.load_learned accept.")
    ex.add_argument("workdir", help="run directory of train or train-refiner")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--step", default="best", help="'best', 'latest' or a step number (default best)")
    ex.add_argument("--backbone-only", action="store_true", help="leave the refiner out")
    ex.add_argument("--record-check", type=int, metavar="N", help="evaluate the learned methods on the first N "
                    "scenes (seed 0) of the model's scenario and store their F1 with the model (the test suite "
                    "re-checks the shipped model against it)")
    ex.add_argument("--refiner-peak-threshold", type=float, help="probability a refiner peak needs, stored with "
                    "the model (0 to 1; calibrate it on a validation set, never on the test set; default: the run's)")
    outputs(ex, dirs=("out",), inputs=("WORKDIR",))
    ex.set_defaults(handler=__name__)


def check(args: argparse.Namespace) -> None:
    check_step("--step", args.step)
    check_counts(args, {"--record-check": (1, None)})
    t = args.refiner_peak_threshold
    if t is not None and not 0.0 < t < 1.0:
        raise ValueError(f"--refiner-peak-threshold: must lie in (0, 1) (a probability), got {t:g}")


def run(args: argparse.Namespace) -> int:
    from rismvdr.train.export import export_run  # deferred: the train layer, for this command only

    out = export_run(args.workdir, args.out, step=step_arg(args.step), backbone_only=args.backbone_only,
                     refiner_peak_threshold=args.refiner_peak_threshold, record_check=args.record_check)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {args.workdir} ({args.step}) to {out} ({size / 1e6:.2f} MB)")
    return 0
