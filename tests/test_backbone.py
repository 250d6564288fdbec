"""Backbone: shapes of both covariance variants, the beamspace front end against NumPy, the
data path against the measurement model, and the factor's normalisation and leash."""
import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rismvdr.models.backbone import Backbone, ModelConfig, backbone_config_for, beam_features
from rismvdr.models.params import split_model
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

SMALL = dict(widths=(8, 8, 8), groups=4, beam_phi_step_deg=10.0, beam_theta_step_deg=10.0, beam_planes=3)


@pytest.fixture(scope="module")
def scenes():
    return simulate(get_scenario("seed"), 3, 4)


def _np_steering(pos, lam, phi, theta, r):
    u = r * np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)])
    d = np.linalg.norm(u[None, :] - pos, axis=1)
    return np.exp(-1j * 2 * np.pi / lam * (d - r))


def test_beam_features_match_numpy_reference(scenes):
    cfg = backbone_config_for(get_scenario("seed"), **SMALL)
    grid = cfg.beam_grid()
    phi, theta, r = grid.arrays()
    pos = np.asarray(cfg.positions)
    a = np.array([[[_np_steering(pos, cfg.wavelength, p, t, rr) for rr in r] for p in phi] for t in theta])
    a_flat = a.reshape(-1, pos.shape[0])
    y, H, c = (np.asarray(x, np.complex128) for x in (scenes.y, scenes.H, scenes.codes))
    # Reference: G_l = H diag(c_l), xhat_l = G_l^H y_l, power = mean_l |a^H xhat_l|^2.
    ref = np.zeros((y.shape[0], a_flat.shape[0]))
    for b in range(y.shape[0]):
        for l in range(y.shape[1]):
            G = H[b] * c[b, l][None, :]
            xhat = G.conj().T @ y[b, l]
            ref[b] += np.abs(a_flat.conj() @ xhat) ** 2 / y.shape[1]
    t, p, rr = grid.shape
    ref = ref.reshape(-1, t, p, rr)
    ref = np.concatenate([ref, ref.max(-1, keepdims=True)], -1)
    ref = np.clip(10 * np.log10(ref / ref.max(axis=(1, 2, 3), keepdims=True)), -40, 0) / 10
    got = beam_features(jnp.asarray(y), jnp.asarray(H), jnp.asarray(c), jnp.asarray(a_flat), grid.shape)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-9)


def test_front_end_sees_the_full_channel(scenes):
    """The model's input reproduces the measurement model: y_l = H diag(c_l) x_l + n_l, so
    with a noise-free single source the feature map peaks at that source's cell."""
    cfg0 = get_scenario("seed", k_min=1, k_max=1, snr_db=(60.0, 60.0))
    sc = simulate(cfg0, 5, 2)
    cfg = backbone_config_for(cfg0, beam_phi_step_deg=2.0, beam_theta_step_deg=2.0, beam_planes=8)
    grid = cfg.beam_grid()
    from rismvdr.physics.spectra import grid_steering

    a = grid_steering(cfg.geometry(), grid, dtype=jnp.complex64).reshape(-1, cfg.n_elements)
    f = np.asarray(beam_features(sc.y, sc.H, sc.codes, a, grid.shape))[..., -1]  # plane max
    phi, theta, _ = grid.arrays()
    for b in range(2):
        ti, pi = np.unravel_index(np.argmax(f[b]), f[b].shape)
        assert abs(phi[pi] - float(sc.phi[b, 0])) <= np.deg2rad(2.0)
        assert abs(theta[ti] - float(sc.theta[b, 0])) <= np.deg2rad(2.0)


@pytest.mark.parametrize("covariance", ["structured", "factor"])
def test_backbone_shapes_and_normalisation(scenes, covariance):
    cfg = backbone_config_for(get_scenario("seed"), covariance=covariance, rank=4, **SMALL)
    model = Backbone(cfg, rngs=nnx.Rngs(0))
    out = model(scenes.y, scenes.H, scenes.codes)
    b, n = scenes.y.shape[0], cfg.n_elements
    t, p, _ = cfg.beam_grid().shape
    q = cfg.k_max if covariance == "structured" else 4
    chex.assert_shape(out.factor, (b, n, q))
    chex.assert_shape(out.heat, (b, t, p))
    chex.assert_shape([out.phi, out.theta, out.r, out.logit, out.power], (b, cfg.k_max))
    tr = np.sum(np.abs(np.asarray(out.factor)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(tr, n, rtol=1e-4)
    r = np.asarray(out.r)
    assert np.all((r >= cfg.r_m[0] - 1e-4) & (r <= cfg.r_m[1] + 1e-4))
    assert np.all(np.abs(np.asarray(out.phi)) <= np.deg2rad(60.0) + np.deg2rad(10.0))
    if covariance == "structured":  # columns are steering vectors of the slots
        from rismvdr.physics.steering import steering

        a = np.asarray(steering(cfg.geometry().astype(np.float32), out.phi, out.theta, out.r,
                                dtype=jnp.complex64))
        f = np.asarray(out.factor)
        for k in range(q):
            cos = np.abs(np.sum(np.conj(a[:, k]) * f[..., k], -1)) / (
                np.linalg.norm(a[:, k], axis=-1) * np.linalg.norm(f[..., k], axis=-1))
            np.testing.assert_allclose(cos, 1.0, atol=1e-4)


def test_blend_with_samp_factor(scenes):
    cfg = backbone_config_for(get_scenario("seed"), beta=0.25, **SMALL)
    model = Backbone(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="samp_factor"):
        model(scenes.y, scenes.H, scenes.codes)
    fs = jnp.ones((scenes.y.shape[0], cfg.n_elements, 2), jnp.complex64)
    out = model(scenes.y, scenes.H, scenes.codes, fs)
    f = np.asarray(out.factor)
    assert f.shape[-1] == cfg.k_max + 2
    # R_blend = 0.75 R_pred + 0.25 R_samp, each of trace N.
    e_pred = np.sum(np.abs(f[..., : cfg.k_max]) ** 2, axis=(1, 2))
    e_samp = np.sum(np.abs(f[..., cfg.k_max:]) ** 2, axis=(1, 2))
    np.testing.assert_allclose(e_pred, 0.75 * cfg.n_elements, rtol=1e-4)
    np.testing.assert_allclose(e_samp, 0.25 * cfg.n_elements, rtol=1e-4)


def test_leash_bounds_columns():
    from rismvdr.models.backbone import _leash

    f = jnp.asarray(np.array([[1e6, 1.0], [0.0, 1.0]], np.complex64))
    g = np.asarray(_leash(f, 10.0, 1e-6))
    assert np.linalg.norm(g[:, 0]) <= 10.0 + 1e-3
    np.testing.assert_allclose(g[:, 1], [1.0, 1.0])


def test_split_merge_jit_and_grads(scenes):
    cfg = backbone_config_for(get_scenario("seed"), **SMALL)
    mdef, params = split_model(Backbone(cfg, rngs=nnx.Rngs(0)))

    def loss(p):
        out = mdef.apply(p, scenes.y, scenes.H, scenes.codes)
        return jnp.mean(out.heat ** 2) + jnp.mean(jnp.abs(out.factor) ** 2 * out.r[:, None, :1])

    g = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(np.any(np.asarray(x) != 0) for x in leaves)


def test_config_round_trip_and_validation():
    from rismvdr.models.backbone import BackboneConfig

    cfg = backbone_config_for(get_scenario("seed"), **SMALL)
    assert BackboneConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain JSON types
    with pytest.raises(ValueError, match="covariance"):
        Backbone(cfg.__class__(**{**cfg.__dict__, "covariance": "dense"}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown"):
        BackboneConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="missing fields.*positions"):
        BackboneConfig.from_dict(ModelConfig().to_dict())
    geo = scenario_geometry(get_scenario("seed"))
    assert cfg.geometry().n_elements == geo.n_elements


def test_model_config_is_the_backbone_hyperparameters():
    """One representation: a `ModelConfig` sets every hyperparameter field of the backbone
    built from it; the scenario sets the shape."""
    model = ModelConfig(widths=(8, 16), groups=4, covariance="factor", rank=3, beta=0.25, beam_planes=3)
    assert ModelConfig.from_dict(model.to_dict()) == model
    cfg = backbone_config_for(get_scenario("seed"), model)
    assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)} == dataclasses.asdict(model)
    assert cfg.n_elements == scenario_geometry(get_scenario("seed")).n_elements
    assert backbone_config_for(get_scenario("seed"), model, rank=4).rank == 4
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**model.to_dict(), "positions": []})
    with pytest.raises(ValueError, match="beta"):
        ModelConfig(beta=2.0).validate()
