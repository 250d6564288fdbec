"""The shared significance stage: each detection of a spectrum method tested on the measurements.

The detector's thresholds (`db`, `mad`) are relative to the map itself, so a map of pure noise
still has peaks that pass them. This stage gives every method the false-alarm control of the
compressive methods: the detections of one scene are taken as the columns
`B_l = G_l A(eta)` of a joint least-squares fit of the measurements `y` (conventions section 3;
`G_l = I_N` in full-array mode), each detection's F statistic (the energy it explains given the
others, per complex degree of freedom, over the residual's; `physics.compressive.source_fstats`)
is compared with the Bonferroni thresholds of the compressive dictionary grid
(`physics.compressive.f_thresholds`, per-scene false-alarm bound `CompressiveConfig.pfa`,
default 1 %), and the least significant detection is dropped while it fails
(`physics.compressive.order_retest`). The test is K-free (no true count, no noise level) and
scale-free (ratios of residual energies). Detections that survive keep their positions and
scores, in their order; dropped ones become padding (`valid` False, score -inf).

`rismvdr.localize.localize` applies it after every method whose `Method.significance_tested` is
False when `DetectorConfig.significance == "f-test"` (the default); `"none"` gives the
detector's output as it is.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rismvdr.localize.compressive import polish_thresholds, scene_group_size
from rismvdr.localize.detect import Detections
from rismvdr.localize.runner import Runner
from rismvdr.localize.settings import LocalizerSettings
from rismvdr.physics.compressive import CompressiveConfig, apply_operators, order_retest, scene_operators
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.simulate import Scene
from rismvdr.physics.steering import steering
from rismvdr.programs import stored_jit

__all__ = ["significance_test", "with_significance"]


def significance_test(y, H, codes, det: Detections, thresholds, geometry: ArrayGeometry, cfg: CompressiveConfig,
                      *, model: str = "exact") -> Detections:
    """Drop the detections that fail the F test on the measurements (a batch of scenes).

    Args:
      y: `[S, L, M]` measurements (pass them at unit RMS, `physics.covariance.unit_rms`: the
        test is scale-free but float32 squares are not).
      H: `[S, M, N]` channel or None (full-array mode); codes: `[S, L, N]` or None.
      det: `Detections` with `[S, K]` arrays (radians, metres).
      thresholds: `[>= K]` F thresholds `tau_k` (`physics.compressive.f_thresholds`).
      cfg: the compressive config (its `retest` flag is ignored: this stage is the re-test).
      model: steering model of the scenes.

    Returns:
      `Detections` `[S, K]`: the significant ones first in their original order, the others
      padding (`valid` False, `score_db` -inf).
    """
    thresholds = jnp.asarray(thresholds)
    if thresholds.shape[0] < det.valid.shape[-1]:
        raise ValueError(f"thresholds: need one per detection slot ({det.valid.shape[-1]}), got {thresholds.shape[0]}")
    return _significance_batch(y, H, codes, det, thresholds, geometry, cfg=cfg, model=model)


@functools.partial(stored_jit, static_argnames=("cfg", "model"))
def _significance_batch(y, H, codes, det: Detections, thresholds, geometry, *, cfg, model):
    real = jnp.real(y).dtype
    l, n = y.shape[1], geometry.n_elements
    geo = geometry.astype(real)
    k = det.valid.shape[-1]
    tau = thresholds[:k]

    def one(y1, h1, c1, d1):
        valid = d1.valid
        # Padding may hold anything (NaN for a scene without data): columns at a harmless point.
        phi = jnp.where(valid, d1.phi, 0.0).astype(real)
        theta = jnp.where(valid, d1.theta, 0.0).astype(real)
        r = jnp.where(valid, d1.r, 1.0).astype(real)
        E = scene_operators(h1, c1, l, n, y1.dtype)
        B = apply_operators(E, steering(geo, phi, theta, r, model=model, dtype=y1.dtype).T)
        keep, _ = order_retest(y1, B, valid, tau, cfg)
        keep = keep & valid
        # Survivors first, in their original order (the detector's: decreasing score).
        order = jnp.argsort(jnp.where(keep, jnp.arange(k), k + jnp.arange(k)))
        keep = keep[order]
        score = jnp.where(keep, d1.score_db[order], -jnp.inf)
        return Detections(d1.phi[order], d1.theta[order], d1.r[order], score, keep)

    # Scenes in vmapped groups, as in the compressive drivers (jaxlib 0.10's batched LAPACK calls
    # stay inline; `rismvdr.localize.compressive.scene_group_size`).
    return jax.lax.map(lambda args: one(*args), (y, H, codes, det), batch_size=scene_group_size(y.shape[0], l, k))


def with_significance(runner: Runner, scenes: Scene, geometry: ArrayGeometry, settings: LocalizerSettings) -> Runner:
    """`runner` followed by `significance_test` of its detections, for scenes shaped like `scenes`.

    The thresholds are those of the compressive methods' dictionary grid
    (`rismvdr.localize.compressive.polish_thresholds`: Bonferroni over its atoms, as the learned
    methods' polish uses), so every method has the same per-scene false-alarm bound
    `settings.compressive.config.pfa`.
    """
    cfg = settings.compressive_config()
    thresholds = jnp.asarray(polish_thresholds(settings, geometry, scenes.y.shape[-1], scenes.y.shape[-2]))

    def run(batch: Scene):
        det, spec, extras = runner.run(batch)
        det = significance_test(batch.y, batch.H, batch.codes, det, thresholds, geometry, cfg,
                                model=settings.steering_model)
        return det, spec, extras

    return Runner(run, runner.grid)
