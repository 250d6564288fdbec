"""Hyperparameter search for the Stage-1 backbone with Optuna (`rismvdr hpo`, `rismvdr hpo2`).

A trial samples the search space of a space file (`configs/hpo_space.py`: `get_space()`, see
`load_space`), applies it to the base config (`--config` plus `--set`), trains `epochs`
validation periods (`steps = epochs * eval_every`) in `<workdir>/trials/<study>/<number>`, reports
the surrogate after every validation (`trial.report`; the pruner, `MedianPruner` by default,
may stop it) and returns one of two objectives (minimised):

- `surrogate`: the last validation's surrogate score (`surrogate_score`): `val/objective`
  (`rmse_xyz_all / 2 m + 10 (1 - F1)` of the learned method on the coarse validation grid)
  when the config computes peak metrics (`val_peak_scenes > 0`), else the validation loss
  terms weighted by the BASE config's final-phase loss weights (fixed across trials, so the
  searched `loss_scale.*` parameters cannot lower the score by scaling terms down).
- `e2e`: the production inference path, `localize("learned", ...)` on the full 1-degree
  grid with the trial's best checkpoint, on a fixed validation subset (the config's scenario,
  seed `e2e_seed` = 1, `e2e_scenes` = 200 scenes; seed 0 is the test set and is refused):
  `rmse_xyz_all_m / xyz_norm_m + f1_weight (1 - F1)` (2 m and 10 by default). Every figure
  of `evaluate_detections` is stored in the trial's user attributes (`e2e_f1`,
  `e2e_precision`, `e2e_recall`, `e2e_rmse_xyz_all_m`, `e2e_tp`, `e2e_fp`, `e2e_fn`, ...).

A trial whose surrogate or objective is not finite, or whose training skipped a non-finite
update (more than `max_skipped_steps`, default 0), is PRUNED (reason in the user attribute
`pruned_reason`); it never ends the study. An accelerator runtime error (out of memory for a
large width, ...) fails the trial (`rismvdr_status`) and the study goes on; any other exception
(a bug, an invalid config) stops the worker. Every trial stores `config`, the full-training
config it stands for (the base config's `steps`, not the shortened trial's), which
`rismvdr hpo export` writes for `rismvdr train --from-hpo best.json`.

`hpo2` is the two-stage search: many cheap surrogate trials (study `<name>-s1`), then the
top-k stage-1 parameter sets rerun exactly (`enqueue_trial`) with the `e2e` objective and more
epochs (study `<name>-s2`), reranked.

Storage and workers. By default the study lives in a journal file, `<workdir>/hpo.journal`,
which several processes on one host share: `--workers K` spawns K processes, or start the
same command several times. `--storage` takes another journal file path or any SQLAlchemy URL
(`postgresql+psycopg2://user@host/db` for many machines; never `sqlite:` with several
workers). The total is capped: a study ends with `n_trials` trials COMPLETE or PRUNED
(`optuna.study.MaxTrialsCallback`; a worker also stops when the finished trials plus those
other workers are running reach the cap, and a trial checks the cap when it starts, so racing
workers never overshoot: one that starts when the cap is already taken ends FAIL with the user
attribute `rismvdr_status = "over budget"`). A trial that fails (a crash) does not count, and
a worker that stopped because of a running trial that then fails leaves the study short:
rerunning the command tops the study up to the cap.

Stale trials. A worker records a heartbeat for its running trial every `heartbeat_interval`
seconds; before a trial starts, every worker fails the study's RUNNING trials whose last
heartbeat is older than `grace_period` seconds (`optuna.storages.fail_stale_trials`), so a
crashed worker's trial does not block the study. On an RDB URL this is `RDBStorage`'s own
heartbeat; Optuna 5's `JournalStorage` has none, so journal files use `JournalStorage`
extended with the same `BaseHeartbeat` interface (the heartbeat is a trial system attribute).

optuna-dashboard can open the journal file: `optuna-dashboard <workdir>/hpo.journal`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials uses
from optuna.trial import TrialState

try:
    from optuna.storages.journal import JournalFileBackend
except ImportError:  # optuna < 4.0
    from optuna.storages import JournalFileStorage as JournalFileBackend

from rismvdr.train.config import (
    LossWeights,
    TrainConfig,
    apply_overrides,
    call_file_function,
    from_dict,
    to_dict,
)

__all__ = [
    "LOSS_SCALE",
    "JOURNAL_NAME",
    "ObjectiveSettings",
    "BudgetExhausted",
    "TrialFailed",
    "make_settings",
    "e2e_metrics",
    "load_space",
    "check_space",
    "suggest_params",
    "apply_params",
    "trial_config",
    "surrogate_score",
    "objective",
    "make_storage",
    "default_storage",
    "run_study",
    "run_hpo2",
    "rerank",
    "format_rerank",
    "export_best",
    "print_trial",
    "enable_compile_cache",
]

log = logging.getLogger(__name__)

#: Space key prefix: `loss_scale.<term>` multiplies that loss term's weight in every phase.
LOSS_SCALE = "loss_scale."
#: File name of the default journal storage inside the run directory.
JOURNAL_NAME = "hpo.journal"
_HEARTBEAT_ATTR = "rismvdr:heartbeat"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_KINDS = ("float", "int", "categorical")


class BudgetExhausted(RuntimeError):
    """A trial started when the study's cap was already taken (or, in `hpo2` stage 2, no
    enqueued parameter set was left): it ends FAIL and its worker stops."""


class TrialFailed(RuntimeError):
    """A trial hit a runtime error of the accelerator (e.g. out of memory for a large width):
    it ends FAIL (not counted) and the study goes on. Other exceptions (bugs, bad configs)
    end the worker."""


# ------------------------------------------------------------------------------------------
# Search space
# ------------------------------------------------------------------------------------------
def load_space(path: str | Path) -> dict[str, tuple]:
    """The search space of a space file defining `get_space()` (see `configs/hpo_space.py`).

    Returns:
      `{name: ("float", low, high, log) | ("int", low, high) | ("categorical", choices)}`,
      `name` a dotted `TrainConfig` key or `loss_scale.<term>`.

    Raises:
      ValueError: no such file, no `get_space()`, or a malformed entry (named).
    """
    return _validate_space(call_file_function(path, "get_space", "--space"), str(path))


def _validate_space(space: Any, where: str = "space") -> dict[str, tuple]:
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"{where}: get_space() must return a non-empty dict, got {type(space).__name__}")
    out = {}
    for name, dist in space.items():
        if not isinstance(name, str) or not isinstance(dist, (tuple, list)) or not dist or dist[0] not in _KINDS:
            raise ValueError(f"{where}: {name!r}: expected (kind, ...) with kind in {_KINDS}, got {dist!r}")
        kind = dist[0]
        if kind == "categorical":
            if len(dist) != 2 or not isinstance(dist[1], (tuple, list)) or not dist[1]:
                raise ValueError(f"{where}: {name!r}: expected ('categorical', [choice, ...]), got {dist!r}")
            bad = [c for c in dist[1] if c is not None and not isinstance(c, (bool, int, float, str))]
            if bad:
                raise ValueError(f"{where}: {name!r}: choices must be None, bool, int, float or str "
                                 f"(write a tuple as text, e.g. '(16, 32)'), got {bad[0]!r}")
            out[name] = ("categorical", tuple(dist[1]))
            continue
        n_args = (3, 4) if kind == "float" else (3,)
        if len(dist) not in n_args or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in dist[1:3]):
            form = "('float', low, high[, log])" if kind == "float" else "('int', low, high)"
            raise ValueError(f"{where}: {name!r}: expected {form}, got {dist!r}")
        low, high = dist[1], dist[2]
        if not low <= high:
            raise ValueError(f"{where}: {name!r}: low {low} > high {high}")
        if kind == "int":
            if not (float(low).is_integer() and float(high).is_integer()):
                raise ValueError(f"{where}: {name!r}: int bounds must be integers, got {dist!r}")
            out[name] = ("int", int(low), int(high))
        else:
            use_log = bool(dist[3]) if len(dist) == 4 else False
            if use_log and low <= 0:
                raise ValueError(f"{where}: {name!r}: a log-uniform float needs low > 0, got {low}")
            out[name] = ("float", float(low), float(high), use_log)
    return out


def check_space(space: Mapping[str, tuple], base: TrainConfig) -> None:
    """Apply both bounds of every range and every choice to `base` (one at a time) and, for
    `model.*` entries, build the backbone (shapes only): an unknown key or an invalid value
    fails here, before any training.

    Raises:
      ValueError: naming the space entry.
    """
    for name, dist in space.items():
        values = dist[1] if dist[0] == "categorical" else dist[1:3]
        for v in values:
            try:
                cfg = apply_params(base, {name: v})
                if name.startswith("model."):
                    _build_backbone_shapes(cfg)
            except ValueError as exc:
                raise ValueError(f"space: {name!r} = {v!r}: {exc}") from exc


def _build_backbone_shapes(cfg: TrainConfig) -> None:
    from flax import nnx

    from rismvdr.models.backbone import Backbone

    bcfg = cfg.backbone_config()
    nnx.eval_shape(lambda: Backbone(bcfg, rngs=nnx.Rngs(0)))


def suggest_params(trial: optuna.trial.BaseTrial, space: Mapping[str, tuple]) -> dict[str, Any]:
    """Sample (or, for an enqueued or fixed trial, read) one value per space entry."""
    params = {}
    for name, dist in space.items():
        if dist[0] == "float":
            params[name] = trial.suggest_float(name, dist[1], dist[2], log=dist[3])
        elif dist[0] == "int":
            params[name] = trial.suggest_int(name, dist[1], dist[2])
        else:
            params[name] = trial.suggest_categorical(name, list(dist[1]))
    return params


def apply_params(cfg: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """`cfg` with `params` set: dotted keys through `apply_overrides` (a string value is
    parsed like a `--set` value), `loss_scale.<term>` multiplying the term in every phase.

    Raises:
      ValueError: unknown key or loss term, or an invalid resulting config.
    """
    overrides, scales = [], {}
    terms = {f.name for f in dataclasses.fields(LossWeights)}
    for key, value in params.items():
        if key.startswith(LOSS_SCALE):
            term = key[len(LOSS_SCALE):]
            if term not in terms:
                raise ValueError(f"{key}: unknown loss term {term!r}; known: {', '.join(sorted(terms))}")
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{key}: a loss scale must be a number >= 0, got {value!r}")
            scales[term] = float(value)
        else:
            overrides.append(f"{key}={value}" if isinstance(value, str) else f"{key}={value!r}")
    cfg = apply_overrides(cfg, overrides)
    if scales:
        phases = tuple(dataclasses.replace(p, weights=dataclasses.replace(
            p.weights, **{t: getattr(p.weights, t) * s for t, s in scales.items()})) for p in cfg.phases)
        cfg = cfg.replace(phases=phases)
        cfg.validate()
    return cfg


def trial_config(full: TrainConfig, epochs: int) -> TrainConfig:
    """The shortened run of a trial: `epochs * eval_every` steps, a checkpoint per validation,
    only the best one kept (phases are fractions of `steps`, so they shrink with it)."""
    if int(epochs) < 1:
        raise ValueError(f"--epochs: must be >= 1, got {epochs}")
    return full.replace(steps=int(epochs) * full.eval_every, checkpoint_every=full.eval_every, keep_best=1)


def surrogate_score(metrics: Mapping[str, float], weights: LossWeights) -> float:
    """The surrogate validation score (minimise) of one validation's metrics: `val/objective`
    when present (peak metrics on), else `sum_t weights.t * val/t` over the weighted terms."""
    if "val/objective" in metrics:
        return float(metrics["val/objective"])
    total, n = 0.0, 0
    for f in dataclasses.fields(LossWeights):
        w = getattr(weights, f.name)
        if w != 0.0 and f"val/{f.name}" in metrics:
            total += w * float(metrics[f"val/{f.name}"])
            n += 1
    if n == 0:
        raise ValueError("surrogate: the validation metrics hold no weighted loss term and no val/objective")
    return total


# ------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """What one trial does (picklable: spawned workers receive it)."""

    base: TrainConfig  # the full-training config (--config + --set); trials shorten it
    space: Mapping[str, tuple]  # from `load_space`
    workdir: str  # trials train in <workdir>/trials/<study>/<number> (FixedTrial: study "fixed")
    epochs: int  # validation periods per trial (steps = epochs * eval_every)
    objective: str = "surrogate"  # "surrogate" | "e2e"
    e2e_scenes: int = 200  # scenes of the end-to-end validation subset
    e2e_seed: int = 1  # its seed (the validation seed; 0 is the test set)
    xyz_norm_m: float = 2.0  # e2e objective: rmse_xyz_all_m / xyz_norm_m + f1_weight (1 - F1)
    f1_weight: float = 10.0
    n_devices: int | None = None  # data-parallel devices per trial (None: all visible)
    max_skipped_steps: int = 0  # more skipped (non-finite) updates prune the trial
    max_trials: int | None = None  # the study's cap (COMPLETE + PRUNED); checked when a trial starts

    def validate(self) -> None:
        if self.objective not in ("surrogate", "e2e"):
            raise ValueError(f"--objective: expected 'surrogate' or 'e2e', got {self.objective!r}")
        if int(self.epochs) < 1:
            raise ValueError(f"--epochs: must be >= 1, got {self.epochs}")
        if self.objective == "e2e":
            if int(self.e2e_scenes) < 1:
                raise ValueError(f"--e2e-scenes: must be >= 1, got {self.e2e_scenes}")
            if int(self.e2e_seed) == 0:
                raise ValueError("--e2e-seed: seed 0 is the test set; tune on a validation seed (default 1)")
            if not self.xyz_norm_m > 0:
                raise ValueError(f"--xyz-norm-m: must be > 0, got {self.xyz_norm_m}")
        if self.max_trials is not None and int(self.max_trials) < 1:
            raise ValueError(f"--trials: must be >= 1, got {self.max_trials}")
        if self.base.stage != "backbone":
            raise ValueError("config: hpo tunes the Stage-1 backbone (stage='backbone')")


def make_settings(config: str | Path | TrainConfig, *, space: str | Path, workdir: str | Path, epochs: int,
                  overrides: list[str] | tuple[str, ...] = (), **kwargs) -> ObjectiveSettings:
    """`ObjectiveSettings` from a config file (or config) plus `--set` overrides and a space
    file; `kwargs` are the other `ObjectiveSettings` fields. Checks the space on the config."""
    from rismvdr.train.config import load_config

    base = load_config(config) if not isinstance(config, TrainConfig) else config
    base = apply_overrides(base, list(overrides or ()))
    settings = ObjectiveSettings(base=base, space=load_space(space), workdir=str(workdir), epochs=int(epochs),
                                 **kwargs)
    settings.validate()
    check_space(settings.space, settings.base)
    return settings


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _prune(trial, reason: str):
    trial.set_user_attr("pruned_reason", reason)
    return optuna.TrialPruned(reason)


def _failed(trial, exc: Exception) -> TrialFailed:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
    trial.set_user_attr("rismvdr_status", reason)
    return TrialFailed(reason)


def _claim_slot(trial: optuna.Trial, cap: int) -> None:
    """Raise `BudgetExhausted` (and stop this worker) when `cap` trials that come before this
    one are already finished, running or waiting: workers racing past the
    `MaxTrialsCallback` never overshoot the cap."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    before = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
    if len(before) >= cap:
        trial.set_user_attr("rismvdr_status", "over budget")
        trial.study.stop()
        raise BudgetExhausted(f"the study already has {cap} trials finished or under way")


_E2E_SCENES: dict = {}


def _e2e_scenes(cfg: TrainConfig, seed: int, n: int):
    """The fixed end-to-end validation subset (cached per process)."""
    from rismvdr.physics.simulate import simulate

    key = (cfg.scenario, cfg.scene_overrides, int(seed), int(n))
    if key not in _E2E_SCENES:
        _E2E_SCENES.clear()
        _E2E_SCENES[key] = simulate(cfg.scene_config(), int(seed), int(n), batch_size=min(64, int(n)))
    return _E2E_SCENES[key]


def e2e_metrics(run_dir: str | Path, cfg: TrainConfig, *, scenes: int, seed: int) -> dict:
    """`evaluate_detections` of the production `learned` method (full 1-degree grid, shared
    detector) with the best checkpoint of `run_dir`, on scenes `0..scenes-1` of
    (`cfg`'s scenario, `seed`)."""
    from rismvdr.eval.evaluation import evaluate_detections
    from rismvdr.localize.learned import load_learned
    from rismvdr.localize.registry import localize, settings_for_scenario
    from rismvdr.physics.scenarios import scenario_geometry

    model = load_learned(run_dir, step="best")
    scene_cfg = cfg.scene_config()
    val = _e2e_scenes(cfg, seed, scenes)
    res = localize("learned", val, scenario_geometry(scene_cfg), settings_for_scenario(scene_cfg),
                   progress=False, model=model)
    d = res.detections
    return evaluate_detections(val, d.phi, d.theta, d.r, d.valid)


def objective(trial: optuna.trial.BaseTrial, settings: ObjectiveSettings) -> float:
    """One trial (minimise): sample, train `settings.epochs` validation periods with pruning,
    return the surrogate or the end-to-end objective (module docstring).

    Works with `optuna.trial.FixedTrial` too (no pruning, no cap). Used by `run_study`
    (`rismvdr hpo`), both stages of `run_hpo2` and the tests.

    Raises:
      optuna.TrialPruned: pruned by the pruner, or non-finite (reason in `pruned_reason`).
      BudgetExhausted: the study's cap was taken before this trial started.
      TrialFailed: an accelerator runtime error (out of memory, ...): the trial fails.
      RuntimeError: the run was interrupted (SIGTERM/SIGINT): the trial fails, not counted.
    """
    import jax
    import numpy as np

    from rismvdr.train.trainer import e2e_objective, fit

    is_study_trial = isinstance(trial, optuna.Trial)
    if is_study_trial and settings.max_trials is not None:
        _claim_slot(trial, int(settings.max_trials))
    try:
        params = suggest_params(trial, settings.space)
    except BudgetExhausted:  # hpo2 stage 2: no enqueued parameter set left
        if is_study_trial:
            trial.set_user_attr("rismvdr_status", "no enqueued parameter set left")
            trial.study.stop()
        raise
    full = apply_params(settings.base, params)
    trial.set_user_attr("config", to_dict(full))
    cfg = trial_config(full, settings.epochs)
    study_name = trial.study.study_name if is_study_trial else "fixed"
    run_dir = Path(settings.workdir) / "trials" / study_name / str(trial.number)
    trial.set_user_attr("trial_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    weights = settings.base.phases[-1].weights  # fixed across trials (module docstring)
    values: list[float] = []

    def on_eval(step: int, metrics: dict) -> None:
        epoch = step // cfg.eval_every
        value = surrogate_score(metrics, weights)
        values.append(value)
        if not _finite(value):
            raise _prune(trial, f"epoch {epoch}: non-finite surrogate {value}")
        trial.report(value, epoch)
        if trial.should_prune():
            raise _prune(trial, f"epoch {epoch}: surrogate {value:.4g} pruned by the pruner")

    try:
        out = fit(cfg, run_dir, n_devices=settings.n_devices, progress=False, on_eval=on_eval)
    except jax.errors.JaxRuntimeError as exc:
        raise _failed(trial, exc) from exc
    trial.set_user_attr("skipped", int(out["skipped"]))
    trial.set_user_attr("seconds_train", round(float(out["seconds"]), 1))
    if out["status"] != "done":
        raise RuntimeError(f"trial {trial.number}: training {out['status']} at step {out['steps']}")
    if out["skipped"] > settings.max_skipped_steps:
        raise _prune(trial, f"{out['skipped']} non-finite update(s) skipped in training "
                            f"(allowed: {settings.max_skipped_steps})")
    value = values[-1]
    trial.set_user_attr("surrogate", value)
    if settings.objective == "e2e":
        t0 = time.perf_counter()
        try:
            m = e2e_metrics(run_dir, full, scenes=settings.e2e_scenes, seed=settings.e2e_seed)
        except jax.errors.JaxRuntimeError as exc:
            raise _failed(trial, exc) from exc
        value = e2e_objective(m, xyz_norm=settings.xyz_norm_m, f1_weight=settings.f1_weight)
        for k, v in m.items():  # the scalar figures (not the per-K / per-SNR breakdowns)
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                trial.set_user_attr(f"e2e_{k}", int(v))
            elif isinstance(v, (float, np.floating)):
                trial.set_user_attr(f"e2e_{k}", float(v) if _finite(v) else None)
        trial.set_user_attr("e2e_objective", value)
        trial.set_user_attr("seconds_e2e", round(time.perf_counter() - t0, 1))
    if not _finite(value):
        raise _prune(trial, f"non-finite objective {value}")
    return float(value)


# ------------------------------------------------------------------------------------------
# Storage
# ------------------------------------------------------------------------------------------
class _HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """`JournalStorage` with `RDBStorage`'s heartbeat interface: the last heartbeat of a
    running trial is a system attribute (wall-clock seconds), so optuna's own heartbeat thread
    and `fail_stale_trials` work on journal files."""

    def __init__(self, backend, *, heartbeat_interval: int, grace_period: int):
        super().__init__(backend)
        self._heartbeat_interval = int(heartbeat_interval)
        self._grace_period = int(grace_period)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # the trial has just finished (or was failed as stale by another worker)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()  # (FrozenTrial keeps the storage's id private; optuna's RDB code uses it too)
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if now - t.system_attrs.get(_HEARTBEAT_ATTR, now) > self._grace_period]

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return None

    def get_failed_trial_callback(self):  # optuna < 4.9 spelling of the same hook
        return None


def default_storage(workdir: str | Path) -> str:
    """The default storage: the journal file `<workdir>/hpo.journal`."""
    return str(Path(workdir) / JOURNAL_NAME)


def _is_url(storage: str) -> bool:
    return "://" in storage or storage.startswith("sqlite:")


def make_storage(storage: str, *, heartbeat_interval: int = 60, grace_period: int = 300,
                 create: bool = True) -> optuna.storages.BaseStorage:
    """A storage with heartbeats from a journal file path or an SQLAlchemy URL.

    Args:
      storage: a journal file path (shared by processes on one host) or an SQLAlchemy URL
        (`postgresql+psycopg2://user@host:port/db`, `mysql+pymysql://...`, `sqlite:///f.db`).
      heartbeat_interval: seconds between heartbeats of a running trial.
      grace_period: a RUNNING trial without a heartbeat for this long is failed as stale.
      create: False: a journal file must exist already (export).

    Raises:
      FileNotFoundError: `create=False` and no journal file at `storage`.
    """
    if int(heartbeat_interval) < 1 or int(grace_period) < 1:
        raise ValueError(f"--heartbeat-s/--grace-s: must be >= 1, got {heartbeat_interval}/{grace_period}")
    if _is_url(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(storage, heartbeat_interval=int(heartbeat_interval),
                                              grace_period=int(grace_period))
    path = Path(storage)
    if not create and not path.is_file():
        raise FileNotFoundError(f"--storage: no journal file {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _HeartbeatJournalStorage(JournalFileBackend(str(path)),
                                    heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def _check_workers(storage: str, workers: int) -> None:
    if int(workers) < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    if workers > 1 and storage.startswith("sqlite"):
        raise ValueError("--storage: SQLite does not take concurrent writers; with --workers > 1 use the "
                         "default journal file or a server URL (postgresql+psycopg2://...)")


def _open_study(name: str, storage: str, settings: ObjectiveSettings, *, heartbeat_interval: int,
                grace_period: int) -> optuna.Study:
    """Create (or load) the study and check that it was made for the same search: objective,
    epochs, base config, space and end-to-end settings (stored in the study's user attribute
    `search`)."""
    st = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = optuna.create_study(study_name=name, storage=st, direction="minimize", load_if_exists=True)
    e2e = {k: getattr(settings, k) for k in ("e2e_scenes", "e2e_seed", "xyz_norm_m", "f1_weight")}
    signature = {"objective": settings.objective, "epochs": int(settings.epochs), "config": to_dict(settings.base),
                 "space": {k: list(v) for k, v in settings.space.items()}, "e2e": e2e}
    signature = json.loads(json.dumps(signature))  # what the storage gives back (tuples become lists)
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", signature)
    elif stored != signature:
        diff = sorted(k for k in signature if stored.get(k) != signature[k])
        raise ValueError(f"--study: {name!r} in {storage} was made with another {', '.join(diff)} (its values "
                         "would not compare); choose another --study or --workdir")
    return study


# ------------------------------------------------------------------------------------------
# Running studies
# ------------------------------------------------------------------------------------------
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


def enable_compile_cache(path: str | Path | None) -> None:
    """Use a persistent XLA compilation cache in `path` (None: leave JAX's setting alone).

    Trials of one architecture compile the same programs; the cache lets later trials, and
    other worker processes, load them instead of compiling (seconds to minutes per trial).
    Takes effect even if this process has compiled already.
    """
    if path is None:
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    compilation_cache.reset_cache()


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
    heartbeat_interval: int = 60
    grace_period: int = 300
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
    raise ValueError(f"--pruner: expected 'median' or 'none', got {name!r}")


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
              pruner: str = "median", sampler_seed: int | None = None, heartbeat_interval: int = 60,
              grace_period: int = 300, compile_cache: str | None = None,
              verbosity: int = optuna.logging.WARNING) -> optuna.Study:
    """Run (or top up) a study until `n_trials` trials are COMPLETE or PRUNED.

    Args:
      settings: what a trial does (`max_trials` is set to `n_trials` here).
      study_name: the study (created if absent; its search must match, see `_open_study`).
      storage: journal file path or SQLAlchemy URL (`make_storage`).
      n_trials: the cap on the study's COMPLETE + PRUNED trials, across all workers.
      workers: 1: trials run in this process; K > 1: K spawned processes (a script calling
        this needs the `if __name__ == "__main__":` guard of multiprocessing's spawn).
      pruner: "median" (`MedianPruner(n_startup_trials=5)`: from the 6th trial on, a trial
        worse than the median of the others at the same epoch stops) or "none".
      sampler_seed: TPE seed (worker i uses seed + i); None: random.
      heartbeat_interval, grace_period: stale-trial detection, seconds.
      compile_cache: persistent XLA cache directory of spawned workers (None: JAX's setting;
        this process is left alone: see `enable_compile_cache`).
      verbosity: optuna's logging level in spawned workers.

    Returns:
      The study (reloaded after the workers finish).

    Raises:
      ValueError: bad arguments, a space that does not fit the config, a study made for
        another search, or SQLite with several workers.
      RuntimeError: a worker process failed (the trials it finished stay in the study).
    """
    _check_workers(storage, workers)
    _make_pruner(pruner)
    if int(n_trials) < 1:
        raise ValueError(f"--trials: must be >= 1, got {n_trials}")
    settings = dataclasses.replace(settings, max_trials=int(n_trials))
    settings.validate()
    check_space(settings.space, settings.base)
    study = _open_study(study_name, storage, settings, heartbeat_interval=heartbeat_interval,
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
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value)]
    return sorted(done, key=lambda t: (t.value, t.number))[: int(k)]


def run_hpo2(stage1: ObjectiveSettings, stage2: ObjectiveSettings, *, study_name: str, storage: str,
             stage1_trials: int, topk: int, workers: int = 1, pruner: str = "median",
             sampler_seed: int | None = None, heartbeat_interval: int = 60, grace_period: int = 300,
             compile_cache: str | None = None, verbosity: int = optuna.logging.WARNING,
             ) -> tuple[optuna.Study, optuna.Study]:
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
    _check_workers(storage, workers)
    stage2.validate()
    s2 = _open_study(f"{study_name}-s2", storage, stage2, heartbeat_interval=heartbeat_interval,
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
    rows.sort(key=lambda r: (r["state"] != "complete", r["value"] if _finite(r["value"]) else math.inf))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def format_rerank(rows: list[dict]) -> str:
    """The reranked table as Markdown."""
    def f(x, spec=".4g"):
        return "-" if x is None or not _finite(x) else format(float(x), spec)

    lines = ["| rank | s2 trial | s1 trial | s1 surrogate | e2e objective | F1 | P | R | rmse xyz (m) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['trial']} | {r['stage1_trial'] if r['stage1_trial'] is not None else '-'} "
                     f"| {f(r['stage1_value'])} | {f(r['value']) if r['state'] == 'complete' else r['state']} "
                     f"| {f(r['f1'], '.3f')} | {f(r['precision'], '.3f')} | {f(r['recall'], '.3f')} "
                     f"| {f(r['rmse_xyz_all_m'], '.3f')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------
def export_best(study_name: str, storage: str, out: str | Path) -> dict:
    """Write the best COMPLETE trial of a study to `out` (JSON): `study`, `trial`, `value`,
    `params`, `user_attrs` and `config` (the full-training `to_dict(TrainConfig)` that
    `rismvdr train --from-hpo` reads; checked to round-trip through `from_dict`).

    Raises:
      FileNotFoundError: no journal file; ValueError: no such study or no complete trial.
    """
    from rismvdr.files import to_jsonable, write_json

    st = make_storage(storage, create=False)
    names = optuna.get_all_study_names(st)
    if study_name not in names:
        raise ValueError(f"--study: no study {study_name!r} in {storage} (studies: {', '.join(sorted(names)) or 'none'})")
    study = optuna.load_study(study_name=study_name, storage=st)
    try:
        best = study.best_trial
    except ValueError:
        raise ValueError(f"--study: {study_name!r} has no complete trial yet") from None
    if "config" not in best.user_attrs:
        raise ValueError(f"--study: trial {best.number} of {study_name!r} has no 'config' attribute "
                         "(not made by rismvdr hpo)")
    config = best.user_attrs["config"]
    cfg = from_dict(config)
    cfg.validate()
    if to_dict(cfg) != config:
        raise ValueError(f"--study: trial {best.number}'s config does not round-trip through from_dict")
    record = dict(study=study_name, trial=best.number, value=best.value, params=dict(best.params),
                  user_attrs={k: v for k, v in best.user_attrs.items() if k != "config"}, config=config)
    write_json(out, to_jsonable(record))
    return record
