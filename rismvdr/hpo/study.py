"""Running studies for the Stage-1 backbone (`rismvdr hpo`, `rismvdr hpo2`) and exporting the best trial.

`run_study` runs (or tops up) one study of trials (`rismvdr.hpo.trial.objective`) in this
process or in K spawned worker processes sharing its storage (`rismvdr.hpo.storage`). The total
is capped: a study ends with `n_trials` trials COMPLETE or PRUNED
(`optuna.study.MaxTrialsCallback`; a worker also stops when the finished trials plus those
other workers are running reach the cap, and a trial checks the cap when it starts, so racing
workers never overshoot: one that starts when the cap is already taken ends FAIL with the user
attribute `rismvdr_status = "over budget"`). A trial that fails (a crash) does not count, and
a worker that stopped because of a running trial that then fails leaves the study short:
rerunning the command tops the study up to the cap. A rerun right after a crash fails at once
the RUNNING trials whose worker process on this host is gone (`fail_dead_trials`), so it
reaches the cap; a RUNNING trial it cannot prove dead counts until `--grace-s` passes without a
heartbeat, and the rerun prints how long that is. A study records the search it was made for
(`open_study`), so a rerun with another space, config or objective is refused.

`run_hpo2` is the two-stage search: many cheap surrogate trials (study `<name>-s1`), then the
top-k stage-1 parameter sets rerun exactly (`enqueue_trial`) with the `e2e` objective and more
epochs (study `<name>-s2`), reranked (`rerank`, `format_rerank`).

`export_best` writes the best trial's full-training config for `rismvdr train --from-hpo`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from rismvdr.hpo.space import check_space
from rismvdr.hpo.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, check_workers, last_heartbeat, make_storage
from rismvdr.hpo.trial import (
    WORKER_HOST,
    WORKER_PID,
    BudgetExhausted,
    ObjectiveSettings,
    TrialFailed,
    is_finite,
    objective,
)
from rismvdr.io import enable_compile_cache, to_jsonable, write_json
from rismvdr.train.config import TrainConfig

__all__ = ["PRUNERS", "TRIAL_COLUMNS", "open_study", "fail_dead_trials", "run_study", "run_hpo2", "rerank", "format_rerank",
           "export_best", "trials_table", "write_trials_csv", "print_trial"]

log = logging.getLogger(__name__)

#: Pruners `run_study` takes: "median" (`MedianPruner(n_startup_trials=5)`) or "none".
PRUNERS = ("median", "none")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_study(name: str, storage: str, settings: ObjectiveSettings, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
               grace_period: int = GRACE_PERIOD_S) -> optuna.Study:
    """Create (or load) the study and check that it was made for the same search: objective,
    epochs, base config, space and end-to-end settings (stored in the study's user attribute
    `search`).

    Raises:
      ValueError: the stored study was made for another search (the differing parts named).
    """
    st = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = optuna.create_study(study_name=name, storage=st, direction="minimize", load_if_exists=True)
    e2e = {k: getattr(settings, k) for k in ("e2e_scenes", "e2e_seed", "xyz_norm_m", "f1_weight")}
    signature = {"objective": settings.objective, "epochs": int(settings.epochs), "config": settings.base.to_dict(),
                 "space": {k: list(v) for k, v in settings.space.items()}, "e2e": e2e}
    signature = json.loads(json.dumps(signature))  # what the storage gives back (tuples become lists)
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", signature)
    elif stored != signature:
        diff = sorted(k for k in signature if stored.get(k) != signature[k])
        raise ValueError(f"--study: {name!r} in {storage} was made with another {', '.join(diff)} (its values "
                         "would not compare); choose another --study or --workdir")
    fail_dead_trials(study, grace_period=grace_period)
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists (another user's), or cannot tell: alive
        return True
    return True


def fail_dead_trials(study: optuna.Study, *, grace_period: int = GRACE_PERIOD_S) -> list[int]:
    """Fail at once the RUNNING trials whose worker is provably dead; say how long the others
    count toward the cap.

    A trial records its worker's host and process id when it starts (`WORKER_HOST`,
    `WORKER_PID`). A RUNNING trial whose worker ran on this host and whose process is gone
    (killed with SIGKILL, out of memory, a power cut of a worker process) is set to FAIL with
    `rismvdr_status` naming the process, so a rerun right after a crash reaches the cap. Any
    other RUNNING trial (another host, a live process, or no worker recorded) keeps counting
    until it finishes or its heartbeat is `grace_period` seconds old; one line per such trial
    says so, with the time left where the storage keeps heartbeats (journal files).

    Returns:
      the numbers of the trials failed.
    """
    host, me, now = socket.gethostname(), os.getpid(), time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, pid = t.user_attrs.get(WORKER_HOST), t.user_attrs.get(WORKER_PID)
        if worker_host == host and isinstance(pid, int) and pid != me and not _pid_alive(pid):
            try:  # (the storage by trial id, as optuna's own fail_stale_trials does)
                study._storage.set_trial_user_attr(t._trial_id, "rismvdr_status",
                                                   f"worker process {pid} on {host} is gone (crashed or killed)")
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    failed.append(t.number)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished (or another rerun failed it) meanwhile
            continue
        beat = last_heartbeat(t)
        who = f"worker {worker_host}:{pid}" if worker_host else "no worker recorded"
        if beat is not None:
            left = max(0.0, grace_period - (now - beat))
            wait = f"last heartbeat {now - beat:.0f} s ago: failed as stale in {left:.0f} s (--grace-s {grace_period})"
        else:
            wait = f"failed as stale once its heartbeat is {grace_period} s old (--grace-s)"
        print(f"[{study.study_name}] trial {t.number} is RUNNING ({who}) and counts toward --trials until it "
              f"finishes or is {wait}", flush=True)
    for n in failed:
        print(f"[{study.study_name}] trial {n} failed: its worker process is gone; it does not count toward --trials",
              flush=True)
    return failed


def print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Study callback: one line per finished trial with its value and the best so far."""
    state = trial.state.name.lower()
    if trial.state == TrialState.COMPLETE:
        what = f"value {trial.value:.4g}"
    elif trial.state == TrialState.PRUNED:
        what = trial.user_attrs.get("pruned_reason", "pruned")
    else:
        what = trial.user_attrs.get("rismvdr_status", "failed")
    try:
        best = study.best_trial
        best_txt = f"best {best.value:.4g} (trial {best.number})"
    except ValueError:
        best_txt = "no complete trial yet"
    n = len(study.get_trials(deepcopy=False, states=_FINISHED))
    print(f"[{study.study_name}] trial {trial.number} {state}: {what}; {best_txt}; {n} finished", flush=True)


@dataclasses.dataclass(frozen=True)
class _Job:
    """One worker's share of a study (picklable for spawned processes)."""

    settings: ObjectiveSettings
    study: str
    storage: str
    n_trials: int  # trials this worker may start (the cap is settings.max_trials)
    pruner: str = "median"  # "median" | "none"
    sampler: str = "tpe"  # "tpe" | "enqueued" (stage 2: refuse to sample)
    sampler_seed: int | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S
    grace_period: int = GRACE_PERIOD_S
    compile_cache: str | None = None
    verbosity: int = optuna.logging.WARNING
    own_process: bool = False  # a spawned worker: configure JAX's compile cache


class _EnqueuedOnlySampler(optuna.samplers.RandomSampler):
    """Stage 2 of `hpo2`: parameters come from enqueued trials only; sampling refuses."""

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise BudgetExhausted("stage 2 runs enqueued stage-1 parameter sets only, and none is waiting")


def _make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {name!r}")


def _run_job(job: _Job) -> None:
    """Run `job.n_trials` trials at most (fewer once the study's cap is reached)."""
    if job.own_process:
        optuna.logging.set_verbosity(job.verbosity)
        enable_compile_cache(job.compile_cache)
    storage = make_storage(job.storage, heartbeat_interval=job.heartbeat_interval, grace_period=job.grace_period)
    if job.sampler == "enqueued":
        sampler = _EnqueuedOnlySampler(seed=job.sampler_seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=job.sampler_seed, constant_liar=True)
    study = optuna.load_study(study_name=job.study, storage=storage, sampler=sampler,
                              pruner=_make_pruner(job.pruner))
    callbacks = [print_trial]
    if job.settings.max_trials is not None:
        cap = int(job.settings.max_trials)
        callbacks[:0] = [optuna.study.MaxTrialsCallback(cap, states=_FINISHED), _StopWhenClaimed(cap)]
    study.optimize(_Objective(job.settings), n_trials=job.n_trials, callbacks=callbacks,
                   catch=(BudgetExhausted, TrialFailed), gc_after_trial=True)


@dataclasses.dataclass(frozen=True)
class _StopWhenClaimed:
    """Study callback: stop this worker when the finished trials plus the trials other workers
    are running reach the cap (`MaxTrialsCallback` counts finished ones only, so a worker
    would start one more trial while another's last one is still running)."""

    cap: int

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        states = (*_FINISHED, TrialState.RUNNING)  # (a WAITING, enqueued trial still needs a worker)
        if len(study.get_trials(deepcopy=False, states=states)) >= self.cap:
            study.stop()


@dataclasses.dataclass(frozen=True)
class _Objective:
    """`objective` bound to its settings (picklable, unlike a closure)."""

    settings: ObjectiveSettings

    def __call__(self, trial: optuna.Trial) -> float:
        return objective(trial, self.settings)


def _worker_main(job: _Job) -> None:  # entry point of a spawned worker process
    try:
        _run_job(job)
    except KeyboardInterrupt:
        sys.exit(130)


def _remaining(study: optuna.Study, cap: int) -> int:
    return cap - len(study.get_trials(deepcopy=False, states=_FINISHED))


def _run_workers(job: _Job, workers: int) -> None:
    """`workers` == 1: in this process; else that many spawned processes sharing the study."""
    if workers == 1:
        _run_job(job)
        return
    # Several JAX processes may share one accelerator: none may grab most of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    ctx = multiprocessing.get_context("spawn")
    seed = job.sampler_seed
    procs = [ctx.Process(target=_worker_main, name=f"hpo-worker-{i}",
                         args=(dataclasses.replace(job, own_process=True,
                                                   sampler_seed=None if seed is None else seed + i),))
             for i in range(workers)]
    for p in procs:
        p.start()
    log.info("started %d hpo workers for study %s", workers, job.study)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # the workers got the same SIGINT; wait for them to save
        for p in procs:
            p.join(timeout=60)
        raise
    bad = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"hpo: worker process(es) failed: {', '.join(bad)} (their error is printed above); "
                           "the study keeps every finished trial, rerun to top it up")


def run_study(settings: ObjectiveSettings, *, study_name: str, storage: str, n_trials: int, workers: int = 1,
              pruner: str = "median", sampler_seed: int | None = None,
              heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S,
              compile_cache: str | None = None, verbosity: int = optuna.logging.WARNING) -> optuna.Study:
    """Run (or top up) a study until `n_trials` trials are COMPLETE or PRUNED.

    Args:
      settings: what a trial does (`max_trials` is set to `n_trials` here).
      study_name: the study (created if absent; its search must match, see `open_study`).
      storage: journal file path or SQLAlchemy URL (`make_storage`).
      n_trials: the cap on the study's COMPLETE + PRUNED trials, across all workers.
      workers: 1: trials run in this process; K > 1: K spawned processes (a script calling
        this needs the `if __name__ == "__main__":` guard of multiprocessing's spawn).
      pruner: "median" (`MedianPruner(n_startup_trials=5)`: from the 6th trial on, a trial
        worse than the median of the others at the same epoch stops) or "none".
      sampler_seed: TPE seed (worker i uses seed + i); None: random.
      heartbeat_interval, grace_period: stale-trial detection, seconds.
      compile_cache: persistent XLA cache directory of spawned workers (None: JAX's setting;
        this process is left alone: see `rismvdr.io.enable_compile_cache`).
      verbosity: optuna's logging level in spawned workers.

    Returns:
      The study (reloaded after the workers finish).

    Raises:
      ValueError: bad arguments, a space that does not fit the config, a study made for
        another search, or SQLite with several workers.
      RuntimeError: a worker process failed (the trials it finished stay in the study).
    """
    check_workers(storage, workers)
    _make_pruner(pruner)
    if int(n_trials) < 1:
        raise ValueError(f"--trials: must be >= 1, got {n_trials}")
    settings = dataclasses.replace(settings, max_trials=int(n_trials))
    settings.validate()
    check_space(settings.space, settings.base)
    study = open_study(study_name, storage, settings, heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period)
    left = _remaining(study, int(n_trials))
    if left <= 0:
        print(f"[{study_name}] already has {n_trials} finished trials", flush=True)
        return study
    # each worker may start twice the missing trials: failed ones (not counted) are replaced,
    # a systematic failure still ends
    job = _Job(settings, study_name, storage, n_trials=2 * left, pruner=pruner, sampler_seed=sampler_seed,
               heartbeat_interval=heartbeat_interval, grace_period=grace_period, compile_cache=compile_cache,
               verbosity=verbosity)
    _run_workers(job, int(workers))
    return optuna.load_study(study_name=study_name, storage=make_storage(
        storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period))


def _top_k(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_finite(t.value)]
    return sorted(done, key=lambda t: (t.value, t.number))[: int(k)]


def run_hpo2(stage1: ObjectiveSettings, stage2: ObjectiveSettings, *, study_name: str, storage: str,
             stage1_trials: int, topk: int, workers: int = 1, pruner: str = "median",
             sampler_seed: int | None = None, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
             grace_period: int = GRACE_PERIOD_S, compile_cache: str | None = None,
             verbosity: int = optuna.logging.WARNING) -> tuple[optuna.Study, optuna.Study]:
    """Two-stage search: `stage1_trials` surrogate trials in `<study_name>-s1`, then the
    `topk` best stage-1 parameter sets rerun exactly (enqueued, never sampled) with the
    settings of `stage2` (the e2e objective, more epochs) in `<study_name>-s2`, no pruning.

    Rerunning tops both stages up; a stage-2 parameter set whose trial failed is enqueued again.

    Returns:
      (stage-1 study, stage-2 study); `rerank` / `format_rerank` make the table.
    """
    if int(topk) < 1:
        raise ValueError(f"--stage2-topk: must be >= 1, got {topk}")
    common = dict(storage=storage, workers=workers, heartbeat_interval=heartbeat_interval,
                  grace_period=grace_period, compile_cache=compile_cache, verbosity=verbosity)
    s1 = run_study(stage1, study_name=f"{study_name}-s1", n_trials=stage1_trials, pruner=pruner,
                   sampler_seed=sampler_seed, **common)
    best = _top_k(s1, topk)
    if not best:
        raise ValueError(f"hpo2: stage 1 ({study_name}-s1) has no complete trial to rerun")
    check_workers(storage, workers)
    stage2.validate()
    s2 = open_study(f"{study_name}-s2", storage, stage2, heartbeat_interval=heartbeat_interval,
                     grace_period=grace_period)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    present = [t.params if t.state != TrialState.WAITING else t.system_attrs.get("fixed_params", {})
               for t in s2.get_trials(deepcopy=False, states=live)]
    for t in best:
        if t.params not in present:
            s2.enqueue_trial(t.params, user_attrs={"stage1_trial": t.number, "stage1_value": t.value})
    # the cap: the current top-k plus finished sets of an earlier run (a stage 1 since topped up)
    best_params = [t.params for t in best]
    earlier = [t for t in s2.get_trials(deepcopy=False, states=_FINISHED) if t.params not in best_params]
    cap = len(earlier) + len(best)
    stage2 = dataclasses.replace(stage2, max_trials=cap)
    left = _remaining(s2, cap)
    if left > 0:
        job = _Job(stage2, f"{study_name}-s2", storage, n_trials=left, pruner="none", sampler="enqueued",
                   heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                   compile_cache=compile_cache, verbosity=verbosity)
        _run_workers(job, min(int(workers), left))
    s2 = optuna.load_study(study_name=f"{study_name}-s2", storage=make_storage(
        storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period))
    return s1, s2


def rerank(stage2: optuna.Study) -> list[dict]:
    """Stage-2 trials (COMPLETE first, by e2e objective; then PRUNED) as table rows."""
    rows = []
    for t in stage2.get_trials(deepcopy=False, states=_FINISHED):
        a = t.user_attrs
        rows.append(dict(trial=t.number, state=t.state.name.lower(), stage1_trial=a.get("stage1_trial"),
                         stage1_value=a.get("stage1_value"), value=t.value, f1=a.get("e2e_f1"),
                         precision=a.get("e2e_precision"), recall=a.get("e2e_recall"),
                         rmse_xyz_all_m=a.get("e2e_rmse_xyz_all_m"), params=dict(t.params)))
    rows.sort(key=lambda r: (r["state"] != "complete", r["value"] if is_finite(r["value"]) else math.inf))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def format_rerank(rows: list[dict]) -> str:
    """The reranked table as Markdown."""
    def f(x, spec=".4g"):
        return "-" if x is None or not is_finite(x) else format(float(x), spec)

    lines = ["| rank | s2 trial | s1 trial | s1 surrogate | e2e objective | F1 | P | R | rmse xyz (m) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['trial']} | {r['stage1_trial'] if r['stage1_trial'] is not None else '-'} "
                     f"| {f(r['stage1_value'])} | {f(r['value']) if r['state'] == 'complete' else r['state']} "
                     f"| {f(r['f1'], '.3f')} | {f(r['precision'], '.3f')} | {f(r['recall'], '.3f')} "
                     f"| {f(r['rmse_xyz_all_m'], '.3f')} |")
    return "\n".join(lines)


def export_best(study_name: str, storage: str, out: str | Path, *, trial: int | None = None) -> dict:
    """Write the best COMPLETE trial of a study (or the COMPLETE trial number `trial`, one
    chosen by a measurement outside the study) to `out` (JSON): `study`, `trial`, `value`,
    `params`, `user_attrs` and `config` (the full-training `TrainConfig.to_dict()` that
    `rismvdr train --from-hpo` reads; checked to round-trip through `TrainConfig.from_dict`).

    Raises:
      FileNotFoundError: no journal file.
      ValueError: no such study, no complete trial, or `trial` is not a COMPLETE trial of the
        study.
    """
    study = _load_existing(study_name, storage)
    if trial is not None:
        chosen = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number == trial]
        if not chosen:
            states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
            what = f"is {states[trial]}" if trial in states else "does not exist"
            raise ValueError(f"--trial: trial {trial} of {study_name!r} {what} (only a COMPLETE trial is exported)")
        best = chosen[0]
    else:
        try:
            best = study.best_trial
        except ValueError:
            raise ValueError(f"--study: {study_name!r} has no complete trial yet") from None
    if "config" not in best.user_attrs:
        raise ValueError(f"--study: trial {best.number} of {study_name!r} has no 'config' attribute "
                         "(not made by rismvdr hpo)")
    config = best.user_attrs["config"]
    cfg = TrainConfig.from_dict(config)
    cfg.validate()
    if cfg.to_dict() != config:
        raise ValueError(f"--study: trial {best.number}'s config does not round-trip through from_dict")
    record = dict(study=study_name, trial=best.number, value=best.value, params=dict(best.params),
                  user_attrs={k: v for k, v in best.user_attrs.items() if k != "config"}, config=config)
    write_json(out, to_jsonable(record))
    return record


def _load_existing(study_name: str, storage: str) -> optuna.Study:
    """An existing study (read; never created). Raises FileNotFoundError (no journal file) or
    ValueError (no such study, the studies there named)."""
    st = make_storage(storage, create=False)
    names = optuna.get_all_study_names(st)
    if study_name not in names:
        raise ValueError(f"--study: no study {study_name!r} in {storage} (studies: {', '.join(sorted(names)) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=st)


#: The first columns of `trials_table`'s rows; then one `param.<name>` column per searched parameter.
TRIAL_COLUMNS = ("trial", "state", "value", "value_per_period", "duration_s", "start", "complete", "status")


def trials_table(study_name: str, storage: str) -> list[dict]:
    """Every trial of a study as a flat row (for a CSV that loads in pandas): `TRIAL_COLUMNS`
    (`value_per_period`: the reported values by validation period, JSON; `status`: why a trial was
    pruned or failed), then `param.<name>` for each parameter any trial sampled (empty where a
    trial has none). Running trials are included with their state.

    Raises:
      FileNotFoundError: no journal file; ValueError: no such study.
    """
    study = _load_existing(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        done = t.datetime_complete
        rows.append({
            "trial": t.number, "state": t.state.name, "value": t.value,
            "value_per_period": json.dumps({str(k): v for k, v in sorted(t.intermediate_values.items())}),
            "duration_s": (done - t.datetime_start).total_seconds() if done and t.datetime_start else None,
            "start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "complete": done.isoformat(timespec="seconds") if done else None,
            "status": t.user_attrs.get("pruned_reason") or t.user_attrs.get("rismvdr_status"),
            **{f"param.{k}": t.params.get(k) for k in names},
        })
    return rows


def write_trials_csv(rows: list[dict], out: str | Path) -> None:
    """`trials_table`'s rows as CSV (empty cells for None)."""
    cols = list(TRIAL_COLUMNS) + sorted({k for r in rows for k in r} - set(TRIAL_COLUMNS))
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
