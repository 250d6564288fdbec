"""Training loops: Stage 1 (backbone) and Stage 2 (SpectrumRefiner on a frozen backbone).

Design (big_vision / flax-examples style):
- Scenes are simulated inside the jitted step from `fold_in(train_key, step)`, so training never
  waits on disk and a step's data depends only on (seed, step): `--resume` continues exactly.
- One jitted `(state, weights) -> (state, metrics)` step with the state donated. Data parallel
  over a one-axis mesh ("data"): the batch is sharded along it, parameters are replicated, XLA
  inserts the gradient all-reduce. Several processes: call `rismvdr.train.distributed.initialize()`
  first (the CLI does when `--distributed` is given); the mesh then spans every process's devices,
  each device simulates its own rows of the global batch (scene i from `fold_in(key, i)`, so the
  batch is the same whatever the process count), every process saves its shards of the Orbax
  checkpoint (finalised once, by process 0), and only process 0 writes `metrics.jsonl`,
  `config.json`, the loss curve, the progress bar and the log. A failure inside the loop of a
  multi-process run (a lost process) is raised as `ProcessLostError`, naming the step.
- What differs between the stages (the trained module, its loss terms and their batch, the
  validation terms, the learned method measured, the run record, the frozen backbone saved
  with every checkpoint) is a `Stage`, chosen once from `cfg.stage` when the trainer is built.
- A step whose loss or gradients are not finite leaves parameters, optimizer state and EMA
  unchanged and increments `skipped` (reported in the metrics); the run continues.
- Loss weights follow the config's phases; they enter the step as traced scalars (one compile).
- Validation: every loss term on the fixed validation set (EMA weights), and on a capped
  subset the MVDR peak metrics of the stage's learned method (precision, recall, F1, FP per
  scene, PSSR), through the same detector and metrics code as every method.
- Checkpoints (`rismvdr.train.checkpoint`): every `checkpoint_every` steps and at the end, the
  latest and the best `keep_best` by `val/objective` (`rismvdr.eval.objective.e2e_objective`,
  the seed's end-to-end objective); SIGTERM/SIGINT saves the current state and returns cleanly
  (several processes: a signal in any of them stops all at the same step, `any_process`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from rismvdr.eval.evaluation import evaluate_detections, scene_pssr_db
from rismvdr.eval.objective import e2e_objective
from rismvdr.eval.plots import plot_training_curves
from rismvdr.io import atomic_write
from rismvdr.io.lock import directory_lock
from rismvdr.localize.learned import als_samp_factor, refiner_grid, refiner_inputs
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.localize.weights import BEST_METRIC, LearnedModel, load_learned
from rismvdr.models.backbone import Backbone, BackboneConfig
from rismvdr.models.params import ModelDef, split_model
from rismvdr.models.refiner import make_refiner
from rismvdr.physics.simulate import Scene, simulate, simulate_scene
from rismvdr.train import losses
from rismvdr.train.checkpoint import Checkpointer
from rismvdr.train.config import TrainConfig, weights_at
from rismvdr.train.distributed import any_process, is_main, lost_process_guard
from rismvdr.train.terms import TERMS, active_terms, backbone_terms
from rismvdr.train.state import (
    TrainState,
    data_sharded,
    ema_update,
    init_train_state,
    make_mesh,
    make_optimizer,
    replicated,
)

__all__ = ["Trainer", "Stage", "BackboneStage", "RefinerStage", "make_stage", "fit", "sample_scenes",
           "OBJECTIVE"]

log = logging.getLogger(__name__)
OBJECTIVE = BEST_METRIC  # "val/objective": checkpoints are ranked by it, inference loads the best
_TRAIN_SALT = 0x7A11
# optax >= 0.2.5 moved global_norm to optax.tree.norm
_global_norm = optax.tree.norm if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm


def sample_scenes(scene_cfg, key, batch_size: int, sharding=None, *, indices=None) -> Scene:
    """`batch_size` scenes simulated from `key` (scene i from `fold_in(key, indices[i])`,
    indices 0..batch_size-1 by default), optionally laid out along the data axis."""
    idx = jnp.arange(batch_size, dtype=jnp.int32) if indices is None else indices.astype(jnp.int32)
    if sharding is not None:
        idx = jax.lax.with_sharding_constraint(idx, sharding)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    return jax.vmap(lambda k: simulate_scene(scene_cfg, k))(keys)


def _finite_tree(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _select(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


# ------------------------------------------------------------------------------------------
# The stages
# ------------------------------------------------------------------------------------------
class Stage(Protocol):
    """What one training stage trains and measures (the trainer asks, never tests the stage).

    Attributes:
      bcfg: the backbone's config (trained in Stage 1, frozen in Stage 2).
      mdef, params0: the trained module's definition and initial parameter leaves.
      active: the loss terms trained (a non-zero weight in some phase).
      val_terms: the loss terms reported on validation.
      method: the registered learned method whose peak metrics are measured.
    """

    bcfg: BackboneConfig
    mdef: ModelDef
    params0: tuple
    active: tuple[str, ...]
    val_terms: tuple[str, ...]
    method: str

    def loss_terms(self, params, scenes: Scene, active: tuple[str, ...]) -> dict[str, jax.Array]:
        """Batch means of the `active` loss terms of `params` on `scenes` (traceable)."""

    def model(self, params) -> LearnedModel:
        """The learned model with the trained module's parameters `params`."""

    def record(self) -> dict[str, Any]:
        """The stage's entries of the run record (`config.json`, every checkpoint's config)."""

    def payload(self) -> dict[str, Any]:
        """Pytrees saved beside the training state in every checkpoint (restored on resume)."""


class BackboneStage:
    """Stage 1: the backbone, trained on every backbone loss term with a non-zero weight."""

    method = "learned"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.bcfg = cfg.backbone_config()
        self.mdef, self.params0 = split_model(Backbone(self.bcfg, rngs=nnx.Rngs(cfg.seed)))
        self.init_source = None
        if cfg.init_from:
            self.params0, self.init_source = initial_backbone(cfg.init_from, self.bcfg, self.params0)
        self.active = tuple(t for t in active_terms([p.weights for p in cfg.phases]) if t != "heatmap")
        # every backbone term (the contrast loss only when trained: it costs a Cholesky)
        self.val_terms = tuple(t for t in TERMS if t != "heatmap" and (t != "peak_contrast" or t in self.active))

    def loss_terms(self, params, scenes: Scene, active: tuple[str, ...]) -> dict[str, jax.Array]:
        samp = als_samp_factor(scenes) if self.bcfg.beta > 0 else None
        out = self.mdef.apply(params, scenes.y, scenes.H, scenes.codes, samp, refine_range=False)
        return backbone_terms(out, scenes, self.bcfg, self.cfg.loss, active)

    def model(self, params) -> LearnedModel:
        return LearnedModel(self.bcfg, self.mdef, tuple(params), None, None, None, "training", {})

    def record(self) -> dict[str, Any]:
        out = {"backbone": self.bcfg.to_dict(), "refiner": None}
        if self.init_source is not None:
            out["init_from"] = self.init_source
        return out

    def payload(self) -> dict[str, Any]:
        return {}


def initial_backbone(init_from: str, bcfg: BackboneConfig, params0: tuple) -> tuple[tuple, dict]:
    """The backbone parameters a fine-tuning run starts from, and where they came from.

    Args:
      init_from: "shipped" (the packaged weights) or a model or run directory (`load_learned`).
      bcfg: the backbone this run trains; the model's must be the same (same architecture,
        geometry, measurement shape and search box), else the run would silently reshape it.
      params0: the randomly initialised leaves (their shapes and dtypes are checked).

    Returns:
      (parameter leaves, `{"source", "train", "metrics"}` of the starting model for the record).

    Raises:
      ValueError: naming `init_from` when nothing loads there or the model does not fit `bcfg`.
    """
    try:
        model = load_learned(None if init_from == "shipped" else init_from)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"init_from: {exc}") from exc
    if model.backbone_cfg != bcfg:
        mine, theirs = bcfg.to_dict(), model.backbone_cfg.to_dict()
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"init_from: the model at {model.source} is another backbone than this run's "
                         f"(differs in {', '.join(diff)}); copy its model settings into the config")
    leaves = tuple(model.backbone_params)
    if [(np.shape(a), jnp.dtype(a.dtype)) for a in leaves] != [(np.shape(a), jnp.dtype(a.dtype)) for a in params0]:
        raise ValueError(f"init_from: the parameters at {model.source} do not fit this backbone")
    return leaves, {"source": model.source, "train": model.info.get("train"), "metrics": model.info.get("metrics")}


class RefinerStage:
    """Stage 2: the SpectrumRefiner on the frozen backbone's low-rank MVDR map, trained on the
    refiner's heat-map (focal) loss alone (the seed's fast path)."""

    method = "learned-refiner"
    active = val_terms = ("heatmap",)

    def __init__(self, cfg: TrainConfig, backbone: LearnedModel):
        self.cfg = cfg
        self.backbone = backbone
        self.bcfg = backbone.backbone_cfg
        self.mdef, self.params0 = split_model(make_refiner(cfg.refiner, nnx.Rngs(cfg.seed)))
        self.rgrid = refiner_grid(self.bcfg, cfg.refiner)

    def _inputs(self, scenes: Scene):
        """The refiner's input maps (`refiner_inputs`: the frozen backbone's low-rank MVDR map on
        the coarse grid, and the measurements' maps `cfg.refiner.inputs` names), in dB."""
        db, _ = refiner_inputs(self.backbone, self.cfg.refiner, scenes, delta_rel=self.cfg.loss.delta_rel,
                               steering_model=self.bcfg.steering_model)
        return jax.lax.stop_gradient(db)

    def loss_terms(self, params, scenes: Scene, active: tuple[str, ...]) -> dict[str, jax.Array]:
        """The heat-map term (the stage's only one, whatever `active` asks)."""
        ls = self.cfg.loss
        logits = self.mdef.apply(params, self._inputs(scenes))
        phi_ax, th_ax, _ = (jnp.asarray(x, jnp.float32) for x in self.rgrid.arrays())
        hm = lambda lg, p, t, m: losses.heatmap_loss(  # noqa: E731
            lg, p.astype(jnp.float32), t.astype(jnp.float32), m, phi_ax, th_ax, sigma_cells=ls.sigma_cells,
            alpha=ls.focal_alpha, gamma=ls.focal_gamma)
        return {"heatmap": jnp.mean(jax.vmap(hm)(logits, scenes.phi, scenes.theta, scenes.mask))}

    def model(self, params) -> LearnedModel:
        return self.backbone._replace(refiner_cfg=self.cfg.refiner, refiner_def=self.mdef,
                                      refiner_params=tuple(params))

    def record(self) -> dict[str, Any]:
        b = self.backbone
        return {"backbone": self.bcfg.to_dict(), "refiner": self.cfg.refiner.to_dict(),
                "backbone_source": b.source, "backbone_train": b.info.get("train"),
                "backbone_metrics": b.info.get("metrics")}

    def payload(self) -> dict[str, Any]:
        return {"backbone": self.backbone.backbone_params}


def make_stage(cfg: TrainConfig, backbone: LearnedModel | None = None) -> Stage:
    """The stage `cfg.stage` names; Stage 2 needs the trained `backbone`, Stage 1 takes none."""
    if cfg.stage == "refiner":
        if backbone is None:
            raise ValueError("backbone: Stage 2 (refiner) needs a trained backbone")
        return RefinerStage(cfg, backbone)
    if backbone is not None:
        raise ValueError("backbone: Stage 1 (backbone) trains its own backbone; pass none")
    return BackboneStage(cfg)


class Trainer:
    """Builds the stage, optimizer, jitted step and evaluation for one config."""

    def __init__(self, cfg: TrainConfig, *, n_devices: int | None = None, backbone: LearnedModel | None = None):
        """Args:
          cfg: the run's config.
          n_devices: devices of the data mesh (all by default).
          backbone: Stage 2 only: the frozen backbone (`rismvdr.localize.weights.LearnedModel`).
        """
        cfg.validate()
        self.cfg = cfg
        self.scene_cfg = cfg.scene_config()
        self.mesh = make_mesh(n_devices)
        n_dev = self.mesh.devices.size
        if cfg.batch_size % n_dev:
            raise ValueError(f"batch_size: {cfg.batch_size} is not a multiple of the {n_dev} devices")
        self.rep, self.dat = replicated(self.mesh), data_sharded(self.mesh)
        self.tx = make_optimizer(cfg.optim, cfg.steps)
        self.train_key = jax.random.fold_in(jax.random.key(cfg.seed), _TRAIN_SALT)
        self.stage = make_stage(cfg, backbone)
        self.bcfg = self.stage.bcfg
        self.active = self.stage.active
        self.params0 = self.stage.params0
        self.n_params = int(sum(np.prod(p.shape) for p in self.params0))
        self._step_fn = None

    # ---------------------------------------------------------------------------------------
    def init_state(self) -> TrainState:
        state = init_train_state(self.params0, self.tx)
        return jax.device_put(state, self.rep)

    def abstract_state(self):
        """Shapes, dtypes and shardings of the state (the restore target)."""
        abstract = jax.eval_shape(lambda: init_train_state(self.params0, self.tx))
        return jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.rep), abstract)

    def restore_target(self) -> dict:
        """The checkpoint restore target: the state and the stage's payload (replicated)."""
        payload = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.rep), self.stage.payload())
        return {"train": self.abstract_state(), **payload}

    def weights(self, step: int) -> dict[str, jax.Array]:
        _, w = weights_at(self.cfg, step)
        return {t: jnp.asarray(getattr(w, t), jnp.float32) for t in self.active}

    # ---------------------------------------------------------------------------------------
    def _scenes(self, step):
        b = self.cfg.batch_size
        if self.cfg.train_pool > 0:  # a fixed pool of scenes, visited in order (overfit checks)
            idx = (step * b + jnp.arange(b, dtype=jnp.int32)) % self.cfg.train_pool
            return sample_scenes(self.scene_cfg, self.train_key, b, self.dat, indices=idx)
        key = jax.random.fold_in(self.train_key, step)
        return sample_scenes(self.scene_cfg, key, b, self.dat)

    def loss_terms(self, params, scenes: Scene, active: tuple[str, ...] | None = None):
        """(terms dict of batch means) for parameters `params` on `scenes`."""
        return self.stage.loss_terms(params, scenes, self.active if active is None else active)

    def _loss(self, params, scenes, weights):
        terms = self.loss_terms(params, scenes)
        total = sum(weights[t] * terms[t] for t in self.active)
        return total, terms

    def loss_and_grads(self, params, step: int):
        """(loss, terms, grads) at `step`'s training batch (for tests and diagnostics)."""
        @jax.jit
        def f(params, step, weights):
            scenes = self._scenes(step)
            (loss, terms), grads = jax.value_and_grad(self._loss, has_aux=True)(params, scenes, weights)
            return loss, terms, grads
        return f(params, jnp.asarray(step, jnp.int32), self.weights(int(step)))

    def step_fn(self) -> Callable:
        """The jitted train step `(state, weights) -> (state, metrics)`, state donated."""
        if self._step_fn is not None:
            return self._step_fn
        cfg = self.cfg
        poison_steps = jnp.asarray(cfg.debug_nan_steps or (-1,), jnp.int32)

        def step(state: TrainState, weights):
            scenes = self._scenes(state.step)
            (loss, terms), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, scenes, weights)
            poison = jnp.where(jnp.any(state.step == poison_steps), jnp.nan, 1.0).astype(jnp.float32)
            loss = loss * poison
            grads = jax.tree_util.tree_map(lambda g: g * poison.astype(g.dtype), grads)
            finite = jnp.isfinite(loss) & _finite_tree(grads)
            updates, opt_new = self.tx.update(grads, state.opt_state, state.params)
            params_new = optax.apply_updates(state.params, updates)
            params = _select(finite, params_new, state.params)
            opt_state = _select(finite, opt_new, state.opt_state)
            ema = _select(finite, ema_update(state.ema, params_new, state.step, cfg.optim.ema_decay), state.ema)
            new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema,
                             skipped=state.skipped + (~finite).astype(jnp.int32))
            metrics = dict(loss=loss, grad_norm=_global_norm(grads), finite=finite,
                           skipped=new.skipped, **terms)
            return new, metrics

        self._step_fn = jax.jit(step, in_shardings=(self.rep, self.rep), out_shardings=(self.rep, self.rep),
                                donate_argnums=(0,))
        return self._step_fn

    # ---------------------------------------------------------------------------------------
    def validation_set(self) -> Scene:
        return simulate(self.scene_cfg, self.cfg.val_seed, self.cfg.val_scenes, batch_size=min(64, self.cfg.val_scenes))

    def evaluate(self, params, val: Scene, *, peak_scenes: int | None = None, progress: bool = False) -> dict:
        """Validation metrics of `params` (use the EMA): mean loss terms over `val` and the
        peak metrics of the learned method on the first `peak_scenes` scenes."""
        cfg = self.cfg
        # Evaluate in this process, on host copies (uncommitted): the replicated training copy
        # would make every validation computation a multi-device (and multi-process) one;
        # `localize` shards the peak metrics' batches over this process's devices itself.
        params = jax.tree_util.tree_map(jnp.asarray, jax.device_get(params))
        bs = min(cfg.batch_size, len(val))
        ev = jax.jit(lambda params, scenes: self.loss_terms(params, scenes, self.stage.val_terms))

        sums: dict[str, float] = {}
        n = 0
        for lo in range(0, len(val) - bs + 1, bs):
            t = jax.device_get(ev(params, val[lo: lo + bs]))
            for k, v in t.items():
                sums[k] = sums.get(k, 0.0) + float(v) * bs
            n += bs
        out = {f"val/{k}": v / max(n, 1) for k, v in sums.items()}
        k = cfg.val_peak_scenes if peak_scenes is None else peak_scenes
        if k > 0:
            out.update(self.peak_metrics(params, val[: min(k, len(val))], progress=progress))
        return out

    def peak_metrics(self, params, scenes: Scene, *, progress: bool = False) -> dict:
        """Detection metrics of the stage's learned method on `scenes` (coarse 2-degree grid)."""
        settings = settings_for_scenario(self.scene_cfg, batch_size=min(32, len(scenes))).with_grid(
            phi_step_deg=2.0, theta_step_deg=2.0, n_planes=8)
        res = localize(self.stage.method, scenes, self.bcfg.geometry(), settings, progress=progress,
                       model=self.stage.model(params))
        det = res.detections
        pssr = scene_pssr_db(res.power_db, det.phi, det.theta, det.valid, res.grid)
        m = evaluate_detections(scenes, det.phi, det.theta, det.r, det.valid, pssr=pssr)
        out = {f"val/peak_{k}": float(m[k]) for k in ("precision", "recall", "f1", "fp_per_scene",
                                                      "median_pos_err_m", "rmse_xyz_all_m", "median_pssr_db")}
        out[OBJECTIVE] = e2e_objective(m)
        if res.fallbacks is not None:
            out["val/refiner_fallbacks"] = float(res.fallbacks)
        return out


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves at the next step boundary and returns."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _metric_scalars(d: dict) -> dict:
    """A step's metrics (0-d arrays) as Python bool/int/float, NaN kept: `metrics.jsonl` records
    a skipped step's loss as NaN, which `plot_training_curves` reads."""
    out = {}
    for k, v in d.items():
        v = np.asarray(v)
        out[k] = bool(v) if v.dtype == bool else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))
    return out


def _drop_metrics_after(path: Path, step: int) -> None:
    """Keep only the `metrics.jsonl` rows of steps <= `step` (the step training resumes from):
    a run killed after its last checkpoint logged rows that the resumed run logs again. A
    partial last line (killed mid-write) goes too. Rewritten atomically; absent file: nothing."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= step
        except (ValueError, TypeError, KeyError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        log.info("metrics.jsonl: dropped %d row(s) after step %d (replayed by this run)", dropped, step)
        with atomic_write(path, "w") as f:
            f.write("".join(f"{line}\n" for line in kept))


def _record(cfg: TrainConfig, trainer: Trainer) -> dict:
    """The run record stored in `config.json` and with every checkpoint."""
    return {"stage": cfg.stage, "train": cfg.to_dict(), **trainer.stage.record(), "n_params": trainer.n_params}


def fit(cfg: TrainConfig, workdir: str | Path, *, resume: bool = False, n_devices: int | None = None,
        progress: bool = True, stop_at: int | None = None, backbone: LearnedModel | None = None,
        on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """Train, validate and checkpoint into `workdir`.

    Args:
      cfg: the run config (on resume it must equal the stored one).
      workdir: run directory: `checkpoints/`, `metrics.jsonl`, `config.json`, `loss_curve.png`.
      resume: continue from the latest checkpoint (exactly: data and keys depend on the step).
      n_devices: data-parallel devices (all by default).
      progress: tqdm bar with loss and throughput (auto-off when not a terminal).
      stop_at: stop (and checkpoint) after this many steps, as if interrupted (tests, budgets).
      backbone: Stage 2: the frozen backbone (`rismvdr.localize.weights.LearnedModel`).
      on_eval: called as `on_eval(step, validation_metrics)` after every validation (and its
        checkpoint); an exception it raises (e.g. `optuna.TrialPruned`) ends the run after the
        checkpoint is closed and propagates to the caller.

    Returns:
      Summary dict: steps done, skipped updates, final validation metrics, wall time, status.

    Raises:
      DirectoryLockedError: another live process trains in `workdir` (`rismvdr.io.directory_lock`).
      ValueError: `workdir` holds checkpoints and `resume` is False, or the stored config differs.
    """
    workdir = Path(workdir)
    # several processes: process 0 alone writes files other than checkpoints, and holds the lock
    with directory_lock(workdir, "--workdir") if is_main() else contextlib.nullcontext():
        return _fit(cfg, workdir, resume=resume, n_devices=n_devices, progress=progress, stop_at=stop_at,
                    backbone=backbone, on_eval=on_eval)


def _fit(cfg: TrainConfig, workdir: Path, *, resume: bool, n_devices: int | None, progress: bool,
         stop_at: int | None, backbone: LearnedModel | None, on_eval: Callable[[int, dict], None] | None) -> dict:
    """`fit`'s work, with the workdir locked."""
    workdir.mkdir(parents=True, exist_ok=True)
    main = is_main()
    trainer = Trainer(cfg, n_devices=n_devices, backbone=backbone)
    record = _record(cfg, trainer)
    ckpt = Checkpointer(workdir / "checkpoints", keep_best=cfg.keep_best, best_metric=OBJECTIVE, best_mode="min")
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise ValueError(f"--workdir: {workdir} already holds checkpoints (latest step {latest}); "
                         "pass --resume to continue or choose a new directory")
    if resume and latest is not None:
        # the newest intact checkpoint (a damaged later one is named, skipped and deleted)
        latest, restored = ckpt.restore_latest(target=trainer.restore_target(), discard_damaged=main)
        stored = ckpt.read_config(latest)
        if stored.get("train") != record["train"]:
            diff = sorted(k for k in set(stored.get("train", {})) | set(record["train"])
                          if stored.get("train", {}).get(k) != record["train"].get(k))
            raise ValueError(f"--resume: the config differs from the run's stored config in {diff}")
        state = restored["train"]
        if main:
            log.info("resumed from step %d", latest)
    else:
        state = trainer.init_state()
    if main:
        (workdir / "config.json").write_text(json.dumps(record, indent=1))
    step_fn = trainer.step_fn()
    val = trainer.validation_set()
    start = int(state.step)
    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    metrics_path = workdir / "metrics.jsonl"
    if main:
        _drop_metrics_after(metrics_path, start)  # rows of steps a resumed run replays
    last_val: dict = {}
    status = "done"
    bar = tqdm(total=end, initial=start, desc=f"train {cfg.stage}", unit="step",
               disable=None if progress and main else True)
    t0 = time.perf_counter()
    t_last, n_last = t0, start
    pending = None  # (step, metrics) of the previous step: logged after the next is dispatched

    # the stage's payload laid out like the state (several processes: one global, replicated copy)
    payload = jax.device_put(trainer.stage.payload(), trainer.rep)

    def save(step, metrics=None, force=False):
        ckpt.save(step, {"train": state, **payload}, config=record, metrics=metrics, force=force)

    def flush(pending):
        s, m = pending
        m = _metric_scalars(jax.device_get(m))
        nonlocal t_last, n_last
        now = time.perf_counter()
        rate = (s + 1 - n_last) / max(now - t_last, 1e-9)
        t_last, n_last = now, s + 1
        m.update(step=s + 1, steps_per_s=rate, scenes_per_s=rate * cfg.batch_size, phase=weights_at(cfg, s)[0])
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(m) + "\n")
        bar.set_postfix(loss=f"{m['loss']:.4g}", scenes_s=f"{m['scenes_per_s']:.0f}", skipped=m["skipped"])

    step = start
    with lost_process_guard(lambda: f"step {step}"), _StopFlag() as stop, ckpt:
        while step < end:
            weights = trainer.weights(step)
            state, m = step_fn(state, weights)
            if pending is not None and (pending[0] + 1) % cfg.log_every == 0:
                flush(pending)
            pending = (step, m)
            step += 1
            bar.update(1)
            evaluate_now = step % cfg.eval_every == 0 or step == cfg.steps
            if evaluate_now:
                last_val = trainer.evaluate(state.ema, val)
                last_val["step"] = step
                if main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(last_val) + "\n")
                    log.info("step %d: %s", step, {k: round(v, 4) for k, v in last_val.items()})
            if evaluate_now or step % cfg.checkpoint_every == 0:
                save(step, {k: v for k, v in last_val.items() if k != "step"} if evaluate_now else None)
            if evaluate_now and on_eval is not None:
                on_eval(step, dict(last_val))
            if any_process(stop.signum is not None):  # several processes: all stop at the same step
                status = f"stopped by signal {stop.signum or '(in another process)'}"
                break
        if pending is not None:
            flush(pending)
        if ckpt.latest_step() != step:
            save(step, force=True)
        if status == "done" and step < cfg.steps:
            status = "stopped early"
    bar.close()
    try:
        if main:
            plot_training_curves(workdir / "loss_curve.png", metrics_path)
    except Exception as exc:  # a plot must never lose a run
        log.warning("loss curve not drawn: %s", exc)
    return {"status": status, "steps": step, "skipped": int(state.skipped), "validation": last_val,
            "seconds": time.perf_counter() - t0, "workdir": str(workdir), "n_params": trainer.n_params}
