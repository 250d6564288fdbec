"""Search space `hpo_space_beta0`: the default space (`hpo_space`) without `model.beta`, so every
trial keeps the base config's R_blend weight (the `seed` config's beta = 0: R_blend = R_pred).

A model with beta > 0 estimates the ALS R_samp of every training batch and every validation scene,
which made a stage-1 trial of the separating budget take 10-33 min on the 2-core CPU (study
`benchmarks/results/hpo_sep`, all six of its trials had beta > 0); this space makes a 20-trial study
affordable there. Tune beta with `hpo_space` where a GPU is available.
"""
from rismvdr.configs.hpo_space import get_space as full_space


def get_space() -> dict:
    space = full_space()
    del space["model.beta"]
    return space
