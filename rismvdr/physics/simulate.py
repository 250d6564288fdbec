"""Scene simulator (conventions sections 3-4): a pure function of (config, PRNG key).

Snapshot `l`: surface field `x_l = A s_l`; RIS mode `y_l = H diag(c_l) x_l + n_l`, full-array
mode `y_l = x_l + n_l`. Symbols `s_{k,l} ~ CN(0, p_k)` vary over snapshots; noise is
`CN(0, sigma^2 I_M)` with `sigma^2 = mean_l |G_l x_l|^2 / M / 10^(SNR/10)` on the realised
noiseless signal. `R_true = A diag(p) A^H` (noise free, not trace-normalised).

Scene `i` of `simulate(cfg, key, n)` uses `jax.random.fold_in(key, i)`, so a scene does not
depend on the batch size it was simulated in.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rismvdr.physics.scenarios import SceneConfig, scenario_geometry
from rismvdr.physics.steering import steering

__all__ = ["Scene", "simulate_scene", "simulate", "stack_scenes", "truth_covariance",
           "truth_covariance_from_sources"]

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Scene:
    """One scene (or a batch: every array gains leading batch axes `[...]`).

    Attributes:
      y: `[..., L, M]` complex measurements.
      H: `[..., M, N]` complex channel, or None in full-array mode.
      codes: `[..., L, N]` complex unit-modulus RIS codes, or None in full-array mode.
      noise_var: `[...]` sigma^2 (linear).
      snr_db: `[...]` requested SNR, dB.
      phi, theta: `[..., K_max]` true angles, radians (padded entries 0).
      r: `[..., K_max]` true ranges, metres (padded entries r_max, valid for steering).
      power: `[..., K_max]` source powers, linear (padded entries 0).
      mask: `[..., K_max]` bool, True for real sources.
      R_true: `[..., N, N]` complex `A diag(p) A^H`.
    """

    y: jax.Array
    H: jax.Array | None
    codes: jax.Array | None
    noise_var: jax.Array
    snr_db: jax.Array
    phi: jax.Array
    theta: jax.Array
    r: jax.Array
    power: jax.Array
    mask: jax.Array
    R_true: jax.Array

    @property
    def n_sources(self) -> jax.Array:
        """`[...]` number of true sources."""
        return jnp.sum(self.mask, axis=-1)

    @property
    def full_array(self) -> bool:
        return self.H is None

    def __getitem__(self, idx) -> "Scene":
        """Index the leading batch axis (`scenes[3]`, `scenes[:10]`)."""
        return jax.tree_util.tree_map(lambda a: a[idx], self)

    def __len__(self) -> int:
        return int(self.y.shape[0]) if self.y.ndim == 3 else 1


jax.tree_util.register_dataclass(
    Scene,
    data_fields=[f.name for f in dataclasses.fields(Scene)],
    meta_fields=[],
)


class _Draws:
    """All of a scene's randomness from two draws (one uniform block, one normal block),
    consumed in a fixed order. Few PRNG call sites keep compilation fast on the CPU."""

    def __init__(self, key, n_uniform: int, n_normal: int, real):
        ku, kn = jax.random.split(key)
        self.u = jax.random.uniform(ku, (n_uniform,), real)
        self.z = jax.random.normal(kn, (n_normal,), real)
        self.iu = self.iz = 0

    def uniform(self, shape, lo_hi):
        size = int(np.prod(shape, dtype=np.int64))
        u = self.u[self.iu: self.iu + size].reshape(shape)
        self.iu += size
        lo, hi = lo_hi
        return lo + (hi - lo) * u

    def crandn(self, shape, dtype, var=1.0):
        """Circular complex Gaussian CN(0, var)."""
        size = int(np.prod(shape, dtype=np.int64))
        z = self.z[self.iz: self.iz + 2 * size]
        self.iz += 2 * size
        scale = jnp.sqrt(jnp.asarray(var, z.dtype) / 2.0)
        return jax.lax.complex(z[:size].reshape(shape) * scale, z[size:].reshape(shape) * scale).astype(dtype)


def _draw_sizes(cfg: SceneConfig) -> tuple[int, int]:
    n, m, l = cfg.n_elements, cfg.n_measurements, cfg.n_snapshots
    n_u = 1 + 3 * cfg.n_candidates + cfg.k_max + 1
    n_u += (l * n if cfg.codebook == "random" else cfg.nh * cfg.nv) if cfg.mode == "ris" else 0
    n_z = 2 * (l * cfg.k_max + l * m + (m * n if cfg.mode == "ris" else 0))
    return n_u, n_z


def _sample_sources(cfg: SceneConfig, draws: _Draws, real):
    """Sequential rejection sampling: draw `n_candidates` sources, accept each that is outside
    the detection gate of every source accepted before, until K are accepted.

    Returns (phi, theta, r, mask, shortfall) with `[K_max]` arrays; shortfall > 0 only when the
    box is too small for K separated sources.
    """
    k_max, n_cand = cfg.k_max, cfg.n_candidates
    n_src = jnp.minimum(
        jnp.floor(draws.uniform((), (cfg.k_min, cfg.k_max + 1))).astype(jnp.int32), cfg.k_max
    )
    deg = np.pi / 180.0
    phi_c = draws.uniform((n_cand,), (cfg.phi_deg[0] * deg, cfg.phi_deg[1] * deg))
    th_c = draws.uniform((n_cand,), (cfg.theta_deg[0] * deg, cfg.theta_deg[1] * deg))
    r_c = draws.uniform((n_cand,), cfg.r_m)
    g_phi, g_th, g_r = cfg.gate_phi_deg * deg, cfg.gate_theta_deg * deg, cfg.gate_r_m

    def accept(carry, cand):
        phi, th, r, count = carry
        p, t, rr = cand
        filled = jnp.arange(k_max) < count
        inside = (jnp.abs(phi - p) <= g_phi) & (jnp.abs(th - t) <= g_th) & (jnp.abs(r - rr) <= g_r)
        ok = (count < n_src) & ~jnp.any(inside & filled)
        slot = jnp.minimum(count, k_max - 1)
        phi = jnp.where(ok, phi.at[slot].set(p), phi)
        th = jnp.where(ok, th.at[slot].set(t), th)
        r = jnp.where(ok, r.at[slot].set(rr), r)
        return (phi, th, r, count + ok.astype(count.dtype)), None

    init = (
        jnp.zeros(k_max, real),
        jnp.zeros(k_max, real),
        jnp.full(k_max, cfg.r_m[1], real),
        jnp.zeros((), jnp.int32),
    )
    (phi, th, r, count), _ = jax.lax.scan(accept, init, (phi_c, th_c, r_c))
    mask = jnp.arange(k_max) < count
    return phi, th, r, mask, n_src - count


def _ris_codes(cfg: SceneConfig, draws: _Draws, cdtype, real):
    n, l = cfg.n_elements, cfg.n_snapshots
    if cfg.codebook == "random":
        ph = draws.uniform((l, n), (0.0, 2.0 * np.pi))
        return jax.lax.complex(jnp.cos(ph), jnp.sin(ph)).astype(cdtype)
    # 2-D DFT beams: c_l[v * nh + h] = exp(j 2 pi (h bh_l / nh + v bv_l / nv)); distinct beams
    # (a random permutation of the nh * nv beams, cycled if L exceeds their number).
    nh, nv = cfg.nh, cfg.nv
    perm = jnp.argsort(draws.uniform((nh * nv,), (0.0, 1.0)))
    beam = perm[jnp.arange(l) % (nh * nv)]
    bh, bv = (beam % nh).astype(real), (beam // nh).astype(real)
    h = jnp.tile(jnp.arange(nh, dtype=real), nv)
    v = jnp.repeat(jnp.arange(nv, dtype=real), nh)
    ph = 2.0 * np.pi * (h[None, :] * bh[:, None] / nh + v[None, :] * bv[:, None] / nv)
    return jax.lax.complex(jnp.cos(ph), jnp.sin(ph)).astype(cdtype)


def truth_covariance(a, power) -> jax.Array:
    """Noise-free covariance of the surface field, `R_true = A diag(p) A^H` (not normalised).

    Args:
      a: `[..., K, N]` steering vectors of the sources (rows), from `steering`.
      power: `[..., K]` linear source powers (0 for padded slots).

    Returns:
      `[..., N, N]` Hermitian, in `a`'s dtype.
    """
    return jnp.einsum("...kn,...k,...km->...nm", a, power.astype(a.dtype), jnp.conj(a), precision=_HI)


def truth_covariance_from_sources(geometry, phi, theta, r, power, *, model: str) -> jax.Array:
    """`R_true = A diag(p) A^H` of a batch of scenes, from the sources' positions and powers.

    Computed in single precision (the geometry cast to float32, `A` complex64) in one jitted
    call; used to rebuild `Scene.R_true` for scenes read from a file.

    Args:
      geometry: the `ArrayGeometry` of the scenes (N elements).
      phi, theta: `[S, K]` float32 source angles, radians.
      r: `[S, K]` float32 source ranges, metres (every slot a valid steering argument).
      power: `[S, K]` float32 linear source powers (0 for padded slots).
      model: steering model, one of `STEERING_MODELS`.

    Returns:
      `[S, N, N]` complex64, not trace-normalised; zeros when K = 0.
    """
    s, k = phi.shape
    n = geometry.n_elements
    if k == 0:
        return jnp.zeros((s, n, n), jnp.complex64)
    return _truth_covariance_jit(geometry.astype(np.float32), phi, theta, r, power, model=model)


@functools.partial(jax.jit, static_argnames="model")
def _truth_covariance_jit(geometry, phi, theta, r, power, *, model):
    a = steering(geometry, phi, theta, r, model=model, dtype=jnp.complex64)  # [S, K, N]
    return truth_covariance(a, power)


def _simulate_one(cfg: SceneConfig, key):
    cdtype = jnp.dtype(cfg.dtype)
    real = jnp.finfo(cdtype).dtype
    geometry = scenario_geometry(cfg).astype(real)
    n, m, l = cfg.n_elements, cfg.n_measurements, cfg.n_snapshots
    draws = _Draws(key, *_draw_sizes(cfg), real)

    phi, theta, r, mask, shortfall = _sample_sources(cfg, draws, real)
    p_db = draws.uniform((cfg.k_max,), cfg.power_db)
    power = jnp.where(mask, 10.0 ** (p_db / 10.0), 0.0).astype(real)
    snr_db = draws.uniform((), cfg.snr_db)

    a = steering(geometry, phi, theta, r, model=cfg.steering_model, dtype=cdtype)  # [K, N]
    s = draws.crandn((l, cfg.k_max), cdtype) * jnp.sqrt(power).astype(cdtype)[None, :]  # [L, K]
    x = jnp.matmul(s, a, precision=_HI)  # [L, N]: x_l = A s_l
    if cfg.mode == "ris":
        h = draws.crandn((m, n), cdtype, var=1.0 / n)
        codes = _ris_codes(cfg, draws, cdtype, real)
        y_clean = jnp.matmul(codes * x, h.T, precision=_HI)  # [L, M]: H diag(c_l) x_l
    else:
        h, codes, y_clean = None, None, x
    sig_pow = jnp.mean(jnp.abs(y_clean) ** 2)
    noise_var = (sig_pow / 10.0 ** (snr_db / 10.0)).astype(real)
    y = y_clean + draws.crandn((l, m), cdtype, var=noise_var)
    r_true = truth_covariance(a, power)
    scene = Scene(
        y=y, H=h, codes=codes, noise_var=noise_var, snr_db=snr_db,
        phi=phi, theta=theta, r=r, power=power, mask=mask, R_true=r_true,
    )
    return scene, shortfall


def simulate_scene(cfg: SceneConfig, key) -> Scene:
    """One scene as a pure function of (cfg, key); jittable with `cfg` static, vmappable."""
    return _simulate_one(cfg, key)[0]


@functools.partial(jax.jit, static_argnums=(0,))
def _simulate_batch(cfg: SceneConfig, key, indices):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
    return jax.vmap(lambda k: _simulate_one(cfg, k))(keys)


def simulate(cfg: SceneConfig, key, n_scenes: int, *, batch_size: int = 256, start: int = 0) -> Scene:
    """Simulate scenes `start .. start + n_scenes - 1` of the test set defined by (cfg, key).

    Args:
      cfg: scenario config (see `get_scenario`).
      key: PRNG key (or an int seed).
      n_scenes: number of scenes, >= 1.
      batch_size: scenes per jitted call (bounds memory; results do not depend on it).
      start: index of the first scene.

    Returns:
      A batched `Scene` with leading axis `n_scenes`.

    Raises:
      ValueError: bad arguments, complex128 without x64, or a box too small for K sources
        separated by the detection gate.
    """
    cfg.validate()
    if int(n_scenes) < 1:
        raise ValueError(f"n_scenes: must be >= 1, got {n_scenes}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if cfg.dtype == "complex128" and not jax.config.jax_enable_x64:
        raise ValueError("dtype: complex128 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    parts, shortfall = [], 0
    batch_size = min(int(batch_size), int(n_scenes))
    for lo in range(start, start + n_scenes, batch_size):
        hi = min(lo + batch_size, start + n_scenes)
        idx = jnp.arange(lo, lo + batch_size, dtype=jnp.int32)  # fixed shape: one trace
        scene, short = _simulate_batch(cfg, key, idx)
        parts.append(scene[: hi - lo])
        shortfall = max(shortfall, int(jnp.max(short[: hi - lo])))
    if shortfall > 0:
        raise ValueError(
            f"n_candidates: could not place K sources outside each other's detection gate "
            f"(short by {shortfall}); widen phi_deg/theta_deg/r_m or raise n_candidates"
        )
    return parts[0] if len(parts) == 1 else stack_scenes(parts)


def stack_scenes(parts: list[Scene]) -> Scene:
    """Concatenate batched scenes along the leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
