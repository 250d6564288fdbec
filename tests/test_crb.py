"""Deterministic CRB (rismvdr.physics.crb): closed-form and finite-difference oracles, properties.

Oracles are independent of the library's steering and Jacobian code:
- the Stoica & Nehorai (1989) single-source closed form for a far-field ULA;
- a NumPy float64 Fisher matrix over (eta, Re s, Im s) from 4th-order central differences of
  the mean, with the steering vector written from the formula of the conventions, then the Schur complement.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.physics import get_scenario, scenario_geometry, simulate, ula, upa
from rismvdr.physics.crb import (
    CRBStd,
    crb,
    crb_expected,
    crb_expected_std,
    crb_scenes,
    crb_std,
    default_params,
)

WL = 0.3
# float64 tolerances (never relaxed quietly): closed form / exact identities / finite differences.
RTOL_CLOSED = 1e-6
RTOL_EXACT = 1e-9
RTOL_FD = 1e-8  # measured ~4e-11 (4th-order stencil, h = 1e-4)


def _crandn(rng, shape, var=1.0):
    return np.sqrt(var / 2) * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


def _ris_setup(rng, n, m, l):
    h = _crandn(rng, (m, n), 1.0 / n)
    codes = np.exp(1j * rng.uniform(0, 2 * np.pi, (l, n)))
    return h, codes


def _rel_err(c, ref):
    """Max |C - C_ref| normalised by sqrt(C_ref_ii C_ref_jj) (scale-free for mixed units)."""
    c, ref = np.asarray(c), np.asarray(ref)
    d = np.sqrt(np.diag(ref))
    return float(np.max(np.abs(c - ref) / np.outer(d, d)))


# --------------------------------------------------------------- 1. closed form (far ULA) ----


@pytest.mark.parametrize("n, phi", [(8, 0.0), (10, 0.3), (16, -0.9)])
def test_far_ula_single_source_matches_stoica_nehorai(n, phi):
    spacing = WL / 2
    g = ula(n, spacing, wavelength=WL)
    rng = np.random.default_rng(n)
    l, noise_var = 20, 0.37
    s = _crandn(rng, (l, 1))
    c = crb(g, np.array([phi]), np.array([0.0]), np.array([5.0]), s, noise_var, model="far")
    assert c.shape == (1, 1)  # far model on a linear array: phi only
    k = 2 * np.pi / WL
    # ||d||^2 - |a^H d|^2 / N = k^2 cos^2(phi) sum_n (y_n - ybar)^2 = k^2 cos^2 d^2 N (N^2-1)/12
    spread = k**2 * np.cos(phi) ** 2 * spacing**2 * n * (n**2 - 1) / 12.0
    ref = noise_var / (2.0 * np.sum(np.abs(s) ** 2) * spread)
    np.testing.assert_allclose(float(c[0, 0]), ref, rtol=RTOL_CLOSED)


def test_far_model_bounds_angles_only():
    g = upa(4, 4, WL / 2, WL / 2, wavelength=WL)
    assert default_params(g, "far") == ("phi", "theta")
    s = _crandn(np.random.default_rng(0), (8, 2))
    args = (g, np.array([0.1, -0.5]), np.array([0.2, 0.0]), np.array([3.0, 4.0]), s, 0.1)
    assert crb(*args, model="far").shape == (4, 4)
    std = crb_std(*args, model="far")
    assert np.all(np.isnan(std.r)) and np.all(np.isfinite(std.phi)) and np.all(np.isfinite(std.theta))
    with pytest.raises(ValueError, match="params"):
        crb(*args, model="far", params=("phi", "r"))


# ------------------------------------------------------ 2. finite-difference Fisher (UPA) ----


def _np_upa_positions(nh, nv, dh, dv):
    pos = []
    for v in range(nv):
        for h in range(nh):
            pos.append([0.0, (h - (nh - 1) / 2) * dh, (v - (nv - 1) / 2) * dv])
    return np.array(pos)


def _np_steering(pos, phi, theta, r):
    """conventions section 2, exact model, written out directly: a_n = exp(-1j k (|u - p_n| - r))."""
    u = r * np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)])
    d = np.linalg.norm(u[None, :] - pos, axis=1)
    return np.exp(-1j * (2 * np.pi / WL) * (d - r))


def _np_mean(alpha, pos, k, l, h, codes):
    """Stacked mean [L*M] (or [L*N] full-array) for alpha = (eta param-major, Re s, Im s)."""
    eta = alpha[: 3 * k].reshape(3, k)
    re = alpha[3 * k: 3 * k + l * k].reshape(l, k)
    im = alpha[3 * k + l * k:].reshape(l, k)
    s = re + 1j * im
    a = np.stack([_np_steering(pos, *eta[:, i]) for i in range(k)], axis=1)  # [N, K]
    x = s @ a.T  # [L, N]
    if h is None:
        return x.reshape(-1)
    return ((codes * x) @ h.T).reshape(-1)  # y_l = H diag(c_l) x_l


def _fd_crb(pos, phi, theta, r, s, noise_var, h, codes):
    k, l = len(phi), s.shape[0]
    alpha = np.concatenate([phi, theta, r, s.real.reshape(-1), s.imag.reshape(-1)])
    steps = np.concatenate([np.full(3 * k, 1e-4), np.full(2 * l * k, 1e-2)])
    cols = []
    for i in range(alpha.size):
        e = np.zeros_like(alpha)
        e[i] = steps[i]
        f = lambda t: _np_mean(alpha + t * e, pos, k, l, h, codes)  # noqa: E731
        cols.append((-f(2) + 8 * f(1) - 8 * f(-1) + f(-2)) / (12 * steps[i]))
    jac = np.stack(cols, axis=1)
    fim = (2.0 / noise_var) * np.real(jac.conj().T @ jac)
    p = 3 * k
    schur = fim[:p, :p] - fim[:p, p:] @ np.linalg.solve(fim[p:, p:], fim[p:, :p])
    return np.linalg.inv(schur)


@pytest.mark.parametrize("mode", ["ris", "full"])
def test_near_field_upa_matches_finite_difference_fisher(mode):
    nh = nv = 6
    g = upa(nh, nv, WL / 2, WL / 2, wavelength=WL)
    pos = _np_upa_positions(nh, nv, WL / 2, WL / 2)
    np.testing.assert_array_equal(np.asarray(g.positions), pos)
    rng = np.random.default_rng(7)
    k, l, m = 2, 6, 8
    phi, theta, r = np.array([0.35, -0.5]), np.array([0.15, -0.25]), np.array([0.9, 2.2])
    s = _crandn(rng, (l, k))
    noise_var = 0.05
    h, codes = _ris_setup(rng, nh * nv, m, l) if mode == "ris" else (None, None)
    c = crb(g, phi, theta, r, s, noise_var, h, codes)
    ref = _fd_crb(pos, phi, theta, r, s, noise_var, h, codes)
    assert c.shape == (3 * k, 3 * k)
    assert _rel_err(c, ref) < RTOL_FD


# ------------------------------------------------------------------------- 3. properties ----


@pytest.fixture(scope="module")
def ris_case():
    rng = np.random.default_rng(3)
    g = upa(6, 6, WL / 2, WL / 2, wavelength=WL)
    k, l, m = 3, 8, 10
    h, codes = _ris_setup(rng, 36, m, l)
    return dict(
        g=g, phi=np.array([0.3, -0.2, 0.7]), theta=np.array([0.1, -0.3, 0.2]),
        r=np.array([1.2, 2.0, 3.5]), s=_crandn(rng, (l, k)), h=h, codes=codes,
    )


def _crb(case, noise_var=0.1, **kw):
    c = case
    return np.asarray(crb(c["g"], c["phi"], c["theta"], c["r"], c["s"], noise_var, c["h"], c["codes"], **kw))


def test_linear_in_noise_variance(ris_case):
    np.testing.assert_allclose(_crb(ris_case, 0.4), 4.0 * _crb(ris_case, 0.1), rtol=RTOL_EXACT)


def test_doubling_snapshots_halves_crb(ris_case):
    c = ris_case
    twice = dict(c, s=np.concatenate([c["s"], c["s"]]), codes=np.concatenate([c["codes"], c["codes"]]))
    np.testing.assert_allclose(_crb(twice), 0.5 * _crb(c), rtol=RTOL_EXACT)


def test_symmetric_positive_definite(ris_case):
    c = _crb(ris_case)
    np.testing.assert_array_equal(c, c.T)
    assert np.all(np.linalg.eigvalsh(c) > 0)


def test_permuting_sources_permutes_crb(ris_case):
    c = ris_case
    perm = np.array([2, 0, 1])
    pc = dict(c, phi=c["phi"][perm], theta=c["theta"][perm], r=c["r"][perm], s=c["s"][:, perm])
    idx = np.concatenate([perm + 3 * i for i in range(3)])
    np.testing.assert_allclose(_crb(pc), _crb(c)[np.ix_(idx, idx)], rtol=1e-8, atol=0)


def test_padded_source_is_decoupled(ris_case):
    c = ris_case
    mask = np.array([True, False, True])
    full = _crb(c, mask=mask)
    keep = np.array([0, 2])
    sub = dict(c, phi=c["phi"][keep], theta=c["theta"][keep], r=c["r"][keep], s=c["s"][:, keep])
    ref = _crb(sub)
    idx = np.concatenate([keep + 3 * i for i in range(3)])
    np.testing.assert_allclose(full[np.ix_(idx, idx)], ref, rtol=1e-8)
    pad = np.concatenate([[1 + 3 * i] for i in range(3)])
    assert np.all(np.isnan(full[pad, :])) and np.all(np.isnan(full[:, pad]))
    std = crb_std(c["g"], c["phi"], c["theta"], c["r"], c["s"], 0.1, c["h"], c["codes"], mask=mask)
    assert np.isnan(std.phi[1]) and np.isnan(std.r[1]) and np.all(np.isfinite(std.phi[keep]))


def test_coincident_sources_give_infinite_bound(ris_case):
    c = ris_case
    same = dict(c, phi=np.full(3, 0.3), theta=np.full(3, 0.1), r=np.full(3, 1.2))
    out = _crb(same)
    assert np.all(np.isposinf(np.diag(out)))
    assert np.all(np.isnan(out[~np.eye(9, dtype=bool)]))


def test_expected_equals_exact_for_orthogonal_symbols():
    """Full-array mode: with sum_l conj(s_l) s_l^T = L diag(p) exactly, the two versions agree."""
    g = upa(5, 4, WL / 2, WL / 2, wavelength=WL)
    l, p = 12, np.array([1.0, 0.4, 0.25])
    lk = np.arange(l)[:, None] * np.array([0, 1, 3])[None, :]
    s = np.sqrt(p)[None, :] * np.exp(2j * np.pi * lk / l)
    args = (np.array([0.2, -0.4, 0.6]), np.array([0.0, 0.2, -0.2]), np.array([0.8, 1.5, 3.0]))
    exact = crb(g, *args, s, 0.2)
    expected = crb_expected(g, *args, p, 0.2, n_snapshots=l)
    assert _rel_err(exact, expected) < RTOL_EXACT


def test_exact_tends_to_expected_with_many_snapshots():
    rng = np.random.default_rng(11)
    g = upa(6, 6, WL / 2, WL / 2, wavelength=WL)
    l, p = 1024, np.array([1.0, 0.5])
    h, codes = _ris_setup(rng, 36, 8, l)
    s = _crandn(rng, (l, 2)) * np.sqrt(p)[None, :]
    args = (g, np.array([0.3, -0.3]), np.array([0.1, 0.2]), np.array([1.5, 3.0]))
    ex = crb_std(*args, s, 0.1, h, codes)
    ep = crb_expected_std(*args, p, 0.1, h, codes)
    for a, b in zip(ex, ep):
        np.testing.assert_allclose(a, b, rtol=0.1)


def test_exact_model_tends_to_far_model_at_long_range():
    g = upa(8, 8, WL / 2, WL / 2, wavelength=WL)
    s = _crandn(np.random.default_rng(5), (16, 1))
    args = (g, np.array([0.4]), np.array([-0.2]), np.array([1e4]), s, 0.1)
    near = crb(*args, params=("phi", "theta"))  # r known: angles only, exact steering
    far = crb(*args, model="far")
    assert _rel_err(near, far) < 1e-6  # measured ~2e-9 at r = 1e4 m


def test_linear_geometry_bounds_phi_and_range():
    g = ula(16, WL / 2, wavelength=WL)
    assert g.linear and default_params(g) == ("phi", "r")
    s = _crandn(np.random.default_rng(2), (10, 2))
    args = (g, np.array([0.2, -0.5]), np.zeros(2), np.array([1.0, 2.0]), s, 0.1)
    c = crb(*args)
    assert c.shape == (4, 4)
    std = crb_std(*args)
    assert np.all(np.isnan(std.theta)) and np.all(np.isfinite(std.phi)) and np.all(std.r > 0)
    with pytest.raises(ValueError, match="params"):
        crb(*args, params=("phi", "theta", "r"))


@pytest.fixture(scope="module")
def seed_scenes():
    """Small seed-like scenes from the simulator (complex64, its default), 5 scenes, K <= 3."""
    cfg = get_scenario("seed", nh=6, nv=5, n_bs=8, n_snapshots=8, k_max=3, r_m=(0.5, 4.0))
    return cfg, simulate(cfg, jax.random.key(0), 5)


def _to64(scenes):
    def cast(x):
        if jnp.iscomplexobj(x):
            return x.astype(jnp.complex128)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, scenes)


def _full_array_scenes(scenes, n):
    """The same truth in full-array mode (no H / codes; M = N), built without the simulator."""
    s, l = scenes.y.shape[:2]
    return dataclasses.replace(
        scenes, H=None, codes=None, y=jnp.zeros((s, l, n), jnp.complex128)
    )


@pytest.mark.parametrize("mode", ["ris", "full"])
def test_crb_scenes_matches_per_scene_calls(seed_scenes, mode):
    cfg, scenes = seed_scenes
    g = scenario_geometry(cfg)
    scenes = _to64(scenes)
    if mode == "full":
        scenes = _full_array_scenes(scenes, g.n_elements)
    out = crb_scenes(scenes, g)
    assert isinstance(out, CRBStd) and out.phi.shape == (5, 3)
    assert out.phi.dtype == jnp.float64
    for i in range(5):
        sc = scenes[i]
        ref = crb_expected_std(
            g, sc.phi, sc.theta, sc.r, sc.power, sc.noise_var, sc.H, sc.codes,
            n_snapshots=cfg.n_snapshots, mask=sc.mask,
        )
        for a, b in zip(out, ref):
            np.testing.assert_allclose(a[i], b, rtol=1e-10)
        mask = np.asarray(sc.mask)
        assert np.all(np.isnan(np.asarray(out.r[i])[~mask]))
        assert np.all(np.isfinite(np.asarray(out.r[i])[mask]))
    single = crb_scenes(scenes[0], g)
    np.testing.assert_allclose(single.phi, out.phi[0], rtol=1e-12)
    chunked = crb_scenes(scenes, g, batch_size=2)  # 3 chunks, the last one padded
    for a, b in zip(chunked, out):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_crb_scenes_float32_close_to_float64(seed_scenes):
    cfg, s32 = seed_scenes
    g = scenario_geometry(cfg)
    o32, o64 = crb_scenes(s32, g), crb_scenes(_to64(s32), g)
    assert o32.phi.dtype == jnp.float32
    for a, b in zip(o32, o64):
        np.testing.assert_allclose(a, b, rtol=1e-2)


def test_crb_jits_with_traced_inputs(ris_case):
    c = ris_case
    f = jax.jit(lambda r: crb(c["g"], c["phi"], c["theta"], r, c["s"], 0.1, c["h"], c["codes"]))
    np.testing.assert_allclose(f(jnp.asarray(c["r"])), _crb(c), rtol=1e-10)


def _bad(case, **over):
    a = dict(g=case["g"], phi=case["phi"], theta=case["theta"], r=case["r"], s=case["s"],
             noise_var=0.1, h=case["h"], codes=case["codes"])
    a.update(over)
    return a


@pytest.mark.parametrize(
    "over, name",
    [
        (dict(phi=np.array([0.3, np.nan, 0.7])), "phi"),
        (dict(theta=np.array([0.1, 0.2])), "theta"),
        (dict(r=np.array([1.2, 0.0, 3.5])), "r"),
        (dict(r=np.array([1.2, -1.0, 3.5])), "r"),
        (dict(noise_var=0.0), "noise_var"),
        (dict(noise_var=np.inf), "noise_var"),
        (dict(s=np.ones((8, 2), complex)), "symbols"),
        (dict(s=np.full((8, 3), np.nan, complex)), "symbols"),
        (dict(codes=None), "H, codes"),
        (dict(h=np.ones((10, 35), complex)), "H"),
        (dict(codes=np.ones((7, 36), complex)), "codes"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(ris_case, over, name):
    a = _bad(ris_case, **over)
    with pytest.raises(ValueError, match=f"^{name}"):
        crb(a["g"], a["phi"], a["theta"], a["r"], a["s"], a["noise_var"], a["h"], a["codes"])


def test_bad_expected_and_model_inputs(ris_case):
    c = ris_case
    base = (c["g"], c["phi"], c["theta"], c["r"])
    with pytest.raises(ValueError, match="^power"):
        crb_expected(*base, np.array([1.0, -1.0, 1.0]), 0.1, c["h"], c["codes"])
    with pytest.raises(ValueError, match="^n_snapshots"):
        crb_expected(*base, np.ones(3), 0.1)
    with pytest.raises(ValueError, match="^model"):
        crb(*base, c["s"], 0.1, c["h"], c["codes"], model="nearish")
    with pytest.raises(ValueError, match="^params"):
        crb(*base, c["s"], 0.1, c["h"], c["codes"], params=("phi", "elev"))
