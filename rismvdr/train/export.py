"""Exporting a trained model: `model.npz` (float32 weights) + `model.json` (configs, training
record, optionally the F1 check the test suite re-runs), the format `rismvdr.localize.weights`
loads and the package ships in `rismvdr/weights/`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from rismvdr.eval.evaluation import evaluate_detections
from rismvdr.io import atomic_write, to_jsonable
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.localize.weights import LearnedModel, load_learned
from rismvdr.physics.scenarios import scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.train.config import TrainConfig

__all__ = ["export_model", "model_check", "export_run", "CHECK_TOLERANCE"]

#: F1 tolerance stored with a model's check (the test suite's bar for reproducing it).
CHECK_TOLERANCE = 0.03


def export_model(model: LearnedModel, out_dir: str | Path) -> Path:
    """Write `model.npz` (float32 weights) + `model.json` (configs, training record) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"b{i:04d}": np.asarray(a, np.float32) for i, a in enumerate(model.backbone_params)}
    if model.has_refiner:
        arrays.update({f"r{i:04d}": np.asarray(a, np.float32) for i, a in enumerate(model.refiner_params)})
    record = dict(model.info)
    record.update(backbone=model.backbone_cfg.to_dict(),
                  refiner=model.refiner_cfg.to_dict() if model.refiner_cfg is not None else None,
                  n_backbone=len(model.backbone_params),
                  n_refiner=len(model.refiner_params) if model.has_refiner else 0)
    with atomic_write(out / "model.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    with atomic_write(out / "model.json") as f:
        json.dump(to_jsonable(record), f, indent=1)
    return out


def model_check(model: LearnedModel, n_scenes: int) -> dict:
    """F1 of `learned` (and `learned-refiner`) on the first `n_scenes` of the model's scenario,
    seed 0: stored with an exported model and re-checked by the test suite."""
    if int(n_scenes) < 1:
        raise ValueError(f"n_scenes: must be >= 1, got {n_scenes}")
    train = TrainConfig.from_dict(model.info["train"])
    cfg = train.scene_config()
    scenes = simulate(cfg, jax.random.key(0), n_scenes)
    out = dict(scenario=train.scenario, scene_overrides=[list(kv) for kv in train.scene_overrides], seed=0,
               n_scenes=n_scenes, tolerance=CHECK_TOLERANCE, f1={})
    for method in ("learned", "learned-refiner") if model.has_refiner else ("learned",):
        res = localize(method, scenes, scenario_geometry(cfg), settings_for_scenario(cfg), progress=False, model=model)
        d = res.detections
        out["f1"][method] = float(evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid)["f1"])
    return out


def export_run(path: str | Path, out_dir: str | Path, *, step: str | int = "best", backbone_only: bool = False,
               refiner_peak_threshold: float | None = None, record_check: int | None = None) -> Path:
    """Load a run (or exported) directory and export it.

    Args:
      path: a training run directory or an exported model directory.
      out_dir: the output directory.
      step: run directories: "best", "latest" or a step number.
      backbone_only: leave the refiner out.
      refiner_peak_threshold: probability a refiner peak needs, stored with the model (None:
        the run's).
      record_check: evaluate the learned methods on this many scenes (`model_check`) and store
        their F1 with the model.

    Returns:
      `out_dir` as a Path.
    """
    model = load_learned(path, step=step)
    if backbone_only:
        model = model._replace(refiner_cfg=None, refiner_def=None, refiner_params=None)
    if refiner_peak_threshold is not None:
        if not model.has_refiner:
            raise ValueError("refiner_peak_threshold: the model has no refiner")
        if not 0.0 < refiner_peak_threshold < 1.0:
            raise ValueError(f"refiner_peak_threshold: must lie in (0, 1), got {refiner_peak_threshold}")
        model = model._replace(refiner_cfg=dataclasses.replace(model.refiner_cfg,
                                                               peak_threshold=float(refiner_peak_threshold)))
    if record_check:
        model = model._replace(info={**model.info, "check": model_check(model, record_check)})
    return export_model(model, out_dir)
