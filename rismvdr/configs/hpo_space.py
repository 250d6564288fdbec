"""Search space of `rismvdr hpo` / `rismvdr hpo2` (Stage-1 backbone): the default `--space`.

`get_space()` returns a dict: parameter name -> distribution. The name is the `TrainConfig`
key the value sets, exactly as for `rismvdr train --set` (dotted path), or
`loss_scale.<term>`, which multiplies that `LossWeights` term in every phase (a term that a
phase switches off stays off, and the phase schedule keeps its shape). Distributions:

- `("float", low, high, log)`: a float in [low, high]; `log` True samples uniformly in log.
- `("int", low, high)`: an integer in [low, high], both included.
- `("categorical", [choice, ...])`: one of the choices: None, bool, int, float or str. A
  string is parsed like a `--set` value, so a tuple is written as its text, "(16, 32, 64)".

Keep every choice valid for the configs you tune (GroupNorm `groups` must divide every width;
`tests/test_hpo.py` runs every widths choice through the backbone on the `seed` scenario).
"""


def get_space() -> dict:
    return {
        "optim.lr": ("float", 3e-4, 1e-2, True),
        "optim.weight_decay": ("float", 1e-6, 1e-2, True),
        # width and depth of the U-Net trunk (one entry per stage)
        "model.widths": ("categorical", ["(8, 16, 32)", "(16, 32, 64)", "(16, 32, 64, 64)", "(32, 64, 128)"]),
        "model.covariance": ("categorical", ["structured", "factor"]),
        "model.rank": ("int", 3, 8),  # factor columns (used by the "factor" variant only)
        "model.beta": ("float", 0.0, 0.5, False),  # blend with the ALS sample covariance (R_blend)
        "loss_scale.subspace": ("float", 0.3, 3.0, True),
        "loss_scale.aux": ("float", 0.3, 3.0, True),
        "loss_scale.beam_heatmap": ("float", 0.3, 3.0, True),
        "loss_scale.cell": ("float", 0.3, 3.0, True),
    }
