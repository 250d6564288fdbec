"""Training: configs, losses, the functional train state, the Stage 1/2 loops, checkpoints, export.

Modules: `config` (typed frozen configs, overrides), `losses` (every loss term, pure JAX),
`terms` (the loss terms of a batch), `state` (split model, optimizer, EMA, mesh), `trainer`
(`fit`, `Trainer` and its two stages), `checkpoint` (Orbax `CheckpointManager` behind one
class), `export` (a run's weights as `model.npz` + `model.json`, with a recorded check). The
end-to-end objective that ranks runs is a metric: `rismvdr.eval.objective`.
"""
