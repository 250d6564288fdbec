"""Checkpoints of one training run: the latest and the best N by a validation metric.

One small layer over Orbax's `CheckpointManager`. Each step directory holds three items:

- ``state``: the training-state pytree (`StandardSave`/`StandardRestore`);
- ``config``: the training config as JSON (model shape included, so a checkpoint restores on
  its own);
- ``run_metrics``: the caller's metrics as JSON, non-finite values stored as ``null``.

Orbax also writes its own ``metrics`` item, holding the metrics it ranks by; it is written only
when the ranking metric is finite, so a NaN validation can never become "best".

Retention is a preservation policy: ``AnyPreservationPolicy([LatestN(keep_latest),
BestN(keep_best)])``, the BestN seeing only checkpoints with a finite ranking metric. Where the
installed Orbax predates preservation policies, the same rule is applied by deleting steps
after each save.

Saves are synchronous (async checkpointing off) and atomic: Orbax writes into
``<step>.orbax-checkpoint-tmp*`` and renames it on finalisation, so a process killed mid-save
leaves the previous finalised step intact; a later writer removes the temporary directory.

Restores that pick a step themselves (`Checkpointer.restore_latest`, `restore_run` with
``"latest"``/``"best"``) trust a checkpoint only once verified (the rule of
`rismvdr.localize.weights.first_intact`: Orbax's commit marker, the metadata and JSON items
parseable, the data files the state points into present, the state restoring): a damaged or
unfinished step is skipped with a one-line warning naming it and the file, and nothing else
of the failed attempt reaches the terminal; a `ValueError` says when no step is intact.

>>> import jax.numpy as jnp, tempfile
>>> d = tempfile.mkdtemp()
>>> with Checkpointer(d) as ckpt:
...     ckpt.save(1, {"w": jnp.ones(3, jnp.float32)}, config={"n": 3},
...               metrics={"val/objective": 0.5})
True
>>> state, config, metrics = restore_run(d)
>>> config, metrics
({'n': 3}, {'val/objective': 0.5})
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rismvdr.localize.weights import (
    best_step,
    checkpoint_problem,
    first_intact,
    held_logs,
    not_read_only_notice,
    quiet_restore,
    single_device_sharding,
)

try:  # Orbax >= 0.11: retention as composable preservation policies.
    from orbax.checkpoint.checkpoint_managers import preservation_policy as _policies
except ImportError:  # pragma: no cover - older Orbax
    _policies = None

__all__ = ["Checkpointer", "restore_run"]

logger = logging.getLogger(__name__)

_STATE = "state"
_CONFIG = "config"
_METRICS = "run_metrics"  # "metrics" is reserved by Orbax for the metrics it ranks by.
_SAVED_DTYPES = (np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint32))
_BEST_MODES = ("min", "max")


def _has_preservation_policies() -> bool:
    if _policies is None:
        return False
    if not all(hasattr(_policies, n) for n in ("LatestN", "BestN", "AnyPreservationPolicy")):
        return False
    fields = {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
    return "preservation_policy" in fields


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _finite_or_none(value) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def _select_kept(
    steps: list[int], rank: Mapping[int, float | None], *, keep_latest: int, keep_best: int,
    best_mode: str,
) -> set[int]:
    """The steps a `LatestN(keep_latest) | BestN(keep_best)` policy keeps (fallback path)."""
    steps = sorted(steps)
    kept = set(steps[-keep_latest:]) if keep_latest else set()
    ranked = [s for s in steps if rank.get(s) is not None]
    ranked.sort(key=lambda s: rank[s], reverse=(best_mode == "max"))
    kept.update(ranked[:keep_best])
    return kept


class _RankedOnly:
    """A preservation policy: `inner` (a BestN) applied only to checkpoints with a finite rank.

    BestN alone preserves every checkpoint while there are at most `n` of them, metrics or
    not; here a checkpoint without a finite ranking metric is never preserved as "best".
    """

    def __init__(self, inner, rank):
        self.inner = inner
        self.rank = rank

    def should_preserve(self, checkpoints, *, context):
        ranked = [
            i for i, info in enumerate(checkpoints)
            if info.metrics is not None and math.isfinite(self.rank(info.metrics))
        ]
        flags = [False] * len(checkpoints)
        if ranked:
            keep = self.inner.should_preserve([checkpoints[i] for i in ranked], context=context)
            for i, k in zip(ranked, keep):
                flags[i] = bool(k)
        return flags


# ----------------------------------------------------------------------------- validation


def _clean_state(state):
    """Host-side check that every leaf is a float32/int32/uint32 array; numpy scalars -> 0-d."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    if not leaves:
        raise ValueError("state: has no array leaves")
    out = []
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "<root>"
        if isinstance(leaf, np.generic):
            leaf = np.asarray(leaf)
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            raise ValueError(
                f"state: leaf {where} is a {type(leaf).__name__}, not an array "
                "(wrap Python numbers in jnp.asarray with an explicit dtype)"
            )
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise ValueError(
                f"state: leaf {where} is a typed PRNG key; save jax.random.key_data(key) instead"
            )
        if np.dtype(leaf.dtype) not in _SAVED_DTYPES:
            raise ValueError(
                f"state: leaf {where} has dtype {leaf.dtype}; only float32, int32 and uint32 "
                "leaves are checkpointed"
            )
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def _clean_config(config) -> dict:
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a dict, got {type(config).__name__}")
    try:
        text = json.dumps(dict(config), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config: not JSON-serialisable ({err})") from err
    return json.loads(text)  # exactly what reads back: tuples become lists


def _clean_metrics(metrics) -> dict[str, float | None]:
    """Metrics as plain floats; a non-finite value is kept as None (JSON null)."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics: expected a dict of floats, got {type(metrics).__name__}")
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise ValueError(f"metrics: key {name!r} is not a string")
        if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
            raise ValueError(f"metrics: value for {name!r} is not a scalar number: {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metrics: value for {name!r} is not a number: {value!r}") from err
        if not math.isfinite(number):
            logger.warning("metric %r is %s; stored as null and never ranked", name, number)
            out[name] = None
        else:
            out[name] = number
    return out


# ----------------------------------------------------------------------------- restore targets


def _default_sharding() -> jax.sharding.Sharding:
    return single_device_sharding(jax.local_devices()[0])


def _concrete_mesh(abstract) -> jax.sharding.Mesh:
    """A concrete mesh for an `AbstractMesh` (as `jax.eval_shape` leaves under explicit axes)."""
    get_mesh = getattr(jax.sharding, "get_mesh", None)
    current = get_mesh() if get_mesh is not None else None
    if current is not None and not current.empty and current.abstract_mesh == abstract:
        return current
    return jax.make_mesh(
        tuple(abstract.axis_sizes), tuple(abstract.axis_names), axis_types=abstract.axis_types
    )


def _concrete_sharding(sharding, where: str) -> jax.sharding.Sharding:
    if sharding is None:
        return _default_sharding()
    mesh = getattr(sharding, "mesh", None)
    abstract_mesh_type = getattr(jax.sharding, "AbstractMesh", None)
    if abstract_mesh_type is not None and isinstance(mesh, abstract_mesh_type):
        try:
            concrete = _concrete_mesh(mesh)
        except Exception as err:  # noqa: BLE001 - re-raised with the leaf named
            raise ValueError(
                f"target: leaf {where} is sharded over an abstract mesh {mesh} that does not "
                f"fit the {jax.device_count()} available devices; pass concrete shardings"
            ) from err
        return jax.sharding.NamedSharding(concrete, sharding.spec, memory_kind=sharding.memory_kind)
    return sharding


def _abstract_target(target):
    """Every leaf as a ShapeDtypeStruct with a concrete sharding (default device if unset)."""

    def leaf(path, x):
        where = jax.tree_util.keystr(path) or "<root>"
        if isinstance(x, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=_default_sharding())
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise ValueError(f"target: leaf {where} is a {type(x).__name__}, not an array spec")
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_concrete_sharding(sharding, where))

    return jax.tree_util.tree_map_with_path(leaf, target)


# ----------------------------------------------------------------------------- Checkpointer


class Checkpointer:
    """One run directory's checkpoints: the latest and the best N by a validation metric.

    Args:
      directory: the run's checkpoint directory (created unless `read_only`).
      keep_best: how many checkpoints with the best finite `best_metric` to keep.
      keep_latest: how many most recent checkpoints to keep (at least 1).
      best_metric: the metrics key that ranks checkpoints.
      best_mode: ``"min"`` or ``"max"``: whether a smaller or larger metric is better.
      read_only: open an existing directory for reading only: nothing is created, saved,
        deleted or cleaned up (safe beside a live writer).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_best: int = 3,
        keep_latest: int = 1,
        best_metric: str = "val/objective",
        best_mode: str = "min",
        read_only: bool = False,
    ):
        if not _is_int(keep_best) or keep_best < 0:
            raise ValueError(f"keep_best: expected an int >= 0, got {keep_best!r}")
        if not _is_int(keep_latest) or keep_latest < 1:
            raise ValueError(f"keep_latest: expected an int >= 1, got {keep_latest!r}")
        if not isinstance(best_metric, str) or not best_metric:
            raise ValueError(f"best_metric: expected a non-empty string, got {best_metric!r}")
        if best_mode not in _BEST_MODES:
            raise ValueError(f"best_mode: expected 'min' or 'max', got {best_mode!r}")
        self.directory = pathlib.Path(directory).expanduser().absolute()
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoint directory at {self.directory}")
        self.keep_best = int(keep_best)
        self.keep_latest = int(keep_latest)
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.read_only = bool(read_only)
        self._rank_cache: dict[int, float | None] = {}
        self._closed = False

        options = dict(
            enable_async_checkpointing=False,
            # Orbax tracks (and writes its `metrics` item) only when best_fn is set.
            best_fn=self._orbax_rank,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=False,
        )
        self._policy_retention = _has_preservation_policies()
        if read_only:
            options.update(read_only=True, create=False, save_interval_steps=0)
        elif self._policy_retention:
            options.update(
                cleanup_tmp_directories=True,
                preservation_policy=_policies.AnyPreservationPolicy(
                    [
                        _policies.LatestN(n=self.keep_latest),
                        _RankedOnly(
                            _policies.BestN(
                                get_metric_fn=self._orbax_rank,
                                # BestN keeps the tail of the sorted list: descending for "min".
                                reverse=(best_mode == "min"),
                                n=self.keep_best,
                                keep_checkpoints_without_metrics=False,
                            ),
                            self._orbax_rank,
                        ),
                    ]
                ),
            )
        else:  # Older Orbax: keep everything, prune by hand in `_prune`.
            options.update(cleanup_tmp_directories=True, keep_checkpoints_without_metrics=True)
            logger.info("Orbax without preservation policies: pruning checkpoints by hand")
        with held_logs(keep=not_read_only_notice):  # read-only is what was asked for
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(**options),
                item_handlers={
                    _STATE: ocp.StandardCheckpointHandler(),
                    _CONFIG: ocp.JsonCheckpointHandler(),
                    _METRICS: ocp.JsonCheckpointHandler(),
                },
            )

    def _orbax_rank(self, metrics) -> float:
        """Orbax's ranking key; a missing or non-finite metric ranks worst (as +-inf)."""
        value = metrics.get(self.best_metric) if isinstance(metrics, Mapping) else None
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value):
            return value
        return math.inf if self.best_mode == "min" else -math.inf

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.directory)!r}, keep_best={self.keep_best}, "
            f"keep_latest={self.keep_latest}, best_metric={self.best_metric!r}, "
            f"best_mode={self.best_mode!r}{', read_only=True' if self.read_only else ''})"
        )

    # ------------------------------------------------------------------ saving

    def save(
        self,
        step: int,
        state,
        *,
        config: dict,
        metrics: dict[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Save `state` with `config` and optional `metrics` as checkpoint `step`.

        Args:
          step: the training step (int >= 0); a step already saved is not overwritten.
          state: a pytree of float32/int32/uint32 arrays (jax or numpy).
          config: a JSON-able dict, the training config (model shape included).
          metrics: optional scalar metrics. A checkpoint whose `best_metric` is missing or
            non-finite is ranked as having none: it is kept only while among the latest.
          force: save even if Orbax's save policy declines `step` (e.g. a step earlier than
            the latest saved one).

        Returns:
          Whether a checkpoint was written. It is finalised on disk when this returns.
        """
        self._check_open()
        if self.read_only:
            raise ValueError(f"save: {self.directory} was opened read_only")
        if not _is_int(step) or step < 0:
            raise ValueError(f"step: expected an int >= 0, got {step!r}")
        step = int(step)
        state = _clean_state(state)
        config = _clean_config(config)
        clean_metrics = None if metrics is None else _clean_metrics(metrics)
        if step in self.steps():
            logger.warning("step %d is already checkpointed in %s; not saved", step, self.directory)
            return False

        rank = None if clean_metrics is None else clean_metrics.get(self.best_metric)
        ranked = None
        if rank is not None:
            ranked = {k: v for k, v in clean_metrics.items() if v is not None}
        items = {_STATE: ocp.args.StandardSave(state), _CONFIG: ocp.args.JsonSave(config)}
        if clean_metrics is not None:
            items[_METRICS] = ocp.args.JsonSave(clean_metrics)
        saved = bool(
            self._manager.save(step, args=ocp.args.Composite(**items), metrics=ranked, force=force)
        )
        self._manager.wait_until_finished()
        if saved:
            self._rank_cache[step] = rank
            if not self._policy_retention:
                self._prune()
            logger.info(
                "saved checkpoint %d in %s (%s=%s)", step, self.directory, self.best_metric, rank
            )
        else:
            logger.info("Orbax declined to save step %d (pass force=True to insist)", step)
        return saved

    def _prune(self) -> None:
        steps = self.steps()
        rank = {s: self._rank(s) for s in steps}
        kept = _select_kept(
            steps, rank, keep_latest=self.keep_latest, keep_best=self.keep_best,
            best_mode=self.best_mode,
        )
        for s in steps:
            if s not in kept:
                self._manager.delete(s)
                self._rank_cache.pop(s, None)

    # ------------------------------------------------------------------ queries

    def steps(self) -> list[int]:
        """The finalised steps kept in the directory, ascending."""
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The most recent finalised step, or None if there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best finite `best_metric` (later step on ties); None if none.
        A step whose files are damaged (`check`) is never the best."""
        return best_step(self.steps(), self._intact_rank, mode=self.best_mode)

    def _rank(self, step: int) -> float | None:
        if step not in self._rank_cache:
            metrics = self.read_metrics(step)
            value = None if metrics is None else metrics.get(self.best_metric)
            self._rank_cache[step] = _finite_or_none(value)
        return self._rank_cache[step]

    def _readable_rank(self, step: int) -> float | None:
        """`_rank`, None where the metrics do not read back."""
        try:
            return self._rank(step)
        except Exception:  # noqa: BLE001 - unreadable metrics: unranked; the restore names the damage
            return None

    def _intact_rank(self, step: int) -> float | None:
        """`_rank`, None for a step whose files are damaged (it is never "best")."""
        return None if self.check(step) is not None else self._readable_rank(step)

    def _resolve(self, step: int | None) -> int:
        steps = self.steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no finalised checkpoint in {self.directory}")
            return steps[-1]
        if not _is_int(step):
            raise ValueError(f"step: expected an int or None, got {step!r}")
        if int(step) not in steps:
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.directory} (kept steps: {steps})"
            )
        return int(step)

    def _item_names(self, step: int) -> set[str]:
        metadata = self._manager.metadata(step)
        return set(getattr(metadata, "item_metadata", None) or {})

    def read_config(self, step: int | None = None) -> dict:
        """The config saved with `step` (the latest if None)."""
        self._check_open()
        step = self._resolve(step)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()})
        )
        return dict(restored[_CONFIG])

    def read_metrics(self, step: int | None = None) -> dict | None:
        """The metrics saved with `step` (the latest if None); None if it was saved without."""
        self._check_open()
        step = self._resolve(step)
        if _METRICS not in self._item_names(step):
            return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_METRICS: ocp.args.JsonRestore()})
        )
        return dict(restored[_METRICS])

    def restore(self, step: int | None = None, *, target=None):
        """The state pytree saved at `step` (the latest if None).

        Args:
          step: the step to restore; None for the latest.
          target: the state's abstract pytree: `jax.eval_shape` output or ShapeDtypeStructs
            (optionally with `.sharding`), or concrete arrays (their shape, dtype and sharding
            are used). Leaves without a sharding land on the default device. Shardings may use
            another mesh or device count than the save did; that is how a state is resharded.
            Without a target the state is restored as saved, every leaf on the default device
            (NamedTuples come back as dicts keyed by field name).

        Returns:
          The state, with `target`'s structure if given.
        """
        self._check_open()
        step = self._resolve(step)
        if target is None:
            metadata = self._manager.metadata(step).item_metadata[_STATE]
            tree = getattr(metadata, "tree", metadata)
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_default_sharding()),
                tree,
            )
        else:
            abstract = _abstract_target(target)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
        )
        logger.info("restored checkpoint %d from %s", step, self.directory)
        return restored[_STATE]

    def check(self, step: int) -> str | None:
        """What is wrong with the files of checkpoint `step` (naming the file), or None if they
        look intact (`rismvdr.localize.weights.checkpoint_problem`; no array is read)."""
        return checkpoint_problem(self.directory / str(int(step)))

    def restore_latest(self, *, target=None, discard_damaged: bool = False) -> tuple[int, Any]:
        """The newest intact checkpoint: ``(step, state)``, with its config checked readable.

        A damaged or unfinished step (no commit marker, a missing or unparseable metadata file,
        a missing or truncated data file, a state that does not restore) is skipped with a
        one-line warning naming its step and file, and nothing else. With `discard_damaged` (a
        writer resuming a run), the damaged steps newer than the one restored are deleted, so
        the resumed run can save those steps again.

        Raises:
          FileNotFoundError: no finalised checkpoint.
          ValueError: no intact checkpoint (each step's problem named).
        """
        self._check_open()
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no finalised checkpoint in {self.directory}")

        def restore(step):
            self.read_config(step)  # the run's record must read back too
            return self.restore(step, target=target)

        step, state = first_intact(self.directory, reversed(steps), restore)
        if discard_damaged and not self.read_only:
            for s in steps:
                if s > step:
                    logger.warning("deleting damaged checkpoint step %d in %s (the resumed run saves it again)",
                                   s, self.directory)
                    self._manager.delete(s)
                    self._rank_cache.pop(s, None)
        return step, state

    # ------------------------------------------------------------------ lifetime

    def wait(self) -> None:
        """Block until any pending Orbax work is done (saves are already synchronous)."""
        self._check_open()
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending work and release Orbax's resources; idempotent."""
        if not self._closed:
            self._closed = True
            self._manager.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"checkpointer for {self.directory} is closed")

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def restore_run(
    directory: str | os.PathLike,
    step: int | str | None = None,
    *,
    target=None,
    best_metric: str = "val/objective",
    best_mode: str = "min",
) -> tuple[Any, dict, dict | None]:
    """Restore one checkpoint of a run, read-only: ``(state, config, metrics)``.

    Args:
      directory: the run's checkpoint directory.
      step: None or ``"latest"``, ``"best"`` (by `best_metric`/`best_mode`), or a step.
      target: as in `Checkpointer.restore`.
      best_metric: the metrics key ranking checkpoints for ``step="best"``.
      best_mode: ``"min"`` or ``"max"``.

    Raises:
      FileNotFoundError: no directory, no finalised checkpoint, no such step, or for
        ``"best"`` no checkpoint with a finite `best_metric`.
      ValueError: `step` is none of the above, or no intact checkpoint among those it could
        be (``"latest"`` falls back to the newest intact step, ``"best"`` to the next best,
        each damaged step skipped with a warning naming it and the file).
    """
    if isinstance(step, str):
        if step not in ("latest", "best"):
            raise ValueError(f"step: expected None, 'latest', 'best' or an int, got {step!r}")
    elif step is not None and not _is_int(step):
        raise ValueError(f"step: expected None, 'latest', 'best' or an int, got {step!r}")
    directory = pathlib.Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    # Orbax's event loops made in the block finish their reads before closing: a read of a damaged
    # step still in flight leaves nothing for Python to print.
    with quiet_restore(keep=not_read_only_notice), Checkpointer(
        directory, best_metric=best_metric, best_mode=best_mode, read_only=True
    ) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise FileNotFoundError(f"no finalised checkpoint in {directory}")
        if step == "best":
            ranks = {s: ckpt._readable_rank(s) for s in steps}  # a damaged step is named, then skipped
            candidates, left = [], list(steps)
            while (best := best_step(left, ranks.get, mode=best_mode)) is not None:
                candidates.append(best)
                left.remove(best)
            if not candidates:
                raise FileNotFoundError(
                    f"no checkpoint in {directory} has a finite {best_metric!r} to rank by"
                )
        elif step is None or step == "latest":
            candidates = list(reversed(steps))
        else:
            ckpt._resolve(step)
            candidates = [int(step)]

        def restore(s):
            return ckpt.restore(s, target=target), ckpt.read_config(s), ckpt.read_metrics(s)

        return first_intact(directory, candidates, restore)[1]
