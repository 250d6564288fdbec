"""Evaluation glue shared by the CLI, the demo and the benchmarks: detections + scenes ->
the metrics of conventions section 7 (through `rismvdr.eval.metrics`, the one metrics module), with
per-scene PSSR from the 2.5D maps and the CRB of the true sources when the scenes allow it.

`evaluate_files` does what `rismvdr evaluate` does, from the files of conventions section 8, for a
notebook or a script.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from rismvdr.eval import metrics
from rismvdr.io import load_scenes, read_detections_csv, read_maps, scenario_from_meta, scenes_from_file
from rismvdr.physics.crb import crb_scenes
from rismvdr.physics.simulate import Scene
from rismvdr.physics.spectra import Grid

__all__ = ["scene_pssr_db", "truth_crb", "evaluate_detections", "evaluate_files"]

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
    """Expected-power CRB std of every true source (`rismvdr.physics.crb.crb_scenes`).

    A scene whose Fisher matrix is singular (two sources at one position, a zero-power source,
    too few measurements) has an infinite bound at every source; the metrics treat that scene's
    CRB as undefined and compute the test set's CRB figures from the other scenes
    (`n_scenes_crb_undefined`), so one such scene does not turn the set's RMSE / sqrt(CRB) into 0.

    Args:
      scenes: batched `Scene` with truth, powers and `noise_var`.
      geometry: the scenes' array.
      model: steering model of the bound.

    Returns:
      `CRBStd` with `[S, Kmax]` arrays (radians, metres; NaN for padding and parameters not
      bounded, `inf` in a scene that is not identifiable), or None when the scenes lack what it
      needs (truth, a positive noise variance).
    """
    if scenes.mask.shape[-1] == 0:
        return None
    nv = np.asarray(scenes.noise_var)
    if not np.all(np.isfinite(nv)) or np.any(nv <= 0):
        log.info("CRB skipped: the scenes carry no (positive) noise_var")
        return None
    return crb_scenes(scenes, geometry, model=model)


def evaluate_detections(scenes: Scene, phi, theta, r, valid, *, score_db=None, pssr=None, crb=None,
                        gates: metrics.Gates = metrics.DEFAULT_GATES, snr_bin_db: float = 5.0) -> dict:
    """conventions section 7 metrics of `[S, K]` detections against the scenes' truth.

    Args:
      scenes: batched `Scene` with truth (phi/theta/r/mask) and `snr_db` (NaN: no SNR bins).
      phi, theta, r, valid: `[S, K]` detections (radians, metres, bool).
      pssr: optional `[S]` per-scene PSSR (dB).
      crb: optional `CRBStd` with `[S, Kmax]` arrays (from `truth_crb`); a scene whose bound is
        not finite is left out of the CRB figures and counted in `n_scenes_crb_undefined`.
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


def evaluate_files(scenes_path: str | os.PathLike, detections_path: str | os.PathLike, *,
                   maps_path: str | os.PathLike | None = None, crb: bool = True,
                   gates: metrics.Gates = metrics.DEFAULT_GATES, snr_bin_db: float = 5.0,
                   label: str | None = None) -> dict:
    """conventions section 7 metrics of a detections CSV against the truth of a scene file.

    The scenes are read with the steering model of the scenario recorded in the scene file
    (else `exact`); the CRB is that model's, of the true sources.

    Args:
      scenes_path: scene file (`.npz`) with the truth (`gt_phi`, `gt_theta`, `gt_r`).
      detections_path: detections CSV (`rismvdr localize --out`).
      maps_path: optional maps file (`rismvdr localize --maps-out`): adds the per-scene PSSR
        (dB) of the detections on the maps.
      crb: compute the Cramer-Rao bound of the true sources (`RMSE / sqrt(CRB)`; False skips
        it, which saves time on large sets).
      gates: the detection gate of a true positive.
      snr_bin_db: width of the SNR bins of the per-SNR breakdown, dB.
      label: the method's name in the result (default: the CSV's file name without suffix).

    Returns:
      `{"method": label, "test_set": {"file", "scenario", "seed", "n_scenes"}, **metrics}`:
      what `rismvdr evaluate --out` writes (NumPy values; `rismvdr.io.to_jsonable` makes it
      JSON).

    Raises:
      ValueError: a malformed file (one line naming the file and key), a scene file without
        truth, or a maps file of another number of scenes.
    """
    sf = load_scenes(scenes_path)
    if not sf.has_truth:
        raise ValueError(f"{scenes_path}: key 'gt_phi': missing, evaluation needs the truth")
    det = read_detections_csv(detections_path, n_scenes=sf.n_scenes)
    cfg = scenario_from_meta(sf.meta)
    model = cfg.steering_model if cfg is not None else "exact"
    scenes = scenes_from_file(sf, model=model, truth_covariance=False)
    pssr = None
    if maps_path:
        power_db, _, grid = read_maps(maps_path)
        if power_db.shape[0] != sf.n_scenes:
            raise ValueError(f"{maps_path}: key 'power_db': {power_db.shape[0]} scenes, the scene file has "
                             f"{sf.n_scenes}")
        pssr = scene_pssr_db(power_db, det.phi, det.theta, det.valid, grid)
    bound = truth_crb(scenes, sf.geometry(), model=model) if crb else None
    ev = evaluate_detections(scenes, det.phi, det.theta, det.r, det.valid, score_db=det.score_db,
                             pssr=pssr, crb=bound, gates=gates, snr_bin_db=snr_bin_db)
    meta = sf.meta or {}
    test_set = dict(file=str(scenes_path), scenario=meta.get("scenario"), seed=meta.get("seed"),
                    n_scenes=sf.n_scenes)
    return dict(method=label or Path(detections_path).stem, test_set=test_set, **ev)
