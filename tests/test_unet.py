"""U-Net and spectrum refiner: `match_spatial` against a NumPy reference, shapes on odd and tiny
grids, level invariance, non-finite inputs, per-example purity (GroupNorm), gradients through
the jitted split/merge pattern, and argument validation.

Cost note: most of the time is XLA compilation (parameter initialisers per kernel shape, one
program per grid). There are two models (a small `UNet` and the default-width refiner), each
applied through one jitted ``nnx.merge`` function, and the property tests share the shape
test's ``[2, 31, 61]`` grid so they reuse its compilation. The seed-size 181 x 361 grid runs
once per model, with batch 1 for the refiner.
"""
import doctest
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rismvdr.models import unet as unet_module
from rismvdr.models.unet import SpectrumRefiner, UNet, match_spatial

GRIDS = [(181, 361), (61, 41), (31, 61), (64, 64), (2, 3), (1, 1)]
GRID = (2, 31, 61)  # [B, H, W] of the property tests (compiled by the shape test already)

# Level invariance: |logits(x + c) - logits(x)| bound, by the input's dtype. A float32 input
# loses ~ulp(|x + c|) ~ 4e-6 dB to the shift itself; a float64 one only rounds on the cast.
LEVEL_ATOL = {jnp.float32: 1e-4, jnp.float64: 1e-5}


def _rngs(seed):
    """Test keys on the "rbg" PRNG: its initialisers compile ~4x faster on CPU than threefry's."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@pytest.fixture(scope="module")
def unet():
    model = UNet(3, 5, widths=(8, 16, 32), groups=4, rngs=_rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))  # the train-step pattern
    return model, apply, params


@pytest.fixture(scope="module")
def refiner():
    """Default widths. `apply` returns ``(logits, probabilities)`` from one compiled function."""
    model = SpectrumRefiner(rngs=_rngs(1))
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def apply(p, power_db):
        m = nnx.merge(graphdef, p)
        return m(power_db), m.probabilities(power_db)

    return model, apply, params


def _spectrum_db(key, batch, height, width, dtype=jnp.float32):
    """A peaky map in dB: three Gaussian blobs over a noise floor, peak level about -20 dB."""
    k_floor, k_peak = jax.random.split(key)
    power = 1e-3 * jax.random.uniform(k_floor, (batch, height, width), dtype=jnp.float64, minval=0.5)
    rows = jnp.arange(height, dtype=jnp.float64)[:, None]
    cols = jnp.arange(width, dtype=jnp.float64)[None, :]
    centres = jax.random.uniform(k_peak, (batch, 3, 2), dtype=jnp.float64)
    for j in range(3):
        r0 = centres[:, j, 0][:, None, None] * height
        c0 = centres[:, j, 1][:, None, None] * width
        power = power + jnp.exp(-((rows[None] - r0) ** 2 + (cols[None] - c0) ** 2) / 8.0)
    return (10.0 * jnp.log10(power) - 20.0).astype(dtype)


# --------------------------------------------------------------------------- match_spatial


def _match_spatial_reference(x, height, width):
    """Index arithmetic: output (i, j) reads input (i + oi, j + oj), zero outside the input."""
    x = np.asarray(x)
    h_in, w_in = x.shape[-3], x.shape[-2]

    def offset(size, target):  # crop: drop floor(d / 2) first; pad: add floor(d / 2) first
        return (size - target) // 2 if size >= target else -((target - size) // 2)

    src_i = np.arange(height) + offset(h_in, height)
    src_j = np.arange(width) + offset(w_in, width)
    valid = ((src_i >= 0) & (src_i < h_in))[:, None] & ((src_j >= 0) & (src_j < w_in))[None, :]
    taken = x[..., np.clip(src_i, 0, h_in - 1), :, :][..., np.clip(src_j, 0, w_in - 1), :]
    return np.where(valid[..., None], taken, 0)


@pytest.mark.parametrize("h_in,w_in", [(4, 5), (5, 4), (1, 1)])
@pytest.mark.parametrize(
    "height,width", [(4, 5), (2, 5), (1, 5), (4, 2), (4, 1), (7, 8), (6, 5), (4, 9), (3, 8), (1, 1)]
)
def test_match_spatial_matches_numpy_reference(h_in, w_in, height, width):
    x = np.arange(2 * h_in * w_in * 3, dtype=np.float32).reshape(2, h_in, w_in, 3) + 1.0
    got = match_spatial(jnp.asarray(x), height, width)
    chex.assert_shape(got, (2, height, width, 3))
    np.testing.assert_array_equal(np.asarray(got), _match_spatial_reference(x, height, width))


def test_match_spatial_extra_pixel_goes_at_the_end():
    x = jnp.arange(1, 6, dtype=jnp.float32).reshape(1, 5, 1, 1)
    np.testing.assert_array_equal(match_spatial(x, 2, 1)[0, :, 0, 0], [2.0, 3.0])  # drop 1 first, 2 last
    np.testing.assert_array_equal(match_spatial(x, 8, 1)[0, :, 0, 0], [0, 1, 2, 3, 4, 5, 0, 0])


def test_match_spatial_pad_then_crop_is_identity_and_jits():
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3), dtype=jnp.float32)
    padded = jax.jit(match_spatial, static_argnums=(1, 2))(x, 8, 9)
    np.testing.assert_array_equal(match_spatial(padded, 5, 6), x)
    chex.assert_shape(match_spatial(x[0], 3, 3), (3, 3, 3))  # leading axes are free


def test_match_spatial_validates_arguments():
    with pytest.raises(ValueError, match="^height"):
        match_spatial(jnp.zeros((1, 2, 2, 1)), 0, 2)
    with pytest.raises(ValueError, match="^width"):
        match_spatial(jnp.zeros((1, 2, 2, 1)), 2, 1.5)
    with pytest.raises(ValueError, match="^x"):
        match_spatial(jnp.zeros((2, 2)), 2, 2)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("height,width", GRIDS)
def test_unet_shapes_on_any_grid(unet, height, width):
    _, apply, params = unet
    x = jax.random.normal(jax.random.key(height * 1000 + width), (2, height, width, 3), dtype=jnp.float32)
    y = apply(params, x)
    chex.assert_shape(y, (2, height, width, 5))
    chex.assert_type(y, jnp.float32)
    chex.assert_tree_all_finite(y)


@pytest.mark.parametrize("height,width", GRIDS)
def test_refiner_shapes_and_probabilities_on_any_grid(refiner, height, width):
    _, apply, params = refiner
    batch = 1 if height * width > 10_000 else 2
    power_db = _spectrum_db(jax.random.key(height + width), batch, height, width)
    logits, prob = apply(params, power_db)
    chex.assert_shape([logits, prob], (batch, height, width))
    chex.assert_type([logits, prob], jnp.float32)
    chex.assert_tree_all_finite(logits)
    assert np.all((np.asarray(prob) > 0.0) & (np.asarray(prob) < 1.0))
    np.testing.assert_allclose(prob, jax.nn.sigmoid(logits), rtol=1e-6, atol=0)


def test_refiner_initial_map_is_sparse(refiner):
    model, apply, params = refiner
    np.testing.assert_allclose(model.unet.head.bias[...], [math.log(0.01 / 0.99)], rtol=1e-6)
    _, prob = apply(params, _spectrum_db(jax.random.key(3), *GRID))
    assert float(jnp.median(prob)) < 0.1


def test_parameter_count_and_dtype(refiner):
    model, _, params = refiner
    leaves = jax.tree.leaves(params)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    # 3x3 convs without bias, GroupNorm scale + bias after each, 1x1 head with bias.
    convs = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128),  # encoder
             (128, 128), (128, 128),  # dilated bottleneck
             (128 + 64, 64), (64, 64), (64 + 32, 32), (32, 32)]  # decoder
    expected = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out in convs) + 32 + 1
    assert sum(leaf.size for leaf in leaves) == expected == 767_041
    # The model holds nothing but parameters: no batch statistics, no RNG state.
    assert jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))) == []


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_refiner_is_invariant_to_the_absolute_level(refiner, dtype):
    _, apply, params = refiner
    power_db = _spectrum_db(jax.random.key(4), *GRID, dtype=jnp.float64)
    base, _ = apply(params, power_db.astype(dtype))
    for shift_db in (37.25, -61.5):
        shifted, _ = apply(params, (power_db + shift_db).astype(dtype))
        np.testing.assert_allclose(shifted, base, rtol=0, atol=LEVEL_ATOL[dtype])


def test_refiner_maps_non_finite_entries_to_the_floor(refiner):
    _, apply, params = refiner
    power_db = _spectrum_db(jax.random.key(5), *GRID)
    cells = ((0, 3, 4), (1, 10, 20), (1, 0, 0))
    bad = power_db
    floor = power_db  # equivalent finite input: far below the peak, so clipped to -40 dB
    for cell, value in zip(cells, (-jnp.inf, jnp.nan, jnp.inf)):
        bad, floor = bad.at[cell].set(value), floor.at[cell].set(-500.0)
    got, _ = apply(params, bad)
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(got, apply(params, floor)[0], rtol=0, atol=1e-6)


def test_examples_are_independent_of_the_batch(unet):
    """GroupNorm has no batch statistics: an example's output ignores its batch mates."""
    _, apply, params = unet
    x = jax.random.normal(jax.random.key(6), (2, 31, 61, 3), dtype=jnp.float32)
    np.testing.assert_allclose(apply(params, x[:1]), apply(params, x)[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height,width", [(31, 61), (1, 1)])
def test_gradients_through_split_merge_are_finite_and_nonzero(refiner, height, width):
    model, _, params = refiner
    graphdef = nnx.graphdef(model)
    power_db = _spectrum_db(jax.random.key(7), 2, height, width)
    target = jnp.zeros((2, height, width), dtype=jnp.float32).at[:, 0, 0].set(1.0)

    @jax.jit
    def loss_and_grad(p, x, y):
        def loss(p):  # binary cross-entropy on logits (the loss itself lives elsewhere)
            logits = nnx.merge(graphdef, p)(x)
            return jnp.mean(jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits))))

        return jax.value_and_grad(loss)(p)

    value, grads = loss_and_grad(params, power_db, target)
    assert np.isfinite(float(value))
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_equal_structs(grads, params)
    if height * width > 1:  # every parameter array takes part in the output
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert float(jnp.max(jnp.abs(g))) > 0.0, jax.tree_util.keystr(path)
    else:  # a 1 x 1 map is constant after normalisation; gradients must still be finite
        assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(in_features=0), "in_features"),
        (dict(out_features=-1), "out_features"),
        (dict(in_features=True), "in_features"),
        (dict(widths=()), "widths"),
        (dict(widths=(8, 0)), "widths"),
        (dict(widths=(8.0, 16)), "widths"),
        (dict(widths=16), "widths"),
        (dict(dilations=()), "dilations"),
        (dict(dilations=(2, 0)), "dilations"),
        (dict(groups=0), "groups"),
        (dict(widths=(8, 12), groups=8), "groups"),
    ],
)
def test_unet_rejects_bad_arguments(kwargs, name):
    args = dict(in_features=1, out_features=1, widths=(8, 16), groups=4) | kwargs
    in_features, out_features = args.pop("in_features"), args.pop("out_features")
    with pytest.raises(ValueError, match=f"^{name}"):
        UNet(in_features, out_features, **args, rngs=nnx.Rngs(0))


def test_refiner_rejects_bad_arguments_and_inputs(refiner):
    with pytest.raises(ValueError, match="^groups"):
        SpectrumRefiner(groups=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="^widths"):
        SpectrumRefiner(widths=(), rngs=nnx.Rngs(0))
    model, _, _ = refiner
    with pytest.raises(ValueError, match="^power_db"):
        model(jnp.zeros((31, 61)))
    with pytest.raises(ValueError, match="^x"):
        model.unet(jnp.zeros((1, 4, 4, 2)))


def test_multichannel_refiner_normalises_each_map_and_checks_channels():
    """A two-map refiner: each channel is normalised to its own peak (shifting one map's level
    changes nothing), and a one-map refiner reads `[B, H, W]` and `[B, H, W, 1]` alike."""
    model = SpectrumRefiner(widths=(8, 16), groups=4, in_channels=2, rngs=_rngs(2))
    x = jnp.stack([_spectrum_db(jax.random.key(8), 2, 9, 13, dtype=jnp.float64),
                   _spectrum_db(jax.random.key(9), 2, 9, 13, dtype=jnp.float64)], axis=-1)
    base = model(x)
    assert base.shape == (2, 9, 13) and base.dtype == jnp.float32
    shifted = model(x + jnp.asarray([12.5, -40.0])[None, None, None, :])
    np.testing.assert_allclose(shifted, base, rtol=0, atol=LEVEL_ATOL[jnp.float64])
    assert not np.allclose(model(x.at[..., 1].set(x[:, ::-1, :, 1])), base)  # the second map matters
    with pytest.raises(ValueError, match="^power_db"):
        model(x[..., 0])
    with pytest.raises(ValueError, match="^in_channels"):
        SpectrumRefiner(in_channels=0, rngs=nnx.Rngs(0))
    one = SpectrumRefiner(widths=(8, 16), groups=4, rngs=_rngs(3))
    np.testing.assert_array_equal(one(x[..., :1]), one(x[..., 0]))


def test_docstring_examples():
    # The examples' keys on the cheaper-to-compile "rbg" PRNG (see `_rngs`); shapes don't care.
    with jax.default_prng_impl("rbg"):
        failures, _ = doctest.testmod(unet_module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_unet_accepts_numpy_integers():
    model = UNet(
        np.int64(1), 2, widths=np.array([4, 8]), dilations=(np.int32(2),), groups=np.int64(4), rngs=_rngs(3)
    )
    assert model.widths == (4, 8) and type(model.groups) is int
