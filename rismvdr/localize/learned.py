"""Learned localizers at inference: a trained backbone (+ refiner) as registry methods.

`LearnedModel` holds the split modules and their parameters (the EMA weights of a run). It is
loaded from a training run directory (Orbax checkpoints), from an exported model directory
(`model.npz` + `model.json`, what the package ships in `rismvdr/weights/`), or, by default,
from the shipped weights.

Methods (registered in `rismvdr.localize.registry`; all finish in the shared detector):
- `learned`: MVDR (Woodbury) on the backbone's R_blend factor -> shared 2.5D spectrum + detector.
- `learned-refiner`: the seed's Stage-2 path. Low-rank MVDR map on the coarse refiner grid
  (range planes max-reduced) -> SpectrumRefiner -> probability map -> 2-D NMS and threshold
  -> best range plane by MVDR -> 3-D refinement (the shared detector's `refine_peaks` on the
  same MVDR operator). Guardrails fall back to `learned` for a map that is non-finite, too flat,
  saturated or has too many local maxima (`RefinerGuard`); fallbacks are counted.
- `learned-ml`: the learned detections as the starting point of the compressive
  maximum-likelihood refinement and F-test order re-test, continued greedily
  (`physics.compressive.ml_from_start`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rismvdr.localize.detect import RefinerGuard
from rismvdr.models.backbone import Backbone, BackboneConfig
from rismvdr.models.unet import SpectrumRefiner
from rismvdr.physics.spectra import Grid, make_grid, mvdr_lowrank_operator
from rismvdr.train.state import ModelDef, split_model

__all__ = [
    "LearnedModel",
    "RefinerGuard",
    "load_learned",
    "default_weights_dir",
    "export_model",
    "backbone_factor",
    "refiner_grid",
    "learned_operator",
]

log = logging.getLogger(__name__)
_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def default_weights_dir() -> Path:
    """The shipped model (`rismvdr/weights/seed`)."""
    return _WEIGHTS / "seed"


def make_backbone(cfg: BackboneConfig) -> tuple[ModelDef, tuple]:
    return split_model(Backbone(cfg, rngs=nnx.Rngs(0)))


def make_refiner(cfg: dict) -> tuple[ModelDef, tuple]:
    return split_model(SpectrumRefiner(widths=tuple(cfg["widths"]), dilations=tuple(cfg["dilations"]),
                                       groups=int(cfg["groups"]), rngs=nnx.Rngs(0)))


def refiner_grid(bcfg: BackboneConfig, rcfg: dict) -> Grid:
    """The Stage-2 coarse grid: `grid_phi` x `grid_theta` points over the box, `planes` planes."""
    def step(lo_hi, n):
        return (lo_hi[1] - lo_hi[0]) / max(int(n) - 1, 1) if int(n) > 1 else 1.0
    theta = (0.0, 0.0) if bcfg.geometry().linear else bcfg.theta_deg
    return make_grid(bcfg.phi_deg, theta, bcfg.r_m, phi_step_deg=step(bcfg.phi_deg, rcfg["grid_phi"]),
                     theta_step_deg=step(theta, rcfg["grid_theta"]) if theta[1] > theta[0] else 1.0,
                     n_planes=int(rcfg["planes"]))


class LearnedModel(NamedTuple):
    """A trained backbone and optional refiner (parameters are jax arrays; the rest static)."""

    backbone_cfg: BackboneConfig
    backbone_def: ModelDef
    backbone_params: tuple
    refiner_cfg: dict | None
    refiner_def: ModelDef | None
    refiner_params: tuple | None
    source: str  # where it was loaded from
    info: dict  # training record (config, step, metrics) for reports

    @property
    def has_refiner(self) -> bool:
        return self.refiner_params is not None


def _as_params(leaves, ref) -> tuple:
    if len(leaves) != len(ref):
        raise ValueError(f"weights: {len(leaves)} arrays, the model has {len(ref)}")
    out = []
    for i, (a, b) in enumerate(zip(leaves, ref)):
        a = np.asarray(a)
        if a.shape != tuple(b.shape):
            raise ValueError(f"weights: array {i} has shape {a.shape}, the model expects {tuple(b.shape)}")
        out.append(jnp.asarray(a, b.dtype))
    return tuple(out)


def _from_record(record: dict, backbone_leaves, refiner_leaves, source: str) -> LearnedModel:
    bcfg = BackboneConfig.from_dict(record["backbone"])
    bdef, bref = make_backbone(bcfg)
    bparams = _as_params(backbone_leaves, bref)
    rcfg = record.get("refiner")
    rdef = rparams = None
    if rcfg is not None and refiner_leaves is not None:
        rdef, rref = make_refiner(rcfg)
        rparams = _as_params(refiner_leaves, rref)
    else:
        rcfg = None
    return LearnedModel(bcfg, bdef, bparams, rcfg, rdef, rparams, source, record)


def load_learned(path: str | Path | None = None, *, step: str | int | None = "best") -> LearnedModel:
    """Load a learned model.

    Args:
      path: a training run directory (the `--workdir` of `rismvdr train` / `train-refiner`),
        an exported model directory (`model.npz` + `model.json`), or None for the shipped
        weights.
      step: for run directories, "best" (by the validation objective; latest if none has a
        metric), "latest" or a step number.

    Raises:
      FileNotFoundError: nothing loadable at `path`.
    """
    path = default_weights_dir() if path is None else Path(path)
    if (path / "model.json").is_file():
        record = json.loads((path / "model.json").read_text())
        with np.load(path / "model.npz", allow_pickle=False) as z:
            nb = int(record["n_backbone"])
            nr = int(record.get("n_refiner", 0))
            bl = [z[f"b{i:04d}"] for i in range(nb)]
            rl = [z[f"r{i:04d}"] for i in range(nr)] if nr else None
        return _from_record(record, bl, rl, str(path))
    from rismvdr.train.checkpoint import restore_run

    ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint: no model at {str(path)!r} (expected a run directory or model.json)")
    try:
        state, config, metrics = restore_run(ckpt, step=step)
    except FileNotFoundError:
        if step == "best":
            state, config, metrics = restore_run(ckpt, step="latest")
        else:
            raise
    record = dict(config)
    record["metrics"] = metrics
    train = state["train"]
    if record.get("stage") == "refiner":
        return _from_record(record, state["backbone"], train["ema"], str(path))
    return _from_record(record, train["ema"], None, str(path))


def export_model(model: LearnedModel, out_dir: str | Path) -> Path:
    """Write `model.npz` (float32 weights) + `model.json` (configs, training record)."""
    from rismvdr.files import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"b{i:04d}": np.asarray(a, np.float32) for i, a in enumerate(model.backbone_params)}
    if model.has_refiner:
        arrays.update({f"r{i:04d}": np.asarray(a, np.float32) for i, a in enumerate(model.refiner_params)})
    record = dict(model.info)
    record.update(backbone=model.backbone_cfg.to_dict(), refiner=model.refiner_cfg,
                  n_backbone=len(model.backbone_params),
                  n_refiner=len(model.refiner_params) if model.has_refiner else 0)
    with atomic_write(out / "model.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    from rismvdr.files import to_jsonable

    with atomic_write(out / "model.json") as f:
        json.dump(to_jsonable(record), f, indent=1)
    return out


# ------------------------------------------------------------------------------------------
# Inference kernels (jittable; batch in, batch out)
# ------------------------------------------------------------------------------------------
def check_scenes(model: LearnedModel, scenes) -> None:
    """Host-side check that scenes fit the model (raises ValueError naming the mismatch)."""
    cfg = model.backbone_cfg
    if scenes.full_array != cfg.full_array:
        raise ValueError("scenes: the model was trained for " + ("full-array" if cfg.full_array else "RIS-mode")
                         + " scenes")
    n = scenes.y.shape[-1] if scenes.full_array else scenes.H.shape[-1]
    if n != cfg.n_elements:
        raise ValueError(f"scenes: N = {n} elements, the model was trained for N = {cfg.n_elements}")


def als_samp_factor(scenes):
    """Factor `[B, N, q]` of the ALS R_samp (the seed's: rank 5, 4 iterations, ridge 1e-2) of
    a batch, for `R_blend` when beta > 0 (traced use: no host-side validation)."""
    from rismvdr.physics.covariance import _batched

    est = _batched(scenes.y, scenes.H, scenes.codes, 1e-2, method="sample" if scenes.H is None else "als",
                   rank=5, n_iter=4, f_solver="auto", precision=jax.lax.Precision.HIGHEST)
    return est.factor


def backbone_factor(model: LearnedModel, scenes, *, exist_threshold: float = 0.5, samp_factor=None):
    """R_blend factor `[B, N, q]` of a batch. In the structured variant, slots whose existence
    probability is below `exist_threshold` are removed (their columns zeroed). With beta > 0 the
    ALS R_samp is estimated from the scenes unless `samp_factor` is given."""
    if model.backbone_cfg.beta > 0 and samp_factor is None:
        samp_factor = als_samp_factor(scenes)
    out = model.backbone_def.apply(model.backbone_params, scenes.y, scenes.H, scenes.codes, samp_factor)
    f = out.factor
    if model.backbone_cfg.covariance == "structured" and exist_threshold > 0:
        keep = jax.nn.sigmoid(out.logit) >= exist_threshold  # [B, K]
        k = keep.shape[-1]
        cols = jnp.concatenate([keep, jnp.ones(keep.shape[:-1] + (f.shape[-1] - k,), bool)], axis=-1)
        f = f * cols[:, None, :].astype(f.dtype)
        # Never an all-zero factor: keep the strongest slot so the spectrum stays defined.
        empty = ~jnp.any(keep, axis=-1)
        f = jnp.where(empty[:, None, None], out.factor * (jnp.arange(f.shape[-1]) == 0)[None, None, :]
                      .astype(f.dtype), f)
    return f, out


def learned_operator(model: LearnedModel, scenes, *, delta_rel: float, precision: str,
                     exist_threshold: float = 0.5, samp_factor=None):
    """Batched MVDR (Woodbury) operator on R_blend."""
    f, _ = backbone_factor(model, scenes, exist_threshold=exist_threshold, samp_factor=samp_factor)
    return jax.vmap(lambda x: mvdr_lowrank_operator(x, delta_rel=delta_rel, precision=precision))(f)


def _refiner_peaks(prob, op1, geometry, fine_grid: Grid, rgrid: Grid, det, threshold: float, *, model,
                   precision):
    """Peaks of one scene's refiner probability map `[T, P]` (coarse grid): local maxima above
    `threshold`, best range plane of each by the MVDR operator over the detection
    grid's planes, gate NMS, then the shared 3-D refinement and NMS."""
    from rismvdr.localize.detect import _greedy_nms, refine_peaks
    from rismvdr.physics.spectra import operator_spectrum
    from rismvdr.physics.steering import steering

    real = prob.dtype
    phi_g, th_g, _ = (jnp.asarray(x, real) for x in rgrid.arrays())
    r_planes = jnp.asarray(fine_grid.arrays()[2], real)
    neigh = jax.lax.reduce_window(prob, -jnp.inf, jax.lax.max, (3, 3), (1, 1), ((1, 1), (1, 1)))
    is_peak = (prob >= neigh) & (prob >= threshold)
    flat = jnp.where(is_peak, prob, -jnp.inf).reshape(-1)
    score, idx = jax.lax.top_k(flat, min(det.n_candidates, flat.shape[0]))
    ti, pi = jnp.divmod(idx, prob.shape[1])
    phi, theta = phi_g[pi], th_g[ti]
    geo = geometry.astype(real)
    a = steering(geo, phi[:, None], theta[:, None], r_planes[None, :], model=model, dtype=op1.W.dtype)
    mvdr = operator_spectrum(op1, a, precision=precision)  # [C, planes]
    r = r_planes[jnp.argmax(mvdr, axis=-1)]
    valid = jnp.isfinite(score)
    phi, theta, r, score, valid = _greedy_nms(phi, theta, r, score, valid, det, det.k_max)
    phi, theta, r, score, valid = (x[: det.k_max] for x in (phi, theta, r, score, valid))
    if det.refine:
        phi, theta, r, score = refine_peaks(op1, geometry, fine_grid, det, phi, theta, r, model=model,
                                            precision=precision)
        phi, theta, r, score, valid = _greedy_nms(phi, theta, r, score, valid, det, det.k_max)
    return phi, theta, r, jnp.where(valid, score, -jnp.inf), valid


def refiner_map_ok(prob, guard: RefinerGuard):
    """Guardrail of one `[T, P]` probability map: finite, not flat, not saturated, not too many
    local maxima."""
    finite = jnp.all(jnp.isfinite(prob))
    p = jnp.where(jnp.isfinite(prob), prob, 0.0)
    # Strict local maxima: above all 8 neighbours (a flat background holds none).
    padded = jnp.pad(p, 1, constant_values=-jnp.inf)
    t, w = p.shape
    shifts = [padded[1 + i: 1 + i + t, 1 + j: 1 + j + w] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    n_max = jnp.sum(p > jnp.max(jnp.stack(shifts), axis=0))
    return (finite & (jnp.std(p) >= guard.min_std)
            & (jnp.mean(p > guard.saturated_level) <= guard.max_saturated)
            & (n_max <= guard.max_local_maxima))


def make_runner(model: LearnedModel, kind: str, geometry, settings, *, guard: RefinerGuard = RefinerGuard(),
                exist_threshold: float = 0.5):
    """A jitted `(backbone_params, refiner_params, scenes) -> (Detections, Spectrum25D, fallback)`
    for `kind` "learned" or "learned-refiner" (fallback `[B]` bool: the refiner map was rejected
    or absent, MVDR peaks on R_blend were used)."""
    from rismvdr.localize.detect import Detections, detect
    from rismvdr.physics.spectra import grid_steering, spectrum_25d

    grid = settings.grid(geometry.linear)
    det = settings.detector
    prec = settings.precision

    def run(bparams, rparams, scenes):
        m = model._replace(backbone_params=bparams, refiner_params=rparams)
        op = learned_operator(m, scenes, delta_rel=settings.delta_rel, precision=prec,
                              exist_threshold=exist_threshold)
        a_grid = grid_steering(geometry, grid, model=settings.steering_model, dtype=scenes.y.dtype)
        spec = spectrum_25d(op, a_grid, precision=prec, max_chunk_mb=settings.max_chunk_mb)
        base = detect(op, spec, geometry, grid, det, model=settings.steering_model, precision=prec)
        b = spec.power.shape[0]
        if kind == "learned" or not model.has_refiner:
            return base, spec, jnp.full((b,), kind != "learned")
        rgrid = refiner_grid(model.backbone_cfg, model.refiner_cfg)
        a_r = grid_steering(geometry, rgrid, model=settings.steering_model, dtype=scenes.y.dtype)
        # The refiner sees the map it was trained on: R_blend with its own slot threshold.
        op = learned_operator(m, scenes, delta_rel=settings.delta_rel, precision=prec,
                              exist_threshold=float(model.refiner_cfg.get("exist_threshold", 0.0)))
        coarse = spectrum_25d(op, a_r, precision=prec, max_chunk_mb=settings.max_chunk_mb)
        db = 10.0 * jnp.log10(jnp.maximum(coarse.power, 1e-30)).astype(jnp.float32)
        prob = m.refiner_def.module(rparams).probabilities(db)  # [B, T, P]
        ok = jax.vmap(lambda p: refiner_map_ok(p, guard))(prob)
        thr = guard.peak_threshold
        thr = float(model.refiner_cfg.get("peak_threshold", 0.5)) if thr is None else float(thr)
        peaks = jax.vmap(lambda p, o: _refiner_peaks(p, o, geometry, grid, rgrid, det, thr,
                                                     model=settings.steering_model, precision=prec))(prob, op)
        pick = lambda a, c: jnp.where(ok.reshape((b,) + (1,) * (a.ndim - 1)), a, c)  # noqa: E731
        out = Detections(*(pick(a, c) for a, c in zip(peaks, base)))
        return out, spec, ~ok

    return jax.jit(run)
