"""`seed`: the shipped learned localizer of the `seed` scenario (12 x 12 RIS, M = L = 16).

Stage 1 (backbone): `rismvdr train --config seed --workdir runs/seed`.
Stage 2 (refiner): `rismvdr train-refiner --backbone runs/seed --config seed_refiner
--workdir runs/seed-refiner` (see `rismvdr.configs.seed_refiner`).
"""
from rismvdr.train.config import ModelConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="seed",
        model=ModelConfig(widths=(16, 32, 64), groups=8),
        optim=OptimConfig(lr=2e-3, warmup_steps=100),
        batch_size=32,
        steps=3000,
        val_scenes=256,
        val_peak_scenes=96,
        eval_every=300,
        checkpoint_every=300,
    )
