"""`rismvdr simulate`: a test set of scenes of a named scenario into a scene file."""
from __future__ import annotations

import argparse
import hashlib
import os
import time

from rismvdr.cli.common import SEED_MAX, check_counts, outputs
from rismvdr.overrides import parse_overrides

__all__ = ["add_parser", "check", "run"]

#: Scenes per jitted call: `rismvdr.physics.simulate.simulate`'s default (tests/test_cli.py checks it).
BATCH_SIZE = 256


def add_parser(sub) -> None:
    s = sub.add_parser("simulate", help="simulate a test set of scenes into a .npz scene file (Conventions page, section 8)",
                       description="Simulate scenes of a named scenario (Conventions page, section 4) as a pure function of "
                                   "(scenario, seed).")
    s.add_argument("--scenario", default="seed", help="scenario name: 'seed' (RIS, M=16, L=16, i.i.d. channel), "
                   "'seed-los' (the seed's surface with a fixed line-of-sight BS 4 m away at 40 deg azimuth; "
                   "Conventions page, section 9), 'full' (full array, L=64) or 'ula15' (15-element ULA, L=100) "
                   "(default seed)")
    s.add_argument("--scenes", type=int, default=1000, help="number of scenes (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="PRNG seed; (scenario, seed, scenes) names a test set "
                   "(default 0)")
    s.add_argument("--out", required=True, help="output scene file (.npz)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a scenario field, each value converted to the field's type "
                        "(rismvdr.overrides), e.g. --set k_min=3 --set k_max=3 --set snr_db=10,10 (angles in "
                        "*_deg fields in degrees, ranges in metres, SNR and powers in dB); repeatable")
    s.add_argument("--codes", metavar="PATH",
                   help="RIS codebook (.npz, key 'codes': [L, N] complex, unit modulus) used for every scene "
                        "instead of drawn codes, rounded to the scenario's code_bits; sources and noise stay "
                        "those of drawn codes (RIS mode)")
    s.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="scenes per jitted call (memory bound; results do not depend on it; default %(default)s)")
    outputs(s, files=("out",), inputs=("--codes",))
    s.set_defaults(handler=__name__)


def check(args: argparse.Namespace) -> None:
    check_counts(args, {"--scenes": (1, None), "--seed": (0, SEED_MAX), "--batch-size": (1, None)})
    if args.codes is not None and not os.path.isfile(args.codes):
        raise ValueError(f"--codes: {args.codes}: no such file")


def run(args: argparse.Namespace) -> int:
    import jax  # deferred: JAX loads when a command runs, never for --help

    from rismvdr.io import save_scenes, scene_file_from_scenes  # deferred: loads JAX
    from rismvdr.io.scenes import load_codebook  # deferred: loads JAX
    from rismvdr.physics.deployment import deployment  # deferred: loads JAX
    from rismvdr.physics.scenarios import SceneConfig, get_scenario, scenario_geometry  # deferred: loads JAX
    from rismvdr.physics.simulate import check_codebook, simulate  # deferred: loads JAX

    cfg = get_scenario(args.scenario, **parse_overrides(SceneConfig, args.set))
    codes = None
    if args.codes is not None:
        try:
            codes = check_codebook(cfg, load_codebook(args.codes), name="--codes")
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("--codes") else f"--codes: {msg}") from None
    t0 = time.perf_counter()
    scenes = simulate(cfg, jax.random.key(args.seed), args.scenes, batch_size=args.batch_size, codes=codes)
    meta = dict(scenario=cfg.name, seed=args.seed, n_scenes=args.scenes, config=cfg.as_dict(),
                generator="rismvdr simulate")
    shared = ()
    if cfg.mode == "ris":
        shared = tuple(k for k, same in (("H", deployment(cfg).H_known is not None), ("codes", codes is not None))
                       if same)
    if args.codes is not None:
        with open(args.codes, "rb") as fh:
            meta["codebook"] = dict(path=args.codes, sha256=hashlib.sha256(fh.read()).hexdigest())
    save_scenes(args.out, scene_file_from_scenes(scenes, scenario_geometry(cfg), meta=meta, shared=shared))
    print(f"wrote {args.scenes} scenes ({cfg.name}, seed {args.seed}) to {args.out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
