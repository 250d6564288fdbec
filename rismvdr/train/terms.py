"""Loss terms of a backbone batch and of a refiner batch, from the loss library.

`backbone_terms` maps (backbone outputs, simulated scenes) to the per-batch mean of every
requested term; `LossWeights` picks and weighs them (`losses.weighted_total`). Terms not in
`active` are never computed.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rismvdr.models.backbone import BackboneConfig, BackboneOutput
from rismvdr.physics.simulate import Scene
from rismvdr.physics.steering import steering
from rismvdr.train import losses
from rismvdr.train.config import LossSettings, LossWeights

__all__ = ["TERMS", "active_terms", "backbone_terms", "cell_regression", "gram"]

_HI = jax.lax.Precision.HIGHEST
TERMS = tuple(f.name for f in dataclasses.fields(LossWeights))


def active_terms(weights_list) -> tuple[str, ...]:
    """Terms with a non-zero weight in any of the given `LossWeights`."""
    return tuple(t for t in TERMS if any(getattr(w, t) != 0.0 for w in weights_list))


def gram(f):
    """`F F^H`: `[..., N, N]` from `[..., N, q]`."""
    return jnp.einsum("...nq,...mq->...nm", f, jnp.conj(f), precision=_HI)


def _step(axis: np.ndarray) -> float:
    return float((axis[-1] - axis[0]) / (axis.shape[0] - 1)) if axis.shape[0] > 1 else 1.0


def _nearest_index(axis: np.ndarray, x):
    """Index of the grid point of a uniform NumPy `axis` `[n]` nearest to `x` `[...]`."""
    if axis.shape[0] == 1:
        return jnp.zeros(x.shape, jnp.int32)
    return jnp.clip(jnp.round((x - float(axis[0])) / _step(axis)), 0, axis.shape[0] - 1).astype(jnp.int32)


def cell_regression(out: BackboneOutput, scene: Scene, phi_ax, theta_ax, cfg: BackboneConfig,
                    ls: LossSettings):
    """Dense supervision of one scene: at the beam cell nearest each true source, Huber losses
    of the cell's phi/theta estimate (in cells), its log range (`log_r_delta`) and its log
    power (delta 0.5). Mean over true sources (0 when there is none).

    Args:
      out: one scene's outputs (`cell_*` `[T, P]`); scene: one scene's truth `[K]`.
      phi_ax `[P]`, theta_ax `[T]`: beam grid axes, radians (NumPy).
    """
    ip = _nearest_index(phi_ax, scene.phi)
    it = _nearest_index(theta_ax, scene.theta)
    dphi, dth = _step(phi_ax), _step(theta_ax)
    at = lambda m: m[it, ip]  # noqa: E731
    e_phi = optax.huber_loss((at(out.cell_phi) - scene.phi) / dphi, delta=1.0)
    e_th = optax.huber_loss((at(out.cell_theta) - scene.theta) / dth, delta=1.0)
    e_r = optax.huber_loss(jnp.log(at(out.cell_r)) - jnp.log(scene.r), delta=ls.log_r_delta) / ls.log_r_delta
    logp = jnp.log(jnp.maximum(scene.power, 1e-12))
    e_p = optax.huber_loss(at(out.cell_logp) - logp, delta=0.5) / 0.5
    per = e_phi + (0.0 if theta_ax.shape[0] == 1 else e_th) + e_r + 0.5 * e_p
    mask = scene.mask.astype(per.dtype)
    return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def backbone_terms(out: BackboneOutput, scenes: Scene, cfg: BackboneConfig, ls: LossSettings,
                   active: tuple[str, ...]) -> dict[str, jax.Array]:
    """Batch means of the `active` loss terms.

    Args:
      out: backbone outputs for `[B]` scenes; scenes: the same scenes with truth and R_true.
    """
    real = jnp.finfo(scenes.y.dtype).dtype
    grid = cfg.beam_grid()
    phi_np, theta_np, _ = grid.arrays()
    phi_ax, theta_ax = jnp.asarray(phi_np, real), jnp.asarray(theta_np, real)
    geo = cfg.geometry().astype(real)
    terms: dict[str, jax.Array] = {}
    need_r = {"cov", "cov_pred", "peak_contrast"} & set(active)
    r_blend = gram(out.factor) if need_r else None
    if "cov" in active:
        terms["cov"] = jnp.mean(jax.vmap(losses.cov_nmse)(r_blend, scenes.R_true))
    if "cov_pred" in active:
        terms["cov_pred"] = jnp.mean(jax.vmap(losses.cov_nmse)(gram(out.factor_pred), scenes.R_true))
    if "ortho" in active:
        terms["ortho"] = jnp.mean(jax.vmap(losses.orthogonality_penalty)(out.factor_pred))
    if "subspace" in active:
        a_true = steering(geo, scenes.phi, scenes.theta, scenes.r, model=cfg.steering_model,
                          dtype=scenes.y.dtype)
        terms["subspace"] = jnp.mean(jax.vmap(losses.subspace_alignment)(out.factor, a_true, scenes.mask))
    if "aux" in active:
        aux = lambda *a: losses.aux_set_loss(  # noqa: E731
            *a, angle_delta=float(np.deg2rad(ls.angle_delta_deg)), log_r_delta=ls.log_r_delta,
            exist_gate=None if ls.exist_gate_deg is None else tuple(float(np.deg2rad(g)) for g in ls.exist_gate_deg))[0]
        terms["aux"] = jnp.mean(jax.vmap(aux)(out.phi, out.theta, out.r, out.logit, scenes.phi, scenes.theta,
                                              scenes.r, scenes.mask))
    if "peak_contrast" in active:
        pc = lambda R, p, t, r, m: losses.peak_contrast(  # noqa: E731
            R, p, t, r, m, geo, delta_rel=ls.delta_rel, stencil=ls.contrast_stencil,
            step_rad=float(np.deg2rad(ls.contrast_step_deg)), tau=ls.contrast_tau, model=cfg.steering_model)
        terms["peak_contrast"] = jnp.mean(jax.vmap(pc)(r_blend, scenes.phi, scenes.theta, scenes.r, scenes.mask))
    if "beam_heatmap" in active:
        hm = lambda h, p, t, m: losses.heatmap_loss(  # noqa: E731
            h, p, t, m, phi_ax, theta_ax, sigma_cells=ls.sigma_cells, alpha=ls.focal_alpha, gamma=ls.focal_gamma)
        terms["beam_heatmap"] = jnp.mean(jax.vmap(hm)(out.heat, scenes.phi, scenes.theta, scenes.mask))
    if "cell" in active:
        cr = lambda o, s: cell_regression(o, s, phi_np, theta_np, cfg, ls)  # noqa: E731
        terms["cell"] = jnp.mean(jax.vmap(cr)(out, scenes))
    if "heatmap" in active:
        raise ValueError("loss 'heatmap' is the refiner's (Stage 2); set it to 0 for the backbone")
    return terms
