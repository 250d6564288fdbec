"""`seed_refiner`: Stage 2 of the shipped model: the SpectrumRefiner on the frozen `seed` backbone.

    rismvdr train-refiner --backbone runs/seed --config seed_refiner --workdir runs/seed-refiner
"""
from rismvdr.train.config import REFINER_PHASES, OptimConfig, RefinerConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="seed_refiner",
        stage="refiner",
        phases=REFINER_PHASES,
        # two maps: R_blend's MVDR and the measurements' own Bartlett map (`models.refiner.REFINER_INPUTS`)
        refiner=RefinerConfig(widths=(32, 64, 128), grid_phi=61, grid_theta=41, planes=8, exist_threshold=0.0,
                              inputs=("blend", "bartlett")),
        optim=OptimConfig(lr=2e-3, warmup_steps=50),
        batch_size=32,
        steps=600,
        val_scenes=128,
        val_peak_scenes=96,
        eval_every=200,
        checkpoint_every=200,
    )
