"""`rismvdr bench accuracy`: accuracy of every localizer on the `seed` scenario, as sweeps.

Suites (issue 8):

* **B1** (blind): each method finds the number of sources itself, the registry as is.
* **B2** (oracle K): methods given the truth. For now these are the two registered methods
  that take it, `music-oracle-k` (MUSIC with the true K) and `mvdr-oracle` (MVDR on the true
  covariance, which carries the true K in its rank); their points are reported under B2.

Sweeps (each point a fresh test set of `n_scenes` scenes, seed `fold_in(seed, point)`):

* `base`: the `seed` scenario as is (SNR uniform in [-5, 20] dB, K uniform in 1..5, L = 16).
* `snr`: fixed SNR -10 .. 25 dB in 5 dB steps, at K = 1 (`snr_k1`) and K = 3 (`snr_k3`).
* `k`: K = 1 .. 5 at 10 dB.
* `l`: L (snapshots) in 4, 8, 16, 32, 64 at 10 dB, K = 3.
* `r`: range bins 0.5-2, 2-4, 4-6, 6-8, 8-10 m (all sources of a scene in the bin) at 10 dB,
  K = 3; the search box stays the base scenario's 0.5..10 m, so no method is told the bin.
* `ula`: a full-array near-field case comparable to the literature, on its own scenario
  `ula15` (whatever the base scenario): 15-element half-wavelength ULA, L = 100 snapshots,
  K = 2 equal-power sources, phi in [-60, 60] deg, r in [3.5, 15] m (Fresnel region), SNR
  -10 .. 25 dB (the `snr_values_db`); only the MUSIC / MVDR family that applies in full-array
  mode (`ULA_METHODS`), reported as F1 and RMSE / sqrt(CRB) per parameter
  (`ula_rmse_vs_snr.png`, a second table in `accuracy.md`).

`--quick` (under 10 minutes on a 2-core CPU) thins every sweep: SNR -10, 0, 10, 20 dB, K 1, 3,
5, L 4, 16, 32, range bins 0.5-2, 4-6, 8-10 m, 16 scenes per point and the methods of
`QUICK_METHODS`.

Learned methods run only where the shipped model fits (RIS mode, the model's N, M and L: the
shipped model was trained for L = 16, so the `l` sweep runs them at L = 16 only).

Outputs in the report folder: `accuracy.json` (`{"meta": ..., "records": [...]}`, a flat
list of records: `pandas.DataFrame(json.load(f)["records"])`), `accuracy.csv` (the same
records), `accuracy.md` (one F1 table per sweep, method x value), `accuracy_summary.md` (one
compact table, the one the README includes), and PNG plots (`f1_vs_snr.png`, `f1_vs_range.png`,
`rmse_phi_vs_snr_k1.png`, `position_error_cdf_base.png`, `ula_rmse_vs_snr.png`).
"""
from __future__ import annotations

import csv
import json
import dataclasses
import logging
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from rismvdr.eval import metrics, plots
from rismvdr.eval.evaluation import evaluate_detections, truth_crb
from rismvdr.files import atomic_write, to_jsonable, write_json
from rismvdr.localize.registry import METHODS, localize, method_names, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

__all__ = ["SWEEPS", "DEFAULT_SWEEPS", "ULA_SCENARIO", "ULA_METHODS", "SNR_VALUES_DB", "L_VALUES", "L_VALUES_QUICK", "SNR_VALUES_QUICK_DB", "K_VALUES_QUICK", "R_BINS_M", "R_BINS_QUICK_M", "QUICK_METHODS", "B2_METHODS", "BenchPoint", "bench_points", "point_seed", "run_accuracy", "summary_table", "write_report",
           "RECORD_KEYS", "METRIC_KEYS"]

log = logging.getLogger(__name__)

#: Sweep names accepted by `--sweeps` (`snr` is `snr_k1` and `snr_k3`).
SWEEPS = ("base", "snr", "snr_k1", "snr_k3", "k", "l", "r", "ula")
#: Sweeps run when none are named (also by `--quick`).
DEFAULT_SWEEPS = ("base", "snr", "k", "l", "r", "ula")
#: The scenario of the `ula` sweep (full-array near-field ULA, `rismvdr.physics.scenarios`).
ULA_SCENARIO = "ula15"
#: Methods of the `ula` sweep: the MUSIC / MVDR family that applies in full-array mode.
ULA_METHODS = ("music-mdl", "music-aic", "music-oracle-k", "mvdr-sample", "mvdr-oracle")
SNR_VALUES_DB = tuple(range(-10, 30, 5))  # -10 .. 25 dB
K_VALUES = (1, 2, 3, 4, 5)
L_VALUES = (4, 8, 16, 32, 64)
#: `--quick` values (L stops at 32: `somp-ml` at L = 64 takes minutes per 20 scenes on a 2-core CPU).
L_VALUES_QUICK = (4, 16, 32)
SNR_VALUES_QUICK_DB = (-10, 0, 10, 20)
K_VALUES_QUICK = (1, 3, 5)
#: Source-range bins (m) of the `r` sweep (the search box stays the base scenario's 0.5..10 m).
R_BINS_M = ((0.5, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0))
R_BINS_QUICK_M = ((0.5, 2.0), (4.0, 6.0), (8.0, 10.0))
#: Methods of `--quick` (those registered and applicable).
QUICK_METHODS = ("mvdr-oracle", "mvdr-als", "somp-ml", "learned", "music-oracle-k")
#: (sweep, value, method) pairs not run on the CPU backend, with the reason (reported in the
#: markdown and the JSON meta): `somp-ml` at L = 64 stops making progress inside XLA on the CPU
#: (jax 0.10.2: the process waits at 0 % CPU for over 10 minutes on 4 scenes; L = 32 takes
#: 1.4 s). Not yet understood; see benchmarks/README.md.
CPU_SKIPS = {("l", 64, "somp-ml"): "hangs inside XLA on the CPU backend (jax 0.10.2), cause not yet found"}
#: Methods given the truth (oracle K): reported under suite B2.
B2_METHODS = ("music-oracle-k", "mvdr-oracle")
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


class BenchPoint(NamedTuple):
    """One test set of a sweep: `variable` = `value` with the scenario `overrides`, on the
    named `scenario` (None: the run's base scenario)."""

    sweep: str  # base, snr_k1, snr_k3, k, l, ula
    variable: str  # "none", "snr_db", "k", "n_snapshots"
    value: float | int | None
    overrides: dict
    scenario: str | None = None


def bench_points(sweeps=SWEEPS, *, snr_values_db=SNR_VALUES_DB, l_values=L_VALUES,
                 k_values=K_VALUES, r_bins_m=R_BINS_M) -> list[BenchPoint]:
    """The points of the chosen sweeps, in a fixed order."""
    unknown = [s for s in sweeps if s not in SWEEPS]
    if unknown:
        raise ValueError(f"sweeps: unknown {', '.join(unknown)}; known: {', '.join(SWEEPS)}")
    pts = []
    if "base" in sweeps:
        pts.append(BenchPoint("base", "none", None, {}))
    for k in (1, 3):
        if "snr" in sweeps or f"snr_k{k}" in sweeps:
            pts += [BenchPoint(f"snr_k{k}", "snr_db", s, dict(snr_db=(float(s), float(s)), k_min=k, k_max=k))
                    for s in snr_values_db]
    if "k" in sweeps:
        pts += [BenchPoint("k", "k", k, dict(snr_db=(10.0, 10.0), k_min=k, k_max=k)) for k in k_values]
    if "l" in sweeps:
        pts += [BenchPoint("l", "n_snapshots", n, dict(snr_db=(10.0, 10.0), k_min=3, k_max=3, n_snapshots=n))
                for n in l_values]
    if "r" in sweeps:
        pts += [BenchPoint("r", "r_bin_mid_m", 0.5 * (lo + hi), dict(snr_db=(10.0, 10.0), k_min=3, k_max=3, r_m=(lo, hi)))
                for lo, hi in r_bins_m]
    if "ula" in sweeps:
        pts += [BenchPoint("ula", "snr_db", s, dict(snr_db=(float(s), float(s))), scenario=ULA_SCENARIO)
                for s in snr_values_db]
    return pts


def point_seed(point: BenchPoint) -> int:
    """A stable per-point integer folded into the bench seed: the same point gets the same test
    set whatever other points or sweeps run."""
    return zlib.crc32(f"{point.sweep}:{point.value}".encode()) & 0x7FFFFFFF


def _load_model():
    """The shipped learned model, or None when it is missing or broken."""
    try:
        from rismvdr.localize.learned import default_weights_dir, load_learned

        return load_learned() if (default_weights_dir() / "model.json").is_file() else None
    except (OSError, ValueError) as exc:  # a broken install must not stop the classical bench
        log.warning("shipped learned model not loadable: %s", exc)
        return None


def _learned_fits(model, cfg, geometry) -> bool:
    if model is None:
        return False
    b = model.backbone_cfg
    return (b.full_array == (cfg.mode == "full") and b.n_elements == geometry.n_elements
            and b.n_snapshots == cfg.n_snapshots and (b.full_array or b.n_measurements == cfg.n_bs))


def _applies(name: str, cfg) -> bool:
    m = METHODS[name]
    full = cfg.mode == "full"
    return not (m.full_array_only and not full or m.ris_only and full)


def _tp_errors(scenes, d) -> np.ndarray:
    """3-D position errors (m) of the true positives."""
    nanw = lambda a, v: np.where(v, np.asarray(a, float), np.nan)  # noqa: E731
    mask = np.asarray(scenes.mask)
    pairs = metrics.match_pairs(nanw(d.phi, d.valid), nanw(d.theta, d.valid), nanw(d.r, d.valid),
                                nanw(scenes.phi, mask), nanw(scenes.theta, mask), nanw(scenes.r, mask),
                                est_valid=d.valid, gt_mask=mask)
    return pairs.pos_err[pairs.is_tp]


def _record(point: BenchPoint, name: str, cfg, n_scenes: int, seed: int, ev: dict, seconds: float) -> dict:
    rec = dict(suite="B2" if name in B2_METHODS else "B1", sweep=point.sweep, variable=point.variable,
               value=point.value, method=name, scenario=cfg.name, n_scenes=n_scenes, seed=seed,
               snr_db=cfg.snr_db[0] if cfg.snr_db[0] == cfg.snr_db[1] else None,
               k=cfg.k_min if cfg.k_min == cfg.k_max else None, n_snapshots=cfg.n_snapshots)
    rec.update({k: ev.get(k) for k in METRIC_KEYS})
    rec["seconds"] = seconds
    return to_jsonable(rec)


def _fmt(v, digits=3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def ula_setup(n_scenes: int | None = None) -> str:
    """The exact setup of the `ula` sweep, one paragraph (from the `ula15` scenario and the
    settings the bench localizes it with)."""
    per_point = f"a fresh test set of {n_scenes} scenes per SNR" if n_scenes else "a fresh test set per SNR"
    cfg = get_scenario(ULA_SCENARIO)
    g = scenario_geometry(cfg)
    st = settings_for_scenario(cfg)
    det = st.detector
    lam, n = cfg.wavelength, g.n_elements
    d = (n - 1) * cfg.spacing_h  # aperture
    fres_lo, fres_hi = 0.62 * math.sqrt(d ** 3 / lam), 2 * d ** 2 / lam
    n_phi = int(round((st.phi_deg[1] - st.phi_deg[0]) / st.phi_step_deg)) + 1
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
        f"Detector grid: phi {st.phi_deg[0]:g} .. {st.phi_deg[1]:g} deg in {st.phi_step_deg:g} deg steps "
        f"({n_phi} points) x one theta row x {st.n_planes} range planes uniform in 1/r over "
        f"[{st.r_m[0]:g}, {st.r_m[1]:g}] m; {thr}, at most {det.k_max} detections, NMS at the gates, "
        f"{det.refine_iters} Newton steps of continuous (phi, r) refinement (no K given except to "
        f"`music-oracle-k` and `mvdr-oracle`). MUSIC: sample covariance, order by MDL / AIC with L snapshots "
        f"or the true K; MVDR: sample covariance (`mvdr-sample`) or the true covariance (`mvdr-oracle`), "
        f"diagonal loading {st.delta_rel:g} tr(R)/N. Matched by Hungarian assignment; a true positive is "
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
            cells = [_fmt(cell[(suite, name, v)]) if (suite, name, v) in cell else "-" for v in values]
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
    cell = {(r["suite"], r["method"], r["value"]): f"{_fmt(r.get('rmse_over_sqrt_crb_phi'), 2)} / "
            f"{_fmt(r.get('rmse_over_sqrt_crb_r'), 2)}" for r in rows}
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
        cols += [("F1 base", base, lambda r: _fmt(r["f1"])),
                 ("median err base (m)", base, lambda r: _fmt(r["median_pos_err_m"]))]
    snr3 = [v for v in (0, 10, 20) if pick("snr_k3", v)]
    cols += [(f"F1 K=3, {v:g} dB", pick("snr_k3", v), lambda r: _fmt(r["f1"])) for v in snr3]
    if pick("k", 5):
        cols.append(("F1 K=5, 10 dB", pick("k", 5), lambda r: _fmt(r["f1"])))
    r_vals = sorted({r["value"] for r in records if r["sweep"] == "r"})
    cols += [(f"F1 r bin {v:g} m", pick("r", v), lambda r: _fmt(r["f1"])) for v in r_vals[:1] + r_vals[-1:]]
    if top("snr_k1") is not None:
        v = top("snr_k1")
        cols.append((f"RMSE/sqrt(CRB) phi, K=1, {v:g} dB", pick("snr_k1", v),
                     lambda r: _fmt(r["rmse_over_sqrt_crb_phi"], 2)))
    if top("ula") is not None:
        v = top("ula")
        cols += [(f"ULA F1, {v:g} dB", pick("ula", v), lambda r: _fmt(r["f1"])),
                 (f"ULA RMSE/sqrt(CRB) phi / r, {v:g} dB", pick("ula", v),
                  lambda r: f"{_fmt(r['rmse_over_sqrt_crb_phi'], 2)} / {_fmt(r['rmse_over_sqrt_crb_r'], 2)}")]
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [f"`rismvdr bench accuracy` ({meta['n_scenes']} scenes per point, seed {meta['seed']}; "
             f"'-': not run at that point):", "",
             "| method | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f(rows[m]) if m in rows else "-" for _, rows, f in cols) + " |")
    return "\n".join(lines)


def _style(i: int) -> dict:
    """Line style of the i-th method: 10 colours, then a new line style and marker, so that
    13+ methods stay distinguishable."""
    return dict(color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3], marker=("o", "s", "^")[i // 10 % 3])


def _series(records, sweep, key):
    """method -> (values, metric) of one sweep."""
    out: dict[str, tuple[list, list]] = {}
    for r in records:
        if r["sweep"] == sweep:
            xs, ys = out.setdefault(r["method"], ([], []))
            xs.append(r["value"])
            ys.append(math.nan if r.get(key) is None else r[key])
    return out


def _plot_f1(path, records, panels: dict[str, tuple[str, str]]) -> bool:
    """F1 against a sweep's variable, one panel per sweep run: `panels` = {sweep: (title, x label)}."""
    import matplotlib.pyplot as plt

    sweeps = [s for s in panels if any(r["sweep"] == s for r in records)]
    if not sweeps:
        return False
    fig, axes = plt.subplots(1, len(sweeps), figsize=(6.5 * len(sweeps), 4.2), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for i, (name, (x, y)) in enumerate(_series(records, sweep, "f1").items()):
            ax.plot(x, y, label=name, **_style(i))
        ax.set_title(panels[sweep][0])
        ax.set_xlabel(panels[sweep][1])
        ax.set_ylabel("F1")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    plots.save_figure(fig, path)
    return True


def _rmse_panel(ax, records, sweep: str, key: str, crb_key: str, ylabel: str) -> None:
    """RMSE over true positives of every method against the sweep's SNR, semilog, with the
    sqrt(CRB) of the matched sources of the best-covered method (most TPs) per point."""
    for i, (name, (x, y)) in enumerate(_series(records, sweep, key).items()):
        ax.semilogy(x, y, label=name, **_style(i))
    crb_n, crb_y = {}, {}
    for r in records:
        if r["sweep"] == sweep and r.get(crb_key) is not None and math.isfinite(r[crb_key]):
            if r["value"] not in crb_n or (r["tp"] or 0) > crb_n[r["value"]]:
                crb_n[r["value"]], crb_y[r["value"]] = r["tp"] or 0, r[crb_key]
    if crb_y:
        xs = sorted(crb_y)
        ax.semilogy(xs, [crb_y[x] for x in xs], "k--", label="sqrt(CRB)")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_rmse_snr(path, records) -> bool:
    import matplotlib.pyplot as plt

    if not any(r["sweep"] == "snr_k1" for r in records):
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _rmse_panel(ax, records, "snr_k1", "rmse_phi_deg", "sqrt_crb_phi_deg", "azimuth RMSE over TPs (deg)")
    ax.set_title("K = 1")
    plots.save_figure(fig, path)
    return True


def _plot_ula(path, records) -> bool:
    """Azimuth and range RMSE over true positives against SNR for the `ula` sweep, with sqrt(CRB)."""
    import matplotlib.pyplot as plt

    if not any(r["sweep"] == "ula" for r in records):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _rmse_panel(axes[0], records, "ula", "rmse_phi_deg", "sqrt_crb_phi_deg", "azimuth RMSE over TPs (deg)")
    _rmse_panel(axes[1], records, "ula", "rmse_r_m", "sqrt_crb_r_m", "range RMSE over TPs (m)")
    cfg = get_scenario(ULA_SCENARIO)
    fig.suptitle(f"{cfg.name}: {cfg.nh}-element ULA, full array, L = {cfg.n_snapshots}, K = {cfg.k_min}, "
                 f"r in [{cfg.r_m[0]:g}, {cfg.r_m[1]:g}] m")
    plots.save_figure(fig, path)
    return True


def _write_csv(path, records) -> None:
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(RECORD_KEYS), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in RECORD_KEYS})


def run_accuracy(out, *, n_scenes: int = 200, seed: int = 0, methods=None, sweeps=DEFAULT_SWEEPS,
                 snr_values_db=None, quick: bool = False, scenario: str = "seed",
                 progress: bool = True, resume: bool = False) -> dict:
    """Run the accuracy bench and write the report folder.

    Args:
      out: report folder (created).
      n_scenes: scenes per point.
      seed: PRNG seed; a point's scenes use `fold_in(key(seed), point_seed(point))`.
      methods: method names (default: every registered method that applies; `quick`:
        `QUICK_METHODS`). The `ula` sweep runs `ULA_METHODS`, intersected with `methods` when
        given.
      sweeps: subset of `SWEEPS`.
      snr_values_db: the SNR values (dB) of the `snr` and `ula` sweeps (default -10 .. 25 in 5 dB
        steps; `quick`: `SNR_VALUES_QUICK_DB`).
      quick: use `QUICK_METHODS` when `methods` is None, and the thinner `*_QUICK` values.
      scenario: the base scenario (default `seed`).
      progress: tqdm bar over points (auto-off when not a terminal).
      resume: keep the records of an earlier (interrupted) run in `out/accuracy.json` with the
        same scenario, scene count and seed, and run only the (point, method) pairs it lacks.

    Returns:
      `{"meta": ..., "records": [...]}` as written to `accuracy.json`.
    """
    if n_scenes < 1:
        raise ValueError(f"scenes: need at least 1 scene per point, got {n_scenes}")
    base_cfg = get_scenario(scenario)
    if methods:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
        names = list(dict.fromkeys(methods))
    else:
        names = method_names(full_array=base_cfg.mode == "full")
        if quick:
            names = [n for n in QUICK_METHODS if n in names]
    l_values = L_VALUES_QUICK if quick else L_VALUES
    if snr_values_db is None:
        snr_values_db = SNR_VALUES_QUICK_DB if quick else SNR_VALUES_DB
    points = bench_points(tuple(sweeps), snr_values_db=tuple(snr_values_db), l_values=l_values,
                          k_values=K_VALUES_QUICK if quick else K_VALUES,
                          r_bins_m=R_BINS_QUICK_M if quick else R_BINS_M)
    if not points:
        raise ValueError(f"sweeps: none chosen; known: {', '.join(SWEEPS)}")
    ula_names = [n for n in ULA_METHODS if not methods or n in names]
    if "ula" in sweeps and not ula_names:
        log.warning("sweep ula skipped: it runs only %s, none of them among the chosen methods",
                    ", ".join(ULA_METHODS))
        points = [p for p in points if p.sweep != "ula"]
        if not points:
            raise ValueError(f"methods: the ula sweep runs only {', '.join(ULA_METHODS)}; none chosen")
    model = _load_model() if any(METHODS[n].learned for n in names) else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, done, skipped, n_resumed = [], set(), [], 0
    if resume and (out / "accuracy.json").is_file():
        prev = json.loads((out / "accuracy.json").read_text())
        pm = prev.get("meta", {})
        if (pm.get("scenario"), pm.get("n_scenes"), pm.get("seed")) != (base_cfg.name, n_scenes, seed):
            raise ValueError(f"resume: {out / 'accuracy.json'} holds scenario {pm.get('scenario')}, "
                             f"{pm.get('n_scenes')} scenes per point, seed {pm.get('seed')}; this run asks for "
                             f"{base_cfg.name}, {n_scenes}, {seed}")
        records = list(prev.get("records", []))
        n_resumed = len(records)
        done = {(r["sweep"], r["value"], r["method"]) for r in records}
        print(f"resume: {len(records)} records of {out / 'accuracy.json'} kept; their points and methods are "
              f"not run again")
    bar = tqdm(points, desc="bench points", unit="point", disable=None if progress else True)
    for point in bar:
        cfg = get_scenario(point.scenario or scenario, **point.overrides)
        geometry = scenario_geometry(cfg)
        tp = time.perf_counter()
        todo = []  # the methods this point runs, decided before any scene is simulated
        for name in (ula_names if point.sweep == "ula" else names):
            m = METHODS[name]
            if not _applies(name, cfg) or m.learned and not _learned_fits(model, cfg, geometry):
                continue
            if (point.sweep, point.value, name) in done:  # --resume: already in the report
                continue
            if jax.default_backend() == "cpu" and (point.sweep, point.value, name) in CPU_SKIPS:
                skipped.append(dict(sweep=point.sweep, value=point.value, method=name,
                                    reason=CPU_SKIPS[(point.sweep, point.value, name)]))
                log.warning("%s not run at %s=%s: %s", name, point.variable, point.value, skipped[-1]["reason"])
                continue
            todo.append(name)
        if not todo:
            continue
        scenes = simulate(cfg, jax.random.fold_in(jax.random.key(seed), point_seed(point)), n_scenes)
        crb = truth_crb(scenes, geometry, model=cfg.steering_model)
        # the r sweep draws sources in a range bin but searches the base scenario's whole box
        settings = settings_for_scenario(cfg.replace(r_m=base_cfg.r_m) if point.sweep == "r" else cfg)
        f1s = []
        for name in todo:
            m = METHODS[name]
            try:
                res = localize(name, scenes, geometry, settings, progress=False, keep_maps=False,
                               model=model if m.learned else None)
            except ValueError as exc:
                if "trained for" in str(exc):
                    log.info("%s skipped at %s=%s: %s", name, point.variable, point.value, exc)
                    continue
                raise
            d = res.detections
            ev = evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid, crb=crb)
            records.append(_record(point, name, cfg, n_scenes, seed, ev, res.seconds))
            f1s.append(f"{name} {_fmt(ev['f1'], 2)}")
            if point.sweep == "base":
                records[-1]["tp_pos_err_m"] = _tp_errors(scenes, d).tolist()  # the error CDF of the report
        label = point.sweep if point.value is None else f"{point.sweep} {point.variable}={point.value:g}"
        tqdm.write(f"[{len(records)} records] {label}: F1 " + ", ".join(f1s)
                   + f" ({time.perf_counter() - tp:.1f} s)")
        sys.stdout.flush()  # one line per point, also when stdout is a file
        partial = dict(scenario=base_cfg.name, n_scenes=n_scenes, seed=seed, partial=True)
        write_json(out / "accuracy.json", dict(meta=partial, records=records))  # survives an interrupt
        _write_csv(out / "accuracy.csv", records)
    bar.close()
    wall = time.perf_counter() - t0
    meta = dict(scenario=base_cfg.name, n_scenes=n_scenes, seed=seed, quick=quick, methods=names,
                sweeps=list(sweeps), snr_values_db=list(snr_values_db), l_values=list(l_values),
                r_bins_m=[list(b) for b in (R_BINS_QUICK_M if quick else R_BINS_M)], b2_methods=list(B2_METHODS), wall_s=wall,
                base_config=dataclasses.asdict(base_cfg), generator="rismvdr bench accuracy", skipped=skipped,
                resumed_records=n_resumed)
    result: dict[str, Any] = dict(meta=to_jsonable(meta), records=records)
    write_json(out / "accuracy.json", result)
    written = write_report(out, result)
    print((out / "accuracy.md").read_text())
    print(f"wrote accuracy.json, {', '.join(written)} to {out} (wall time {wall:.1f} s, {len(points)} points, "
          f"{len(records)} records)")
    return result


def write_report(out, result: dict | None = None) -> list[str]:
    """(Re)write the CSV, markdown tables and plots of a report folder from its records
    (`result`, default: `out/accuracy.json`), e.g. after a change to the plots; returns the
    names written."""
    out = Path(out)
    if result is None:
        result = json.loads((out / "accuracy.json").read_text())
    meta, records = result["meta"], result["records"]
    _write_csv(out / "accuracy.csv", records)
    written = ["accuracy.csv", "accuracy.md", "accuracy_summary.md"]
    with atomic_write(out / "accuracy_summary.md") as f:
        f.write(summary_table(records, meta) + "\n")
    with atomic_write(out / "accuracy.md") as f:
        f.write(_markdown(records, meta) + "\n")
    if _plot_f1(out / "f1_vs_snr.png", records, dict(snr_k1=("K = 1", "SNR (dB)"), snr_k3=("K = 3", "SNR (dB)"))):
        written.append("f1_vs_snr.png")
    if _plot_f1(out / "f1_vs_range.png", records, dict(r=("K = 3, SNR 10 dB", "source range bin midpoint (m)"))):
        written.append("f1_vs_range.png")
    if _plot_rmse_snr(out / "rmse_phi_vs_snr_k1.png", records):
        written.append("rmse_phi_vs_snr_k1.png")
    if _plot_ula(out / "ula_rmse_vs_snr.png", records):
        written.append("ula_rmse_vs_snr.png")
    base_errors = {r["method"]: np.asarray(r["tp_pos_err_m"]) for r in records
                   if r["sweep"] == "base" and r.get("tp_pos_err_m") is not None}
    if base_errors:
        plots.plot_error_cdf(out / "position_error_cdf_base.png", base_errors,
                             title=f"base set: 3-D position error of true positives ({meta['n_scenes']} scenes)")
        written.append("position_error_cdf_base.png")
    return written
