"""`rismvdr plot scene` (one scene's 2.5D map) and `rismvdr plot snr` (metrics against SNR)."""
from __future__ import annotations

import argparse
from pathlib import Path

from rismvdr.cli.common import (
    DEFAULT_METHOD,
    METHOD_NAMES,
    add_localizer_flags,
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
        check_localizer_flags(args)


def run(args: argparse.Namespace) -> int:
    from rismvdr.eval import plots  # deferred: loads Matplotlib
    from rismvdr.io import load_scenes, read_detections_csv, read_json, scenes_from_file  # deferred: loads JAX
    from rismvdr.localize.registry import localize  # deferred: loads JAX

    if args.what == "scene":
        sf = load_scenes(args.scenes)
        if not 0 <= args.index < sf.n_scenes:
            raise ValueError(f"--index: must lie in [0, {sf.n_scenes - 1}], got {args.index}")
        settings = localizer_settings(args, sf)
        scenes = scenes_from_file(sf, model=settings.steering_model)[args.index: args.index + 1]
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
            m = read_json(path, "metrics")
            ms[m.get("method", Path(path).stem)] = m
        plots.plot_snr_curves(args.out, ms, title="per-SNR-bin metrics")
    print(f"wrote {args.out}")
    return 0
