"""Scene simulator (conventions sections 3-4): fields, realised SNR, ground truth, the measurement model,
reproducibility, the separation rule and config overrides.

References (steering, R_true, least-squares fits) are float64 NumPy written here from the conventions (docs/conventions.md).

Cost note: the simulator is jitted per (config, batch shape), and on CPU each compilation takes
several seconds (JAX's threefry PRNG kernels compile slowly, ~1 s per random draw, and a scene has
about a dozen). The seed scenario is simulated once with the default (threefry) key, the path
every user takes; the override configs use `unsafe_rbg` keys, which compile about twice as fast.
Every property checked here holds for any key implementation. The check that needs two extra
compilations (different batch sizes) is marked `slow`.
"""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import Scene, simulate, truth_covariance_from_sources

# One tolerance table, keyed by the scene dtype.
#   r_true: max |R_true - R_ref| / max |R_ref| against the float64 reference built from the truth
#   resid:  relative least-squares residual of y_l on H diag(c_l) A at SNR 200 dB
#   modulus: max | |c| - 1 | of the RIS codes
TOL = {
    np.complex64: dict(r_true=2e-5, resid=1e-4, modulus=1e-6),
    np.complex128: dict(r_true=1e-10, resid=1e-8, modulus=1e-13),
}

SEED = get_scenario("seed")
SEED_KEY = jax.random.key(20260301)  # default threefry
N_SEED = 48  # three batches of 16: P(some K in 1..5 missing) = 5 * 0.8^48 ~ 1e-4 for a new key
BATCH = 16


def fast_key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def ref_steering(positions, wavelength, phi, theta, r):
    """`[..., N]` exact steering `exp(-1j k (|u - p_n| - r))` in float64 (conventions section 2)."""
    phi, theta, r = (np.asarray(x, np.float64) for x in (phi, theta, r))
    uhat = np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)], -1)
    d = np.linalg.norm(r[..., None, None] * uhat[..., None, :] - positions, axis=-1)
    return np.exp(-1j * 2 * np.pi / wavelength * (d - r[..., None]))


def truth_steering(cfg, scenes, i):
    """Reference steering matrix `[K, N]` of scene i's real sources, and their powers `[K]`."""
    g = scenario_geometry(cfg)
    m = np.asarray(scenes.mask[i])
    a = ref_steering(
        np.asarray(g.positions), float(g.wavelength),
        np.asarray(scenes.phi[i])[m], np.asarray(scenes.theta[i])[m], np.asarray(scenes.r[i])[m],
    )
    return a, np.asarray(scenes.power[i], np.float64)[m]


def tree_equal(a: Scene, b: Scene) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


# ----------------------------------------------------------------------------------------------
# Fixtures: one simulation (one compilation) per config, shared by the module.


@pytest.fixture(scope="module")
def seed_scenes():
    return simulate(SEED, SEED_KEY, N_SEED, batch_size=BATCH)


# One override config covers many fields (one compilation). Its box is crowded on purpose:
# without the separation rule about 17 % of source pairs would fall inside each other's gate.
OVERRIDES = dict(
    k_min=3, k_max=3, snr_db=(200.0, 200.0), n_bs=8, n_snapshots=12, codebook="dft",
    dtype="complex128", phi_deg=(-10.0, 10.0), theta_deg=(-8.0, 8.0), r_m=(1.0, 3.0),
)


@pytest.fixture(scope="module")
def override_cfg_scenes():
    cfg = get_scenario("seed", **OVERRIDES)
    return cfg, simulate(cfg, fast_key(7), 16, batch_size=8)


@pytest.fixture(scope="module")
def full_cfg_scenes():
    cfg = get_scenario("full", snr_db=(10.0, 10.0))
    return cfg, simulate(cfg, fast_key(11), 16, batch_size=8)


@pytest.fixture(scope="module")
def ula_cfg_scenes():
    cfg = get_scenario("seed", array="ula")
    return cfg, simulate(cfg, fast_key(13), 16, batch_size=16)


# ----------------------------------------------------------------------------------------------
# Seed scenario: fields, truth, R_true, SNR, measurement model, reproducibility


def test_seed_fields_shapes_and_dtypes(seed_scenes):
    s, n, m, l, k = N_SEED, 144, 16, 16, 5
    sc = seed_scenes
    assert len(sc) == s and not sc.full_array
    chex.assert_shape(sc.y, (s, l, m))
    chex.assert_shape(sc.H, (s, m, n))
    chex.assert_shape(sc.codes, (s, l, n))
    chex.assert_shape([sc.noise_var, sc.snr_db], (s,))
    chex.assert_shape([sc.phi, sc.theta, sc.r, sc.power, sc.mask], (s, k))
    chex.assert_shape(sc.R_true, (s, n, n))
    for a in (sc.y, sc.H, sc.codes, sc.R_true):
        assert a.dtype == jnp.complex64
    for a in (sc.noise_var, sc.snr_db, sc.phi, sc.theta, sc.r, sc.power):
        assert a.dtype == jnp.float32
    assert sc.mask.dtype == jnp.bool_
    for a in jax.tree_util.tree_leaves(sc):
        assert np.all(np.isfinite(np.asarray(a)))
    assert np.max(np.abs(np.abs(np.asarray(sc.codes)) - 1)) < TOL[np.complex64]["modulus"]
    assert np.all(np.asarray(sc.noise_var) > 0)
    assert np.all(np.asarray(sc.power)[~np.asarray(sc.mask)] == 0)  # padding carries no power
    # H entries CN(0, 1/N): 48 * 16 * 144 draws, E|h|^2 = 1/144 to about 0.5 %.
    assert np.mean(np.abs(np.asarray(sc.H)) ** 2) * n == pytest.approx(1.0, rel=0.03)


def test_seed_truth_in_box_and_K_distribution(seed_scenes):
    sc = seed_scenes
    mask = np.asarray(sc.mask)
    k = mask.sum(-1)
    assert set(k.tolist()) == {1, 2, 3, 4, 5}
    deg = np.rad2deg
    phi, theta = deg(np.asarray(sc.phi, np.float64))[mask], deg(np.asarray(sc.theta, np.float64))[mask]
    r, p = np.asarray(sc.r, np.float64)[mask], np.asarray(sc.power, np.float64)[mask]
    eps = 1e-4  # float32 rounding of the box edges
    assert np.all((phi >= -60 - eps) & (phi <= 60 + eps))
    assert np.all((theta >= -30 - eps) & (theta <= 30 + eps))
    assert np.all((r >= 0.5 - eps) & (r <= 10 + eps))
    p_db = 10 * np.log10(p)
    assert np.all((p_db >= -6 - eps) & (p_db <= 0 + eps))
    snr = np.asarray(sc.snr_db)
    assert np.all((snr >= -5 - eps) & (snr <= 20 + eps))
    assert np.ptp(phi) > 60 and np.ptp(theta) > 30 and np.ptp(r) > 5 and np.ptp(snr) > 12  # spread


def check_separation(cfg, scenes):
    """conventions section 4/7: no two sources inside each other's detection gate (5 deg, 5 deg, 1 m)."""
    g_phi, g_th = np.deg2rad(cfg.gate_phi_deg), np.deg2rad(cfg.gate_theta_deg)
    for i in range(len(scenes)):
        m = np.asarray(scenes.mask[i])
        phi, th, r = (np.asarray(x[i], np.float64)[m] for x in (scenes.phi, scenes.theta, scenes.r))
        for a in range(len(phi)):
            for b in range(a + 1, len(phi)):
                inside = (
                    abs(phi[a] - phi[b]) <= g_phi
                    and abs(th[a] - th[b]) <= g_th
                    and abs(r[a] - r[b]) <= cfg.gate_r_m
                )
                assert not inside, (i, a, b)


def test_seed_separation_rule(seed_scenes):
    check_separation(SEED, seed_scenes)


def check_r_true(cfg, scenes):
    tol = TOL[np.dtype(cfg.dtype).type]["r_true"]
    for i in range(len(scenes)):
        a, p = truth_steering(cfg, scenes, i)
        r_ref = (a.T * p) @ a.conj()  # A diag(p) A^H with A = a.T  [N, K]
        r_lib = np.asarray(scenes.R_true[i])
        assert np.max(np.abs(r_lib - r_ref)) <= tol * np.max(np.abs(r_ref)), i
        assert np.real(np.trace(r_lib)) == pytest.approx(cfg.n_elements * p.sum(), rel=10 * tol)


def test_seed_r_true_matches_reference(seed_scenes):
    check_r_true(SEED, seed_scenes)


def test_truth_covariance_from_sources_matches_the_reference(seed_scenes):
    """`R_true` rebuilt from the truth alone (as for a scene file read back) is the reference
    `A diag(p) A^H`; without sources it is zero."""
    g, sc = scenario_geometry(SEED), seed_scenes[:4]
    truth = [np.asarray(a, np.float32) for a in (sc.phi, sc.theta, sc.r, sc.power)]
    r_true = truth_covariance_from_sources(g, *truth, model=SEED.steering_model)
    chex.assert_shape(r_true, (4, SEED.n_elements, SEED.n_elements))
    assert r_true.dtype == jnp.complex64
    check_r_true(SEED, dataclasses.replace(sc, R_true=r_true))
    none = np.zeros((2, 0), np.float32)
    empty = truth_covariance_from_sources(g, none, none, none, none, model=SEED.steering_model)
    chex.assert_shape(empty, (2, SEED.n_elements, SEED.n_elements))
    assert empty.dtype == jnp.complex64 and not np.any(np.asarray(empty))

def snr_ratios(scenes):
    """Per scene `(mean|y|^2 / sigma^2 - 1) / 10^(SNR/10)` and its standard deviation.

    With y = c + n, n ~ CN(0, sigma^2), T = L*M entries and SNR = mean|c|^2 / sigma^2 (the conventions
    definition): mean|y|^2 / sigma^2 = SNR + mean|n|^2/sigma^2 + 2 Re<c, n>/(T sigma^2), whose
    noise terms have mean 1 and variances 1/T and 2 SNR/T. So the ratio has mean 1 and variance
    (1 + 2 SNR) / (T SNR^2).
    """
    y = np.asarray(scenes.y, np.complex128)
    t = y.shape[-1] * y.shape[-2]
    snr = 10 ** (np.asarray(scenes.snr_db, np.float64) / 10)
    sigma2 = np.asarray(scenes.noise_var, np.float64)
    ratio = (np.mean(np.abs(y) ** 2, axis=(-1, -2)) / sigma2 - 1) / snr
    return ratio, np.sqrt((1 + 2 * snr) / (t * snr**2))


def test_seed_realised_snr_matches_request(seed_scenes):
    ratio, sd = snr_ratios(seed_scenes)
    z = (ratio - 1) / sd
    assert np.all(np.abs(z) < 5), z  # each scene
    assert abs(z.sum() / np.sqrt(len(z))) < 4  # and all together
    # A misread SNR (amplitude 10^(snr/10), power in dB of amplitude, ...) moves the ratio by
    # factors, far beyond these limits; the SNR range includes scenes at -5 dB.


def test_seed_noise_lies_outside_the_signal_subspace(seed_scenes):
    # RIS mode: y_l = B_l s_l + n_l with B_l = H diag(c_l) A (M x K, K <= 5 < M = 16). Projected
    # off span(B_l) only noise is left: E|P_perp y_l|^2 = (M - K) sigma^2. This checks the
    # measurement model and noise_var together at the scenario's own (noisy) SNRs. Per scene
    # the estimate has L (M - K) >= 176 exponential terms (sd <= 7.5 %).
    sc = seed_scenes
    ratios, sds = [], []
    for i in range(N_SEED):
        a, _ = truth_steering(SEED, sc, i)
        h = np.asarray(sc.H[i], np.complex128)
        c = np.asarray(sc.codes[i], np.complex128)
        y = np.asarray(sc.y[i], np.complex128)
        k, (l, m) = len(a), y.shape
        res = 0.0
        for j in range(l):
            b = h @ (c[j][:, None] * a.T)  # [M, K]
            q, _ = np.linalg.qr(b)
            res += np.sum(np.abs(y[j] - q @ (q.conj().T @ y[j])) ** 2)
        ratios.append(res / (l * (m - k) * float(sc.noise_var[i])))
        sds.append(1 / np.sqrt(l * (m - k)))
    z = (np.array(ratios) - 1) / np.array(sds)
    assert np.all(np.abs(z) < 5), z
    assert abs(z.sum() / np.sqrt(len(z))) < 4


def test_seed_reproducible_and_key_dependent(seed_scenes):
    again = simulate(SEED, SEED_KEY, BATCH, batch_size=BATCH)  # same compiled shape
    assert tree_equal(again, seed_scenes[:BATCH])
    other = simulate(SEED, jax.random.key(1), BATCH, batch_size=BATCH)
    assert not np.any(np.isclose(np.asarray(other.y)[:, 0, 0], np.asarray(again.y)[:, 0, 0]))
    assert not np.array_equal(np.asarray(other.phi), np.asarray(again.phi))
    # An int seed means jax.random.key(seed).
    assert tree_equal(simulate(SEED, 20260301, BATCH, batch_size=BATCH), again)


def test_seed_scene_depends_only_on_key_and_index(seed_scenes):
    # Scenes 5..20 simulated as one batch (positions 0..15) equal the same scenes simulated at
    # positions 5..15 of batch 0 and 0..4 of batch 1: `start` offsets agree and a scene does
    # not depend on its neighbours in the batch.
    shifted = simulate(SEED, SEED_KEY, BATCH, batch_size=BATCH, start=5)
    assert tree_equal(shifted, seed_scenes[5 : 5 + BATCH])
    # Distinct scenes: no two scenes in the set share their draws.
    y0 = np.asarray(seed_scenes.y)[:, 0, 0]
    assert len(np.unique(y0)) == N_SEED


@pytest.mark.slow
def test_seed_scene_does_not_depend_on_batch_size():
    small = simulate(SEED, SEED_KEY, 10, batch_size=3)
    whole = simulate(SEED, SEED_KEY, 10, batch_size=10)
    for x, y in zip(jax.tree_util.tree_leaves(small), jax.tree_util.tree_leaves(whole)):
        if np.issubdtype(np.asarray(x).dtype, np.inexact):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(small.phi), np.asarray(whole.phi))
    np.testing.assert_array_equal(np.asarray(small.mask), np.asarray(whole.mask))


# ----------------------------------------------------------------------------------------------
# Overrides: fixed K, fixed SNR, M, L, DFT codebook, complex128


def test_overrides_fields(override_cfg_scenes):
    cfg, sc = override_cfg_scenes
    s, n, m, l = 16, 144, 8, 12
    chex.assert_shape(sc.y, (s, l, m))
    chex.assert_shape(sc.H, (s, m, n))
    chex.assert_shape(sc.codes, (s, l, n))
    chex.assert_shape([sc.phi, sc.theta, sc.r, sc.power, sc.mask], (s, 3))
    chex.assert_shape(sc.R_true, (s, n, n))
    for a in (sc.y, sc.H, sc.codes, sc.R_true):
        assert a.dtype == jnp.complex128
    for a in (sc.noise_var, sc.phi, sc.r, sc.power):
        assert a.dtype == jnp.float64
    assert np.all(np.asarray(sc.mask))  # K = 3 in every scene
    np.testing.assert_array_equal(np.asarray(sc.snr_db), 200.0)
    eps = 1e-9
    assert np.all(np.abs(np.rad2deg(np.asarray(sc.phi))) <= 10 + eps)
    assert np.all(np.abs(np.rad2deg(np.asarray(sc.theta))) <= 8 + eps)
    assert np.all((np.asarray(sc.r) >= 1 - eps) & (np.asarray(sc.r) <= 3 + eps))
    check_separation(cfg, sc)  # 48 pairs in a crowded box: the rule is exercised here
    check_r_true(cfg, sc)


def test_dft_codebook(override_cfg_scenes):
    # Each code is a 2-D DFT beam: c[v*nh + h] = exp(j 2 pi (h bh/nh + v bv/nv)), so the 2-D DFT
    # of the code on the [nv, nh] grid has one bin of magnitude N and zeros elsewhere.
    cfg, sc = override_cfg_scenes
    codes = np.asarray(sc.codes)
    assert np.max(np.abs(np.abs(codes) - 1)) < TOL[np.complex128]["modulus"]
    n = cfg.nh * cfg.nv
    spec = np.abs(np.fft.fft2(codes.reshape(*codes.shape[:2], cfg.nv, cfg.nh), axes=(-2, -1)))
    flat = spec.reshape(*codes.shape[:2], n)
    peak = np.argmax(flat, axis=-1)
    np.testing.assert_allclose(np.max(flat, axis=-1), n, rtol=1e-9)
    np.testing.assert_allclose(np.sort(flat, axis=-1)[..., :-1], 0, atol=1e-8)
    for i in range(len(sc)):
        assert len(set(peak[i].tolist())) == cfg.n_snapshots  # distinct beams within a scene


def test_measurement_model_reproducible_from_returned_fields(override_cfg_scenes):
    # LESSONS "interface bug": the data must be explainable by G_l = H diag(c_l) (full H and the
    # code per element), not by the collapsed channel H c_l. At 200 dB SNR, y_l lies in the span
    # of B_l = H diag(c_l) A (M = 8 > K = 3) up to rounding.
    cfg, sc = override_cfg_scenes
    tol = TOL[np.complex128]["resid"]

    def rel_residual(b, y):
        x, *_ = np.linalg.lstsq(b, y, rcond=None)
        return np.linalg.norm(y - b @ x) / np.linalg.norm(y)

    for i in range(len(sc)):
        a, _ = truth_steering(cfg, sc, i)
        h, c, y = (np.asarray(x[i]) for x in (sc.H, sc.codes, sc.y))
        for j in range(cfg.n_snapshots):
            assert rel_residual(h @ (c[j][:, None] * a.T), y[j]) < tol
            # Negative controls: the wrong code, or the collapsed channel H c_l, explain nothing.
            assert rel_residual(h @ (c[(j + 1) % cfg.n_snapshots][:, None] * a.T), y[j]) > 0.05
            assert rel_residual((h @ c[j])[:, None], y[j]) > 0.05


# ----------------------------------------------------------------------------------------------
# Full-array mode and a linear array


def test_full_array_mode(full_cfg_scenes):
    assert get_scenario("full").mode == "full" and get_scenario("full").n_snapshots == 64
    assert get_scenario("full").n_measurements == 144
    cfg, sc = full_cfg_scenes
    assert sc.full_array and sc.H is None and sc.codes is None
    chex.assert_shape(sc.y, (16, 64, 144))
    chex.assert_shape(sc.R_true, (16, 144, 144))
    assert sc.y.dtype == jnp.complex64
    ratio, sd = snr_ratios(sc)  # T = 64 * 144: sd 0.5 % per scene
    assert np.all(np.abs(ratio - 1) < 5 * sd)
    assert abs(np.mean(ratio) - 1) < 0.02
    # y_l = A s_l + n_l: off span(A) only noise remains, E|P_perp y_l|^2 = (N - K) sigma^2.
    for i in range(len(sc)):
        a, _ = truth_steering(cfg, sc, i)
        q, _ = np.linalg.qr(a.T)
        y = np.asarray(sc.y[i], np.complex128).T  # [N, L]
        res = np.sum(np.abs(y - q @ (q.conj().T @ y)) ** 2)
        dof = y.shape[1] * (144 - len(a))
        assert res / (dof * float(sc.noise_var[i])) == pytest.approx(1.0, abs=5 / np.sqrt(dof))
    check_r_true(cfg, sc)


def test_ula_has_zero_elevation(ula_cfg_scenes):
    cfg, sc = ula_cfg_scenes
    assert cfg.is_linear and cfg.theta_deg == (0.0, 0.0) and cfg.n_elements == 12
    np.testing.assert_array_equal(np.asarray(sc.theta), 0.0)
    chex.assert_shape(sc.y, (16, 16, 16))
    chex.assert_shape(sc.H, (16, 16, 12))
    chex.assert_shape(sc.R_true, (16, 12, 12))
    check_r_true(cfg, sc)


# ----------------------------------------------------------------------------------------------
# Errors


def test_too_tight_box_names_n_candidates():
    cfg = get_scenario("seed", k_min=2, k_max=2, phi_deg=(0.0, 2.0), theta_deg=(0.0, 2.0), r_m=(1.0, 1.5))
    with pytest.raises(ValueError, match=r"^n_candidates:"):
        simulate(cfg, fast_key(0), 2, batch_size=2)


@pytest.mark.parametrize(
    "name, overrides, field",
    [
        ("seed", dict(k_min=4, k_max=2), "k_min"),
        ("seed", dict(k_min=0), "k_min"),
        ("seed", dict(r_m=(0.0, 10.0)), "r_m"),
        ("seed", dict(r_m=(5.0, 1.0)), "r_m"),
        ("seed", dict(snr_db=(20.0, -5.0)), "snr_db"),
        ("seed", dict(mode="x"), "mode"),
        ("seed", dict(n_bs=0), "n_bs"),
        ("seed", dict(n_snapshots=0), "n_snapshots"),
        ("seed", dict(dtype="float32"), "dtype"),
        ("seed", dict(array="ula", codebook="dft"), "codebook"),
        ("seed", dict(array="ula", theta_deg=(-10.0, 10.0)), "theta_deg"),
        ("seed", dict(spacing_h=0.0), "spacing_h"),
        ("seed", dict(k_max=6, n_candidates=5), "n_candidates"),
        ("nope", {}, "scenario"),
    ],
)
def test_bad_overrides_name_the_field(name, overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        get_scenario(name, **overrides)


def test_simulate_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"^n_scenes:"):
        simulate(SEED, fast_key(0), 0)
    with pytest.raises(ValueError, match=r"^batch_size:"):
        simulate(SEED, fast_key(0), 4, batch_size=0)
