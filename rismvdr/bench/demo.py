"""`rismvdr demo` (the README's main job): simulate a seed-regime test set, localize it with
every registered method that applies (the learned ones with the shipped weights, when they
were trained for the scenario) through the shared detector, evaluate (with PSSR and the CRB), and
write a report folder: `report.md` (markdown table), `metrics.json` (all methods),
`metrics_<method>.json`, `detections_<method>.csv`, `scenes.npz` and PNG plots.

Progress: a tqdm bar over the methods on a terminal; when stderr is not a terminal (a log file,
a pipe) one line per method instead as it starts and finishes (scenes, seconds, F1).

The bound: `ml-oracle` (`rismvdr.bench.sweeps.BOUND_METHOD`, the compressive ML
refinement started at the true positions with the true K) is among the default methods; it runs
first, and every method's metrics gain `f1_bound` (its F1), `f1_over_bound` and
`f1_over_bound_per_snr_bin`. The table (printed and in `report.md`) has its row, marked
"(bound)", and an `F1 / bound` column, followed by F1 per SNR bin with the ratio to the bound.
With `--methods`, the bound runs only when named.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from rismvdr.bench.accuracy_report import progress_line, ratio, snr_bin_table
from rismvdr.bench.methods import shipped_model
from rismvdr.bench.report import fmt_number
from rismvdr.bench.sweeps import BOUND_METHOD
from rismvdr.eval import metrics, plots
from rismvdr.eval.evaluation import evaluate_detections, scene_pssr_db, truth_crb
from rismvdr.io import (
    atomic_write,
    save_scenes,
    scene_file_from_scenes,
    to_jsonable,
    write_detections_csv,
    write_json,
)
from rismvdr.localize.registry import METHODS, localize, method_names, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

__all__ = ["run_demo", "ANCHORS"]

#: The original PyTorch system's own reported figures (seed changelog / LESSONS.md).
ANCHORS = {
    "mvdr-oracle": "original: F1 0.954 (P 0.992, R 0.918) on 500 scenes",
    "mvdr-als": "original: median position error about 1.18 m (blind)",
    "music-oracle-k": "original (ALS R_samp, true K forced): median position error 3.96 m",
    "learned": "original learned covariance: F1 0.081 (151 TP, 2069 FP, 1344 FN)",
}


def _default_methods(cfg, geometry) -> list[str]:
    """Every applicable method; learned ones only when the shipped model fits the scenario
    (its mode and N)."""
    names = method_names(full_array=cfg.mode == "full")
    model = shipped_model()
    fits = (model is not None and model.backbone_cfg.full_array == (cfg.mode == "full")
            and model.backbone_cfg.n_elements == geometry.n_elements)
    if not fits:
        names = [n for n in names if not METHODS[n].learned]
    return names


def _attach_bound(ev: dict, bound_ev: dict | None) -> None:
    """Give a method's metrics (in place) the bound's F1 (`f1_bound`), the ratio `f1_over_bound`
    and the ratio per SNR bin (`f1_over_bound_per_snr_bin`); None where there is no bound."""
    ev["f1_bound"] = None if bound_ev is None else bound_ev.get("f1")
    ev["f1_over_bound"] = ratio(ev.get("f1"), ev["f1_bound"])
    bper = (bound_ev or {}).get("per_snr_bin") or {}
    ev["f1_over_bound_per_snr_bin"] = {b: ratio(g.get("f1"), (bper.get(b) or {}).get("f1"))
                                       for b, g in (ev.get("per_snr_bin") or {}).items()}


def run_demo(out, *, n_scenes: int = 200, seed: int = 0, methods=None, scenario: str = "seed",
             progress: bool = True) -> dict:
    """Run the demo and return `{method: metrics}`.

    `progress`: tqdm bars over methods and batches (auto-off when not a terminal; then a line
    per method on stderr, `rismvdr.bench.accuracy_report.progress_line`); False: neither.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_scenario(scenario)
    geometry = scenario_geometry(cfg)
    t0 = time.perf_counter()
    print(f"simulating {n_scenes} '{cfg.name}' scenes (seed {seed}) ...", flush=True)
    scenes = simulate(cfg, jax.random.key(seed), n_scenes)
    meta = dict(scenario=cfg.name, seed=seed, n_scenes=n_scenes, config=cfg.as_dict(),
                generator="rismvdr demo")
    save_scenes(out / "scenes.npz", scene_file_from_scenes(scenes, geometry, meta=meta))
    crb = truth_crb(scenes, geometry, model=cfg.steering_model)
    settings = settings_for_scenario(cfg)
    names = list(methods or _default_methods(cfg, geometry))
    run_order = sorted(names, key=lambda n: n != BOUND_METHOD)  # the bound first: every later file has its ratio
    results, errors, timing = {}, {}, {}
    first_maps = {}
    bar = tqdm(run_order, desc="methods", unit="method", disable=None if progress else True)  # off when not a terminal
    for i, name in enumerate(bar, 1):
        step = f"[{i}/{len(run_order)}] {name}"
        if progress:
            progress_line(f"{step}: localizing {n_scenes} scenes ...")
        res = localize(name, scenes, geometry, settings, progress=progress)
        d = res.detections
        write_detections_csv(out / f"detections_{name}.csv", d.phi, d.theta, d.r, d.score_db, d.valid)
        pssr = scene_pssr_db(res.power_db, d.phi, d.theta, d.valid, res.grid)
        ev = evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid, score_db=d.score_db, pssr=pssr, crb=crb)
        ev["seconds"] = res.seconds
        if res.fallbacks is not None:  # learned-refiner: scenes whose refiner map was rejected
            ev["refiner_fallbacks"] = res.fallbacks
        ev["scenes_per_second"] = n_scenes / res.seconds
        _attach_bound(ev, results.get(BOUND_METHOD, ev if name == BOUND_METHOD else None))
        results[name] = ev
        timing[name] = res.seconds
        if progress:
            progress_line(f"{step}: {n_scenes} scenes in {res.seconds:.1f} s, F1 {fmt_number(ev.get('f1'), '.2f')}")
        write_json(out / f"metrics_{name}.json", to_jsonable(
            dict(method=name, test_set=dict(scenario=cfg.name, seed=seed, n_scenes=n_scenes), **ev)))
        pairs = metrics.match_pairs(
            np.where(d.valid, d.phi, np.nan), np.where(d.valid, d.theta, np.nan), np.where(d.valid, d.r, np.nan),
            np.where(scenes.mask, np.asarray(scenes.phi, float), np.nan),
            np.where(scenes.mask, np.asarray(scenes.theta, float), np.nan),
            np.where(scenes.mask, np.asarray(scenes.r, float), np.nan),
            est_valid=d.valid, gt_mask=np.asarray(scenes.mask))
        errors[name] = pairs.pos_err[pairs.is_tp]
        first_maps[name] = (res.power_db[0], res.plane[0], res.grid, tuple(a[0][d.valid[0]] for a in (d.phi, d.theta, d.r)))
    results = {name: results[name] for name in names}  # the registry's (or --methods') order
    write_json(out / "metrics.json", to_jsonable(
        dict(test_set=dict(scenario=cfg.name, seed=seed, n_scenes=n_scenes), methods=results)))
    plots.plot_snr_curves(out / "snr_curves.png", results, title=f"{cfg.name} scenario, {n_scenes} scenes, seed {seed}")
    plots.plot_error_cdf(out / "position_error_cdf.png", errors, title="3-D position error of true positives")
    m0 = np.asarray(scenes.mask[0])
    truth0 = tuple(np.asarray(a[0])[m0] for a in (scenes.phi, scenes.theta, scenes.r))
    for name in ("mvdr-oracle", "mvdr-als", "learned"):
        if name in first_maps:
            pw, pl, grid, det0 = first_maps[name]
            plots.plot_scene_map(out / f"scene0_{name}.png", pw, pl, grid, truth=truth0, detections=det0,
                                 title=f"{name}: scene 0 (circles: truth, crosses: detections)")
    table = metrics.format_table(results, bound=BOUND_METHOD)
    n_by_bin = next(({b: g.get("n_scenes") for b, g in ev["per_snr_bin"].items()} for ev in results.values()
                     if ev.get("per_snr_bin")), None)
    bins_table = snr_bin_table({k: {b: g.get("f1") for b, g in (ev.get("per_snr_bin") or {}).items()}
                                for k, ev in results.items()}, n_by_bin)
    bound_text = (f"`{BOUND_METHOD}` (bound) is the compressive ML refinement started at the true positions with "
                  f"the true K: the estimation limit of these measurements under the gates; F1 / bound is a "
                  f"method's F1 over its F1 on the same scenes"
                  + ("" if BOUND_METHOD in results else "; not run here (not among --methods): '-'") + ".")
    lines = [
        "# rismvdr demo report", "",
        f"Scenario `{cfg.name}`, {n_scenes} scenes, seed {seed}; gates 5 deg / 5 deg / 1 m; "
        f"default detector (db threshold 12 dB, K_max 5, 3-D refinement). Total wall time "
        f"{time.perf_counter() - t0:.0f} s on this machine (compilation included).", "",
        table, "",
        bound_text, "",
        "F1 per SNR bin (realised SNR of each scene, dB; n: scenes in the bin); cells: F1 (F1 / bound):", "",
        bins_table, "",
        "Anchors from the original system: " + "; ".join(f"`{k}` {v}" for k, v in ANCHORS.items()), "",
        "Wall time per method (s, compilation included): " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()), "",
        "Plots: `snr_curves.png`, `position_error_cdf.png`, `scene0_*.png`.",
    ]
    with atomic_write(out / "report.md") as f:
        f.write("\n".join(lines) + "\n")
    print(table)
    print()
    print("F1 per SNR bin (realised SNR, dB); cells: F1 (F1 / bound):")
    print(bins_table)
    print(f"report written to {out}/report.md ({time.perf_counter() - t0:.0f} s)")
    return results
