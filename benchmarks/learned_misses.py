"""Where a method's missed sources are: per-source SNR, angle found or not, and whether the ML
started at the truth would have kept them.

    python benchmarks/learned_misses.py SCENES.npz DETECTIONS.csv [--basin 150] [--out misses.json]

For every missed true source (a false negative of the shared matching, `rismvdr.eval.metrics`)
it looks for an unmatched detection within the angle gates of the source: if there is one, the
method found the source's direction and missed its range. For the first `--basin` such cases it
then replaces that detection by the true position, runs the same joint ML refinement the
methods use (`physics.compressive.ml_refine`, the scenario's dictionary grid and settings) and
records (a) whether the refined source stays within the range gate, (b) whether that fit's
residual energy is below the method's own fit (the truth's basin is the better optimum). The
first is an upper bound on what any start (a refiner, a range scan, ...) could recover of
those misses; the second tells a search failure from noise.

Prints a markdown table per 5 dB bin of per-source SNR (10 log10 of the source power over the
noise variance) and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.eval.metrics import match_scene
from rismvdr.io import load_scenes, read_detections_csv
from rismvdr.localize.registry import settings_for_scenario
from rismvdr.physics.compressive import apply_operators, ls_fit, ml_refine, scene_operators
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.steering import steering

BINS = (-10, -5, 0, 5, 10, 15, 20)


def _rss(y, E, geo, phi, theta, r, mask):
    a = steering(geo, jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(r), dtype=y.dtype)
    _, e = ls_fit(apply_operators(E, a.T), y, jnp.asarray(mask))
    return float(jnp.sum(jnp.abs(e) ** 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenes", help="scene file with truth (.npz)")
    ap.add_argument("detections", help="detections CSV of `rismvdr localize`")
    ap.add_argument("--scenario", default="seed", help="scenario whose settings and gates apply (default seed)")
    ap.add_argument("--basin", type=int, default=150, help="range misses checked with the ML from the truth (default 150)")
    ap.add_argument("--out", default=None, help="JSON output (default: print only)")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    sf = load_scenes(args.scenes)
    det = read_detections_csv(args.detections, n_scenes=sf.n_scenes)
    cfg = get_scenario(args.scenario)
    st = settings_for_scenario(cfg)
    gates = st.detector.gates
    geo = scenario_geometry(cfg).astype(jnp.float64)
    grid = st.dictionary_grid(geo.linear)
    ccfg = st.compressive.config

    misses, basin = [], []
    for i in range(sf.n_scenes):
        g = np.asarray(sf.truth_mask[i])
        v = np.asarray(det.valid[i]) if i < det.valid.shape[0] else np.zeros(0, bool)
        # padding slots get a harmless placeholder position (they are masked out of every fit)
        P, T, R = (np.where(v, np.asarray(x[i], np.float64), fill) for x, fill in ((det.phi, 0.0), (det.theta, 0.0), (det.r, 1.0)))
        m = match_scene(P, T, R, sf.gt_phi[i], sf.gt_theta[i], sf.gt_r[i], est_valid=v, gt_mask=g, gates=gates)
        tp = np.asarray(m.is_tp)
        hit_gt = set(np.asarray(m.gt_index)[tp].tolist())
        hit_est = set(np.asarray(m.est_index)[tp].tolist())
        free = [j for j in np.flatnonzero(v) if j not in hit_est]
        y = E = base = None
        for k in np.flatnonzero(g):
            if k in hit_gt:
                continue
            snr = 10 * np.log10(sf.gt_power[i][k] / sf.noise_var[i])
            near = [j for j in free if abs(P[j] - sf.gt_phi[i][k]) <= gates.phi and abs(T[j] - sf.gt_theta[i][k]) <= gates.theta]
            j = min(near, key=lambda j: abs(R[j] - sf.gt_r[i][k])) if near else None
            misses.append({"scene": i, "snr_db": float(snr), "angle_found": j is not None,
                           "range_err_m": float(R[j] - sf.gt_r[i][k]) if j is not None else None})
            if j is None or len(basin) >= args.basin:
                continue
            if y is None:
                y = jnp.asarray(sf.y[i], jnp.complex128)
                y = y / jnp.sqrt(jnp.mean(jnp.abs(y) ** 2))
                E = scene_operators(jnp.asarray(sf.H[i], jnp.complex128), jnp.asarray(sf.codes[i], jnp.complex128),
                                    y.shape[0], sf.n_elements, jnp.complex128)
                base = _rss(y, E, geo, P, T, R, v)
            P2, T2, R2 = P.copy(), T.copy(), R.copy()
            P2[j], T2[j], R2[j] = sf.gt_phi[i][k], sf.gt_theta[i][k], sf.gt_r[i][k]
            p3, t3, r3, _ = ml_refine(y, E, geo, grid, *(jnp.asarray(x) for x in (P2, T2, R2, v)), ccfg)
            basin.append({"snr_db": float(snr), "kept_in_gate": bool(abs(float(r3[j]) - sf.gt_r[i][k]) <= gates.r
                                                                      and abs(float(p3[j]) - sf.gt_phi[i][k]) <= gates.phi
                                                                      and abs(float(t3[j]) - sf.gt_theta[i][k]) <= gates.theta),
                          "truth_basin_lower_rss": _rss(y, E, geo, np.asarray(p3), np.asarray(t3), np.asarray(r3), v) < base})

    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        ms = [x for x in misses if lo <= x["snr_db"] < hi]
        bs = [x for x in basin if lo <= x["snr_db"] < hi]
        found = [x for x in ms if x["angle_found"]]
        rows.append({"bin": f"[{lo},{hi})", "missed": len(ms), "angle_found": len(found),
                     "median_abs_range_err_m": float(np.median([abs(x["range_err_m"]) for x in found])) if found else None,
                     "basin_checked": len(bs), "ml_from_truth_kept": sum(x["kept_in_gate"] for x in bs),
                     "truth_basin_lower_rss": sum(x["truth_basin_lower_rss"] for x in bs)})
    total = {"missed": len(misses), "outside_bins": len([x for x in misses if not BINS[0] <= x["snr_db"] < BINS[-1]]),
             "angle_found": sum(x["angle_found"] for x in misses), "basin_checked": len(basin),
             "ml_from_truth_kept": sum(x["kept_in_gate"] for x in basin),
             "truth_basin_lower_rss": sum(x["truth_basin_lower_rss"] for x in basin)}
    print("| source SNR (dB) | missed | direction found (range missed) | median abs range error (m) | checked | ML from truth kept | truth basin lower RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        med = "-" if r["median_abs_range_err_m"] is None else f"{r['median_abs_range_err_m']:.2f}"
        print(f"| {r['bin']} | {r['missed']} | {r['angle_found']} | {med} | {r['basin_checked']} | "
              f"{r['ml_from_truth_kept']} | {r['truth_basin_lower_rss']} |")
    print("all:", json.dumps(total))
    if args.out:
        Path(args.out).write_text(json.dumps({"bins": rows, "total": total}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
