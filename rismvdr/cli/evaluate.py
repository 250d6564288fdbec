"""`rismvdr evaluate`: score a detections CSV against the truth of its scene file."""
from __future__ import annotations

import argparse

from rismvdr.cli.common import outputs

__all__ = ["add_parser", "check", "run"]

#: `rismvdr.physics.scenarios.DEFAULT_GATES` in degrees and metres (tests/test_cli.py checks it).
GATES = {"phi_deg": 5.0, "theta_deg": 5.0, "r_m": 1.0}
#: `rismvdr.eval.evaluation.evaluate_files`' SNR bin width, dB (tests/test_cli.py checks it).
SNR_BIN_DB = 5.0


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="score detections against the truth in the scene file (Conventions page, section 7)",
                        description="The metrics of the Conventions page, section 7 (rismvdr.eval.evaluate_files): precision, "
                                    "recall, F1, false alarms per scene, position and angle errors, RMSE / "
                                    "sqrt(CRB), per-SNR breakdown; a table on stdout and a JSON file.")
    ev.add_argument("scenes", help="scene file (.npz) with truth")
    ev.add_argument("detections", help="detections CSV from `rismvdr localize`")
    ev.add_argument("--out", required=True, help="metrics JSON")
    ev.add_argument("--label", help="method label stored in the JSON (default: the CSV file name)")
    ev.add_argument("--maps", help="maps .npz from `localize --maps-out` to report PSSR (dB)")
    ev.add_argument("--no-crb", action="store_true", help="skip the Cramer-Rao bound (RMSE / sqrt(CRB))")
    ev.add_argument("--gate-phi-deg", type=float, default=GATES["phi_deg"],
                    help="azimuth gate of a true positive, degrees (default %(default)g)")
    ev.add_argument("--gate-theta-deg", type=float, default=GATES["theta_deg"],
                    help="elevation gate, degrees (default %(default)g)")
    ev.add_argument("--gate-r-m", type=float, default=GATES["r_m"], help="range gate, metres (default %(default)g)")
    ev.add_argument("--snr-bin-db", type=float, default=SNR_BIN_DB,
                    help="width of the SNR bins of the breakdown, dB (default %(default)g)")
    outputs(ev, files=("out",), inputs=("SCENES", "DETECTIONS", "--maps"))
    ev.set_defaults(handler=__name__)


def check(args: argparse.Namespace) -> None:
    for flag, value, unit in (("--gate-phi-deg", args.gate_phi_deg, "degrees"),
                              ("--gate-theta-deg", args.gate_theta_deg, "degrees"),
                              ("--gate-r-m", args.gate_r_m, "metres"), ("--snr-bin-db", args.snr_bin_db, "dB")):
        if not value > 0:
            raise ValueError(f"{flag}: must be > 0 {unit}, got {value:g}")


def run(args: argparse.Namespace) -> int:
    from rismvdr.eval.evaluation import evaluate_files  # deferred: loads JAX
    from rismvdr.eval.metrics import format_table  # deferred: loads SciPy
    from rismvdr.io import to_jsonable, write_json  # deferred: loads JAX
    from rismvdr.physics.scenarios import Gates  # deferred: loads JAX

    gates = Gates.from_deg(args.gate_phi_deg, args.gate_theta_deg, args.gate_r_m)
    out = evaluate_files(args.scenes, args.detections, maps_path=args.maps, crb=not args.no_crb, gates=gates,
                         snr_bin_db=args.snr_bin_db, label=args.label)
    write_json(args.out, to_jsonable(out))
    ev = {k: v for k, v in out.items() if k not in ("method", "test_set")}
    print(format_table({out["method"]: ev}))
    print(f"wrote {args.out}")
    return 0
