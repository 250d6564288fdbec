"""Degenerate data in every registered method: all-zero measurements, noise-only
scenes, and the units of `y`.

What each method must do (`rismvdr.localize.localize`, every name in `METHODS`):

* all-zero `y`: no valid detection, no NaN in the detections, finite maps. `localize` invalidates
  a scene that measured nothing whatever the method (the oracles read the truth, not `y`); below
  that, the spectrum methods' maps of an all-zero covariance are flat and the shared detector
  finds no peak in a flat or non-finite map (`tests/test_detect.py`).
* noise-only `y` (truth K = 0): no detection in any method, within a binomial bound at the
  per-scene false-alarm bound `pfa` (1 %) over `N_NOISE` scenes. The compressive methods stop by
  their F test; the methods given the true K get K = 0; every other method's detections pass the
  shared significance stage (`rismvdr.localize.significance`: the same F test on `y`), without
  which the detector's `db` / `mad` thresholds, relative to the map's own maximum, report up to
  `k_max` peaks of the noise (`significance="none"`: checked here for MVDR on ALS).
* units: the detections of `y * 1e-30`, `y` and `y * 1e30` (complex64, whose squares
  overflow / underflow float32) are the same: same validity, positions and scores equal to
  float32 rounding (`localize` scales each scene to unit RMS first).

Cost: one `localize` call per method (compiled once) over every case (3 scenes at three scales, an all-zero
scene, `N_NOISE` noise-only scenes; one scene per jitted call) on a 4-deg x 4-deg x 4-plane grid; the learned
methods use the shipped model (the data of the seed scenario) and are marked `slow`, as is
`somp-ml` on the `full` scenario (L = 64, where jaxlib 0.10's threaded LAPACK batches deadlocked).
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rismvdr.localize.detect import DetectorConfig, detect
from rismvdr.localize.registry import METHODS, localize, settings_for_scenario
from rismvdr.physics.compressive import CompressiveConfig
from rismvdr.physics.covariance import unit_rms
from rismvdr.physics.scenarios import get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate
from rismvdr.physics.spectra import (
    bartlett_factor_operator,
    bartlett_operator,
    grid_steering,
    make_grid,
    music_operator,
    mvdr_lowrank_operator,
    mvdr_operator,
    spectrum_25d,
)

N_BASE = 3  # scenes of the scale test
SCALES = (1e-30, 1.0, 1e30)
N_NOISE = 12
SMALL = dict(phi_step_deg=4.0, theta_step_deg=4.0, n_planes=4)
#: Scale test: float32 rounding of `y * 1e30` (relative 6e-8 per entry) moves refined positions
#: by less than these (angles rad, range relative, score dB); range is the flat direction of the
#: refinement (measured: up to 1.0e-3 relative, `mvdr-ridge`).
ANGLE_ATOL, R_RTOL, SCORE_ATOL = 1e-3, 5e-3, 0.05
#: The learned methods compile the backbone (1-4 minutes each on the 2-core CPU): `slow`, as in
#: tests/test_methods.py, which leaves them to tests/test_learned.py and tests/test_shipped.py.
ALL = [pytest.param(n, marks=pytest.mark.slow) if METHODS[n].learned else n for n in METHODS]


def _mode(name):
    return "full" if METHODS[name].full_array_only else "seed"


def _cases(mode):
    """(config, batch): N_BASE scenes at each of SCALES, one all-zero scene (the truth of scene 0),
    N_NOISE noise-only scenes (unit-variance complex noise, truth K = 0)."""
    cfg = get_scenario(mode)
    base = simulate(cfg, jax.random.key(3), N_BASE)
    parts = [dataclasses.replace(base, y=base.y * jnp.asarray(s, base.y.dtype)) for s in SCALES]
    parts.append(dataclasses.replace(base[:1], y=jnp.zeros_like(base.y[:1])))
    noise = base[np.arange(N_NOISE) % N_BASE]
    rng = np.random.default_rng(7)
    y = (rng.standard_normal(noise.y.shape) + 1j * rng.standard_normal(noise.y.shape)) / np.sqrt(2)
    parts.append(dataclasses.replace(
        noise, y=jnp.asarray(y, noise.y.dtype), mask=jnp.zeros_like(noise.mask),
        power=jnp.zeros_like(noise.power), phi=jnp.zeros_like(noise.phi), theta=jnp.zeros_like(noise.theta),
        r=jnp.full_like(noise.r, cfg.r_m[1]), R_true=jnp.zeros_like(noise.R_true)))
    batch = jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *parts)
    return cfg, batch


SCALE_ROWS = [slice(i * N_BASE, (i + 1) * N_BASE) for i in range(len(SCALES))]
ZERO_ROW = len(SCALES) * N_BASE
NOISE_ROWS = slice(ZERO_ROW + 1, ZERO_ROW + 1 + N_NOISE)


@pytest.fixture(scope="module")
def results():
    """Memoised `localize(method, cases)` (one padded batch, one compilation per method)."""
    cache, cases = {}, {}

    def get(name):
        mode = _mode(name)
        if mode not in cases:
            cases[mode] = _cases(mode)
        cfg, batch = cases[mode]
        if name not in cache:
            # One scene per jitted call: jaxlib 0.10's batched LAPACK kernels (ALS, MVDR) hand the
            # chunks of a batch to XLA's CPU pool and block on them, which can deadlock when as many
            # run at once as the pool has threads; a batch of one never takes that path.
            s = settings_for_scenario(cfg, batch_size=1).with_grid(**SMALL)
            s = s.replace(compressive=dataclasses.replace(s.compressive, **SMALL))
            cache[name] = localize(name, batch, scenario_geometry(cfg), s, progress=False)
        return cfg, cache[name]

    return get


def _rows(det, rows):
    return [np.asarray(x)[rows] for x in det]


@pytest.mark.parametrize("name", ALL)
def test_all_zero_y_gives_no_detections(name, results):
    _, res = results(name)
    phi, theta, r, score, valid = _rows(res.detections, ZERO_ROW)
    assert not valid.any(), f"{name}: {valid.sum()} detections on an all-zero scene"
    assert not np.isnan(score).any() and not np.isnan(phi).any()
    assert np.all(np.isfinite(res.power_db[ZERO_ROW]))  # the map of nothing is finite (flat or the oracle's)


#: Noise-only scenes with a detection allowed out of N_NOISE: what a per-scene rate of `pfa`
#: exceeds with probability 0.001.
NOISE_ALARMS_MAX = int(stats.binom.ppf(0.999, N_NOISE, CompressiveConfig().pfa))


@pytest.mark.parametrize("name", ALL)
def test_noise_only_scenes_give_no_detections(name, results):
    _, res = results(name)
    phi, theta, r, score, valid = _rows(res.detections, NOISE_ROWS)
    assert np.all(np.isfinite(res.power_db[NOISE_ROWS]))
    alarms = int(np.sum(valid.any(-1)))
    assert alarms <= NOISE_ALARMS_MAX, f"{name}: detections in {alarms} of {N_NOISE} noise-only scenes"
    for x in (phi, theta, r, score):  # any that pass are proper detections
        assert np.all(np.isfinite(x[valid]))


def test_noise_only_scenes_without_the_significance_stage():
    """The old behaviour stays reachable: without the stage, the relative threshold passes peaks
    of the noise in every noise-only scene, finite and inside the search box."""
    cfg, batch = _cases("seed")
    s = settings_for_scenario(cfg, batch_size=1).with_grid(**SMALL)
    s = s.replace(detector=dataclasses.replace(s.detector, significance="none"))
    noise = jax.tree_util.tree_map(lambda a: a[NOISE_ROWS], batch)
    res = localize("mvdr-als", noise, scenario_geometry(cfg), s, progress=False)
    phi, theta, r, score, valid = (np.asarray(x) for x in res.detections)
    assert np.all(valid.any(-1)), "mvdr-als without the stage: the noise maps' peaks pass the db threshold"
    assert np.all(valid.sum(-1) <= DetectorConfig().k_max)
    assert np.all(np.diff(valid.astype(int), axis=-1) <= 0)
    for x in (phi, theta, r, score):
        assert np.all(np.isfinite(x[valid]))
    eps = 1e-6
    assert np.all(np.abs(phi[valid]) <= np.deg2rad(cfg.phi_deg[1]) + eps)
    assert np.all((r[valid] >= cfg.r_m[0] - eps) & (r[valid] <= cfg.r_m[1] + eps))


@pytest.mark.parametrize("name", ALL)
def test_detections_do_not_depend_on_the_units_of_y(name, results):
    _, res = results(name)
    ref = _rows(res.detections, SCALE_ROWS[1])  # music-mdl finds none in these scenes at any scale
    for rows, s in zip(SCALE_ROWS, SCALES):
        phi, theta, r, score, valid = _rows(res.detections, rows)
        np.testing.assert_array_equal(valid, ref[4], err_msg=f"{name}: validity at y * {s:g}")
        v = valid
        np.testing.assert_allclose(phi[v], ref[0][v], atol=ANGLE_ATOL, err_msg=f"{name} phi at {s:g}")
        np.testing.assert_allclose(theta[v], ref[1][v], atol=ANGLE_ATOL, err_msg=f"{name} theta at {s:g}")
        np.testing.assert_allclose(r[v], ref[2][v], rtol=R_RTOL, err_msg=f"{name} r at {s:g}")
        np.testing.assert_allclose(score[v], ref[3][v], atol=SCORE_ATOL, err_msg=f"{name} score at {s:g}")
        assert np.all(np.isfinite(res.power_db[rows]))


# ------------------------------------------------------------------------------------------
# The layers below `localize`
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1.0, 1e30])
def test_unit_rms(scale):
    rng = np.random.default_rng(0)
    y = (rng.standard_normal((2, 16, 8)) + 1j * rng.standard_normal((2, 16, 8))).astype(np.complex64)
    y[1] *= 3.0
    ys = (y * np.complex64(scale)).astype(np.complex64)
    out, s = (np.asarray(x) for x in unit_rms(jnp.asarray(ys)))
    assert out.dtype == np.complex64 and out.shape == y.shape and s.shape == (2,)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(s))
    if scale == 0.0:
        np.testing.assert_array_equal(out, 0)
        np.testing.assert_array_equal(s, 0)
        return
    ref = ys.astype(np.complex128)
    rms = np.sqrt(np.mean(np.abs(ref) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(s, rms, rtol=1e-5)
    np.testing.assert_allclose(out, ref / rms[:, None, None], rtol=1e-5, atol=1e-6)


def _flat_zero_operators(n, batch):
    R = jnp.zeros((batch, n, n), jnp.complex64)
    F = jnp.zeros((batch, n, 3), jnp.complex64)
    return {
        "mvdr": jax.vmap(mvdr_operator)(R),
        "mvdr-lowrank": jax.vmap(mvdr_lowrank_operator)(F),
        "music": jax.vmap(lambda r: music_operator(r, 2, max_sources=4))(R),
        "bartlett": jax.vmap(bartlett_operator)(R),
        "bartlett-factor": bartlett_factor_operator(F),
    }


@pytest.mark.parametrize("kind", ["mvdr", "mvdr-lowrank", "music", "bartlett", "bartlett-factor"])
def test_all_zero_covariance_gives_a_flat_finite_map_and_no_peaks(kind):
    cfg = get_scenario("seed")
    geo = scenario_geometry(cfg)
    grid = make_grid(cfg.phi_deg, cfg.theta_deg, cfg.r_m, **SMALL)
    op = _flat_zero_operators(geo.n_elements, 2)[kind]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in (op.W, op.scale))
    spec = spectrum_25d(op, grid_steering(geo, grid))
    p = np.asarray(spec.power)
    assert np.all(np.isfinite(p))
    if np.any(p > 0):  # flat within rounding: |a|^2 = N at every grid point
        db = 10 * np.log10(p)
        assert db.max() - db.min() < DetectorConfig().flat_db
    det = detect(op, spec, geo, grid, DetectorConfig())
    assert not np.asarray(det.valid).any()
    assert not np.isnan(np.asarray(det.score_db)).any()


@pytest.mark.slow
def test_somp_ml_finishes_on_the_full_scenario():
    """`somp-ml` on `full` (L = 64, full-array mode, the default settings) returns, twice (the
    second call of the same program is where jaxlib 0.10's threaded LAPACK batches deadlocked on
    a 2-core CPU), with the same detections, and finds the sources at 10 dB. Run in a subprocess
    with a timeout, so a deadlock fails the test instead of stopping the suite."""
    script = textwrap.dedent("""
        import json, time
        import numpy as np
        from rismvdr.eval.evaluation import evaluate_detections
        from rismvdr.localize.registry import localize, settings_for_scenario
        from rismvdr.physics.scenarios import get_scenario, scenario_geometry
        from rismvdr.physics.simulate import simulate
        cfg = get_scenario("full", snr_db=(10.0, 10.0))
        scenes = simulate(cfg, 0, 8)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            res = localize("somp-ml", scenes, scenario_geometry(cfg), settings_for_scenario(cfg), progress=False)
            runs.append((time.perf_counter() - t, res))
        d = runs[0][1].detections
        m = evaluate_detections(scenes, d.phi, d.theta, d.r, d.valid, gates=cfg.gates)
        same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(runs[0][1].detections, runs[1][1].detections))
        print(json.dumps(dict(seconds=[t for t, _ in runs], f1=float(m["f1"]), same=bool(same))))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"], out
    assert out["f1"] >= 0.8, out


@pytest.mark.parametrize("name", ["mvdr-als", "bartlett", "music-mdl", "music-aic", "music-oracle-k"])
def test_surface_smaller_than_the_rank_and_the_count(name):
    """A 2 x 2 surface (N = 4): fewer elements than the ALS rank (5) and than k_max + 1 signal
    eigenvectors: the ALS covariance takes rank N and MUSIC keeps at most N - 1 eigenvectors;
    each method runs and reports finite detections."""
    cfg = get_scenario("seed", nh=2, nv=2, k_min=1, k_max=2, snr_db=(20.0, 20.0))
    scenes = simulate(cfg, jax.random.key(1), 2)
    s = settings_for_scenario(cfg, batch_size=2).with_grid(**SMALL)
    det = localize(name, scenes, scenario_geometry(cfg), s, progress=False, keep_maps=False).detections
    valid = np.asarray(det.valid)
    assert valid.shape == (2, s.detector.k_max)
    for x in (det.phi, det.theta, det.r):
        assert np.all(np.isfinite(np.asarray(x)[valid]))
