"""Tests for rismvdr.eval.metrics: hand-made scenes with known answers, oracles and properties."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rismvdr.eval import metrics as M
from rismvdr.io import to_jsonable

DEG = np.pi / 180.0


def pad(scenes, width=None):
    """Per-scene lists of (phi_deg, theta_deg, r_m) -> NaN-padded [S, K] arrays in radians/metres."""
    width = max([len(s) for s in scenes] + [0]) if width is None else width
    out = [np.full((len(scenes), width), np.nan) for _ in range(3)]
    for i, srcs in enumerate(scenes):
        for j, (p, t, r) in enumerate(srcs):
            out[0][i, j], out[1][i, j], out[2][i, j] = p * DEG, t * DEG, r
    return out


def run(est_scenes, gt_scenes, **kw):
    return M.evaluate(*pad(est_scenes), *pad(gt_scenes), **kw)


def jsonable_equal(a, b):
    return to_jsonable(a) == to_jsonable(b)


TRUTH = [[(10.0, 5.0, 2.0), (-30.0, -10.0, 6.0), (45.0, 20.0, 8.5)], [(0.0, 0.0, 1.0)]]


def test_perfect():
    m = run(TRUTH, TRUTH)
    assert (m["tp"], m["fp"], m["fn"]) == (4, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["fp_per_scene"] == 0.0
    for k in ("rmse_phi_deg", "rmse_theta_deg", "rmse_r_m", "median_pos_err_m", "p90_pos_err_m",
              "rmse_xyz_all_m"):
        assert m[k] == 0.0, k
    assert m["n_scenes"] == 2 and m["n_pairs"] == 4
    assert m["gates"] == pytest.approx({"phi_deg": 5.0, "theta_deg": 5.0, "r_m": 1.0})


def test_shuffled_order_same_as_perfect():
    shuffled = [list(reversed(TRUTH[0])), TRUTH[1]]
    # also padding placed before the valid entries via an explicit mask
    e_phi, e_th, e_r = pad(shuffled, width=4)
    e_phi, e_th, e_r = (np.roll(a, 1, axis=1) for a in (e_phi, e_th, e_r))
    valid = ~np.isnan(e_phi)
    e_phi[~valid] = 0.0  # garbage where invalid is ignored
    m = M.evaluate(e_phi, e_th, e_r, *pad(TRUTH), est_valid=valid)
    assert jsonable_equal(m, run(TRUTH, TRUTH))


def test_missing_estimate_is_fn():
    m = run([TRUTH[0][:2], TRUTH[1]], TRUTH)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 1)
    assert m["precision"] == 1.0 and m["recall"] == 0.75
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75)


def test_extra_estimate_is_fp():
    m = run([TRUTH[0] + [(-50.0, 25.0, 3.0)], TRUTH[1]], TRUTH)
    assert (m["tp"], m["fp"], m["fn"]) == (4, 1, 0)
    assert m["precision"] == 0.8 and m["recall"] == 1.0
    assert m["fp_per_scene"] == 0.5
    assert m["n_pairs"] == 4


@pytest.mark.parametrize("offset", [(6.0, 0.0, 0.0), (0.0, -6.0, 0.0), (0.0, 0.0, 1.5)],
                         ids=["phi", "theta", "r"])
def test_out_of_gate_in_one_coordinate(offset):
    good = (10.0, 5.0, 2.0)
    far_truth = (-40.0, -20.0, 7.0)
    bad = tuple(a + b for a, b in zip(far_truth, offset))
    m = run([[good, bad]], [[good, far_truth]])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
    assert m["n_pairs"] == 2
    # TP statistics see only the exact match; the all-pairs RMSE sees the out-of-gate pair.
    assert m["rmse_phi_deg"] == m["rmse_theta_deg"] == m["rmse_r_m"] == 0.0
    assert m["median_pos_err_m"] == 0.0
    pairs = M.match_pairs(*pad([[good, bad]]), *pad([[good, far_truth]]))
    err = pairs.pos_err[~pairs.is_tp]
    assert err.shape == (1,) and err[0] > 0
    assert m["rmse_xyz_all_m"] == pytest.approx(math.sqrt(err[0] ** 2 / 2))


def test_gate_is_inclusive():
    m = run([[(0.0, 0.0, 3.0)]], [[(0.0, 0.0, 2.0)]])  # |dr| = 1 m exactly
    assert m["tp"] == 1 and m["rmse_r_m"] == 1.0


@pytest.mark.parametrize("est", [np.zeros((2, 0)), np.full((2, 3), np.nan)], ids=["Ke=0", "all-padding"])
def test_empty_estimates(est):
    m = M.evaluate(est, est, est, *pad(TRUTH))
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 4)
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and m["f1"] == 0.0
    assert math.isnan(m["rmse_phi_deg"]) and math.isnan(m["rmse_xyz_all_m"])
    assert m["n_pairs"] == 0


def test_empty_truth():
    gt = np.zeros((2, 0))
    m = M.evaluate(*pad(TRUTH), gt, gt, gt)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 4, 0)
    assert m["precision"] == 0.0 and math.isnan(m["recall"]) and m["f1"] == 0.0
    assert m["fp_per_scene"] == 2.0
    assert list(m["per_k"]) == ["0"]


def test_both_empty():
    e = np.zeros((3, 0))
    m = M.evaluate(e, e, e, e, e, e)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["fp_per_scene"] == 0.0 and m["n_scenes"] == 3


def test_nan_padded_truth_conversion():
    g = pad(TRUTH)
    mask = M.mask_from_nan(*g)
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False]])
    filled = [np.where(mask, a, 0.0) for a in g]
    a = M.evaluate(*pad(TRUTH), *g)
    b = M.evaluate(*pad(TRUTH), *filled, gt_mask=mask)
    assert jsonable_equal(a, b)
    g[2][1, 1] = 4.0  # r given, angles NaN: not padding, not valid
    with pytest.raises(ValueError, match="gt_phi"):
        M.evaluate(*pad(TRUTH), *g)


@pytest.mark.parametrize("axis", ["phi", "theta"])
def test_plus_89_and_minus_89_deg_are_far_apart(axis):
    src = (89.0, 0.0, 3.0) if axis == "phi" else (0.0, 89.0, 3.0)
    mirror = (-89.0, 0.0, 3.0) if axis == "phi" else (0.0, -89.0, 3.0)
    m = run([[src]], [[mirror]])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    pairs = M.match_pairs(*pad([[src]]), *pad([[mirror]]))
    assert abs(getattr(pairs, f"err_{axis}")[0]) == pytest.approx(178 * DEG)


def test_azimuth_error_wraps_to_minus_pi_pi():
    m = run([[(179.0, 0.0, 3.0)]], [[(-179.0, 0.0, 3.0)]])
    assert m["tp"] == 1 and m["rmse_phi_deg"] == pytest.approx(2.0)
    rec = M.pairs_to_records(M.match_pairs(*pad([[(179.0, 0.0, 3.0)]]), *pad([[(-179.0, 0.0, 3.0)]])))
    assert rec[0]["err_phi_deg"] == pytest.approx(-2.0)
    assert M.wrap_angle(np.pi) == np.pi and M.wrap_angle(-np.pi) == np.pi
    assert M.wrap_angle(0.3) == 0.3  # untouched inside the interval


def _random_set(rng, n_scenes, k_max=5, jitter=(3.0, 3.0, 0.7)):
    """Truth in the seed box; estimates near some truths (some beyond the gate) plus clutter."""
    gt, est, snr = [], [], rng.uniform(-5.0, 20.0, n_scenes)
    for _ in range(n_scenes):
        k = int(rng.integers(0, k_max + 1))
        srcs = [(rng.uniform(-60, 60), rng.uniform(-30, 30), rng.uniform(0.5, 10)) for _ in range(k)]
        found = [tuple(np.maximum(np.array(s) + rng.normal(0, 1, 3) * jitter, (-90, -90, 0.05)))
                 for s in srcs if rng.random() < 0.8]
        found += [(rng.uniform(-60, 60), rng.uniform(-30, 30), rng.uniform(0.5, 10))
                  for _ in range(int(rng.integers(0, 3)))]
        gt.append(srcs)
        est.append(found)
    return est, gt, snr


def test_breakdowns_add_up():
    rng = np.random.default_rng(0)
    est, gt, snr = _random_set(rng, 80)
    pssr = rng.normal(15, 3, 80)
    m = run(est, gt, snr_db=snr, scene_pssr_db=pssr)
    assert m["tp"] > 0 and m["fp"] > 0 and m["fn"] > 0
    for name in ("per_k", "per_snr_bin"):
        groups = m[name].values()
        for key in ("n_scenes", "tp", "fp", "fn", "n_pairs", "n_est", "n_truth"):
            assert sum(g[key] for g in groups) == m[key], (name, key)
        assert set(next(iter(groups))) == set(m) - {"gates", "per_k", "per_snr_bin"}
    assert set(m["per_k"]) <= {str(k) for k in range(6)}
    for k, g in m["per_k"].items():
        assert g["n_truth"] == int(k) * g["n_scenes"]
    assert set(m["per_snr_bin"]) <= {"[-5,0)", "[0,5)", "[5,10)", "[10,15)", "[15,20)"}
    assert m["mean_pssr_db"] == pytest.approx(np.mean(pssr))
    assert m["median_pssr_db"] == pytest.approx(np.median(pssr))


def test_snr_bin_labels():
    est = pad([[(0.0, 0.0, 2.0)]] * 6)
    snr = np.array([-5.0, -0.1, -0.0, 4.99, 19.99, 20.0])
    m = M.evaluate(*est, *est, snr_db=snr)
    assert list(m["per_snr_bin"]) == ["[-5,0)", "[0,5)", "[15,20)", "[20,25)"]
    assert [g["n_scenes"] for g in m["per_snr_bin"].values()] == [2, 2, 1, 1]
    m = M.evaluate(*est, *est, snr_db=snr, snr_bin_db=10.0)
    assert list(m["per_snr_bin"]) == ["[-10,0)", "[0,10)", "[10,20)", "[20,30)"]
    assert M.evaluate(*est, *est)["per_snr_bin"] == {}


def test_position_error_against_law_of_cosines():
    rng = np.random.default_rng(1)
    est, gt, _ = _random_set(rng, 40)
    ep, et, er = pad(est, 7)
    gp, gtt, gr = pad(gt)
    pairs = M.match_pairs(ep, et, er, gp, gtt, gr)
    s, i, j = pairs.scene, pairs.est_index, pairs.gt_index
    p1, t1, r1 = ep[s, i], et[s, i], er[s, i]
    p2, t2, r2 = gp[s, j], gtt[s, j], gr[s, j]
    cos_angle = np.sin(t1) * np.sin(t2) + np.cos(t1) * np.cos(t2) * np.cos(p1 - p2)
    ref = np.sqrt(np.maximum(r1**2 + r2**2 - 2 * r1 * r2 * cos_angle, 0.0))
    np.testing.assert_allclose(pairs.pos_err, ref, rtol=1e-9, atol=1e-9)
    m = M.evaluate(ep, et, er, gp, gtt, gr)
    assert m["rmse_xyz_all_m"] == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-12)
    tp_ref = ref[pairs.is_tp]
    assert m["median_pos_err_m"] == pytest.approx(np.median(tp_ref), rel=1e-12)
    assert m["p90_pos_err_m"] == pytest.approx(np.percentile(tp_ref, 90), rel=1e-12)
    assert m["rmse_r_m"] == pytest.approx(np.sqrt(np.mean((r1 - r2)[pairs.is_tp] ** 2)), rel=1e-12)
    u = M.position(0.3, -0.2, 4.0)
    assert np.linalg.norm(u) == pytest.approx(4.0)
    assert u[2] == pytest.approx(4.0 * np.sin(-0.2))


def test_hungarian_beats_greedy():
    # Greedy (cheapest pair first) takes e0-t1 (1.5 deg), then e1-t0 (7.5 deg, out of gate):
    # one TP. The minimum total cost pairs e0-t0 and e1-t1 (3 deg each): two TPs.
    truth = [[(0.0, 0.0, 5.0), (4.5, 0.0, 5.0)]]
    est = [[(3.0, 0.0, 5.0), (7.5, 0.0, 5.0)]]
    m = M.match_scene(*(a[0] for a in pad(est)), *(a[0] for a in pad(truth)))
    assert m.est_index.tolist() == [0, 1] and m.gt_index.tolist() == [0, 1]
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert run(est, truth)["f1"] == 1.0


def test_match_scene_indices_refer_to_padded_rows():
    e = pad([[(99.0, 0.0, 1.0), (20.0, 0.0, 4.0)]])
    e = [a[0] for a in e]
    g = [a[0] for a in pad([[(0.0, 0.0, 9.0), (20.5, 0.0, 4.2)]])]
    m = M.match_scene(*e, *g, est_valid=np.array([False, True]), gt_mask=[0, 1])
    assert m.est_index.tolist() == [1] and m.gt_index.tolist() == [1] and m.tp == 1
    assert m.err_phi[0] == pytest.approx(-0.5 * DEG) and m.err_r[0] == pytest.approx(-0.2)


def test_custom_gates():
    est, gt = [[(0.0, 0.0, 2.0)]], [[(7.0, 0.0, 2.0)]]
    assert run(est, gt)["tp"] == 0
    m = run(est, gt, gates=M.Gates.from_deg(phi_deg=8.0))
    assert m["tp"] == 1 and m["gates"]["phi_deg"] == pytest.approx(8.0)

    class Cfg:
        gate_phi_deg, gate_theta_deg, gate_r_m = 8.0, 5.0, 1.0

    assert M.Gates.from_config(Cfg()) == M.Gates.from_deg(8.0)
    with pytest.raises(ValueError, match="gates.r"):
        M.Gates(r=0.0)


def test_crb_ratio():
    truth = [[(0.0, 0.0, 2.0), (30.0, 10.0, 6.0)]]
    est = [[(1.0, -2.0, 2.3), (28.0, 11.0, 5.6)]]
    sc_phi = np.array([[0.5, 1.0]]) * DEG
    sc_th = np.array([[1.0, 1.0]]) * DEG
    sc_r = np.array([[0.1, 0.2]])
    m = run(est, truth, sqrt_crb_phi=sc_phi, sqrt_crb_theta=sc_th, sqrt_crb_r=sc_r)
    assert m["tp"] == 2
    rmse_phi = math.sqrt((1.0**2 + 2.0**2) / 2)
    root_crb_phi = math.sqrt((0.5**2 + 1.0**2) / 2)
    assert m["sqrt_crb_phi_deg"] == pytest.approx(root_crb_phi)
    assert m["rmse_over_sqrt_crb_phi"] == pytest.approx(rmse_phi / root_crb_phi)
    assert m["rmse_over_sqrt_crb_theta"] == pytest.approx(math.sqrt((4 + 1) / 2) / 1.0)
    assert m["rmse_over_sqrt_crb_r"] == pytest.approx(
        math.sqrt((0.3**2 + 0.4**2) / 2) / math.sqrt((0.1**2 + 0.2**2) / 2))
    assert math.isnan(run(est, truth)["rmse_over_sqrt_crb_r"])  # no CRB given


def test_json_round_trip():
    rng = np.random.default_rng(2)
    est, gt, snr = _random_set(rng, 20)
    m = run(est, gt, snr_db=snr)
    j = to_jsonable(m)
    assert j["rmse_over_sqrt_crb_phi"] is None  # NaN -> null
    text = json.dumps(j, allow_nan=False)
    assert json.loads(text) == j
    recs = M.pairs_to_records(M.match_pairs(*pad(est), *pad(gt), snr_db=snr))
    assert len(recs) == m["n_pairs"]
    assert json.loads(json.dumps(to_jsonable(recs), allow_nan=False)) == to_jsonable(recs)
    assert set(recs[0]) == {
        "scene", "est_index", "gt_index", "k_true", "snr_db", "err_phi_deg", "err_theta_deg",
        "err_r_m", "pos_err_m", "is_tp", "score", "sqrt_crb_phi_deg", "sqrt_crb_theta_deg",
        "sqrt_crb_r_m"}
    assert to_jsonable({1: np.float32(np.inf), "a": (np.int64(3), np.bool_(True))}) == {
        "1": None, "a": [3, True]}
    import jax.numpy as jnp

    assert to_jsonable({"x": jnp.array([1.0, jnp.nan])}) == {"x": [1.0, None]}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_scenes=st.integers(1, 6))
def test_permutation_invariance(seed, n_scenes):
    rng = np.random.default_rng(seed)
    est, gt, snr = _random_set(rng, n_scenes)
    e = pad(est, 8)
    g = pad(gt, 5)
    score = rng.normal(size=e[0].shape)
    ref = M.evaluate(*e, *g, snr_db=snr, est_score=score)
    perm_e = np.stack([rng.permutation(8) for _ in range(n_scenes)])
    perm_g = np.stack([rng.permutation(5) for _ in range(n_scenes)])
    e2 = [np.take_along_axis(a, perm_e, axis=1) for a in e]
    g2 = [np.take_along_axis(a, perm_g, axis=1) for a in g]
    score2 = np.take_along_axis(score, perm_e, axis=1)
    out = M.evaluate(*e2, *g2, snr_db=snr, est_score=score2)
    assert to_jsonable(out) == to_jsonable(ref)  # exact: sums are order independent
    # and the scene order does not matter either
    order = rng.permutation(n_scenes)
    out = M.evaluate(*(a[order] for a in e), *(a[order] for a in g), snr_db=snr[order])
    assert to_jsonable(out) == to_jsonable(M.evaluate(*e, *g, snr_db=snr))


def test_validation_names_the_argument():
    e, g = pad(TRUTH), pad(TRUTH)
    valid = ~np.isnan(e[0])
    bad = [a.copy() for a in e]
    bad[2][0, 0] = np.nan
    with pytest.raises(ValueError, match="est_r"):
        M.evaluate(*bad, *g, est_valid=valid)
    with pytest.raises(ValueError, match="est_r"):
        M.evaluate(*bad, *g)  # partial NaN without a mask
    with pytest.raises(ValueError, match="est_phi.*radians"):
        M.evaluate(e[0] / DEG, e[1], e[2], *g)  # degrees passed as radians
    with pytest.raises(ValueError, match="est_theta"):
        M.evaluate(e[0], e[1][:, :2], e[2], *g)
    with pytest.raises(ValueError, match="est_valid"):
        M.evaluate(*e, *g, est_valid=np.where(valid, 2, 0))
    with pytest.raises(ValueError, match="gt_phi"):
        M.evaluate(*e, *(a[:1] for a in g))
    with pytest.raises(ValueError, match="snr_db"):
        M.evaluate(*e, *g, snr_db=[1.0, np.nan])
    with pytest.raises(ValueError, match="est_phi"):
        M.evaluate(e[0][0], e[1][0], e[2][0], *g)
    with pytest.raises(ValueError, match="gt_r"):
        M.evaluate(*e, g[0], g[1], -g[2])
    with pytest.raises(ValueError, match="est_phi"):
        z = np.zeros((0, 2))
        M.evaluate(z, z, z, z, z, z)


def test_pssr_db():
    s = np.full((30, 40), 1.0)
    s[10, 10] = 1000.0
    s[11, 11] = 500.0  # inside the default 3-cell box
    s[20, 30] = 10.0  # the sidelobe
    assert M.pssr_db(s) == pytest.approx(20.0)
    assert M.pssr_db(s, exclusion=0) == pytest.approx(10 * np.log10(2.0))
    assert M.pssr_db(s, peaks=[[10, 10], [20, 30]]) == pytest.approx(30.0)  # floor is 1
    assert M.pssr_db(s, (20, 30)) == pytest.approx(10 * np.log10(10 / 1000))
    mask = np.zeros(s.shape, bool)
    mask[20, 30] = True
    assert M.pssr_db(s, exclude_mask=mask) == pytest.approx(30.0)
    assert M.pssr_db(10 * np.log10(s), in_db=True) == pytest.approx(20.0)
    z = np.zeros((5, 5))
    z[2, 2] = 1.0
    assert M.pssr_db(z, exclusion=1) == math.inf
    assert math.isnan(M.pssr_db(z, exclusion=5))
    with pytest.raises(ValueError, match="spectrum"):
        M.pssr_db(-z)
    with pytest.raises(ValueError, match="peaks"):
        M.pssr_db(z, (5, 0))


def test_format_table():
    a = run(TRUTH, TRUTH)
    b = run([[]], [[(0.0, 0.0, 1.0)]])
    text = M.format_table({"oracle": a, "a|b": to_jsonable(b)})
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| method | P | R | F1 | FP/scene | median pos err (m)")
    assert lines[2].startswith("| oracle | 1.000 | 1.000 | 1.000 | 0.00 | 0.000")
    assert lines[3].startswith("| a\\|b | n/a | 0.000 | 0.000 | 0.00 | n/a")
    assert all(line.count("|") == lines[0].count("|") for line in lines[:3])


def test_docstring_examples():
    import doctest

    result = doctest.testmod(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0
