"""Plots for people: a scene's 2.5D spectrum with truth and detections, and per-method curves
against SNR (F1, position error, RMSE with the CRB). Matplotlib with the Agg backend; every
method keeps its style (`rismvdr.eval.styles`) and every legend sits outside the axes
(`legend_outside`); every figure is written atomically (`rismvdr.io.atomic_write`).
"""
from __future__ import annotations

import io as _io
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from rismvdr.eval.styles import CRB_CURVE, bound_style, method_style
from rismvdr.io import atomic_write
from rismvdr.physics.spectra import Grid

__all__ = ["subplots", "legend_outside", "plot_scene_map", "plot_snr_curves", "plot_error_cdf",
           "plot_training_curves", "save_figure"]


def _pyplot():
    """Matplotlib's pyplot on the Agg backend, imported on first use."""
    import matplotlib  # deferred: Matplotlib adds ~0.4 s to every command's start-up; only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as above

    return plt


def subplots(*args, **kwargs):
    """`matplotlib.pyplot.subplots` on the Agg backend: the figure of every rismvdr plot."""
    return _pyplot().subplots(*args, **kwargs)


def legend_outside(fig, axes, *, fontsize: float = 8):
    """One legend for the curves of `axes` (each label once, in drawing order), to the right of
    the figure, outside every axes (`save_figure` crops to include it). None when nothing is
    labelled."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    return fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=fontsize,
                      borderaxespad=0.5)


def save_figure(fig, path) -> None:
    """Write a figure as PNG atomically, then close it."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def plot_scene_map(path, power_db: np.ndarray, plane: np.ndarray, grid: Grid, *, truth=None,
                   detections=None, title: str = "") -> None:
    """The plane-maximised spectrum of one scene (dB, relative to its maximum) with the
    best range plane beside it; truth as white circles, detections as red crosses.

    Args:
      power_db: `[T, P]` map in dB.
      plane: `[T, P]` best plane index.
      grid: the map's grid.
      truth: optional (phi, theta, r) arrays of the true sources (radians, metres).
      detections: optional (phi, theta, r) arrays of the detections.
    """
    phi, theta, r = (np.rad2deg(a) if i < 2 else a for i, a in enumerate(grid.arrays()))
    rel = power_db - np.max(power_db)
    single_row = len(theta) == 1
    fig, axes = subplots(1, 2, figsize=(12, 4.2), layout="constrained")  # colour bars beside, not over, labels
    if single_row:  # linear array: a curve over phi
        axes[0].plot(phi, rel[0], color="k")
        axes[0].set_ylabel("spectrum (dB rel. max)")
        axes[1].plot(phi, np.asarray(r)[plane[0]], color="k")
        axes[1].set_ylabel("best range plane (m)")
    else:
        ext = [phi[0], phi[-1], theta[0], theta[-1]]
        lo = max(float(np.min(rel)), -30.0)  # a flat estimated map still shows its structure
        im = axes[0].imshow(rel, origin="lower", extent=ext, aspect="auto", vmin=min(lo, -0.1), vmax=0, cmap="viridis")
        fig.colorbar(im, ax=axes[0], label="MVDR spectrum, dB rel. max")
        im2 = axes[1].imshow(np.asarray(r)[plane], origin="lower", extent=ext, aspect="auto", cmap="magma")
        fig.colorbar(im2, ax=axes[1], label="range of the best plane (m)")
        for ax in axes:
            ax.set_ylabel("elevation theta (deg)")
    for ax in axes:
        ax.set_xlabel("azimuth phi (deg)")
        # range labels: the truth's below, the detections' above their markers, so a close pair stays legible
        for pts, style, offset in (
                (truth, dict(marker="o", facecolors="none", edgecolors="w", s=90, label="truth"), (5, -11)),
                (detections, dict(marker="x", color="r", s=60, label="detection"), (5, 4))):
            if pts is None or len(pts[0]) == 0:
                continue
            y = np.zeros(len(pts[0])) if single_row else np.rad2deg(pts[1])
            if single_row:
                y = np.interp(np.rad2deg(pts[0]), phi, rel[0]) if ax is axes[0] else pts[2]
            ax.scatter(np.rad2deg(pts[0]), y, **style)
            if ax is axes[0]:
                for px, py, pr in zip(np.rad2deg(pts[0]), y, pts[2]):
                    ax.annotate(f"{pr:.1f} m", (px, py), textcoords="offset points", xytext=offset,
                                fontsize=7, color=style.get("color", "w"))
    if axes[0].get_legend_handles_labels()[0]:  # above the map, on grey so that the white circles show
        axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, facecolor="0.6",
                       borderaxespad=0.3)
    fig.suptitle(title)
    save_figure(fig, path)


def _bins(metrics: Mapping) -> tuple[list[float], list[str]]:
    per = metrics.get("per_snr_bin") or {}
    keyed = sorted(per, key=lambda b: float(b.strip("[)").split(",")[0]))
    centres = [float(b.strip("[)").split(",")[0]) + 2.5 for b in keyed]
    return centres, keyed


def _val(x):
    return math.nan if x is None else float(x)


def plot_snr_curves(path, metrics_by_method: Mapping[str, Mapping], *, title: str = "",
                    bound: str | None = "ml-oracle") -> None:
    """F1, median position error and azimuth RMSE (with sqrt CRB) against SNR, per method, each
    in its style (`rismvdr.eval.styles`), one legend to the right of the panels.

    Args:
      metrics_by_method: method -> metrics dict of `rismvdr.eval.metrics.evaluate` (with
        `per_snr_bin`).
      bound: the method drawn as the reference curve when it is among the methods (default
        `ml-oracle`, the accuracy limit; None: none): black dashed in every panel (sqrt(CRB) is
        black dotted), labelled "bound (<name>)", drawn above the other curves.
    """
    fig, axes = subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    crb_drawn = False
    for name, m in metrics_by_method.items():
        x, keys = _bins(m)
        if not keys:
            continue
        per = m["per_snr_bin"]
        style, label = (bound_style(), f"bound ({name})") if name == bound else (method_style(name), name)
        axes[0].plot(x, [_val(per[k]["f1"]) for k in keys], label=label, **style.kwargs())
        axes[1].semilogy(x, [_val(per[k]["median_pos_err_m"]) for k in keys], label=label, **style.kwargs())
        axes[2].semilogy(x, [_val(per[k]["rmse_phi_deg"]) for k in keys], label=label, **style.kwargs())
        crb = [_val(per[k].get("sqrt_crb_phi_deg")) for k in keys]
        if not crb_drawn and np.any(np.isfinite(crb)):
            axes[2].semilogy(x, crb, label="sqrt(CRB) (matched sources)", **method_style(CRB_CURVE).kwargs())
            crb_drawn = True
    axes[0].set_ylabel("F1")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylabel("median 3-D position error over TPs (m)")
    axes[2].set_ylabel("azimuth RMSE over TPs (deg)")
    for ax in axes:
        ax.set_xlabel("SNR bin centre (dB)")
        ax.grid(True, alpha=0.3)
    legend_outside(fig, axes)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_error_cdf(path, errors_by_method: Mapping[str, Sequence[float]], *, title: str = "") -> None:
    """Empirical CDF of the 3-D position error over true positives, per method (each in its
    style, `rismvdr.eval.styles`; markers on every tenth of the curve), legend to the right."""
    fig, ax = subplots(figsize=(6, 4.2), layout="constrained")
    for name, e in errors_by_method.items():
        e = np.sort(np.asarray(e, float))
        if e.size:
            ax.semilogx(np.maximum(e, 1e-4), np.arange(1, e.size + 1) / e.size, label=name, markevery=0.1,
                        **method_style(name).kwargs())
    ax.set_xlabel("3-D position error (m)")
    ax.set_ylabel("fraction of true positives")
    ax.grid(True, alpha=0.3)
    legend_outside(fig, ax)
    ax.set_title(title)
    save_figure(fig, path)


def plot_training_curves(path, metrics_jsonl) -> None:
    """Loss curves of a run from its `metrics.jsonl`: training loss and terms against the step
    (log scale), validation terms, and the validation peak F1 / objective."""

    train, val = [], []
    with open(metrics_jsonl) as f:
        for line in f:
            rec = json.loads(line)
            (val if any(k.startswith("val/") for k in rec) else train).append(rec)
    fig, axes = subplots(1, 3, figsize=(15, 4))
    if train:
        steps = [r["step"] for r in train]
        keys = [k for k in train[0] if k not in ("step", "phase", "finite", "skipped", "grad_norm",
                                                  "steps_per_s", "scenes_per_s")]
        for k in keys:
            axes[0].plot(steps, [max(r.get(k, np.nan), 1e-8) for r in train], label=k, lw=1.2 if k == "loss" else 0.8)
        axes[0].set_yscale("log")
        axes[0].set_title("training (batch)")
        axes[0].legend(fontsize=7)
    if val:
        steps = [r["step"] for r in val]
        terms = [k for k in val[0] if k.startswith("val/") and not k.startswith("val/peak") and k != "val/objective"
                 and k != "val/refiner_fallbacks"]
        for k in terms:
            axes[1].plot(steps, [max(r.get(k, np.nan), 1e-8) for r in val], marker="o", label=k[4:])
        axes[1].set_yscale("log")
        axes[1].set_title("validation loss terms (EMA weights)")
        axes[1].legend(fontsize=7)
        for k in ("val/peak_precision", "val/peak_recall", "val/peak_f1"):
            if k in val[0]:
                axes[2].plot(steps, [r.get(k, np.nan) for r in val], marker="o", label=k[9:])
        axes[2].set_ylim(0, 1)
        axes[2].set_title("validation peaks (learned MVDR)")
        if axes[2].get_legend_handles_labels()[0]:
            axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    save_figure(fig, path)
