"""`tiny`: a seconds-long run for CI and smoke tests (seed scenario, small U-Net, 8 scenes a step)."""
from rismvdr.train.config import ModelConfig, OptimConfig, RefinerConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="tiny",
        model=ModelConfig(widths=(8, 8, 8), groups=4, beam_phi_step_deg=6.0, beam_theta_step_deg=6.0,
                          beam_planes=3),
        refiner=RefinerConfig(widths=(8, 8, 8), groups=4, grid_phi=21, grid_theta=11, planes=3),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        batch_size=8,
        steps=6,
        val_scenes=16,
        val_peak_scenes=8,
        eval_every=3,
        checkpoint_every=3,
        log_every=1,
    )
