"""U-Net image model and the spectrum refiner built on it (Flax NNX; models only).

Architecture of `UNet` (``widths = (w_0, ..., w_{L-1})``, NHWC layout, ``[B, H, W, C]``):

* **Encoder**, one stage per width: two 3 x 3 convolutions, each followed by GroupNorm and
  SiLU. Between stages a 2 x 2 max pool with stride 2 and ``"SAME"`` padding halves the grid,
  rounding up (``H -> ceil(H / 2)``), so any ``H, W >= 1`` is accepted (a 1 x 1 map stays
  1 x 1). The output of every stage but the last is kept as a skip connection.
* **Bottleneck** at ``w_{L-1}``: one 3 x 3 convolution (+ GroupNorm + SiLU) per entry of
  `dilations`, with that kernel dilation (default 2 then 4), which widens the receptive field
  without further downsampling.
* **Decoder**, for ``l = L-2, ..., 0``: nearest-neighbour upsampling by 2, then
  `match_spatial` to the skip's exact ``(H_l, W_l)`` (the upsampled map is ``2 ceil(H_l / 2)``
  tall, one row too many for odd ``H_l``; the extra row/column sits at the end, where the
  ``"SAME"`` pool put its padding, so the crop keeps the pixels aligned), concatenation with
  the skip, and two 3 x 3 convolutions (+ GroupNorm + SiLU) to ``w_l``.
* **Head**: a 1 x 1 convolution to `out_features` (no activation).

Normalisation is GroupNorm instead of the seed system's BatchNorm: GroupNorm normalises each
example over (pixels, channels of a group), so it keeps no running batch statistics. The model
is then a pure function of its `nnx.Param`s: the same output in training and inference, for
any batch size (including 1), and usable inside a functional jitted train step via
``nnx.split`` / ``nnx.merge`` without threading mutable state.

`SpectrumRefiner` wraps a `UNet` with `in_channels` maps in (one by default) and one channel out
(default widths 32, 64, 128; dilations 2, 4): it normalises each spectrum in dB to its own peak
(level invariant, -40 dB floor) and returns logits of a per-cell source probability map.

All parameters and activations are float32, whatever the input dtype (tests enable x64).

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> model = SpectrumRefiner(widths=(8, 16), groups=4, rngs=nnx.Rngs(0))
>>> model(jnp.zeros((2, 31, 61))).shape
(2, 31, 61)
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["UNet", "SpectrumRefiner", "match_spatial"]

_DTYPE = jnp.float32
# SpectrumRefiner input: dB relative to the map's peak, divided by this and clipped to
# [_FLOOR, 0]; the floor (-4 -> -40 dB) is also the value given to non-finite entries.
_DB_SCALE = 10.0
_FLOOR = -4.0
# Final-conv bias: logit of a 1 % prior, so the initial probability map is sparse.
_PRIOR_PROBABILITY = 0.01
_PRIOR_LOGIT = math.log(_PRIOR_PROBABILITY / (1.0 - _PRIOR_PROBABILITY))  # about -4.595


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_positive_int(name: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _check_int_tuple(name: str, values) -> tuple[int, ...]:
    try:
        items = () if isinstance(values, (str, bytes)) else tuple(values)
    except TypeError:  # not iterable
        items = ()
    if not items or not all(_is_int(v) and v >= 1 for v in items):
        raise ValueError(f"{name}: expected a non-empty sequence of positive ints, got {values!r}")
    return tuple(int(v) for v in items)


def match_spatial(x: jax.Array, height: int, width: int) -> jax.Array:
    """Centre-crops or zero-pads the spatial axes of `x` to exactly `height` x `width`.

    Each spatial axis is handled on its own. When it is longer than the target by ``d``,
    ``d // 2`` entries are dropped at the start and ``d - d // 2`` at the end; when it is
    shorter by ``d``, ``d // 2`` zeros are added at the start and ``d - d // 2`` at the end.
    With an odd difference the extra pixel is therefore always at the end (so padding then
    cropping back is the identity).

    Args:
      x: ``[..., H, W, C]`` array (NHWC: the spatial axes are -3 and -2).
      height: target ``H'`` (>= 1).
      width: target ``W'`` (>= 1).

    Returns:
      ``[..., height, width, C]`` array of `x`'s dtype.

    Raises:
      ValueError: if `x` has fewer than 3 dimensions or a target size is not a positive int.

    >>> import jax.numpy as jnp
    >>> match_spatial(jnp.ones((1, 5, 4, 2)), 3, 7).shape
    (1, 3, 7, 2)
    """
    if jnp.ndim(x) < 3:
        raise ValueError(f"x: expected [..., H, W, C] (>= 3 dimensions), got shape {jnp.shape(x)}")
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    x = jnp.asarray(x)
    for axis, target in ((x.ndim - 3, height), (x.ndim - 2, width)):
        size = x.shape[axis]
        if size > target:
            start = (size - target) // 2
            x = jax.lax.slice_in_dim(x, start, start + target, axis=axis)
        elif size < target:
            pad = [(0, 0)] * x.ndim
            before = (target - size) // 2
            pad[axis] = (before, target - size - before)
            x = jnp.pad(x, pad)
    return x


def _max_pool_2x(x: jax.Array) -> jax.Array:
    """2 x 2 max pool, stride 2, "SAME": ``[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]``."""
    return jax.lax.reduce_window(
        x, np.array(-np.inf, x.dtype), jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME"
    )


def _upsample_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour upsampling: ``[B, H, W, C] -> [B, 2H, 2W, C]``."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class _ConvNormAct(nnx.Module):
    """3 x 3 convolution (optionally dilated), GroupNorm, SiLU.

    ``[B, H, W, C_in] -> [B, H, W, C_out]``.
    """

    def __init__(
        self, in_features: int, out_features: int, *, dilation: int = 1, groups: int, rngs: nnx.Rngs
    ):
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size=(3, 3),
            padding="SAME",
            kernel_dilation=(dilation, dilation),
            use_bias=False,  # GroupNorm's bias follows
            dtype=_DTYPE,
            param_dtype=_DTYPE,
            rngs=rngs,
        )
        self.norm = nnx.GroupNorm(
            out_features, num_groups=groups, dtype=_DTYPE, param_dtype=_DTYPE, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(self.norm(self.conv(x)))


class _DoubleConv(nnx.Module):
    """Two `_ConvNormAct` blocks: ``[B, H, W, C_in] -> [B, H, W, C_out]``."""

    def __init__(self, in_features: int, out_features: int, *, groups: int, rngs: nnx.Rngs):
        self.first = _ConvNormAct(in_features, out_features, groups=groups, rngs=rngs)
        self.second = _ConvNormAct(out_features, out_features, groups=groups, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.second(self.first(x))


class UNet(nnx.Module):
    """U-Net over an image: ``[B, H, W, C_in] -> [B, H, W, C_out]`` for any ``H, W >= 1``.

    See the module docstring for the architecture. Stateless apart from `nnx.Param`s (GroupNorm,
    no batch statistics), so ``nnx.split(model, nnx.Param)`` captures the whole model.

    Args:
      in_features: input channels ``C_in``.
      out_features: output channels ``C_out``.
      widths: channels of the encoder stages, finest first; ``len(widths) - 1`` downsamplings.
      dilations: kernel dilation of each bottleneck convolution (one convolution per entry).
      groups: GroupNorm groups; must divide every entry of `widths`.
      rngs: parameter initialisation keys.

    Raises:
      ValueError: on a non-positive feature count, empty or non-positive `widths` or
        `dilations`, or `groups` not dividing every width.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        widths: tuple[int, ...] = (32, 64, 128),
        dilations: tuple[int, ...] = (2, 4),
        groups: int = 8,
        rngs: nnx.Rngs,
    ):
        in_features = _check_positive_int("in_features", in_features)
        out_features = _check_positive_int("out_features", out_features)
        widths = _check_int_tuple("widths", widths)
        dilations = _check_int_tuple("dilations", dilations)
        groups = _check_positive_int("groups", groups)
        if any(w % groups for w in widths):
            raise ValueError(f"groups: must divide every entry of widths {widths}, got {groups}")
        self.in_features = in_features
        self.out_features = out_features
        self.widths = widths
        self.dilations = dilations
        self.groups = groups

        self.encoder = nnx.List(
            [
                _DoubleConv(c_in, c_out, groups=groups, rngs=rngs)
                for c_in, c_out in zip((in_features,) + widths[:-1], widths)
            ]
        )
        self.bottleneck = nnx.List(
            [_ConvNormAct(widths[-1], widths[-1], dilation=d, groups=groups, rngs=rngs) for d in dilations]
        )
        # decoder[i] produces widths[-2 - i] from upsampled widths[-1 - i] + skip widths[-2 - i].
        self.decoder = nnx.List(
            [
                _DoubleConv(coarse + fine, fine, groups=groups, rngs=rngs)
                for coarse, fine in zip(widths[:0:-1], widths[-2::-1])
            ]
        )
        self.head = nnx.Conv(
            widths[0], out_features, kernel_size=(1, 1), dtype=_DTYPE, param_dtype=_DTYPE, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the U-Net.

        Args:
          x: ``[B, H, W, C_in]`` image (cast to float32).

        Returns:
          ``[B, H, W, C_out]`` float32 output (no final activation).
        """
        if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != self.in_features:
            raise ValueError(f"x: expected shape [B, H, W, {self.in_features}], got {jnp.shape(x)}")
        x = jnp.asarray(x, _DTYPE)
        skips = []
        for level, stage in enumerate(self.encoder):
            if level:
                x = _max_pool_2x(x)
            x = stage(x)
            skips.append(x)
        skips.pop()  # the coarsest stage feeds the bottleneck, not a skip
        for block in self.bottleneck:
            x = block(x)
        for block in self.decoder:
            skip = skips.pop()
            x = match_spatial(_upsample_2x(x), skip.shape[1], skip.shape[2])
            x = block(jnp.concatenate([x, skip], axis=-1))
        return self.head(x)


class SpectrumRefiner(nnx.Module):
    """Spectrum refiner: a U-Net from spectra in dB to source-probability logits.

    The seed system's refiner (U-Net 1 -> 32 -> 64 -> 128 channels, dilated bottleneck
    d = 2, 4, decoder with skip connections, sigmoid output), with GroupNorm for BatchNorm.
    With ``in_channels > 1`` it reads several maps of the same grid at once (e.g. the learned
    covariance's MVDR map beside spectra of the measurements themselves).

    The input is normalised inside the model, per map and channel::

        x = clip((power_db - max_{H, W} power_db) / 10, -4, 0)

    so the output does not depend on a map's absolute level (a constant added in dB cancels)
    and everything 40 dB or more below the peak is flattened to the -4 floor. Non-finite
    entries (e.g. ``10 log10(0) = -inf``) are set to the floor and ignored by the maximum.

    The output is logits; the final convolution's bias starts at ``logit(0.01) ~ -4.6``
    (prior probability 0.01 per cell), so the initial probability map is sparse, as the
    targets are, and early training is not dominated by the many empty cells.

    Args:
      widths: U-Net stage widths, finest first.
      dilations: bottleneck kernel dilations.
      groups: GroupNorm groups; must divide every width.
      in_channels: input maps per scene (>= 1).
      rngs: parameter initialisation keys.

    Raises:
      ValueError: as `UNet`, or `in_channels < 1`.
    """

    def __init__(
        self,
        *,
        widths: tuple[int, ...] = (32, 64, 128),
        dilations: tuple[int, ...] = (2, 4),
        groups: int = 8,
        in_channels: int = 1,
        rngs: nnx.Rngs,
    ):
        if int(in_channels) != in_channels or in_channels < 1:
            raise ValueError(f"in_channels: must be an integer >= 1, got {in_channels!r}")
        self.in_channels = int(in_channels)
        self.unet = UNet(self.in_channels, 1, widths=widths, dilations=dilations, groups=groups, rngs=rngs)
        self.unet.head.bias[...] = jnp.full(self.unet.head.bias.shape, _PRIOR_LOGIT, _DTYPE)

    def __call__(self, power_db: jax.Array) -> jax.Array:
        """Logits of the source-probability map.

        Args:
          power_db: ``[B, H, W]`` spectrum in dB (one channel), or ``[B, H, W, C]`` with
            ``C = in_channels`` maps (any absolute level per map; any float dtype).

        Returns:
          ``[B, H, W]`` float32 logits.
        """
        power_db = jnp.asarray(power_db)
        if jnp.ndim(power_db) == 3 and self.in_channels == 1:
            power_db = power_db[..., None]
        if jnp.ndim(power_db) != 4 or power_db.shape[-1] != self.in_channels:
            want = "[B, H, W] or [B, H, W, 1]" if self.in_channels == 1 else f"[B, H, W, {self.in_channels}]"
            raise ValueError(f"power_db: expected shape {want}, got {jnp.shape(power_db)}")
        if not jnp.issubdtype(power_db.dtype, jnp.floating):
            power_db = power_db.astype(_DTYPE)
        finite = jnp.isfinite(power_db)
        peak = jnp.max(jnp.where(finite, power_db, -jnp.inf), axis=(1, 2), keepdims=True)
        # Subtract the peak in the input's precision, then drop to float32.
        relative = jnp.where(finite, power_db - peak, 0.0)
        x = jnp.where(finite, jnp.clip(relative / _DB_SCALE, _FLOOR, 0.0), _FLOOR).astype(_DTYPE)
        return self.unet(x)[..., 0]

    def probabilities(self, power_db: jax.Array) -> jax.Array:
        """Source-probability map ``sigmoid(self(power_db))``: ``[B, H, W]`` in (0, 1), float32."""
        return jax.nn.sigmoid(self(power_db))
