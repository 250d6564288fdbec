"""The report of `rismvdr bench accuracy`: record columns, markdown tables, the README summary, plots.

Files in the report folder: `accuracy.json` (`{"meta": ..., "records": [...]}`, a flat list of
records: `pandas.DataFrame(json.load(f)["records"])`, written by `run_accuracy`),
`accuracy.csv` (the same records, columns `RECORD_KEYS`), `accuracy.md` (one F1 table per
sweep, method x value, with the bound row and an `F1 / bound` table; per-SNR-bin F1 against the
bound where a point spans several SNR bins; the `ula` sweep with its setup and an RMSE /
sqrt(CRB) table), `accuracy_summary.md` (one compact table, the one the README includes), and
PNG plots (`f1_vs_snr.png`, `f1_vs_range.png` with the bound as a black dashed curve,
`rmse_phi_vs_snr_k1.png`, `position_error_cdf_base.png`, `ula_rmse_vs_snr.png`, and for the
deployment sweeps `f1_vs_codes.png` and `f1_vs_impairments.png`).
`write_report` rebuilds all but the JSON from the JSON.

The bound: `BOUND_METHOD` (`ml-oracle`) is the ML refinement started at the true
positions with the true K, the estimation limit of the measurements under the gates.
`attach_bound` gives every record `f1_bound` (the bound's F1 at the same point) and
`f1_over_bound` (the record's F1 / f1_bound; None when either is missing or not finite, or the
bound is 0), and, where the record has `f1_per_snr_bin` (a point that spans several SNR bins,
like `base`), `f1_bound_per_snr_bin` and `f1_over_bound_per_snr_bin` per bin.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rismvdr.bench.plots import plot_f1, plot_rmse_snr, plot_ula
from rismvdr.bench.report import fmt_number, write_records_csv
from rismvdr.bench.sweeps import (
    B2_METHODS,
    BOUND_METHOD,
    DEPLOY_SCENARIO,
    DESIGN_SNR_DB,
    IMPAIRMENT_CODE_BITS,
    SWEEPS,
    ULA_SCENARIO,
)
from rismvdr.eval.plots import plot_error_cdf
from rismvdr.io import atomic_write
from rismvdr.localize.registry import settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry

__all__ = ["METRIC_KEYS", "RECORD_KEYS", "PER_BIN_KEYS", "ratio", "attach_bound", "snr_bin_table", "ula_setup",
           "summary_table", "write_report", "progress_line"]

#: Metrics copied into every record (from `rismvdr.eval.evaluation.evaluate_detections`).
METRIC_KEYS = (
    "f1", "precision", "recall", "fp_per_scene", "tp", "fp", "fn",
    "median_pos_err_m", "p90_pos_err_m", "rmse_phi_deg", "rmse_theta_deg", "rmse_r_m",
    "sqrt_crb_phi_deg", "sqrt_crb_theta_deg", "sqrt_crb_r_m",
    "rmse_over_sqrt_crb_phi", "rmse_over_sqrt_crb_theta", "rmse_over_sqrt_crb_r",
)
#: Every record's keys, in CSV column order.
RECORD_KEYS = ("suite", "sweep", "variable", "value", "method", "scenario", "n_scenes", "seed",
               "snr_db", "k", "n_snapshots") + METRIC_KEYS + ("f1_bound", "f1_over_bound", "seconds")
#: Per-SNR-bin keys of the records of a point that spans several SNR bins (`{"[lo,hi)": value}`,
#: bins of the realised SNR as in `rismvdr.eval.metrics.evaluate`; JSON only, not in the CSV).
PER_BIN_KEYS = ("f1_per_snr_bin", "n_scenes_per_snr_bin", "f1_bound_per_snr_bin", "f1_over_bound_per_snr_bin")


def progress_line(text: str) -> None:
    """Print `text` as one line on stderr when stderr is not a terminal (a log file, a pipe:
    where the tqdm bars are off), so that a long run still says what it is doing; nothing on a
    terminal, where the bars show it."""
    isatty = getattr(sys.stderr, "isatty", None)
    if not (isatty and isatty()):
        print(text, file=sys.stderr, flush=True)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ratio(f1, bound):
    """`f1 / bound`, or None when either is missing or not finite, or the bound is 0 (NaN-safe)."""
    return float(f1) / float(bound) if _finite(f1) and _finite(bound) and bound != 0 else None


def _bin_lo(label: str) -> float:
    """Lower edge (dB) of an SNR bin label "[lo,hi)"."""
    return float(label.strip("[)").split(",")[0])


def attach_bound(records: list[dict], bound: str = BOUND_METHOD) -> list[dict]:
    """Give every record (in place) the bound's F1 at its point, `f1_bound`, and `f1_over_bound`
    (None where the bound did not run or is 0); records with `f1_per_snr_bin` also get the
    bound's F1 and the ratio per SNR bin. A point is (sweep, value): the same test set. Returns
    `records`."""
    ref = {(r["sweep"], r["value"]): r for r in records if r["method"] == bound}
    for r in records:
        b = ref.get((r["sweep"], r["value"]))
        r["f1_bound"] = None if b is None or not _finite(b.get("f1")) else b["f1"]
        r["f1_over_bound"] = ratio(r.get("f1"), r["f1_bound"])
        per = r.get("f1_per_snr_bin")
        if per is not None:
            bper = (b or {}).get("f1_per_snr_bin") or {}
            r["f1_bound_per_snr_bin"] = {k: bper.get(k) for k in per}
            r["f1_over_bound_per_snr_bin"] = {k: ratio(v, bper.get(k)) for k, v in per.items()}
    return records


def snr_bin_table(f1_by_method: dict[str, dict], n_by_bin: dict | None = None, *, bound: str = BOUND_METHOD,
                  label: str = "method") -> str:
    """Markdown table of F1 per SNR bin, one row per method (the bound's row last, marked
    "(bound)"; "-" everywhere when the bound did not run), each cell "F1 (F1 / bound)".

    Args:
      f1_by_method: method -> {"[lo,hi)": F1}.
      n_by_bin: optional {"[lo,hi)": number of scenes}, shown in the header.
      bound: the bound's method name.
      label: the first column's header.
    """
    bins = sorted({b for per in f1_by_method.values() for b in per}, key=_bin_lo)
    bper = f1_by_method.get(bound) or {}
    head = [f"{b} dB" + (f" (n={n_by_bin[b]})" if n_by_bin and b in n_by_bin else "") for b in bins]
    lines = [f"| {label} | " + " | ".join(head) + " |", "|---|" + "---:|" * len(bins)]
    for m in [m for m in f1_by_method if m != bound] + [bound]:
        per = f1_by_method.get(m)
        cells = []
        for b in bins:
            if per is None or b not in per:
                cells.append("-")
            elif m == bound:
                cells.append(fmt_number(per[b]))
            else:
                cells.append(f"{fmt_number(per[b])} ({fmt_number(ratio(per[b], bper.get(b)), '.2f', '-')})")
        lines.append(f"| {m + ' (bound)' if m == bound else m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        f"({cfg.gate_phi_deg:g} deg / {cfg.gate_r_m:g} m, conventions section 7); exact (spherical-wave) steering model "
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
        f"RMSE / sqrt(CRB) per parameter (deterministic CRB with expected powers, conventions section 7), summarised in the "
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
                      "F1 against SNR (dB)",
                  deploy_random=f"Deployment `{DEPLOY_SCENARIO}` (fixed line-of-sight BS, fixed noise floor), random "
                                "codes per scene: F1 against code_bits (0 = continuous)",
                  deploy_designed=f"Deployment `{DEPLOY_SCENARIO}`, one codebook designed against the CRB at "
                                  f"{DESIGN_SNR_DB:g} dB: F1 against code_bits (0 = continuous)",
                  nmse=f"Deployment `{DEPLOY_SCENARIO}`, designed {IMPAIRMENT_CODE_BITS}-bit codes: F1 against the "
                       "channel-estimation error channel_nmse_db (dB)",
                  phase_error=f"Deployment `{DEPLOY_SCENARIO}`, designed {IMPAIRMENT_CODE_BITS}-bit codes: F1 against "
                              "the surface's static phase error code_phase_error_deg (deg, std)",
                  failure=f"Deployment `{DEPLOY_SCENARIO}`, designed {IMPAIRMENT_CODE_BITS}-bit codes: F1 against the "
                          "fraction of stuck elements element_failure")
    scenarios = list(dict.fromkeys(r["scenario"] for r in records if r.get("scenario"))) or [meta["scenario"]]
    where = (f"`{scenarios[0]}` scenario" if len(scenarios) == 1
             else "scenarios " + ", ".join(f"`{x}`" for x in scenarios))
    lines = ["# rismvdr accuracy bench", "",
             f"{where}, {meta['n_scenes']} scenes per point, seed {meta['seed']}; "
             f"gates 5 deg / 5 deg / 1 m; default detector. B1: blind (each method finds K); "
             f"B2: oracle K ({', '.join(f'`{m}`' for m in meta.get('b2_methods') or B2_METHODS)}); "
             f"bound: `{BOUND_METHOD}`, the ML "
             f"refinement started at the true positions with the true K (the estimation limit of the "
             f"measurements under the gates; `mvdr-oracle` scans the noise-free true covariance instead of the "
             f"measurements, so its ratio can exceed 1). Cells: F1; F1 / bound: the method's F1 over the bound's "
             f"at the same point; '-': not run "
             f"(method does not apply, e.g. learned methods away from L = 16). Wall time "
             f"{meta['wall_s']:.0f} s"
             + (f" for the last part: the run was resumed (`--resume`) with {meta['resumed_records']} records "
                f"of an earlier, interrupted part" if meta.get("resumed_records") else "") + ".", ""]
    for sweep in sorted({r["sweep"] for r in records}, key=SWEEPS.index):
        rows = [r for r in records if r["sweep"] == sweep]
        values = list(dict.fromkeys(r["value"] for r in rows))
        methods = list(dict.fromkeys((r["suite"], r["method"]) for r in rows))
        if not any(name == BOUND_METHOD for _, name in methods):
            methods.append(("bound", BOUND_METHOD))  # the bound row stays, '-' where it did not run
        cell = {(r["suite"], r["method"], r["value"]): r["f1"] for r in rows}
        over = {(r["suite"], r["method"], r["value"]): r.get("f1_over_bound") for r in rows}
        lines += [f"## {titles.get(sweep, sweep)}", ""]
        if sweep == "ula":
            lines += [ula_setup(meta["n_scenes"]), ""]
        single = values == [None]
        head = ["F1", "F1 / bound"] if single else [f"{v:g}" for v in values]
        lines.append("| suite | method | " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * len(head))
        for suite, name in sorted(methods):
            cells = [fmt_number(cell[(suite, name, v)]) if (suite, name, v) in cell else "-" for v in values]
            if single:
                cells.append(fmt_number(over.get((suite, name, None)), ".2f", "-"))
            lines.append(f"| {suite} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
        bound_ran = any(r["method"] == BOUND_METHOD for r in rows)
        if not single and not bound_ran:
            lines += [f"F1 / bound: the bound `{BOUND_METHOD}` did not run in this sweep.", ""]
        elif not single:
            lines += [f"F1 / bound (F1 over `{BOUND_METHOD}`'s F1 at the same point; '-': not run or no bound):",
                      "", "| suite | method | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(head)]
            for suite, name in sorted(methods):
                cells = [fmt_number(over.get((suite, name, v)), ".2f", "-") for v in values]
                lines.append(f"| {suite} | {name} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += _snr_bin_section(rows)
        for sk in meta.get("skipped") or []:
            if sk["sweep"] == sweep:
                lines += [f"Not run: `{sk['method']}` at {sk['value']}: {sk['reason']}.", ""]
        if sweep == "ula":
            lines += _ratio_table(rows, values, methods)
    return "\n".join(lines)


def _snr_bin_section(rows) -> list[str]:
    """Per-SNR-bin F1 with the bound's F1 and each method's ratio, for the points of a sweep that
    span several SNR bins (their records carry `f1_per_snr_bin`; in practice `base`)."""
    out = []
    for value in dict.fromkeys(r["value"] for r in rows if r.get("f1_per_snr_bin")):
        at = [r for r in rows if r["value"] == value and r.get("f1_per_snr_bin")]
        f1 = {r["method"]: r["f1_per_snr_bin"] for r in sorted(at, key=lambda r: (r["suite"], r["method"]))}
        n_by_bin = next((r["n_scenes_per_snr_bin"] for r in at if r.get("n_scenes_per_snr_bin")), None)
        where = "" if value is None else f" at {value:g}"
        out += [f"F1 per SNR bin{where} (realised SNR of each scene, dB; n: scenes in the bin); cells: F1 "
                f"(F1 / bound), the bound `{BOUND_METHOD}` in the last row:", "",
                snr_bin_table(f1, n_by_bin), ""]
    return out


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
    """One compact markdown table (method rows) for the README: base-set F1, its ratio to the
    bound (`F1 / bound`; also in the lowest SNR bin of the base set when the records carry
    per-bin F1) and median position error, F1 at K = 3 for some SNRs, F1 at K = 5,
    single-source azimuth RMSE / sqrt(CRB) at the highest SNR, and the `ula` case's RMSE /
    sqrt(CRB) (phi / r) at its highest SNR; on the deployment, F1 with random and designed codes
    at each resolution, F1 / bound with designed 2-bit codes, and F1 at the worst point of each
    impairment sweep. Columns whose sweep was not run are left out. The bound's row is last,
    marked "(bound)", and present ('-') even where it did not run."""
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
                 ("F1 / bound base", base, lambda r: fmt_number(r.get("f1_over_bound"), ".2f", "-"))]
        bins = sorted({b for r in base.values() for b in r.get("f1_per_snr_bin") or {}}, key=_bin_lo)
        if bins:
            lo = bins[0]
            cols.append((f"F1 / bound base, {lo} dB", base,
                         lambda r, lo=lo: fmt_number((r.get("f1_over_bound_per_snr_bin") or {}).get(lo), ".2f", "-")))
        cols.append(("median err base (m)", base, lambda r: fmt_number(r["median_pos_err_m"])))
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
    for sweep, label in (("deploy_random", "random"), ("deploy_designed", "designed")):
        for v in sorted({r["value"] for r in records if r["sweep"] == sweep}, key=lambda b: (b != 0, -b)):
            bits = "continuous" if not v else f"{v:g}-bit"
            cols.append((f"F1 {label} {bits}", pick(sweep, v), lambda r: fmt_number(r["f1"])))
    if pick("deploy_designed", 2):
        cols.append(("F1 / bound designed 2-bit", pick("deploy_designed", 2),
                     lambda r: fmt_number(r.get("f1_over_bound"), ".2f", "-")))
    clean = pick("phase_error", 0) or pick("failure", 0)  # the designed 2-bit codes without impairment
    if clean and not pick("deploy_designed", 2):
        cols.append(("F1 unimpaired", clean, lambda r: fmt_number(r["f1"])))
    for sweep, label in (("nmse", "NMSE {v:g} dB"), ("phase_error", "phase error {v:g} deg"),
                         ("failure", "{p:g} % stuck")):  # each impairment sweep's worst point
        v = top(sweep)
        if v is not None:
            cols.append((f"F1 {label.format(v=v, p=100 * v)}", pick(sweep, v), lambda r: fmt_number(r["f1"])))
    methods = [m for m in dict.fromkeys(r["method"] for r in records) if m != BOUND_METHOD] + [BOUND_METHOD]
    lines = [f"`rismvdr bench accuracy` ({meta['n_scenes']} scenes per point, seed {meta['seed']}; "
             f"'-': not run at that point; bound: `{BOUND_METHOD}`, ML refinement started at the truth with the "
             f"true K; F1 / bound: F1 over the bound's F1 at the same point):", "",
             "| method | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        label = f"{m} (bound)" if m == BOUND_METHOD else m
        lines.append(f"| {label} | " + " | ".join(f(rows[m]) if m in rows else "-" for _, rows, f in cols) + " |")
    return "\n".join(lines)


def write_report(out, result: dict | None = None) -> list[str]:
    """(Re)write the CSV, markdown tables and plots of a report folder from its records
    (`result`, default: `out/accuracy.json`), e.g. after a change to the plots; returns the
    names written."""
    out = Path(out)
    if result is None:
        result = json.loads((out / "accuracy.json").read_text())
    meta, records = result["meta"], attach_bound(result["records"])
    write_records_csv(out / "accuracy.csv", records, RECORD_KEYS)
    written = ["accuracy.csv", "accuracy.md", "accuracy_summary.md"]
    with atomic_write(out / "accuracy_summary.md") as f:
        f.write(summary_table(records, meta) + "\n")
    with atomic_write(out / "accuracy.md") as f:
        f.write(_markdown(records, meta) + "\n")
    if plot_f1(out / "f1_vs_snr.png", records, dict(snr_k1=("K = 1", "SNR (dB)"), snr_k3=("K = 3", "SNR (dB)")),
               bound=BOUND_METHOD):
        written.append("f1_vs_snr.png")
    if plot_f1(out / "f1_vs_range.png", records, dict(r=("K = 3, SNR 10 dB", "source range bin midpoint (m)")),
               bound=BOUND_METHOD):
        written.append("f1_vs_range.png")
    bits = {0: "continuous", 1: "1 bit", 2: "2 bits"}
    if plot_f1(out / "f1_vs_codes.png", records, dict(
            deploy_random=("random codes", "code_bits", bits),
            deploy_designed=("designed codes", "code_bits", bits)), bound=BOUND_METHOD):
        written.append("f1_vs_codes.png")
    if plot_f1(out / "f1_vs_impairments.png", records, dict(
            nmse=("channel-estimation error", "channel_nmse_db (dB)"),
            phase_error=("surface phase error", "code_phase_error_deg (deg)"),
            failure=("stuck elements", "element_failure (fraction)")), bound=BOUND_METHOD):
        written.append("f1_vs_impairments.png")
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
