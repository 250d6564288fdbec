"""The sweeps of `rismvdr bench accuracy`: their points, values, method sets and defaults.

Sweeps (each point a fresh test set of `n_scenes` scenes, seed `fold_in(seed, point_seed(point))`):

* `base`: the `seed` scenario as is (SNR uniform in [-5, 20] dB, K uniform in 1..5, L = 16).
* `snr`: fixed SNR -10 .. 25 dB in 5 dB steps, at K = 1 (`snr_k1`) and K = 3 (`snr_k3`).
* `k`: K = 1 .. 5 at 10 dB.
* `l`: L (snapshots) in 4, 8, 16, 32, 64 at 10 dB, K = 3.
* `r`: range bins 0.5-2, 2-4, 4-6, 6-8, 8-10 m (all sources of a scene in the bin) at 10 dB,
  K = 3; the search box stays the base scenario's 0.5..10 m, so no method is told the bin.
* `ula`: a full-array near-field case comparable to the literature, on its own scenario
  `ula15` (whatever the base scenario): 15-element half-wavelength ULA, L = 100 snapshots,
  K = 2 equal-power sources, phi in [-60, 60] deg, r in [3.5, 15] m (Fresnel region), SNR
  -10 .. 25 dB (the `snr_values_db`); only the MUSIC / MVDR family that applies in full-array
  mode, and the bound (`ULA_METHODS`).

The bound: `BOUND_METHOD` (`ml-oracle`, the compressive ML refinement started at the
true positions with the true K) is among the default methods (and `--quick`'s), so it runs at
every point; every record carries its F1 at the same point (`f1_bound`) and the ratio
(`f1_over_bound`). It is reported under its own suite, `bound`. With `--methods`, the bound
runs only when named.

Deployment sweeps (conventions section 9; not among the defaults: `--sweeps deploy nmse phase_error
failure`), all on the `seed-los` deployment (`DEPLOY_SCENARIO`: the seed's surface and sources, a
fixed line-of-sight BS, the deployment's fixed noise floor), each point the same sources, symbols
and noise (one test set per run, `point_seed` of `DEPLOY_SEED_KEY`), so points differ only in
their codes or impairment:

* `deploy` (`deploy_random`, `deploy_designed`): random codes and codes designed against the CRB
  (`rismvdr.physics.design`, at `DESIGN_SNR_DB`), continuous, 2-bit and 1-bit (`code_bits`).
* `nmse`: channel-estimation error `channel_nmse_db` in `NMSE_VALUES_DB`;
  `phase_error`: the surface's static phase error `code_phase_error_deg` in `PHASE_ERROR_VALUES_DEG`;
  `failure`: the fraction of stuck elements `element_failure` in `FAILURE_VALUES`; each with
  designed 2-bit codes (`IMPAIRMENT_CODE_BITS`), the surface a deployment would install.

`--quick` (under 10 minutes on a 2-core CPU) thins every sweep: SNR -10, 0, 10, 20 dB, K 1, 3,
5, L 4, 16, 32, range bins 0.5-2, 4-6, 8-10 m, `SCENES_PER_POINT_QUICK` scenes per point and
the methods of `QUICK_METHODS`; its points are points of the full run, with the same test sets.
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

__all__ = ["SWEEPS", "DEFAULT_SWEEPS", "SCENES_PER_POINT", "SCENES_PER_POINT_QUICK", "ULA_SCENARIO",
           "ULA_METHODS", "SNR_VALUES_DB", "K_VALUES", "L_VALUES", "R_BINS_M", "SNR_VALUES_QUICK_DB",
           "K_VALUES_QUICK", "L_VALUES_QUICK", "R_BINS_QUICK_M", "QUICK_METHODS", "B2_METHODS", "BOUND_METHOD",
           "CPU_SKIPS", "suite_of", "DEPLOY_SCENARIO", "DEPLOY_SWEEPS", "DEPLOY_SEED_KEY", "CODE_BITS_VALUES",
           "DESIGN_SNR_DB", "NMSE_VALUES_DB", "PHASE_ERROR_VALUES_DEG", "FAILURE_VALUES", "IMPAIRMENT_CODE_BITS",
           "BenchPoint", "bench_points", "point_seed"]

#: Sweep names accepted by `--sweeps` (`snr` is `snr_k1` and `snr_k3`).
SWEEPS = ("base", "snr", "snr_k1", "snr_k3", "k", "l", "r", "ula", "deploy", "deploy_random", "deploy_designed",
          "nmse", "phase_error", "failure")
#: The deployment sweeps (run when named in `--sweeps`; `deploy` is `deploy_random` and `deploy_designed`).
DEPLOY_SWEEPS = ("deploy", "deploy_random", "deploy_designed", "nmse", "phase_error", "failure")
#: Their scenario, the key of their one test set, and the values they sweep.
DEPLOY_SCENARIO = "seed-los"
DEPLOY_SEED_KEY = "seed-los"
CODE_BITS_VALUES = (0, 2, 1)
NMSE_VALUES_DB = (-30.0, -20.0, -10.0)
PHASE_ERROR_VALUES_DEG = (0.0, 5.0, 10.0, 20.0)
FAILURE_VALUES = (0.0, 0.05, 0.1)
#: The design SNR of the designed codes (dB), and the resolution of the impairment sweeps' codes.
DESIGN_SNR_DB = 0.0
IMPAIRMENT_CODE_BITS = 2
#: Sweeps run when none are named (also by `--quick`).
DEFAULT_SWEEPS = ("base", "snr", "k", "l", "r", "ula")
#: Scenes per point (a fresh test set each), and with `--quick`.
SCENES_PER_POINT = 200
SCENES_PER_POINT_QUICK = 16
#: The scenario of the `ula` sweep (full-array near-field ULA, `rismvdr.physics.scenarios`).
ULA_SCENARIO = "ula15"
#: The bound every record is compared with (`f1_bound`, `f1_over_bound`): the compressive ML
#: refinement started at the truth with the true K (suite `bound`).
BOUND_METHOD = "ml-oracle"
#: Methods of the `ula` sweep: the MUSIC / MVDR family that applies in full-array mode, and the bound.
ULA_METHODS = ("music-mdl", "music-aic", "music-oracle-k", "mvdr-sample", "mvdr-oracle", BOUND_METHOD)
#: Values of the snr and ula sweeps (dB), the k sweep and the l sweep (snapshots).
SNR_VALUES_DB = tuple(range(-10, 30, 5))  # -10 .. 25 dB
K_VALUES = (1, 2, 3, 4, 5)
L_VALUES = (4, 8, 16, 32, 64)
#: `--quick` values (L stops at 32: `somp-ml` at L = 64 takes minutes per 20 scenes on a 2-core CPU).
L_VALUES_QUICK = (4, 16, 32)
SNR_VALUES_QUICK_DB = (-10, 0, 10, 20)
K_VALUES_QUICK = (1, 3, 5)
#: Source-range bins (m) of the `r` sweep (the search box stays the base scenario's 0.5..10 m).
R_BINS_M = ((0.5, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0))
R_BINS_QUICK_M = ((0.5, 2.0), (4.0, 6.0), (8.0, 10.0))
#: Methods of `--quick` (those registered and applicable).
QUICK_METHODS = ("mvdr-oracle", "mvdr-als", "somp-ml", "learned", "music-oracle-k", BOUND_METHOD)
#: (sweep, value, method) pairs not run on the CPU backend, with the reason (reported in the
#: markdown and the JSON meta). Empty: `somp-ml` at L = 64 used to stop at 0 % CPU here, a
#: deadlock of jaxlib 0.10's batched LAPACK solves (each hands chunks of a large batch to XLA's
#: intra-op pool and blocks on them; with as many such calls running at once as the pool has
#: threads nothing runs them). The compressive least-squares solve no longer calls LAPACK
#: (`rismvdr.physics.compressive.ls_fit`), so nothing is skipped.
CPU_SKIPS: dict = {}
#: Methods given the truth (oracle K): reported under suite B2 (the bound has its own suite).
B2_METHODS = ("music-oracle-k", "mvdr-oracle", "somp-ml-oracle-k")


def suite_of(method: str) -> str:
    """The suite a method's records are reported under: `bound` (`BOUND_METHOD`), `B2` (given the
    truth: `B2_METHODS`) or `B1` (blind)."""
    return "bound" if method == BOUND_METHOD else "B2" if method in B2_METHODS else "B1"


class BenchPoint(NamedTuple):
    """One test set of a sweep: `variable` = `value` with the scenario `overrides`, on the
    named `scenario` (None: the run's base scenario)."""

    sweep: str  # base, snr_k1, snr_k3, k, l, ula
    variable: str  # "none", "snr_db", "k", "n_snapshots"
    value: float | int | None
    overrides: dict
    scenario: str | None = None
    codes: str = "random"  # "random" (drawn per scene) or "designed" (`rismvdr.physics.design`, one codebook)
    seed_key: str | None = None  # the points sharing a key share their test set (default: sweep and value)


def bench_points(sweeps=SWEEPS, *, snr_values_db=SNR_VALUES_DB, l_values=L_VALUES,
                 k_values=K_VALUES, r_bins_m=R_BINS_M) -> list[BenchPoint]:
    """The points of the chosen sweeps, in a fixed order."""
    unknown = [s for s in sweeps if s not in SWEEPS]
    if unknown:
        raise ValueError(f"sweeps: unknown {', '.join(unknown)}; known: {', '.join(SWEEPS)}")
    pts = []
    if "base" in sweeps:
        pts.append(BenchPoint("base", "none", None, {}))
    for k in (1, 3):
        if "snr" in sweeps or f"snr_k{k}" in sweeps:
            pts += [BenchPoint(f"snr_k{k}", "snr_db", s, dict(snr_db=(float(s), float(s)), k_min=k, k_max=k))
                    for s in snr_values_db]
    if "k" in sweeps:
        pts += [BenchPoint("k", "k", k, dict(snr_db=(10.0, 10.0), k_min=k, k_max=k)) for k in k_values]
    if "l" in sweeps:
        pts += [BenchPoint("l", "n_snapshots", n, dict(snr_db=(10.0, 10.0), k_min=3, k_max=3, n_snapshots=n))
                for n in l_values]
    if "r" in sweeps:
        pts += [BenchPoint("r", "r_bin_mid_m", 0.5 * (lo + hi), dict(snr_db=(10.0, 10.0), k_min=3, k_max=3, r_m=(lo, hi)))
                for lo, hi in r_bins_m]
    if "ula" in sweeps:
        pts += [BenchPoint("ula", "snr_db", s, dict(snr_db=(float(s), float(s))), scenario=ULA_SCENARIO)
                for s in snr_values_db]
    return pts + _deploy_points(sweeps)


def _deploy_points(sweeps) -> list[BenchPoint]:
    """The points of the deployment sweeps among `sweeps` (see the module docstring)."""
    def point(sweep, variable, value, overrides, codes):
        return BenchPoint(sweep, variable, value, overrides, scenario=DEPLOY_SCENARIO, codes=codes,
                          seed_key=DEPLOY_SEED_KEY)

    pts = []
    for codes in ("random", "designed"):
        if "deploy" in sweeps or f"deploy_{codes}" in sweeps:
            pts += [point(f"deploy_{codes}", "code_bits", b, dict(code_bits=b), codes) for b in CODE_BITS_VALUES]
    impairments = (("nmse", "channel_nmse_db", NMSE_VALUES_DB), ("phase_error", "code_phase_error_deg",
                   PHASE_ERROR_VALUES_DEG), ("failure", "element_failure", FAILURE_VALUES))
    for sweep, field, values in impairments:
        if sweep in sweeps:
            pts += [point(sweep, field, v, {"code_bits": IMPAIRMENT_CODE_BITS, field: v}, "designed") for v in values]
    return pts


def point_seed(point: BenchPoint) -> int:
    """A stable per-point integer folded into the bench seed: the same point gets the same test
    set whatever other points or sweeps run; points with one `seed_key` share theirs."""
    text = point.seed_key if point.seed_key is not None else f"{point.sweep}:{point.value}"
    return zlib.crc32(text.encode()) & 0x7FFFFFFF
