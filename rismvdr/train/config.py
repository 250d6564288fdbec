"""Typed, frozen training configs (Stage 1 backbone and Stage 2 refiner).

A config file (`configs/<name>.py`) defines `get_config() -> TrainConfig`; the CLI overrides
single fields with `--set key=value` (dotted paths into nested configs, each value converted
to its field's type by the one grammar of `rismvdr.overrides`, e.g. `--set optim.lr=3e-4
--set model.widths=16,32,64 --set scene.snr_db=10,10`). Every checkpoint
stores `config.to_dict()`, so a run restores and runs inference without its config file; every
config type here and in the models layer reads back with `from_dict`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Mapping

from rismvdr.models.backbone import BackboneConfig, ModelConfig, backbone_config_for  # ModelConfig re-exported
from rismvdr.models.refiner import RefinerConfig  # re-exported: the one refiner config type
from rismvdr.overrides import apply_overrides as apply_field_overrides
from rismvdr.overrides import parse_overrides, split_overrides
from rismvdr.physics.scenarios import SceneConfig, get_scenario

__all__ = [
    "ModelConfig",
    "RefinerConfig",
    "LossWeights",
    "LossSettings",
    "Phase",
    "REFINER_PHASES",
    "OptimConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "to_dict",
    "from_dict",
    "weights_at",
]


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term (0 switches a term off and skips computing it)."""

    cov: float = 0.5  # NMSE of trace-normalised R_blend against R_true
    cov_pred: float = 0.0  # NMSE of R_pred (equals `cov` when beta = 0)
    ortho: float = 0.0  # orthogonality of the factor's columns (factor variant)
    subspace: float = 0.5  # 1 - projection of true steering vectors onto span(F)
    aux: float = 0.2  # permutation-invariant slot loss (angles, log range, existence)
    peak_contrast: float = 0.0  # local MVDR contrast at the true sources (seed: off for backbone)
    beam_heatmap: float = 10.0  # focal loss of the backbone's beam-grid heat map (a mean over cells: small)
    cell: float = 1.0  # regression of offsets, 1/r and log power at the true sources' cells
    heatmap: float = 0.0  # refiner focal loss (Stage 2)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Shapes of the loss terms."""

    sigma_cells: float = 2.0  # Gaussian blob width of heat-map targets, cells
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    angle_delta_deg: float = 2.0  # Huber transition of angle errors
    log_r_delta: float = 0.1  # Huber transition of log-range errors
    exist_gate_deg: tuple[float, float] | None = (5.0, 5.0)  # aux existence target needs angles in this gate (None: seed rule)
    contrast_stencil: int = 3
    contrast_step_deg: float = 5.73  # 0.10 rad
    contrast_tau: float = 0.10
    delta_rel: float = 1e-2  # MVDR loading in the contrast loss and validation


@dataclasses.dataclass(frozen=True)
class Phase:
    """Loss weights used while `step < until * steps` (the last phase runs to the end)."""

    name: str
    until: float
    weights: LossWeights


#: Stage 2: the refiner's heat-map (focal) loss alone (the seed's fast path).
REFINER_PHASES = (
    Phase("refiner", 1.0, LossWeights(cov=0.0, subspace=0.0, aux=0.0, beam_heatmap=0.0, cell=0.0, heatmap=1.0)),
)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-3  # peak learning rate of warmup-cosine
    warmup_steps: int = 100
    end_lr_ratio: float = 0.02  # final lr = lr * end_lr_ratio
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    clip_norm: float = 1.0  # global gradient-norm clip
    ema_decay: float = 0.998  # EMA of the parameters (evaluated and shipped)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Steps count optimizer updates; scenes are simulated on the device."""

    name: str = "default"
    stage: str = "backbone"  # "backbone" | "refiner"
    scenario: str = "seed"
    scene_overrides: tuple[tuple[str, Any], ...] = ()  # SceneConfig fields, e.g. (("snr_db", (10, 10)),)
    model: ModelConfig = ModelConfig()
    refiner: RefinerConfig = RefinerConfig()
    loss: LossSettings = LossSettings()
    phases: tuple[Phase, ...] = (
        Phase("warmup", 0.1, LossWeights(cov=0.0, subspace=0.0, aux=0.0)),
        Phase("main", 0.8, LossWeights()),
        Phase("final", 1.0, LossWeights(cov=1.0, subspace=1.0)),
    )
    optim: OptimConfig = OptimConfig()
    batch_size: int = 32  # scenes per step (global, split over devices)
    train_pool: int = 0  # 0: fresh scenes every step; n > 0: a fixed pool of n scenes (overfit checks)
    steps: int = 4000
    seed: int = 0  # parameters and training data; validation/test sets have their own seeds
    val_seed: int = 1  # validation set = (scenario, val_seed, val_scenes)
    val_scenes: int = 256
    val_peak_scenes: int = 128  # capped subset for the MVDR peak metrics
    eval_every: int = 250
    checkpoint_every: int = 250
    keep_best: int = 3
    log_every: int = 10
    debug_nan_steps: tuple[int, ...] = ()  # testing aid: poison the loss at these steps (skipped)
    init_from: str = ""  # Stage 1 fine-tuning: start from this model's backbone ("shipped", or a model or run
    #   directory) instead of a random initialisation ("")

    def validate(self) -> None:
        if self.stage not in ("backbone", "refiner"):
            raise ValueError(f"stage: expected 'backbone' or 'refiner', got {self.stage!r}")
        if not isinstance(self.init_from, str):
            raise ValueError(f"init_from: expected a string ('', 'shipped' or a directory), got {self.init_from!r}")
        if self.init_from and self.stage != "backbone":
            raise ValueError("init_from: fine-tuning starts Stage 1 (stage='backbone') only")
        for name in ("batch_size", "steps", "eval_every", "checkpoint_every", "log_every", "val_scenes",
                     "keep_best"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.phases:
            raise ValueError("phases: at least one phase is needed")
        ends = [p.until for p in self.phases]
        if any(b < a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"phases: 'until' must be non-decreasing, got {ends}")
        if self.stage == "refiner" and all(p.weights.heatmap == 0.0 for p in self.phases):
            raise ValueError("phases: Stage 2 trains the heat-map loss only; give `heatmap` a non-zero weight "
                             "(e.g. phases=REFINER_PHASES)")
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr: must be > 0, got {self.optim.lr}")
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay: must be in [0, 1), got {self.optim.ema_decay}")

    def scene_config(self) -> SceneConfig:
        return get_scenario(self.scenario, **dict(self.scene_overrides))

    def backbone_config(self) -> BackboneConfig:
        """The Stage-1 backbone: `model`'s hyperparameters shaped for the scenario."""
        return backbone_config_for(self.scene_config(), self.model)

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (sections become dicts, tuples lists); what checkpoints store."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError (missing ones take defaults)."""
        return _build(cls, d)


def weights_at(cfg: TrainConfig, step: int) -> tuple[int, LossWeights]:
    """(phase index, loss weights) in force at `step`."""
    for i, ph in enumerate(cfg.phases):
        if step < ph.until * cfg.steps:
            return i, ph.weights
    return len(cfg.phases) - 1, cfg.phases[-1].weights


# ------------------------------------------------------------------------------------------
# Files and overrides
# ------------------------------------------------------------------------------------------
def call_file_function(path: str | Path, function: str, flag: str):
    """Import a Python file (a config or search-space file) and return `function()`'s value;
    every failure is a ValueError naming `flag` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag}: no such file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"rismvdr_{function}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a file with a bug: say which file
        raise ValueError(f"{flag}: {path}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, function):
        raise ValueError(f"{flag}: {path} defines no {function}()")
    try:
        return getattr(module, function)()
    except Exception as exc:  # the file's function has a bug: say which file and function
        raise ValueError(f"{flag}: {path}: {function}() raised {type(exc).__name__}: {exc}") from exc


def load_config(path: str | Path) -> TrainConfig:
    """Import `get_config()` from a config file."""
    path = Path(path)
    cfg = call_file_function(path, "get_config", "--config")
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"--config: {path}: get_config() returned {type(cfg).__name__}, not TrainConfig")
    cfg.validate()
    return cfg


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply `--set KEY=VALUE` items in order, in the grammar of `rismvdr.overrides` (dotted keys
    into the sections, each value converted to its field's type); `scene.<field>=VALUE`
    overrides a field of the scene config, converted to that `SceneConfig` field's type.

    Raises:
      ValueError: one line naming the key (malformed item, unknown field, bad value), or the
        field of the resulting config that fails its checks.
    """
    for key, text in split_overrides(overrides):
        if key.startswith("scene."):
            field = key[len("scene."):]
            value = parse_overrides(SceneConfig, [f"{field}={text}"], prefix="scene.")[field]
            rest = tuple((k, v) for k, v in cfg.scene_overrides if k != field)
            cfg = dataclasses.replace(cfg, scene_overrides=rest + ((field, value),))
            cfg.scene_config()  # the scene's own checks (k_min <= k_max, the boxes), naming the field
            continue
        cfg = apply_field_overrides(cfg, [f"{key}={text}"])
    cfg.validate()
    return cfg


def _build(cls, data: Mapping):
    """A config section from its `to_dict` form (sections with their own `from_dict` use it)."""
    kwargs = {}
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"config: unknown field {cls.__name__}.{key}")
        default = getattr(cls(), key) if key not in ("phases",) else None
        if key == "phases":
            value = tuple(Phase(p["name"], float(p["until"]), _build(LossWeights, p["weights"])) for p in value)
        elif key == "scene_overrides":
            value = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in value)
        elif dataclasses.is_dataclass(default):
            section = type(default)
            value = section.from_dict(value) if hasattr(section, "from_dict") else _build(section, value)
        elif isinstance(default, tuple) and value is not None:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg: TrainConfig) -> dict:
    """`cfg.to_dict()` (the old module-level spelling, kept for one release)."""
    return cfg.to_dict()


def from_dict(data: Mapping) -> TrainConfig:
    """`TrainConfig.from_dict(data)` (the old module-level spelling, kept for one release)."""
    return TrainConfig.from_dict(data)
