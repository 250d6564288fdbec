"""`rismvdr demo`: simulate, localize with every method, evaluate and report, in one folder."""
from __future__ import annotations

import argparse

from rismvdr.cli.common import METHOD_NAMES, outputs

__all__ = ["add_parser", "run"]

#: `rismvdr.bench.demo.run_demo`'s defaults (tests/test_cli.py checks them).
SCENES = 200
SEED = 0
SCENARIO = "seed"


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="simulate a seed-regime test set, localize it with every method (learned ones "
                       "with the shipped weights), evaluate, report",
                       description="Writes report.md, metrics.json, metrics_<method>.json, "
                                   "detections_<method>.csv, scenes.npz and PNG plots to --out.")
    d.add_argument("--out", default="demo_report", help="report folder (default demo_report)")
    d.add_argument("--scenes", type=int, default=SCENES,
                   help="test-set size, scenes (default %(default)s; the README table uses 1000)")
    d.add_argument("--seed", type=int, default=SEED, help="PRNG seed of the test set (default %(default)s)")
    d.add_argument("--scenario", default=SCENARIO, help="scenario name (default %(default)s)")
    d.add_argument("--methods", nargs="+", choices=METHOD_NAMES, metavar="METHOD",
                   help="methods to run (default: every method that applies; learned ones when the shipped model "
                        "fits the scenario)")
    outputs(d, dirs=("out",))
    d.set_defaults(handler=__name__)


def run(args: argparse.Namespace) -> int:
    from rismvdr.bench.demo import run_demo  # deferred: loads JAX

    run_demo(args.out, n_scenes=args.scenes, seed=args.seed, methods=args.methods, scenario=args.scenario)
    return 0
