"""`seed_los`: the shipped `seed` backbone fine-tuned on the line-of-sight deployment `seed-los`.

The `seed` model was trained on a fresh i.i.d. BS-RIS channel per scene; `seed-los` has one fixed,
low-rank line-of-sight channel (conventions section 9). This config starts from the shipped
backbone (`init_from="shipped"`, same architecture and scenario shape) and trains it on
`seed-los` scenes at a lower learning rate:

    rismvdr train --config seed_los --workdir runs/seed-los
"""
import dataclasses

from rismvdr.configs.seed import get_config as seed_config
from rismvdr.train.config import OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    return dataclasses.replace(
        seed_config(),
        name="seed_los",
        scenario="seed-los",
        init_from="shipped",
        optim=OptimConfig(lr=5e-4, warmup_steps=50),
        steps=800,
        eval_every=200,
        checkpoint_every=200,
    )
