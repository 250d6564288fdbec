"""RIS code design against the CRB (rismvdr.physics.design, rismvdr design codes).

Oracles: an independent NumPy float64 objective (own steering, own concentrated Fisher matrix
of one source, derivatives by central differences) and central differences of it for the
gradient. Properties: the projection lands on the 2^b grid, a short design beats random
codes, unidentifiable positions are left out. The CLI: --help without JAX, a tiny end-to-end
run, one-line refusals.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rismvdr.cli import design as design_cli
from rismvdr.cli import main
from rismvdr.physics import upa
from rismvdr.physics.deployment import los_channel, noise_floor
from rismvdr.physics.design import (
    LEARNING_RATE,
    crb_medians,
    crb_objective,
    crb_objective_and_grad,
    design_codes,
    design_scenario_codes,
    judge_codes,
    random_codes,
    sample_positions,
)
from rismvdr.physics.scenarios import get_scenario

# Agreement with the float64 NumPy reference: the objective (a mean of log CRB: absolute error
# is relative error of the bound) and its gradient (relative to the largest entry).
TOL = {np.float64: dict(objective=1e-9, grad=1e-8), np.float32: dict(objective=1e-4, grad=1e-4)}
WAVELENGTH = 0.3
#: The tiny problem: 4 x 4 UPA at half wavelength, M = 4, L = 4.
TINY = dict(nh=4, nv=4, n_bs=4, n_snapshots=4)


@pytest.fixture(autouse=True)
def x64():
    """These tests compare against float64 references (tests/conftest.py turns x64 on for the session)."""
    jax.config.update("jax_enable_x64", True)
    yield


@pytest.fixture(scope="module")
def problem():
    g = upa(4, 4, 0.15, 0.15, wavelength=WAVELENGTH)
    bs = np.array([[2.0, -0.3 + 0.15 * m, 0.1] for m in range(4)])
    h = los_channel(np.asarray(g.positions), bs, WAVELENGTH)
    rng = np.random.default_rng(3)
    h = h + 0.3 * (rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape)) / np.sqrt(32)
    phases = rng.uniform(0.0, 2.0 * np.pi, (4, 16))
    positions = np.array([[0.3, 0.1, 1.5], [-0.6, -0.4, 4.0], [0.9, 0.3, 0.8]])
    return dict(g=g, H=h, phases=phases, positions=positions, noise_var=float(noise_floor(h, 1.0, 0.0)))


# ------------------------------------------------------------------- NumPy float64 reference ----
def _steer(p, eta):
    phi, theta, r = eta
    u = r * np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)])
    d = np.linalg.norm(u[None, :] - p, axis=-1)
    return np.exp(-1j * 2.0 * np.pi / WAVELENGTH * (d - r))


def _steer_and_derivative(p, eta, step=1e-3):
    """Steering `[N]` and its derivatives `[N, 3]`: fourth-order central differences."""
    a = _steer(p, eta)
    cols = []
    for i in range(3):
        e = np.zeros(3)
        e[i] = step
        f = {j: _steer(p, eta + j * e) for j in (-2, -1, 1, 2)}
        cols.append((f[-2] - 8.0 * f[-1] + 8.0 * f[1] - f[2]) / (12.0 * step))
    return a, np.stack(cols, axis=1)


def _ref_log_crb(phases, a, da, h, noise_var):
    """sum_i log CRB_ii of one unit-power source: F = (2/s2) Re sum_l Q_l^H Q_l, Q_l = P_perp(b_l) D_l."""
    f = np.zeros((3, 3))
    for l in range(phases.shape[0]):
        g = h * np.exp(1j * phases[l])[None, :]
        b, d = g @ a, g @ da
        q = d - np.outer(b, b.conj() @ d) / (b.conj() @ b)
        f += np.real(q.conj().T @ q)
    f *= 2.0 / noise_var
    return float(np.sum(np.log(np.diag(np.linalg.inv(f)))))


def _ref_objective(phases, positions, p, h, noise_var, cache=None):
    cache = [_steer_and_derivative(p, eta) for eta in positions] if cache is None else cache
    return float(np.mean([_ref_log_crb(phases, a, da, h, noise_var) for a, da in cache]))


# ---------------------------------------------------------------------------- the objective ----
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_and_gradient_match_the_numpy_reference(problem, dtype):
    p = np.asarray(problem["g"].positions, np.float64)
    ph, pos, h, nv = problem["phases"], problem["positions"], problem["H"], problem["noise_var"]
    cache = [_steer_and_derivative(p, eta) for eta in pos]
    ref = _ref_objective(ph, pos, p, h, nv, cache)
    value = crb_objective(ph.astype(dtype), pos, problem["g"], h, nv)
    assert value.dtype == dtype
    np.testing.assert_allclose(float(value), ref, rtol=0, atol=TOL[dtype]["objective"])

    step = 1e-5
    ref_grad = np.zeros_like(ph)
    for i in np.ndindex(ph.shape):
        e = np.zeros_like(ph)
        e[i] = step
        ref_grad[i] = (_ref_objective(ph + e, pos, p, h, nv, cache) - _ref_objective(ph - e, pos, p, h, nv, cache)) / (
            2.0 * step)
    v2, grad = crb_objective_and_grad(ph.astype(dtype), pos, problem["g"], h, nv)
    assert grad.shape == ph.shape and grad.dtype == dtype
    np.testing.assert_allclose(float(v2), float(value), rtol=1e-6)
    scale = np.max(np.abs(ref_grad))
    np.testing.assert_allclose(np.asarray(grad, np.float64), ref_grad, rtol=0, atol=TOL[dtype]["grad"] * scale)
    auto = jax.grad(lambda x: crb_objective(x, pos, problem["g"], h, nv))(jnp.asarray(ph.astype(dtype)))
    np.testing.assert_allclose(np.asarray(auto, np.float64), np.asarray(grad, np.float64), rtol=0,
                               atol=TOL[dtype]["grad"] * scale)


def _ref_log_crb_sets(phases, steer, h, noise_var):
    """Mean over the sources of `sum_i log CRB_ii` of K unit-power sources' joint bound:
    F = (2/s2) Re sum_l (Q_l^H Q_l) o W, Q_l = P_perp(B_l) [D_phi, D_theta, D_r] (parameter-major),
    W[(i, k), (j, k')] = [k == k'] (the expected-power bound, unit powers)."""
    a = np.stack([x[0] for x in steer], axis=1)  # [N, K]
    da = np.concatenate([np.stack([x[1][:, i] for x in steer], axis=1) for i in range(3)], axis=1)  # [N, 3K]
    k = a.shape[1]
    w = np.kron(np.ones((3, 3)), np.eye(k))
    f = np.zeros((3 * k, 3 * k))
    for l in range(phases.shape[0]):
        g = h * np.exp(1j * phases[l])[None, :]
        b, d = g @ a, g @ da
        q = d - b @ np.linalg.solve(b.conj().T @ b, b.conj().T @ d)
        f += np.real((q.conj().T @ q) * w)
    f *= 2.0 / noise_var
    return float(np.sum(np.log(np.diag(np.linalg.inv(f))))) / k


def _ref_objective_sets(phases, sets, p, h, noise_var):
    return float(np.mean([_ref_log_crb_sets(phases, [_steer_and_derivative(p, eta) for eta in s], h, noise_var)
                          for s in sets]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_of_source_sets_matches_the_numpy_reference(problem, dtype):
    """Sets of several sources (their joint bound; a masked slot is absent): value and gradient
    against the float64 NumPy reference and its central differences."""
    p = np.asarray(problem["g"].positions, np.float64)
    ph, h, nv = problem["phases"], problem["H"], problem["noise_var"]
    sets = np.array([[[0.3, 0.1, 1.5], [-0.6, -0.4, 4.0], [0.9, 0.3, 0.8]],
                     [[-0.2, 0.2, 2.5], [0.5, -0.1, 1.2], [0.0, 0.0, 9.0]]])
    mask = np.array([[True, True, True], [True, True, False]])
    real_sets = [sets[0], sets[1][:2]]
    ref = _ref_objective_sets(ph, real_sets, p, h, nv)
    value = crb_objective(ph.astype(dtype), sets, problem["g"], h, nv, mask=mask)
    assert value.dtype == dtype
    np.testing.assert_allclose(float(value), ref, rtol=0, atol=TOL[dtype]["objective"])
    # one source per set is the single-source objective
    single = crb_objective(ph.astype(dtype), problem["positions"][:, None, :], problem["g"], h, nv)
    np.testing.assert_allclose(float(single), float(crb_objective(ph.astype(dtype), problem["positions"],
                                                                  problem["g"], h, nv)), rtol=1e-6)
    step = 1e-5
    ref_grad = np.zeros_like(ph)
    for i in [(0, 0), (1, 5), (2, 11), (3, 15)]:
        e = np.zeros_like(ph)
        e[i] = step
        ref_grad[i] = (_ref_objective_sets(ph + e, real_sets, p, h, nv)
                       - _ref_objective_sets(ph - e, real_sets, p, h, nv)) / (2.0 * step)
    _, grad = crb_objective_and_grad(ph.astype(dtype), sets, problem["g"], h, nv, mask=mask)
    scale = np.max(np.abs(np.asarray(grad, np.float64)))
    for i in [(0, 0), (1, 5), (2, 11), (3, 15)]:
        assert abs(float(grad[i]) - ref_grad[i]) <= TOL[dtype]["grad"] * scale, i


def test_a_short_design_for_source_sets_beats_random_codes(problem):
    """`sources=(2, 3)`: the design lowers the objective of sets of 2-3 sources below random codes'."""
    g, h, nv = problem["g"], problem["H"], problem["noise_var"]
    box = np.array([[-0.8, 0.8], [-0.4, 0.4], [0.8, 5.0]])
    d = design_codes(g, h, box, n_snapshots=4, noise_var=nv, bits=0, key=jax.random.key(2), n_steps=40, batch=16,
                     learning_rate=0.1, sources=(2, 3))
    assert np.mean(d.history[-5:]) < np.mean(d.history[:5])
    rng = np.random.default_rng(5)
    sets = np.asarray(sample_positions(jax.random.key(9), box, 64 * 3)).reshape(64, 3, 3)
    mask = np.arange(3)[None, :] < rng.integers(2, 4, 64)[:, None]
    designed = float(crb_objective(d.phases, sets, g, h, nv, mask=mask))
    random = [float(crb_objective(rng.uniform(0, 2 * np.pi, (4, 16)), sets, g, h, nv, mask=mask)) for _ in range(8)]
    assert designed < min(random), (designed, random)


def test_unidentifiable_positions_are_left_out_of_value_and_gradient(problem):
    """A position whose bound is not finite (here its steering overflows) drops out of the mean and
    of the gradient; with no identifiable position the objective is +inf and the gradient zero."""
    g, ph, pos, h, nv = problem["g"], problem["phases"], problem["positions"], problem["H"], problem["noise_var"]
    bad = np.array([[0.2, 0.1, 1e300]])
    v, grad = crb_objective_and_grad(ph, pos, g, h, nv)
    v_bad, grad_bad = crb_objective_and_grad(ph, np.vstack([pos, bad]), g, h, nv)
    assert np.isfinite(float(v)) and float(v_bad) == pytest.approx(float(v), rel=1e-12)
    assert np.all(np.isfinite(grad_bad))
    np.testing.assert_allclose(grad_bad, grad, rtol=1e-10, atol=1e-14)
    assert float(crb_objective(ph, np.vstack([pos, bad]), g, h, nv)) == pytest.approx(float(v), rel=1e-12)
    v_none, grad_none = crb_objective_and_grad(ph, bad, g, h, nv)
    assert float(v_none) == np.inf and np.all(np.asarray(grad_none) == 0)


def test_bad_arguments_name_themselves(problem):
    g, ph, pos, h, nv = problem["g"], problem["phases"], problem["positions"], problem["H"], problem["noise_var"]
    for call, name in [
        (lambda: crb_objective(ph[:, :5], pos, g, h, nv), "phases"),
        (lambda: crb_objective(ph, pos[:, :2], g, h, nv), "positions"),
        (lambda: crb_objective(ph, pos * np.array([1, 1, -1]), g, h, nv), "positions[:, 2]"),
        (lambda: crb_objective(ph, pos, g, h[:, :3], nv), "H"),
        (lambda: crb_objective(ph, pos, g, h, 0.0), "noise_var"),
        (lambda: random_codes(jax.random.key(0), 4, 16, -1), "bits"),
        (lambda: sample_positions(jax.random.key(0), [[0, 1], [0, 1], [0, 1]], 4), "box"),
        (lambda: design_codes(g, h, [[0, 1], [0, 0], [1, 2]], n_snapshots=4, noise_var=nv, bits=1.5,
                              key=jax.random.key(0)), "bits"),
        (lambda: design_codes(g, h, [[0, 1], [0, 0], [1, 2]], n_snapshots=4, noise_var=nv, bits=1, n_steps=0,
                              key=jax.random.key(0)), "n_steps"),
        (lambda: design_codes(g, h, [[0, 1], [0, 0], [1, 2]], n_snapshots=4, noise_var=nv, bits=1,
                              key=jax.random.key(0), sources=(3, 2)), "sources"),
        (lambda: design_codes(g, h, [[0, 1], [0, 0], [1, 2]], n_snapshots=4, noise_var=nv, bits=1,
                              key=jax.random.key(0), sources=(0, 2)), "sources"),
        (lambda: crb_objective(ph, pos[None], g, h, nv, mask=np.ones((1, 2), bool)), "mask"),
        (lambda: crb_objective(ph, pos[None], g, h, nv, mask=np.zeros((1, 3), bool)), "mask"),
        (lambda: crb_objective(ph, pos, g, h, nv, mask=np.ones((3, 1), bool)), "mask"),
    ]:
        with pytest.raises(ValueError, match=f"^{name.replace('[', '.').replace(']', '.')}"):
            call()
    with pytest.raises(ValueError, match="^channel: code design needs a fixed channel"):
        design_scenario_codes(get_scenario("seed", **TINY), snr_db=0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="^mode: code design needs a RIS-mode scenario"):
        design_scenario_codes(get_scenario("full", nh=4, nv=4), snr_db=0.0, key=jax.random.key(0))


# ------------------------------------------------------------------------------- the design ----
@pytest.fixture(scope="module")
def tiny_design():
    cfg = get_scenario("seed-los", **TINY)
    jax.config.update("jax_enable_x64", True)
    seen = []
    design, prob = design_scenario_codes(cfg, snr_db=0.0, key=jax.random.key(0), bits=0, n_steps=40, batch=16,
                                         learning_rate=0.1, progress=lambda i, v: seen.append((i, v)))
    return cfg, design, prob, seen


def test_a_short_design_beats_random_codes(tiny_design):
    cfg, design, prob, seen = tiny_design
    assert [i for i, _ in seen] == list(range(40)) and np.allclose([v for _, v in seen], design.history)
    assert design.codes.shape == (4, 16) and design.codes.dtype == np.complex64
    np.testing.assert_allclose(np.abs(design.codes), 1.0, atol=1e-6)
    np.testing.assert_allclose(design.codes, np.exp(1j * design.phases), atol=1e-6)
    assert np.mean(design.history[-5:]) < np.mean(design.history[:5])
    key = jax.random.key(7)
    pos = np.asarray(sample_positions(key, prob["box"], 64))
    rand = np.asarray(random_codes(jax.random.fold_in(key, 1), 4, 16, 0, shape=(8,)))
    args = (pos, prob["geometry"], prob["H"], prob["noise_var"])
    designed = float(crb_objective(design.phases, *args))
    random = [float(crb_objective(np.angle(c), *args)) for c in rand]
    assert designed < min(random), (designed, random)
    judged = judge_codes(design.codes, prob["geometry"], prob["H"], prob["box"], prob["noise_var"],
                         key=jax.random.key(8), bits=0, n_positions=64)
    for name in ("phi", "theta", "r"):
        assert np.median(getattr(judged.random, name)) > np.median(getattr(judged.designed, name)), name
    med = crb_medians(design.codes, judged.positions, prob["geometry"], prob["H"], prob["noise_var"])
    assert med.phi == pytest.approx(float(np.median(judged.designed.phi)), rel=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_projection_lands_on_the_bit_grid(bits):
    g = upa(4, 4, 0.15, 0.15, wavelength=WAVELENGTH)
    rng = np.random.default_rng(bits)
    h = (rng.standard_normal((4, 16)) + 1j * rng.standard_normal((4, 16))) / np.sqrt(32)
    box = np.array([[-0.5, 0.5], [-0.3, 0.3], [0.5, 5.0]])
    d = design_codes(g, h, box, n_snapshots=4, noise_var=1.0, bits=bits, key=jax.random.key(bits), n_steps=3,
                     batch=4)
    idx = d.phases / (2.0 * np.pi / 2**bits)
    np.testing.assert_allclose(idx, np.round(idx), atol=1e-9)
    assert np.all((d.phases >= 0) & (d.phases < 2.0 * np.pi))
    levels = np.exp(2j * np.pi * np.arange(2**bits) / 2**bits)
    assert np.all(np.min(np.abs(d.codes[..., None] - levels), axis=-1) < 1e-6)
    rc = np.asarray(random_codes(jax.random.key(0), 4, 16, bits))
    assert np.all(np.min(np.abs(rc[..., None] - levels), axis=-1) < 1e-6)


# ---------------------------------------------------------------------------------- the CLI ----
def test_parser_mirror_matches_the_library():
    import inspect

    assert design_cli.LEARNING_RATE == LEARNING_RATE
    assert inspect.signature(design_codes).parameters["learning_rate"].default == LEARNING_RATE
    assert tuple(inspect.signature(design_codes).parameters["sources"].default) == (1, 1)


def test_design_help_leaves_jax_unloaded():
    code = ("import sys\n"
            "from rismvdr.cli import main\n"
            "for argv in (['design', '--help'], ['design', 'codes', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, argv\n"
            "    assert 'jax' not in sys.modules, argv\n"
            "print('JAX-FREE')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", RISMVDR_COMPILE_CACHE="0"))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("JAX-FREE"), proc.stderr
    assert "--snr-db" in proc.stdout and "--held-out" in proc.stdout


TINY_FLAGS = ["--set", "nh=4", "--set", "nv=4", "--set", "n_bs=4", "--set", "n_snapshots=4"]


def test_design_codes_writes_a_codebook_plot_and_report(tmp_path, capsys):
    out, report = tmp_path / "codes.npz", tmp_path / "design.json"
    rc = main(["design", "codes", *TINY_FLAGS, "--bits", "1", "--steps", "5", "--batch", "8", "--held-out", "20",
               "--sources", "1", "2", "--out", str(out), "--report", str(report), "-q"])
    printed = capsys.readouterr().out
    assert rc == 0
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) == {"codes", "phases", "meta"}
        codes, meta = z["codes"], json.loads(str(z["meta"]))
    assert codes.shape == (4, 16) and codes.dtype == np.complex64
    np.testing.assert_allclose(np.abs(codes), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(codes.real), 1.0, atol=1e-6)  # 1 bit: phases 0 or pi
    assert meta["bits"] == 1 and meta["config"]["code_bits"] == 1 and meta["config"]["nh"] == 4
    assert meta["steps"] == 5 and meta["seed"] == 0 and meta["snr_db"] == 0.0 and meta["sources"] == [1, 2]
    assert set(meta["median_crb_std"]) == {"phi_deg", "theta_deg", "r_m"}
    assert json.loads(report.read_text()) == meta
    assert (tmp_path / "codes_crb.png").stat().st_size > 1000
    assert "random/designed" in printed and "phi (deg)" in printed and "r (m)" in printed


@pytest.mark.parametrize("argv, message", [
    (["--bits", "-1"], "--bits: must be an integer in [0, 16]"),
    (["--snr-db", "nan"], "--snr-db: must be a finite number"),
    (["--steps", "0"], "--steps: must be an integer >= 1"),
    (["--held-out", "0"], "--held-out: must be an integer >= 1"),
    (["--learning-rate", "0"], "--learning-rate: must be > 0"),
    (["--scenario", "full"], "--scenario: code design needs a RIS-mode scenario"),
    (["--scenario", "seed"], "--scenario: 'seed' draws its channel per scene"),
    (["--scenario", "nope"], "scenario: unknown 'nope'"),
    (["--set", "code_bits=x"], "code_bits: expected an integer"),
    (["--sources", "3", "2"], "--sources: expected 1 <= MIN <= MAX"),
    (["--sources", "0", "2"], "--sources: expected 1 <= MIN <= MAX"),
])
def test_bad_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "codes.npz"
    rc = main(["design", "codes", *argv, "--steps" if "--steps" not in argv else "--batch", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(tmp_path.iterdir()) == []
