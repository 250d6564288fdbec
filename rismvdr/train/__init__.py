"""Training: configs, losses, the functional train state, the Stage 1/2 loops, checkpoints.

Modules: `config` (typed frozen configs, overrides), `losses` (every loss term, pure JAX),
`objective` (loss terms of a batch), `state` (split model, optimizer, EMA, mesh), `trainer`
(`fit`, `Trainer`), `checkpoint` (Orbax `CheckpointManager` behind one class).
"""
