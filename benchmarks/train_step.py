"""Training steps per second and scenes per second of a config's jitted train step.

The timed region is the whole step as training runs it: on-device simulation of the batch,
backbone forward/backward (or, for Stage 2, the frozen backbone's low-rank MVDR maps and the
refiner), the Optax update and the EMA, ending in `block_until_ready`. One warm-up step
(compilation, reported separately) comes first, then `--steps` timed steps.

    python benchmarks/train_step.py --config configs/seed.py --steps 20
    python benchmarks/train_step.py --config configs/seed.py --stage refiner --backbone runs/seed

Results go to stdout and `benchmarks/results/train_step_<backend>.json`.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax

from _results import machine_info, write_results
from rismvdr.train.config import apply_overrides, load_config
from rismvdr.train.trainer import Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "seed.py"), help="config file")
    p.add_argument("--stage", choices=("backbone", "refiner"), default="backbone")
    p.add_argument("--backbone", help="Stage 2: backbone run directory or exported model (default: shipped weights)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--batch", type=int, action="append", help="batch size(s) to time (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", help="JSON output path")
    args = p.parse_args(argv)
    base = apply_overrides(load_config(args.config), args.set).replace(stage=args.stage)
    backbone = None
    if args.stage == "refiner":
        from rismvdr.localize.learned import load_learned

        backbone = load_learned(args.backbone)
    rows = []
    for batch in args.batch or [base.batch_size]:
        cfg = base.replace(batch_size=batch)
        tr = Trainer(cfg, backbone=backbone)
        state = tr.init_state()
        step = tr.step_fn()
        w = tr.weights(int(0.5 * cfg.steps))  # main-phase weights
        t0 = time.perf_counter()
        state, m = step(state, w)
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, m = step(state, w)
        jax.block_until_ready(state)
        dt = time.perf_counter() - t0
        row = dict(config=cfg.name, stage=cfg.stage, batch=batch, devices=tr.mesh.devices.size, n_params=tr.n_params,
                   steps=args.steps, seconds=dt, steps_per_second=args.steps / dt,
                   scenes_per_second=args.steps * batch / dt, first_step_seconds=compile_s,
                   loadavg_start=load0, loadavg_end=os.getloadavg()[0])
        if jax.default_backend() != "cpu":
            stats = jax.devices()[0].memory_stats() or {}
            row["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        rows.append(row)
        print(f"{cfg.name} {cfg.stage} batch {batch:4d}: {row['steps_per_second']:.2f} steps/s, "
              f"{row['scenes_per_second']:.1f} scenes/s (first step {compile_s:.1f} s)", flush=True)
    write_results(args.out, f"train_step_{args.stage}_{jax.default_backend()}.json", machine_info(), rows)

if __name__ == "__main__":
    main()
