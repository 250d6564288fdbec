"""The shared significance stage (`rismvdr.localize.significance`).

* against an independent NumPy reference (float64 least squares, the F statistic of conventions-style
  nested fits, the drop-the-weakest loop): the same detections kept;
* a strong source (one source, 20 dB) is never dropped: the true positives of every method the
  stage applies to are the same with and without it;
* survivors are a subset of the detector's output, in its order, valid first;
* the setting: "none" reaches the detector's output, a bad value is refused by name.

Noise-only scenes (no detection in any method, within a binomial bound) are tested in
tests/test_degenerate.py. Grids are coarse (4 deg x 4 deg x 4 planes) to keep this fast.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rismvdr.eval.evaluation import evaluate_detections
from rismvdr.localize.detect import DetectorConfig, Detections
from rismvdr.localize.registry import METHODS, localize, settings_for_scenario
from rismvdr.localize.significance import significance_test
from rismvdr.physics.compressive import CompressiveConfig, f_thresholds
from rismvdr.physics.covariance import unit_rms
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.physics.steering import steering

SMALL = dict(phi_step_deg=4.0, theta_step_deg=4.0, n_planes=4)
#: The methods the stage applies to, in RIS mode (the seed scenario), without the learned ones.
STAGED = [n for n, m in METHODS.items() if not m.significance_tested and not m.full_array_only]


def _small_settings(cfg, **det):
    s = settings_for_scenario(cfg, batch_size=4).with_grid(**SMALL)
    s = s.replace(compressive=dataclasses.replace(s.compressive, **SMALL))
    return s.replace(detector=dataclasses.replace(s.detector, **det))


def _numpy_retest(y, G, cols, valid, tau):
    """Reference: float64 joint least squares per snapshot, F of each source given the others,
    the least significant dropped while it fails (`tau[order - 1]`)."""
    l, m = y.shape
    B = np.einsum("lmn,nk->lmk", G, cols)  # [L, M, K]

    def rss(mask):
        idx = np.flatnonzero(mask)
        total = 0.0
        for i in range(l):
            if idx.size == 0:
                total += np.sum(np.abs(y[i]) ** 2)
                continue
            s, *_ = np.linalg.lstsq(B[i][:, idx], y[i], rcond=None)
            total += np.sum(np.abs(y[i] - B[i][:, idx] @ s) ** 2)
        return total

    mask = valid.copy()
    margins = []
    for _ in range(len(mask)):
        order = int(mask.sum())
        if order == 0:
            break
        base = rss(mask)
        f = np.full(len(mask), np.inf)
        for j in np.flatnonzero(mask):
            wo = mask.copy()
            wo[j] = False
            f[j] = ((rss(wo) - base) / l) / (base / ((m - order) * l))
        j = int(np.argmin(f))
        margins.append(abs(np.log(f[j] / tau[order - 1])))
        if f[j] <= tau[order - 1]:
            mask[j] = False
    return mask, min(margins)


def test_matches_numpy_reference():
    cfg = get_scenario("seed", k_min=2, k_max=2, snr_db=(5.0, 5.0))
    geo = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(11), 3)
    y, _ = unit_rms(scenes.y)
    rng = np.random.default_rng(1)
    k = 5
    # Slots: the two true sources, two random points of the box, one padding slot (NaN: ignored).
    phi = np.concatenate([np.asarray(scenes.phi), np.deg2rad(rng.uniform(-60, 60, (3, 2))), np.full((3, 1), np.nan)], 1)
    theta = np.concatenate([np.asarray(scenes.theta), np.deg2rad(rng.uniform(-30, 30, (3, 2))), np.zeros((3, 1))], 1)
    r = np.concatenate([np.asarray(scenes.r), rng.uniform(0.5, 10, (3, 2)), np.ones((3, 1))], 1)
    valid = np.arange(k)[None, :].repeat(3, 0) < 4
    score = -np.arange(k, dtype=np.float64)[None, :].repeat(3, 0)  # detector order: decreasing score
    det = Detections(*(jnp.asarray(x) for x in (phi, theta, r, score, valid)))
    ccfg = CompressiveConfig()
    tau = f_thresholds(int(y.shape[-1]), int(y.shape[-2]), k, 4000, ccfg)
    out = significance_test(y, scenes.H, scenes.codes, det, tau, geo, ccfg)
    out = [np.asarray(x) for x in out]
    for s in range(3):
        G = np.asarray(scenes.H[s], np.complex128)[None] * np.asarray(scenes.codes[s], np.complex128)[:, None, :]
        cols = np.asarray(steering(geo.astype(jnp.float64), jnp.asarray(np.nan_to_num(phi[s])), jnp.asarray(theta[s]),
                                   jnp.asarray(r[s]), dtype=jnp.complex128)).T
        ref, margin = _numpy_retest(np.asarray(y[s], np.complex128), G, cols, valid[s], tau)
        assert margin > 0.05, f"scene {s}: a decision within 5 % of its threshold, pick another seed"
        kept = np.flatnonzero(ref)
        n = kept.size
        assert 1 <= n < 4, f"scene {s}: the reference keeps {n} of 4 (the test needs both outcomes)"
        np.testing.assert_array_equal(out[4][s], np.arange(k) < n)
        np.testing.assert_array_equal(out[0][s][:n], phi[s][kept])  # survivors in the detector's order
        np.testing.assert_array_equal(out[3][s][:n], score[s][kept])
        assert np.all(out[3][s][n:] == -np.inf)


def _staged(dets: Detections, scenes, geo, settings) -> Detections:
    """The stage applied to `localize`'s output, as `localize` applies it (unit-RMS `y`, the
    dictionary grid's thresholds)."""
    ccfg = settings.compressive_config()
    tau = f_thresholds(int(scenes.y.shape[-1]), int(scenes.y.shape[-2]), ccfg.k_max,
                       math.prod(settings.dictionary_grid().shape), ccfg)
    y, _ = unit_rms(scenes.y)
    out = significance_test(y, scenes.H, scenes.codes, Detections(*(jnp.asarray(x) for x in dets)), tau, geo, ccfg,
                            model=settings.steering_model)
    return Detections(*(np.asarray(x) for x in out))


#: MUSIC's order estimates (MDL/AIC on the matched-filter eigenvalues) miss sources of the seed
#: at any SNR, so for them only the true positives they have are checked.
MISSES_BY_ITSELF = {"music-mdl", "music-aic"}


@pytest.mark.parametrize("name", [n if n == "mvdr-als" else pytest.param(n, marks=pytest.mark.slow) for n in STAGED])
def test_strong_single_source_is_kept(name):
    """One source at 20 dB: the stage removes none of the method's true positives (4 scenes)."""
    cfg = get_scenario("seed", k_min=1, k_max=1, snr_db=(20.0, 20.0))
    geo = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(5), 4)
    s = _small_settings(cfg, significance="none")
    d0 = localize(name, scenes, geo, s, progress=False, keep_maps=False).detections
    d1 = _staged(d0, scenes, geo, s)
    tp = [evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid, gates=cfg.gates)["tp"] for d in (d0, d1)]
    assert tp[1] == tp[0], f"{name}: {tp[0]} true positives without the stage, {tp[1]} with it"
    if name not in MISSES_BY_ITSELF:
        assert tp[1] == 4, f"{name}: {tp[1]} of 4 strong sources found"
    assert d1.valid.sum() <= d0.valid.sum()


def test_survivors_are_the_detectors_peaks_in_order():
    cfg = get_scenario("seed")
    geo = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(2), 4)
    out = {}
    for mode in ("none", "f-test"):
        out[mode] = localize("mvdr-als", scenes, geo, _small_settings(cfg, significance=mode), progress=False,
                             keep_maps=False).detections
    a, b = out["none"], out["f-test"]
    assert b.valid.sum() < a.valid.sum(), "seed scenes: MVDR on ALS has false alarms the stage removes"
    for s in range(4):
        v = b.valid[s]
        assert np.all(np.diff(v.astype(int)) <= 0)  # valid first
        kept = [int(np.flatnonzero(a.valid[s] & (a.phi[s] == p) & (a.r[s] == rr))[0])
                for p, rr in zip(b.phi[s][v], b.r[s][v])]
        assert kept == sorted(kept), "survivors keep the detector's order"
        np.testing.assert_array_equal(b.score_db[s][v], a.score_db[s][kept])
        assert np.all(b.score_db[s][~v] == -np.inf)


def test_false_alarm_rate_on_noise_only_scenes():
    """The stage's per-scene false-alarm rate on noise-only scenes is within its bound (pfa 1 %)
    for MVDR on ALS, whose detector alone reports up to k_max peaks on noise."""
    n, pfa = 40, CompressiveConfig().pfa
    cfg = get_scenario("seed", snr_db=(-200.0, -200.0))  # signal 1e-20 of the noise
    geo = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(9), n)
    alarms = {}
    for mode in ("none", "f-test"):
        d = localize("mvdr-als", scenes, geo, _small_settings(cfg, significance=mode), progress=False,
                     keep_maps=False).detections
        alarms[mode] = int(np.sum(np.any(d.valid, axis=1)))
    assert alarms["none"] == n  # the relative threshold always passes something
    assert alarms["f-test"] <= stats.binom.ppf(0.999, n, pfa), alarms


def test_setting_is_validated():
    with pytest.raises(ValueError, match="significance"):
        DetectorConfig(significance="bonferroni").validate()
    DetectorConfig(significance="none").validate()
    assert DetectorConfig().significance == "f-test"
