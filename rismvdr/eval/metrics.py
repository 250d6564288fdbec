"""Localization metrics (conventions section 7): the one module every method's evaluation goes through.

NumPy on the host. Inputs are SI (radians, metres) as padded per-scene arrays, the fixed-size
output of the detector; outputs are the report's human edge (degrees, metres, dB), with keys
named `*_deg`, `*_m`, `*_db`.

Conventions (fixed here, shared by every method):

* **Errors** are `estimate - truth`. Elevation and range errors are plain differences. The
  azimuth error is the plain difference wrapped to `(-pi, pi]` (azimuth is 2 pi-periodic, so
  179 deg and -179 deg are 2 deg apart); nothing is ever taken modulo pi, so +89 deg and
  -89 deg stay 178 deg apart, in azimuth and in elevation. Inside the seed's +-60 deg box the
  wrap never acts.
* **Matching**: per scene, Hungarian assignment (`scipy.optimize.linear_sum_assignment`,
  minimum total cost) between valid estimates and true sources with cost
  `sqrt((dphi/g_phi)^2 + (dtheta/g_theta)^2 + (dr/g_r)^2)`; it pairs `min(n_est, n_truth)`
  of them. A pair is a true positive (TP) iff `|dphi| <= g_phi`, `|dtheta| <= g_theta` and
  `|dr| <= g_r`. `FP = n_est - TP`, `FN = n_truth - TP`. TPs are counted on the minimum-cost
  assignment (as the seed did), not on a separately maximised gated matching.
* **Rates** (micro: TP, FP, FN summed over the scenes of a group):
  `precision = TP / (TP + FP)`, `recall = TP / (TP + FN)`, `F1 = 2 TP / (2 TP + FP + FN)`.
  A rate whose denominator is 0 is NaN (precision with no estimates, recall with no truth),
  except when the group has neither estimates nor truth: then precision = recall = F1 = 1
  (nothing to find, nothing claimed). F1 is 0 whenever TP = 0 and FP + FN > 0.
* **Position error** of a pair: the Euclidean distance between
  `u = r [cos th cos phi, cos th sin phi, sin th]` of the estimate and of the truth (metres).
* **Error statistics**: `rmse_phi_deg`, `rmse_theta_deg`, `rmse_r_m`, `median_pos_err_m` and
  `p90_pos_err_m` (linear-interpolated 90th percentile, `np.percentile`) are over TPs only;
  `rmse_xyz_all_m` is the RMSE of the position error over all Hungarian pairs, gated or not
  (the seed's smooth metric). Each is NaN when there is nothing to average. Sums are exact
  (`math.fsum`), so the numbers do not depend on the order of estimates, sources or scenes.
* **PSSR**: per-scene peak-to-sidelobe ratios in dB (see `pssr_db`) are summarised by their
  mean and median over the scenes of a group whose value is finite.
* **CRB**: with per-source `sqrt(CRB)` arrays, over the TPs of a group,
  `sqrt_crb_<p> = sqrt(mean(sqrt_crb^2))` (root-mean CRB of the matched true sources) and
  `rmse_over_sqrt_crb_<p> = sqrt(mean(err^2)) / sqrt(mean(sqrt_crb^2))`, both means over the
  same TP pairs (`err` of the estimate, `sqrt_crb` of its true source). A scene whose bound is
  not finite at one of its true sources (`inf` from a singular Fisher matrix: coincident
  sources, a zero-power source, too few measurements; or NaN) has an undefined CRB: its pairs
  carry NaN bounds and are left out of both means (the group's figures come from its other
  scenes), and `n_scenes_crb_undefined` counts such scenes. A parameter whose bound is NaN at
  every true source (theta of a linear array, r of the far model) is not bounded and marks no
  scene undefined.
* **Breakdowns**: `per_k` groups scenes by their true number of sources K (keys "0", "1", ...),
  `per_snr_bin` by SNR in bins aligned to multiples of the bin width (default 5 dB), keys like
  "[-5,0)" (lower edge inclusive). Each group holds the same numbers as the overall dict.
  Keys are strings so that a JSON round trip returns the same dict.

`rismvdr.io.to_jsonable` turns the result into plain JSON types, with NaN and +-inf
written as `null`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from rismvdr.physics.scenarios import DEFAULT_GATES, Gates  # re-exported: the one gate lives in physics

__all__ = [
    "Gates",
    "DEFAULT_GATES",
    "SceneMatch",
    "PairTable",
    "mask_from_nan",
    "position",
    "wrap_angle",
    "match_scene",
    "match_pairs",
    "pairs_to_records",
    "evaluate",
    "pssr_db",
    "format_table",
]

_ANGLE_TOL = 1e-6  # radians of slack on the [-pi, pi] / [-pi/2, pi/2] range checks




class SceneMatch(NamedTuple):
    """Hungarian matching of one scene (`P = min(n_est, n_truth)` pairs).

    Attributes:
      est_index: `[P]` int, index of the estimate in the (padded) estimate row.
      gt_index: `[P]` int, index of the true source in the (padded) truth row.
      err_phi: `[P]` azimuth error `est - truth` wrapped to `(-pi, pi]`, radians.
      err_theta: `[P]` elevation error, radians.
      err_r: `[P]` range error, metres.
      pos_err: `[P]` 3-D position error, metres.
      is_tp: `[P]` bool, inside all three gates.
      tp, fp, fn: counts of the scene.
    """

    est_index: np.ndarray
    gt_index: np.ndarray
    err_phi: np.ndarray
    err_theta: np.ndarray
    err_r: np.ndarray
    pos_err: np.ndarray
    is_tp: np.ndarray
    tp: int
    fp: int
    fn: int


class PairTable(NamedTuple):
    """All Hungarian pairs of a test set, one entry per pair (SI units; `[P]` arrays).

    For error CDFs: `np.sort(table.pos_err[table.is_tp])`. `pairs_to_records` turns it into
    report-unit rows (a list of dicts, e.g. for `pandas.DataFrame`).

    Attributes:
      scene: scene index.
      est_index, gt_index: indices in the padded estimate / truth rows of that scene.
      k_true: number of true sources in that scene.
      snr_db: the scene's SNR (NaN if not given).
      err_phi, err_theta, err_r, pos_err, is_tp: as in `SceneMatch`.
      score: the estimate's score (NaN if not given).
      sqrt_crb_phi, sqrt_crb_theta, sqrt_crb_r: sqrt(CRB) of the true source (NaN if not given).
    """

    scene: np.ndarray
    est_index: np.ndarray
    gt_index: np.ndarray
    k_true: np.ndarray
    snr_db: np.ndarray
    err_phi: np.ndarray
    err_theta: np.ndarray
    err_r: np.ndarray
    pos_err: np.ndarray
    is_tp: np.ndarray
    score: np.ndarray
    sqrt_crb_phi: np.ndarray
    sqrt_crb_theta: np.ndarray
    sqrt_crb_r: np.ndarray


# ----------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------


def wrap_angle(x) -> np.ndarray:
    """Wrap angles (radians) to `(-pi, pi]`; values already inside are returned unchanged.

    >>> round(float(np.rad2deg(wrap_angle(np.deg2rad(358.0)))), 9)
    -2.0
    """
    x = np.asarray(x, dtype=np.float64)
    wrapped = np.pi - np.mod(np.pi - x, 2.0 * np.pi)
    return np.where((x > np.pi) | (x <= -np.pi), wrapped, x)


def position(phi, theta, r) -> np.ndarray:
    """Cartesian position `u = r [cos th cos phi, cos th sin phi, sin th]` (conventions section 1).

    Args:
      phi, theta: `[...]` azimuth and elevation, radians.
      r: `[...]` range, metres.

    Returns:
      `[..., 3]` positions, metres.
    """
    phi, theta, r = (np.asarray(a, dtype=np.float64) for a in (phi, theta, r))
    ct = np.cos(theta)
    return np.stack([r * ct * np.cos(phi), r * ct * np.sin(phi), r * np.sin(theta)], axis=-1)


# ----------------------------------------------------------------------------------------------
# input validation (host side; every error names its argument)
# ----------------------------------------------------------------------------------------------


def _float_array(name: str, x, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected real numbers, got {type(x).__name__} ({e})") from None
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {list(a.shape)}")
    return a


def _bool_array(name: str, x, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(a.shape)}")
    if a.dtype != np.bool_:
        if not np.issubdtype(a.dtype, np.integer) or np.any((a != 0) & (a != 1)):
            raise ValueError(f"{name}: expected a boolean mask (or 0/1 integers), got dtype {a.dtype}")
        a = a.astype(bool)
    return a


def _same_shape(names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    for n, a in zip(names[1:], arrays[1:]):
        if a.shape != arrays[0].shape:
            raise ValueError(
                f"{n}: shape {list(a.shape)} differs from {names[0]} shape {list(arrays[0].shape)}"
            )


def mask_from_nan(phi, theta, r, *, names: Sequence[str] = ("phi", "theta", "r")) -> np.ndarray:
    """Validity mask of NaN-padded `(phi, theta, r)` arrays (the scene file's truth layout).

    An entry is padding iff all three values are NaN, and valid iff all three are finite.

    Args:
      phi, theta, r: `[S, K]` arrays (any common shape), NaN where padded.
      names: the argument names used in error messages.

    Returns:
      `[S, K]` bool, True for valid entries.

    Raises:
      ValueError: shapes differ, or an entry is partly NaN or holds an infinity.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (phi, theta, r)]
    _same_shape(names, arrays)
    nan = [np.isnan(a) for a in arrays]
    pad = nan[0] & nan[1] & nan[2]
    for n, a, isn in zip(names, arrays, nan):
        bad = (isn & ~pad) | np.isinf(a)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{n}: non-finite value {a[idx]} at index {list(idx)} where the other coordinates "
                "are not all NaN (padding must be NaN in phi, theta and r together)"
            )
    return ~pad


def _check_values(names, arrays, valid) -> None:
    """Finite, in range (radians, positive range) wherever `valid`."""
    phi_n, th_n, r_n = names
    phi, th, r = arrays
    for n, a in zip(names, arrays):
        bad = valid & ~np.isfinite(a)
        if np.any(bad):
            idx = [int(i) for i in np.argwhere(bad)[0]]
            raise ValueError(f"{n}: non-finite value {a[tuple(idx)]} at valid index {idx}")
    if np.any(valid & (np.abs(phi) > np.pi + _ANGLE_TOL)):
        raise ValueError(f"{phi_n}: azimuth outside [-pi, pi]; angles must be in radians")
    if np.any(valid & (np.abs(th) > np.pi / 2 + _ANGLE_TOL)):
        raise ValueError(f"{th_n}: elevation outside [-pi/2, pi/2]; angles must be in radians")
    if np.any(valid & (r < 0)):
        raise ValueError(f"{r_n}: negative range")


def _triplet(prefix: str, phi, theta, r, mask, mask_name: str, ndim: int):
    names = (f"{prefix}_phi", f"{prefix}_theta", f"{prefix}_r")
    arrays = [_float_array(n, a, ndim) for n, a in zip(names, (phi, theta, r))]
    _same_shape(names, arrays)
    if mask is None:
        mask = mask_from_nan(*arrays, names=names)
    else:
        mask = _bool_array(mask_name, mask, arrays[0].shape)
    _check_values(names, arrays, mask)
    return arrays, mask


# ----------------------------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------------------------


def _match_arrays(est, ev, gt, gm, gates: Gates):
    """Hungarian matching of every scene. `est`, `gt`: (phi, theta, r) `[S, Ke]` / `[S, Kt]`.

    The cost tensor is formed once for all scenes (padding included, never selected); only the
    assignment itself loops over scenes. Returns `(scene, est_index, gt_index)` of the pairs
    and the `[S]` counts of valid estimates and true sources.
    """
    dphi = wrap_angle(est[0][:, :, None] - gt[0][:, None, :])
    dth = est[1][:, :, None] - gt[1][:, None, :]
    dr = est[2][:, :, None] - gt[2][:, None, :]
    with np.errstate(invalid="ignore"):  # NaN padding
        cost = np.sqrt((dphi / gates.phi) ** 2 + (dth / gates.theta) ** 2 + (dr / gates.r) ** 2)
    n_est, n_gt = ev.sum(axis=1).astype(np.int64), gm.sum(axis=1).astype(np.int64)
    scene, e_idx, g_idx = [], [], []
    for s in np.flatnonzero((n_est > 0) & (n_gt > 0)):
        ei, gi = np.flatnonzero(ev[s]), np.flatnonzero(gm[s])
        rows, cols = linear_sum_assignment(cost[s][np.ix_(ei, gi)])
        scene.append(np.full(len(rows), s, np.int64))
        e_idx.append(ei[rows])
        g_idx.append(gi[cols])
    empty = [np.zeros(0, np.int64)]
    pair_idx = tuple(np.concatenate(v + empty) for v in (scene, e_idx, g_idx))
    return pair_idx, (dphi, dth, dr), n_est, n_gt


def _pair_errors(est, gt, pair_idx, diffs, gates: Gates):
    """Errors, position error and gate test of the pairs: `[P]` arrays."""
    s, i, j = pair_idx
    e_p, e_t, e_r = (d[s, i, j] for d in diffs)
    u_est = position(est[0][s, i], est[1][s, i], est[2][s, i])
    u_gt = position(gt[0][s, j], gt[1][s, j], gt[2][s, j])
    pos_err = np.sqrt(np.sum((u_est - u_gt) ** 2, axis=-1))
    is_tp = (np.abs(e_p) <= gates.phi) & (np.abs(e_t) <= gates.theta) & (np.abs(e_r) <= gates.r)
    return e_p, e_t, e_r, pos_err, is_tp


def match_scene(
    est_phi, est_theta, est_r, gt_phi, gt_theta, gt_r, *,
    est_valid=None, gt_mask=None, gates: Gates = DEFAULT_GATES,
) -> SceneMatch:
    """Match one scene's estimates to its true sources (Hungarian, gated; see module doc).

    Args:
      est_phi, est_theta, est_r: `[Ke]` estimates (radians, metres); padded entries are
        marked by `est_valid` or, when it is None, by NaN in all three.
      gt_phi, gt_theta, gt_r: `[Kt]` truth, padded the same way through `gt_mask`.
      est_valid: `[Ke]` bool or None.
      gt_mask: `[Kt]` bool or None.
      gates: detection gates (SI units).

    Returns:
      A `SceneMatch`; its indices refer to the padded rows.

    Raises:
      ValueError: naming the argument, for inconsistent shapes or non-finite / out-of-range
        values (e.g. degrees passed as radians) at valid entries.

    >>> m = match_scene([0.1, 0.5], [0.0, 0.0], [2.0, 5.0], [0.5, 0.1], [0.0, 0.0], [5.2, 2.0])
    >>> m.est_index.tolist(), m.gt_index.tolist(), (m.tp, m.fp, m.fn)
    ([0, 1], [1, 0], (2, 0, 0))
    """
    _check_gates(gates)
    est, ev = _triplet("est", est_phi, est_theta, est_r, est_valid, "est_valid", 1)
    gt, gm = _triplet("gt", gt_phi, gt_theta, gt_r, gt_mask, "gt_mask", 1)
    est, gt = [a[None] for a in est], [a[None] for a in gt]
    pair_idx, diffs, n_est, n_gt = _match_arrays(est, ev[None], gt, gm[None], gates)
    e_p, e_t, e_r, pos_err, is_tp = _pair_errors(est, gt, pair_idx, diffs, gates)
    tp = int(np.sum(is_tp))
    return SceneMatch(pair_idx[1], pair_idx[2], e_p, e_t, e_r, pos_err, is_tp,
                      tp, int(n_est[0]) - tp, int(n_gt[0]) - tp)


def _check_gates(gates) -> None:
    if not isinstance(gates, Gates):
        raise ValueError(f"gates: expected a Gates instance, got {type(gates).__name__}")


class _Matched(NamedTuple):
    pairs: PairTable
    n_est: np.ndarray  # [S] int
    n_gt: np.ndarray  # [S] int
    tp: np.ndarray  # [S] int
    snr_db: np.ndarray | None  # [S]
    crb_undefined: np.ndarray  # [S] bool: the scene's bound is not finite at a true source


def _optional(name: str, x, shape: tuple[int, ...], *, finite: bool) -> np.ndarray | None:
    if x is None:
        return None
    a = _float_array(name, x, len(shape))
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(a.shape)}")
    if finite and not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: non-finite value where a value is required")
    return a


def _match_all(
    est_phi, est_theta, est_r, gt_phi, gt_theta, gt_r, *, est_valid, gt_mask, snr_db, est_score,
    sqrt_crb_phi, sqrt_crb_theta, sqrt_crb_r, gates: Gates,
) -> _Matched:
    _check_gates(gates)
    est, ev = _triplet("est", est_phi, est_theta, est_r, est_valid, "est_valid", 2)
    gt, gm = _triplet("gt", gt_phi, gt_theta, gt_r, gt_mask, "gt_mask", 2)
    n_scenes = ev.shape[0]
    if gm.shape[0] != n_scenes:
        raise ValueError(f"gt_phi: {gm.shape[0]} scenes, est_phi has {n_scenes}")
    if n_scenes == 0:
        raise ValueError("est_phi: no scenes (S = 0)")
    snr = _optional("snr_db", snr_db, (n_scenes,), finite=True)
    score = _optional("est_score", est_score, ev.shape, finite=False)
    crbs = []
    crb_args = (("sqrt_crb_phi", sqrt_crb_phi), ("sqrt_crb_theta", sqrt_crb_theta),
                ("sqrt_crb_r", sqrt_crb_r))
    for n, c in crb_args:
        c = _optional(n, c, gm.shape, finite=False)
        if c is not None and np.any(gm & (c < 0)):
            raise ValueError(f"{n}: negative sqrt(CRB)")
        crbs.append(c)
    crbs, crb_undefined = _undefined_crb_scenes(crbs, gm)

    pair_idx, diffs, n_est, n_gt = _match_arrays(est, ev, gt, gm, gates)
    e_p, e_t, e_r, pos_err, is_tp = _pair_errors(est, gt, pair_idx, diffs, gates)
    s, i, j = pair_idx
    nan = np.full(len(s), np.nan)
    pairs = PairTable(
        scene=s, est_index=i, gt_index=j, k_true=n_gt[s],
        snr_db=nan if snr is None else snr[s],
        err_phi=e_p, err_theta=e_t, err_r=e_r, pos_err=pos_err, is_tp=is_tp,
        score=nan if score is None else score[s, i],
        sqrt_crb_phi=nan if crbs[0] is None else crbs[0][s, j],
        sqrt_crb_theta=nan if crbs[1] is None else crbs[1][s, j],
        sqrt_crb_r=nan if crbs[2] is None else crbs[2][s, j],
    )
    tp = np.bincount(s[is_tp], minlength=n_scenes).astype(np.int64)
    return _Matched(pairs, n_est, n_gt, tp, snr, crb_undefined)


def _undefined_crb_scenes(crbs, gm):
    """Scenes whose bound is undefined, and the bounds with those scenes' entries NaN.

    A scene is undefined when a bounded parameter's `sqrt(CRB)` is not finite at one of its true
    sources (`gm`); a parameter is bounded when its array is given and not NaN at every true
    source. The whole scene goes (its Fisher matrix is joint over its sources).
    """
    undefined = np.zeros(gm.shape[0], bool)
    for c in crbs:
        if c is not None and np.any(gm & ~np.isnan(c)):
            undefined |= np.any(gm & ~np.isfinite(c), axis=1)
    out = [None if c is None else np.where(undefined[:, None], np.nan, c) for c in crbs]
    return out, undefined


def match_pairs(
    est_phi, est_theta, est_r, gt_phi, gt_theta, gt_r, *,
    est_valid=None, gt_mask=None, snr_db=None, est_score=None,
    sqrt_crb_phi=None, sqrt_crb_theta=None, sqrt_crb_r=None, gates: Gates = DEFAULT_GATES,
) -> PairTable:
    """Every Hungarian pair of a test set, gated or not (for error CDFs and per-pair analysis).

    Arguments as for `evaluate`. Unmatched estimates and sources do not appear.

    Returns:
      A `PairTable` of `[P]` arrays in SI units, ordered by scene, then estimate index.
    """
    return _match_all(
        est_phi, est_theta, est_r, gt_phi, gt_theta, gt_r, est_valid=est_valid, gt_mask=gt_mask,
        snr_db=snr_db, est_score=est_score, sqrt_crb_phi=sqrt_crb_phi,
        sqrt_crb_theta=sqrt_crb_theta, sqrt_crb_r=sqrt_crb_r, gates=gates,
    ).pairs


def pairs_to_records(pairs: PairTable) -> list[dict[str, Any]]:
    """Rows of a `PairTable` in the report's units: a list of dicts (`pandas.DataFrame(rows)`).

    Keys: scene, est_index, gt_index, k_true, snr_db, err_phi_deg, err_theta_deg, err_r_m,
    pos_err_m, is_tp, score, sqrt_crb_phi_deg, sqrt_crb_theta_deg, sqrt_crb_r_m. Values are
    plain Python ints, floats (NaN where not given) and bools.
    """
    deg = 180.0 / np.pi
    out = []
    for i in range(len(pairs.scene)):
        out.append({
            "scene": int(pairs.scene[i]),
            "est_index": int(pairs.est_index[i]),
            "gt_index": int(pairs.gt_index[i]),
            "k_true": int(pairs.k_true[i]),
            "snr_db": float(pairs.snr_db[i]),
            "err_phi_deg": float(pairs.err_phi[i] * deg),
            "err_theta_deg": float(pairs.err_theta[i] * deg),
            "err_r_m": float(pairs.err_r[i]),
            "pos_err_m": float(pairs.pos_err[i]),
            "is_tp": bool(pairs.is_tp[i]),
            "score": float(pairs.score[i]),
            "sqrt_crb_phi_deg": float(pairs.sqrt_crb_phi[i] * deg),
            "sqrt_crb_theta_deg": float(pairs.sqrt_crb_theta[i] * deg),
            "sqrt_crb_r_m": float(pairs.sqrt_crb_r[i]),
        })
    return out


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    """Root mean square with an exact (order-independent) sum; NaN for an empty array."""
    if x.size == 0:
        return float("nan")
    return math.sqrt(math.fsum((np.asarray(x, np.float64) ** 2).tolist()) / x.size)


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den > 0 else float("nan")


def _summary(pairs: PairTable, sel_pairs: np.ndarray, n_est, n_gt, tp, pssr, crb_undefined) -> dict[str, Any]:
    """The section-7 numbers of one group. `sel_pairs`: bool `[P]`; the rest: the group's scenes."""
    deg = 180.0 / np.pi
    tp_s, fp_s, fn_s = int(np.sum(tp)), int(np.sum(n_est - tp)), int(np.sum(n_gt - tp))
    n_scenes = int(len(n_est))
    if tp_s + fp_s + fn_s == 0:
        precision = recall = f1 = 1.0
    else:
        precision, recall = _ratio(tp_s, tp_s + fp_s), _ratio(tp_s, tp_s + fn_s)
        f1 = _ratio(2 * tp_s, 2 * tp_s + fp_s + fn_s)
    sel_tp = sel_pairs & pairs.is_tp
    pos_tp = pairs.pos_err[sel_tp]
    rmse = {p: _rms(getattr(pairs, f"err_{p}")[sel_tp]) for p in ("phi", "theta", "r")}
    root_crb, rmse_crb = {}, {}
    for p in ("phi", "theta", "r"):  # over the TPs whose bound is defined (finite)
        bound = getattr(pairs, f"sqrt_crb_{p}")
        sel_crb = sel_tp & np.isfinite(bound)
        root_crb[p], rmse_crb[p] = _rms(bound[sel_crb]), _rms(getattr(pairs, f"err_{p}")[sel_crb])
    finite_pssr = pssr[np.isfinite(pssr)] if pssr is not None else np.zeros(0)

    def quantile(q):
        return float(np.percentile(pos_tp, q)) if pos_tp.size else float("nan")

    def over(a, b):
        if math.isnan(a) or math.isnan(b) or (a == 0 and b == 0):
            return float("nan")
        return a / b if b > 0 else float("inf")

    return {
        "n_scenes": n_scenes,
        "n_est": int(np.sum(n_est)),
        "n_truth": int(np.sum(n_gt)),
        "n_pairs": int(np.sum(sel_pairs)),
        "tp": tp_s,
        "fp": fp_s,
        "fn": fn_s,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fp_per_scene": _ratio(fp_s, n_scenes),
        "rmse_phi_deg": rmse["phi"] * deg,
        "rmse_theta_deg": rmse["theta"] * deg,
        "rmse_r_m": rmse["r"],
        "median_pos_err_m": quantile(50.0),
        "p90_pos_err_m": quantile(90.0),
        "rmse_xyz_all_m": _rms(pairs.pos_err[sel_pairs]),
        "mean_pssr_db": (math.fsum(finite_pssr.tolist()) / finite_pssr.size
                         if finite_pssr.size else float("nan")),
        "median_pssr_db": float(np.median(finite_pssr)) if finite_pssr.size else float("nan"),
        "sqrt_crb_phi_deg": root_crb["phi"] * deg,
        "sqrt_crb_theta_deg": root_crb["theta"] * deg,
        "sqrt_crb_r_m": root_crb["r"],
        "rmse_over_sqrt_crb_phi": over(rmse_crb["phi"], root_crb["phi"]),
        "rmse_over_sqrt_crb_theta": over(rmse_crb["theta"], root_crb["theta"]),
        "rmse_over_sqrt_crb_r": over(rmse_crb["r"], root_crb["r"]),
        "n_scenes_crb_undefined": int(np.sum(crb_undefined)),
    }


def _snr_bin(lo: float, width: float) -> str:
    return f"[{lo:g},{lo + width + 0.0:g})"


def evaluate(
    est_phi, est_theta, est_r, gt_phi, gt_theta, gt_r, *,
    est_valid=None, gt_mask=None, snr_db=None, est_score=None, scene_pssr_db=None,
    sqrt_crb_phi=None, sqrt_crb_theta=None, sqrt_crb_r=None,
    gates: Gates = DEFAULT_GATES, snr_bin_db: float = 5.0,
) -> dict[str, Any]:
    """Section-7 metrics of a test set, overall, per true K and per SNR bin.

    Args:
      est_phi, est_theta, est_r: `[S, Ke]` detector output (radians, metres), padded.
      gt_phi, gt_theta, gt_r: `[S, Kt]` truth (radians, metres), padded.
      est_valid: `[S, Ke]` bool; None: an estimate is padding iff all three values are NaN.
      gt_mask: `[S, Kt]` bool; None: NaN padding (the scene file's layout, `mask_from_nan`).
      snr_db: `[S]` per-scene SNR in dB (finite); enables `per_snr_bin`.
      est_score: `[S, Ke]` detector scores; carried into the pair table only.
      scene_pssr_db: `[S]` per-scene PSSR in dB (see `pssr_db`); non-finite values are left
        out of the PSSR summaries.
      sqrt_crb_phi, sqrt_crb_theta: `[S, Kt]` sqrt(CRB) of each true source, radians.
      sqrt_crb_r: `[S, Kt]` sqrt(CRB), metres. A scene whose bound is not finite (`inf`:
        not identifiable, or NaN) at one of its true sources, in a parameter bounded elsewhere,
        is left out of the CRB figures and counted in `n_scenes_crb_undefined`.
      gates: detection gates (SI units).
      snr_bin_db: width of the SNR bins, dB; bins are `[j w, (j+1) w)`.

    Returns:
      A plain dict (pass it through `rismvdr.io.to_jsonable` before `json.dumps`):
      `n_scenes, n_est, n_truth, n_pairs, tp, fp, fn, precision, recall, f1, fp_per_scene,
      rmse_phi_deg, rmse_theta_deg, rmse_r_m, median_pos_err_m, p90_pos_err_m, rmse_xyz_all_m,
      mean_pssr_db, median_pssr_db, sqrt_crb_phi_deg, sqrt_crb_theta_deg, sqrt_crb_r_m,
      rmse_over_sqrt_crb_phi, rmse_over_sqrt_crb_theta, rmse_over_sqrt_crb_r` (NaN where there
      is nothing to average or the input was not given), `n_scenes_crb_undefined` (scenes
      left out of the CRB figures; 0 without a bound), plus `gates`
      (`{phi_deg, theta_deg, r_m}`), `per_k` (`{"K": {same numbers}}`) and `per_snr_bin`
      (`{"[lo,hi)": {same numbers}}`, empty without `snr_db`). Definitions: module docstring.

    Raises:
      ValueError: naming the argument, for inconsistent shapes, non-finite or out-of-range
        values at valid entries, a non-boolean mask, or S = 0.

    >>> import numpy as np
    >>> m = evaluate(np.zeros((1, 1)), np.zeros((1, 1)), np.full((1, 1), 2.0),
    ...              np.zeros((1, 1)), np.zeros((1, 1)), np.full((1, 1), 2.5))
    >>> m["tp"], m["f1"], m["rmse_r_m"]
    (1, 1.0, 0.5)
    """
    if not (np.isscalar(snr_bin_db) and np.isfinite(snr_bin_db) and snr_bin_db > 0):
        raise ValueError(f"snr_bin_db: must be a finite number > 0, got {snr_bin_db!r}")
    mt = _match_all(
        est_phi, est_theta, est_r, gt_phi, gt_theta, gt_r, est_valid=est_valid, gt_mask=gt_mask,
        snr_db=snr_db, est_score=est_score, sqrt_crb_phi=sqrt_crb_phi,
        sqrt_crb_theta=sqrt_crb_theta, sqrt_crb_r=sqrt_crb_r, gates=gates,
    )
    n_scenes = len(mt.n_est)
    pssr = _optional("scene_pssr_db", scene_pssr_db, (n_scenes,), finite=False)
    pairs = mt.pairs

    def group(scene_sel: np.ndarray) -> dict[str, Any]:
        return _summary(
            pairs, scene_sel[pairs.scene], mt.n_est[scene_sel], mt.n_gt[scene_sel], mt.tp[scene_sel],
            None if pssr is None else pssr[scene_sel], mt.crb_undefined[scene_sel],
        )

    out = group(np.ones(n_scenes, bool))
    out["gates"] = gates.as_report()
    out["per_k"] = {str(int(k)): group(mt.n_gt == k) for k in np.unique(mt.n_gt)}
    out["per_snr_bin"] = {}
    if mt.snr_db is not None:
        lo = np.floor(mt.snr_db / snr_bin_db) * snr_bin_db + 0.0  # + 0.0: no "-0" label
        for edge in np.unique(lo):
            out["per_snr_bin"][_snr_bin(float(edge), float(snr_bin_db))] = group(lo == edge)
    return out


# ----------------------------------------------------------------------------------------------
# spectrum quality
# ----------------------------------------------------------------------------------------------


def pssr_db(spectrum, peaks=None, *, exclusion: int | tuple[int, int] = 3,
            exclude_mask=None, in_db: bool = False) -> float:
    """Peak-to-sidelobe ratio (dB) of a 2-D spectrum map.

    `PSSR = max over the peak cells / max over every cell outside the exclusion zone`, in dB.
    The exclusion zone is the union of a `(2 e0 + 1) x (2 e1 + 1)` box of cells centred on each
    peak (clipped at the map's edges, no wrap-around) and `exclude_mask`. The "sidelobe" is the
    largest value outside it, whether or not it is a local maximum, so a main lobe wider than
    the box lowers the PSSR. With the default single peak (the global maximum) and several
    sources, the strongest other source counts as a sidelobe; pass all the true (or detected)
    peaks to measure the floor between them instead. A sensible `exclusion` is the detection
    gate in grid cells (5 deg gate on a 1 deg grid: 5); the default is 3 cells.

    Args:
      spectrum: `[G0, G1]` map (e.g. phi x theta, max over range planes), linear power >= 0
        unless `in_db`.
      peaks: None (the global maximum), one `(i0, i1)` index pair, or `[P, 2]` index pairs.
      exclusion: half-width of the box in cells, one int for both axes or `(e0, e1)`.
      exclude_mask: `[G0, G1]` bool, further cells to leave out of the sidelobe search.
      in_db: the map is already in dB (then PSSR = peak - sidelobe).

    Returns:
      PSSR in dB; `inf` when the sidelobe level is 0 (linear map), NaN when no cell is left
      outside the exclusion zone.

    Raises:
      ValueError: a non-2-D or non-finite map, negative linear power, bad peaks or exclusion.

    >>> m = np.ones((20, 20)); m[10, 10] = 100.0
    >>> pssr_db(m)
    20.0
    """
    s = _float_array("spectrum", spectrum, 2)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("spectrum: must be a non-empty, finite 2-D map")
    if not in_db and np.any(s < 0):
        raise ValueError("spectrum: negative linear power (pass in_db=True for a map in dB)")
    if peaks is None:
        pk = np.array([np.unravel_index(int(np.argmax(s)), s.shape)], dtype=np.int64)
    else:
        pk = np.asarray(peaks)
        if not np.issubdtype(pk.dtype, np.integer):
            raise ValueError(f"peaks: expected integer cell indices, got dtype {pk.dtype}")
        pk = pk.reshape(-1, 2) if pk.ndim == 1 and pk.size == 2 else pk
        if pk.ndim != 2 or pk.shape[1] != 2 or pk.shape[0] == 0:
            raise ValueError(f"peaks: expected (i0, i1) or [P, 2] index pairs, got shape {list(pk.shape)}")
        if np.any(pk < 0) or np.any(pk >= np.array(s.shape)):
            raise ValueError(f"peaks: index outside the map of shape {list(s.shape)}")
    ex = (exclusion, exclusion) if np.isscalar(exclusion) else tuple(exclusion)
    if len(ex) != 2 or any(int(e) != e or e < 0 for e in ex):
        raise ValueError(f"exclusion: expected a non-negative int or (e0, e1), got {exclusion!r}")
    keep = np.ones(s.shape, bool)
    for i0, i1 in pk:
        keep[max(i0 - ex[0], 0): i0 + ex[0] + 1, max(i1 - ex[1], 0): i1 + ex[1] + 1] = False
    if exclude_mask is not None:
        keep &= ~_bool_array("exclude_mask", exclude_mask, s.shape)
    if not np.any(keep):
        return float("nan")
    peak, side = float(np.max(s[pk[:, 0], pk[:, 1]])), float(np.max(s[keep]))
    if in_db:
        return peak - side
    if side == 0.0:
        return float("inf")
    if peak == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(peak / side))


_TABLE_COLUMNS = (
    ("P", "precision", 3),
    ("R", "recall", 3),
    ("F1", "f1", 3),
    ("FP/scene", "fp_per_scene", 2),
    ("median pos err (m)", "median_pos_err_m", 3),
    ("p90 pos err (m)", "p90_pos_err_m", 3),
    ("RMSE phi (deg)", "rmse_phi_deg", 2),
    ("RMSE theta (deg)", "rmse_theta_deg", 2),
    ("RMSE r (m)", "rmse_r_m", 3),
)


def _finite_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def format_table(metrics_by_method: Mapping[str, Mapping[str, Any]], *, bound: str | None = None) -> str:
    """Markdown table, one row per method, of `evaluate` (or JSON round-tripped) results.

    Columns: method, P, R, F1, FP/scene, median and p90 position error (m), RMSE of phi and
    theta (deg), RMSE of r (m). Missing, None or NaN values print as "n/a".

    With `bound` (a method name, e.g. the accuracy limit `ml-oracle`) among the methods, a
    column `F1 / bound` follows F1 (each method's F1 over the bound's; "n/a" when either is
    missing or the bound's F1 is 0) and the bound's row comes last, its name marked
    "(bound)". Without `bound`, or when it is not among the methods, the table is as above.

    >>> print(format_table({"mvdr": {"precision": 1.0}}).splitlines()[2])
    | mvdr | 1.000 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |
    >>> rows = format_table({"a": {"f1": 0.4}, "b": {"f1": 0.8}}, bound="b").splitlines()
    >>> rows[0][:36], rows[2][:30], rows[3][:13]
    ('| method | P | R | F1 | F1 / bound |', '| a | n/a | n/a | 0.400 | 0.50', '| b (bound) |')
    """
    with_bound = bound is not None and bound in metrics_by_method
    columns: list[tuple[str, str | None, int]] = list(_TABLE_COLUMNS)
    names = list(metrics_by_method)
    if with_bound:
        at = [key for _, key, _ in columns].index("f1") + 1
        columns.insert(at, ("F1 / bound", None, 2))
        names = [n for n in names if n != bound] + [bound]
        ref = metrics_by_method[bound].get("f1")
    header = "| method | " + " | ".join(c for c, _, _ in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for method in names:
        m = metrics_by_method[method]
        label = f"{method} (bound)" if with_bound and method == bound else str(method)
        cells = [label.replace("|", "\\|")]
        for _, key, digits in columns:
            if key is None:  # F1 / bound
                f1 = m.get("f1")
                ok = _finite_number(f1) and _finite_number(ref) and float(ref) != 0.0
                v = float(f1) / float(ref) if ok else None
            else:
                v = m.get(key)
            cells.append(f"{float(v):.{digits}f}" if _finite_number(v) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
