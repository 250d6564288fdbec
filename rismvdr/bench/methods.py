"""Which methods a bench runs on a scenario: the shipped learned model, whether it fits, whether
a method applies (RIS or full-array mode)."""
from __future__ import annotations

import logging

from rismvdr.localize.learned import default_weights_dir, load_learned
from rismvdr.localize.registry import METHODS

__all__ = ["shipped_model", "learned_fits", "applies"]

log = logging.getLogger(__name__)


def shipped_model():
    """The shipped learned model, or None when it is missing or broken (logged: a broken
    install must not stop the classical methods of a bench or the demo)."""
    try:
        return load_learned() if (default_weights_dir() / "model.json").is_file() else None
    except (OSError, ValueError) as exc:
        log.warning("shipped learned model not loadable: %s", exc)
        return None


def learned_fits(model, cfg, geometry) -> bool:
    """Whether `model` (None: no model) was trained for this scenario's mode, N, L and M."""
    if model is None:
        return False
    b = model.backbone_cfg
    return (b.full_array == (cfg.mode == "full") and b.n_elements == geometry.n_elements
            and b.n_snapshots == cfg.n_snapshots and (b.full_array or b.n_measurements == cfg.n_bs))


def applies(name: str, cfg) -> bool:
    """Whether the registered method `name` applies in the scenario's mode (RIS or full array)."""
    m = METHODS[name]
    full = cfg.mode == "full"
    return not (m.full_array_only and not full or m.ris_only and full)
