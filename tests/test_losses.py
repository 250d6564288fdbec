"""Training losses against independent float64 NumPy/SciPy references, plus their invariants.

References are written here from the formulas (none calls the library's losses or steering):

- steering (exact model): `a_n = exp(-1j k (|u - p_n| - r))`, `u = r [ct cp, ct sp, st]`;
- MVDR quadratic form with an explicit `np.linalg.inv` (fine in a reference);
- the loaded projector `F inv(F^H F + c I) F^H` with `np.linalg.solve`;
- aux set loss by brute force over `itertools.permutations`, its regression part also by
  `scipy.optimize.linear_sum_assignment`;
- Gaussian blobs and focal loss with explicit loops / `np.log` of the probabilities.
"""
import doctest
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from rismvdr.physics.geometry import upa
from rismvdr.train import losses

# The losses are used under jit; testing them jitted also keeps this file fast (eager dispatch
# compiles every primitive separately). Host-side shape checks still run at trace time.
aux_set_loss = jax.jit(losses.aux_set_loss)
cov_nmse = jax.jit(losses.cov_nmse)
focal_loss = jax.jit(losses.focal_loss)
gaussian_blob_targets = jax.jit(losses.gaussian_blob_targets, static_argnames="sigma_cells")
heatmap_loss = jax.jit(losses.heatmap_loss, static_argnames="sigma_cells")
orthogonality_penalty = jax.jit(losses.orthogonality_penalty)
peak_contrast = jax.jit(losses.peak_contrast, static_argnames=("stencil", "model"))
subspace_alignment = jax.jit(losses.subspace_alignment)
trace_normalize = jax.jit(losses.trace_normalize)
weighted_total = losses.weighted_total

# One tolerance table keyed by the real dtype under test (complex inputs use the matching
# complex dtype, COMPLEX[dtype]); never relaxed to make a test pass. Measured worst cases against
# the float64 references on these cases: float64 1.3e-14 relative (peak contrast), float32
# 2.9e-6 relative / 6.5e-7 absolute (peak contrast, cov NMSE); about 10x headroom.
TOL = {
    np.float32: dict(rtol=3e-5, atol=5e-6),
    np.float64: dict(rtol=1e-9, atol=1e-12),
}
DTYPES = list(TOL)
COMPLEX = {np.float32: np.complex64, np.float64: np.complex128}

WAVELENGTH = 0.3
GEOM = upa(4, 4, 0.15, 0.15, wavelength=WAVELENGTH)  # N = 16, half-wavelength spacing
N = GEOM.n_elements
POS = np.asarray(GEOM.positions, np.float64)


def _close(actual, desired, dtype):
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, **TOL[dtype])


def _rng(seed):
    return np.random.default_rng(seed)


def _crandn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)


# ------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------
def ref_steering(phi, theta, r):
    """Exact model, `[..., N]` complex128, written directly from conventions section 2."""
    phi, theta, r = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (phi, theta, r)))
    u = r[..., None] * np.stack(
        [np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)], axis=-1
    )
    d = np.linalg.norm(u[..., None, :] - POS, axis=-1)
    k = 2.0 * np.pi / WAVELENGTH
    return np.exp(-1j * k * (d - r[..., None]))


def ref_cov(phi, theta, r, power):
    A = ref_steering(phi, theta, r).T  # [N, K]
    return (A * np.asarray(power)) @ A.conj().T


def ref_trace_normalize(R):
    return R * R.shape[-1] / np.real(np.trace(R))


def ref_cov_nmse(Rh, Rt):
    a, b = ref_trace_normalize(Rh), ref_trace_normalize(Rt)
    return np.sum(np.abs(a - b) ** 2) / np.sum(np.abs(b) ** 2)


def ref_orthogonality(F):
    r = F.shape[1]
    Fs = F / np.sqrt(np.mean(np.sum(np.abs(F) ** 2, axis=0)))
    return np.sum(np.abs(Fs.conj().T @ Fs - np.eye(r)) ** 2) / r


def ref_subspace_alignment(F, A, mask, eps=1e-6):
    r = F.shape[1]
    G = F.conj().T @ F
    P = F @ np.linalg.solve(G + eps * np.real(np.trace(G)) / r * np.eye(r), F.conj().T)
    fr = [np.sum(np.abs(P @ a) ** 2) / np.sum(np.abs(a) ** 2) for a, m in zip(A, mask) if m]
    return 1.0 - np.sum(fr) / max(len(fr), 1)


def _np_huber(x, d):
    ax = np.abs(x)
    return np.where(ax <= d, 0.5 * x * x / d, ax - 0.5 * d)


def _np_wrap(x):
    return np.angle(np.exp(1j * x))


def ref_pair_cost(pred, true, angle_delta, log_r_delta):
    """`[K, S]` pair costs; pred, true = (phi, theta, r) tuples."""
    (pp, pt, pr), (tp, tt, tr) = pred, true
    return (
        _np_huber(_np_wrap(pp[None, :] - tp[:, None]), angle_delta)
        + _np_huber(_np_wrap(pt[None, :] - tt[:, None]), angle_delta)
        + _np_huber(np.log(pr)[None, :] - np.log(tr)[:, None], log_r_delta)
    )


def _np_bce(x, t):
    p = 1.0 / (1.0 + np.exp(-x))
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def ref_aux(pred, logit, true, mask, angle_delta=np.deg2rad(2.0), log_r_delta=0.1, w=1.0):
    """Brute force over all injective truth -> slot maps; returns (loss, best map)."""
    cost = ref_pair_cost(pred, true, angle_delta, log_r_delta)
    k, s = cost.shape
    best, best_perm = np.inf, None
    for perm in itertools.permutations(range(s), k):
        c = sum(cost[i, perm[i]] for i in range(k) if mask[i])
        if c < best:
            best, best_perm = c, perm
    target = np.zeros(s)
    for i in range(k):
        if mask[i]:
            target[best_perm[i]] = 1.0
    nvalid = max(int(np.sum(mask)), 1)
    return best / nvalid + w * np.mean(_np_bce(logit, target)), best_perm


def ref_peak_contrast(R, phi, theta, r, mask, delta_rel=1e-2, s=3, step=0.10, tau=0.10):
    n = R.shape[0]
    Rl = R + delta_rel * np.real(np.trace(R)) / n * np.eye(n)
    Ri = np.linalg.inv(Rl)
    out = []
    for k in range(len(phi)):
        if not mask[k]:
            continue
        logp = []
        for i in range(-(s // 2), s // 2 + 1):
            for j in range(-(s // 2), s // 2 + 1):
                a = ref_steering(phi[k] + i * step, theta[k] + j * step, r[k])
                logp.append(-np.log(np.real(a.conj() @ Ri @ a)))
        z = np.asarray(logp) / tau
        out.append(-(z[len(z) // 2] - logsumexp(z)))
    return float(np.mean(out)) if out else 0.0


def ref_blobs(phi, theta, mask, pa, ta, sigma=2.0):
    dp = pa[1] - pa[0] if len(pa) > 1 else 1.0
    dt = ta[1] - ta[0] if len(ta) > 1 else 1.0
    out = np.zeros((len(ta), len(pa)))
    for k in range(len(phi)):
        if not mask[k]:
            continue
        for it, t in enumerate(ta):
            for ip, p in enumerate(pa):
                zp, zt = (p - phi[k]) / (sigma * dp), (t - theta[k]) / (sigma * dt)
                v = np.exp(-0.5 * (zp**2 + zt**2))
                out[it, ip] = max(out[it, ip], v)
    return out


def ref_focal(x, t, alpha=0.25, gamma=2.0):
    p = 1.0 / (1.0 + np.exp(-x))
    pos = -alpha * (1 - p) ** gamma * t * np.log(p)
    neg = -(1 - alpha) * p**gamma * (1 - t) * np.log(1 - p)
    return np.mean(pos + neg)


# Scenes: three valid sources and one padded slot (NaN, as in a scene file).
TRUE_PHI = np.array([0.30, -0.45, 0.05, np.nan])
TRUE_THETA = np.array([0.10, -0.20, 0.35, np.nan])
TRUE_R = np.array([1.2, 3.0, 0.8, np.nan])
TRUE_P = np.array([1.0, 0.6, 0.8, 0.0])
MASK = np.array([True, True, True, False])
VALID = np.flatnonzero(MASK)
R_TRUE = ref_cov(TRUE_PHI[VALID], TRUE_THETA[VALID], TRUE_R[VALID], TRUE_P[VALID])
PHI_AXIS = np.deg2rad(np.arange(-40.0, 41.0, 4.0))  # [21]
THETA_AXIS = np.deg2rad(np.arange(-24.0, 25.0, 4.0))  # [13]


def _random_cov(rng, k=3):
    X = _crandn(rng, N, k)
    return X @ X.conj().T + 0.05 * np.eye(N)


# ------------------------------------------------------------------------------------------
# Covariance fidelity
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_trace_normalize_and_cov_nmse_match_reference(dtype):
    rng = _rng(0)
    Rh, Rt = _random_cov(rng), R_TRUE
    cd = COMPLEX[dtype]
    Rn = trace_normalize(jnp.asarray(Rh, cd))
    assert Rn.dtype == cd
    _close(np.abs(Rn - ref_trace_normalize(Rh)).max(), 0.0, dtype)
    np.testing.assert_allclose(np.trace(np.asarray(Rn, np.complex128)).real, N, rtol=TOL[dtype]["rtol"])
    val = cov_nmse(jnp.asarray(Rh, cd), jnp.asarray(Rt, cd))
    assert val.dtype == dtype
    _close(val, ref_cov_nmse(Rh, Rt), dtype)


def test_cov_nmse_scale_invariant_and_batched():
    rng = _rng(1)
    R = jnp.asarray(_random_cov(rng))
    assert float(cov_nmse(R, 3.7 * R)) < 1e-28
    assert float(cov_nmse(0.01 * R, R)) < 1e-28
    Rb = jnp.stack([R, jnp.asarray(R_TRUE)])
    out = cov_nmse(Rb, jnp.stack([jnp.asarray(R_TRUE), jnp.asarray(R_TRUE)]))
    chex.assert_shape(out, (2,))
    _close(out, [ref_cov_nmse(np.asarray(R), R_TRUE), 0.0], np.float64)
    chex.assert_trees_all_close(trace_normalize(jnp.zeros((3, 3), jnp.complex128)), jnp.zeros((3, 3)))


# ------------------------------------------------------------------------------------------
# Factor regularisers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonality_penalty_reference_and_zero_for_unitary(dtype):
    rng = _rng(2)
    F = _crandn(rng, N, 5)
    cd = COMPLEX[dtype]
    val = orthogonality_penalty(jnp.asarray(F, cd))
    assert val.dtype == dtype
    _close(val, ref_orthogonality(F), dtype)
    Q, _ = np.linalg.qr(_crandn(rng, N, N))
    for cols, scale in ((N, 1.0), (5, 7.3)):
        _close(orthogonality_penalty(jnp.asarray(scale * Q[:, :cols], cd)), 0.0, dtype)
    assert float(orthogonality_penalty(jnp.asarray(Q[:, :5] * np.array([1, 1, 1, 1, 2.0])))) > 0.1


@pytest.mark.parametrize("dtype", DTYPES)
def test_subspace_alignment_matches_reference(dtype):
    rng = _rng(3)
    F = _crandn(rng, N, 5)
    A = ref_steering(np.nan_to_num(TRUE_PHI), np.nan_to_num(TRUE_THETA), np.nan_to_num(TRUE_R, nan=1.0))
    A[~MASK] = np.nan  # padded rows never reach the result
    cd = COMPLEX[dtype]
    val = subspace_alignment(jnp.asarray(F, cd), jnp.asarray(A, cd), jnp.asarray(MASK))
    assert val.dtype == dtype
    _close(val, ref_subspace_alignment(F, A, MASK), dtype)
    assert 0.0 <= float(val) <= 1.0


def test_subspace_alignment_properties():
    rng = _rng(4)
    A = ref_steering(TRUE_PHI[VALID], TRUE_THETA[VALID], TRUE_R[VALID])  # [3, N]
    mask = np.ones(3, bool)
    # F spanning the true vectors (mixed with two more columns): ~0 (loading is O(eps)).
    F_in = np.concatenate([A.T @ _crandn(rng, 3, 3), _crandn(rng, N, 2)], axis=1)
    assert 0.0 <= float(subspace_alignment(jnp.asarray(F_in), jnp.asarray(A), mask)) < 1e-4
    # Orthogonal complement of span(A): exactly 1.
    Q, _ = np.linalg.qr(np.concatenate([A.T, _crandn(rng, N, 4)], axis=1))
    val = float(subspace_alignment(jnp.asarray(Q[:, 3:]), jnp.asarray(A), mask))
    np.testing.assert_allclose(val, 1.0, atol=1e-12)
    # Anything else lies in [0, 1]; no valid truth gives 1.
    for seed in range(3):
        v = float(subspace_alignment(jnp.asarray(_crandn(_rng(10 + seed), N, 4)), jnp.asarray(A), mask))
        assert 0.0 < v < 1.0
    assert float(subspace_alignment(jnp.asarray(F_in), jnp.asarray(A), np.zeros(3, bool))) == 1.0


# ------------------------------------------------------------------------------------------
# Aux set loss
# ------------------------------------------------------------------------------------------
def _aux_case(seed, s=5):
    rng = _rng(seed)
    pred = (rng.uniform(-1, 1, s), rng.uniform(-0.5, 0.5, s), rng.uniform(0.5, 5.0, s))
    logit = rng.standard_normal(s)
    true_phi = np.array([0.2, -0.5, 0.7, 0.0, 0.0])[:s]
    true_theta = np.array([0.1, 0.3, -0.2, 0.0, 0.0])[:s]
    true_r = np.array([1.0, 2.5, 4.0, 1.0, 1.0])[:s]
    mask = np.array([True, True, True, False, False])[:s]
    # Near-miss predictions for the valid truths, in scrambled slots, one across the wrap.
    pred[0][[3, 0, 1]] = true_phi[:3] + np.array([0.01, -0.2, 0.03])
    pred[1][[3, 0, 1]] = true_theta[:3] + np.array([-0.02, 0.01, 0.5])
    pred[2][[3, 0, 1]] = true_r[:3] * np.array([1.05, 0.7, 1.0])
    pred[0][3] += 2.0 * np.pi  # same direction: wrap must see a 0.01 rad error
    return pred, logit, (true_phi, true_theta, true_r), mask


def _aux(pred, logit, true, mask, dtype=np.float64, **kw):
    args = [jnp.asarray(x, dtype) for x in (*pred, logit, *true)]
    return aux_set_loss(*args, jnp.asarray(mask), **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aux_set_loss_matches_brute_force_reference(dtype):
    pred, logit, true, mask = _aux_case(5)
    loss, assign = _aux(pred, logit, true, mask, dtype)
    ref, perm = ref_aux(pred, logit, true, mask)
    assert loss.dtype == dtype
    _close(loss, ref, dtype)
    np.testing.assert_array_equal(np.asarray(assign), np.where(mask, perm, -1))
    np.testing.assert_array_equal(np.asarray(assign)[:3], [3, 0, 1])
    # Regression part from the Hungarian solution on the valid rows.
    cost = ref_pair_cost(pred, true, np.deg2rad(2.0), 0.1)[mask]
    rows, cols = linear_sum_assignment(cost)
    loss0, _ = _aux(pred, logit, true, mask, dtype, exist_weight=0.0)
    _close(loss0, cost[rows, cols].sum() / mask.sum(), dtype)
    # Other options, S > K, and no valid truth at all.
    kw = dict(angle_delta=0.05, log_r_delta=0.3, exist_weight=0.5)
    ref = ref_aux(pred, logit, true, mask, 0.05, 0.3, 0.5)[0]
    _close(_aux(pred, logit, true, mask, dtype, **kw)[0], ref, dtype)
    t3 = tuple(x[:3] for x in true)
    _close(_aux(pred, logit, t3, mask[:3], dtype)[0], ref_aux(pred, logit, t3, mask[:3])[0], dtype)
    none = np.zeros(5, bool)
    _close(_aux(pred, logit, true, none, dtype)[0], np.mean(_np_bce(logit, np.zeros(5))), dtype)


def test_aux_set_loss_permutation_invariant():
    pred, logit, true, mask = _aux_case(6)
    base, assign = _aux(pred, logit, true, mask)
    rng = _rng(7)
    for _ in range(3):
        ps, pt = rng.permutation(5), rng.permutation(5)
        p2 = tuple(x[ps] for x in pred)
        t2 = tuple(x[pt] for x in true)
        loss, a2 = _aux(p2, logit[ps], t2, mask[pt])
        np.testing.assert_allclose(float(loss), float(base), rtol=1e-13)
        # The same physical pairs are matched: slot ps[a2[j]] of the original for truth pt[j].
        inv = {int(t): int(np.asarray(assign)[t]) for t in range(5) if mask[t]}
        for j in range(5):
            if mask[pt[j]]:
                assert ps[int(a2[j])] == inv[int(pt[j])]
            else:
                assert int(a2[j]) == -1


def test_aux_set_loss_jit_vmap_and_rejects_too_few_slots():
    cases = [_aux_case(s) for s in (8, 9)]
    stack = lambda i: jnp.stack([jnp.asarray(c[i]) for c in cases])  # noqa: E731
    pred = [jnp.stack([jnp.asarray(c[0][j]) for c in cases]) for j in range(3)]
    true = [jnp.stack([jnp.asarray(c[2][j]) for c in cases]) for j in range(3)]
    loss, assign = jax.jit(jax.vmap(aux_set_loss))(*pred, stack(1), *true, stack(3))
    chex.assert_shape(loss, (2,))
    chex.assert_shape(assign, (2, 5))
    for b, c in enumerate(cases):
        np.testing.assert_allclose(float(loss[b]), float(_aux(*c)[0]), rtol=1e-12)
    pred, logit, true, mask = _aux_case(10)
    with pytest.raises(ValueError, match="pred_phi"):  # 4 slots for 5 truths
        _aux(tuple(x[:4] for x in pred), logit[:4], true, mask)


# ------------------------------------------------------------------------------------------
# Peak contrast
# ------------------------------------------------------------------------------------------
def _pc(R, phi, theta, r, mask, dtype=np.float64, **kw):
    cd = COMPLEX[dtype]
    args = [jnp.asarray(x, dtype) for x in (phi, theta, r)]
    return peak_contrast(jnp.asarray(R, cd), *args, jnp.asarray(mask), GEOM, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_peak_contrast_matches_reference(dtype):
    rng = _rng(11)
    R = R_TRUE + 10.0 * _random_cov(rng)  # noisy enough that the losses are O(0.1 .. 1)
    val = _pc(R, TRUE_PHI, TRUE_THETA, TRUE_R, MASK, dtype)
    assert val.dtype == dtype
    _close(val, ref_peak_contrast(R, TRUE_PHI, TRUE_THETA, TRUE_R, MASK), dtype)
    kw = dict(delta_rel=0.05, stencil=5, step_rad=0.07, tau=0.3)
    ref = ref_peak_contrast(R, TRUE_PHI, TRUE_THETA, TRUE_R, MASK, 0.05, 5, 0.07, 0.3)
    _close(_pc(R, TRUE_PHI, TRUE_THETA, TRUE_R, MASK, dtype, **kw), ref, dtype)


def test_peak_contrast_small_at_true_sources_large_elsewhere():
    at_truth = float(_pc(R_TRUE, TRUE_PHI, TRUE_THETA, TRUE_R, MASK))
    shifted = ref_cov(TRUE_PHI[VALID] + 0.25, TRUE_THETA[VALID] - 0.15, TRUE_R[VALID], TRUE_P[VALID])
    elsewhere = float(_pc(shifted, TRUE_PHI, TRUE_THETA, TRUE_R, MASK))
    uniform = np.log(9.0)  # loss of a flat spectrum over the 3 x 3 stencil
    assert at_truth < 0.05 * uniform
    assert elsewhere > uniform > 10 * at_truth
    # Scale invariant, 0 without valid sources.
    scaled = float(_pc(5.0 * R_TRUE, TRUE_PHI, TRUE_THETA, TRUE_R, MASK))
    np.testing.assert_allclose(scaled, at_truth, atol=1e-12)
    R = R_TRUE + 10.0 * _random_cov(_rng(15))
    np.testing.assert_allclose(float(_pc(0.2 * R, TRUE_PHI, TRUE_THETA, TRUE_R, MASK)),
                               float(_pc(R, TRUE_PHI, TRUE_THETA, TRUE_R, MASK)), rtol=1e-9)
    assert float(_pc(R_TRUE, TRUE_PHI, TRUE_THETA, TRUE_R, np.zeros(4, bool))) == 0.0
    with pytest.raises(ValueError, match="stencil"):
        _pc(R_TRUE, TRUE_PHI, TRUE_THETA, TRUE_R, MASK, stencil=4)


# ------------------------------------------------------------------------------------------
# Heatmap targets and focal loss
# ------------------------------------------------------------------------------------------
HM_PHI = np.array([PHI_AXIS[5], PHI_AXIS[6] + 0.01, np.deg2rad(17.0), np.nan])
HM_THETA = np.array([THETA_AXIS[4], THETA_AXIS[4] + 0.02, np.deg2rad(-9.0), np.nan])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_blob_targets_max_blend(dtype):
    phi, theta = jnp.asarray(HM_PHI, dtype), jnp.asarray(HM_THETA, dtype)
    tgt = gaussian_blob_targets(phi, theta, jnp.asarray(MASK), PHI_AXIS, THETA_AXIS)
    chex.assert_shape(tgt, (len(THETA_AXIS), len(PHI_AXIS)))
    assert tgt.dtype == dtype
    ref = ref_blobs(HM_PHI, HM_THETA, MASK, PHI_AXIS, THETA_AXIS)
    _close(tgt, ref, dtype)
    np.testing.assert_allclose(float(tgt[4, 5]), 1.0, rtol=TOL[dtype]["rtol"])  # on-grid source
    # Max-blend, not sum: each cell is the larger of the per-source blobs.
    singles = [ref_blobs(HM_PHI[[k]], HM_THETA[[k]], [True], PHI_AXIS, THETA_AXIS) for k in VALID]
    _close(tgt, np.max(singles, axis=0), dtype)
    assert float(jnp.max(tgt)) <= 1.0 and float(jnp.min(tgt)) >= 0.0
    # Length-1 axes use step 1; no valid source gives zeros.
    one = gaussian_blob_targets(
        jnp.asarray([0.3]), jnp.asarray([0.0]), jnp.asarray([True]), np.array([0.3]), np.array([0.5])
    )
    np.testing.assert_allclose(np.asarray(one), [[np.exp(-0.5 * 0.25**2)]], rtol=1e-12)
    none = gaussian_blob_targets(phi, theta, jnp.zeros(4, bool), PHI_AXIS, THETA_AXIS)
    assert float(jnp.max(none)) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_focal_and_heatmap_loss_match_reference(dtype):
    rng = _rng(12)
    logits = 3.0 * rng.standard_normal((len(THETA_AXIS), len(PHI_AXIS)))
    target = rng.uniform(0, 1, logits.shape)
    val = focal_loss(jnp.asarray(logits, dtype), jnp.asarray(target, dtype))
    assert val.dtype == dtype
    _close(val, ref_focal(logits, target), dtype)
    _close(focal_loss(jnp.asarray(logits, dtype), jnp.asarray(target, dtype), alpha=0.6, gamma=0.5),
           ref_focal(logits, target, 0.6, 0.5), dtype)
    phi, theta = jnp.asarray(HM_PHI, dtype), jnp.asarray(HM_THETA, dtype)
    hm = heatmap_loss(
        jnp.asarray(logits, dtype), phi, theta, jnp.asarray(MASK), PHI_AXIS, THETA_AXIS, sigma_cells=1.5
    )
    ref = ref_focal(logits, ref_blobs(HM_PHI, HM_THETA, MASK, PHI_AXIS, THETA_AXIS, sigma=1.5))
    assert hm.dtype == dtype
    _close(hm, ref, dtype)
    with pytest.raises(ValueError, match="logits"):
        heatmap_loss(jnp.asarray(logits.T), phi, theta, MASK, PHI_AXIS, THETA_AXIS)


def test_focal_loss_stable_for_saturated_logits():
    x = jnp.asarray([-200.0, -30.0, 0.0, 30.0, 200.0], jnp.float32)
    t = jnp.asarray([0.0, 1.0, 0.5, 0.0, 1.0], jnp.float32)
    val, g = jax.value_and_grad(focal_loss)(x, t)
    assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
    # A confident wrong logit costs about alpha * |x| / 5 (cell mean): 0.25 * 30 / 5.
    np.testing.assert_allclose(float(focal_loss(x[1:2], t[1:2])), 0.25 * 30.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Gradients of every loss (real parametrisations), at generic and degenerate points
# ------------------------------------------------------------------------------------------
def _finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_finite(dtype):
    rng = _rng(13)
    cd = COMPLEX[dtype]
    X = jnp.asarray(rng.standard_normal((2, N, 4)), dtype)
    A = ref_steering(TRUE_PHI[VALID], TRUE_THETA[VALID], TRUE_R[VALID])
    A_pad = np.concatenate([A, np.full((1, N), np.nan)])

    def factor(X):
        return jax.lax.complex(X[0], X[1]).astype(cd)

    def cov(X):
        F = factor(X)
        return F @ jnp.conj(F.T)

    R_true = jnp.asarray(R_TRUE, cd)
    truth = [jnp.asarray(v, dtype) for v in (TRUE_PHI, TRUE_THETA, TRUE_R)]  # NaN-padded
    mask = jnp.asarray(MASK)
    fns = {
        "cov_nmse": lambda X: cov_nmse(cov(X), R_true),
        "orthogonality": lambda X: orthogonality_penalty(factor(X)),
        "subspace_alignment": lambda X: subspace_alignment(factor(X), jnp.asarray(A_pad, cd), mask),
        "peak_contrast": lambda X: peak_contrast(cov(X), *truth, mask, GEOM),
    }
    for name, fn in fns.items():
        val, g = jax.jit(jax.value_and_grad(fn))(X)
        assert np.isfinite(float(val)) and _finite(g), name
        assert float(jnp.max(jnp.abs(g))) > 0, name

    # Degenerate points: zero difference, F containing the truths, orthonormal columns.
    Xt = jnp.stack([jnp.asarray(R_TRUE.real, dtype), jnp.asarray(R_TRUE.imag, dtype)])
    assert _finite(jax.grad(lambda X: cov_nmse(jax.lax.complex(X[0], X[1]).astype(cd), R_true))(Xt))
    Fin = np.concatenate([A.T, rng.standard_normal((N, 1))], axis=1)
    Xin = jnp.asarray(np.stack([Fin.real, Fin.imag]), dtype)
    assert _finite(jax.jit(jax.grad(fns["subspace_alignment"]))(Xin))
    Q, _ = np.linalg.qr(_crandn(rng, N, 4))
    XQ = jnp.asarray(np.stack([Q.real, Q.imag]), dtype)
    assert _finite(jax.jit(jax.grad(fns["orthogonality"]))(XQ))

    # Peak contrast in the source parameters (true range too), covariance from other sources.
    Rs = jnp.asarray(R_TRUE + 10.0 * _random_cov(rng), cd)
    g = jax.grad(lambda p: peak_contrast(Rs, p[0], p[1], p[2], mask, GEOM))(
        jnp.asarray(np.nan_to_num(np.stack([TRUE_PHI, TRUE_THETA, TRUE_R]), nan=1.0), dtype))
    assert _finite(g) and float(jnp.max(jnp.abs(g))) > 0

    # Aux set loss in every prediction, heatmap loss in the logits.
    pred, logit, true, amask = _aux_case(14)
    P = jnp.asarray(np.stack([*pred, logit]), dtype)
    ga = jax.grad(lambda P: _aux((P[0], P[1], P[2]), P[3], true, amask, dtype)[0])(P)
    assert _finite(ga) and float(jnp.max(jnp.abs(ga[:3]))) > 0
    logits = jnp.asarray(rng.standard_normal((len(THETA_AXIS), len(PHI_AXIS))), dtype)
    hm_truth = (jnp.asarray(HM_PHI, dtype), jnp.asarray(HM_THETA, dtype), mask)
    gh = jax.grad(lambda z: heatmap_loss(z, *hm_truth, PHI_AXIS, THETA_AXIS))(logits)
    assert _finite(gh)


# ------------------------------------------------------------------------------------------
# Combination
# ------------------------------------------------------------------------------------------
def test_weighted_total_skips_zero_weights():
    terms = {"cov": jnp.asarray(2.0), "aux": jnp.asarray(3.0), "unused": jnp.asarray(100.0)}
    np.testing.assert_allclose(float(weighted_total(terms, {"cov": 0.5, "aux": 2.0})), 7.0)
    # A zero-weight term need not exist (its computation was skipped by the caller).
    np.testing.assert_allclose(float(weighted_total(terms, {"cov": 1.0, "heatmap": 0.0})), 2.0)
    # A NaN in a zero-weight term never reaches the total (skipped, not multiplied by 0).
    nan_terms = {**terms, "peak": jnp.asarray(np.nan)}
    assert np.isfinite(float(weighted_total(nan_terms, {"cov": 1.0, "peak": 0.0})))
    with pytest.raises(KeyError, match="heatmap"):
        weighted_total(terms, {"cov": 1.0, "heatmap": 0.1})
    zero = weighted_total(terms, {"cov": 0.0})
    assert float(zero) == 0.0 and zero.shape == ()
    g = jax.grad(lambda x: weighted_total({"a": x * x, "b": jnp.sin(x)}, {"a": 1.0, "b": 0.0}))(3.0)
    np.testing.assert_allclose(float(g), 6.0)


def test_docstring_examples():
    failures, _ = doctest.testmod(losses, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
