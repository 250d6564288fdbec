"""The search space of `rismvdr hpo`: space files, their validation, sampling and applying.

A space file (`configs/hpo_space.py`) defines `get_space()`, a dict
`{name: ("float", low, high[, log]) | ("int", low, high) | ("categorical", [choice, ...])}`
whose names are dotted `TrainConfig` keys (`optim.lr`, `model.widths`, ...) or
`loss_scale.<term>`, a factor on that loss term's weight in every phase.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import optuna
from flax import nnx

from rismvdr.models.backbone import Backbone
from rismvdr.train.config import LossWeights, TrainConfig, apply_overrides, call_file_function

__all__ = ["LOSS_SCALE", "load_space", "check_space", "suggest_params", "apply_params"]

#: Space key prefix: `loss_scale.<term>` multiplies that loss term's weight in every phase.
LOSS_SCALE = "loss_scale."
_KINDS = ("float", "int", "categorical")


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
