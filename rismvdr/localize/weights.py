"""Loading trained models for inference, without the trainer.

A `LearnedModel` holds the split modules and their parameters (the EMA weights of a run). It is
read from an exported model directory (`model.json` + `model.npz`, what the package ships in
`rismvdr/weights/`), from a training run directory (Orbax checkpoints, read-only, in the layout
`rismvdr.train.checkpoint` writes), or by default from the shipped weights.

Run directory layout (one step directory per checkpoint): the items `state` (the training-state
pytree), `config` (the run's record as JSON: `stage`, `train`, `backbone`, `refiner`) and
`run_metrics` (the validation metrics as JSON, non-finite values as null).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rismvdr.models.backbone import Backbone, BackboneConfig
from rismvdr.models.params import ModelDef, split_model
from rismvdr.models.refiner import RefinerConfig, make_refiner

__all__ = ["LearnedModel", "load_learned", "default_weights_dir", "BEST_METRIC", "best_step"]

_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
#: The run metric that ranks checkpoints for `step="best"` (lower is better).
BEST_METRIC = "val/objective"
_STATE, _CONFIG, _METRICS = "state", "config", "run_metrics"


def default_weights_dir() -> Path:
    """The shipped model (`rismvdr/weights/seed`)."""
    return _WEIGHTS / "seed"


class LearnedModel(NamedTuple):
    """A trained backbone and optional refiner (parameters are jax arrays; the rest static)."""

    backbone_cfg: BackboneConfig
    backbone_def: ModelDef
    backbone_params: tuple
    refiner_cfg: RefinerConfig | None
    refiner_def: ModelDef | None
    refiner_params: tuple | None
    source: str  # where it was loaded from
    info: dict  # training record (config, step, metrics) for reports

    @property
    def has_refiner(self) -> bool:
        return self.refiner_params is not None


def _as_params(leaves, ref) -> tuple:
    if len(leaves) != len(ref):
        raise ValueError(f"weights: {len(leaves)} arrays, the model has {len(ref)}")
    out = []
    for i, (a, b) in enumerate(zip(leaves, ref)):
        a = np.asarray(a)
        if a.shape != tuple(b.shape):
            raise ValueError(f"weights: array {i} has shape {a.shape}, the model expects {tuple(b.shape)}")
        out.append(jnp.asarray(a, b.dtype))
    return tuple(out)


def _from_record(record: dict, backbone_leaves, refiner_leaves, source: str) -> LearnedModel:
    bcfg = BackboneConfig.from_dict(record["backbone"])
    bdef, bref = split_model(Backbone(bcfg, rngs=nnx.Rngs(0)))
    bparams = _as_params(backbone_leaves, bref)
    rcfg = rdef = rparams = None
    if record.get("refiner") is not None and refiner_leaves is not None:
        rcfg = RefinerConfig.from_dict(record["refiner"])
        rdef, rref = split_model(make_refiner(rcfg, nnx.Rngs(0)))
        rparams = _as_params(refiner_leaves, rref)
    return LearnedModel(bcfg, bdef, bparams, rcfg, rdef, rparams, source, record)


def _finite(value) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def best_step(steps, rank, *, mode: str = "min") -> int | None:
    """The step with the best finite rank (`rank(step)`: a float, or None for none), the later
    step on ties; None when no step has one. The one ranking rule of run checkpoints, shared by
    this loader and `rismvdr.train.checkpoint.Checkpointer`."""
    best = None
    for s in steps:
        value = rank(s)
        if value is None:
            continue
        if best is None or (value <= best[0] if mode == "min" else value >= best[0]):
            best = (value, s)
    return None if best is None else best[1]


def _restore_run(directory: Path, step: str | int | None) -> tuple[Any, dict, dict | None]:
    """(state, config, metrics) of one checkpoint of a run directory, read-only.

    `step`: "best" (lowest finite `BEST_METRIC`, the later step on ties; the latest when no
    step has one), "latest"/None, or a step number.
    """
    import orbax.checkpoint as ocp  # deferred: only run directories need Orbax (a slow import)

    is_int = isinstance(step, (int, np.integer)) and not isinstance(step, (bool, np.bool_))
    if not (step is None or is_int or step in ("latest", "best")):
        raise ValueError(f"step: expected None, 'latest', 'best' or an int, got {step!r}")
    directory = Path(directory).expanduser().absolute()
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0),
        item_handlers={_STATE: ocp.StandardCheckpointHandler(), _CONFIG: ocp.JsonCheckpointHandler(),
                       _METRICS: ocp.JsonCheckpointHandler()},
    )
    try:
        steps = sorted(int(s) for s in manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no finalised checkpoint in {directory}")

        def metrics_of(s: int) -> dict | None:
            items = set(getattr(manager.metadata(s), "item_metadata", None) or {})
            if _METRICS not in items:
                return None
            return dict(manager.restore(s, args=ocp.args.Composite(**{_METRICS: ocp.args.JsonRestore()}))[_METRICS])

        if step == "best":
            best = best_step(steps, lambda s: _finite((metrics_of(s) or {}).get(BEST_METRIC)))
            resolved = steps[-1] if best is None else best
        elif step is None or step == "latest":
            resolved = steps[-1]
        else:
            if int(step) not in steps:
                raise FileNotFoundError(f"no checkpoint at step {step} in {directory} (kept steps: {steps})")
            resolved = int(step)
        metadata = manager.metadata(resolved).item_metadata[_STATE]
        tree = getattr(metadata, "tree", metadata)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
        state = manager.restore(resolved, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)}))
        config = manager.restore(resolved, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
        return state[_STATE], dict(config[_CONFIG]), metrics_of(resolved)
    finally:
        manager.close()


def load_learned(path: str | Path | None = None, *, step: str | int | None = "best") -> LearnedModel:
    """Load a learned model.

    Args:
      path: a training run directory (the `--workdir` of `rismvdr train` / `train-refiner`),
        an exported model directory (`model.npz` + `model.json`), or None for the shipped
        weights.
      step: for run directories, "best" (by the validation objective; latest if none has a
        metric), "latest" or a step number.

    Raises:
      FileNotFoundError: nothing loadable at `path`.
      ValueError: `step` is none of the above, or the weights do not fit the recorded model.
    """
    path = default_weights_dir() if path is None else Path(path)
    if (path / "model.json").is_file():
        record = json.loads((path / "model.json").read_text())
        with np.load(path / "model.npz", allow_pickle=False) as z:
            nb = int(record["n_backbone"])
            nr = int(record.get("n_refiner", 0))
            bl = [z[f"b{i:04d}"] for i in range(nb)]
            rl = [z[f"r{i:04d}"] for i in range(nr)] if nr else None
        return _from_record(record, bl, rl, str(path))
    ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint: no model at {str(path)!r} (expected a run directory or model.json)")
    state, config, metrics = _restore_run(ckpt, step)
    record = dict(config)
    record["metrics"] = metrics
    train = state["train"]
    if record.get("stage") == "refiner":
        return _from_record(record, state["backbone"], train["ema"], str(path))
    return _from_record(record, train["ema"], None, str(path))
