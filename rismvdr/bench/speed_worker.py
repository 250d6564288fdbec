"""The worker side of `rismvdr bench speed`: one measurement per process.

`python -m rismvdr.bench.speed_worker SPEC` runs the measurement the JSON `SPEC` names
(`kind`: `info`, `numpy`, `torch`, `dense`, `woodbury`, `detect`, `method`, `train`) and prints
its result as JSON on the last stdout line; `rismvdr.bench.speed` starts one such process per
measurement, so every peak memory figure is that measurement's own. Every timing excludes the
first call (compilation), reported as `first_call_s`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.bench.baselines import numpy_original_mvdr
from rismvdr.bench.machine import device_peak_mib, machine_record, peak_rss_mib
from rismvdr.bench.speed import RANK, SPECTRUM_GRID
from rismvdr.localize.classical import oracle_builder
from rismvdr.localize.detect import detect
from rismvdr.localize.learned import load_learned
from rismvdr.localize.registry import METHODS, localize, settings_for_scenario
from rismvdr.physics import get_scenario, scenario_geometry, simulate
from rismvdr.physics.spectra import (
    grid_steering,
    make_grid,
    mvdr_lowrank_operator,
    mvdr_operator,
    spectrum_25d,
)

__all__ = ["WORKERS", "worker"]


def _grid(name: str):
    if name == "seed361":
        return make_grid(SPECTRUM_GRID["phi_deg"], SPECTRUM_GRID["theta_deg"], SPECTRUM_GRID["r_m"],
                         phi_step_deg=SPECTRUM_GRID["phi_step_deg"], theta_step_deg=SPECTRUM_GRID["theta_step_deg"],
                         n_planes=SPECTRUM_GRID["n_planes"])
    return settings_for_scenario(get_scenario("seed")).grid()


def _rank5_setup(grid_name: str, n_scenes: int, seed: int):
    """Seed geometry, grid steering `[T, P, R, N]` complex64 (built once) and `R_true` of
    `n_scenes` seed scenes with K = 5."""
    cfg = get_scenario("seed", k_min=RANK, k_max=RANK)
    geometry = scenario_geometry(cfg)
    a_grid = jax.block_until_ready(grid_steering(geometry, _grid(grid_name)))
    scenes = simulate(cfg, jax.random.key(seed), n_scenes)
    return a_grid, scenes.R_true


def _timed(fn, reps: int):
    """(first-call seconds, list of timed seconds): one untimed warm-up call, then `reps`."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def _result(times, per_call_scenes: int, first: float, **extra) -> dict:
    med = float(np.median(times))
    return dict(median_s=med, scenes_per_s=per_call_scenes / med, first_call_s=first, times_s=times,
                peak_rss_mib=peak_rss_mib(), **extra)


def _w_numpy(spec: dict) -> dict:
    """The original formula in NumPy, one scene at a time (complex64)."""
    a_grid, R = _rank5_setup(spec["grid"], spec["reps"] + 1, spec["seed"])
    t, p, r, n = a_grid.shape
    A = np.ascontiguousarray(np.asarray(a_grid).reshape(-1, n).T)  # [N, G]
    R = np.asarray(R)
    del a_grid
    it = iter(range(len(R)))

    def one():
        spec_ = numpy_original_mvdr(R[next(it)], A).reshape(t, p, r)
        return spec_.max(-1), spec_.argmax(-1)

    first, times = _timed(one, spec["reps"])
    return _result(times, 1, first, device_peak_mib=None)


def _w_torch(spec: dict) -> dict:
    """The original formula in PyTorch on CUDA, one scene at a time (complex64)."""
    import torch  # optional dependency: only this measurement needs it

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    a_grid, R = _rank5_setup(spec["grid"], spec["reps"] + 1, spec["seed"])
    t, p, r, n = a_grid.shape
    dev = torch.device("cuda")
    A = torch.from_numpy(np.ascontiguousarray(np.asarray(a_grid).reshape(-1, n).T)).to(dev)
    Rt = torch.from_numpy(np.array(R)).to(dev)  # a writable host copy
    del a_grid
    eye = torch.eye(n, dtype=Rt.dtype, device=dev)
    it = iter(range(len(Rt)))

    def one():
        Rs = Rt[next(it)]
        d = 1e-2 * torch.real(torch.trace(Rs)) / n
        Ri = torch.linalg.inv(Rs + d * eye)
        denom = torch.einsum("ng,nm,mg->g", A.conj(), Ri, A).real
        spec_ = (1.0 / denom.clamp(min=1e-12)).reshape(t, p, r)
        out = spec_.max(-1)
        torch.cuda.synchronize()
        return out

    torch.cuda.reset_peak_memory_stats()
    first, times = _timed(one, spec["reps"])
    return _result(times, 1, first, device_peak_mib=torch.cuda.max_memory_allocated() / 2**20,
                   torch=torch.__version__)


def _w_spectrum(spec: dict) -> dict:
    """rismvdr's 2.5D map from a batch of covariances (dense) or rank-5 factors (Woodbury)."""
    b, precision = spec["batch"], spec["precision"]
    a_grid, R = _rank5_setup(spec["grid"], b, spec["seed"])
    if spec["name"] == "dense":
        build = jax.jit(mvdr_operator)
        inputs = R
    else:
        vals, vecs = jnp.linalg.eigh(R)  # ascending; R_true has rank 5
        inputs = vecs[..., -RANK:] * jnp.sqrt(jnp.maximum(vals[..., -RANK:], 0.0))[..., None, :]
        build = jax.jit(lambda F: mvdr_lowrank_operator(F, precision=precision))
    inputs = jax.block_until_ready(inputs)

    def run():
        s = spectrum_25d(build(inputs), a_grid, precision=precision, max_chunk_mb=spec["max_chunk_mb"])
        return jax.block_until_ready(s)

    first, times = _timed(run, spec["reps"])
    return _result(times, b, first, device_peak_mib=device_peak_mib())


def _w_detect(spec: dict) -> dict:
    """The shared detector alone on precomputed `mvdr-oracle` maps."""
    cfg = get_scenario("seed")
    geometry = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg)
    grid = settings.grid()
    scenes = simulate(cfg, jax.random.key(spec["seed"]), spec["batch"])
    op, _ = oracle_builder(scenes, geometry, settings)
    maps = jax.block_until_ready(spectrum_25d(op, grid_steering(geometry, grid)))

    def run():
        return jax.block_until_ready(detect(op, maps, geometry, grid, settings.detector))

    first, times = _timed(run, spec["reps"])
    return _result(times, spec["batch"], first, device_peak_mib=device_peak_mib())


def _w_method(spec: dict) -> dict:
    """One localization method end to end: one batch to compile, then `scenes` timed."""
    cfg = get_scenario("seed")
    geometry = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg, batch_size=spec["batch"])
    n = spec["scenes"]
    scenes = simulate(cfg, jax.random.key(spec["seed"]), n)
    model = None
    if METHODS[spec["name"]].learned:
        model = load_learned()
    warm = jax.tree_util.tree_map(lambda a: a[: min(spec["batch"], n)], scenes)
    t0 = time.perf_counter()
    localize(spec["name"], warm, geometry, settings, progress=False, keep_maps=False, model=model)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    localize(spec["name"], scenes, geometry, settings, progress=False, keep_maps=False, model=model)
    dt = time.perf_counter() - t0
    return dict(median_s=dt, scenes_per_s=n / dt, first_call_s=first, times_s=[dt],
                peak_rss_mib=peak_rss_mib(), device_peak_mib=device_peak_mib())


def _w_train(spec: dict) -> dict:
    """The jitted train step of a config (stage backbone or refiner) at a batch size."""
    from rismvdr.train.config import load_config  # start-up time: only the train workers need the trainer
    from rismvdr.train.trainer import Trainer  # start-up time: only the train workers need the trainer

    cfg = load_config(spec["config"]).replace(stage=spec["stage"], batch_size=spec["batch"])
    backbone = None
    if spec["stage"] == "refiner":
        backbone = load_learned()
    tr = Trainer(cfg, n_devices=1, backbone=backbone)
    state = tr.init_state()
    step = tr.step_fn()
    w = tr.weights(int(0.5 * cfg.steps))  # main-phase loss weights
    box = [state]

    def run():
        box[0], _ = step(box[0], w)
        jax.block_until_ready(box[0])

    first, times = _timed(run, 1)  # compile, then one step to settle
    t0 = time.perf_counter()
    for _ in range(spec["reps"]):
        run()
    dt = (time.perf_counter() - t0) / spec["reps"]
    return dict(median_s=dt, scenes_per_s=spec["batch"] / dt, first_call_s=first, times_s=[dt],
                steps_per_s=1.0 / dt, n_params=tr.n_params, peak_rss_mib=peak_rss_mib(),
                device_peak_mib=device_peak_mib())


def _w_info(spec: dict) -> dict:
    """Machine, versions, and the RSS of a worker that only started the JAX runtime (after this
    module's imports: the import cost every worker pays)."""
    return machine_record()


#: Measurement kind -> the function that runs it in this process.
WORKERS = dict(info=_w_info, numpy=_w_numpy, torch=_w_torch, dense=_w_spectrum, woodbury=_w_spectrum,
               detect=_w_detect, method=_w_method, train=_w_train)


def worker(spec: dict) -> dict:
    """Run one measurement in this process (the worker entry point)."""
    return WORKERS[spec["kind"]](spec)


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="rismvdr speed-bench worker (internal): one measurement, "
                                             "JSON on the last stdout line")
    ap.add_argument("spec", help="JSON measurement spec")
    args = ap.parse_args(argv)
    print(json.dumps(worker(json.loads(args.spec))))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
