"""`rismvdr bench accuracy`: accuracy of every localizer on the `seed` scenario, as sweeps.

Suites:

* **B1** (blind): each method finds the number of sources itself, the registry as is.
* **B2** (oracle K): methods given the truth: `music-oracle-k` (MUSIC with the true K),
  `mvdr-oracle` (MVDR on the true covariance, which carries the true K in its rank) and
  `somp-ml-oracle-k` (`somp-ml` with its order forced to the true K); reported under B2.
* **bound**: `ml-oracle` (`BOUND_METHOD`), the compressive ML refinement started at the true
  positions with the true K: the estimation limit of the measurements under the gates. It is
  among the default methods and `--quick`'s, so it runs at every point; every record carries
  its F1 at the same point (`f1_bound`) and the ratio (`f1_over_bound`), and the records of a
  point that spans several SNR bins (`base`) carry F1 per bin of the realised SNR
  (`f1_per_snr_bin`, `n_scenes_per_snr_bin`) with the bound's and the ratio per bin
  (`rismvdr.bench.accuracy_report.attach_bound`). With `--methods`, the bound runs only when
  named (else `f1_bound` is None and the tables show '-').

Deployment sweeps (`rismvdr.bench.sweeps`: `deploy`, `nmse`, `phase_error`, `failure`): a point with
designed codes simulates its test set through one codebook designed for its deployment and
resolution (`rismvdr.physics.design.design_scenario_codes` at `DESIGN_SNR_DB`, seeded by the run's
seed; designed once per channel belief and resolution, written to `out/codes/`). Points whose
scenario, codes and test set are the same (e.g. `phase_error` 0 deg and `failure` 0) are localized
once; the others reuse the records.

The sweeps, their values and the `--quick` thinning are `rismvdr.bench.sweeps`; the report
files are `rismvdr.bench.accuracy_report`. For each point `run_accuracy` decides the methods
that run (those that apply; learned methods only where the shipped model fits: RIS mode, the
model's N, M and L, so the `l` sweep runs them at L = 16 only; minus `CPU_SKIPS` on the CPU
backend and, with `--resume`, what the report holds already), simulates the point's test set,
localizes it with each method, evaluates against the truth and the CRB, and appends one
record per (point, method) to `accuracy.json` (rewritten after every point). Progress: a tqdm
bar over points on a terminal, one line per point on stdout, and, when stderr is not a terminal,
one line per method on stderr as it starts and finishes (`progress_line`).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from rismvdr.bench.accuracy_report import METRIC_KEYS, RECORD_KEYS, attach_bound, progress_line, write_report
from rismvdr.bench.methods import applies, learned_fits, shipped_model
from rismvdr.bench.report import fmt_number, write_records_csv
from rismvdr.bench.sweeps import (
    B2_METHODS,
    BOUND_METHOD,
    CPU_SKIPS,
    DEFAULT_SWEEPS,
    DESIGN_SNR_DB,
    K_VALUES,
    K_VALUES_QUICK,
    L_VALUES,
    L_VALUES_QUICK,
    QUICK_METHODS,
    R_BINS_M,
    R_BINS_QUICK_M,
    SCENES_PER_POINT,
    SCENES_PER_POINT_QUICK,
    SNR_VALUES_DB,
    SNR_VALUES_QUICK_DB,
    SWEEPS,
    ULA_METHODS,
    BenchPoint,
    bench_points,
    point_seed,
    suite_of,
)
from rismvdr.eval import metrics
from rismvdr.eval.evaluation import evaluate_detections, truth_crb
from rismvdr.io import save_codebook, to_jsonable, write_json
from rismvdr.localize.registry import METHODS, localize, method_names, settings_for_scenario
from rismvdr.physics.design import design_scenario_codes, judge_codes
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

__all__ = ["run_accuracy"]

log = logging.getLogger(__name__)


def _tp_errors(scenes, d) -> np.ndarray:
    """3-D position errors (m) of the true positives."""
    nanw = lambda a, v: np.where(v, np.asarray(a, float), np.nan)  # noqa: E731
    mask = np.asarray(scenes.mask)
    pairs = metrics.match_pairs(nanw(d.phi, d.valid), nanw(d.theta, d.valid), nanw(d.r, d.valid),
                                nanw(scenes.phi, mask), nanw(scenes.theta, mask), nanw(scenes.r, mask),
                                est_valid=d.valid, gt_mask=mask)
    return pairs.pos_err[pairs.is_tp]


def _record(point: BenchPoint, name: str, cfg, n_scenes: int, seed: int, ev: dict, seconds: float) -> dict:
    rec = dict(suite=suite_of(name), sweep=point.sweep, variable=point.variable,
               value=point.value, method=name, scenario=cfg.name, n_scenes=n_scenes, seed=seed,
               snr_db=cfg.snr_db[0] if cfg.snr_db[0] == cfg.snr_db[1] else None,
               k=cfg.k_min if cfg.k_min == cfg.k_max else None, n_snapshots=cfg.n_snapshots)
    rec.update({k: ev.get(k) for k in METRIC_KEYS})
    rec["seconds"] = seconds
    if cfg.snr_db[0] != cfg.snr_db[1]:  # the point spans several SNR bins: F1 per bin (the bound's: attach_bound)
        per = ev.get("per_snr_bin") or {}
        rec["f1_per_snr_bin"] = {b: g.get("f1") for b, g in per.items()}
        rec["n_scenes_per_snr_bin"] = {b: g.get("n_scenes") for b, g in per.items()}
    return to_jsonable(rec)


def _chosen_methods(methods, base_cfg, quick: bool) -> list[str]:
    """The run's methods: `methods` in order without repeats, else every registered method that
    applies to the base scenario's mode (`quick`: those of `QUICK_METHODS`)."""
    if methods:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
        return list(dict.fromkeys(methods))
    names = method_names(full_array=base_cfg.mode == "full")
    return [n for n in QUICK_METHODS if n in names] if quick else names


def _chosen_points(sweeps, *, snr_values_db, l_values, quick: bool, ula_names: list[str]) -> list[BenchPoint]:
    """The points of `sweeps`; the `ula` sweep's dropped (with a warning) when none of its
    methods is chosen."""
    points = bench_points(tuple(sweeps), snr_values_db=tuple(snr_values_db), l_values=l_values,
                          k_values=K_VALUES_QUICK if quick else K_VALUES,
                          r_bins_m=R_BINS_QUICK_M if quick else R_BINS_M)
    if not points:
        raise ValueError(f"sweeps: none chosen; known: {', '.join(SWEEPS)}")
    if "ula" in sweeps and not ula_names:
        log.warning("sweep ula skipped: it runs only %s, none of them among the chosen methods",
                    ", ".join(ULA_METHODS))
        points = [p for p in points if p.sweep != "ula"]
        if not points:
            raise ValueError(f"methods: the ula sweep runs only {', '.join(ULA_METHODS)}; none chosen")
    return points


def _resumed_records(path: Path, base_cfg, n_scenes: int, seed: int) -> list[dict]:
    """The records of an earlier run's `accuracy.json` (none when there is no file); refused
    when it holds another test set (scenario, scenes per point, seed)."""
    if not path.is_file():
        return []
    prev = json.loads(path.read_text())
    pm = prev.get("meta", {})
    if (pm.get("scenario"), pm.get("n_scenes"), pm.get("seed")) != (base_cfg.name, n_scenes, seed):
        raise ValueError(f"resume: {path} holds scenario {pm.get('scenario')}, {pm.get('n_scenes')} scenes per "
                         f"point, seed {pm.get('seed')}; this run asks for {base_cfg.name}, {n_scenes}, {seed}")
    records = list(prev.get("records", []))
    print(f"resume: {len(records)} records of {path} kept; their points and methods are not run again")
    return records


def _methods_at(point: BenchPoint, cfg, geometry, names: list[str], model, done: set, skipped: list) -> list[str]:
    """The methods that run at `point`, decided before any scene is simulated: those that apply
    (learned ones where the model fits), minus those `done` already (`--resume`) and, on the
    CPU backend, `CPU_SKIPS` (appended to `skipped`, with a warning)."""
    todo = []
    for name in names:
        key = (point.sweep, point.value, name)
        if not applies(name, cfg) or METHODS[name].learned and not learned_fits(model, cfg, geometry):
            continue
        if key in done:  # --resume: already in the report
            continue
        if jax.default_backend() == "cpu" and key in CPU_SKIPS:
            skipped.append(dict(sweep=point.sweep, value=point.value, method=name, reason=CPU_SKIPS[key]))
            log.warning("%s not run at %s=%s: %s", name, point.variable, point.value, CPU_SKIPS[key])
            continue
        todo.append(name)
    return todo


def _point_label(point: BenchPoint) -> str:
    return point.sweep if point.value is None else f"{point.sweep} {point.variable}={point.value:g}"


class _Designs:
    """The designed codebooks of a run, one per (channel belief, resolution), written to
    `out/codes/` with what the design reached on held-out positions against random codes."""

    def __init__(self, out: Path, seed: int):
        self.out, self.seed, self.books = out / "codes", seed, {}

    def codes(self, cfg) -> np.ndarray:
        key = (cfg.channel, cfg.deployment_seed, cfg.channel_nmse_db, cfg.code_bits)
        if key not in self.books:
            t0 = time.perf_counter()
            design, problem = design_scenario_codes(cfg, snr_db=DESIGN_SNR_DB, key=jax.random.key(self.seed),
                                                    bits=cfg.code_bits)
            judged = judge_codes(design.codes, problem["geometry"], problem["H"], problem["box"], problem["noise_var"],
                                 key=jax.random.key(self.seed + 1), bits=cfg.code_bits, model=problem["model"])
            designed, random = ({k: float(np.nanmedian(v)) for k, v in std._asdict().items()}
                                for std in (judged.designed, judged.random))
            name = f"designed_{cfg.code_bits}bit" + (f"_nmse{cfg.channel_nmse_db:g}dB" if cfg.channel_nmse_db
                                                     is not None else "")
            self.out.mkdir(parents=True, exist_ok=True)
            save_codebook(self.out / f"{name}.npz", design.codes, phases=design.phases, meta=dict(
                scenario=cfg.name, config=cfg.as_dict(), bits=cfg.code_bits, design_snr_db=DESIGN_SNR_DB,
                seed=self.seed, median_sqrt_crb_designed=designed, median_sqrt_crb_random=random,
                held_out_positions=len(judged.positions), seconds=time.perf_counter() - t0, generator="rismvdr bench accuracy"))
            log.info("designed %s in %.0f s", name, time.perf_counter() - t0)
            self.books[key] = design.codes
        return self.books[key]


def _run_point(point: BenchPoint, cfg, geometry, todo: list[str], *, base_cfg, n_scenes: int, seed: int, model,
               progress: bool, designs: _Designs | None = None) -> list[dict]:
    """Simulate the point's test set, localize it with each method of `todo`, evaluate against
    the truth and the CRB: one record per method that ran (a learned method whose model was
    not trained for the point is skipped). `progress`: a line per method on stderr when that
    is not a terminal (`progress_line`). A point with designed codes takes its codebook from
    `designs`."""
    codes = designs.codes(cfg) if point.codes == "designed" else None
    scenes = simulate(cfg, jax.random.fold_in(jax.random.key(seed), point_seed(point)), n_scenes, codes=codes)
    crb = truth_crb(scenes, geometry, model=cfg.steering_model)
    # the r sweep draws sources in a range bin but searches the base scenario's whole box
    settings = settings_for_scenario(cfg.replace(r_m=base_cfg.r_m) if point.sweep == "r" else cfg)
    records = []
    for name in todo:
        m = METHODS[name]
        if progress:
            progress_line(f"{_point_label(point)}: {name}: localizing {n_scenes} scenes ...")
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
        if point.sweep == "base":
            records[-1]["tp_pos_err_m"] = _tp_errors(scenes, d).tolist()  # the error CDF of the report
        if progress:
            progress_line(f"{_point_label(point)}: {name}: {n_scenes} scenes in {res.seconds:.1f} s, "
                          f"F1 {fmt_number(ev['f1'], '.2f')}")
    return records


def _relabelled(record: dict, point: BenchPoint) -> dict:
    """A record of an earlier point with the same test set, codes and scenario, under `point`'s
    sweep and value (seconds: those of the run it was measured in)."""
    rec = dict(record, sweep=point.sweep, variable=point.variable, value=point.value)
    rec["same_as"] = f"{record['sweep']} {record['value']}"
    return to_jsonable(rec)


def _write_partial(out: Path, records: list[dict], base_cfg, n_scenes: int, seed: int) -> None:
    """The records so far (`accuracy.json` with `partial` in its meta, and `accuracy.csv`): they
    survive an interrupt and `--resume` continues from them."""
    partial = dict(scenario=base_cfg.name, n_scenes=n_scenes, seed=seed, partial=True)
    write_json(out / "accuracy.json", dict(meta=partial, records=records))
    write_records_csv(out / "accuracy.csv", records, RECORD_KEYS)


def _write_result(out: Path, records: list[dict], meta: dict, n_points: int) -> dict:
    """Write the final `accuracy.json` and the report files, print the tables; the result."""
    result: dict[str, Any] = dict(meta=to_jsonable(meta), records=records)
    write_json(out / "accuracy.json", result)
    written = write_report(out, result)
    print((out / "accuracy.md").read_text())
    print(f"wrote accuracy.json, {', '.join(written)} to {out} (wall time {meta['wall_s']:.1f} s, {n_points} "
          f"points, {len(records)} records)")
    return result


def run_accuracy(out, *, n_scenes: int | None = None, seed: int = 0, methods=None, sweeps=DEFAULT_SWEEPS,
                 snr_values_db=None, quick: bool = False, scenario: str = "seed",
                 progress: bool = True, resume: bool = False) -> dict:
    """Run the accuracy bench and write the report folder.

    Args:
      out: report folder (created).
      n_scenes: scenes per point (default `SCENES_PER_POINT`; `quick`: `SCENES_PER_POINT_QUICK`).
      seed: PRNG seed; a point's scenes use `fold_in(key(seed), point_seed(point))`.
      methods: method names (default: every registered method that applies; `quick`:
        `QUICK_METHODS`). The `ula` sweep runs `ULA_METHODS`, intersected with `methods` when
        given.
      sweeps: subset of `SWEEPS`.
      snr_values_db: the SNR values (dB) of the `snr` and `ula` sweeps (default -10 .. 25 in 5 dB
        steps; `quick`: `SNR_VALUES_QUICK_DB`).
      quick: use `QUICK_METHODS` when `methods` is None, and the thinner `*_QUICK` values.
      scenario: the base scenario (default `seed`).
      progress: tqdm bar over points (auto-off when not a terminal; then a line per method on
        stderr instead, `progress_line`).
      resume: keep the records of an earlier (interrupted) run in `out/accuracy.json` with the
        same scenario, scene count and seed, and run only the (point, method) pairs it lacks.

    Returns:
      `{"meta": ..., "records": [...]}` as written to `accuracy.json`.
    """
    if n_scenes is None:
        n_scenes = SCENES_PER_POINT_QUICK if quick else SCENES_PER_POINT
    if n_scenes < 1:
        raise ValueError(f"scenes: need at least 1 scene per point, got {n_scenes}")
    base_cfg = get_scenario(scenario)
    names = _chosen_methods(methods, base_cfg, quick)
    l_values = L_VALUES_QUICK if quick else L_VALUES
    if snr_values_db is None:
        snr_values_db = SNR_VALUES_QUICK_DB if quick else SNR_VALUES_DB
    ula_names = [n for n in ULA_METHODS if not methods or n in names]
    points = _chosen_points(sweeps, snr_values_db=snr_values_db, l_values=l_values, quick=quick, ula_names=ula_names)
    model = shipped_model() if any(METHODS[n].learned for n in names) else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = _resumed_records(out / "accuracy.json", base_cfg, n_scenes, seed) if resume else []
    n_resumed, skipped = len(records), []
    done = {(r["sweep"], r["value"], r["method"]) for r in records}
    designs, ran = _Designs(out, seed), {}
    bar = tqdm(points, desc="bench points", unit="point", disable=None if progress else True)
    for point in bar:
        cfg = get_scenario(point.scenario or scenario, **point.overrides)
        geometry = scenario_geometry(cfg)
        tp = time.perf_counter()
        todo = _methods_at(point, cfg, geometry, ula_names if point.sweep == "ula" else names, model, done, skipped)
        if not todo:
            continue
        same = (cfg, point.codes, point_seed(point))  # the same test set, codes and scenario: run once
        earlier = {r["method"]: r for r in ran.get(same, [])}
        new = [_relabelled(earlier[m], point) for m in todo if m in earlier]
        rest = [m for m in todo if m not in earlier]
        if rest:
            new += _run_point(point, cfg, geometry, rest, base_cfg=base_cfg, n_scenes=n_scenes, seed=seed,
                              model=model, progress=progress, designs=designs)
        ran.setdefault(same, []).extend(new)
        records.extend(new)
        attach_bound(records)  # f1_bound / f1_over_bound of this point's records (the bound may run last)
        f1s = ", ".join(f"{r['method']} {fmt_number(r['f1'], '.2f')}" for r in new)
        tqdm.write(f"[{len(records)} records] {_point_label(point)}: F1 {f1s} ({time.perf_counter() - tp:.1f} s)")
        sys.stdout.flush()  # one line per point, also when stdout is a file
        _write_partial(out, records, base_cfg, n_scenes, seed)
    bar.close()
    meta = dict(scenario=base_cfg.name, n_scenes=n_scenes, seed=seed, quick=quick, methods=names,
                sweeps=list(sweeps), snr_values_db=list(snr_values_db), l_values=list(l_values),
                r_bins_m=[list(b) for b in (R_BINS_QUICK_M if quick else R_BINS_M)], b2_methods=list(B2_METHODS),
                bound_method=BOUND_METHOD, wall_s=time.perf_counter() - t0,
                base_config=base_cfg.as_dict(), generator="rismvdr bench accuracy", skipped=skipped,
                resumed_records=n_resumed)
    return _write_result(out, records, meta, len(points))
