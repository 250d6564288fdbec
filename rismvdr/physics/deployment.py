"""Deployments, RIS hardware and impairments (conventions section 9).

A deployment is one installed surface and base station. Its BS-RIS channel is fixed across
the scenes of that deployment and known to the receiver, up to an estimation error:

- `los_channel`: the spherical-wave line-of-sight channel from the BS elements to the surface,
  `H[m, n] = exp(-1j k |b_m - p_n|) / |b_m - p_n|`, scaled so that `mean |H|^2 = 1/N` (the
  same average gain as the i.i.d. channel).
- `rician`: `sqrt(kf / (1 + kf)) H_los + sqrt(1 / (1 + kf)) H_iid`.
- `quantize_phases`, `quantize_codes`: a b-bit surface rounds each code phase to the nearest
  multiple of `2 pi / 2^b` (`b = 0`: continuous).
- `noise_floor`: the deployment's fixed noise power, from the SNR of a reference
  configuration (random continuous codes, averaged over codes, symbols and positions).
- `deployment`: everything fixed per deployment (true and believed channel, the surface's
  static phase errors and failed elements), a pure function of the config.

Host-side NumPy in float64: a deployment is computed once, then passed to jitted code.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.physics.scenarios import SceneConfig, bs_positions, scenario_geometry

__all__ = ["Deployment", "deployment", "los_channel", "quantize_phases", "quantize_codes", "noise_floor",
           "reference_power", "DEPLOYMENT_STREAMS"]

#: Sub-streams of a deployment's seed (`numpy.random.SeedSequence(seed).spawn` order).
DEPLOYMENT_STREAMS = ("channel", "phase_error", "failure", "channel_error")


def los_channel(surface: np.ndarray, bs: np.ndarray, wavelength: float) -> np.ndarray:
    """Spherical-wave line-of-sight channel `[M, N]` complex128 (conventions section 9).

    Args:
      surface: `[N, 3]` surface element positions, metres.
      bs: `[M, 3]` BS element positions, metres (same frame).
      wavelength: metres.

    Returns:
      `H[m, n] = c exp(-1j k d_mn) / d_mn`, `d_mn = |b_m - p_n|`, with `c` such that
      `mean |H|^2 = 1/N`.
    """
    surface = np.asarray(surface, np.float64)
    bs = np.asarray(bs, np.float64)
    d = np.linalg.norm(bs[:, None, :] - surface[None, :, :], axis=-1)
    if np.min(d) <= 0:
        raise ValueError("bs: a BS element coincides with a surface element")
    h = np.exp(-2j * np.pi / float(wavelength) * d) / d
    n = surface.shape[0]
    return h / np.sqrt(np.mean(np.abs(h) ** 2) * n)


def quantize_phases(phases, bits: int):
    """Round phases (radians) to the nearest multiple of `2 pi / 2^bits`, in `[0, 2 pi)`.

    `bits = 0` returns the phases unchanged. Works on NumPy and JAX arrays (and under jit:
    `bits` is a Python int). Ties round half to even (`round`).
    """
    if int(bits) < 0:
        raise ValueError(f"code_bits: expected an integer >= 0, got {bits!r}")
    if int(bits) == 0:
        return phases
    levels = 2 ** int(bits)
    step = 2.0 * np.pi / levels
    xp = _namespace(phases)
    idx = xp.round(phases / step) % levels
    return idx * step


def quantize_codes(codes, bits: int):
    """Unit-modulus codes with their phases rounded to `bits` bits (`bits = 0`: unchanged)."""
    if int(bits) == 0:
        return codes
    xp = _namespace(codes)
    ph = quantize_phases(xp.angle(codes), bits)
    return (xp.cos(ph) + 1j * xp.sin(ph)).astype(codes.dtype)


def _namespace(a):
    return jnp if isinstance(a, jax.Array) else np


def reference_power(H: np.ndarray, total_power) -> np.ndarray:
    """Mean received signal power per BS antenna with random continuous codes.

    For unit-modulus steering vectors and codes of independent uniform phases,
    `E |[H diag(c) x]_m|^2 = sum_n |H_mn|^2 E|x_n|^2` and `E|x_n|^2 = sum_k p_k`, whatever the
    positions: the reference is `sum_k p_k * ||H||_F^2 / M` (`sum_k p_k` with the normalised
    channels, whose `||H||_F^2 = M` on average).

    Args:
      H: `[..., M, N]` channel.
      total_power: `[...]` sum of the sources' powers (linear).
    """
    H = np.asarray(H)
    m = H.shape[-2]
    return np.asarray(total_power) * np.sum(np.abs(H) ** 2, axis=(-2, -1)) / m


def noise_floor(H: np.ndarray, total_power, snr_db) -> np.ndarray:
    """A deployment's noise power `sigma^2`: the reference power over `10^(SNR/10)`."""
    return reference_power(H, total_power) / 10.0 ** (np.asarray(snr_db, np.float64) / 10.0)


@dataclasses.dataclass(frozen=True)
class Deployment:
    """What a deployment fixes across its scenes (NumPy, float64 / complex128).

    Attributes:
      H_true: `[M, N]` the channel that generates `y`, or None when the channel is drawn per
        scene (`channel='iid'` without a deployment seed).
      H_known: `[M, N]` the channel the receiver believes (stored in the scene file): `H_true`
        plus the estimation error of `channel_nmse_db`, or None as `H_true`.
      phase_error: `[N]` static phase offset of each element, radians (0 when off).
      failed: `[N]` bool, elements stuck at one phase whatever the code.
      stuck_phase: `[N]` the phase a failed element reflects with, radians (0 where not failed).
    """

    H_true: np.ndarray | None
    H_known: np.ndarray | None
    phase_error: np.ndarray
    failed: np.ndarray
    stuck_phase: np.ndarray

    @property
    def surface_gain(self) -> np.ndarray:
        """`[N]` complex multiplier of the applied code: `exp(1j phase_error)` on working elements."""
        return np.exp(1j * self.phase_error)


def _channel_error(rng: np.random.Generator, h: np.ndarray, nmse_db: float) -> np.ndarray:
    """`h` plus circular Gaussian error of power `10^(nmse_db/10) * mean |h|^2` per entry."""
    var = 10.0 ** (nmse_db / 10.0) * float(np.mean(np.abs(h) ** 2))
    e = rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape)
    return h + np.sqrt(var / 2.0) * e


def deployment(cfg: SceneConfig) -> Deployment:
    """Everything `cfg` fixes per deployment, from its `deployment_seed` (0 when None).

    The seed feeds `numpy.random.SeedSequence(seed).spawn(4)`, one stream each for the channel's
    random part, the phase errors, the failed elements and the channel-estimation error
    (`DEPLOYMENT_STREAMS`), so switching one impairment on does not change the others.

    - channel: `los` and `rician` always fixed; `iid` fixed only when `deployment_seed` is set
      (entries CN(0, 1/N)), otherwise None (drawn per scene by the simulator).
    - phase errors: `N(0, code_phase_error_deg^2)` per element, radians.
    - failures: `round(element_failure * N)` elements chosen at random, each stuck at a uniform
      random phase, rounded to `code_bits` (a b-bit element is stuck in one of its states).
    - estimation error: `H_known = H_true + CN(0, 10^(nmse/10) mean|H_true|^2)` when the channel
      is fixed; with a per-scene channel the simulator draws the error per scene.

    Raises:
      ValueError: `cfg` in full-array mode (no channel, no codes).
    """
    cfg.validate()
    if cfg.mode != "ris":
        raise ValueError("mode: a deployment needs mode='ris'")
    seed = 0 if cfg.deployment_seed is None else int(cfg.deployment_seed)
    rngs = dict(zip(DEPLOYMENT_STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))))
    geometry = scenario_geometry(cfg)
    surface = np.asarray(geometry.positions, np.float64)
    n, m = surface.shape[0], cfg.n_bs

    h_true = None
    if cfg.channel in ("los", "rician"):
        h_true = los_channel(surface, bs_positions(cfg), cfg.wavelength)
    if cfg.channel == "rician" or (cfg.channel == "iid" and cfg.deployment_seed is not None):
        g = rngs["channel"]
        h_iid = np.sqrt(0.5 / n) * (g.standard_normal((m, n)) + 1j * g.standard_normal((m, n)))
        if cfg.channel == "iid":
            h_true = h_iid
        else:
            kf = float(cfg.rician_k_factor)
            h_true = np.sqrt(kf / (1.0 + kf)) * h_true + np.sqrt(1.0 / (1.0 + kf)) * h_iid
    h_known = h_true
    if h_true is not None and cfg.channel_nmse_db is not None:
        h_known = _channel_error(rngs["channel_error"], h_true, float(cfg.channel_nmse_db))

    phase_error = np.deg2rad(cfg.code_phase_error_deg) * rngs["phase_error"].standard_normal(n)
    n_failed = int(round(cfg.element_failure * n))
    failed = np.zeros(n, bool)
    stuck = np.zeros(n)
    if n_failed:
        g = rngs["failure"]
        failed[g.choice(n, n_failed, replace=False)] = True
        stuck = np.where(failed, quantize_phases(g.uniform(0.0, 2.0 * np.pi, n), cfg.code_bits), 0.0)
    return Deployment(H_true=h_true, H_known=h_known, phase_error=phase_error, failed=failed, stuck_phase=stuck)
