"""A Flax NNX module split into its static definition and a flat tuple of parameter leaves.

Training and inference both work on the leaves: the train step is a pure function of them, a
checkpoint or an exported model stores them as a flat list of arrays (independent of NNX's
internal state containers), and `ModelDef.apply` rebuilds the module to call it.
`abstract_def` builds a config's definition without initialising it (what
`rismvdr.models.config.DeferredDef` calls on first use).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx

from rismvdr.models.backbone import Backbone
from rismvdr.models.config import BackboneConfig, RefinerConfig
from rismvdr.models.refiner import make_refiner

__all__ = ["ModelDef", "split_model", "abstract_def"]


class ModelDef(NamedTuple):
    """Static halves of a split module: `apply(params, *args)` rebuilds and calls it."""

    graphdef: Any
    treedef: Any

    def module(self, params):
        """The module with `params` (a tuple of leaves in `split_model`'s order) merged in."""
        state = jax.tree_util.tree_unflatten(self.treedef, list(params))
        return nnx.merge(self.graphdef, state)

    def apply(self, params, *args, **kwargs):
        return self.module(params)(*args, **kwargs)


def split_model(module) -> tuple[ModelDef, tuple]:
    """(ModelDef, parameter leaves) of an NNX module (parameters only: no batch statistics)."""
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return ModelDef(graphdef, treedef), tuple(leaves)


def abstract_def(cfg: BackboneConfig | RefinerConfig) -> tuple[ModelDef, tuple]:
    """(ModelDef, abstract parameter leaves: `jax.ShapeDtypeStruct`s) of the backbone or refiner
    that `cfg` describes, built abstractly (`nnx.eval_shape`: shapes and dtypes, no
    initialisation; drawing the random initial weights eagerly took most of a second)."""
    if isinstance(cfg, RefinerConfig):
        return split_model(nnx.eval_shape(lambda: make_refiner(cfg, nnx.Rngs(0))))
    if isinstance(cfg, BackboneConfig):
        return split_model(nnx.eval_shape(lambda: Backbone(cfg, rngs=nnx.Rngs(0))))
    raise TypeError(f"abstract_def: expected a BackboneConfig or RefinerConfig, got {type(cfg).__name__}")
