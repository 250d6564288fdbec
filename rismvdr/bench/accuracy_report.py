"""The report of `rismvdr bench accuracy`: record columns, markdown tables, the README summary, plots.

Files in the report folder: `accuracy.json` (`{"meta": ..., "records": [...]}`, a flat list of
records: `pandas.DataFrame(json.load(f)["records"])`, written by `run_accuracy`),
`accuracy.csv` (the same records, columns `RECORD_KEYS`), `accuracy.md` (one F1 table per
sweep, method x value; the `ula` sweep with its setup and an RMSE / sqrt(CRB) table),
`accuracy_summary.md` (one compact table, the one the README includes), and PNG plots
(`f1_vs_snr.png`, `f1_vs_range.png`, `rmse_phi_vs_snr_k1.png`, `position_error_cdf_base.png`,
`ula_rmse_vs_snr.png`). `write_report` rebuilds all but the JSON from the JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rismvdr.bench.plots import plot_f1, plot_rmse_snr, plot_ula
from rismvdr.bench.report import fmt_number, write_records_csv
from rismvdr.bench.sweeps import B2_METHODS, SWEEPS, ULA_SCENARIO
from rismvdr.eval.plots import plot_error_cdf
from rismvdr.files import atomic_write
from rismvdr.localize.registry import settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry

__all__ = ["METRIC_KEYS", "RECORD_KEYS", "ula_setup", "summary_table", "write_report"]

#: Metrics copied into every record (from `rismvdr.eval.evaluation.evaluate_detections`).
METRIC_KEYS = (
    "f1", "precision", "recall", "fp_per_scene", "tp", "fp", "fn",
    "median_pos_err_m", "p90_pos_err_m", "rmse_phi_deg", "rmse_theta_deg", "rmse_r_m",
    "sqrt_crb_phi_deg", "sqrt_crb_theta_deg", "sqrt_crb_r_m",
    "rmse_over_sqrt_crb_phi", "rmse_over_sqrt_crb_theta", "rmse_over_sqrt_crb_r",
)
#: Every record's keys, in CSV column order.
RECORD_KEYS = ("suite", "sweep", "variable", "value", "method", "scenario", "n_scenes", "seed",
               "snr_db", "k", "n_snapshots") + METRIC_KEYS + ("seconds",)


def ula_setup(n_scenes: int | None = None) -> str:
    """The exact setup of the `ula` sweep, one paragraph (from the `ula15` scenario and the
    settings the bench localizes it with)."""
    per_point = f"a fresh test set of {n_scenes} scenes per SNR" if n_scenes else "a fresh test set per SNR"
    cfg = get_scenario(ULA_SCENARIO)
    g = scenario_geometry(cfg)
    st = settings_for_scenario(cfg)
    det, box = st.detector, st.search
    lam, n = cfg.wavelength, g.n_elements
    d = (n - 1) * cfg.spacing_h  # aperture
    fres_lo, fres_hi = 0.62 * math.sqrt(d ** 3 / lam), 2 * d ** 2 / lam
    n_phi = int(round((box.phi_deg[1] - box.phi_deg[0]) / box.phi_step_deg)) + 1
    thr = (f"peaks within {det.threshold_db:g} dB of the map maximum" if det.threshold_mode == "db" else
           f"peaks above median + {det.mad_z:g} MAD" if det.threshold_mode == "mad" else "no threshold")
    return (
        f"Setup (scenario `{cfg.name}`): {n}-element ULA along y, spacing {cfg.spacing_h:g} m = lambda/2, "
        f"lambda {lam:g} m, aperture D = {d:.2f} m; full-array mode (y = x + n, every element sampled, "
        f"M = N = {n}); T = L = {cfg.n_snapshots} snapshots; K = {cfg.k_min} sources with equal power "
        f"({cfg.power_db[0]:g} dB), independent CN(0, p) symbols (uncorrelated over sources and snapshots); "
        f"phi uniform in [{cfg.phi_deg[0]:g}, {cfg.phi_deg[1]:g}] deg, theta = {cfg.theta_deg[0]:g} "
        f"(known: a linear array does not resolve elevation), r uniform in [{cfg.r_m[0]:g}, {cfg.r_m[1]:g}] m "
        f"(Fresnel region of this aperture 0.62 sqrt(D^3/lambda) = {fres_lo:.2f} m .. 2 D^2/lambda = "
        f"{fres_hi:.1f} m); sources drawn by rejection so that no two fall inside each other's gate "
        f"({cfg.gate_phi_deg:g} deg / {cfg.gate_r_m:g} m, SPEC 7); exact (spherical-wave) steering model "
        f"for simulation, estimators and CRB; SNR per element of the total received signal "
        f"(sigma^2 = mean |x|^2 / N / 10^(SNR/10), both sources together, so each source has about "
        f"{10 * math.log10(cfg.k_min):.0f} dB less); {per_point}. "
        f"Detector grid: phi {box.phi_deg[0]:g} .. {box.phi_deg[1]:g} deg in {box.phi_step_deg:g} deg steps "
        f"({n_phi} points) x one theta row x {box.n_planes} range planes uniform in 1/r over "
        f"[{box.r_m[0]:g}, {box.r_m[1]:g}] m; {thr}, at most {det.k_max} detections, NMS at the gates, "
        f"{det.refine_iters} Newton steps of continuous (phi, r) refinement (no K given except to "
        f"`music-oracle-k` and `mvdr-oracle`). MUSIC: sample covariance, order by MDL / AIC with L snapshots "
        f"or the true K; MVDR: sample covariance (`mvdr-sample`) or the true covariance (`mvdr-oracle`), "
        f"diagonal loading {st.estimator.delta_rel:g} tr(R)/N. Matched by Hungarian assignment; a true positive is "
        f"within {cfg.gate_phi_deg:g} deg and {cfg.gate_r_m:g} m. The first table gives F1; "
        f"`ula_rmse_vs_snr.png` and `accuracy.json` give the RMSE over true positives and "
        f"RMSE / sqrt(CRB) per parameter (deterministic CRB with expected powers, SPEC 7), summarised in the "
        f"second table (phi / r). RMSE is over gated true positives only, so at low SNR it is truncated by "
        f"the gates and the ratio can fall below 1; with few scenes per point the ratio also fluctuates "
        f"by tens of percent. `mvdr-oracle` scans the noise-free true covariance, not the measurements, so "
        f"its RMSE is the grid and refinement floor, not an estimator's error bounded by the CRB.")


def _markdown(records: list[dict], meta: dict) -> str:
    titles = dict(base="Base set (`seed` scenario as is: SNR U[-5, 20] dB, K U{1..5}, L = 16)",
                  snr_k1="F1 against SNR (dB), K = 1", snr_k3="F1 against SNR (dB), K = 3",
                  k="F1 against K, SNR 10 dB", l="F1 against L (snapshots), SNR 10 dB, K = 3",
                  r="F1 against source range (bin midpoint, m; every source of a scene in the bin), SNR 10 dB, "
                    "K = 3; the search box stays 0.5 - 10 m",
                  ula=f"Near-field ULA (`{ULA_SCENARIO}`, full array, comparable to the literature): "
                      "F1 against SNR (dB)")
    lines = ["# rismvdr accuracy bench", "",
             f"`{meta['scenario']}` scenario, {meta['n_scenes']} scenes per point, seed {meta['seed']}; "
             f"gates 5 deg / 5 deg / 1 m; default detector. B1: blind (each method finds K); "
             f"B2: oracle K ({', '.join(f'`{m}`' for m in B2_METHODS)}). Cells: F1; '-': not run "
             f"(method does not apply, e.g. learned methods away from L = 16). Wall time "
             f"{meta['wall_s']:.0f} s"
             + (f" for the last part: the run was resumed (`--resume`) with {meta['resumed_records']} records "
                f"of an earlier, interrupted part" if meta.get("resumed_records") else "") + ".", ""]
    for sweep in sorted({r["sweep"] for r in records}, key=SWEEPS.index):
        rows = [r for r in records if r["sweep"] == sweep]
        values = list(dict.fromkeys(r["value"] for r in rows))
        methods = list(dict.fromkeys((r["suite"], r["method"]) for r in rows))
        cell = {(r["suite"], r["method"], r["value"]): r["f1"] for r in rows}
        lines += [f"## {titles.get(sweep, sweep)}", ""]
        if sweep == "ula":
            lines += [ula_setup(meta["n_scenes"]), ""]
        head = ["F1"] if values == [None] else [f"{v:g}" for v in values]
        lines.append("| suite | method | " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * len(head))
        for suite, name in sorted(methods):
            cells = [fmt_number(cell[(suite, name, v)]) if (suite, name, v) in cell else "-" for v in values]
            lines.append(f"| {suite} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for sk in meta.get("skipped") or []:
            if sk["sweep"] == sweep:
                lines += [f"Not run: `{sk['method']}` at {sk['value']}: {sk['reason']}.", ""]
        if sweep == "ula":
            lines += _ratio_table(rows, values, methods)
    return "\n".join(lines)


def _ratio_table(rows, values, methods) -> list[str]:
    """RMSE / sqrt(CRB) of phi and of r (cells "phi / r"), method x value."""
    cell = {(r["suite"], r["method"], r["value"]): f"{fmt_number(r.get('rmse_over_sqrt_crb_phi'), '.2f')} / "
            f"{fmt_number(r.get('rmse_over_sqrt_crb_r'), '.2f')}" for r in rows}
    lines = ["RMSE / sqrt(CRB) over true positives, phi / r (n/a: no true positive):", "",
             "| suite | method | " + " | ".join(f"{v:g}" for v in values) + " |",
             "|---|---|" + "---:|" * len(values)]
    for suite, name in sorted(methods):
        lines.append(f"| {suite} | {name} | " + " | ".join(cell.get((suite, name, v), "-") for v in values) + " |")
    return lines + [""]


def summary_table(records: list[dict], meta: dict) -> str:
    """One compact markdown table (method rows) for the README: base-set F1 and median position
    error, F1 at K = 3 for some SNRs, F1 at K = 5, single-source azimuth RMSE / sqrt(CRB) at
    the highest SNR, and the `ula` case's RMSE / sqrt(CRB) (phi / r) at its highest SNR.
    Columns whose sweep was not run are left out."""
    def pick(sweep, value=None):
        rows = [r for r in records if r["sweep"] == sweep and (value is None or r["value"] == value)]
        return {r["method"]: r for r in rows}

    def top(sweep):
        vals = [r["value"] for r in records if r["sweep"] == sweep and r["value"] is not None]
        return max(vals) if vals else None

    cols: list[tuple[str, dict, Any]] = []
    base = pick("base")
    if base:
        cols += [("F1 base", base, lambda r: fmt_number(r["f1"])),
                 ("median err base (m)", base, lambda r: fmt_number(r["median_pos_err_m"]))]
    snr3 = [v for v in (0, 10, 20) if pick("snr_k3", v)]
    cols += [(f"F1 K=3, {v:g} dB", pick("snr_k3", v), lambda r: fmt_number(r["f1"])) for v in snr3]
    if pick("k", 5):
        cols.append(("F1 K=5, 10 dB", pick("k", 5), lambda r: fmt_number(r["f1"])))
    r_vals = sorted({r["value"] for r in records if r["sweep"] == "r"})
    cols += [(f"F1 r bin {v:g} m", pick("r", v), lambda r: fmt_number(r["f1"])) for v in r_vals[:1] + r_vals[-1:]]
    if top("snr_k1") is not None:
        v = top("snr_k1")
        cols.append((f"RMSE/sqrt(CRB) phi, K=1, {v:g} dB", pick("snr_k1", v),
                     lambda r: fmt_number(r["rmse_over_sqrt_crb_phi"], ".2f")))
    if top("ula") is not None:
        v = top("ula")
        cols += [(f"ULA F1, {v:g} dB", pick("ula", v), lambda r: fmt_number(r["f1"])),
                 (f"ULA RMSE/sqrt(CRB) phi / r, {v:g} dB", pick("ula", v),
                  lambda r: f"{fmt_number(r['rmse_over_sqrt_crb_phi'], '.2f')} / "
                            f"{fmt_number(r['rmse_over_sqrt_crb_r'], '.2f')}")]
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [f"`rismvdr bench accuracy` ({meta['n_scenes']} scenes per point, seed {meta['seed']}; "
             f"'-': not run at that point):", "",
             "| method | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f(rows[m]) if m in rows else "-" for _, rows, f in cols) + " |")
    return "\n".join(lines)


def write_report(out, result: dict | None = None) -> list[str]:
    """(Re)write the CSV, markdown tables and plots of a report folder from its records
    (`result`, default: `out/accuracy.json`), e.g. after a change to the plots; returns the
    names written."""
    out = Path(out)
    if result is None:
        result = json.loads((out / "accuracy.json").read_text())
    meta, records = result["meta"], result["records"]
    write_records_csv(out / "accuracy.csv", records, RECORD_KEYS)
    written = ["accuracy.csv", "accuracy.md", "accuracy_summary.md"]
    with atomic_write(out / "accuracy_summary.md") as f:
        f.write(summary_table(records, meta) + "\n")
    with atomic_write(out / "accuracy.md") as f:
        f.write(_markdown(records, meta) + "\n")
    if plot_f1(out / "f1_vs_snr.png", records, dict(snr_k1=("K = 1", "SNR (dB)"), snr_k3=("K = 3", "SNR (dB)"))):
        written.append("f1_vs_snr.png")
    if plot_f1(out / "f1_vs_range.png", records, dict(r=("K = 3, SNR 10 dB", "source range bin midpoint (m)"))):
        written.append("f1_vs_range.png")
    if plot_rmse_snr(out / "rmse_phi_vs_snr_k1.png", records):
        written.append("rmse_phi_vs_snr_k1.png")
    if plot_ula(out / "ula_rmse_vs_snr.png", records):
        written.append("ula_rmse_vs_snr.png")
    base_errors = {r["method"]: np.asarray(r["tp_pos_err_m"]) for r in records
                   if r["sweep"] == "base" and r.get("tp_pos_err_m") is not None}
    if base_errors:
        plot_error_cdf(out / "position_error_cdf_base.png", base_errors,
                             title=f"base set: 3-D position error of true positives ({meta['n_scenes']} scenes)")
        written.append("position_error_cdf_base.png")
    return written
