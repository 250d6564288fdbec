"""Functional training state: model parameters as a flat tuple of arrays, Optax state, EMA.

A Flax NNX module is split once (`rismvdr.models.params.split_model`, re-exported here) into its
graph definition (static) and its parameter leaves; the train step is a pure function of the
leaves, jitted with the state donated. Keeping the leaves as a flat tuple makes checkpoints
independent of NNX's internal state containers.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rismvdr.models.params import ModelDef, split_model  # re-exported: defined in the models layer
from rismvdr.train.config import OptimConfig

__all__ = ["ModelDef", "TrainState", "split_model", "make_optimizer", "init_train_state", "ema_update",
           "make_mesh", "replicated", "data_sharded"]


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly (all leaves are arrays)."""

    step: jax.Array  # int32 []: updates attempted so far
    params: tuple
    opt_state: Any
    ema: tuple  # EMA of the parameters (evaluated, checkpointed as "best", shipped)
    skipped: jax.Array  # int32 []: updates skipped for non-finite loss or gradients


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clip -> AdamW with a warmup-cosine learning rate."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=max(1, min(cfg.warmup_steps, total_steps - 1)),
        decay_steps=max(total_steps, 2), end_value=cfg.lr * cfg.end_lr_ratio)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay))


def init_train_state(params: tuple, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree_util.tree_map(jnp.copy, params), skipped=jnp.zeros((), jnp.int32))


def ema_update(ema, params, step, decay: float):
    """EMA with the usual warm start `min(decay, (1 + step) / (10 + step))`."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree_util.tree_map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


# ------------------------------------------------------------------------------------------
# Data parallelism: one mesh axis "data"
# ------------------------------------------------------------------------------------------
def make_mesh(n_devices: int | None = None) -> jax.sharding.Mesh:
    """One-axis mesh over the first `n_devices` devices (all by default). Under
    `jax.distributed.initialize` this spans every host's devices."""
    devices = jax.devices()
    n = len(devices) if n_devices is None else int(n_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"n_devices: must be in 1..{len(devices)}, got {n_devices}")
    return jax.sharding.Mesh(devices[:n], ("data",))


def replicated(mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def data_sharded(mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
