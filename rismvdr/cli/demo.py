"""`rismvdr demo`: simulate, localize with every method, evaluate and report, in one folder."""
from __future__ import annotations

import argparse

from rismvdr.cli.common import METHOD_NAMES, SEED_MAX, check_counts, outputs

__all__ = ["add_parser", "check", "run"]

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


def check(args: argparse.Namespace) -> None:
    check_counts(args, {"--scenes": (1, None), "--seed": (0, SEED_MAX)})


def _check_scenario_and_methods(args: argparse.Namespace) -> None:
    """`--scenario` names a scenario and each of `--methods` runs on it (learned ones need the
    shipped model to fit it), checked before anything is simulated or written.

    Raises:
      ValueError: one line naming `--scenario` or `--methods` and the method.
    """
    from rismvdr.bench.methods import applies, learned_fits, shipped_model  # deferred: loads JAX
    from rismvdr.localize.registry import METHODS  # deferred: loads JAX
    from rismvdr.physics.scenarios import get_scenario, scenario_geometry  # deferred: loads JAX

    try:
        cfg = get_scenario(args.scenario)
    except ValueError as e:
        raise ValueError(f"--scenario: {str(e).removeprefix('scenario: ')}") from None
    mode = "full-array" if cfg.mode == "full" else "RIS"
    model = None
    for name in args.methods or ():
        if not applies(name, cfg):
            raise ValueError(f"--methods: {name!r} does not apply to the {cfg.name!r} scenario ({mode} mode); "
                             "see `rismvdr methods`")
        if METHODS[name].learned:
            model = model or shipped_model()
            if not learned_fits(model, cfg, scenario_geometry(cfg)):
                raise ValueError(f"--methods: {name!r} needs the shipped learned model, which "
                                 + ("is not installed" if model is None else
                                    f"was not trained for the {cfg.name!r} scenario ({mode} mode, its N, L, M)"))


def run(args: argparse.Namespace) -> int:
    from rismvdr.bench.demo import run_demo  # deferred: loads JAX

    _check_scenario_and_methods(args)
    run_demo(args.out, n_scenes=args.scenes, seed=args.seed, methods=args.methods, scenario=args.scenario)
    return 0
