"""One trial of `rismvdr hpo`: its settings, the shortened training run, the objective, pruning.

A trial samples the search space (`rismvdr.hpo.space`), applies it to the base config
(`--config` plus `--set`), trains `epochs` validation periods (`steps = epochs * eval_every`)
in `<workdir>/trials/<study>/<number>`, reports the surrogate after every validation
(`trial.report`; the pruner, `MedianPruner` by default, may stop it) and returns one of two
objectives (minimised):

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
`rismvdr hpo export` writes for `rismvdr train --from-hpo best.json`. The first thing a trial
records is its worker (`worker_host`, `worker_pid`), so that a rerun after a crash can tell a
dead worker's RUNNING trial from a live one (`rismvdr.hpo.study.fail_dead_trials`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
import optuna
from optuna.trial import TrialState

from rismvdr.eval.evaluation import evaluate_detections
from rismvdr.eval.objective import E2E_SCENES, E2E_SEED, F1_WEIGHT, XYZ_NORM_M, check_validation_seed, e2e_objective
from rismvdr.hpo.space import apply_params, check_space, load_space, suggest_params
from rismvdr.localize.learned import load_learned
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.scenarios import scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.train import trainer
from rismvdr.train.config import LossWeights, TrainConfig, apply_overrides, load_config

__all__ = ["WORKER_HOST", "WORKER_PID", "ObjectiveSettings", "BudgetExhausted", "TrialFailed", "make_settings", "trial_config",
           "surrogate_score", "e2e_metrics", "objective", "is_finite"]


#: User attributes of a trial: the host and process id of the worker running it (set when it starts).
WORKER_HOST, WORKER_PID = "worker_host", "worker_pid"


class BudgetExhausted(RuntimeError):
    """A trial started when the study's cap was already taken (or, in `hpo2` stage 2, no
    enqueued parameter set was left): it ends FAIL and its worker stops."""


class TrialFailed(RuntimeError):
    """A trial hit a runtime error of the accelerator (e.g. out of memory for a large width):
    it ends FAIL (not counted) and the study goes on. Other exceptions (bugs, bad configs)
    end the worker."""


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


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """What one trial does (picklable: spawned workers receive it)."""

    base: TrainConfig  # the full-training config (--config + --set); trials shorten it
    space: Mapping[str, tuple]  # from `load_space`
    workdir: str  # trials train in <workdir>/trials/<study>/<number> (FixedTrial: study "fixed")
    epochs: int  # validation periods per trial (steps = epochs * eval_every)
    objective: str = "surrogate"  # "surrogate" | "e2e"
    e2e_scenes: int = E2E_SCENES  # scenes of the end-to-end validation subset
    e2e_seed: int = E2E_SEED  # its seed (the validation seed; the test seed is refused)
    xyz_norm_m: float = XYZ_NORM_M  # e2e objective: rmse_xyz_all_m / xyz_norm_m + f1_weight (1 - F1)
    f1_weight: float = F1_WEIGHT
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
            check_validation_seed(self.e2e_seed, name="--e2e-seed")
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
    base = load_config(config) if not isinstance(config, TrainConfig) else config
    base = apply_overrides(base, list(overrides or ()))
    settings = ObjectiveSettings(base=base, space=load_space(space), workdir=str(workdir), epochs=int(epochs),
                                 **kwargs)
    settings.validate()
    check_space(settings.space, settings.base)
    return settings


def is_finite(x) -> bool:
    """True when `x` is a finite number (None, text and other non-numbers: False)."""
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
    key = (cfg.scenario, cfg.scene_overrides, int(seed), int(n))
    if key not in _E2E_SCENES:
        _E2E_SCENES.clear()
        _E2E_SCENES[key] = simulate(cfg.scene_config(), int(seed), int(n), batch_size=min(64, int(n)))
    return _E2E_SCENES[key]


def e2e_metrics(run_dir: str | Path, cfg: TrainConfig, *, scenes: int, seed: int) -> dict:
    """`evaluate_detections` of the production `learned` method (full 1-degree grid, shared
    detector) with the best checkpoint of `run_dir`, on scenes `0..scenes-1` of
    (`cfg`'s scenario, `seed`)."""
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
    is_study_trial = isinstance(trial, optuna.Trial)
    # who runs this trial, first of all: a rerun fails it at once if this process dies (study.fail_dead_trials)
    trial.set_user_attr(WORKER_HOST, socket.gethostname())
    trial.set_user_attr(WORKER_PID, os.getpid())
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
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
    trial.set_user_attr("config", full.to_dict())
    cfg = trial_config(full, settings.epochs)
    study_name = trial.study.study_name if is_study_trial else "fixed"
    run_dir = Path(settings.workdir) / "trials" / study_name / str(trial.number)
    trial.set_user_attr("trial_dir", str(run_dir))
    weights = settings.base.phases[-1].weights  # fixed across trials (module docstring)
    values: list[float] = []

    def on_eval(step: int, metrics: dict) -> None:
        epoch = step // cfg.eval_every
        value = surrogate_score(metrics, weights)
        values.append(value)
        if not is_finite(value):
            raise _prune(trial, f"epoch {epoch}: non-finite surrogate {value}")
        trial.report(value, epoch)
        if trial.should_prune():
            raise _prune(trial, f"epoch {epoch}: surrogate {value:.4g} pruned by the pruner")

    try:
        out = trainer.fit(cfg, run_dir, n_devices=settings.n_devices, progress=False, on_eval=on_eval)
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
                trial.set_user_attr(f"e2e_{k}", float(v) if is_finite(v) else None)
        trial.set_user_attr("e2e_objective", value)
        trial.set_user_attr("seconds_e2e", round(time.perf_counter() - t0, 1))
    if not is_finite(value):
        raise _prune(trial, f"non-finite objective {value}")
    return float(value)
