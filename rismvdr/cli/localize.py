"""`rismvdr localize`: run a registered method over every scene of a scene file."""
from __future__ import annotations

import argparse

from rismvdr.cli.common import (
    DEFAULT_METHOD,
    METHOD_NAMES,
    RERUN,
    add_distributed_flags,
    add_localizer_flags,
    check_distributed_flags,
    check_localizer_flags,
    learned_model,
    localizer_settings,
    maybe_distributed,
    outputs,
    report_lost_process,
)

__all__ = ["add_parser", "check", "run"]


def add_parser(sub) -> None:
    loc = sub.add_parser("localize", help="localize the sources of every scene of a scene file",
                         description="Run a registered method through the shared 2.5D spectrum + K-free detector.")
    loc.add_argument("scenes", help="scene file (.npz)")
    loc.add_argument("--method", default=DEFAULT_METHOD, choices=METHOD_NAMES,
                     help="localization method (see `rismvdr methods`)")
    loc.add_argument("--out", required=True, help="detections CSV: scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db "
                     "(angles in degrees, positions in metres, score in dB)")
    loc.add_argument("--maps-out", help="optional .npz with the 2.5D maps (dB) for PSSR and plots")
    loc.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_distributed_flags(loc, what="each process localizes its share of the batches on its own devices, process 0 "
                          "gathers them and writes --out and --maps-out, the same files as one process")
    add_localizer_flags(loc)
    outputs(loc, files=("out", "maps_out"), inputs=("SCENES", "--checkpoint"))
    loc.set_defaults(handler=__name__)


def check(args: argparse.Namespace) -> None:
    check_localizer_flags(args)
    check_distributed_flags(args)


def run(args: argparse.Namespace) -> int:
    from rismvdr.io import load_scenes, scenes_from_file  # deferred: loads JAX
    from rismvdr.io import replaced_together, write_detections_csv, write_maps  # deferred: loads JAX
    from rismvdr.localize.registry import localize  # deferred: loads JAX
    from rismvdr.train.distributed import ProcessLostError, is_main, lost_process_guard  # deferred: loads JAX

    maybe_distributed(args)
    sf = load_scenes(args.scenes)
    settings = localizer_settings(args, sf)
    scenes = scenes_from_file(sf, model=settings.steering_model, truth_covariance=False)
    try:  # --distributed: each process runs its share of the batches, every process gets every result
        with lost_process_guard(lambda: "localize", advice=RERUN, keep=(ValueError,)):
            res = localize(args.method, scenes, sf.geometry(), settings, progress=not args.quiet,
                           model=learned_model(args), distributed=args.distributed)
    except ProcessLostError as e:
        report_lost_process(args, e)
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
