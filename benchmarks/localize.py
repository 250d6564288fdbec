"""Scenes per second of the localization methods (whole pipeline: estimator, spectrum or
dictionary, detector / ML), excluding compilation.

Each method runs once on one batch to compile, then the timed run localizes `--scenes` scenes
of the seed scenario (seed 0) in batches of `--batch` with the method's default grid (spectrum
methods: 1 deg x 1 deg x 16 planes over the seed box; compressive methods: SOMP dictionary
2 deg x 2 deg x 8 planes). Results go to stdout and `benchmarks/results/localize_<host>.json`.

    python benchmarks/localize.py --methods somp-ml mvdr-als --scenes 128 --batch 32
"""
from __future__ import annotations

import argparse
import time

import jax

from _results import machine_info, write_results
from rismvdr.methods import METHODS, localize, method_names, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=None, help="methods (default: all RIS-mode methods)")
    p.add_argument("--scenes", type=int, default=128, help="timed scenes per method")
    p.add_argument("--batch", type=int, default=32, help="scenes per jitted call")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    cfg = get_scenario("seed")
    geometry = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(0), args.scenes)
    settings = settings_for_scenario(cfg, batch_size=args.batch)
    rows = []
    for name in args.methods or method_names(full_array=False):
        if name not in METHODS:
            raise SystemExit(f"unknown method {name}")
        localize(name, scenes[: min(args.batch, args.scenes)], geometry, settings, progress=False)  # compile
        t0 = time.perf_counter()
        localize(name, scenes, geometry, settings, progress=False, keep_maps=False)
        dt = time.perf_counter() - t0
        rows.append(dict(method=name, scenes=args.scenes, batch=args.batch, seconds=dt,
                         scenes_per_second=args.scenes / dt))
        print(f"{name:15s} batch {args.batch:4d}  {args.scenes / dt:8.1f} scenes/s  ({dt:.1f} s for {args.scenes})", flush=True)
    info = machine_info(grid_spectrum="1 deg x 1 deg x 16 planes (121 x 61 x 16)",
                        grid_somp="2 deg x 2 deg x 8 planes (61 x 31 x 8)")
    write_results(args.out, f"localize_{jax.default_backend()}.json", info, rows)

if __name__ == "__main__":
    main()
