"""The K-free detector (conventions section 6): oracle detection, 3-D refinement, padded outputs,
batching, threshold modes, NMS, linear arrays and config validation.

Oracle scenes: MVDR on the noise-free R_true = A diag(p) A^H (Woodbury on A^T sqrt(p)), so every
spectral peak sits at a true source and the detector alone is under test. Hand-made maps (cones
in dB around chosen cells) test the peak picking where the answer is known by construction.

Cost note: `detect` is jitted per (grid, config, batch shape, operator shape), and each compilation
with refinement takes a few seconds on CPU; the tests share a handful of them through module
fixtures. Only the oracle set uses the seed's detection grid (1 deg, 16 planes): coarser grids
undersample the noise-free MVDR peaks.
"""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.eval import metrics
from rismvdr.localize.detect import DetectorConfig, Detections, detect, detect_peaks_2d, gate_nms
from rismvdr.localize.settings import GridSpec
from rismvdr.physics.geometry import ula
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.physics.spectra import (
    Spectrum25D,
    SpectrumOperator,
    grid_steering,
    make_grid,
    mvdr_lowrank_operator,
    operator_spectrum,
    spectrum_25d,
)
from rismvdr.physics.steering import steering

DEG = np.pi / 180.0

# Oracle tolerance after refinement (stated once): every true source found within these.
TOL_PHI_DEG, TOL_THETA_DEG, TOL_R_M = 0.5, 0.5, 0.2
TOL_GATES = metrics.Gates(phi=TOL_PHI_DEG * DEG, theta=TOL_THETA_DEG * DEG, r=TOL_R_M)

# Batch vs one-at-a-time (complex64 scenes): (rtol, atol) per output. The kernels differ with the
# batch shape, and float32 rounding is amplified by the Newton refinement on a sharp peak
# (measured: 1.5e-5 rad); these are still ~100x below the oracle tolerance.
BATCH_TOL = {"phi": (0, 1e-4), "theta": (0, 1e-4), "r": (1e-3, 0), "score_db": (0, 5e-3)}

# Oracle MVDR loading. At the seed's delta_rel = 1e-2 the noise-free peaks are far narrower than a
# 1-deg cell, and a far source can fall more than 12 dB below the global maximum on the grid (a
# miss that the 1000-scene F1 bar of test_methods accounts for); ten times that loading keeps every
# peak of a well-separated scene above the threshold while the peaks stay exactly at the sources.
ORACLE_DELTA_REL = 0.1

# Well-separated oracle scenes: the simulator's rejection rule with a 10-deg angular gate and a
# range gate wider than the box puts every pair of sources >= 10 deg apart in phi or theta.
ORACLE_CFG = get_scenario("seed", gate_phi_deg=10.0, gate_theta_deg=10.0, gate_r_m=10.0)
# 16 scenes (K = 1..5: 3, 3, 3, 2, 5 scenes): the batch shape of the seed-settings runs of
# test_methods, so the two files share the detector's compilation in one session.
N_ORACLE, ORACLE_KEY = 16, 11


def fast_key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")  # compiles faster than threefry on CPU


def oracle_operator(scenes, geometry, delta_rel=ORACLE_DELTA_REL):
    """Woodbury MVDR operator of R_true: F = A^T sqrt(p) `[S, N, K_max]` (padding: zero columns)."""
    real = jnp.finfo(scenes.y.dtype).dtype
    a = steering(geometry.astype(real), scenes.phi, scenes.theta, scenes.r, dtype=scenes.y.dtype)
    f = jnp.swapaxes(a * jnp.sqrt(scenes.power)[..., None].astype(a.dtype), -1, -2)
    return jax.vmap(lambda x: mvdr_lowrank_operator(x, delta_rel=delta_rel))(f)


def scene_match(det, scenes, s, gates=TOL_GATES):
    return metrics.match_scene(
        det.phi[s], det.theta[s], det.r[s],
        np.asarray(scenes.phi[s], float), np.asarray(scenes.theta[s], float), np.asarray(scenes.r[s], float),
        est_valid=det.valid[s], gt_mask=np.asarray(scenes.mask[s]), gates=gates,
    )


def in_box(det, grid, tol=1e-6):
    phi, theta, r = grid.arrays()
    v = det.valid
    return (
        np.all((det.phi[v] >= phi.min() - tol) & (det.phi[v] <= phi.max() + tol))
        and np.all((det.theta[v] >= theta.min() - tol) & (det.theta[v] <= theta.max() + tol))
        and np.all((det.r[v] >= r.min() * (1 - tol)) & (det.r[v] <= r.max() * (1 + tol)))
    )


def host(det):
    return Detections(*(np.asarray(x) for x in jax.device_get(det)))


# ------------------------------------------------------------------------------------------
# Oracle scenes on the seed grid
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle():
    cfg = ORACLE_CFG
    geo = scenario_geometry(cfg)
    scenes = simulate(cfg, fast_key(ORACLE_KEY), N_ORACLE)
    ks = np.asarray(scenes.n_sources)
    assert set(ks.tolist()) == {1, 2, 3, 4, 5}, ks  # every K in 1..5, several scenes each
    grid = make_grid(cfg.phi_deg, cfg.theta_deg, cfg.r_m)  # the seed's 1 deg x 1 deg x 16 planes
    op = oracle_operator(scenes, geo)
    spec = spectrum_25d(op, grid_steering(geo, grid, dtype=scenes.y.dtype))
    refined = host(detect(op, spec, geo, grid, DetectorConfig()))
    on_grid = host(detect(op, spec, geo, grid, DetectorConfig(refine=False)))
    return dict(cfg=cfg, geo=geo, scenes=scenes, grid=grid, op=op, spec=spec,
                refined=refined, on_grid=on_grid, k=ks)


def test_oracle_finds_every_source_without_false_alarms(oracle):
    det, scenes = oracle["refined"], oracle["scenes"]
    np.testing.assert_array_equal(det.count, oracle["k"])  # K-free: the count is the true K
    for s in range(N_ORACLE):
        m = scene_match(det, scenes, s)
        assert (m.fp, m.fn) == (0, 0), (s, m)


def test_refinement_beats_the_grid(oracle):
    scenes, grid = oracle["scenes"], oracle["grid"]
    errs = {}
    for name in ("on_grid", "refined"):
        det = oracle[name]
        e = [scene_match(det, scenes, s, gates=metrics.DEFAULT_GATES) for s in range(N_ORACLE)]
        assert all(len(m.est_index) == k for m, k in zip(e, oracle["k"])), name  # K pairs each
        errs[name] = np.abs(np.concatenate([np.stack([m.err_phi, m.err_theta, m.err_r], -1) for m in e]))
    mean_grid, mean_ref = errs["on_grid"].mean(0), errs["refined"].mean(0)
    assert np.all(mean_ref < mean_grid), (mean_ref, mean_grid)
    assert np.all(mean_ref < 0.1 * mean_grid), (mean_ref, mean_grid)  # measured: 600x to 3000x smaller
    assert in_box(oracle["refined"], grid)


def test_refinement_never_lowers_log_p(oracle):
    """Each refined peak scores at least its grid peak, and the score is log P at the point."""
    ref, grid_det = oracle["refined"], oracle["on_grid"]
    scenes = oracle["scenes"]
    for s in range(N_ORACLE):
        mr, mg = scene_match(ref, scenes, s), scene_match(grid_det, scenes, s, metrics.DEFAULT_GATES)
        by_truth_r = dict(zip(mr.gt_index.tolist(), mr.est_index.tolist()))
        for gi, ei in zip(mg.gt_index.tolist(), mg.est_index.tolist()):
            assert ref.score_db[s, by_truth_r[gi]] >= grid_det.score_db[s, ei] - 1e-4
    # score_db is 10 log10 P at the refined point (checked on one scene)
    s = int(np.argmax(oracle["k"]))
    op1 = jax.tree_util.tree_map(lambda x: x[s], oracle["op"])
    v = ref.valid[s]
    geo = oracle["geo"].astype(np.float32)
    a = steering(geo, ref.phi[s][v], ref.theta[s][v], ref.r[s][v], dtype=jnp.complex64)
    p_db = 10 * np.log10(np.asarray(operator_spectrum(op1, a)))
    np.testing.assert_allclose(ref.score_db[s][v], p_db, atol=0.05)


def test_padded_output_layout(oracle):
    for det in (oracle["refined"], oracle["on_grid"]):
        for x in det:
            chex.assert_shape(x, (N_ORACLE, DetectorConfig().k_max))
        assert det.valid.dtype == bool
        # valid entries first, sorted by decreasing score; padding scores -inf
        assert np.all(np.diff(det.valid.astype(int), axis=-1) <= 0)
        assert np.all(det.score_db[~det.valid] == -np.inf)
        assert np.all(np.isfinite(det.score_db[det.valid]))
        for row, v in zip(det.score_db, det.valid):
            assert np.all(np.diff(row[v]) <= 1e-6)
        assert np.all(np.isfinite(det.phi[det.valid]) & np.isfinite(det.r[det.valid]))


# ------------------------------------------------------------------------------------------
# Coarse-to-fine search
# ------------------------------------------------------------------------------------------
def coarse_grids(cfg):
    """(coarse map grid, fine grid) of the scenario's box with the coarse-to-fine search."""
    spec = GridSpec(phi_deg=cfg.phi_deg, theta_deg=cfg.theta_deg, r_m=cfg.r_m, search="coarse-to-fine")
    return spec.search_grids()


def test_search_grids():
    cfg = ORACLE_CFG
    full = GridSpec(phi_deg=cfg.phi_deg, theta_deg=cfg.theta_deg, r_m=cfg.r_m)
    assert full.search_grids() == (full.grid(), None)
    coarse, fine = coarse_grids(cfg)
    assert fine == full.grid()
    assert coarse.shape == (21, 41, 8)  # 3 deg x 3 deg x 8 planes over the seed box (61 x 121 x 16)
    assert coarse.r[0] == fine.r[0] and coarse.r[-1] == fine.r[-1]
    for kw, name in (({"search": "fast"}, "search"), ({"coarse_factor": 0.5}, "coarse_factor"),
                     ({"coarse_planes": 0}, "coarse_planes")):
        with pytest.raises(ValueError, match=name):
            GridSpec(**kw)


@pytest.fixture(scope="module")
def coarse(oracle):
    coarse_grid, fine = coarse_grids(oracle["cfg"])
    spec = spectrum_25d(oracle["op"], grid_steering(oracle["geo"], coarse_grid, dtype=jnp.complex64))
    det = host(detect(oracle["op"], spec, oracle["geo"], coarse_grid, DetectorConfig(), fine=fine))
    return dict(grid=coarse_grid, fine=fine, spec=spec, det=det)


def test_coarse_to_fine_finds_the_full_grid_peaks(oracle, coarse):
    """Oracle scenes: the same count and the same peaks as the full grid's refined detections,
    from a map with 1/18 of its points."""
    det, full, scenes = coarse["det"], oracle["refined"], oracle["scenes"]
    np.testing.assert_array_equal(det.count, full.count)
    for s in range(N_ORACLE):
        m = scene_match(det, scenes, s)
        assert (m.fp, m.fn) == (0, 0), (s, m)
        mf = scene_match(full, scenes, s)
        by_truth = dict(zip(mf.gt_index.tolist(), mf.est_index.tolist()))
        for gi, ei in zip(m.gt_index.tolist(), m.est_index.tolist()):
            fi = by_truth[gi]
            assert abs(det.phi[s, ei] - full.phi[s, fi]) < 0.05 * DEG
            assert abs(det.theta[s, ei] - full.theta[s, fi]) < 0.05 * DEG
            assert abs(det.r[s, ei] - full.r[s, fi]) < 0.02
            assert abs(det.score_db[s, ei] - full.score_db[s, fi]) < 0.05
    assert in_box(det, oracle["grid"])


def test_coarse_to_fine_is_one_program_of_fixed_shapes(oracle, coarse):
    traces = []

    def run(op, spec):
        traces.append(1)
        return detect(op, spec, oracle["geo"], coarse["grid"], DetectorConfig(), fine=coarse["fine"])

    jitted = jax.jit(run)
    det = host(jitted(oracle["op"], coarse["spec"]))
    for x in det:
        chex.assert_shape(x, (N_ORACLE, DetectorConfig().k_max))
    np.testing.assert_array_equal(det.valid, coarse["det"].valid)
    # other data of the same shapes: no new trace
    half = coarse["spec"]._replace(power=coarse["spec"].power * 0.5)
    jitted(oracle["op"], half)
    assert len(traces) == 1
    assert np.all(np.diff(det.valid.astype(int), axis=-1) <= 0)
    assert np.all(det.score_db[~det.valid] == -np.inf)


def test_full_search_ignores_the_coarse_settings(oracle):
    """The full grid path is the one it was: the coarse-to-fine fields change nothing in it."""
    cfg = DetectorConfig(coarse_candidates=7, coarse_refine_iters=3)
    det = host(detect(oracle["op"], oracle["spec"], oracle["geo"], oracle["grid"], cfg))
    for a, b in zip(det, oracle["refined"]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------
# Batching, the box, the linear array
# ------------------------------------------------------------------------------------------
def test_batch_equals_one_at_a_time(oracle):
    """vmap consistency: scenes of the oracle batch, detected alone (float32 noise)."""
    geo, grid = oracle["geo"], oracle["grid"]
    a_grid = grid_steering(geo, grid, dtype=jnp.complex64)
    batch = oracle["refined"]
    for s in (0, int(np.argmax(oracle["k"]))):
        op1 = jax.tree_util.tree_map(lambda x: x[s: s + 1], oracle["op"])
        one = host(detect(op1, spectrum_25d(op1, a_grid), geo, grid))
        np.testing.assert_array_equal(one.valid[0], batch.valid[s])
        v = one.valid[0]
        for name, (rtol, atol) in BATCH_TOL.items():
            np.testing.assert_allclose(getattr(one, name)[0][v], getattr(batch, name)[s][v],
                                       rtol=rtol, atol=atol, err_msg=name)


def test_refined_points_stay_in_the_box(oracle):
    """Sources just outside the search box: refinement climbs towards them but stops at the box.

    Same shapes, dtype and grid as the single-scene runs above (their compilation is shared).
    """
    geo, grid = oracle["geo"], oracle["grid"]
    phi = jnp.array([[-61.5, 20.0, 0.0, 0.0, 0.0]], jnp.float32) * DEG  # first: outside in phi
    theta = jnp.array([[0.0, 31.0, 0.0, 0.0, 0.0]], jnp.float32) * DEG  # second: outside in theta
    r = jnp.array([[3.0, 2.0, 0.45, 8.0, 8.0]], jnp.float32)  # third: outside in range
    power = jnp.array([[1.0, 1.0, 1.0, 0.0, 0.0]], jnp.float32)
    a = steering(geo.astype(np.float32), phi, theta, r, dtype=jnp.complex64)
    f = jnp.swapaxes(a * jnp.sqrt(power)[..., None].astype(a.dtype), -1, -2)
    op = jax.vmap(lambda x: mvdr_lowrank_operator(x, delta_rel=ORACLE_DELTA_REL))(f)
    spec = spectrum_25d(op, grid_steering(geo, grid, dtype=jnp.complex64))
    det = host(detect(op, spec, geo, grid))
    assert det.count[0] == 3
    assert in_box(det, grid, tol=1e-6)
    # each one ends on the face of the box it lies outside of
    v = det.valid[0]
    assert np.isclose(det.phi[0][v], -60 * DEG, atol=1e-6).sum() == 1
    assert np.isclose(det.theta[0][v], 30 * DEG, atol=1e-6).sum() == 1
    assert np.isclose(det.r[0][v], 0.5, rtol=1e-6).sum() == 1


def test_linear_array_detects_on_phi_and_r():
    """16-element ULA: theta is known (0) and never refined; sources found in (phi, r)."""
    geo = ula(16, 0.15, wavelength=0.3)
    assert geo.linear
    # two scenes, [S, K] truth (phi deg, r m, power); every pair >= 15 deg apart in phi
    phi = jnp.array([[-35.0, 5.0, 40.0], [-50.0, -20.0, 25.0]], jnp.float32) * DEG
    r = jnp.array([[1.2, 2.5, 0.8], [3.5, 1.0, 1.8]], jnp.float32)
    power = jnp.array([[1.0, 0.5, 0.3], [0.4, 1.0, 0.6]], jnp.float32)
    a = steering(geo.astype(np.float32), phi, jnp.zeros_like(phi), r, dtype=jnp.complex64)
    f = jnp.swapaxes(a * jnp.sqrt(power)[..., None].astype(a.dtype), -1, -2)
    op = jax.vmap(lambda x: mvdr_lowrank_operator(x, delta_rel=ORACLE_DELTA_REL))(f)
    grid = make_grid((-60.0, 60.0), (0.0, 0.0), (0.5, 4.0))  # 1 deg, 16 planes: 1 x 121 cells
    assert grid.shape[:2] == (1, 121)
    spec = spectrum_25d(op, grid_steering(geo, grid, dtype=jnp.complex64))
    det = host(detect(op, spec, geo, grid))
    np.testing.assert_array_equal(det.count, 3)
    assert np.all(det.theta[det.valid] == 0.0)
    for s in range(2):
        m = metrics.match_scene(det.phi[s], det.theta[s], det.r[s], np.asarray(phi[s], float),
                                np.zeros(3), np.asarray(r[s], float), est_valid=det.valid[s],
                                gates=TOL_GATES)
        assert (m.fp, m.fn) == (0, 0), (s, m)


# ------------------------------------------------------------------------------------------
# Hand-made maps: thresholds, cap, NMS
# ------------------------------------------------------------------------------------------
# A 2-deg grid, 41 x 21 cells, 4 range planes; cones in dB around chosen cells, so the local
# maxima are exactly the cone tips.
HM_GRID = make_grid((-40.0, 40.0), (-20.0, 20.0), (1.0, 8.0), phi_step_deg=2.0, theta_step_deg=2.0,
                    n_planes=4)
# (theta index, phi index, plane, height dB), pairwise >= 5 cells (10 deg) apart
HM_PEAKS = [(10, 20, 0, 40.0), (3, 5, 1, 35.0), (17, 35, 2, 31.0), (3, 33, 3, 26.0),
            (16, 8, 0, 22.0), (10, 28, 1, 17.0), (5, 14, 2, 13.0)]


def cone_map(peaks, shape=None, slope_db=6.0):
    t, p = (HM_GRID.shape[0], HM_GRID.shape[1]) if shape is None else shape
    ti, pi = np.meshgrid(np.arange(t), np.arange(p), indexing="ij")
    db = np.full((t, p), -np.inf)
    plane = np.zeros((t, p), np.int32)
    for it, ip, pl, h in peaks:
        cone = h - slope_db * np.hypot(ti - it, pi - ip)
        plane = np.where(cone > db, pl, plane)
        db = np.maximum(db, cone)
    return 10.0 ** (db / 10.0), plane, db


def peaks_2d(power, plane, cfg, cap=None, grid=HM_GRID):
    out = detect_peaks_2d(jnp.asarray(power), jnp.asarray(plane), grid, cfg, cap)
    return [np.asarray(x) for x in out]


def kept_heights(out):
    return sorted(out[3][out[4]].round(3).tolist(), reverse=True)


def test_db_threshold_modes():
    power, plane, _ = cone_map(HM_PEAKS)
    heights = [h for *_, h in HM_PEAKS]
    out = peaks_2d(power, plane, DetectorConfig(threshold_db=1000.0, k_max=5))
    assert kept_heights(out) == heights[:5]  # every local max, up to k_max
    out = peaks_2d(power, plane, DetectorConfig(threshold_db=1000.0, k_max=8))
    assert kept_heights(out) == heights  # all seven
    out = peaks_2d(power, plane, DetectorConfig(threshold_db=0.0))
    assert kept_heights(out) == [40.0]  # only the global max
    out = peaks_2d(power, plane, DetectorConfig(threshold_db=12.0, k_max=8))
    assert kept_heights(out) == [h for h in heights if h >= 40.0 - 12.0]
    out = peaks_2d(power, plane, DetectorConfig(threshold_mode="none", k_max=8))
    assert kept_heights(out) == heights
    # positions and planes of the kept peaks are the cone tips
    phi, theta, r = HM_GRID.arrays()
    tips = {(round(theta[it], 9), round(phi[ip], 9), round(r[pl], 9)) for it, ip, pl, _ in HM_PEAKS}
    got = {(round(float(t), 9), round(float(p), 9), round(float(rr), 9))
           for p, t, rr, v in zip(out[0], out[1], out[2], out[4]) if v}
    assert got == tips


def test_mad_threshold_matches_reference():
    power, plane, db = cone_map(HM_PEAKS)
    med = np.median(db)
    mad = np.median(np.abs(db - med))
    for z in (1.0, 3.0, 5.0):
        cut = med + z * mad
        heights = [h for *_, h in HM_PEAKS]
        assert min(abs(h - cut) for h in heights) > 0.5  # the test is not decided by rounding
        out = peaks_2d(power, plane, DetectorConfig(threshold_mode="mad", mad_z=z, k_max=8))
        assert kept_heights(out) == [h for h in heights if h >= cut], z


def test_cap_limits_counts_per_scene():
    power, plane, _ = cone_map(HM_PEAKS)
    b = 4
    spec = Spectrum25D(jnp.asarray(np.broadcast_to(power, (b,) + power.shape), jnp.float32),
                       jnp.asarray(np.broadcast_to(plane, (b,) + plane.shape)))
    geo = ula(4, 0.15, wavelength=0.3)  # unused without refinement, but part of the signature
    op = SpectrumOperator(jnp.zeros((b, 1, 4), jnp.complex64), jnp.ones((b,), jnp.float32), "complement")
    cfg = DetectorConfig(threshold_mode="none", refine=False)
    det = host(detect(op, spec, geo, HM_GRID, cfg, cap=np.array([0, 1, 3, 9])))
    np.testing.assert_array_equal(det.count, [0, 1, 3, 5])  # k_max = 5 still applies
    np.testing.assert_allclose(det.score_db[1], [40.0, -np.inf, -np.inf, -np.inf, -np.inf], atol=1e-4)
    np.testing.assert_allclose(det.score_db[2][:3], [40.0, 35.0, 31.0], atol=1e-4)
    det = host(detect(op, spec, geo, HM_GRID, cfg))  # no cap: k_max
    np.testing.assert_array_equal(det.count, [5] * b)


# ------------------------------------------------------------------------------------------
# Degenerate maps: no peaks in a flat or non-finite map, never a valid non-finite score
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["db", "mad", "none"])
@pytest.mark.parametrize("level", [0.0, 1e-30, 1.0, 1e30])
def test_flat_map_has_no_peaks(mode, level):
    t, p = HM_GRID.shape[:2]
    out = peaks_2d(np.full((t, p), level), np.zeros((t, p), np.int32), DetectorConfig(threshold_mode=mode))
    assert not out[4].any()  # not the box corner (the first cells of top_k), not anywhere


def test_map_within_flat_db_has_no_peaks_and_just_above_has():
    power, plane, _ = cone_map(HM_PEAKS[:1], slope_db=1e-5)  # cone of 40 dB - 1e-5 dB per cell
    cfg = DetectorConfig(flat_db=1e-3)
    rng = 40.0 - 10 * np.log10(power.min())
    assert rng < cfg.flat_db
    assert not peaks_2d(power, plane, cfg)[4].any()
    assert peaks_2d(power, plane, dataclasses.replace(cfg, flat_db=0.1 * rng))[4].sum() == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_map_has_no_peaks(bad):
    power, plane, _ = cone_map(HM_PEAKS)
    assert peaks_2d(power, plane, DetectorConfig())[4].any()
    power = power.copy()
    power[0, 0] = bad
    out = peaks_2d(power, plane, DetectorConfig())
    assert not out[4].any()


def test_peak_with_non_finite_refined_score_is_never_valid():
    # The map has peaks, but the operator it is refined against gives P = 0 (W = 0, Bartlett
    # form): every refined score is 10 log10(0) = -inf, so no detection may be valid.
    power, plane, _ = cone_map(HM_PEAKS[:2])
    spec = Spectrum25D(jnp.asarray(power, jnp.float32)[None], jnp.asarray(plane)[None])
    geo = ula(4, 0.15, wavelength=0.3)  # small: only the refinement's arithmetic is under test
    op = SpectrumOperator(jnp.zeros((1, 2, 4), jnp.complex64), jnp.ones((1,), jnp.float32), "direct")
    on_grid = host(detect(op, spec, geo, HM_GRID, DetectorConfig(refine=False)))
    assert on_grid.valid.sum() == 2  # the grid stage alone finds both cones
    det = host(detect(op, spec, geo, HM_GRID, DetectorConfig(refine_iters=1)))
    assert not det.valid.any()
    assert not np.isnan(det.score_db).any()


def test_nms_merges_peaks_inside_the_gate():
    # two tips 2 cells = 4 deg apart in phi on the same plane: inside the 5-deg gate
    peaks = [(10, 20, 1, 30.0), (10, 22, 1, 29.5)]
    power, plane, _ = cone_map(peaks, slope_db=1.0)  # shallow cones: both tips are local maxima
    out = peaks_2d(power, plane, DetectorConfig(threshold_mode="none"))
    assert kept_heights(out) == [30.0]
    # the same two tips with range planes 1.5 m apart (outside the 1 m gate): both kept
    r = np.asarray(HM_GRID.r)
    assert abs(r[1] - r[3]) > 1.5
    power, plane, _ = cone_map([(10, 20, 1, 30.0), (10, 22, 3, 29.5)], slope_db=1.0)
    out = peaks_2d(power, plane, DetectorConfig(threshold_mode="none"))
    assert kept_heights(out) == [30.0, 29.5]


@pytest.mark.parametrize("dr, kept", [(1.5, 2), (0.8, 1)])
def test_gate_nms_same_angle_different_range(dr, kept):
    cfg = DetectorConfig()
    phi = jnp.array([0.3, 0.3, -0.5])
    theta = jnp.array([0.1, 0.1, 0.0])
    r = jnp.array([2.0, 2.0 + dr, 4.0])
    score = jnp.array([10.0, 9.0, 5.0])
    valid = jnp.array([True, True, False])  # the invalid candidate is never kept
    p, t, rr, sc, keep = (np.asarray(x) for x in gate_nms(phi, theta, r, score, valid, cfg.gates, 5))
    assert keep.sum() == kept
    np.testing.assert_allclose(rr[:kept], [2.0, 2.0 + dr][:kept])
    np.testing.assert_allclose(sc[:kept], [10.0, 9.0][:kept])
    # cap on the number kept
    assert np.asarray(gate_nms(phi, theta, r, score, valid, cfg.gates, 1)[-1]).sum() == 1


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("threshold_mode", "x"), ("k_max", 0), ("n_candidates", 2), ("refine_iters", -1),
    ("coarse_candidates", 0), ("coarse_refine_iters", -1),
    ("threshold_db", float("nan")), ("mad_z", float("inf")), ("flat_db", -1.0),
])
def test_bad_config_names_the_field(field, value):
    cfg = dataclasses.replace(DetectorConfig(), **{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    power, plane, _ = cone_map(HM_PEAKS[:1])
    spec = Spectrum25D(jnp.asarray(power)[None], jnp.asarray(plane)[None])
    with pytest.raises(ValueError, match=field):
        detect(None, spec, None, HM_GRID, cfg)


def test_cap_of_wrong_shape_raises():
    power, plane, _ = cone_map(HM_PEAKS[:1])
    spec = Spectrum25D(jnp.asarray(power)[None], jnp.asarray(plane)[None])
    with pytest.raises(ValueError, match="cap"):
        detect(None, spec, None, HM_GRID, DetectorConfig(), cap=np.array([1, 2]))
