"""The benches' figures: F1 and RMSE-with-CRB curves of `bench accuracy`, speed ratios of `bench speed`.

Each `plot_*` writes one PNG (`rismvdr.eval.plots.save_figure`) from report records and returns
False, writing nothing, when the records hold nothing to plot. Every method keeps its style
(`rismvdr.eval.styles`) and the legend sits to the right of the panels.
"""
from __future__ import annotations

import math

from rismvdr.bench.sweeps import ULA_SCENARIO
from rismvdr.eval.plots import legend_outside, save_figure, subplots
from rismvdr.eval.styles import CRB_CURVE, bound_style, method_style
from rismvdr.physics.scenarios import get_scenario

__all__ = ["plot_f1", "plot_rmse_snr", "plot_ula", "plot_speed_ratios"]


def _series(records, sweep, key):
    """method -> (values, metric) of one sweep, in increasing value."""
    out: dict[str, list] = {}
    for r in records:
        if r["sweep"] == sweep:
            out.setdefault(r["method"], []).append((r["value"], math.nan if r.get(key) is None else r[key]))
    return {m: tuple(map(list, zip(*sorted(pairs, key=lambda p: (p[0] is None, p[0] or 0))))) for m, pairs in out.items()}


def plot_f1(path, records, panels: dict[str, tuple], *, bound: str | None = None) -> bool:
    """F1 against a sweep's variable, one panel per sweep run: `panels` = {sweep: (title, x label)}
    or {sweep: (title, x label, {value: tick label})} for a variable with few named values.
    The records of the method `bound` (e.g. `ml-oracle`), when given and present, are drawn as
    the reference curve, black dashed, labelled "bound (<name>)". False (nothing written) when
    none of the sweeps ran."""
    sweeps = [s for s in panels if any(r["sweep"] == s for r in records)]
    if not sweeps:
        return False
    fig, axes = subplots(1, len(sweeps), figsize=(6.5 * len(sweeps), 4.2), squeeze=False, layout="constrained")
    for ax, sweep in zip(axes[0], sweeps):
        series = _series(records, sweep, "f1")
        ref = series.pop(bound, None) if bound is not None else None
        for name, (x, y) in series.items():
            ax.plot(x, y, label=name, **method_style(name).kwargs())
        if ref is not None:
            ax.plot(ref[0], ref[1], label=f"bound ({bound})", **bound_style().kwargs())
        ax.set_title(panels[sweep][0])
        ax.set_xlabel(panels[sweep][1])
        if len(panels[sweep]) > 2:
            ax.set_xticks(list(panels[sweep][2]), list(panels[sweep][2].values()))
        ax.set_ylabel("F1")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    legend_outside(fig, axes)
    save_figure(fig, path)
    return True


def _rmse_panel(ax, records, sweep: str, key: str, crb_key: str, ylabel: str) -> None:
    """RMSE over true positives of every method against the sweep's SNR, semilog, with the
    sqrt(CRB) of the matched sources of the best-covered method (most TPs) per point."""
    for name, (x, y) in _series(records, sweep, key).items():
        ax.semilogy(x, y, label=name, **method_style(name).kwargs())
    crb_n, crb_y = {}, {}
    for r in records:
        if r["sweep"] == sweep and r.get(crb_key) is not None and math.isfinite(r[crb_key]):
            if r["value"] not in crb_n or (r["tp"] or 0) > crb_n[r["value"]]:
                crb_n[r["value"]], crb_y[r["value"]] = r["tp"] or 0, r[crb_key]
    if crb_y:
        xs = sorted(crb_y)
        ax.semilogy(xs, [crb_y[x] for x in xs], label="sqrt(CRB)", **method_style(CRB_CURVE).kwargs())
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def plot_rmse_snr(path, records) -> bool:
    """Azimuth RMSE over true positives against SNR at K = 1 (`snr_k1` sweep), with sqrt(CRB)."""
    if not any(r["sweep"] == "snr_k1" for r in records):
        return False
    fig, ax = subplots(figsize=(6.5, 4.2), layout="constrained")
    _rmse_panel(ax, records, "snr_k1", "rmse_phi_deg", "sqrt_crb_phi_deg", "azimuth RMSE over TPs (deg)")
    ax.set_title("K = 1")
    legend_outside(fig, ax)
    save_figure(fig, path)
    return True


def plot_ula(path, records) -> bool:
    """Azimuth and range RMSE over true positives against SNR for the `ula` sweep, with sqrt(CRB)."""
    if not any(r["sweep"] == "ula" for r in records):
        return False
    fig, axes = subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    _rmse_panel(axes[0], records, "ula", "rmse_phi_deg", "sqrt_crb_phi_deg", "azimuth RMSE over TPs (deg)")
    _rmse_panel(axes[1], records, "ula", "rmse_r_m", "sqrt_crb_r_m", "range RMSE over TPs (m)")
    legend_outside(fig, axes)
    cfg = get_scenario(ULA_SCENARIO)
    fig.suptitle(f"{cfg.name}: {cfg.nh}-element ULA, full array, L = {cfg.n_snapshots}, K = {cfg.k_min}, "
                 f"r in [{cfg.r_m[0]:g}, {cfg.r_m[1]:g}] m")
    save_figure(fig, path)
    return True


def plot_speed_ratios(path, records) -> bool:
    """Scenes/s over the NumPy original formula of every record that has a ratio (log bars)."""
    rows = [r for r in records if r.get("ratio_vs_numpy")]
    if not rows:
        return False
    fig, ax = subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    labels = [f"{r['name']} (b{r['batch']}, {r['grid']})" for r in rows]
    ax.barh(range(len(rows)), [r["ratio_vs_numpy"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("scenes/s over the NumPy original formula (spectrum: same grid; methods: the\n"
                  "121 x 61 x 16 spectrum grid, whatever grid or dictionary the method uses)")
    save_figure(fig, path)
    return True
