"""Named, frozen scenario configs (conventions section 4).

A scenario fixes everything the simulator needs; `simulate` is a pure function of
(config, PRNG key). Configs are hashable so they can be static arguments of `jit`.
Any field can be overridden: `get_scenario("seed", k_min=3, k_max=3, snr_db=(10, 10))`.

Named scenarios:

* `seed`: the seed system's regime (conventions section 4): 12 x 12 UPA, RIS mode, M = 16, L = 16.
* `full`: the same surface sampled directly (full-array mode), L = 64.
* `ula15`: a full-array near-field case comparable to the literature: 15-element ULA along y
  at half-wavelength spacing (0.15 m, wavelength 0.3 m, aperture D = 2.1 m), L = 100
  snapshots, K = 2 equal-power sources, phi uniform in [-60, 60] deg, theta = 0 (linear
  array), r uniform in [3.5, 15] m: the inner Fresnel region of this aperture
  (0.62 sqrt(D^3 / lambda) = 3.44 m .. 2 D^2 / lambda = 29.4 m), where range is still
  estimable within the 1 m detection gate; SNR 10 dB unless overridden.
Angles are stored in degrees here because configs are a human edge (CLI `--set`, JSON);
the simulator converts them to radians.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import numpy as np

from rismvdr.defaults import K_MAX, PHI_RANGE_DEG, R_RANGE_M, THETA_RANGE_DEG
from rismvdr.physics.geometry import ArrayGeometry, bs_ula, from_positions, ula, upa

__all__ = ["Gates", "DEFAULT_GATES", "SceneConfig", "SCENARIOS", "DEPLOYMENT_FIELDS", "get_scenario",
           "scenario_geometry", "bs_positions"]


@dataclasses.dataclass(frozen=True)
class Gates:
    """Detection gate: the largest error at which a matched estimate still counts as found.

    Also the cost scale of the Hungarian assignment, the detector's NMS gate and the scenario's
    separation rule: the one gate of the package. SI units inside; `from_deg` builds one where
    a person typed degrees (configs, CLI flags), `as_report` gives them back.

    Attributes:
      phi: azimuth gate, radians (seed: 5 deg).
      theta: elevation gate, radians (seed: 5 deg).
      r: range gate, metres (seed: 1 m).
    """

    phi: float = float(np.deg2rad(5.0))
    theta: float = float(np.deg2rad(5.0))
    r: float = 1.0

    def __post_init__(self):
        for name in ("phi", "theta", "r"):
            v = getattr(self, name)
            try:
                f = float(v)
            except (TypeError, ValueError):
                f = float("nan")
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"gates.{name}: must be a finite number > 0, got {v!r}")
            object.__setattr__(self, name, f)  # plain floats: hashable, JSON-friendly

    @classmethod
    def from_deg(cls, phi_deg: float = 5.0, theta_deg: float = 5.0, r_m: float = 1.0) -> "Gates":
        """Gates from degrees and metres (the units of configs and reports)."""
        return cls(float(np.deg2rad(phi_deg)), float(np.deg2rad(theta_deg)), float(r_m))

    @classmethod
    def from_config(cls, cfg: Any) -> "Gates":
        """Gates of a scenario config (any object with `gate_phi_deg`, `gate_theta_deg`, `gate_r_m`)."""
        return cls.from_deg(cfg.gate_phi_deg, cfg.gate_theta_deg, cfg.gate_r_m)

    def as_report(self) -> dict[str, float]:
        """`{"phi_deg", "theta_deg", "r_m"}`: the gates in the report's units."""
        return {
            "phi_deg": float(np.rad2deg(self.phi)),
            "theta_deg": float(np.rad2deg(self.theta)),
            "r_m": float(self.r),
        }


DEFAULT_GATES = Gates()


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Everything that defines a simulated scene distribution."""

    name: str = "seed"
    # --- geometry -------------------------------------------------------------------------
    wavelength: float = 0.3  # metres
    array: Literal["upa", "ula", "custom"] = "upa"
    nh: int = 12  # UPA columns (along y) / ULA elements
    nv: int = 12  # UPA rows (along z); ignored for a ULA
    spacing_h: float = 0.15  # metres (half wavelength)
    spacing_v: float = 0.15  # metres
    positions: tuple[tuple[float, float, float], ...] | None = None  # custom [N, 3], metres
    steering_model: Literal["exact", "fresnel", "far"] = "exact"
    # --- measurement ----------------------------------------------------------------------
    mode: Literal["ris", "full"] = "ris"  # RIS (y = G_l x + n) or full array (y = x + n)
    n_bs: int = 16  # M, BS antennas (ignored in full mode, where M = N)
    n_snapshots: int = 16  # L
    channel: Literal["iid", "los", "rician"] = "iid"  # H: CN(0, 1/N) entries, line of sight, or Rician
    codebook: Literal["random", "dft"] = "random"  # RIS codes: uniform phases or 2-D DFT beams
    # --- sources --------------------------------------------------------------------------
    k_min: int = 1
    k_max: int = K_MAX  # also the padding size of the truth arrays
    snr_db: tuple[float, float] = (-5.0, 20.0)  # uniform, per-measurement SNR at the receiver
    phi_deg: tuple[float, float] = PHI_RANGE_DEG
    theta_deg: tuple[float, float] = THETA_RANGE_DEG  # fixed to (0, 0) for a linear array
    r_m: tuple[float, float] = R_RANGE_M
    power_db: tuple[float, float] = (-6.0, 0.0)  # per-source power, dB re 1, drawn independently
    # --- separation rule: no two sources inside each other's detection gate (conventions section 7) -------
    gate_phi_deg: float = 5.0
    gate_theta_deg: float = 5.0
    gate_r_m: float = 1.0
    n_candidates: int = 64  # pool for sequential rejection sampling of separated sources
    # --- deployment (conventions section 9; every field's default keeps the seed's regime) -------------
    bs_distance_m: float = 4.0  # BS array centre to the surface centre, metres (los, rician)
    bs_azimuth_deg: float = 40.0  # direction of the BS centre seen from the surface centre
    bs_elevation_deg: float = 0.0
    bs_array: Literal["ula"] = "ula"  # horizontal ULA of n_bs elements, broadside facing the surface
    bs_spacing_m: float | None = None  # BS element spacing, metres (None: half wavelength)
    rician_k_factor: float = 10.0  # K-factor (linear) of `channel='rician'`
    deployment_seed: int | None = None  # fixes the channel and impairments across scenes (None: 0 for
    #   los/rician/impairments; an iid channel is then drawn per scene)
    code_bits: int = 0  # RIS phase resolution: 0 continuous, b >= 1 rounds to multiples of 2 pi / 2^b
    code_phase_error_deg: float = 0.0  # static per-element phase offset of the surface, Gaussian std, deg
    element_failure: float = 0.0  # fraction of elements stuck at one phase whatever the code, in [0, 1)
    channel_nmse_db: float | None = None  # stored H = true H + CN error at this NMSE (None: exact H)
    # --- numerics -------------------------------------------------------------------------
    dtype: Literal["complex64", "complex128"] = "complex64"

    def replace(self, **overrides) -> "SceneConfig":
        """A copy with fields overridden (tuples accepted as lists)."""
        known = {f.name for f in dataclasses.fields(self)}
        for k in overrides:
            if k not in known:
                raise ValueError(f"{k}: not a scenario field; known fields: {', '.join(sorted(known))}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        if "positions" in fixed and fixed["positions"] is not None:
            fixed["positions"] = tuple(tuple(float(c) for c in row) for row in fixed["positions"])
        cfg = dataclasses.replace(self, **fixed)
        cfg.validate()
        return cfg

    @property
    def gates(self) -> Gates:
        """The separation rule's gate in SI units (the detector's and the evaluation's gate)."""
        return Gates.from_deg(self.gate_phi_deg, self.gate_theta_deg, self.gate_r_m)

    @property
    def n_elements(self) -> int:
        return scenario_geometry(self).n_elements

    @property
    def n_measurements(self) -> int:
        """M: BS antennas in RIS mode, N in full-array mode."""
        return self.n_elements if self.mode == "full" else self.n_bs

    @property
    def real_dtype(self):
        return np.float64 if self.dtype == "complex128" else np.float32

    @property
    def is_linear(self) -> bool:
        return scenario_geometry(self).linear

    def validate(self) -> None:
        """Raise `ValueError` naming the first inconsistent field (wrong type, value or box)."""
        _check_field_types(self)
        def rng(name, lo_hi, lo=-np.inf, hi=np.inf, strict=False):
            a, b = lo_hi
            if not (np.isfinite(a) and np.isfinite(b)) or a > b:
                raise ValueError(f"{name}: expected (min, max) with min <= max, got {lo_hi}")
            if a < lo or b > hi or (strict and a <= lo):
                raise ValueError(f"{name}: values must lie in ({lo}, {hi}), got {lo_hi}")

        if self.mode not in ("ris", "full"):
            raise ValueError(f"mode: expected 'ris' or 'full', got {self.mode!r}")
        if self.array not in ("upa", "ula", "custom"):
            raise ValueError(f"array: expected 'upa', 'ula' or 'custom', got {self.array!r}")
        if self.array == "custom" and self.positions is None:
            raise ValueError("positions: required when array='custom'")
        if self.codebook not in ("random", "dft"):
            raise ValueError(f"codebook: expected 'random' or 'dft', got {self.codebook!r}")
        if self.codebook == "dft" and self.array != "upa":
            raise ValueError("codebook: 'dft' needs array='upa'")
        if self.dtype not in ("complex64", "complex128"):
            raise ValueError(f"dtype: expected complex64 or complex128, got {self.dtype!r}")
        if self.steering_model not in ("exact", "fresnel", "far"):
            raise ValueError(f"steering_model: unknown {self.steering_model!r}")
        if self.wavelength <= 0:
            raise ValueError(f"wavelength: must be > 0, got {self.wavelength}")
        if self.n_snapshots < 1:
            raise ValueError(f"n_snapshots: must be >= 1, got {self.n_snapshots}")
        if self.mode == "ris" and self.n_bs < 1:
            raise ValueError(f"n_bs: must be >= 1, got {self.n_bs}")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"k_min, k_max: expected 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if self.n_candidates < self.k_max:
            raise ValueError(f"n_candidates: must be >= k_max ({self.k_max}), got {self.n_candidates}")
        rng("snr_db", self.snr_db)
        # A planar or linear array cannot tell a source at phi from its mirror behind the array
        # (180 deg - phi): the box is the front half-space.
        rng("phi_deg", self.phi_deg, -90.0, 90.0)
        rng("theta_deg", self.theta_deg, -90.0, 90.0)
        rng("r_m", self.r_m, 0.0, np.inf, strict=True)
        rng("power_db", self.power_db)
        for name in ("gate_phi_deg", "gate_theta_deg", "gate_r_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        scenario_geometry(self)  # validates spacing / positions
        _validate_deployment(self)

    @property
    def is_deployment(self) -> bool:
        """True when the channel is fixed by a deployment (los, rician): the noise is then the
        deployment's fixed floor (conventions section 9), not re-normalised per scene."""
        return self.mode == "ris" and self.channel in ("los", "rician")

    @property
    def has_impairments(self) -> bool:
        """True when any impairment of conventions section 9 is switched on."""
        return (self.code_phase_error_deg > 0 or self.element_failure > 0
                or self.channel_nmse_db is not None)

    def as_dict(self) -> dict:
        """The config as a JSON-ready dict, leaving out the deployment fields at their defaults
        (so files and reports of the seed's regime are the same as before those fields existed)."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in DEPLOYMENT_FIELDS and out[f.name] == f.default:
                del out[f.name]
        return out


#: Fields of conventions section 9; `SceneConfig.as_dict` leaves them out at their defaults.
DEPLOYMENT_FIELDS = ("bs_distance_m", "bs_azimuth_deg", "bs_elevation_deg", "bs_array", "bs_spacing_m",
                     "rician_k_factor", "deployment_seed", "code_bits", "code_phase_error_deg",
                     "element_failure", "channel_nmse_db")


def bs_positions(cfg: SceneConfig) -> np.ndarray:
    """`[M, 3]` float64 positions of the BS elements of a deployment, metres, in the surface's frame
    (conventions section 9): a ULA of `n_bs` elements (spacing `bs_spacing_m`, half a wavelength by
    default) centred at `bs_distance_m` toward (`bs_azimuth_deg`, `bs_elevation_deg`) from the
    surface's centre, broadside facing it: its axis is horizontal and perpendicular to that
    direction, `[-sin(az), cos(az), 0]`."""
    spacing = cfg.wavelength / 2.0 if cfg.bs_spacing_m is None else float(cfg.bs_spacing_m)
    return bs_ula(cfg.n_bs, spacing, cfg.bs_distance_m, np.deg2rad(cfg.bs_azimuth_deg),
                  np.deg2rad(cfg.bs_elevation_deg))


def _optional_number(cfg, name: str, lo: float | None = None) -> None:
    v = getattr(cfg, name)
    if v is None:
        return
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if not ok or not math.isfinite(float(v)):
        raise ValueError(f"{name}: expected a finite number or None, got {v!r}")
    if lo is not None and float(v) <= lo:
        raise ValueError(f"{name}: must be > {lo}, got {v!r}")


def _validate_deployment(cfg: SceneConfig) -> None:
    """The fields of conventions section 9: one `ValueError` naming the first bad field."""
    if cfg.channel not in ("iid", "los", "rician"):
        raise ValueError(f"channel: expected 'iid', 'los' or 'rician', got {cfg.channel!r}")
    if cfg.channel != "iid" and cfg.mode != "ris":
        raise ValueError(f"channel: {cfg.channel!r} needs mode='ris' (full-array mode has no channel)")
    if cfg.bs_array != "ula":
        raise ValueError(f"bs_array: expected 'ula', got {cfg.bs_array!r}")
    _optional_number(cfg, "bs_spacing_m", lo=0.0)
    _optional_number(cfg, "channel_nmse_db")
    if cfg.deployment_seed is not None and (
            not isinstance(cfg.deployment_seed, (int, np.integer)) or isinstance(cfg.deployment_seed, bool)
            or cfg.deployment_seed < 0):
        raise ValueError(f"deployment_seed: expected an integer >= 0 or None, got {cfg.deployment_seed!r}")
    if cfg.code_bits < 0:
        raise ValueError(f"code_bits: expected an integer >= 0 (0 = continuous phases), got {cfg.code_bits!r}")
    if cfg.code_bits > 16:
        raise ValueError(f"code_bits: at most 16 (use 0 for continuous phases), got {cfg.code_bits!r}")
    if cfg.rician_k_factor < 0:
        raise ValueError(f"rician_k_factor: must be >= 0 (linear), got {cfg.rician_k_factor!r}")
    if cfg.code_phase_error_deg < 0:
        raise ValueError(f"code_phase_error_deg: must be >= 0, got {cfg.code_phase_error_deg!r}")
    if not 0.0 <= cfg.element_failure < 1.0:
        raise ValueError(f"element_failure: must lie in [0, 1), got {cfg.element_failure!r}")
    if cfg.has_impairments and cfg.mode != "ris":
        raise ValueError("code_phase_error_deg, element_failure, channel_nmse_db: impairments of the surface "
                         "and channel need mode='ris'")
    if cfg.code_bits and cfg.mode != "ris":
        raise ValueError("code_bits: needs mode='ris' (full-array mode has no codes)")
    if cfg.channel in ("los", "rician"):
        if cfg.bs_distance_m <= 0:
            raise ValueError(f"bs_distance_m: must be > 0, got {cfg.bs_distance_m!r}")
        if not (-90.0 < cfg.bs_azimuth_deg < 90.0 and -90.0 < cfg.bs_elevation_deg < 90.0):
            raise ValueError(f"bs_azimuth_deg, bs_elevation_deg: the BS must sit in front of the surface "
                             f"(both in (-90, 90) deg), got {cfg.bs_azimuth_deg!r}, {cfg.bs_elevation_deg!r}")
        surface = np.asarray(scenario_geometry(cfg).positions)
        extent = float(np.max(np.linalg.norm(surface, axis=-1)))
        if cfg.bs_distance_m <= extent:
            raise ValueError(f"bs_distance_m: {cfg.bs_distance_m!r} m puts the BS inside the surface (its elements "
                             f"reach {extent:.3g} m from the centre)")
        if np.min(bs_positions(cfg)[:, 0]) <= 0:
            raise ValueError("bs_distance_m, bs_azimuth_deg, bs_elevation_deg: part of the BS array lies behind "
                             "the surface's plane (x <= 0)")


def _check_field_types(cfg) -> None:
    """Each field of a frozen config has its default's type: integers (not bools, not 2.5),
    finite numbers, strings, (min, max) pairs of finite numbers. Raises `ValueError` naming the
    field, so a mistyped override (`--set k_min=x`) is an error, not a `TypeError` later."""
    def number(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

    for f in dataclasses.fields(cfg):
        v, d = getattr(cfg, f.name), f.default
        if isinstance(d, bool) or d is None or d is dataclasses.MISSING:
            continue
        if isinstance(d, int):
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))):
                raise ValueError(f"{f.name}: expected an integer, got {v!r}")
        elif isinstance(d, float):
            if not (number(v) and math.isfinite(float(v))):
                raise ValueError(f"{f.name}: expected a finite number, got {v!r}")
        elif isinstance(d, str):
            if not isinstance(v, str):
                raise ValueError(f"{f.name}: expected a string, got {v!r}")
        elif isinstance(d, tuple) and len(d) == 2 and all(number(x) for x in d):
            if not (isinstance(v, tuple) and len(v) == 2 and all(number(x) and math.isfinite(float(x)) for x in v)):
                raise ValueError(f"{f.name}: expected (min, max), two finite numbers, got {v!r}")


@functools.lru_cache(maxsize=64)
def scenario_geometry(cfg: SceneConfig) -> ArrayGeometry:
    """The `ArrayGeometry` a scenario describes."""
    if cfg.array == "upa":
        return upa(cfg.nh, cfg.nv, cfg.spacing_h, cfg.spacing_v, wavelength=cfg.wavelength)
    if cfg.array == "ula":
        return ula(cfg.nh, cfg.spacing_h, wavelength=cfg.wavelength)
    return from_positions(np.asarray(cfg.positions, dtype=np.float64), cfg.wavelength)


SCENARIOS: dict[str, SceneConfig] = {
    "seed": SceneConfig(name="seed"),
    "full": SceneConfig(name="full", mode="full", n_snapshots=64),
    # Near-field ULA benchmark of the literature (see the module docstring).
    # A deployment (conventions section 9): the seed's surface and sources with a fixed line-of-sight BS,
    # a 16-element half-wavelength ULA 4 m from the surface centre at 40 deg azimuth; the noise is
    # the deployment's fixed floor.
    "seed-los": SceneConfig(name="seed-los", channel="los", bs_distance_m=4.0, bs_azimuth_deg=40.0,
                            bs_elevation_deg=0.0, deployment_seed=0),
    "ula15": SceneConfig(name="ula15", mode="full", array="ula", nh=15, spacing_h=0.15, n_snapshots=100,
                         k_min=2, k_max=2, snr_db=(10.0, 10.0), phi_deg=(-60.0, 60.0), theta_deg=(0.0, 0.0),
                         r_m=(3.5, 15.0), power_db=(0.0, 0.0)),
}


def get_scenario(name: str = "seed", **overrides) -> SceneConfig:
    """A named scenario with optional field overrides.

    A linear array has no elevation resolution: unless `theta_deg` is given, it is set to
    (0, 0) for `array='ula'` or collinear custom positions.
    """
    if name not in SCENARIOS:
        raise ValueError(f"scenario: unknown {name!r}; known: {sorted(SCENARIOS)}")
    cfg = SCENARIOS[name].replace(**overrides)
    if cfg.is_linear and "theta_deg" not in overrides:
        cfg = cfg.replace(theta_deg=(0.0, 0.0))
    if cfg.is_linear and cfg.theta_deg[0] != cfg.theta_deg[1]:
        raise ValueError("theta_deg: a linear array cannot resolve elevation; give a fixed theta")
    return cfg
