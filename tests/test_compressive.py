"""Compressive ML localizer (SOMP + variable-projection ML + order test): physics checks.

- noise-free scenes: every source recovered within 0.05 deg and 1 cm;
- single source at 10 dB: RMSE within 1.5 x sqrt(CRB) in phi, theta (and r for r <= 5 m);
- the K-free stopping rule's false-alarm rate on noise-only scenes is within its stated bound;
- batching gives the same results as one scene at a time;
- the F-test thresholds against SciPy;
- the ML's closed-form variable-projection Jacobian against central differences of a NumPy
  float64 least-squares residual;
- the least-squares range scan against a NumPy float64 brute force (one joint fit per candidate);
- the early-stopped Levenberg-Marquardt against the fixed-count one, and the order re-test's while
  loop against the fixed loop it replaced.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rismvdr.eval.evaluation import evaluate_detections, truth_crb
from rismvdr.eval.metrics import match_scene
from rismvdr.localize.registry import localize, settings_for_scenario
from rismvdr.physics.compressive import (
    AtomOperator,
    CompressiveConfig,
    apply_operators,
    atom_norms,
    atom_scores,
    dictionary,
    f_isf,
    f_thresholds,
    ls_fit,
    ml_refine_fit,
    order_retest,
    range_scan,
    scene_operators,
    search_candidates,
    somp,
    somp_ml,
    source_fstats,
    vp_residual_jacobian,
)
from rismvdr.physics.spectra import grid_steering
from rismvdr.physics.steering import steering
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from test_steering import ref_steering  # the float64 NumPy steering reference

# Accuracy bars of the issue (stated once).
NOISE_FREE_ANGLE_DEG = 0.05
NOISE_FREE_RANGE_M = 0.01
CRB_FACTOR = 1.5


def _run(cfg, n, seed=0, method="somp-ml", pfa=None):
    scenes = simulate(cfg, seed, n)
    geometry = scenario_geometry(cfg)
    settings = settings_for_scenario(cfg)
    if pfa is not None:
        c = settings.compressive
        settings = settings.replace(compressive=dataclasses.replace(c, config=dataclasses.replace(c.config, pfa=pfa)))
    res = localize(method, scenes, geometry, settings, progress=False)
    return scenes, geometry, res.detections


def _matched_errors(scenes, det):
    """Per true source: the nearest valid detection's |dphi|, |dtheta| (deg), |dr| (m)."""
    out = []
    for s in range(scenes.phi.shape[0]):
        m = np.asarray(scenes.mask[s])
        v = np.asarray(det.valid[s])
        for k in np.flatnonzero(m):
            t = np.array([scenes.phi[s, k], scenes.theta[s, k], scenes.r[s, k]], float)
            e = np.stack([det.phi[s][v], det.theta[s][v], det.r[s][v]], -1).astype(float)
            if e.size == 0:
                out.append([np.inf] * 3)
                continue
            d = np.abs(e - t[None, :])
            j = np.argmin(np.hypot(d[:, 0] / np.deg2rad(5), d[:, 1] / np.deg2rad(5)) + d[:, 2])
            out.append([np.rad2deg(d[j, 0]), np.rad2deg(d[j, 1]), d[j, 2]])
    return np.asarray(out)


@pytest.mark.parametrize("d1", [2.0, 8.0, 32.0, 200.0])
@pytest.mark.parametrize("d2", [2.0, 10.0, 352.0, 5000.0])
def test_f_isf_matches_scipy_and_the_closed_forms(d1, d2):
    """The F inverse survival function against SciPy where SciPy's `1 - p` keeps its digits, and
    in the far tail against closed forms: `P(F(2, d2) > x) = (1 + 2 x / d2)^(-d2 / 2)`."""
    for p in (0.5, 0.1, 1e-2, 1e-4, 1.6e-7):
        assert f_isf(p, d1, d2) == pytest.approx(stats.f.isf(p, d1, d2), rel=1e-7)
    if d1 == 2.0:
        for p in (1e-10, 1e-14):
            assert f_isf(p, d1, d2) == pytest.approx(d2 / 2 * (p ** (-2 / d2) - 1), rel=1e-10)
    with pytest.raises(ValueError, match="p"):
        f_isf(0.0, d1, d2)
    with pytest.raises(ValueError, match="degrees"):
        f_isf(0.1, 0.0, d2)


def test_thresholds_match_scipy():
    cfg = CompressiveConfig(pfa=0.01, oversample=4.0)
    tau = f_thresholds(16, 16, 5, 1000, cfg)
    for k in range(1, 6):
        assert tau[k - 1] == pytest.approx(stats.f.isf(0.01 / 4000, 32, 2 * (16 - k) * 16))
    with pytest.raises(ValueError, match="n_meas"):
        f_thresholds(4, 16, 5, 1000, cfg)


@pytest.mark.parametrize("k", [1, 3])
def test_noise_free_recovery(k):
    cfg = get_scenario("seed", k_min=k, k_max=k, snr_db=(150.0, 150.0), dtype="complex128")
    scenes, _, det = _run(cfg, 6, seed=3)
    err = _matched_errors(scenes, det)
    assert np.all(np.asarray(det.valid).sum(1) == k), "K-free order must equal K without noise"
    assert np.max(err[:, 0]) <= NOISE_FREE_ANGLE_DEG
    assert np.max(err[:, 1]) <= NOISE_FREE_ANGLE_DEG
    assert np.max(err[:, 2]) <= NOISE_FREE_RANGE_M


@pytest.mark.slow  # 200 scenes of ML: about a minute on 2 cores (make test-slow)
def test_single_source_efficiency_10db():
    cfg = get_scenario("seed", k_min=1, k_max=1, snr_db=(10.0, 10.0))
    scenes, geometry, det = _run(cfg, 200, seed=11)
    crb = truth_crb(scenes, geometry)
    ev = evaluate_detections(scenes, det.phi, det.theta, det.r, det.valid, crb=crb)
    assert ev["recall"] >= 0.97
    assert ev["rmse_over_sqrt_crb_phi"] <= CRB_FACTOR
    assert ev["rmse_over_sqrt_crb_theta"] <= CRB_FACTOR
    near = np.asarray(scenes.r[:, 0]) <= 5.0
    sub = scenes[np.flatnonzero(near)]
    ev_near = evaluate_detections(sub, det.phi[near], det.theta[near], det.r[near], det.valid[near],
                                  crb=truth_crb(sub, geometry))
    assert ev_near["rmse_over_sqrt_crb_r"] <= CRB_FACTOR


@pytest.mark.slow  # 400 noise-only scenes: about 80 s on 2 cores (the default run keeps test_significance's
# false-alarm test and test_degenerate's zero-detection test on noise-only scenes for every method)
def test_false_alarm_rate_on_noise_only_scenes():
    # SNR -200 dB: the signal is 1e-20 of the noise, so the scenes are noise only.
    pfa = 0.01
    n = 300
    cfg = get_scenario("seed", snr_db=(-200.0, -200.0))
    _, _, det = _run(cfg, n, seed=5, method="somp", pfa=pfa)
    alarms = int(np.sum(np.asarray(det.valid).any(axis=1)))
    # Bonferroni makes the rule conservative: the count must not exceed what a rate of pfa
    # gives with probability 0.999.
    assert alarms <= stats.binom.ppf(0.999, n, pfa)
    _, _, det_ml = _run(cfg, 100, seed=6, method="somp-ml", pfa=pfa)
    assert int(np.sum(np.asarray(det_ml.valid).any(axis=1))) <= stats.binom.ppf(0.999, 100, pfa)


def test_batching_matches_one_at_a_time():
    """A batch of 4 gives the detections of 4 calls of one scene: the same sources, and positions
    within 2 % of their CRB std. The ML refinement runs in float32, and a batch rounds its
    reductions differently; on a flat direction of the likelihood (a far source's range) the
    optimum moves by float32 rounding divided by the curvature. Measured on the 2-core CPU VM:
    at most 0.0065 sqrt(CRB) (3e-4 relative in range, 1.1e-5 rad in azimuth, which an
    absolute float32 tolerance of 1e-5 rad had rejected), well below the estimator's own error."""
    cfg = get_scenario("seed", snr_db=(10.0, 10.0))
    scenes = simulate(cfg, 2, 4)
    geometry = scenario_geometry(cfg)
    st = settings_for_scenario(cfg)
    batch = localize("somp-ml", scenes, geometry, st.replace(batch_size=4), progress=False).detections
    crb = truth_crb(scenes, geometry)
    truth = [np.asarray(a) for a in (scenes.phi, scenes.theta, scenes.r, scenes.mask)]
    for i in range(4):
        one = localize("somp-ml", scenes[i:i + 1], geometry, st.replace(batch_size=1), progress=False).detections
        np.testing.assert_array_equal(one.valid[0], batch.valid[i])
        m = match_scene(batch.phi[i], batch.theta[i], batch.r[i], truth[0][i], truth[1][i], truth[2][i],
                        est_valid=batch.valid[i], gt_mask=truth[3][i])
        assert sorted(m.est_index.tolist()) == np.flatnonzero(batch.valid[i]).tolist()  # every detection paired
        for name in ("phi", "theta", "r"):
            d = np.abs(getattr(one, name)[0][m.est_index] - getattr(batch, name)[i][m.est_index])
            scale = np.asarray(getattr(crb, name))[i, m.gt_index]
            assert np.all(np.isfinite(scale)) and np.all(d <= 0.02 * scale), (name, i, d / scale)


def test_config_validation():
    with pytest.raises(ValueError, match="pfa"):
        CompressiveConfig(pfa=0.0).validate()
    with pytest.raises(ValueError, match="k_max"):
        CompressiveConfig(k_max=0).validate()
    with pytest.raises(ValueError, match="ml_xtol"):
        CompressiveConfig(ml_xtol=-1.0).validate()
    for bad in (0, 1.5, -2):
        with pytest.raises(ValueError, match="search_width"):
            CompressiveConfig(search_width=bad).validate()
    for bad in ((0.1,), (0.1, 0.0), (0.1, -0.1)):
        with pytest.raises(ValueError, match="search_gate"):
            CompressiveConfig(search_gate=bad).validate()


# --- early stopping of the Levenberg-Marquardt refinement and of the order re-test ---------------
# Agreement of the early-stopped refinement with the fixed-count one, well inside the detection gate
# (5 deg, 1 m): measured on 32 seed scenes of 3 sources started up to 2 deg and 20 % in 1/r off the
# truth, at most 0.022 deg and 0.06 m apart, costs within 1.2e-5 relative, 5.7 iterations of 10 on average.
EARLY_STOP_DEG, EARLY_STOP_M, EARLY_STOP_COST = 0.1, 0.2, 1e-4


def _perturbed_starts(n, seed):
    cfg = get_scenario("seed", k_min=3, k_max=3)
    scenes = simulate(cfg, seed, n)
    rng = np.random.default_rng(seed)
    start = (scenes.phi + np.deg2rad(rng.uniform(-2, 2, scenes.phi.shape)),
             scenes.theta + np.deg2rad(rng.uniform(-2, 2, scenes.phi.shape)),
             1.0 / (rng.uniform(0.8, 1.2, scenes.r.shape) / scenes.r))
    return cfg, scenes, tuple(jnp.asarray(x, jnp.float32) for x in start)


def test_early_stopped_ml_agrees_with_the_fixed_count():
    cfg, scenes, (p0, t0, r0) = _perturbed_starts(8, 5)
    geometry = scenario_geometry(cfg).astype(np.float32)
    grid = settings_for_scenario(cfg).dictionary_grid()
    l, n = scenes.y.shape[1], geometry.n_elements

    def run(ccfg):
        def one(y, h, c, a, b, r, m):
            return ml_refine_fit(y, scene_operators(h, c, l, n, y.dtype), geometry, grid, a, b, r, m, ccfg)
        return [np.asarray(x) for x in jax.jit(jax.vmap(one))(scenes.y, scenes.H, scenes.codes, p0, t0, r0,
                                                                scenes.mask)]

    base = CompressiveConfig()
    early, fixed = run(base), run(dataclasses.replace(base, ml_early_stop=False))
    m = np.asarray(scenes.mask)
    assert np.all(fixed[5] == base.ml_iters)
    assert np.all(early[5] <= base.ml_iters) and np.mean(early[5]) < base.ml_iters  # some scenes stop early
    assert np.max(np.rad2deg(np.abs(early[0] - fixed[0]))[m]) < EARLY_STOP_DEG
    assert np.max(np.rad2deg(np.abs(early[1] - fixed[1]))[m]) < EARLY_STOP_DEG
    assert np.max(np.abs(early[2] - fixed[2])[m]) < EARLY_STOP_M
    np.testing.assert_allclose(early[3], fixed[3], rtol=EARLY_STOP_COST)
    # the returned residual is that of the returned cost
    np.testing.assert_allclose(np.sum(np.abs(early[4]) ** 2, axis=(-2, -1)), early[3], rtol=1e-4)


def test_order_retest_matches_the_fixed_loop():
    """The while loop drops the same sources as a loop over every slot that recomputes the F
    statistics each time (the former kernel), and gives the same F statistics."""
    cfg, scenes, _ = _perturbed_starts(4, 6)
    geometry = scenario_geometry(cfg).astype(np.float32)
    l, n = scenes.y.shape[1], geometry.n_elements
    ccfg = CompressiveConfig()
    thr = jnp.asarray(f_thresholds(scenes.y.shape[2], l, 5, 2000, ccfg))
    rng = np.random.default_rng(0)
    # 3 true sources and 2 random spurious ones per scene
    extra = [np.deg2rad(rng.uniform(-50, 50, (4, 2))), np.deg2rad(rng.uniform(-25, 25, (4, 2))),
             rng.uniform(2.0, 9.0, (4, 2))]
    phi, theta, r = (jnp.asarray(np.concatenate([np.asarray(a), e], 1), jnp.float32)
                     for a, e in zip((scenes.phi, scenes.theta, scenes.r), extra))
    mask = jnp.ones((4, 5), bool)

    def fixed_loop(y, B, mask):
        def body(_, mask):
            f, order = source_fstats(y, B, mask)
            j = jnp.argmin(f)
            drop = (order > 0) & (f[j] <= thr[jnp.clip(order - 1, 0, 4)])
            return jnp.where(drop, mask & (jnp.arange(5) != j), mask)
        mask = jax.lax.fori_loop(0, 5, body, mask)
        return mask, jnp.where(mask, source_fstats(y, B, mask)[0], 0.0)

    def both(y, h, c, p, t, rr, m):
        B = apply_operators(scene_operators(h, c, l, n, y.dtype), steering(geometry, p, t, rr, dtype=y.dtype).T)
        return order_retest(y, B, m, thr, ccfg), fixed_loop(y, B, m)

    (mask_w, f_w), (mask_f, f_f) = jax.jit(jax.vmap(both))(scenes.y, scenes.H, scenes.codes, phi, theta, r, mask)
    np.testing.assert_array_equal(mask_w, mask_f)
    assert np.any(~np.asarray(mask_w))  # the test drops something
    np.testing.assert_allclose(f_w, f_f, rtol=1e-5)


# --- the bound methods -----------------------------------------------------------
ORACLE_NOISE_FREE_ANGLE_DEG = 0.01
ORACLE_NOISE_FREE_RANGE_M = 1e-3
ORACLE_CRB_FACTOR = 1.3


@pytest.mark.parametrize("k", [1, 4])
def test_ml_oracle_noise_free_returns_the_truth(k):
    cfg = get_scenario("seed", k_min=k, k_max=k, snr_db=(150.0, 150.0), dtype="complex128")
    scenes, _, det = _run(cfg, 4, seed=8, method="ml-oracle")
    assert np.all(np.asarray(det.valid).sum(1) == k), "ml-oracle reports exactly the true K"
    err = _matched_errors(scenes, det)
    assert np.max(err[:, 0]) <= ORACLE_NOISE_FREE_ANGLE_DEG
    assert np.max(err[:, 1]) <= ORACLE_NOISE_FREE_ANGLE_DEG
    assert np.max(err[:, 2]) <= ORACLE_NOISE_FREE_RANGE_M


def test_somp_ml_oracle_k_reports_the_true_order():
    cfg = get_scenario("seed", snr_db=(5.0, 5.0))
    scenes, _, det = _run(cfg, 6, seed=9, method="somp-ml-oracle-k")
    # The order is forced to K; only the gate NMS may merge two picks of one source.
    n_det = np.asarray(det.valid).sum(1)
    k_true = np.asarray(scenes.mask).sum(1)
    assert np.all(n_det <= k_true) and np.sum(n_det == k_true) >= 5


@pytest.mark.slow  # 150 scenes of ML: about a minute on 2 cores (make test-slow)
def test_ml_oracle_is_efficient_single_source():
    cfg = get_scenario("seed", k_min=1, k_max=1, snr_db=(10.0, 10.0), r_m=(0.5, 5.0))
    scenes, geometry, det = _run(cfg, 150, seed=12, method="ml-oracle")
    ev = evaluate_detections(scenes, det.phi, det.theta, det.r, det.valid, crb=truth_crb(scenes, geometry))
    assert ev["recall"] >= 0.99
    for p in ("phi", "theta", "r"):
        assert ev[f"rmse_over_sqrt_crb_{p}"] <= ORACLE_CRB_FACTOR, (p, ev[f"rmse_over_sqrt_crb_{p}"])


def _np_vp_residual(y, G, positions, wavelength, z, steps, mask):
    """float64 NumPy concentrated residual `[2 L M]` (per-snapshot least squares, no ridge)."""
    x = z * steps[None, :]
    a = ref_steering(positions, x[:, 0], x[:, 1], 1.0 / x[:, 2], wavelength=wavelength)[mask]  # [K', N]
    e = []
    for l in range(y.shape[0]):
        B = G[l % G.shape[0]] @ a.T
        s, *_ = np.linalg.lstsq(B, y[l], rcond=None)
        e.append(y[l] - B @ s)
    e = np.asarray(e)
    return np.concatenate([e.real.ravel(), e.imag.ravel()])


def _random_scene(full_array, seed=4, l=6, m=12):
    """A random RIS-mode (or full-array) scene of the seed surface: geometry, y, H, codes, G_l."""
    geometry = scenario_geometry(get_scenario("seed"))
    rng = np.random.default_rng(seed)
    n = geometry.positions.shape[0]
    if full_array:
        H = codes = None
        G = np.eye(n)[None]
        m = n
    else:
        H = (rng.normal(size=(m, n)) + 1j * rng.normal(size=(m, n))) / np.sqrt(2)
        codes = np.exp(1j * np.pi * rng.integers(0, 2, size=(l, n)))
        G = H[None] * codes[:, None, :]
    y = rng.normal(size=(l, m)) + 1j * rng.normal(size=(l, m))
    return geometry, y, H, codes, G


@pytest.mark.parametrize("full_array", [False, True])
@pytest.mark.parametrize("dtype, rtol", [("complex128", 1e-5), ("complex64", 2e-3)])
def test_vp_jacobian_matches_central_differences(full_array, dtype, rtol):
    cfg = get_scenario("seed")
    grid = settings_for_scenario(cfg).dictionary_grid(False)
    steps = grid.scaling()[0]
    geometry, y, H, codes, G = _random_scene(full_array)
    l, n = y.shape[0], geometry.positions.shape[0]
    x = np.array([[np.deg2rad(-20.0), np.deg2rad(5.0), 1 / 2.5], [np.deg2rad(10.0), np.deg2rad(-8.0), 1 / 6.0],
                  [np.deg2rad(30.0), np.deg2rad(12.0), 1 / 4.0]])
    z = x / steps[None, :]
    mask = np.array([True, True, False])
    real = np.float64 if dtype == "complex128" else np.float32
    E = scene_operators(None if H is None else jnp.asarray(H, dtype), None if codes is None else jnp.asarray(codes, dtype),
                        l, n, dtype)
    resid, jac = vp_residual_jacobian(jnp.asarray(y, dtype), E, geometry.astype(real), jnp.asarray(z, real),
                                      jnp.asarray(steps, real), jnp.asarray(mask))
    ref_r = _np_vp_residual(y, G, geometry.positions, geometry.wavelength, z, steps, mask)
    h = 1e-6
    ref_j = np.zeros((ref_r.size, z.size))
    for c in range(z.size):
        dz = np.zeros(z.size)
        dz[c] = h
        ref_j[:, c] = (_np_vp_residual(y, G, geometry.positions, geometry.wavelength, z + dz.reshape(z.shape), steps, mask)
                       - _np_vp_residual(y, G, geometry.positions, geometry.wavelength, z - dz.reshape(z.shape), steps,
                                         mask)) / (2 * h)
    np.testing.assert_allclose(np.asarray(resid), ref_r, atol=rtol * np.max(np.abs(ref_r)))
    np.testing.assert_allclose(np.asarray(jac), ref_j, atol=rtol * np.max(np.abs(ref_j)))
    assert np.all(np.asarray(jac)[:, 6:] == 0)  # the masked source's columns


@pytest.mark.parametrize("full_array", [False, True])
def test_range_scan_matches_brute_force(full_array):
    geometry, y, H, codes, G = _random_scene(full_array, seed=7, l=8, m=16)
    l, n = y.shape[0], geometry.positions.shape[0]
    pos, wl = np.asarray(geometry.positions), geometry.wavelength
    phi = np.deg2rad([-25.0, 8.0, 33.0])
    theta = np.deg2rad([4.0, -10.0, 15.0])
    r = np.array([1.5, 4.0, 7.0])
    mask = np.array([True, True, False])
    truth_u = 1 / 2.2  # source 0 really sits at 2.2 m: the data hold it plus noise
    a0 = ref_steering(pos, phi[0], theta[0], 1 / truth_u, wavelength=wl)
    y = y * 0.05 + np.stack([G[i % G.shape[0]] @ a0 for i in range(l)]) * (1.0 + 0.5j)
    inv_r = np.linspace(1 / 10.0, 1 / 0.5, 40)
    E = scene_operators(None if H is None else jnp.asarray(H), None if codes is None else jnp.asarray(codes), l, n,
                        jnp.complex128)
    got = np.asarray(range_scan(jnp.asarray(y), E, geometry, jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(r),
                                jnp.asarray(mask), jnp.asarray(inv_r)))
    a = ref_steering(pos, phi, theta, r, wavelength=wl)  # [K, N]
    for k in range(3):
        cost = []
        for u in inv_r:
            cols = [a[j] for j in range(3) if mask[j] and j != k] + [ref_steering(pos, phi[k], theta[k], 1 / u,
                                                                                   wavelength=wl)]
            rss = 0.0
            for i in range(l):
                B = G[i % G.shape[0]] @ np.stack(cols, -1)
                s_, *_ = np.linalg.lstsq(B, y[i], rcond=None)
                rss += np.sum(np.abs(y[i] - B @ s_) ** 2)
            cost.append(rss)
        cost = np.asarray(cost)
        j = int(np.clip(np.argmin(cost), 1, len(inv_r) - 2))
        c0, c1, c2 = cost[j - 1: j + 2]
        curv = c0 - 2 * c1 + c2
        off = 0.5 * (c0 - c2) / curv if curv > 0 else 0.0
        u_ref = inv_r[j] + np.clip(off, -1, 1) * (inv_r[1] - inv_r[0]) if np.argmin(cost) == j else inv_r[np.argmin(cost)]
        assert 1 / got[k] == pytest.approx(u_ref, rel=1e-6), k
    assert abs(1 / got[0] - truth_u) < inv_r[1] - inv_r[0]  # and the scan finds the source's range


@pytest.mark.parametrize("full_array", [False, True])
@pytest.mark.parametrize("dtype, rtol", [("complex128", 1e-10), ("complex64", 1e-4)])
def test_atom_operator_matches_a_float64_dictionary(full_array, dtype, rtol):
    """The operator form's atom norms, greedy scores and picked columns against the explicit
    dictionary `d_{l,g} = G_l a_g` built in NumPy float64."""
    geometry, y, H, codes, G = _random_scene(full_array, seed=11, l=5, m=10)
    l, n = y.shape[0], geometry.positions.shape[0]
    pos, wl = np.asarray(geometry.positions), geometry.wavelength
    rng = np.random.default_rng(3)
    phi, theta = rng.uniform(-1.0, 1.0, 40), rng.uniform(-0.5, 0.5, 40)
    r = rng.uniform(0.8, 8.0, 40)
    a = ref_steering(pos, phi, theta, r, wavelength=wl)  # [G, N]
    D = np.stack([G[i % G.shape[0]] @ a.T for i in range(l)])  # [L, M, G]
    norms_ref = np.sum(np.abs(D) ** 2, axis=1)
    resid = y * (1.0 - 0.3j)
    scores_ref = np.sum(np.abs(np.einsum("lmg,lm->lg", D.conj(), resid)) ** 2 / norms_ref, axis=0)
    E = scene_operators(None if H is None else jnp.asarray(H, dtype), None if codes is None else jnp.asarray(codes, dtype),
                        l, n, dtype)
    op = AtomOperator(E, jnp.asarray(a, dtype))
    norms = np.asarray(atom_norms(op))
    np.testing.assert_allclose(np.broadcast_to(norms, norms_ref.shape), norms_ref, rtol=rtol)
    got = np.asarray(atom_scores(op, atom_norms(op), jnp.asarray(resid, dtype)))
    np.testing.assert_allclose(got, scores_ref, rtol=rtol)
    # and the explicit dictionary of the same arrays gives the same scores
    explicit = dictionary(E, jnp.asarray(a, dtype))
    np.testing.assert_allclose(np.asarray(atom_scores(explicit, atom_norms(explicit), jnp.asarray(resid, dtype))),
                               scores_ref, rtol=rtol)


def _grid_coords(grid, dtype=None):
    """(phi, theta, r) `[G]` of the dictionary grid's points, flattened in the order of
    `grid_steering(...).reshape(-1, N)`: (theta, phi, plane)."""
    phi_g, th_g, r_g = grid.arrays()
    shape = grid.shape
    return tuple(jnp.asarray(np.broadcast_to(v, shape).reshape(-1), dtype)
                 for v in (phi_g[None, :, None], th_g[:, None, None], r_g[None, None, :]))


def test_somp_with_the_atom_operator_matches_the_explicit_dictionary():
    """`somp` and `somp_ml` on the operator form and on the explicit dictionary of one seed scene:
    the same picks, order and positions (float64, where rounding cannot flip a greedy pick)."""
    cfg = get_scenario("seed")
    settings = settings_for_scenario(cfg)
    grid = settings.dictionary_grid(False)
    geometry = scenario_geometry(cfg)
    scenes = simulate(dataclasses.replace(cfg, dtype="complex128"), jax.random.key(5), 1)
    y, H, codes = scenes.y[0], scenes.H[0], scenes.codes[0]
    l, n = y.shape[0], geometry.positions.shape[0]
    a_flat = grid_steering(geometry, grid, model="exact", dtype=jnp.complex128).reshape(-1, n)
    E = scene_operators(H, codes, l, n, y.dtype)
    coords = _grid_coords(grid)
    thr = f_thresholds(y.shape[1], l, 5, a_flat.shape[0], settings.compressive_config())
    ccfg = settings.compressive_config()
    out, picks = [], []
    for D in (AtomOperator(E, a_flat), dictionary(E, a_flat)):
        picks.append(jax.jit(lambda D: somp(y, D, atom_norms(D), thr, ccfg))(D))
        out.append(jax.jit(lambda D: somp_ml(y, E, D, atom_norms(D), coords, thr, geometry.astype(np.float64), grid,
                                             ccfg))(D))
    for u, v in zip(*picks):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-8, atol=1e-10)
    assert int(picks[0][1]) >= 1
    (p0, t0, r0, m0, o0, f0, s0), (p1, t1, r1, m1, o1, f1, s1) = out
    assert int(o0) == int(o1) >= 1
    np.testing.assert_array_equal(np.asarray(m0), np.asarray(m1))
    for u, v in ((p0, p1), (t0, t1), (r0, r1), (f0, f1), (s0, s1)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-8, atol=1e-10)


def test_greedy_steps_end_at_the_first_rejection():
    """`somp` and `somp_ml` stop at the first step that fails the F test: that step's statistic is
    at or below its threshold, the later ones are 0, and the order and sources are those of a run
    whose order is forced to `k_max` (every step taken) cut at the same order."""
    cfg = get_scenario("seed", k_min=2, k_max=2, snr_db=(15.0, 15.0))
    settings = settings_for_scenario(cfg)
    grid = settings.dictionary_grid(False)
    geometry = scenario_geometry(cfg)
    scenes = simulate(dataclasses.replace(cfg, dtype="complex128"), jax.random.key(11), 1)
    y, H, codes = scenes.y[0], scenes.H[0], scenes.codes[0]
    l, n = y.shape[0], geometry.positions.shape[0]
    a_flat = grid_steering(geometry, grid, model="exact", dtype=jnp.complex128).reshape(-1, n)
    E = scene_operators(H, codes, l, n, y.dtype)
    D = AtomOperator(E, a_flat)
    coords = _grid_coords(grid)
    ccfg = settings.compressive_config()
    k_max = ccfg.k_max
    thr = f_thresholds(y.shape[1], l, k_max, a_flat.shape[0], ccfg)
    geo = geometry.astype(np.float64)
    run = jax.jit(lambda order: somp_ml(y, E, D, atom_norms(D), coords, thr, geo, grid, ccfg, order=order))
    phi, theta, r, mask, order, f, _ = jax.jit(
        lambda: somp_ml(y, E, D, atom_norms(D), coords, thr, geo, grid, ccfg))()
    o = int(order)
    assert 1 <= o < k_max  # two strong sources: the run stops before k_max
    f = np.asarray(f)
    assert np.all(f[:o] > thr[:o]) and f[o] <= thr[o]
    np.testing.assert_array_equal(f[o + 1:], 0.0)
    *_, f_all, _ = run(k_max)
    np.testing.assert_allclose(f[: o + 1], np.asarray(f_all)[: o + 1], rtol=1e-8)
    assert np.all(np.asarray(f_all)[o + 1:] > 0)  # the forced run took every step
    p_o, t_o, r_o, m_o, *_ = run(o)
    np.testing.assert_array_equal(np.asarray(m_o), np.asarray(mask))
    for u, v in ((p_o, phi), (t_o, theta), (r_o, r)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10, atol=1e-12)
    idx, order_s, f_s, _ = jax.jit(lambda: somp(y, D, atom_norms(D), thr, ccfg))()
    o_s, f_s = int(order_s), np.asarray(f_s)
    assert o_s < k_max and f_s[o_s] <= thr[o_s]
    np.testing.assert_array_equal(f_s[o_s + 1:], 0.0)
    np.testing.assert_array_equal(np.asarray(idx)[o_s + 1:], 0)


def test_search_candidates_match_a_numpy_reference():
    """The greedy step's candidates: the highest score, then each next highest outside the angle
    gate of every candidate taken, against a float64 NumPy loop; every pair lies outside the gate."""
    rng = np.random.default_rng(4)
    phi = np.deg2rad(rng.uniform(-60, 60, 500))
    th = np.deg2rad(rng.uniform(-30, 30, 500))
    score = rng.gamma(2.0, size=500)
    score[7] = np.inf  # non-finite scores are never picked
    gate = (np.deg2rad(5.0), np.deg2rad(4.0))
    got = np.asarray(search_candidates(jnp.asarray(score), jnp.asarray(phi), jnp.asarray(th), 6, gate))
    s = np.where(np.isfinite(score), score, -np.inf)
    ref = []
    for _ in range(6):
        g = int(np.argmax(s))
        ref.append(g)
        s[(np.abs(phi - phi[g]) < gate[0]) & (np.abs(th - th[g]) < gate[1])] = -np.inf
    np.testing.assert_array_equal(got, ref)
    assert 7 not in got
    few = np.asarray(search_candidates(jnp.asarray(score[:3]), jnp.zeros(3), jnp.zeros(3), 4, gate))
    top = int(np.argmax(np.where(np.isfinite(score[:3]), score[:3], -np.inf)))
    np.testing.assert_array_equal(few, [top] * 4)  # every atom inside the first gate: the first again
    for i in range(6):
        for j in range(i):
            assert abs(phi[got[i]] - phi[got[j]]) >= gate[0] or abs(th[got[i]] - th[got[j]]) >= gate[1]


def test_a_wider_greedy_search_never_fits_worse_at_its_first_step():
    """`search_width` > 1: the first step keeps the best of its separated candidates, among them the
    highest atom that the single search takes, so its residual is at most the single search's; and
    the settings give the wider search to a fixed deployment channel only, with the detector's gate."""
    cfg = get_scenario("seed-los", k_min=3, k_max=3)
    settings = settings_for_scenario(cfg)
    ccfg = settings.compressive_config()
    assert ccfg.search_width > 1 and settings_for_scenario(get_scenario("seed")).compressive_config().search_width == 1
    assert ccfg.search_gate == (float(cfg.gates.phi), float(cfg.gates.theta))
    grid = settings.dictionary_grid(False)
    geometry = scenario_geometry(cfg)
    scenes = simulate(cfg, jax.random.key(3), 4)
    l, n = scenes.y.shape[1], geometry.positions.shape[0]
    a_flat = grid_steering(geometry, grid, model="exact", dtype=scenes.y.dtype).reshape(-1, n)
    coords = _grid_coords(grid, jnp.float32)
    thr = f_thresholds(scenes.y.shape[2], l, ccfg.k_max, a_flat.shape[0], ccfg)
    geo = geometry.astype(np.float32)

    @jax.jit
    def first_step_rss(y, H, c):
        E = scene_operators(H, c, l, n, y.dtype)
        D = AtomOperator(E, a_flat)
        out = []
        for width in (1, ccfg.search_width):
            cw = dataclasses.replace(ccfg, search_width=width)
            phi, theta, r, mask, *_ = somp_ml(y, E, D, atom_norms(D), coords, thr, geo, grid, cw, order=1)
            a = steering(geo, phi, theta, r, dtype=y.dtype)
            _, e = ls_fit(apply_operators(E, a.T), y, mask)
            out.append(jnp.sum(jnp.abs(e) ** 2))
        return jnp.stack(out)

    for i in range(4):
        single, wide = np.asarray(first_step_rss(scenes.y[i], scenes.H[i], scenes.codes[i]))
        assert wide <= single * (1 + 1e-5), (i, wide, single)
