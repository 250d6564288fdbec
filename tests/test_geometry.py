"""Array geometry (conventions section 1): element ordering and coordinates, linear flag, pytree, errors.

References are written here from the formulas of the conventions (docs/conventions.md) in float64 NumPy; the library is not called
to build them. Constructors do arithmetic identical to the formulas on float64, so positions are
compared with a tolerance of a few ulps.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.physics.geometry import ArrayGeometry, from_positions, ula, upa

ATOL_POS = 1e-15  # metres; float64 positions built from the same closed form


def _upa_reference(nh, nv, spacing_h, spacing_v):
    """conventions section 1: element n = v*nh + h at (0, (h-(nh-1)/2) sh, (v-(nv-1)/2) sv)."""
    pos = np.zeros((nh * nv, 3))
    for v in range(nv):
        for h in range(nh):
            n = v * nh + h
            pos[n] = (0.0, (h - (nh - 1) / 2) * spacing_h, (v - (nv - 1) / 2) * spacing_v)
    return pos


@pytest.mark.parametrize("nh, nv, sh, sv", [(3, 4, 0.1, 0.2), (12, 12, 0.15, 0.15), (5, 1, 0.3, 0.07)])
def test_upa_ordering_and_coordinates(nh, nv, sh, sv):
    g = upa(nh, nv, sh, sv, wavelength=0.3)
    assert isinstance(g, ArrayGeometry)
    assert np.asarray(g.positions).shape == (nh * nv, 3)
    assert np.asarray(g.positions).dtype == np.float64
    np.testing.assert_allclose(np.asarray(g.positions), _upa_reference(nh, nv, sh, sv), rtol=0, atol=ATOL_POS)
    np.testing.assert_allclose(np.mean(np.asarray(g.positions), axis=0), 0.0, atol=1e-15)  # centred
    assert g.n_elements == nh * nv
    assert float(g.wavelength) == 0.3


def test_upa_element_index_is_v_major():
    # Non-square, unequal spacings: a transposed layout (n = h*nv + v) would fail here.
    g = upa(3, 2, 0.1, 0.5, wavelength=0.3)
    p = np.asarray(g.positions)
    np.testing.assert_allclose(p[1], [0.0, 0.0, -0.25], atol=ATOL_POS)  # v = 0, h = 1
    np.testing.assert_allclose(p[3], [0.0, -0.1, 0.25], atol=ATOL_POS)  # v = 1, h = 0


def test_ula_along_y_centred():
    for n, d in [(5, 0.15), (8, 0.1)]:
        g = ula(n, d, wavelength=0.3)
        p = np.asarray(g.positions)
        want = np.stack([np.zeros(n), (np.arange(n) - (n - 1) / 2) * d, np.zeros(n)], axis=-1)
        np.testing.assert_allclose(p, want, rtol=0, atol=ATOL_POS)
        assert g.linear


def test_from_positions_keeps_positions_as_given():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(7, 3)) + np.array([3.0, -2.0, 1.0])  # far from centred
    g = from_positions(pos, 0.3)
    np.testing.assert_array_equal(np.asarray(g.positions), pos)  # no re-centring, no rounding
    assert not g.linear


def test_linear_flag():
    assert not upa(4, 3, 0.15, 0.15, wavelength=0.3).linear
    assert ula(6, 0.15, wavelength=0.3).linear
    # Collinear custom positions along y, off the origin.
    t = np.linspace(-1.0, 2.0, 6)[:, None]
    line = np.array([0.5, 0.2, -0.1]) + t * np.array([0.0, 0.6, 0.0])
    assert from_positions(line, 0.3).linear
    assert from_positions(line[:2], 0.3).linear  # two points are always on one line
    bent = line.copy()
    bent[3] += np.array([0.0, 0.0, 1e-3])
    assert not from_positions(bent, 0.3).linear


@pytest.mark.parametrize("direction", [(0.3, 0.6, -0.2), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)])
def test_a_line_off_the_y_axis_is_refused(direction):
    """Only a line along y leaves elevation known (conventions section 1); another line resolves
    the cone angle to itself, which no grid here describes: refused, naming the direction."""
    t = np.linspace(-1.0, 2.0, 6)[:, None]
    line = np.array([0.5, 0.2, -0.1]) + t * np.asarray(direction)
    with pytest.raises(ValueError, match=r"^positions: a linear array must lie along y"):
        from_positions(line, 0.3)


def test_derived_quantities():
    g = upa(12, 12, 0.15, 0.15, wavelength=0.3)
    d = np.sqrt(2.0) * 11 * 0.15  # corner to corner
    assert g.aperture == pytest.approx(d, rel=1e-12)
    assert g.fraunhofer_distance() == pytest.approx(2 * d**2 / 0.3, rel=1e-12)
    assert float(g.wavenumber) == pytest.approx(2 * np.pi / 0.3, rel=1e-15)
    g32 = g.astype(np.float32)
    assert np.asarray(g32.positions).dtype == np.float32 and g32.linear == g.linear


def test_pytree_round_trip_and_jit():
    g = upa(3, 2, 0.1, 0.2, wavelength=0.3)
    leaves, treedef = jax.tree_util.tree_flatten(g)
    assert len(leaves) == 2  # positions, wavelength; `linear` is static metadata
    g2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(g2, ArrayGeometry) and g2.linear == g.linear
    np.testing.assert_array_equal(np.asarray(g2.positions), np.asarray(g.positions))

    lin = ula(4, 0.15, wavelength=0.3)
    assert jax.tree_util.tree_structure(lin) != treedef  # linear flag is part of the treedef

    out = jax.jit(lambda geom: geom)(g)
    assert isinstance(out, ArrayGeometry) and out.linear is False
    np.testing.assert_array_equal(np.asarray(out.positions), np.asarray(g.positions))
    assert float(out.wavelength) == 0.3

    # A geometry is a traced argument: one compiled function serves two geometries of equal shape.
    @jax.jit
    @chex.assert_max_traces(n=1)
    def first_coord(geom, scale):
        return geom.positions[:, 1] * scale + geom.wavelength

    np.testing.assert_allclose(first_coord(g, 2.0), np.asarray(g.positions)[:, 1] * 2 + 0.3)
    g_shift = from_positions(np.asarray(g.positions) + 1.0, 0.5)
    np.testing.assert_allclose(first_coord(g_shift, 2.0), (np.asarray(g.positions)[:, 1] + 1) * 2 + 0.5)
    assert jnp.asarray(out.positions).dtype == jnp.float64


@pytest.mark.parametrize(
    "positions, name",
    [
        (np.zeros((4, 2)), "positions"),  # wrong trailing dimension
        (np.zeros(3), "positions"),  # not [N, 3]
        (np.zeros((0, 3)), "positions"),  # empty
        (np.array([[0.0, 0.0, 0.0], [0.0, np.nan, 0.0]]), "positions"),
        (np.array([[0.0, 0.1, 0.0], [0.0, 0.2, 0.0], [0.0, 0.1, 0.0]]), "positions"),  # duplicate
    ],
)
def test_from_positions_rejects_bad_positions(positions, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        from_positions(positions, 0.3)


@pytest.mark.parametrize("wavelength", [0.0, -0.3, np.nan, np.inf])
def test_rejects_bad_wavelength(wavelength):
    with pytest.raises(ValueError, match=r"^wavelength:"):
        from_positions(np.zeros((1, 3)), wavelength)
    with pytest.raises(ValueError, match=r"^wavelength:"):
        upa(2, 2, 0.15, 0.15, wavelength=wavelength)
    with pytest.raises(ValueError, match=r"^wavelength:"):
        ula(3, 0.15, wavelength=wavelength)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: upa(2, 2, 0.0, 0.15, wavelength=0.3), "spacing_h"),
        (lambda: upa(2, 2, 0.15, -0.1, wavelength=0.3), "spacing_v"),
        (lambda: upa(2, 2, np.nan, 0.15, wavelength=0.3), "spacing_h"),
        (lambda: ula(3, 0.0, wavelength=0.3), "spacing"),
        (lambda: ula(3, -1.0, wavelength=0.3), "spacing"),
        (lambda: upa(0, 2, 0.15, 0.15, wavelength=0.3), "nh"),
        (lambda: ula(0, 0.15, wavelength=0.3), "n"),
    ],
)
def test_constructors_reject_bad_arguments(build, name):
    with pytest.raises(ValueError, match=rf"^{name}[:,]"):
        build()
