"""`rismvdr plot scene` (one scene's 2.5D map) and `rismvdr plot snr` (metrics against SNR)."""
from __future__ import annotations

import argparse
from pathlib import Path

from rismvdr.cli.common import (
    DEFAULT_METHOD,
    METHOD_NAMES,
    add_localizer_flags,
    check_counts,
    check_localizer_flags,
    learned_model,
    localizer_settings,
    outputs,
)

__all__ = ["add_parser", "check", "run"]


def add_parser(sub) -> None:
    pl = sub.add_parser("plot", help="plots: a scene's 2.5D map, or metrics against SNR")
    psub = pl.add_subparsers(dest="what", required=True, metavar="WHAT")
    ps = psub.add_parser("scene", help="2.5D spectrum of one scene with truth (circles) and detections (crosses)",
                         description="The method's 2.5D spectrum of one scene (dB relative to its maximum, "
                                     "over azimuth and elevation in degrees, maximised over the range planes) "
                                     "with the best range plane beside it; truth as circles, detections as "
                                     "crosses.")
    ps.add_argument("scenes", help="scene file (.npz)")
    ps.add_argument("--index", type=int, default=0, help="scene index, 0-based (default 0)")
    ps.add_argument("--method", default=DEFAULT_METHOD, choices=METHOD_NAMES, help="method whose spectrum is drawn")
    ps.add_argument("--detections", help="optional detections CSV to mark instead of the method's own")
    ps.add_argument("--out", required=True, help="output PNG")
    add_localizer_flags(ps)
    outputs(ps, files=("out",), inputs=("SCENES", "--detections", "--checkpoint"))
    ps.set_defaults(handler=__name__)
    pm = psub.add_parser("snr", help="F1, median position error and azimuth RMSE with sqrt(CRB) against SNR, "
                         "per method", description="One curve per metrics JSON against the SNR bins (dB): F1, "
                         "median position error (metres), azimuth RMSE and sqrt(CRB) (degrees).")
    pm.add_argument("metrics", nargs="+", help="metrics JSON files from `rismvdr evaluate`")
    pm.add_argument("--out", required=True, help="output PNG")
    outputs(pm, files=("out",), inputs=("METRICS",))
    pm.set_defaults(handler=__name__)


def check(args: argparse.Namespace) -> None:
    if args.what == "scene":
        check_counts(args, {"--index": (0, None)})
        check_localizer_flags(args)


#: The per-SNR-bin numbers `plot snr` draws (`rismvdr.eval.plots.plot_snr_curves`).
SNR_CURVE_KEYS = ("f1", "median_pos_err_m", "rmse_phi_deg")


def snr_metrics(metrics: dict, path: str) -> dict[str, dict]:
    """The method -> metrics that `plot snr` draws from one JSON file: the metrics of `rismvdr
    evaluate` (one method, named by its `method` key, else the file name) or a report's
    `{"methods": {method: metrics}}` (`rismvdr demo`'s metrics.json), each with the per-SNR
    breakdown checked.

    Raises:
      ValueError: one line naming the file and what is missing: no `per_snr_bin` (not a metrics
        file, or scenes without SNR), a bin key that is not `[lo,hi)` in dB, a bin without one of
        `SNR_CURVE_KEYS` or with a value that is not a number or null.
    """
    if isinstance(metrics.get("methods"), dict) and "per_snr_bin" not in metrics:
        found = {str(k): v for k, v in metrics["methods"].items()}
        keys = {name: f"key 'methods.{name}.per_snr_bin'" for name in found}
    else:
        name = metrics.get("method")
        found = {name if isinstance(name, str) and name else Path(path).stem: metrics}
        keys = dict.fromkeys(found, "key 'per_snr_bin'")
    if not found:
        raise ValueError(f"METRICS: {path}: key 'methods': empty, no method's metrics to draw")
    for name, m in found.items():
        key = keys[name]
        per = m.get("per_snr_bin") if isinstance(m, dict) else None
        if per is None:
            raise ValueError(f"METRICS: {path}: {key}: missing, no per-SNR breakdown to draw (the metrics JSON "
                             "of `rismvdr evaluate` has one)")
        if not isinstance(per, dict):
            raise ValueError(f"METRICS: {path}: {key}: expected a JSON object of SNR bins, got "
                             f"{type(per).__name__}")
        if not per:
            raise ValueError(f"METRICS: {path}: {key}: empty, no SNR bins to draw (the scene file had no "
                             "'snr_db')")
        for b, row in per.items():
            try:
                lo, hi = (float(v) for v in b.strip().removeprefix("[").removesuffix(")").split(","))
            except ValueError:
                lo = hi = float("nan")
            if not lo < hi:
                raise ValueError(f"METRICS: {path}: {key}: bin {b!r} is not '[lo,hi)' in dB")
            for k in SNR_CURVE_KEYS:
                if not isinstance(row, dict) or k not in row:
                    raise ValueError(f"METRICS: {path}: {key}: bin {b}: {k!r} missing")
                v = row[k]
                if not (v is None or isinstance(v, (int, float)) and not isinstance(v, bool)):
                    raise ValueError(f"METRICS: {path}: {key}: bin {b}: {k!r} not a number or null ({v!r})")
    return found


def run(args: argparse.Namespace) -> int:
    from rismvdr.eval import plots  # deferred: loads Matplotlib
    from rismvdr.io import load_scenes, read_detections_csv, read_json, scenes_from_file  # deferred: loads JAX
    from rismvdr.localize.registry import localize  # deferred: loads JAX

    if args.what == "scene":
        sf = load_scenes(args.scenes)
        if not 0 <= args.index < sf.n_scenes:
            raise ValueError(f"--index: must lie in [0, {sf.n_scenes - 1}], got {args.index}")
        settings = localizer_settings(args, sf)
        scenes = scenes_from_file(sf, model=settings.steering_model, truth_covariance=False)[args.index: args.index + 1]
        res = localize(args.method, scenes, sf.geometry(), settings, progress=False, model=learned_model(args))
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
            for name, m in snr_metrics(read_json(path, "METRICS"), path).items():
                ms[name if name not in ms else f"{name} ({path})"] = m
        plots.plot_snr_curves(args.out, ms, title="per-SNR-bin metrics")
    print(f"wrote {args.out}")
    return 0
