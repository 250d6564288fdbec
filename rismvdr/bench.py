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
* `l`: L (snapshots) in 4, 8, 16, 32, 64 at 10 dB, K = 3 (`--quick`: up to 32).

Learned methods run only where the shipped model fits (RIS mode, the model's N, M and L: the
shipped model was trained for L = 16, so the `l` sweep runs them at L = 16 only).

Outputs in the report folder: `accuracy.json` (`{"meta": ..., "records": [...]}`, a flat
list of records: `pandas.DataFrame(json.load(f)["records"])`), `accuracy.csv` (the same
records), `accuracy.md` (one F1 table per sweep, method x value), and PNG plots
(`f1_vs_snr.png`, `rmse_phi_vs_snr_k1.png`, `position_error_cdf_base.png`).
"""
from __future__ import annotations

import csv
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

from rismvdr import metrics, plots
from rismvdr.evaluation import evaluate_detections, truth_crb
from rismvdr.io import atomic_write, write_json
from rismvdr.methods import METHODS, localize, method_names, settings_for_scenario
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

__all__ = ["SWEEPS", "SNR_VALUES_DB", "L_VALUES", "L_VALUES_QUICK", "QUICK_METHODS", "B2_METHODS", "BenchPoint", "bench_points", "point_seed", "run_accuracy",
           "RECORD_KEYS", "METRIC_KEYS"]

log = logging.getLogger(__name__)

#: Sweep names accepted by `--sweeps` (`snr` is `snr_k1` and `snr_k3`).
SWEEPS = ("base", "snr", "snr_k1", "snr_k3", "k", "l")
SNR_VALUES_DB = tuple(range(-10, 30, 5))  # -10 .. 25 dB
K_VALUES = (1, 2, 3, 4, 5)
L_VALUES = (4, 8, 16, 32, 64)
#: `--quick` stops the L sweep at 32: `somp-ml` at L = 64 takes minutes per 20 scenes on a 2-core CPU.
L_VALUES_QUICK = (4, 8, 16, 32)
#: Methods of `--quick` (those registered and applicable).
QUICK_METHODS = ("mvdr-oracle", "mvdr-als", "somp-ml", "learned", "music-oracle-k")
#: Methods given the truth (oracle K): reported under suite B2.
B2_METHODS = ("music-oracle-k", "mvdr-oracle")
#: Metrics copied into every record (from `rismvdr.evaluation.evaluate_detections`).
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
    """One test set of a sweep: `variable` = `value` with the scenario `overrides`."""

    sweep: str  # base, snr_k1, snr_k3, k, l
    variable: str  # "none", "snr_db", "k", "n_snapshots"
    value: float | int | None
    overrides: dict


def bench_points(sweeps=SWEEPS, *, snr_values_db=SNR_VALUES_DB, l_values=L_VALUES) -> list[BenchPoint]:
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
        pts += [BenchPoint("k", "k", k, dict(snr_db=(10.0, 10.0), k_min=k, k_max=k)) for k in K_VALUES]
    if "l" in sweeps:
        pts += [BenchPoint("l", "n_snapshots", n, dict(snr_db=(10.0, 10.0), k_min=3, k_max=3, n_snapshots=n))
                for n in l_values]
    return pts


def point_seed(point: BenchPoint) -> int:
    """A stable per-point integer folded into the bench seed: the same point gets the same test
    set whatever other points or sweeps run."""
    return zlib.crc32(f"{point.sweep}:{point.value}".encode()) & 0x7FFFFFFF


def _load_model():
    """The shipped learned model, or None when it is missing or broken."""
    try:
        from rismvdr.learned import default_weights_dir, load_learned

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
    return metrics.to_jsonable(rec)


def _fmt(v, digits=3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _markdown(records: list[dict], meta: dict) -> str:
    titles = dict(base="Base set (`seed` scenario as is: SNR U[-5, 20] dB, K U{1..5}, L = 16)",
                  snr_k1="F1 against SNR (dB), K = 1", snr_k3="F1 against SNR (dB), K = 3",
                  k="F1 against K, SNR 10 dB", l="F1 against L (snapshots), SNR 10 dB, K = 3")
    lines = ["# rismvdr accuracy bench", "",
             f"`{meta['scenario']}` scenario, {meta['n_scenes']} scenes per point, seed {meta['seed']}; "
             f"gates 5 deg / 5 deg / 1 m; default detector. B1: blind (each method finds K); "
             f"B2: oracle K ({', '.join(f'`{m}`' for m in B2_METHODS)}). Cells: F1; '-': not run "
             f"(method does not apply, e.g. learned methods away from L = 16). Wall time "
             f"{meta['wall_s']:.0f} s.", ""]
    for sweep in dict.fromkeys(r["sweep"] for r in records):
        rows = [r for r in records if r["sweep"] == sweep]
        values = list(dict.fromkeys(r["value"] for r in rows))
        methods = list(dict.fromkeys((r["suite"], r["method"]) for r in rows))
        cell = {(r["suite"], r["method"], r["value"]): r["f1"] for r in rows}
        lines += [f"## {titles.get(sweep, sweep)}", ""]
        head = ["F1"] if values == [None] else [f"{v:g}" for v in values]
        lines.append("| suite | method | " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * len(head))
        for suite, name in sorted(methods):
            cells = [_fmt(cell[(suite, name, v)]) if (suite, name, v) in cell else "-" for v in values]
            lines.append(f"| {suite} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _series(records, sweep, key):
    """method -> (values, metric) of one sweep."""
    out: dict[str, tuple[list, list]] = {}
    for r in records:
        if r["sweep"] == sweep:
            xs, ys = out.setdefault(r["method"], ([], []))
            xs.append(r["value"])
            ys.append(math.nan if r.get(key) is None else r[key])
    return out


def _plot_f1_snr(path, records) -> bool:
    import matplotlib.pyplot as plt

    sweeps = [s for s in ("snr_k1", "snr_k3") if any(r["sweep"] == s for r in records)]
    if not sweeps:
        return False
    fig, axes = plt.subplots(1, len(sweeps), figsize=(6.5 * len(sweeps), 4.2), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for name, (x, y) in _series(records, sweep, "f1").items():
            ax.plot(x, y, marker="o", label=name)
        ax.set_title(f"K = {sweep[-1]}")
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel("F1")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    plots.save_figure(fig, path)
    return True


def _plot_rmse_snr(path, records) -> bool:
    import matplotlib.pyplot as plt

    if not any(r["sweep"] == "snr_k1" for r in records):
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    crb_x, crb_y = {}, {}
    for name, (x, y) in _series(records, "snr_k1", "rmse_phi_deg").items():
        ax.semilogy(x, y, marker="o", label=name)
    for r in records:  # sqrt(CRB) over the matched sources of the best-covered method per point
        if r["sweep"] == "snr_k1" and r.get("sqrt_crb_phi_deg") is not None:
            if r["value"] not in crb_x or (r["tp"] or 0) > crb_x[r["value"]]:
                crb_x[r["value"]], crb_y[r["value"]] = r["tp"] or 0, r["sqrt_crb_phi_deg"]
    if crb_y:
        xs = sorted(crb_y)
        ax.semilogy(xs, [crb_y[x] for x in xs], "k--", label="sqrt(CRB)")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("azimuth RMSE over TPs (deg)")
    ax.set_title("K = 1")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    plots.save_figure(fig, path)
    return True


def _write_csv(path, records) -> None:
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(RECORD_KEYS), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in RECORD_KEYS})


def run_accuracy(out, *, n_scenes: int = 200, seed: int = 0, methods=None, sweeps=("base", "snr", "k", "l"),
                 snr_values_db=SNR_VALUES_DB, quick: bool = False, scenario: str = "seed",
                 progress: bool = True) -> dict:
    """Run the accuracy bench and write the report folder.

    Args:
      out: report folder (created).
      n_scenes: scenes per point.
      seed: PRNG seed; a point's scenes use `fold_in(key(seed), point_seed(point))`.
      methods: method names (default: every registered method that applies; `quick`:
        `QUICK_METHODS`).
      sweeps: subset of `SWEEPS`.
      snr_values_db: the SNR values (dB) of the `snr` sweeps (default -10 .. 25 in 5 dB steps).
      quick: use `QUICK_METHODS` when `methods` is None, and `L_VALUES_QUICK` (no L = 64).
      scenario: the base scenario (default `seed`).
      progress: tqdm bar over points (auto-off when not a terminal).

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
    points = bench_points(tuple(sweeps), snr_values_db=tuple(snr_values_db), l_values=l_values)
    if not points:
        raise ValueError(f"sweeps: none chosen; known: {', '.join(SWEEPS)}")
    model = _load_model() if any(METHODS[n].learned for n in names) else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, base_errors = [], {}
    bar = tqdm(points, desc="bench points", unit="point", disable=None if progress else True)
    for point in bar:
        cfg = get_scenario(scenario, **point.overrides)
        geometry = scenario_geometry(cfg)
        tp = time.perf_counter()
        scenes = simulate(cfg, jax.random.fold_in(jax.random.key(seed), point_seed(point)), n_scenes)
        crb = truth_crb(scenes, geometry, model=cfg.steering_model)
        settings = settings_for_scenario(cfg)
        f1s = []
        for name in names:
            m = METHODS[name]
            if not _applies(name, cfg) or m.learned and not _learned_fits(model, cfg, geometry):
                continue
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
                base_errors[name] = _tp_errors(scenes, d)
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
                sweeps=list(sweeps), snr_values_db=list(snr_values_db), l_values=list(l_values), b2_methods=list(B2_METHODS), wall_s=wall,
                base_config=dataclasses.asdict(base_cfg), generator="rismvdr bench accuracy")
    result: dict[str, Any] = dict(meta=metrics.to_jsonable(meta), records=records)
    write_json(out / "accuracy.json", result)
    _write_csv(out / "accuracy.csv", records)
    written = ["accuracy.json", "accuracy.csv", "accuracy.md"]
    if _plot_f1_snr(out / "f1_vs_snr.png", records):
        written.append("f1_vs_snr.png")
    if _plot_rmse_snr(out / "rmse_phi_vs_snr_k1.png", records):
        written.append("rmse_phi_vs_snr_k1.png")
    if base_errors:
        plots.plot_error_cdf(out / "position_error_cdf_base.png", base_errors,
                             title=f"base set: 3-D position error of true positives ({n_scenes} scenes)")
        written.append("position_error_cdf_base.png")
    md = _markdown(records, dict(meta, wall_s=wall))
    with atomic_write(out / "accuracy.md") as f:
        f.write(md + "\n")
    print(md)
    print(f"wrote {', '.join(written)} to {out} (wall time {wall:.1f} s, {len(points)} points, "
          f"{len(records)} records)")
    return result
