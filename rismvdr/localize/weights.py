"""Loading trained models for inference, without the trainer.

A `LearnedModel` holds the split modules and their parameters (the EMA weights of a run). It is
read from an exported model directory (`model.json` + `model.npz`, what the package ships in
`rismvdr/weights/`), from a training run directory (Orbax checkpoints, read-only, in the layout
`rismvdr.train.checkpoint` writes), or by default from the shipped weights.

Run directory layout (one step directory per checkpoint): the items `state` (the training-state
pytree), `config` (the run's record as JSON: `stage`, `train`, `backbone`, `refiner`) and
`run_metrics` (the validation metrics as JSON, non-finite values as null).

A checkpoint is trusted only once verified: Orbax's commit marker (`commit_success.txt`)
present, `state/_METADATA` and the JSON items present and parseable (`checkpoint_problem`),
and the state restoring without error. `first_intact` tries candidate steps in order and
falls back past a damaged one with a one-line warning naming its step and file; when none is
intact it raises a one-line `ValueError`. `rismvdr.train.checkpoint` uses the same rule.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rismvdr.models.backbone import Backbone, BackboneConfig
from rismvdr.models.params import ModelDef, split_model
from rismvdr.models.refiner import RefinerConfig, make_refiner

__all__ = ["LearnedModel", "load_learned", "default_weights_dir", "BEST_METRIC", "best_step", "COMMIT_MARKER",
           "checkpoint_problem", "restore_error", "first_intact"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
#: The run metric that ranks checkpoints for `step="best"` (lower is better).
BEST_METRIC = "val/objective"
_STATE, _CONFIG, _METRICS = "state", "config", "run_metrics"
#: The file Orbax writes into a step directory when its save has finished.
COMMIT_MARKER = "commit_success.txt"
_JSON_ITEM_FILE = "metadata"  # the file an Orbax JsonCheckpointHandler item holds


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


def _json_problem(path: Path, required: bool) -> str | None:
    if not path.is_file():
        return "missing" if required else None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"not readable JSON ({type(exc).__name__})"
    return None if isinstance(value, dict) else f"not a JSON object ({type(value).__name__})"


def checkpoint_problem(step_dir: str | Path) -> str | None:
    """What is wrong with the files of one checkpoint step directory, or None if they look intact.

    Cheap (no array is read): the commit marker (a step without it never finished saving),
    `state/_METADATA` and `state/manifest.ocdbt`, and the JSON items `config` and (when
    present) `run_metrics`. The answer names the file: ``"state/_METADATA: missing"``.
    Whether the arrays themselves read back is known only by restoring (`first_intact`).
    """
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return "the step directory is missing"
    if not (step_dir / COMMIT_MARKER).is_file():
        return f"{COMMIT_MARKER}: missing (the save never finished)"
    problem = _json_problem(step_dir / _STATE / "_METADATA", True)
    if problem:
        return f"{_STATE}/_METADATA: {problem}"
    if not (step_dir / _STATE / "manifest.ocdbt").is_file():
        return f"{_STATE}/manifest.ocdbt: missing"
    for item, required in ((_CONFIG, True), (_METRICS, (step_dir / _METRICS).is_dir())):
        problem = _json_problem(step_dir / item / _JSON_ITEM_FILE, required)
        if problem:
            return f"{item}/{_JSON_ITEM_FILE}: {problem}"
    return None


_STATUS = re.compile(r"\b(?:NOT_FOUND|FAILED_PRECONDITION|OUT_OF_RANGE|DATA_LOSS|INVALID_ARGUMENT|UNKNOWN|INTERNAL|"
                     r"PERMISSION_DENIED|UNAVAILABLE|ABORTED):(?:[^\[\n]|\[(?=\d))*")


def restore_error(exc: BaseException, step_dir: str | Path) -> str:
    """A one-line account of an exception raised while restoring `step_dir`: the file (relative
    to the step directory) that the message names, if any, and the innermost cause's status
    line (TensorStore's specs, which fill most of its messages, left out)."""
    inner = exc
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = str(inner)
    status = _STATUS.search(text)
    if status:
        first = status.group(0).strip()
    else:
        first = text.split("tensorstore_spec")[0].split("See full TensorStore details")[0].strip()
        first = first.splitlines()[0] if first else type(inner).__name__
    root = str(Path(step_dir).absolute())
    files = [f for f in re.findall(r'local file "([^"\\]+)"', text) if f.startswith(root)]
    where = ""
    if files:
        rel = max(files, key=len)[len(root):].strip("/") or "."
        where = f"{rel}: "
    if len(first) > 240:
        first = first[:237] + "..."
    return f"{where}{type(inner).__name__}: {first}"


def first_intact(directory: str | Path, candidates: Iterable[int], restore: Callable[[int], _T]) -> tuple[int, _T]:
    """Restore the first intact checkpoint among `candidates` (steps, in order of preference).

    Each step is checked (`checkpoint_problem`) and then restored with `restore(step)`; a step
    that fails either way is skipped with a one-line warning naming it and the damaged file.

    Returns:
      `(step, restore(step))` of the first intact candidate.

    Raises:
      ValueError: no candidate is intact (one line listing each step's problem).
    """
    directory = Path(directory)
    problems: list[str] = []
    for step in candidates:
        step_dir = directory / str(step)
        problem = checkpoint_problem(step_dir)
        if problem is None:
            try:
                return step, restore(step)
            except Exception as exc:  # noqa: BLE001 - a damaged file raises anything from TensorStore/Orbax
                problem = restore_error(exc, step_dir)
        problems.append(f"step {step}: {problem}")
        log.warning("checkpoint step %d in %s is damaged or unfinished (%s); skipped, trying the next one",
                    step, directory, problem)
    if not problems:
        raise ValueError(f"{directory}: no finalised checkpoint")
    raise ValueError(f"{directory}: no intact checkpoint ({'; '.join(problems)})")


def _restore_run(directory: Path, step: str | int | None) -> tuple[Any, dict, dict | None]:
    """(state, config, metrics) of one checkpoint of a run directory, read-only.

    `step`: "best" (lowest finite `BEST_METRIC`, the later step on ties; the latest when no
    step has one), "latest"/None, or a step number. A damaged or unfinished checkpoint is
    skipped with a warning: "latest" falls back to the newest intact step, "best" to the next
    best (then the newest unranked) one; `ValueError` when none is intact.
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

        def rank(s: int) -> float | None:  # a damaged step keeps its rank: first_intact names it
            try:  # (the metrics item alone: `metrics_of` would read the state's metadata too)
                metrics = manager.restore(s, args=ocp.args.Composite(**{_METRICS: ocp.args.JsonRestore()}))
                return _finite(dict(metrics[_METRICS]).get(BEST_METRIC))
            except Exception:  # noqa: BLE001 - unreadable metrics: unranked (first_intact names the damage)
                return None

        if step == "best":
            ranks = {s: rank(s) for s in steps}
            candidates, left = [], list(steps)
            while (best := best_step(left, ranks.get)) is not None:  # best first, by the one rule
                candidates.append(best)
                left.remove(best)
            candidates += reversed(left)  # then the unranked ones, newest first
        elif step is None or step == "latest":
            candidates = list(reversed(steps))
        else:
            if int(step) not in steps:
                raise FileNotFoundError(f"no checkpoint at step {step} in {directory} (kept steps: {steps})")
            candidates = [int(step)]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def restore(s: int):
            metadata = manager.metadata(s).item_metadata[_STATE]
            tree = getattr(metadata, "tree", metadata)
            abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
            state = manager.restore(s, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)}))
            config = manager.restore(s, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
            return state[_STATE], dict(config[_CONFIG]), metrics_of(s)

        return first_intact(directory, candidates, restore)[1]
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
      ValueError: `step` is none of the above, no intact checkpoint (a damaged one is skipped
        with a warning naming its step and file), or the weights do not fit the recorded model.
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
