"""Covariance backbone: measurements of one scene -> low-rank covariance factor + source slots.

The network is built around the physics rather than asked to rediscover it:

1. **Beamspace front end (no parameters).** Each snapshot is back-projected to the surface,
   `xhat_l = G_l^H y_l = diag(conj c_l) H^H y_l` (`xhat_l = y_l` in full-array mode), and
   correlated with the steering vectors of a coarse (theta, phi, range-plane) grid built by the
   shared `steering` function: `b_g = (1/L) sum_l |a_g^H xhat_l|^2`. The map, in dB relative
   to its maximum and clipped at -40 dB, has one channel per range plane plus their maximum.
   Using the full channel `H` and the codes here is what makes the measurement model
   reproducible from what the model sees (the original system once fed `H c_l` instead).
2. **U-Net trunk** (`rismvdr.models.unet.UNet`) over the `[T, P]` angle grid, giving per cell:
   a source logit (heat map), sub-cell offsets in phi and theta (tanh, +-1 cell), inverse range
   (sigmoid between the box limits: near-field phase is linear in 1/r) and log power; in the
   `factor` variant also `rank` complex coefficients.
3. **Slots.** The `k_max` strongest local maxima of the heat map (window `2 nms_cells + 1`)
   become the auxiliary per-slot predictions (phi, theta, r, existence logit, power). The top-k
   choice is not differentiated; the values gathered at the chosen cells are.
4. **Covariance.** `structured` (default): `F[:, k] = sqrt(p_k sigmoid(logit_k)) a(eta_k)`, so
   `R_pred = F F^H = sum_k p_k a a^H` (the noise term `sigma^2 I` is the MVDR diagonal loading).
   `factor`: `F = A_cells^T C`, a general rank-`rank` factor in the span of the cells' steering
   vectors with learned complex coefficients `C`. Either way a column-norm leash bounds every
   column (the seed's factor magnitude leash) and `F` is scaled so `tr(F F^H) = N`.
   `R_blend = (1 - beta) R_pred + beta R_samp` is returned as a factor too,
   `[sqrt(1 - beta) F, sqrt(beta) F_samp]`, so MVDR on it uses Woodbury.

Shapes: `y` `[B, L, M]`, `H` `[B, M, N]`, `codes` `[B, L, N]` complex64; see `BackboneOutput`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rismvdr.models.config import BackboneConfig, ModelConfig, backbone_config_for
from rismvdr.models.unet import UNet
from rismvdr.physics.compressive import range_scan, scene_operators
from rismvdr.physics.linalg import cmatmul_parts
from rismvdr.physics.steering import steering

__all__ = ["ModelConfig", "BackboneConfig", "BackboneOutput", "Backbone", "beam_features", "backbone_config_for"]

_HI = jax.lax.Precision.HIGHEST
_FLOOR_DB = -40.0


class BackboneOutput(NamedTuple):
    """Backbone outputs for a batch of B scenes (K = k_max slots, T x P beam grid).

    Attributes:
      factor: `[B, N, q]` complex, `R_blend = factor factor^H` (trace N); q = r (+ rank of
        R_samp's factor when beta > 0).
      factor_pred: `[B, N, r]` complex, `R_pred = factor_pred factor_pred^H` (trace N).
      heat: `[B, T, P]` source logits on the beam grid.
      cell_phi, cell_theta, cell_r, cell_logp: `[B, T, P]` per-cell estimates (rad, rad, m,
        log power).
      phi, theta, r, logit, power: `[B, K]` slot predictions (rad, rad, m, existence logit,
        linear power).
      features: `[B, T, P, C]` the beamspace input map (dB/10, relative to the maximum).
    """

    factor: jax.Array
    factor_pred: jax.Array
    heat: jax.Array
    cell_phi: jax.Array
    cell_theta: jax.Array
    cell_r: jax.Array
    cell_logp: jax.Array
    phi: jax.Array
    theta: jax.Array
    r: jax.Array
    logit: jax.Array
    power: jax.Array
    features: jax.Array


def beam_features(y, H, codes, a_grid, grid_shape):
    """Beamspace map of a batch: `[B, T, P, R + 1]` channels (per plane, plane maximum) in
    dB/10 relative to each scene's maximum, floor -4 (-40 dB).

    Args:
      y: `[B, L, M]`; H: `[B, M, N]` or None (full array); codes: `[B, L, N]` or None.
      a_grid: `[G, N]` grid steering, G = T * P * R in (theta, phi, plane) order.
    """
    if H is None:
        xhat = y
    else:
        xhat = jnp.conj(codes) * jnp.einsum("blm,bmn->bln", y, jnp.conj(H), precision=_HI)
    zr, zi = cmatmul_parts(xhat, jnp.conj(a_grid).T, precision=_HI)  # a_g^H xhat_l: [B, L, G]
    power = jnp.mean(zr**2 + zi**2, axis=1)  # [B, G]
    t, p, rr = grid_shape
    power = power.reshape(power.shape[0], t, p, rr)
    power = jnp.concatenate([power, jnp.max(power, axis=-1, keepdims=True)], axis=-1)
    peak = jnp.max(power, axis=(1, 2, 3), keepdims=True)
    rel = 10.0 * jnp.log10(jnp.maximum(power / jnp.maximum(peak, 1e-30), 1e-30))
    rel = jnp.where(jnp.isfinite(rel), rel, _FLOOR_DB)
    return jax.lax.stop_gradient(jnp.clip(rel, _FLOOR_DB, 0.0) / 10.0)


def _local_max(heat, half: int):
    """Mask of cells that are the maximum of their `(2 half + 1)^2` window: `[B, T, P]`."""
    if half == 0:
        return jnp.ones(heat.shape, bool)
    win = 2 * half + 1
    pooled = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (1, win, win), (1, 1, 1), "SAME")
    return heat >= pooled


def _leash(f, max_norm, eps):
    """Scale down columns of `f` `[..., N, q]` whose norm exceeds `max_norm`."""
    norms = jnp.sqrt(jnp.sum(jnp.real(f) ** 2 + jnp.imag(f) ** 2, axis=-2, keepdims=True))
    scale = jnp.minimum(1.0, max_norm / (norms + eps))
    return f * scale.astype(f.dtype)


def _trace_to_n(f, n: int):
    """Scale a factor `[B, N, q]` so that `tr(F F^H) = N`."""
    energy = jnp.sum(jnp.real(f) ** 2 + jnp.imag(f) ** 2, axis=(-2, -1), keepdims=True)
    return f * jnp.sqrt(n / jnp.maximum(energy, 1e-30)).astype(f.dtype)


class Backbone(nnx.Module):
    """Measurements -> (R_pred factor, R_blend factor, per-cell heat map, per-slot sources)."""

    def __init__(self, config: BackboneConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        t, p, rr = config.beam_grid().shape
        extra = 2 * config.rank if config.covariance == "factor" else 0
        self.n_out = 5 + extra
        self.trunk = UNet(rr + 1, self.n_out, widths=config.widths, dilations=config.dilations,
                          groups=config.groups, rngs=rngs)

    def _scan_ranges(self, y, H, codes, geo, phi, theta, r, logit):
        cfg = self.config
        real = jnp.finfo(y.dtype).dtype
        inv_r = jnp.linspace(1.0 / cfg.r_m[1], 1.0 / cfg.r_m[0], cfg.range_scan, dtype=real)
        mask = jax.nn.sigmoid(logit) >= cfg.exist_threshold
        l, n = y.shape[1], cfg.n_elements

        def one(y1, h1, c1, p, t, rr, m):
            E = scene_operators(h1, c1, l, n, y1.dtype)
            return range_scan(y1, E, geo, p, t, rr, m, inv_r, model=cfg.steering_model)

        h_ax = None if H is None else 0
        r_new = jax.vmap(one, in_axes=(0, h_ax, h_ax, 0, 0, 0, 0))(y, H, codes, phi, theta, r, mask)
        return jax.lax.stop_gradient(r_new.astype(r.dtype))

    def _grid_constants(self, cdtype):
        """Beam grid axes and steering (traced constants: folded by XLA inside jit)."""
        cfg = self.config
        real = jnp.finfo(cdtype).dtype
        grid = cfg.beam_grid()
        phi, theta, r = (jnp.asarray(x, real) for x in grid.arrays())
        geo = cfg.geometry().astype(real)
        a = steering(geo, phi[None, :, None], theta[:, None, None], r[None, None, :],
                     model=cfg.steering_model, dtype=cdtype)
        return grid, phi, theta, geo, a.reshape(-1, a.shape[-1])

    def __call__(self, y, H=None, codes=None, samp_factor=None, *, refine_range: bool = True) -> BackboneOutput:
        """Run the backbone on a batch.

        Args:
          y: `[B, L, M]` complex measurements.
          H: `[B, M, N]` channel, codes: `[B, L, N]` RIS codes (None in full-array mode).
          samp_factor: `[B, N, q]` factor of R_samp (e.g. ALS), needed when beta > 0.
          refine_range: replace each slot's range by the least-squares range scan against the
            measurements (`physics.compressive.range_scan`; not differentiated, skipped in
            training) when the config's `range_scan` > 0.
        """
        cfg = self.config
        cdtype = y.dtype
        real = jnp.finfo(cdtype).dtype
        if (H is None) != cfg.full_array:
            raise ValueError("H: expected " + ("None (full-array backbone)" if cfg.full_array
                                               else "the channel [B, M, N] (RIS-mode backbone)"))
        if cfg.beta > 0 and samp_factor is None:
            raise ValueError(f"samp_factor: R_samp's factor is needed when beta = {cfg.beta} > 0")
        grid, phi_ax, th_ax, geo, a_grid = self._grid_constants(cdtype)
        feats = beam_features(y, H, codes, a_grid, grid.shape).astype(jnp.float32)
        out = self.trunk(feats).astype(real)  # [B, T, P, C]
        b, t, p = out.shape[:3]
        n = cfg.n_elements

        phi_np, th_np, _ = grid.arrays()
        dphi = float(np.diff(phi_np).mean()) if p > 1 else float(np.deg2rad(cfg.beam_phi_step_deg))
        dth = float(np.diff(th_np).mean()) if t > 1 else float(np.deg2rad(cfg.beam_theta_step_deg))
        u_lo, u_hi = 1.0 / cfg.r_m[1], 1.0 / cfg.r_m[0]
        heat = out[..., 0]
        cell_phi = phi_ax[None, None, :] + dphi * jnp.tanh(out[..., 1])
        cell_theta = th_ax[None, :, None] + dth * jnp.tanh(out[..., 2])
        if geo.linear:
            cell_theta = jnp.zeros_like(cell_theta)
        cell_r = 1.0 / (u_lo + (u_hi - u_lo) * jax.nn.sigmoid(out[..., 3]))
        cell_logp = out[..., 4]

        # Slots: the k_max strongest local maxima of the heat map.
        cand = jnp.where(_local_max(heat, cfg.nms_cells), heat, -jnp.inf).reshape(b, -1)
        _, idx = jax.lax.top_k(jax.lax.stop_gradient(cand), cfg.k_max)  # [B, K]
        take = lambda m: jnp.take_along_axis(m.reshape(b, -1), idx, axis=1)  # noqa: E731
        phi, theta, r, logit, logp = (take(m) for m in (cell_phi, cell_theta, cell_r, heat, cell_logp))
        power = jnp.exp(jnp.clip(logp, -10.0, 5.0))
        if refine_range and cfg.range_scan > 0:
            r = self._scan_ranges(y, H, codes, geo, phi, theta, r, logit)

        if cfg.covariance == "structured":
            a = steering(geo, phi, theta, r, model=cfg.steering_model, dtype=cdtype)  # [B, K, N]
            amp = jnp.sqrt(power * jax.nn.sigmoid(logit))
            f = jnp.swapaxes(a * amp[..., None].astype(cdtype), -1, -2)  # [B, N, K]
        else:
            coef = out[..., 5:].reshape(b, t * p, 2, cfg.rank)
            coef = jax.lax.complex(coef[:, :, 0], coef[:, :, 1]).astype(cdtype)  # [B, TP, r]
            a_cells = steering(geo, cell_phi, cell_theta, cell_r, model=cfg.steering_model,
                               dtype=cdtype).reshape(b, t * p, n)
            f = jnp.einsum("bgn,bgr->bnr", a_cells, coef, precision=_HI) / np.sqrt(t * p)
        f = _trace_to_n(_leash(f, cfg.leash_max * np.sqrt(n), cfg.leash_eps), n)
        if cfg.beta > 0:
            fs = _trace_to_n(samp_factor.astype(cdtype), n)
            blend = jnp.concatenate([np.sqrt(1.0 - cfg.beta) * f, np.sqrt(cfg.beta) * fs], axis=-1)
        else:
            blend = f
        return BackboneOutput(
            factor=blend, factor_pred=f, heat=heat, cell_phi=cell_phi, cell_theta=cell_theta,
            cell_r=cell_r, cell_logp=cell_logp, phi=phi, theta=theta, r=r, logit=logit,
            power=power, features=feats,
        )
