"""Covariance estimators (conventions section 5) against independent float64 NumPy references.

References below are written from the formulas with explicit per-snapshot loops, explicit
`G_l = H diag(c_l)` matrices, `np.linalg.solve` and `np.kron`; they never call rismvdr code.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.physics import get_scenario, simulate
from rismvdr.physics.covariance import (
    COVARIANCE_METHODS,
    CovEstimate,
    als_covariance,
    als_fit,
    estimate_covariance,
    matched_filter_covariance,
    ridge_ls_covariance,
    sample_covariance,
    trace_normalize,
)

# One tolerance per dtype (relative to max |R_ref|), for every estimator: never relaxed per test.
RTOL = {np.dtype(np.complex64): 1e-4, np.dtype(np.complex128): 1e-10}
DTYPES = ("complex64", "complex128")
LAM = 1e-2


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ris_scenes():
    """Seed scenario (N=144, M=16, L=16), 3 scenes per dtype."""
    return {
        dt: simulate(get_scenario("seed", dtype=dt), jax.random.key(11), 3) for dt in DTYPES
    }


@pytest.fixture(scope="module")
def full_scenes():
    """Full-array mode on a 6 x 6 surface (N=36), L=24, 3 scenes per dtype."""
    return {
        dt: simulate(
            get_scenario("full", nh=6, nv=6, n_snapshots=24, dtype=dt), jax.random.key(12), 3
        )
        for dt in DTYPES
    }


def _np(x):
    return None if x is None else np.asarray(x, np.complex128)


# ---------------------------------------------------------------------------------------------
# Independent NumPy references (float64)
# ---------------------------------------------------------------------------------------------


def ref_normalize(r):
    r = 0.5 * (r + r.conj().T)
    return r * (r.shape[0] / np.trace(r).real)


def ref_g(h, codes, l):
    return h @ np.diag(codes[l])


def ref_sample(y):
    y = _np(y)
    r = sum(np.outer(v, v.conj()) for v in y) / y.shape[0]
    return ref_normalize(r)


def ref_matched_filter(y, h, codes):
    y, h, codes = _np(y), _np(h), _np(codes)
    r = 0
    for l in range(y.shape[0]):
        x = ref_g(h, codes, l).conj().T @ y[l]
        r = r + np.outer(x, x.conj()) / y.shape[0]
    return ref_normalize(r)


def ref_ridge(y, h, codes, lam):
    y, h, codes = _np(y), _np(h), _np(codes)
    m = y.shape[1]
    r = 0
    for l in range(y.shape[0]):
        g = ref_g(h, codes, l)
        a = g @ g.conj().T
        mu = lam * np.trace(a).real / m
        x = g.conj().T @ np.linalg.solve(a + mu * np.eye(m), y[l])
        r = r + np.outer(x, x.conj()) / y.shape[0]
    return ref_normalize(r)


def ref_als(y, h, codes, *, rank, n_iter, lam):
    """ALS exactly as documented in `als_fit`, primal (kron) F-step, N x N eigh initialisation.

    Returns (R, objective history).
    """
    y = _np(y)
    n_l, m = y.shape
    gs = (
        [np.eye(m, dtype=np.complex128)] * n_l
        if h is None
        else [ref_g(_np(h), _np(codes), l) for l in range(n_l)]
    )
    n = gs[0].shape[1]
    y = y / np.sqrt(np.mean(np.abs(y) ** 2))
    gain = np.sqrt(np.mean([np.linalg.norm(g) ** 2 for g in gs]) / m)
    gs = [g / gain for g in gs]
    xmf = np.stack([g.conj().T @ v for g, v in zip(gs, y)])  # [L, N]
    _, u = np.linalg.eigh(xmf.T @ xmf.conj() / n_l)
    f = u[:, ::-1][:, :rank]
    energy = np.sum(np.abs(y) ** 2)

    def objective(f, z):
        mis = sum(np.linalg.norm(v - g @ f @ zl) ** 2 for g, v, zl in zip(gs, y, z))
        return (mis + lam * (np.linalg.norm(f) ** 2 + np.linalg.norm(z) ** 2)) / energy

    hist = []
    for _ in range(n_iter):
        z = []
        for g, v in zip(gs, y):
            b = g @ f
            z.append(np.linalg.solve(b.conj().T @ b + lam * np.eye(rank), b.conj().T @ v))
        z = np.array(z)
        hist.append(objective(f, z))
        normal = lam * np.eye(n * rank, dtype=np.complex128)
        rhs = np.zeros(n * rank, np.complex128)
        for g, v, zl in zip(gs, y, z):
            normal += np.kron(np.outer(zl.conj(), zl), g.conj().T @ g)
            rhs += np.kron(zl.conj(), g.conj().T @ v)
        f = np.linalg.solve(normal, rhs).reshape(rank, n).T  # column-major vec(F)
        hist.append(objective(f, z))
    c = sum(np.outer(zl, zl.conj()) for zl in z) / n_l
    return ref_normalize(f @ c @ f.conj().T), np.array(hist)


def assert_close(actual, ref, dtype):
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype)
    err = np.max(np.abs(actual.astype(np.complex128) - ref)) / np.max(np.abs(ref))
    assert err <= RTOL[np.dtype(dtype)], f"relative error {err:.3g} > {RTOL[np.dtype(dtype)]}"


def subspace_overlap(r_true, r_est, k):
    """||U_true^H U_est||_F^2 / k for the top-k eigenvectors."""
    _, ut = np.linalg.eigh(np.asarray(r_true, np.complex128))
    _, ue = np.linalg.eigh(np.asarray(r_est, np.complex128))
    return np.sum(np.abs(ut[:, -k:].conj().T @ ue[:, -k:]) ** 2) / k


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_matches_numpy(full_scenes, dtype):
    s = full_scenes[dtype][0]
    assert_close(sample_covariance(s.y).R, ref_sample(s.y), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matched_filter_matches_numpy(ris_scenes, dtype):
    s = ris_scenes[dtype][0]
    est = matched_filter_covariance(s.y, s.H, s.codes)
    assert_close(est.R, ref_matched_filter(s.y, s.H, s.codes), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ridge_ls_matches_numpy(ris_scenes, dtype):
    s = ris_scenes[dtype][1]
    est = ridge_ls_covariance(s.y, s.H, s.codes, lam=LAM)
    assert_close(est.R, ref_ridge(s.y, s.H, s.codes, LAM), dtype)


def test_ridge_ls_non_unit_modulus_codes(ris_scenes):
    """The ridge is relative per snapshot, mu_l = lam tr(G_l G_l^H) / M, for any codes."""
    s = ris_scenes["complex128"][1]
    amp = np.random.default_rng(3).uniform(0.2, 3.0, size=s.codes.shape)
    codes = np.asarray(s.codes) * amp
    est = ridge_ls_covariance(s.y, s.H, codes, lam=0.3)
    assert_close(est.R, ref_ridge(s.y, s.H, codes, 0.3), "complex128")


@pytest.mark.parametrize("dtype", DTYPES)
def test_als_matches_numpy(ris_scenes, dtype):
    s = ris_scenes[dtype][2]
    r_ref, hist_ref = ref_als(s.y, s.H, s.codes, rank=5, n_iter=4, lam=LAM)
    assert_close(als_covariance(s.y, s.H, s.codes, rank=5, n_iter=4, lam=LAM).R, r_ref, dtype)
    fit = als_fit(s.y, s.H, s.codes, rank=5, n_iter=4, lam=LAM)
    np.testing.assert_allclose(np.asarray(fit.objective), hist_ref, rtol=RTOL[np.dtype(dtype)])


def test_als_full_array_matches_numpy(full_scenes):
    s = full_scenes["complex128"][0]
    r_ref, _ = ref_als(s.y, None, None, rank=3, n_iter=3, lam=LAM)
    assert_close(als_covariance(s.y, rank=3, n_iter=3, lam=LAM).R, r_ref, "complex128")


def test_full_array_mode_reduces_to_sample(full_scenes):
    s = full_scenes["complex128"][1]
    ref = ref_sample(s.y)
    assert_close(matched_filter_covariance(s.y).R, ref, "complex128")
    assert_close(ridge_ls_covariance(s.y, lam=LAM).R, ref, "complex128")


def test_als_primal_equals_dual(ris_scenes):
    s = ris_scenes["complex128"][0]
    primal = als_covariance(s.y, s.H, s.codes, f_solver="primal").R
    dual = als_covariance(s.y, s.H, s.codes).R  # "auto" picks dual here: L M = 256 < N r = 720
    assert_close(primal, np.asarray(dual), "complex128")


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def _all_methods(s):
    if s.H is None:
        yield "sample", sample_covariance(s.y)
    yield "matched_filter", matched_filter_covariance(s.y, s.H, s.codes)
    yield "ridge_ls", ridge_ls_covariance(s.y, s.H, s.codes)
    yield "als", als_covariance(s.y, s.H, s.codes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["ris", "full"])
def test_trace_hermitian_factor(ris_scenes, full_scenes, dtype, mode):
    s = (ris_scenes if mode == "ris" else full_scenes)[dtype][0]
    n, n_l = s.R_true.shape[-1], s.y.shape[0]
    tol = RTOL[np.dtype(dtype)]
    for method, est in _all_methods(s):
        assert isinstance(est, CovEstimate)
        r, f = np.asarray(est.R), np.asarray(est.factor)
        chex.assert_shape(est.R, (n, n))
        chex.assert_shape(est.factor, (n, min(5, n_l) if method == "als" else n_l))
        assert r.dtype == f.dtype == np.dtype(dtype), method
        np.testing.assert_allclose(np.trace(r).real, n, rtol=tol, err_msg=method)
        np.testing.assert_array_equal(r, r.conj().T, err_msg=method)  # exactly Hermitian
        err = np.max(np.abs(f @ f.conj().T - r)) / np.max(np.abs(r))
        assert err <= tol, (method, err)
        assert np.min(np.linalg.eigvalsh(r.astype(np.complex128))) >= -tol * n, method


@pytest.mark.parametrize("method", COVARIANCE_METHODS[1:])
def test_scale_invariance(ris_scenes, method):
    """R depends on neither the scale of y nor that of the channel (relative ridge)."""
    s = ris_scenes["complex128"][0]
    a = estimate_covariance(method, s.y[None], s.H, s.codes).R
    b = estimate_covariance(method, 3e4 * s.y[None], 1e-3 * s.H, 2.0 * s.codes).R
    assert_close(b, np.asarray(a, np.complex128), "complex128")


def test_scale_invariance_complex64_extremes(ris_scenes):
    """Tiny and huge inputs in single precision neither underflow nor overflow."""
    s = ris_scenes["complex64"][0]
    ref = np.asarray(als_covariance(s.y, s.H, s.codes).R, np.complex128)
    for scale in (1e-25, 1e25):
        y = (s.y * np.float32(scale)).astype(np.complex64)
        assert_close(als_covariance(y, s.H, s.codes).R, ref, "complex64")


def test_zero_input_gives_zero_not_nan(ris_scenes):
    s = ris_scenes["complex64"][0]
    y = jnp.zeros_like(s.y)
    for est in (
        matched_filter_covariance(y, s.H, s.codes),
        ridge_ls_covariance(y, s.H, s.codes),
        als_covariance(y, s.H, s.codes),
    ):
        assert np.all(np.asarray(est.R) == 0) and np.all(np.asarray(est.factor) == 0)


def test_trace_normalize():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 6, 6)) + 1j * rng.normal(size=(2, 6, 6))
    r = a @ np.conj(np.swapaxes(a, -1, -2)) + 0.5 * (a - np.conj(np.swapaxes(a, -1, -2)))
    out = np.asarray(trace_normalize(jnp.asarray(r)))
    for i in range(2):
        np.testing.assert_allclose(out[i], ref_normalize(r[i]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        np.trace(np.asarray(trace_normalize(jnp.asarray(r[0]), 2.5))).real, 2.5, rtol=1e-12
    )
    z = np.asarray(trace_normalize(jnp.zeros((4, 4), jnp.complex64)))
    assert z.dtype == np.complex64 and np.all(z == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_als_objective_never_increases(ris_scenes, dtype):
    tol = RTOL[np.dtype(dtype)]
    scenes = ris_scenes[dtype]
    for i in range(len(scenes)):
        s = scenes[i]
        obj = np.asarray(als_fit(s.y, s.H, s.codes, n_iter=4, lam=LAM).objective, np.float64)
        chex.assert_shape(obj, (8,))
        assert np.all(np.diff(obj) <= tol * obj[:-1]), obj


def test_als_recovers_single_source_subspace():
    """K = 1 at 30 dB with the seed's N = 144, M = 16, L = 16: a rank-1 ALS (run to
    convergence: 30 iterations) finds the true steering direction. (With the seed's rank 5 and
    4 iterations the overlap is only about 0.8 here: the rank-5 F-step has 720 unknowns for
    256 measurements.)"""
    cfg = get_scenario("seed", k_min=1, k_max=1, snr_db=(30.0, 30.0), dtype="complex128")
    sc = simulate(cfg, jax.random.key(7), 4)
    est = estimate_covariance("als", sc.y, sc.H, sc.codes, rank=1, n_iter=30)
    for i in range(4):
        ov = subspace_overlap(sc.R_true[i], est.R[i], 1)
        assert ov >= 0.99, (i, ov)


def test_als_gradient_is_finite(ris_scenes):
    s = ris_scenes["complex128"][0]

    def loss(y):
        r = als_covariance(y, s.H, s.codes).R
        return jnp.real(jnp.vdot(s.R_true, r))

    g = jax.grad(loss)(s.y)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


# ---------------------------------------------------------------------------------------------
# Batching: vmap / jit / estimate_covariance == one scene at a time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_estimate_covariance_matches_single(ris_scenes, full_scenes, dtype):
    tol = RTOL[np.dtype(dtype)]
    singles = {
        "matched_filter": matched_filter_covariance,
        "ridge_ls": ridge_ls_covariance,
        "als": als_covariance,
    }
    sc = ris_scenes[dtype]
    for method, fn in singles.items():
        batch = estimate_covariance(method, sc.y, sc.H, sc.codes)
        chex.assert_shape(batch.R, (3, 144, 144))
        for i in range(3):
            one = fn(sc.y[i], sc.H[i], sc.codes[i])
            np.testing.assert_allclose(batch.R[i], one.R, rtol=tol, atol=tol, err_msg=method)
            np.testing.assert_allclose(batch.factor[i], one.factor, rtol=tol, atol=tol)
    fs = full_scenes[dtype]
    batch = estimate_covariance("sample", fs.y)
    for i in range(3):
        np.testing.assert_allclose(batch.R[i], sample_covariance(fs.y[i]).R, rtol=tol, atol=tol)


def test_public_functions_jit_and_vmap(ris_scenes):
    sc = ris_scenes["complex128"]
    batched = jax.jit(jax.vmap(als_covariance))(sc.y, sc.H, sc.codes)
    ridge = jax.jit(jax.vmap(ridge_ls_covariance))(sc.y, sc.H, sc.codes)
    for i in range(3):
        one = als_covariance(sc.y[i], sc.H[i], sc.codes[i])
        np.testing.assert_allclose(batched.R[i], one.R, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            ridge.R[i], ridge_ls_covariance(sc.y[i], sc.H[i], sc.codes[i]).R, rtol=1e-10, atol=1e-10
        )


def test_shared_channel_and_codes(ris_scenes):
    sc = ris_scenes["complex128"]
    h, c = sc.H[0], sc.codes[0]
    shared = estimate_covariance("ridge_ls", sc.y, h, c)
    tiled = estimate_covariance(
        "ridge_ls", sc.y, jnp.broadcast_to(h, sc.H.shape), jnp.broadcast_to(c, sc.codes.shape)
    )
    np.testing.assert_allclose(shared.R, tiled.R, rtol=1e-10, atol=1e-10)
    alias = estimate_covariance("als_lowrank", sc.y, sc.H, sc.codes)  # the conventions' name
    np.testing.assert_array_equal(alias.R, estimate_covariance("als", sc.y, sc.H, sc.codes).R)


# ---------------------------------------------------------------------------------------------
# Validation: ValueError naming the argument, before any jit
# ---------------------------------------------------------------------------------------------


def _bad_cases():
    rng = np.random.default_rng(1)

    def c(*shape):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)

    y, h, codes = c(4, 3), c(3, 5), c(4, 5)
    nan = y.copy()
    nan[1, 2] = np.nan
    inf_h = h.copy()
    inf_h[0, 0] = np.inf
    nan_c = codes.copy()
    nan_c[3, 4] = np.nan
    mf = matched_filter_covariance
    return [
        ("y real", lambda: mf(y.real, h, codes), "y"),
        ("y 1-D", lambda: mf(y[0], h, codes), "y"),
        ("y NaN", lambda: mf(nan, h, codes), "y"),
        ("L == 0", lambda: mf(y[:0], h, codes[:0]), "y"),
        ("M == 0", lambda: mf(y[:, :0], h[:0], codes), "y"),
        ("H wrong M", lambda: mf(y, c(2, 5), codes), "H"),
        ("H Inf", lambda: ridge_ls_covariance(y, inf_h, codes), "H"),
        ("H real", lambda: mf(y, h.real, codes), "H"),
        ("H 3-D", lambda: mf(y, h[None], codes), "H"),
        ("N == 0", lambda: mf(y, h[:, :0], codes[:, :0]), "H"),
        ("codes wrong L", lambda: mf(y, h, codes[:3]), "codes"),
        ("codes wrong N", lambda: als_covariance(y, h, c(4, 6)), "codes"),
        ("codes NaN", lambda: mf(y, h, nan_c), "codes"),
        ("codes missing", lambda: mf(y, h, None), "codes"),
        ("H missing", lambda: mf(y, None, codes), "H"),
        ("sample NaN", lambda: sample_covariance(nan), "y"),
        ("ridge lam < 0", lambda: ridge_ls_covariance(y, h, codes, lam=-1.0), "lam"),
        ("ridge lam NaN", lambda: ridge_ls_covariance(y, h, codes, lam=np.nan), "lam"),
        ("als lam == 0", lambda: als_covariance(y, h, codes, lam=0.0), "lam"),
        ("als rank 0", lambda: als_covariance(y, h, codes, rank=0), "rank"),
        ("als rank > N", lambda: als_fit(y, h, codes, rank=6), "rank"),
        ("als n_iter 0", lambda: als_covariance(y, h, codes, n_iter=0), "n_iter"),
        ("als f_solver", lambda: als_covariance(y, h, codes, f_solver="lu"), "f_solver"),
        ("batch method", lambda: estimate_covariance("mle", y[None], h, codes), "method"),
        ("batch sample H", lambda: estimate_covariance("sample", y[None], h, codes), "H"),
        ("batch y 2-D", lambda: estimate_covariance("ridge_ls", y, h, codes), "y"),
        ("batch H S", lambda: estimate_covariance("ridge_ls", y[None], c(2, 3, 5), codes), "H"),
        ("batch codes S", lambda: estimate_covariance("als", y[None], h, c(2, 4, 5)), "codes"),
        ("batch NaN", lambda: estimate_covariance("matched_filter", nan[None], h, codes), "y"),
        ("batch rank", lambda: estimate_covariance("als", y[None], h, codes, rank=9), "rank"),
    ]


_BAD = _bad_cases()


@pytest.mark.parametrize("call,name", [c[1:] for c in _BAD], ids=[c[0] for c in _BAD])
def test_validation_errors(call, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        call()


def test_unknown_keyword_is_type_error():
    y = jnp.ones((1, 4, 3), jnp.complex64)
    with pytest.raises(TypeError, match="rank"):
        estimate_covariance("ridge_ls", y, jnp.ones((3, 5), jnp.complex64),
                            jnp.ones((4, 5), jnp.complex64), rank=3)


def test_validation_skipped_under_jit():
    """Value checks cannot run on tracers; the jitted call computes instead of raising."""
    y = jnp.full((4, 3), jnp.nan, jnp.complex64)
    out = jax.jit(sample_covariance)(y)
    assert out.R.shape == (3, 3)
