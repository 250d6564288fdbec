"""Model-order estimation (MDL / AIC, Wax and Kailath 1985) against a direct NumPy reference,
and on the sample covariance of a full-array scene with a known number of sources."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.physics.geometry import ula
from rismvdr.physics.order import estimate_order, information_criteria
from rismvdr.physics.steering import steering

# One tolerance table per dtype: relative error of MDL/AIC against the float64 reference.
RTOL = {np.float64: 1e-10, np.float32: 2e-4}


def wax_kailath(eigvals, n_snapshots):
    """Direct float64 transcription of Wax & Kailath (1985), one eigenvalue set `[p]`."""
    lam = np.sort(np.asarray(eigvals, np.float64))[::-1]
    p, L = lam.size, n_snapshots
    mdl, aic = np.empty(p), np.empty(p)
    for k in range(p):
        noise = lam[k:]
        g = np.exp(np.mean(np.log(noise)))
        a = np.mean(noise)
        ll = -L * (p - k) * np.log(g / a)
        free = k * (2 * p - k)
        mdl[k] = ll + 0.5 * free * np.log(L)
        aic[k] = 2 * ll + 2 * free
    return mdl, aic


def random_eigvals(rng, p, n_signal, spread):
    """Noise eigenvalues near 1 plus `n_signal` large ones, in random order."""
    noise = 1.0 + spread * rng.standard_normal(p - n_signal) ** 2
    signal = 10.0 ** rng.uniform(0.5, 3.0, n_signal)
    return rng.permutation(np.concatenate([signal, noise]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [2, 7, 16])
def test_criteria_match_reference_on_random_sets(dtype, p):
    rng = np.random.default_rng(p)
    for L in (p, 37, 400):
        lam = np.stack([random_eigvals(rng, p, k, spread=s)
                        for k in range(p) for s in (0.01, 0.5)])  # [2p, p], every true order
        mdl, aic = information_criteria(jnp.asarray(lam, dtype), L)
        for i, row in enumerate(lam.astype(dtype)):
            ref_mdl, ref_aic = wax_kailath(row, L)
            scale = np.max(np.abs(ref_aic)) + 1.0
            np.testing.assert_allclose(np.asarray(mdl[i]), ref_mdl, rtol=0, atol=RTOL[dtype] * scale)
            np.testing.assert_allclose(np.asarray(aic[i]), ref_aic, rtol=0, atol=RTOL[dtype] * scale)
            if dtype is np.float64:
                assert int(np.argmin(mdl[i])) == int(np.argmin(ref_mdl))
                assert int(np.argmin(aic[i])) == int(np.argmin(ref_aic))
        if dtype is np.float64:
            np.testing.assert_array_equal(estimate_order(lam, L, criterion="mdl"), np.argmin(mdl, -1))
            np.testing.assert_array_equal(estimate_order(lam, L, criterion="aic"), np.argmin(aic, -1))


def test_batched_input_matches_per_set():
    rng = np.random.default_rng(1)
    p, L = 12, 50
    lam = np.stack([random_eigvals(rng, p, k, 0.1) for k in (0, 1, 3, 5, 7, 11)])  # [6, p]
    lam = lam.reshape(2, 3, p)  # two batch axes
    mdl, aic = information_criteria(lam, L)
    assert mdl.shape == aic.shape == (2, 3, p)
    for idx in np.ndindex(2, 3):
        ref_mdl, ref_aic = wax_kailath(lam[idx], L)
        np.testing.assert_allclose(np.asarray(mdl[idx]), ref_mdl, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(np.asarray(aic[idx]), ref_aic, rtol=1e-10, atol=1e-8)
    k = estimate_order(lam, L)
    assert k.shape == (2, 3) and k.dtype == jnp.int32
    jitted = jax.jit(lambda x: estimate_order(x, L, criterion="aic"))(lam)
    np.testing.assert_array_equal(jitted, estimate_order(lam, L, criterion="aic"))


def ula_sample_covariance(rng, n=16, k=2, snr_db=20.0, L=200, angles_deg=(-20.0, 25.0), r=(3.0, 6.0)):
    """Sample covariance of a full-array ULA scene: K sources at `snr_db` each, unit noise."""
    geo = ula(n, 0.15, wavelength=0.3)
    a = np.asarray(steering(geo, np.deg2rad(np.asarray(angles_deg[:k])), np.zeros(k), np.asarray(r[:k]),
                            dtype=jnp.complex128))  # [K, N]
    p = 10.0 ** (snr_db / 10.0)
    s = np.sqrt(p / 2) * (rng.standard_normal((L, k)) + 1j * rng.standard_normal((L, k)))
    noise = np.sqrt(0.5) * (rng.standard_normal((L, n)) + 1j * rng.standard_normal((L, n)))
    y = s @ a + noise  # [L, N]
    return y.T @ y.conj() / L


def test_mdl_and_aic_pick_two_sources_on_a_ula_sample_covariance():
    rng = np.random.default_rng(2)
    for trial in range(5):
        R = ula_sample_covariance(rng)
        lam = np.linalg.eigvalsh(R)
        assert int(estimate_order(lam, 200, criterion="mdl")) == 2, trial
        assert int(estimate_order(lam, 200, criterion="aic")) == 2, trial
    # noise only: MDL says zero sources
    R = ula_sample_covariance(rng, k=2, snr_db=-200.0)
    assert int(estimate_order(np.linalg.eigvalsh(R), 200, criterion="mdl")) == 0


def test_max_order_caps_the_estimate():
    rng = np.random.default_rng(3)
    lam = random_eigvals(rng, 16, 6, 0.05)
    assert int(estimate_order(lam, 500)) == 6
    assert int(estimate_order(lam, 500, max_order=3)) == 3
    assert int(estimate_order(lam, 500, max_order=10)) == 6


def test_rounding_negatives_are_clipped():
    lam = np.array([50.0, 1.0, 1.01, 0.99, -1e-12])  # a tiny negative from eigvalsh rounding
    mdl, aic = information_criteria(lam, 100)
    assert np.all(np.isfinite(np.asarray(mdl))) and np.all(np.isfinite(np.asarray(aic)))


def test_invalid_criterion_raises():
    with pytest.raises(ValueError, match="criterion"):
        estimate_order(np.ones(4), 10, criterion="bic")
