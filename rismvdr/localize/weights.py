"""Loading trained models for inference, without the trainer.

A `LearnedModel` holds the split modules and their parameters (the EMA weights of a run). It is
read from an exported model directory (`model.json` + `model.npz`, what the package ships in
`rismvdr/weights/`), from a training run directory (Orbax checkpoints, read-only, in the layout
`rismvdr.train.checkpoint` writes), or by default from the shipped weights. Its module
definitions are `rismvdr.models.config.DeferredDef`s: the network (and Flax) is built only where
a runner is traced, which a call served by the program store (`rismvdr.programs`) never does.

Run directory layout (one step directory per checkpoint): the items `state` (the training-state
pytree), `config` (the run's record as JSON: `stage`, `train`, `backbone`, `refiner`) and
`run_metrics` (the validation metrics as JSON, non-finite values as null).

A checkpoint is trusted only once verified: Orbax's commit marker (`commit_success.txt`)
present, `state/_METADATA` and the JSON items present and parseable, every data file the
state's OCDBT tree points into present and long enough (`checkpoint_problem`), and the state
restoring without error. `first_intact` tries candidate steps in order and falls back past a
damaged one with a one-line warning naming its step and file, and nothing else: what Orbax,
TensorStore and asyncio would print about a failed restore is held back (`quiet_restore`);
when no step is intact it raises a one-line `ValueError`. `rismvdr.train.checkpoint` uses the
same rule.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import jax
import numpy as np

from rismvdr.localize.runner import single_device_sharding
from rismvdr.models.config import BackboneConfig, DeferredDef, RefinerConfig

__all__ = ["LearnedModel", "load_learned", "default_weights_dir", "BEST_METRIC", "best_step", "COMMIT_MARKER",
           "checkpoint_problem", "restore_error", "first_intact", "quiet_restore", "held_logs",
           "not_read_only_notice", "single_device_sharding"]

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
    backbone_def: DeferredDef  # or the trainer's `ModelDef`: either has `apply(params, ...)`, `module(params)`
    backbone_params: tuple
    refiner_cfg: RefinerConfig | None
    refiner_def: DeferredDef | None
    refiner_params: tuple | None
    source: str  # where it was loaded from
    info: dict  # training record (config, step, metrics) for reports

    @property
    def has_refiner(self) -> bool:
        return self.refiner_params is not None


def _as_params(leaves, mdef: DeferredDef, *, check: bool) -> tuple:
    """The leaves as device arrays (`jax.device_put`: no program per shape, unlike `jnp.asarray`).
    `check`: compare them with the module now (building it: Flax is imported), else where the
    definition is first used (`DeferredDef`), which a call that runs a stored program never does."""
    out = tuple(jax.device_put(np.asarray(a)) for a in leaves)
    if check:
        mdef.check(out)
    return out


def _from_record(record: dict, backbone_leaves, refiner_leaves, source: str, *, check: bool = True) -> LearnedModel:
    """The model of a training record and its weights (`refiner_leaves` None: no refiner).
    `check`: see `_as_params`."""
    bcfg = BackboneConfig.from_dict(record["backbone"])
    bdef = DeferredDef(bcfg)
    bparams = _as_params(backbone_leaves, bdef, check=check)
    rcfg = rdef = rparams = None
    if record.get("refiner") is not None and refiner_leaves is not None:
        rcfg = RefinerConfig.from_dict(record["refiner"])
        rdef = DeferredDef(rcfg)
        rparams = _as_params(refiner_leaves, rdef, check=check)
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


def _ocdbt_location(location: str) -> tuple[str, int]:
    """``"<kind>:<base path>:<relative path>:<offset>:<length>"`` (an OCDBT dump's location of a
    node or value) as (the file relative to the database root, the byte just past the record)."""
    head, offset, length = location.rsplit(":", 2)
    _, base, relative = head.split(":", 2)
    return base + relative, int(offset) + int(length)


def _ocdbt_problem(root: Path, name: str) -> str | None:
    """What is missing from the OCDBT database at `root` (called `name` in the answer), or None.

    Walks the newest version's B+tree (manifest and nodes: small) and checks that every file a
    node or value points into exists and reaches the end of that record; the values themselves
    are not read. Answers name the file: ``"state/ocdbt.process_0/d/<id>: missing"``.
    """
    try:
        import tensorstore as ts  # deferred: only run directories need it (Orbax's dependency)

        dump = ts.ocdbt.dump
        base = ts.KvStore.open({"driver": "file", "path": str(root) + "/"}).result()
    except (ImportError, AttributeError):  # pragma: no cover - a TensorStore without OCDBT dumps
        return None
    sizes: dict[str, int | None] = {}

    def file_problem(location: str) -> str | None:
        relative, end = _ocdbt_location(location)
        if relative not in sizes:
            path = root / relative
            sizes[relative] = path.stat().st_size if path.is_file() else None
        if sizes[relative] is None:
            return f"{name}/{relative}: missing"
        if sizes[relative] < end:
            return f"{name}/{relative}: truncated ({sizes[relative]} bytes, records up to byte {end})"
        return None

    def read(what: str, location: str | None = None):
        try:
            return dump(base, location).result(), None
        except Exception as exc:  # noqa: BLE001 - TensorStore raises ValueError and others
            return None, f"{name}/{what}: not a readable OCDBT record ({restore_error(exc, root)})"

    manifest, problem = read("manifest.ocdbt")
    if problem:
        return problem
    versions = manifest.get("versions") or []
    pending = [versions[-1]["root"].get("location")] if versions else []
    while pending:
        location = pending.pop()
        if location is None:  # an empty tree
            continue
        problem = file_problem(location)
        if problem:
            return problem
        node, problem = read(_ocdbt_location(location)[0], location)
        if problem:
            return problem
        for entry in node.get("entries", ()):
            if "location" in entry:  # a child node
                pending.append(entry["location"])
            elif "indirect_value" in entry:  # a value stored in a data file
                problem = file_problem(entry["indirect_value"])
                if problem:
                    return problem
    return None


def checkpoint_problem(step_dir: str | Path) -> str | None:
    """What is wrong with the files of one checkpoint step directory, or None if they look intact.

    Cheap (no array is read): the commit marker (a step without it never finished saving),
    `state/_METADATA` and `state/manifest.ocdbt`, every data file the state's OCDBT tree points
    into (present, and as long as its records need), and the JSON items `config` and (when
    present) `run_metrics`. The answer names the file: ``"state/_METADATA: missing"``.
    Whether the arrays themselves decode is known only by restoring (`first_intact`).
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
    return _ocdbt_problem(step_dir / _STATE, _STATE)


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


#: The loggers that speak for Orbax (through absl) and for the event loops it runs.
_ORBAX_LOGGERS = ("absl", "asyncio")


class _Hold(logging.Filter):
    """A logger filter that keeps every record back (in `records`) instead of letting it out."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def not_read_only_notice(record: logging.LogRecord) -> bool:
    """False for the warning Orbax logs on opening a directory read-only (asked for: no news)."""
    return not record.getMessage().startswith("Given directory is read only")


@contextlib.contextmanager
def held_logs(keep: Callable[[logging.LogRecord], bool] = lambda record: True) -> Iterator[None]:
    """Hold back what Orbax (absl) and asyncio log while the block runs.

    Args:
      keep: which held records to let out, in order, once the block has finished without an
        exception; none are let out when it raises.
    """
    hold = _Hold()
    loggers = [logging.getLogger(name) for name in _ORBAX_LOGGERS]
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hold)
    for record in hold.records:
        if keep(record):
            logging.getLogger(record.name).handle(record)


def _finish_tasks(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task]) -> None:
    """Cancel the unfinished `tasks` of `loop`, run it until they end, and retrieve every
    task's exception, so that nothing of theirs is left to print once the loop is closed."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for task in tasks:
        if not task.cancelled():
            task.exception()
    tasks.clear()


def _finishing_loop(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """`loop`, made to finish its tasks (`_finish_tasks`) before it closes.

    Orbax runs each restore on a fresh event loop and closes it as soon as the restore returns
    or raises. When one read fails, the reads still in flight stay behind as tasks of a closed
    loop: their TensorStore callbacks then raise "Event loop is closed" in TensorStore's threads
    and their exceptions are reported as never retrieved.
    """
    tasks: list[asyncio.Task] = []
    factory = loop.get_task_factory()

    def task_factory(owner, coro, **kwargs):
        task = factory(owner, coro, **kwargs) if factory else asyncio.Task(coro, loop=owner, **kwargs)
        tasks.append(task)
        return task

    close = loop.close

    def finish_and_close():
        if not loop.is_closed() and not loop.is_running():
            _finish_tasks(loop, tasks)
        close()

    try:
        loop.close = finish_and_close
    except AttributeError:  # pragma: no cover - a loop type without instance attributes (uvloop)
        return loop
    loop.set_task_factory(task_factory)
    return loop


def _finishing_policy(inner):
    """An event loop policy that is `inner` (its loops, its current loop), except that the loops
    it makes finish their tasks before closing (`_finishing_loop`)."""

    class Policy(asyncio.AbstractEventLoopPolicy):
        def get_event_loop(self):
            return inner.get_event_loop()

        def set_event_loop(self, loop):
            inner.set_event_loop(loop)

        def new_event_loop(self):
            return _finishing_loop(inner.new_event_loop())

    return Policy()


_policy_lock = threading.Lock()
_policy_users = 0  # the `quiet_restore` blocks running: the first installs the policy, the last removes it
_previous_policy = None


def _set_policy(policy) -> None:
    with warnings.catch_warnings():  # event loop policies are deprecated from Python 3.14
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)


@contextlib.contextmanager
def quiet_restore(keep: Callable[[logging.LogRecord], bool] = lambda record: True) -> Iterator[None]:
    """Run one Orbax restore attempt without letting a failure print anything of its own.

    While the block runs, the event loops Orbax creates finish (cancel) their unfinished tasks
    before closing, and what Orbax and asyncio log is held back: let out if the block succeeds
    (the records `keep` accepts), dropped if it raises (the caller reports the failure in one
    line).
    """
    global _policy_users, _previous_policy
    with _policy_lock:
        if _policy_users == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _previous_policy = asyncio.get_event_loop_policy()
                _set_policy(_finishing_policy(_previous_policy))
        _policy_users += 1
    try:
        with held_logs(keep):
            yield
    finally:
        with _policy_lock:
            _policy_users -= 1
            if _policy_users == 0:
                _set_policy(_previous_policy)
                _previous_policy = None


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
                with quiet_restore():
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
    with held_logs(keep=not_read_only_notice):  # read-only is what was asked for
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
        device = single_device_sharding(jax.local_devices()[0])

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


def load_learned(path: str | Path | None = None, *, step: str | int | None = "best",
                 refiner: bool = True) -> LearnedModel:
    """Load a learned model.

    Args:
      path: a training run directory (the `--workdir` of `rismvdr train` / `train-refiner`),
        an exported model directory (`model.npz` + `model.json`), or None for the shipped
        weights.
      step: for run directories, "best" (by the validation objective; latest if none has a
        metric), "latest" or a step number.
      refiner: False: the backbone only, even where the model has a refiner (what every
        learned method but `learned-refiner` uses; it loads faster).

    Raises:
      FileNotFoundError: nothing loadable at `path`.
      ValueError: `step` is none of the above, no intact checkpoint (a damaged one is skipped
        with a warning naming its step and file), or the weights do not fit the recorded model
        (a run directory's when read; an exported model's where its network is first built,
        naming the first array that does not fit).
    """
    path = default_weights_dir() if path is None else Path(path)
    if (path / "model.json").is_file():
        record = json.loads((path / "model.json").read_text())
        with np.load(path / "model.npz", allow_pickle=False) as z:
            nb = int(record["n_backbone"])
            nr = int(record.get("n_refiner", 0))
            bl = [z[f"b{i:04d}"] for i in range(nb)]
            rl = [z[f"r{i:04d}"] for i in range(nr)] if nr and refiner else None
        return _from_record(record, bl, rl, str(path), check=False)
    ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint: no model at {str(path)!r} (expected a run directory or model.json)")
    state, config, metrics = _restore_run(ckpt, step)
    record = dict(config)
    record["metrics"] = metrics
    train = state["train"]
    if record.get("stage") == "refiner":
        return _from_record(record, state["backbone"], train["ema"] if refiner else None, str(path))
    return _from_record(record, train["ema"], None, str(path))
