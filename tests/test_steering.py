"""Steering vectors (conventions section 2) against an independent float64 NumPy reference.

The reference below is written from the formulas of the conventions (docs/conventions.md) (it does not call the library):
`u = r [cos(theta) cos(phi), cos(theta) sin(phi), sin(theta)]`, `d_n = |u - p_n|` and

- exact:   `a_n = exp(-1j k (d_n - r))`
- fresnel: `d_n - r ~= -p_n.uhat + (|p_n|^2 - (p_n.uhat)^2) / (2 r)`
- far:     `d_n - r ~= -p_n.uhat`

Phases are compared as `max |angle(a * conj(a_ref))|` (radians), which has no 2 pi wrapping.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rismvdr.physics.geometry import from_positions
from rismvdr.physics.steering import STEERING_MODELS, path_difference, steering

# One tolerance table, keyed by the real dtype of the inputs. `phase`: max phase error (rad)
# against the float64 reference; `modulus`: max | |a_n| - 1 |.
TOL = {
    np.float32: dict(phase=1e-4, modulus=1e-6),
    np.float64: dict(phase=1e-10, modulus=1e-13),
}
CDTYPE = {np.float32: np.complex64, np.float64: np.complex128}

WAVELENGTH = 0.3
K = 2 * np.pi / WAVELENGTH


def _upa_positions(nh=12, nv=12, spacing=0.15):
    """The seed surface (conventions section 1 and 4): 12 x 12 UPA, half-wavelength spacing, n = v*nh + h."""
    v, h = np.meshgrid(np.arange(nv) - (nv - 1) / 2, np.arange(nh) - (nh - 1) / 2, indexing="ij")
    return np.stack([np.zeros(nh * nv), h.ravel() * spacing, v.ravel() * spacing], axis=-1)


P_SEED = _upa_positions()
GEOM = from_positions(P_SEED, WAVELENGTH)
P_MAX = float(np.max(np.linalg.norm(P_SEED, axis=-1)))  # max |p_n| = D / 2 (centred array)
APERTURE = 2 * P_MAX  # D, corner to corner
NPTS = 32  # points per batch; one shape throughout keeps compilation to a minimum

# The oracle tests call the library through jit (one compilation per shape instead of one per
# primitive); eager calls, and their input validation, are tested separately below.
steering_jit = jax.jit(steering, static_argnames=("model", "dtype"))
path_difference_jit = jax.jit(path_difference, static_argnames=("model",))


def ref_delta(positions, phi, theta, r, model):
    """`[..., N]` float64 path difference d_n - r (or its approximation), from the conventions (docs/conventions.md)."""
    phi, theta, r = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (phi, theta, r)))
    uhat = np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)], -1)
    p = np.asarray(positions, np.float64)
    proj = uhat @ p.T  # [..., N]
    rr = r[..., None]
    if model == "exact":
        u = rr * uhat  # [..., 3]
        d = np.linalg.norm(u[..., None, :] - p, axis=-1)
        return d - rr
    if model == "fresnel":
        return -proj + (np.sum(p * p, -1) - proj**2) / (2 * rr)
    if model == "far":
        return -proj
    raise AssertionError(model)


def ref_steering(positions, phi, theta, r, model="exact", wavelength=WAVELENGTH):
    return np.exp(-1j * (2 * np.pi / wavelength) * ref_delta(positions, phi, theta, r, model))


def max_phase_error(a, b):
    return float(np.max(np.abs(np.angle(np.asarray(a, np.complex128) * np.conj(b)))))


# ----------------------------------------------------------------------------------------------
# Oracle and properties


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("model", STEERING_MODELS)
def test_matches_reference_and_unit_modulus(model, real):
    rng = np.random.default_rng(1)
    phi = rng.uniform(-np.pi / 3, np.pi / 3, NPTS).astype(real)
    theta = rng.uniform(-np.pi / 6, np.pi / 6, NPTS).astype(real)
    r = rng.uniform(0.5, 10.0, NPTS).astype(real)
    a = steering_jit(GEOM, jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(r), model=model)
    assert a.dtype == CDTYPE[real]
    chex.assert_shape(a, (NPTS, 144))
    ref = ref_steering(P_SEED, phi, theta, r, model)  # float64 on the same (rounded) inputs
    assert max_phase_error(a, ref) < TOL[real]["phase"]
    assert float(np.max(np.abs(np.abs(np.asarray(a)) - 1))) < TOL[real]["modulus"]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    phi=st.floats(-np.pi, np.pi),
    theta=st.floats(-np.pi / 2, np.pi / 2),
    r=st.floats(0.05, 1e3),
    layout_seed=st.integers(0, 2**31 - 1),
)
def test_property_random_points_and_layouts(phi, theta, r, layout_seed):
    # Any layout (conventions section 1), including elements off the y-z plane and sources closer than the
    # aperture; all three models against the float64 reference.
    pos = np.random.default_rng(layout_seed).uniform(-1.0, 1.0, (9, 3))
    g = from_positions(pos, WAVELENGTH)
    args = tuple(jnp.asarray(x, jnp.float64) for x in (phi, theta, r))
    for model in STEERING_MODELS:
        a = np.asarray(steering_jit(g, *args, model=model))
        assert a.shape == (9,) and a.dtype == np.complex128
        assert max_phase_error(a, ref_steering(pos, phi, theta, r, model)) < TOL[np.float64]["phase"]
        assert np.max(np.abs(np.abs(a) - 1)) < TOL[np.float64]["modulus"]
        delta = np.asarray(path_difference_jit(g, *args, model=model))
        np.testing.assert_allclose(delta, ref_delta(pos, phi, theta, r, model), rtol=0, atol=1e-12)


def test_exact_tends_to_far_as_range_grows():
    # d_n - r = -p.uhat + (|p|^2 - (p.uhat)^2)/(2r) + O(|p|^3/r^2), so the exact-vs-far phase
    # error is at most k max|p|^2 / (2r) to first order (attained near broadside by the corner
    # elements); we allow the next order, a factor (1 + 2 max|p|/r). Ranges: 10, 1e2, 1e3, 1e4
    # apertures (D = 2.33 m). At r = 1e4 D the bound is 6.1e-4 rad, so the error is < 1e-3 rad.
    rng = np.random.default_rng(2)
    phi = jnp.asarray(rng.uniform(-np.pi / 3, np.pi / 3, NPTS))
    theta = jnp.asarray(rng.uniform(-np.pi / 6, np.pi / 6, NPTS))
    far = steering_jit(GEOM, phi, theta, 1.0, model="far")
    errors = []
    for r in APERTURE * np.array([1e1, 1e2, 1e3, 1e4]):
        err = max_phase_error(steering_jit(GEOM, phi, theta, r, model="exact"), np.asarray(far))
        assert err <= K * P_MAX**2 / (2 * r) * (1 + 2 * P_MAX / r)
        errors.append(err)
    assert all(e1 > 5 * e2 for e1, e2 in zip(errors, errors[1:]))  # ~1/r: a factor 10 a decade
    assert errors[-1] < 1e-3


def test_fresnel_agrees_with_exact_in_fresnel_region():
    # With a = p.uhat, b = |p|^2 and eps = (b - 2 r a)/r^2, d - r = r (sqrt(1 + eps) - 1).
    # Its expansion in 1/r is -a + (b - a^2)/(2r) [= fresnel] + a (b - a^2)/(2 r^2) + O(|p|^4/r^3).
    # |a (b - a^2)| <= (2/(3 sqrt 3)) |p|^3 ~= 0.385 |p|^3, so the phase error of fresnel is
    # bounded by k max|p|^3 / (2 r^2) (= k D^3/(16 r^2) here), with a factor 2.6 to spare for the
    # higher orders, which are smaller by |p|/r <= 0.29 over the Fresnel region
    # 0.62 sqrt(D^3/lambda) = 4.03 m <= r <= 2 D^2/lambda = 36.3 m.
    rng = np.random.default_rng(3)
    phi = jnp.asarray(rng.uniform(-np.pi / 3, np.pi / 3, NPTS))
    theta = jnp.asarray(rng.uniform(-np.pi / 6, np.pi / 6, NPTS))
    r_lo = 0.62 * np.sqrt(APERTURE**3 / WAVELENGTH)
    r_hi = 2 * APERTURE**2 / WAVELENGTH
    errors = []
    for r in np.geomspace(r_lo, r_hi, 6):
        err = max_phase_error(
            steering_jit(GEOM, phi, theta, r, model="fresnel"), np.asarray(steering_jit(GEOM, phi, theta, r))
        )
        assert err <= K * P_MAX**3 / (2 * r**2)
        errors.append(err)
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 0.01  # at the Fraunhofer distance the two agree to a few mrad


def test_fresnel_keeps_projection_term():
    # LESSONS: the seed system's near-field steering dropped (p.uhat)^2; self-consistent, but
    # off by radians away from broadside at a few metres. Same check as above, at r = 4.5 m,
    # phi = 60 deg, theta = 30 deg: the correct expansion passes the bound, the broken one fails.
    phi, theta, r = np.deg2rad(60.0), np.deg2rad(30.0), 4.5
    bound = K * P_MAX**3 / (2 * r**2)  # 0.82 rad
    exact = ref_steering(P_SEED, phi, theta, r, "exact")
    fresnel = steering_jit(GEOM, jnp.float64(phi), jnp.float64(theta), jnp.float64(r), model="fresnel")
    assert max_phase_error(fresnel, exact) <= bound
    proj = P_SEED @ np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)])
    no_projection = np.exp(-1j * K * (-proj + np.sum(P_SEED**2, -1) / (2 * r)))  # the seed's bug
    assert max_phase_error(no_projection, exact) > 2.0  # radians off
    assert max_phase_error(no_projection, exact) > bound


@pytest.mark.parametrize("r", [10.0, 1e3, 1e4])
def test_float32_accuracy_without_cancellation(r):
    # float32 inputs must reach the float64 reference to 1e-4 rad even at large range, where
    # forming d_n and then subtracting r in float32 loses the small path difference.
    rng = np.random.default_rng(4)
    phi = rng.uniform(-np.pi / 3, np.pi / 3, NPTS).astype(np.float32)
    theta = rng.uniform(-np.pi / 6, np.pi / 6, NPTS).astype(np.float32)
    rr = np.full(NPTS, r, np.float32)
    a = steering_jit(GEOM.astype(np.float32), jnp.asarray(phi), jnp.asarray(theta), jnp.asarray(rr))
    assert a.dtype == np.complex64
    ref = ref_steering(P_SEED, phi, theta, rr)
    assert max_phase_error(a, ref) < TOL[np.float32]["phase"]
    if r >= 1e4:  # the test has teeth: the naive float32 form d - r fails it
        p32 = P_SEED.astype(np.float32)
        u = (rr[:, None] * np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)], -1))
        naive = np.linalg.norm(u[:, None, :] - p32, axis=-1).astype(np.float32) - rr[:, None]
        naive_a = np.exp(-1j * K * naive.astype(np.float64))
        assert max_phase_error(naive_a, ref) > 10 * TOL[np.float32]["phase"]


# ----------------------------------------------------------------------------------------------
# Shapes, dtypes, transformations


def test_broadcasting_shapes():
    phi = jnp.linspace(-1.0, 1.0, 3, dtype=jnp.float64)[:, None, None]  # [3, 1, 1]
    theta = jnp.linspace(-0.5, 0.5, 4, dtype=jnp.float64)[None, :, None]  # [1, 4, 1]
    r = jnp.asarray([1.0, 2.0, 5.0, 9.0, 20.0], jnp.float64)  # [5]
    for model in STEERING_MODELS:
        a = steering_jit(GEOM, phi, theta, r, model=model)
        chex.assert_shape(a, (3, 4, 5, 144))
        ref = ref_steering(P_SEED, np.asarray(phi), np.asarray(theta), np.asarray(r), model)
        assert max_phase_error(a, ref) < TOL[np.float64]["phase"]
    chex.assert_shape(steering(GEOM, 0.1, 0.2, 3.0), (144,))  # scalars -> [N], eager
    chex.assert_shape(path_difference_jit(GEOM, phi, theta, r), (3, 4, 5, 144))


def test_output_dtypes():
    f32 = [jnp.asarray(x, jnp.float32) for x in (0.1, 0.2, 3.0)]
    f64 = [jnp.asarray(x, jnp.float64) for x in (0.1, 0.2, 3.0)]
    for model in STEERING_MODELS:
        assert steering(GEOM, *f32, model=model).dtype == jnp.complex64
        assert steering(GEOM, *f64, model=model).dtype == jnp.complex128
        assert steering(GEOM, *f64, model=model, dtype=jnp.complex64).dtype == jnp.complex64


@pytest.mark.parametrize("model", STEERING_MODELS)
def test_gradients_match_central_differences(model):
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=144) + 1j * rng.normal(size=144))

    @jax.jit
    def f(phi, theta, r):  # a real function of the steering vector
        return jnp.real(jnp.vdot(w, steering(GEOM, phi, theta, r, model=model)))

    x0 = (jnp.float64(0.7), jnp.float64(-0.3), jnp.float64(2.5))
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(*x0)
    h = 1e-6
    for i, g in enumerate(grads):
        assert np.isfinite(float(g))
        xp = list(x0)
        xm = list(x0)
        xp[i] = xp[i] + h
        xm[i] = xm[i] - h
        fd = (float(f(*xp)) - float(f(*xm))) / (2 * h)
        # float64: truncation ~ h^2 f''' (1e-8) and rounding ~ eps |f| / h (1e-8) against
        # gradients of order 1e2-1e3.
        assert abs(float(g) - fd) <= 1e-6 * max(abs(fd), 1.0) + 1e-6, (i, float(g), fd)
    if model == "far":
        assert float(grads[2]) == 0.0  # plane wave: no range information


def test_jit_and_vmap_equal_eager():
    rng = np.random.default_rng(6)
    phi, theta, r = (jnp.asarray(rng.uniform(lo, hi, NPTS)) for lo, hi in ((-1, 1), (-0.5, 0.5), (0.5, 10)))
    for model in STEERING_MODELS:
        eager = steering(GEOM, phi, theta, r, model=model)
        jitted = jax.jit(steering, static_argnames=("model",))(GEOM, phi, theta, r, model=model)
        vmapped = jax.jit(jax.vmap(lambda a, b, c: steering(GEOM, a, b, c, model=model)))(phi, theta, r)
        np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-12)
        np.testing.assert_allclose(vmapped, eager, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "phi, theta, r, model, name",
    [
        (0.1, 0.0, 0.0, "exact", "r"),
        (0.1, 0.0, -1.0, "exact", "r"),
        (0.1, 0.0, np.array([1.0, -2.0]), "fresnel", "r"),
        (np.nan, 0.0, 1.0, "exact", "phi"),
        (0.1, np.inf, 1.0, "far", "theta"),
        (0.1, 0.0, 1.0, "spherical", "model"),
    ],
)
def test_rejects_bad_input(phi, theta, r, model, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        steering(GEOM, phi, theta, r, model=model)
