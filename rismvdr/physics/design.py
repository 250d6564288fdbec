"""RIS code design against the Cramer-Rao bound (conventions section 9).

With a fixed, known BS-RIS channel H (a deployment) the codes `c_l = exp(1j phi_l)` decide what
the BS sees of the surface's field, and so how well a source can be placed. The design picks
the phases `[L, N]` that minimise, over a prior box of single-source positions, the mean log of
the expected-power deterministic CRB (`rismvdr.physics.crb.crb_expected`, unit power,
`n_snapshots = L`):

    J(phases) = E_{eta ~ U(box)} sum_{i in (phi, theta, r)} log CRB_ii(eta; H, exp(1j phases), sigma^2),

at a stated SNR through the deployment's noise floor (`sigma^2 = noise_floor(H, 1, snr_db)`,
fixed: codes that steer more of the field to the BS raise the received SNR). The log makes the
sum scale-free (radians and metres weigh alike; a 10 % gain in range counts as one in azimuth).

Optimisation: Adam (optax) on the continuous phases from uniform random phases, a fresh batch
of prior positions each step (`fold_in(key, step)`), the objective and its gradient jitted and
vmapped over the batch; then the projection to `bits` (`quantize_phases`; 0 = continuous).

Several sources (`sources=(k_lo, k_hi)`, an option beside the conventions' single-source
objective): each prior sample holds K sources, K uniform in `k_lo..k_hi`, each position uniform
in the box, and its term is the mean over its sources of `sum_i log CRB_ii` of their joint
bound (each source's bound with the others' parameters and symbols unknown). Codes that keep
nearby sources apart in the measurements lower it; the single-source objective does not see
them.
Judged on held-out positions by the median sqrt(CRB) per parameter against random codes of the
same resolution (`crb_medians`, `random_codes`).

Singular points: a position whose bound is infinite (not identifiable: too few measurements, or
a numerically singular Fisher matrix) is left out of the mean; the design takes per-position
gradients and leaves such a position out of the gradient too, so its NaN never reaches the
phases.

Precision: computed in the dtype of the phases (float32 by default; float64 with
`jax_enable_x64` when the phases are float64).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rismvdr.physics._validation import check_finite, check_ndim, check_positive, check_shape
from rismvdr.physics.crb import CRBStd, _crb_core, _resolve_params
from rismvdr.physics.deployment import deployment, noise_floor, quantize_phases
from rismvdr.physics.geometry import ArrayGeometry
from rismvdr.physics.scenarios import SceneConfig, scenario_geometry

__all__ = [
    "CodeDesign",
    "CodeJudgement",
    "prior_box",
    "sample_positions",
    "random_codes",
    "crb_objective",
    "crb_objective_and_grad",
    "design_codes",
    "design_scenario_codes",
    "crb_std_at",
    "crb_medians",
    "judge_codes",
]

#: Default Adam step size on the phases (radians per step).
LEARNING_RATE = 0.05


class CodeDesign(NamedTuple):
    """The outcome of `design_codes`.

    Attributes:
      codes: `[L, N]` complex64 unit-modulus codes, `exp(1j phases)`.
      phases: `[L, N]` float64 phases in `[0, 2 pi)`, on the `2 pi / 2^bits` grid when bits >= 1.
      history: `[n_steps]` float64 objective of each Adam step (mean over that step's prior batch,
        before the step's update).
      objective: the continuous design's objective and the projected codes' objective on one
        fixed batch of prior positions (`(before, after)` projection; equal for bits = 0).
    """

    codes: np.ndarray
    phases: np.ndarray
    history: np.ndarray
    objective: tuple[float, float]


# --------------------------------------------------------------------------------- prior ----


def prior_box(cfg: SceneConfig) -> np.ndarray:
    """`[3, 2]` float64 (min, max) of phi, theta (radians) and r (metres) of a scenario's box."""
    return np.array([np.deg2rad(cfg.phi_deg), np.deg2rad(cfg.theta_deg), cfg.r_m], np.float64)


def _check_box(box) -> np.ndarray:
    check_shape("box", box, (3, 2))
    check_finite("box", box)
    b = np.asarray(box, np.float64)
    if np.any(b[:, 0] > b[:, 1]):
        raise ValueError(f"box: expected (min, max) rows with min <= max, got {b.tolist()}")
    if b[2, 0] <= 0:
        raise ValueError(f"box: the range row must lie in r > 0 metres, got {b[2].tolist()}")
    return b


def _sample(key, box, n: int):
    """`[n, 3]` positions uniform in `box` (dtype of `box`)."""
    u = jax.random.uniform(key, (n, 3), box.dtype)
    return box[None, :, 0] + u * (box[None, :, 1] - box[None, :, 0])


def sample_positions(key, box, n: int, *, dtype=None) -> jax.Array:
    """`[n, 3]` single-source positions (phi, theta, r) drawn uniformly in `box`.

    Args:
      key: PRNG key.
      box: `[3, 2]` (min, max) of phi, theta (radians) and r (metres), e.g. `prior_box(cfg)`.
      n: number of positions (>= 1).
      dtype: real dtype (default: JAX's default float, float64 under `jax_enable_x64`).
    """
    if int(n) < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    b = _check_box(box)
    dtype = jnp.zeros((), float).dtype if dtype is None else dtype
    return _sample(key, jnp.asarray(b, dtype), int(n))


def random_codes(key, n_snapshots: int, n_elements: int, bits: int = 0, *, shape: Sequence[int] = ()):
    """Random codes of a given resolution: i.i.d. uniform phases rounded to `bits` bits.

    Returns:
      `[*shape, L, N]` complex64 unit-modulus codes (bits = 0: continuous phases).
    """
    _check_bits(bits)
    ph = jax.random.uniform(key, (*shape, int(n_snapshots), int(n_elements)), jnp.float32, 0.0, 2.0 * np.pi)
    ph = quantize_phases(ph, int(bits))
    return jax.lax.complex(jnp.cos(ph), jnp.sin(ph))


def _check_sources(sources) -> tuple[int, int]:
    """(k_lo, k_hi) of `design_codes(sources=...)`: integers with 1 <= k_lo <= k_hi."""
    ok = (isinstance(sources, (tuple, list)) and len(sources) == 2
          and all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in sources))
    if not ok or not 1 <= sources[0] <= sources[1]:
        raise ValueError(f"sources: expected (k_lo, k_hi) integers with 1 <= k_lo <= k_hi, got {sources!r}")
    return int(sources[0]), int(sources[1])


def _check_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 0:
        raise ValueError(f"bits: expected an integer >= 0 (0 = continuous phases), got {bits!r}")


# ------------------------------------------------------------------------------ objective ----


def _position_crb(geometry, codes, h, noise_var, pos, *, model, params):
    """CRB `[P, P]` of one unit-power source at `pos` = (phi, theta, r)."""
    return _sources_crb(geometry, codes, h, noise_var, pos[None], jnp.ones((1,), bool), model=model, params=params)


def _sources_crb(geometry, codes, h, noise_var, pos, mask, *, model, params):
    """Joint CRB `[P K, P K]` (parameter-major) of K unit-power sources at `pos` `[K, 3]`, the
    slots outside `mask` `[K]` absent (their rows NaN)."""
    real = pos.dtype
    return _crb_core(geometry, pos[:, 0], pos[:, 1], pos[:, 2], noise_var, h, codes, mask, None,
                     jnp.ones(pos.shape[:1], real), jnp.asarray(codes.shape[0], real), model=model, params=params)


def _log_crb(phases, positions, mask, geometry, h, noise_var, *, model, params):
    """`[S]` per set of sources `positions` `[S, K, 3]` (`mask` `[S, K]`: which slots hold one),
    the mean over its sources of `sum_i log CRB_ii` of their joint bound (inf where not
    identifiable). A single source is a set of one."""
    codes = jax.lax.complex(jnp.cos(phases), jnp.sin(phases))
    n_params = len(params)

    def one(pos, m):
        d = jnp.diagonal(_sources_crb(geometry, codes, h, noise_var, pos, m, model=model, params=params))
        keep = jnp.tile(m, (n_params,))
        return jnp.sum(jnp.where(keep, jnp.log(jnp.where(keep, d, 1.0)), 0.0)) / jnp.maximum(jnp.sum(m), 1)

    return jax.vmap(one)(positions, mask)


def _objective(phases, positions, mask, geometry, h, noise_var, *, model, params):
    """Mean over the identifiable sets of `_log_crb` (scalar; +inf if none is)."""
    v = _log_crb(phases, positions, mask, geometry, h, noise_var, model=model, params=params)
    ok = jnp.isfinite(v)
    n_ok = jnp.sum(ok)
    total = jnp.sum(jnp.where(ok, v, 0.0))
    return jnp.where(n_ok > 0, total / jnp.maximum(n_ok, 1), jnp.inf)


@functools.partial(jax.jit, static_argnames=("model", "params"))
def _objective_jit(phases, positions, mask, geometry, h, noise_var, *, model, params):
    return _objective(phases, positions, mask, geometry, h, noise_var, model=model, params=params)


def _objective_and_grad(phases, positions, mask, geometry, h, noise_var, *, model, params):
    """`_objective` and its gradient `[L, N]`, both over the identifiable positions only.

    Per-position gradients (vmap of grad), so a position whose bound or gradient is not finite
    is dropped from both exactly, without its NaN reaching the others.
    """
    def one(ph, pos, m):
        return _log_crb(ph, pos[None], m[None], geometry, h, noise_var, model=model, params=params)[0]

    v, g = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0))(phases, positions, mask)
    ok = jnp.isfinite(v) & jnp.all(jnp.isfinite(g), axis=(-2, -1))
    n_ok = jnp.sum(ok)
    scale = 1.0 / jnp.maximum(n_ok, 1).astype(v.dtype)
    value = jnp.where(n_ok > 0, jnp.sum(jnp.where(ok, v, 0.0)) * scale, jnp.inf)
    grad = jnp.sum(jnp.where(ok[:, None, None], g, 0.0), axis=0) * scale
    return value, grad


_objective_and_grad_jit = jax.jit(_objective_and_grad, static_argnames=("model", "params"))


def _problem(geometry, H, noise_var, real):
    """Validate the fixed part of the problem and cast it to `real` (float32 or float64)."""
    if not isinstance(geometry, ArrayGeometry):
        raise ValueError(f"geometry: expected an ArrayGeometry, got {type(geometry).__name__}")
    check_ndim("H", H, 2)
    check_shape("H", H, (None, geometry.n_elements))
    check_finite("H", H)
    check_ndim("noise_var", noise_var, 0)
    check_positive("noise_var", noise_var)
    cplx = jnp.complex128 if real == jnp.float64 else jnp.complex64
    return geometry.astype(real), jnp.asarray(H, cplx), jnp.asarray(noise_var, real)


def _check_phases(phases, geometry) -> None:
    check_ndim("phases", phases, 2)
    check_shape("phases", phases, (None, geometry.n_elements))
    check_finite("phases", phases)


def _positions(positions, real):
    check_ndim("positions", positions, 2)
    check_shape("positions", positions, (None, 3))
    check_finite("positions", positions)
    if np.shape(positions)[0] < 1:
        raise ValueError("positions: expected at least one position, got shape [0, 3]")
    check_positive("positions[:, 2] (r)", np.asarray(positions)[:, 2])
    return jnp.asarray(positions, real)


def _source_sets(positions, mask, real):
    """Check `[S, K, 3]` source sets and their `[S, K]` mask (default: every slot a source)."""
    check_ndim("positions", positions, 3)
    check_shape("positions", positions, (None, None, 3))
    check_finite("positions", positions)
    s, k, _ = np.shape(positions)
    if s < 1 or k < 1:
        raise ValueError(f"positions: expected at least one set of at least one source, got shape {[s, k, 3]}")
    check_positive("positions[:, :, 2] (r)", np.asarray(positions)[:, :, 2])
    m = np.ones((s, k), bool) if mask is None else np.asarray(mask)
    check_shape("mask", m, (s, k))
    if m.dtype != bool or not np.all(m.any(axis=1)):
        raise ValueError("mask: expected booleans with at least one source per set")
    return jnp.asarray(positions, real), jnp.asarray(m)


def crb_objective(phases, positions, geometry: ArrayGeometry, H, noise_var, *, model: str = "exact",
                  params: Sequence[str] | None = None, mask=None) -> jax.Array:
    """The design objective: mean over positions of `sum_i log CRB_ii` for codes `exp(1j phases)`.

    Expected-power deterministic CRB (`crb_expected` semantics) of one unit-power source at each
    position, `n_snapshots = L`. Jitted, vmapped over the positions; differentiable in `phases`.
    With sets of sources (`positions` `[S, K, 3]`), each set's term is the mean over its sources
    (`mask`) of `sum_i log CRB_ii` of their joint bound, unit power each.

    Args:
      phases: `[L, N]` code phases, radians (their dtype sets the precision: float64 computes in
        float64, anything else in float32).
      positions: `[S, 3]` single-source positions (phi, theta radians; r metres > 0), or `[S, K, 3]`
        sets of K sources.
      mask: `[S, K]` bool, which slots of each set hold a source (default: all; sets only).
      geometry: the surface, positions `[N, 3]` metres.
      H: `[M, N]` complex BS-RIS channel (known).
      noise_var: scalar sigma^2 > 0, e.g. `noise_floor(H, 1, snr_db)`.
      model: steering model (`exact`, `fresnel`, `far`).
      params: the parameters summed (default: `phi, theta, r`, as `crb.default_params`).

    Returns:
      scalar; positions where the bound is infinite are left out of the mean (+inf if all are).

    >>> import numpy as np
    >>> from rismvdr.physics import upa
    >>> g = upa(4, 4, 0.15, 0.15, wavelength=0.3)
    >>> rng = np.random.default_rng(0)
    >>> H = (rng.standard_normal((4, 16)) + 1j * rng.standard_normal((4, 16))) / np.sqrt(32)
    >>> ph = rng.uniform(0, 2 * np.pi, (4, 16)).astype(np.float32)
    >>> float(crb_objective(ph, np.array([[0.1, 0.0, 2.0]]), g, H, 0.1)) < 10
    True
    """
    return _call_checked(_objective_jit, phases, positions, geometry, H, noise_var, model, params, mask)


def crb_objective_and_grad(phases, positions, geometry: ArrayGeometry, H, noise_var, *, model: str = "exact",
                           params: Sequence[str] | None = None, mask=None) -> tuple[jax.Array, jax.Array]:
    """`crb_objective` and its gradient w.r.t. `phases` (`[L, N]`), as `design_codes` steps on them.

    Per-position gradients, so a position whose bound is not identifiable (or whose gradient
    is not finite) is left out of both the value and the gradient. Same arguments as
    `crb_objective`.
    """
    return _call_checked(_objective_and_grad_jit, phases, positions, geometry, H, noise_var, model, params, mask)


def _call_checked(fn, phases, positions, geometry, H, noise_var, model, params, mask=None):
    """Check and cast the arguments of the public objective functions (float64 phases compute
    in float64, others in float32), then call the jitted `fn`."""
    params = _resolve_params(geometry, model, params)
    real = jnp.float64 if jnp.asarray(phases).dtype == jnp.float64 else jnp.float32
    g, h, nv = _problem(geometry, H, noise_var, real)
    _check_phases(phases, geometry)
    if np.ndim(positions) == 3:
        pos, m = _source_sets(positions, mask, real)
    elif mask is not None:
        raise ValueError("mask: only for sets of sources, positions [S, K, 3]")
    else:  # single sources: sets of one
        pos = _positions(positions, real)[:, None, :]
        m = jnp.ones(pos.shape[:2], bool)
    return fn(jnp.asarray(phases, real), pos, m, g, h, nv, model=model, params=params)


# ---------------------------------------------------------------------------------- design ----


def design_codes(geometry: ArrayGeometry, H, box, *, n_snapshots: int, noise_var: float, bits: int, key,
                 n_steps: int = 300, batch: int = 64, learning_rate: float = LEARNING_RATE,
                 model: str = "exact", params: Sequence[str] | None = None, dtype=None,
                 sources: tuple[int, int] = (1, 1),
                 progress: Callable[[int, float], None] | None = None) -> CodeDesign:
    """Codes `[L, N]` that minimise `crb_objective` over a prior box, projected to `bits` bits.

    Adam on the phases from uniform random phases; each step draws a fresh batch of positions
    uniformly in `box` (`fold_in(key, step)`); then `quantize_phases(phases, bits)`. With
    `sources=(k_lo, k_hi)` other than (1, 1), each of the batch's samples is a set of K sources,
    K uniform in `k_lo..k_hi`, and its term is their joint bound's (`crb_objective` on sets).

    Args:
      geometry: the surface, positions `[N, 3]` metres.
      H: `[M, N]` complex BS-RIS channel the receiver knows (`deployment(cfg).H_known`).
      box: `[3, 2]` (min, max) of phi, theta (radians) and r (metres): `prior_box(cfg)`.
      n_snapshots: L, the number of codes.
      noise_var: sigma^2 > 0, the deployment's noise floor (`noise_floor(H, 1, snr_db)`).
      bits: phase resolution, 0 = continuous, b >= 1 rounds to multiples of `2 pi / 2^b`.
      key: PRNG key (initial phases and prior batches).
      n_steps: Adam steps (>= 1).
      batch: prior positions per step (>= 1).
      learning_rate: Adam step size, radians.
      model, params: as `crb_objective`.
      dtype: real dtype of the optimisation (default: JAX's default float: float32, float64
        under `jax_enable_x64`).
      sources: (k_lo, k_hi), the number of sources of each prior sample, uniform in between
        (default (1, 1): the conventions' single-source objective).
      progress: called after each step as `progress(step, objective)` (one step late, so the
        host never waits on the device for it).

    Returns:
      `CodeDesign` (codes complex64, phases, objective history).

    Raises:
      ValueError: naming the argument (shapes, non-finite values, counts, bits).
    """
    params = _resolve_params(geometry, model, params)
    _check_bits(bits)
    for name, v in (("n_snapshots", n_snapshots), ("n_steps", n_steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate: must be a finite number > 0, got {learning_rate!r}")
    k_lo, k_hi = _check_sources(sources)
    b = _check_box(box)
    real = jnp.zeros((), float).dtype if dtype is None else jnp.dtype(dtype)
    if real not in (jnp.float32, jnp.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {real}")
    g, h, nv = _problem(geometry, H, noise_var, real)
    init_key, step_key = jax.random.split(key)
    phases = jax.random.uniform(init_key, (int(n_snapshots), geometry.n_elements), real, 0.0, 2.0 * np.pi)
    box_j = jnp.asarray(b, real)
    optimizer = optax.adam(float(learning_rate))

    def draw(k, n):
        """n prior samples: sets of sources `[n, k_hi, 3]` and their mask `[n, k_hi]`."""
        if (k_lo, k_hi) == (1, 1):
            return _sample(k, box_j, n)[:, None, :], jnp.ones((n, 1), bool)
        kp, kn = jax.random.split(k)
        pos = _sample(kp, box_j, n * k_hi).reshape(n, k_hi, 3)
        count = jax.random.randint(kn, (n,), k_lo, k_hi + 1)
        return pos, jnp.arange(k_hi)[None, :] < count[:, None]

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, i):
        ph, opt_state = state
        pos, mask = draw(jax.random.fold_in(step_key, i), int(batch))
        value, grad = _objective_and_grad(ph, pos, mask, g, h, nv, model=model, params=params)
        updates, opt_state = optimizer.update(grad, opt_state, ph)
        return (optax.apply_updates(ph, updates), opt_state), value

    state = (phases, optimizer.init(phases))
    values = []
    for i in range(int(n_steps)):
        state, value = step(state, jnp.asarray(i, jnp.uint32))
        values.append(value)
        if progress is not None and i > 0:
            progress(i - 1, float(values[i - 1]))
    if progress is not None:
        progress(int(n_steps) - 1, float(values[-1]))
    continuous = jnp.mod(state[0], 2.0 * np.pi)
    final = quantize_phases(continuous, int(bits))
    check, check_mask = draw(jax.random.fold_in(step_key, int(n_steps)), max(int(batch), 256))
    before = float(_objective_jit(continuous, check, check_mask, g, h, nv, model=model, params=params))
    after = float(_objective_jit(final, check, check_mask, g, h, nv, model=model, params=params))
    phases_np = np.mod(np.asarray(final, np.float64), 2.0 * np.pi)
    codes = np.exp(1j * phases_np).astype(np.complex64)
    return CodeDesign(codes, phases_np, np.asarray(jnp.stack(values), np.float64), (before, after))


def _scenario_channel(cfg: SceneConfig) -> np.ndarray:
    if cfg.mode != "ris":
        raise ValueError(f"mode: code design needs a RIS-mode scenario, {cfg.name!r} has mode={cfg.mode!r}")
    h = deployment(cfg).H_known
    if h is None:
        raise ValueError("channel: code design needs a fixed channel: channel='los' or 'rician', or "
                         "channel='iid' with a deployment_seed")
    return h


def design_scenario_codes(cfg: SceneConfig, *, snr_db: float, key, bits: int | None = None,
                          **kwargs) -> tuple[CodeDesign, dict]:
    """`design_codes` for a scenario's deployment: its surface, believed channel `H_known`, box,
    L and steering model, with the noise floor `noise_floor(H, 1, snr_db)`.

    Args:
      cfg: a RIS-mode scenario with a fixed channel (`los`, `rician`, or `iid` with a
        `deployment_seed`).
      snr_db: the design SNR (dB) of the reference configuration.
      key: PRNG key.
      bits: phase resolution (default: the scenario's `code_bits`).
      **kwargs: the other keyword arguments of `design_codes` (n_steps, batch, ...).

    Returns:
      the `CodeDesign` and the problem it solved: `dict(geometry, H, box, noise_var, model)`,
      what `crb_medians` takes to judge the codes.
    """
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db: must be a finite number, got {snr_db!r}")
    h = _scenario_channel(cfg)
    problem = dict(geometry=scenario_geometry(cfg), H=h, box=prior_box(cfg),
                   noise_var=float(noise_floor(h, 1.0, snr_db)), model=cfg.steering_model)
    bits = cfg.code_bits if bits is None else bits
    design = design_codes(problem["geometry"], h, problem["box"], n_snapshots=cfg.n_snapshots,
                          noise_var=problem["noise_var"], bits=bits, key=key, model=cfg.steering_model, **kwargs)
    return design, problem


# -------------------------------------------------------------------------------- judging ----


@functools.partial(jax.jit, static_argnames=("model", "params"))
def _std_core(codes, positions, geometry, h, noise_var, *, model, params):
    def one(c, p):
        return jnp.sqrt(jnp.diagonal(_position_crb(geometry, c, h, noise_var, p, model=model, params=params)))

    if codes.ndim == 3:
        return jax.vmap(one)(codes, positions)
    return jax.vmap(lambda p: one(codes, p))(positions)


def crb_std_at(codes, positions, geometry: ArrayGeometry, H, noise_var, *, model: str = "exact",
               params: Sequence[str] | None = None, batch_size: int = 256) -> CRBStd:
    """sqrt(CRB) of one unit-power source at each of `positions` (expected-power CRB, L = codes rows).

    Args:
      codes: `[L, N]` complex codes shared by every position, or `[S, L, N]` one set per position.
      positions: `[S, 3]` (phi, theta radians; r metres).
      geometry, H, noise_var, model, params: as `crb_objective`.
      batch_size: positions per jitted call (bounds memory; results do not depend on it).

    Returns:
      `CRBStd` of `[S]` arrays (radians, metres); NaN for a parameter not estimated, inf where
      not identifiable. Computed in float32 unless `codes` is complex128.
    """
    params = _resolve_params(geometry, model, params)
    check_ndim("codes", codes, (2, 3))
    s = np.shape(positions)[0] if np.ndim(positions) == 2 else None
    if np.ndim(codes) == 3:
        check_shape("codes", codes, (s, None, geometry.n_elements))
    else:
        check_shape("codes", codes, (None, geometry.n_elements))
    check_finite("codes", codes)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    real = jnp.float64 if jnp.asarray(codes).dtype == jnp.complex128 else jnp.float32
    g, h, nv = _problem(geometry, H, noise_var, real)
    pos = _positions(positions, real)
    c = jnp.asarray(codes, h.dtype)
    s = pos.shape[0]
    bs = min(int(batch_size), s)
    parts = []
    for lo in range(0, s, bs):
        idx = jnp.asarray(np.minimum(np.arange(lo, lo + bs), s - 1))  # fixed shape: one trace
        ci = c[idx] if c.ndim == 3 else c
        parts.append(np.asarray(_std_core(ci, pos[idx], g, h, nv, model=model, params=params))[: min(bs, s - lo)])
    std = np.concatenate(parts, axis=0)  # [S, P]
    out = {name: (std[:, params.index(name)] if name in params else np.full(s, np.nan)) for name in CRBStd._fields}
    return CRBStd(**out)


def crb_medians(codes, positions, geometry: ArrayGeometry, H, noise_var, *, model: str = "exact",
                params: Sequence[str] | None = None) -> CRBStd:
    """Median over `positions` of sqrt(CRB) per parameter (`crb_std_at`): the design's score.

    Returns:
      `CRBStd` of floats: radians (phi, theta) and metres (r); NaN for a parameter not estimated.
    """
    std = crb_std_at(codes, positions, geometry, H, noise_var, model=model, params=params)
    return CRBStd(*(float(np.median(x)) for x in std))


class CodeJudgement(NamedTuple):
    """sqrt(CRB) at held-out positions for the designed codes and for random codes.

    Attributes:
      positions: `[S, 3]` the held-out positions (phi, theta radians; r metres).
      designed: `CRBStd` of `[S]` arrays with the designed codes.
      random: `CRBStd` of `[S]` arrays with random codes of the same resolution, a fresh draw
        per position (the simulator's default regime: random codes per scene).
    """

    positions: np.ndarray
    designed: CRBStd
    random: CRBStd


def judge_codes(codes, geometry: ArrayGeometry, H, box, noise_var, *, key, bits: int, n_positions: int = 500,
                model: str = "exact", params: Sequence[str] | None = None) -> CodeJudgement:
    """sqrt(CRB) of designed codes against random codes of the same resolution, held-out positions.

    Positions are drawn uniformly in `box` from `key` (use a key the design did not see); the
    random codes (uniform phases rounded to `bits`) are drawn afresh for each position. The
    score of conventions section 9 is the median of each over the positions
    (`np.median(judgement.designed.phi)`, ...).

    Args:
      codes: `[L, N]` the designed codes.
      geometry, H, noise_var, model, params: as `crb_objective`.
      box: `[3, 2]` prior box, as `design_codes`.
      key: PRNG key.
      bits: resolution of the random codes (the design's).
      n_positions: held-out positions (>= 1).
    """
    _check_bits(bits)
    check_ndim("codes", codes, 2)
    pos_key, code_key = jax.random.split(key)
    positions = np.asarray(sample_positions(pos_key, box, n_positions, dtype=jnp.float32), np.float64)
    rand = random_codes(code_key, np.shape(codes)[0], np.shape(codes)[1], bits, shape=(int(n_positions),))
    kw = dict(model=model, params=params)
    return CodeJudgement(positions, crb_std_at(codes, positions, geometry, H, noise_var, **kw),
                         crb_std_at(rand, positions, geometry, H, noise_var, **kw))
