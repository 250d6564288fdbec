"""Deployments, RIS hardware and impairments (conventions section 9): the line-of-sight and Rician
channels, the BS geometry, the phase quantizer, the deployment's noise floor and realised SNR,
impairments that act on `y` but not on what the file stores, given codebooks, the validation of
every new field, and the seed's regime left bit for bit as it was.

References are float64 NumPy written here from the conventions (docs/conventions.md, section 9).
Simulations are few and small: each (config, batch shape) compiles once, a few seconds on the CPU.
"""
import dataclasses
import hashlib
import json

import jax
import numpy as np
import pytest

from rismvdr.cli import main
from rismvdr.io import SceneFileError, load_scenes, scenario_from_meta, scenes_from_file
from rismvdr.localize import localize, settings_for_scenario
from rismvdr.physics.crb import crb_scenes
from rismvdr.physics.deployment import deployment, los_channel, noise_floor, quantize_codes, quantize_phases
from rismvdr.physics.scenarios import DEPLOYMENT_FIELDS, SceneConfig, bs_positions, get_scenario, scenario_geometry
from rismvdr.physics.simulate import simulate

SEED = get_scenario("seed")
LOS = get_scenario("seed-los")
N = 144


def fast_key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def unit(phases):
    return np.exp(1j * np.asarray(phases, np.float64))


def ls_residual(y, g, a):
    """Relative least-squares residual of `y_l` `[L, M]` on `G_l A^T`, `g` `[L, M, N]`, `a` `[K, N]`."""
    num = den = 0.0
    for yl, gl in zip(y, g):
        b = gl @ a.T
        r = yl - b @ np.linalg.lstsq(b, yl, rcond=None)[0]
        num, den = num + np.sum(np.abs(r) ** 2), den + np.sum(np.abs(yl) ** 2)
    return np.sqrt(num / den)


def ref_steering(cfg, phi, theta, r):
    """`[K, N]` exact steering (conventions section 2), float64."""
    g = scenario_geometry(cfg)
    p = np.asarray(g.positions, np.float64)
    phi, theta, r = (np.asarray(x, np.float64) for x in (phi, theta, r))
    u = r[:, None] * np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)], -1)
    d = np.linalg.norm(u[:, None, :] - p[None], axis=-1)
    return np.exp(-2j * np.pi / float(g.wavelength) * (d - r[:, None]))


# ----------------------------------------------------------------------------------------------
# Channels and BS geometry (host NumPy, no compilation)


def test_bs_geometry_broadside_horizontal_at_the_given_pose():
    cfg = get_scenario("seed-los", bs_distance_m=5.0, bs_azimuth_deg=-25.0, bs_elevation_deg=12.0)
    b = bs_positions(cfg)
    az, el = np.deg2rad(-25.0), np.deg2rad(12.0)
    toward = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    assert b.shape == (16, 3)
    np.testing.assert_allclose(b.mean(0), 5.0 * toward, atol=1e-12)
    steps = np.diff(b, axis=0)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), 0.15, atol=1e-12)  # half wavelength
    axis = steps[0] / np.linalg.norm(steps[0])
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-12)  # a line
    assert abs(axis[2]) < 1e-12  # horizontal
    assert abs(axis @ toward) < 1e-12  # broadside to the surface's centre
    np.testing.assert_allclose(axis, [-np.sin(az), np.cos(az), 0.0], atol=1e-12)
    wide = bs_positions(cfg.replace(bs_spacing_m=0.4))
    np.testing.assert_allclose(np.linalg.norm(np.diff(wide, axis=0), axis=1), 0.4, atol=1e-12)


def test_los_channel_matches_the_spherical_wave_formula():
    cfg = get_scenario("seed-los", n_bs=4, bs_distance_m=3.0, bs_azimuth_deg=30.0, bs_elevation_deg=-10.0)
    surface = np.asarray(scenario_geometry(cfg).positions, np.float64)
    az, el = np.deg2rad(30.0), np.deg2rad(-10.0)
    centre = 3.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    axis = np.array([-np.sin(az), np.cos(az), 0.0])
    bs = [centre + (m - 1.5) * 0.15 * axis for m in range(4)]
    ref = np.empty((4, N), complex)
    for m in range(4):
        for n in range(N):
            d = float(np.sqrt(np.sum((bs[m] - surface[n]) ** 2)))
            ref[m, n] = np.exp(-1j * 2 * np.pi / 0.3 * d) / d
    ref /= np.sqrt(np.mean(np.abs(ref) ** 2) * N)
    h = los_channel(surface, bs_positions(cfg), 0.3)
    np.testing.assert_allclose(h, ref, rtol=1e-10, atol=1e-13)
    assert np.mean(np.abs(h) ** 2) == pytest.approx(1.0 / N, rel=1e-12)
    dep = deployment(cfg)
    np.testing.assert_allclose(dep.H_true, ref, rtol=1e-10, atol=1e-13)
    assert dep.H_known is dep.H_true  # no estimation error by default


def test_rician_mix_limits():
    iid = deployment(SEED.replace(deployment_seed=5)).H_true
    assert np.mean(np.abs(iid) ** 2) == pytest.approx(1.0 / N, rel=0.1)
    pure = deployment(get_scenario("seed-los", channel="rician", rician_k_factor=0.0, deployment_seed=5)).H_true
    np.testing.assert_array_equal(pure, iid)  # kf = 0: the i.i.d. channel alone
    los = deployment(LOS).H_true
    strong = deployment(get_scenario("seed-los", channel="rician", rician_k_factor=1e8, deployment_seed=5)).H_true
    np.testing.assert_allclose(strong, los, atol=1e-3 * np.max(np.abs(los)))
    kf = 3.0
    mix = deployment(get_scenario("seed-los", channel="rician", rician_k_factor=kf, deployment_seed=5)).H_true
    np.testing.assert_allclose(mix, np.sqrt(kf / (1 + kf)) * los + np.sqrt(1 / (1 + kf)) * iid, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Phase quantizer


@pytest.mark.parametrize("bits, phases_over_pi, levels", [
    (1, [0.0, 0.4, 0.6, 1.0, 1.4, 1.6, 1.9, -0.3, -0.7], [0, 0, 1, 1, 1, 0, 0, 0, 1]),
    (2, [0.0, 0.2, 0.3, 0.7, 1.2, 1.7, 1.8, 1.99, -0.2, -0.3], [0, 0, 1, 1, 2, 3, 0, 0, 0, 3]),
    (3, [0.1, 0.15, 0.6, 1.0, 1.3, 1.85, 1.95, -0.9, -0.1], [0, 1, 2, 4, 5, 7, 0, 4, 0]),
])
def test_quantizer_table(bits, phases_over_pi, levels):
    """Phase -> level index `q`, reflected phase `q 2 pi / 2^b` in [0, 2 pi), wrapping near 2 pi to 0."""
    step = 2 * np.pi / 2 ** bits
    ph = np.pi * np.asarray(phases_over_pi)
    want = np.asarray(levels) * step
    np.testing.assert_allclose(quantize_phases(ph, bits), want, atol=1e-12)
    np.testing.assert_allclose(np.asarray(quantize_phases(jax.numpy.asarray(ph), bits)), want, atol=1e-12)
    np.testing.assert_allclose(quantize_codes(unit(ph), bits), unit(want), atol=1e-12)
    np.testing.assert_array_equal(quantize_phases(ph, 0), ph)  # 0 bits: continuous, unchanged


# ----------------------------------------------------------------------------------------------
# Validation: one ValueError naming the field


@pytest.mark.parametrize("overrides, field", [
    (dict(code_bits=-1), "code_bits"),
    (dict(code_bits=1.5), "code_bits"),
    (dict(code_bits=True), "code_bits"),
    (dict(element_failure=1.0), "element_failure"),
    (dict(element_failure=-0.1), "element_failure"),
    (dict(channel="rician", rician_k_factor=-1.0), "rician_k_factor"),
    (dict(bs_distance_m=0.5), "bs_distance_m"),  # inside the 1.17 m reach of the 12 x 12 surface
    (dict(bs_azimuth_deg=120.0), "bs_azimuth_deg"),  # behind the surface
    (dict(bs_distance_m=1.5, bs_azimuth_deg=80.0), "behind the surface"),  # part of the ULA behind it
    (dict(bs_spacing_m=0.0), "bs_spacing_m"),
    (dict(deployment_seed=-1), "deployment_seed"),
])
def test_bad_deployment_fields_raise(overrides, field):
    with pytest.raises(ValueError, match=field):
        get_scenario("seed-los", **overrides)


def test_bad_codebooks_raise():
    good = unit(np.zeros((16, N)))
    for codes, problem in ((good[:, :-1], "shape"), (good[None], "shape"), (0.5 * good, "unit modulus"),
                           (np.where(np.arange(N) == 3, np.nan, good), "non-finite"),
                           (np.full((16, N), "a"), "dtype")):
        with pytest.raises(ValueError, match=f"^codes: .*{problem}"):
            simulate(SEED, 0, 2, codes=codes)
    with pytest.raises(ValueError, match="^codes: full-array mode"):
        simulate(get_scenario("full"), 0, 2, codes=unit(np.zeros((64, N))))


# ----------------------------------------------------------------------------------------------
# The seed's regime is unchanged


def test_as_dict_of_the_old_scenarios_has_the_old_keys():
    old = {"array", "channel", "codebook", "dtype", "gate_phi_deg", "gate_r_m", "gate_theta_deg", "k_max", "k_min",
           "mode", "n_bs", "n_candidates", "n_snapshots", "name", "nh", "nv", "phi_deg", "positions", "power_db",
           "r_m", "snr_db", "spacing_h", "spacing_v", "steering_model", "theta_deg", "wavelength"}
    for name in ("seed", "full", "ula15"):
        d = get_scenario(name).as_dict()
        assert set(d) == old, name
        assert d == {k: v for k, v in dataclasses.asdict(get_scenario(name)).items() if k in old}
    los = LOS.as_dict()
    assert los["channel"] == "los" and los["deployment_seed"] == 0
    assert scenario_from_meta({"config": json.loads(json.dumps(los))}) == LOS
    assert scenario_from_meta({"config": SEED.as_dict()}) == SEED  # a file without the new fields
    for field, value in (("deployment_seed", 1.5), ("channel_nmse_db", "x"), ("bs_spacing_m", [1]),
                         ("channel", "ray"), ("code_bits", 1.5)):
        with pytest.raises(SceneFileError, match=f"config.{field}:"):
            scenario_from_meta({"config": {field: value}})
    assert scenario_from_meta({"config": {"deployment_seed": None, "channel_nmse_db": -20}}).channel_nmse_db == -20


@pytest.fixture(scope="module")
def plain_scenes():
    return simulate(SEED, fast_key(0), 4)


#: sha256 of the first 4 scenes (key 0) of `seed`, `full` and `ula15` as the simulator wrote them
#: before the deployment fields existed: computed with that code under this suite's XLA flags
#: (tests/conftest.py; other flags round differently), per jax version, on this project's CPU VM.
SEED_REGIME_DIGESTS = {
    "0.12.1": "af3a11f85cb03c246a02dcd46133ce9f8a370c13921d1252172e92cb1a86b551",
    "0.9.2": "b8d4a84283fb7c590fab72b4d4dba063a25a33e510ee2c377db91fd028650638",
}


def test_deployment_fields_at_their_defaults_change_nothing():
    defaults = {f.name: f.default for f in dataclasses.fields(SceneConfig) if f.name in DEPLOYMENT_FIELDS}
    explicit = get_scenario("seed", channel="iid", **defaults)
    assert explicit == SEED and not explicit.is_deployment and not explicit.has_impairments
    if jax.__version__ not in SEED_REGIME_DIGESTS:
        pytest.skip(f"no recorded digest for jax {jax.__version__}")
    h = hashlib.sha256()
    for name in ("seed", "full", "ula15"):
        sc = simulate(get_scenario(name), jax.random.key(0), 4)
        for field in ("y", "H", "codes", "noise_var", "snr_db", "phi", "theta", "r", "power", "mask"):
            a = getattr(sc, field)
            if a is not None:
                h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    assert h.hexdigest() == SEED_REGIME_DIGESTS[jax.__version__]


# ----------------------------------------------------------------------------------------------
# Impairments act on y, the scene keeps what the receiver believes


def test_per_scene_channel_estimation_error(plain_scenes):
    """An i.i.d. channel drawn per scene: the stored H is the true one plus CN error at the NMSE;
    y, sources and codes are those of the exact-channel scenes (the draws do not move)."""
    sc = simulate(SEED.replace(channel_nmse_db=-10.0), fast_key(0), 4)
    h_true, h = np.asarray(plain_scenes.H, np.complex128), np.asarray(sc.H, np.complex128)
    nmse_db = 10 * np.log10(np.sum(np.abs(h - h_true) ** 2, (1, 2)) / np.sum(np.abs(h_true) ** 2, (1, 2)))
    np.testing.assert_allclose(nmse_db, -10.0, atol=0.4)  # 2304 entries a scene
    for name in ("phi", "theta", "r", "power", "codes", "noise_var", "snr_db"):
        np.testing.assert_array_equal(np.asarray(getattr(sc, name)), np.asarray(getattr(plain_scenes, name)))
    np.testing.assert_allclose(np.asarray(sc.y), np.asarray(plain_scenes.y), rtol=1e-6, atol=1e-7)


def test_surface_impairments_act_on_y_not_on_the_stored_codes():
    cfg = get_scenario("seed", deployment_seed=3, code_bits=2, code_phase_error_deg=30.0, element_failure=0.25,
                       channel_nmse_db=-10.0, snr_db=(200.0, 200.0), k_min=2, k_max=2)
    dep = deployment(cfg)
    assert dep.failed.sum() == round(0.25 * N)
    assert np.all(dep.stuck_phase[~dep.failed] == 0)
    np.testing.assert_allclose(quantize_phases(dep.stuck_phase, 2), dep.stuck_phase, atol=1e-12)
    assert np.std(dep.phase_error) == pytest.approx(np.deg2rad(30.0), rel=0.2)
    h_err = dep.H_known - dep.H_true
    assert 10 * np.log10(np.mean(np.abs(h_err) ** 2) / np.mean(np.abs(dep.H_true) ** 2)) == pytest.approx(-10, abs=0.4)

    sc = simulate(cfg, fast_key(1), 3)
    codes = np.asarray(sc.codes, np.complex128)
    np.testing.assert_allclose(np.abs(codes), 1.0, atol=1e-6)
    np.testing.assert_allclose(quantize_codes(codes, 2), codes, atol=1e-6)  # nominal, 2-bit
    assert len(np.unique(np.round(np.angle(codes) / (np.pi / 2)) % 4)) == 4
    np.testing.assert_allclose(np.asarray(sc.H), np.broadcast_to(dep.H_known.astype(np.complex64), sc.H.shape))
    for i in range(3):
        a = ref_steering(cfg, sc.phi[i], sc.theta[i], sc.r[i])
        applied = np.where(dep.failed, unit(dep.stuck_phase), codes[i] * unit(dep.phase_error))
        g_applied = dep.H_true[None] * applied[:, None, :]
        g_believed = np.asarray(sc.H[i], np.complex128)[None] * codes[i][:, None, :]
        y = np.asarray(sc.y[i], np.complex128)
        assert ls_residual(y, g_applied, a) < 1e-5  # y comes from the applied codes and the true H
        assert ls_residual(y, g_believed, a) > 1e-2  # not from what the receiver believes


# ----------------------------------------------------------------------------------------------
# A line-of-sight deployment end to end: CLI file, noise floor, realised SNR, methods, CRB


@pytest.fixture(scope="module")
def los_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("deployment") / "los.npz"
    assert main(["simulate", "--scenario", "seed-los", "--scenes", "200", "--seed", "2", "--out", str(path),
                 "--set", "snr_db=15,15"]) == 0
    return load_scenes(path)


def test_los_file_stores_the_fixed_channel_once(los_file):
    sf = los_file
    cfg = scenario_from_meta(sf.meta)
    assert cfg == get_scenario("seed-los", snr_db=(15.0, 15.0))
    assert sf.H.shape == (16, N) and sf.codes.shape == (200, 16, N)
    np.testing.assert_array_equal(sf.H, deployment(cfg).H_known.astype(np.complex64))
    scenes = scenes_from_file(sf)
    assert scenes.H.shape == (200, 16, N)


def test_los_noise_floor_and_realised_snr(los_file):
    sf = los_file
    h = deployment(scenario_from_meta(sf.meta)).H_true
    total_p = np.nansum(sf.gt_power, axis=1)
    floor = total_p * np.sum(np.abs(h) ** 2) / 16 / 10 ** 1.5
    np.testing.assert_allclose(sf.noise_var, floor, rtol=1e-5)
    np.testing.assert_allclose(sf.noise_var, noise_floor(h, total_p, 15.0), rtol=1e-5)
    snr = 10 ** (sf.snr_db / 10)
    assert np.std(sf.snr_db) > 0.3  # realised, not requested
    assert np.mean(snr) == pytest.approx(10 ** 1.5, rel=0.08)  # random continuous codes: the reference
    received = np.mean(np.abs(sf.y.astype(np.complex128)) ** 2, axis=(1, 2)) / sf.noise_var
    np.testing.assert_allclose(received, 1 + snr, rtol=0.25)  # signal + noise at the floor


def test_los_scenes_localize_and_bound(los_file):
    sf = los_file
    cfg = scenario_from_meta(sf.meta)
    geometry = scenario_geometry(cfg)
    scenes = scenes_from_file(sf)[:3]
    small = dict(phi_step_deg=4.0, theta_step_deg=4.0, n_planes=4)
    settings = settings_for_scenario(cfg).with_grid(**small)
    settings = settings.replace(compressive=dataclasses.replace(settings.compressive, **small))
    for method in ("somp-ml", "mvdr-als"):
        det = localize(method, scenes, geometry, settings, progress=False, keep_maps=False).detections
        valid = np.asarray(det.valid)
        assert valid.shape[0] == 3 and valid.sum() >= 1, method
        assert np.all(np.isfinite(np.asarray(det.phi)[valid])), method
    bound = crb_scenes(scenes, geometry)
    mask = np.asarray(scenes.mask)
    for name in ("phi", "theta", "r"):
        b = np.asarray(getattr(bound, name))[mask]
        assert np.all(np.isfinite(b) & (b > 0)), name


# ----------------------------------------------------------------------------------------------
# Given codebooks: same sources and noise, rounded to code_bits, stored once; the CLI flag


QUIET = get_scenario("seed-los", snr_db=(-200.0, -200.0))  # y is the noise alone


@pytest.fixture(scope="module")
def codebook():
    return unit(np.random.default_rng(4).uniform(0, 2 * np.pi, (16, N))).astype(np.complex64)


def test_given_codes_keep_sources_and_noise(codebook):
    drawn = simulate(QUIET, jax.random.key(0), 4)
    given = simulate(QUIET, jax.random.key(0), 4, codes=codebook)
    np.testing.assert_allclose(np.asarray(given.codes), np.broadcast_to(codebook, (4, 16, N)), atol=1e-6)
    assert not np.allclose(np.asarray(given.codes), np.asarray(drawn.codes))
    for name in ("phi", "theta", "r", "power", "mask", "noise_var", "H"):
        np.testing.assert_array_equal(np.asarray(getattr(given, name)), np.asarray(getattr(drawn, name)))
    np.testing.assert_allclose(np.asarray(given.y), np.asarray(drawn.y), rtol=1e-6)  # the same noise
    one_bit = simulate(QUIET.replace(code_bits=1), jax.random.key(0), 2, codes=codebook)
    np.testing.assert_allclose(np.asarray(one_bit.codes[0]), quantize_codes(codebook.astype(complex), 1), atol=1e-6)


def test_cli_simulate_codes(codebook, tmp_path, capsys):
    book = tmp_path / "book.npz"
    np.savez(book, codes=codebook)
    out = tmp_path / "quiet.npz"
    base = ["simulate", "--scenario", "seed-los", "--scenes", "4", "--seed", "0", "--set", "snr_db=-200,-200"]
    assert main(base + ["--codes", str(book), "--out", str(out)]) == 0
    sf = load_scenes(out)
    assert sf.H.shape == (16, N) and sf.codes.shape == (16, N)
    np.testing.assert_array_equal(sf.codes, codebook)
    given = simulate(QUIET, jax.random.key(0), 4, codes=codebook)
    np.testing.assert_array_equal(sf.y, np.asarray(given.y))
    assert sf.meta["codebook"] == {"path": str(book), "sha256": hashlib.sha256(book.read_bytes()).hexdigest()}
    assert scenes_from_file(sf).codes.shape == (4, 16, N)

    def error(path, out_path=tmp_path / "x.npz"):
        capsys.readouterr()
        assert main(base + ["--codes", str(path), "--out", str(out_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    np.savez(tmp_path / "nokey.npz", beams=codebook)
    assert "--codes:" in error(tmp_path / "nokey.npz") and "'codes'" in error(tmp_path / "nokey.npz")
    np.savez(tmp_path / "short.npz", codes=codebook[:8])
    assert "--codes: expected shape [L, N] = [16, 144]" in error(tmp_path / "short.npz")
    np.savez(tmp_path / "weak.npz", codes=0.9 * codebook)
    assert "--codes: not unit modulus" in error(tmp_path / "weak.npz")
    assert "--codes:" in error(tmp_path / "missing.npz") and "no such file" in error(tmp_path / "missing.npz")
    assert "--out" in error(book, out_path=book) and np.array_equal(np.load(book)["codes"], codebook)
