"""Evaluation glue shared by the CLI, the demo and the benchmarks: detections + scenes ->
the metrics of SPEC section 7 (through `rismvdr.eval.metrics`, the one metrics module), with
per-scene PSSR from the 2.5D maps and the CRB of the true sources when the scenes allow it.
"""
from __future__ import annotations

import logging

import numpy as np

from rismvdr.eval import metrics
from rismvdr.physics.crb import crb_scenes
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import Grid

__all__ = ["scene_pssr_db", "truth_crb", "evaluate_detections"]

log = logging.getLogger(__name__)


def scene_pssr_db(power_db: np.ndarray, phi, theta, valid, grid: Grid, *, exclusion_cells: int = 3) -> np.ndarray:
    """Per-scene peak-to-sidelobe ratio (dB) of 2.5D maps.

    The peaks are the scene's valid detections (snapped to the nearest grid cell), or the
    global maximum if it has none; the sidelobe is the largest value outside a box of
    `exclusion_cells` cells around each peak (`rismvdr.eval.metrics.pssr_db`).

    Args:
      power_db: `[S, T, P]` maps in dB.
      phi, theta, valid: `[S, K]` detections.
    """
    gphi, gth, _ = grid.arrays()
    out = np.full(power_db.shape[0], np.nan)
    for s in range(power_db.shape[0]):
        v = np.asarray(valid[s], bool)
        peaks = None
        if v.any():
            ti = np.abs(gth[None, :] - np.asarray(theta[s])[v][:, None]).argmin(-1)
            pi = np.abs(gphi[None, :] - np.asarray(phi[s])[v][:, None]).argmin(-1)
            peaks = np.stack([ti, pi], axis=-1)
        out[s] = metrics.pssr_db(power_db[s], peaks, exclusion=exclusion_cells, in_db=True)
    return out


def truth_crb(scenes: Scene, geometry, *, model: str = "exact"):
    """Expected-power CRB std of every true source, or None when the scenes lack what it needs
    (truth, powers, a known noise variance)."""
    if scenes.mask.shape[-1] == 0:
        return None
    nv = np.asarray(scenes.noise_var)
    if not np.all(np.isfinite(nv)) or np.any(nv <= 0):
        log.info("CRB skipped: the scenes carry no (positive) noise_var")
        return None
    return crb_scenes(scenes, geometry, model=model)


def evaluate_detections(scenes: Scene, phi, theta, r, valid, *, score_db=None, pssr=None, crb=None,
                        gates: metrics.Gates = metrics.DEFAULT_GATES, snr_bin_db: float = 5.0) -> dict:
    """SPEC section 7 metrics of `[S, K]` detections against the scenes' truth.

    Args:
      scenes: batched `Scene` with truth (phi/theta/r/mask) and `snr_db` (NaN: no SNR bins).
      phi, theta, r, valid: `[S, K]` detections (radians, metres, bool).
      pssr: optional `[S]` per-scene PSSR (dB).
      crb: optional `CRBStd` with `[S, Kmax]` arrays (from `truth_crb`).
    """
    if scenes.mask.shape[-1] == 0:
        raise ValueError("scenes: evaluation needs the truth (gt_phi, gt_theta, gt_r)")
    mask = np.asarray(scenes.mask, bool)
    snr = np.asarray(scenes.snr_db, float)
    kw = {}
    if crb is not None:
        kw = dict(sqrt_crb_phi=np.asarray(crb.phi, float), sqrt_crb_theta=np.asarray(crb.theta, float),
                  sqrt_crb_r=np.asarray(crb.r, float))
        for key in list(kw):
            kw[key] = np.where(mask, kw[key], np.nan)
            if np.all(np.isnan(kw[key])):
                kw.pop(key)
    valid = np.asarray(valid, bool)
    nanfill = lambda a: np.where(valid, np.asarray(a, float), np.nan)  # noqa: E731
    return metrics.evaluate(
        nanfill(phi), nanfill(theta), nanfill(r),
        np.where(mask, np.asarray(scenes.phi, float), np.nan),
        np.where(mask, np.asarray(scenes.theta, float), np.nan),
        np.where(mask, np.asarray(scenes.r, float), np.nan),
        est_valid=valid, gt_mask=mask,
        snr_db=snr if np.all(np.isfinite(snr)) else None,
        est_score=None if score_db is None else nanfill(score_db),
        scene_pssr_db=pssr, gates=gates, snr_bin_db=snr_bin_db, **kw,
    )
