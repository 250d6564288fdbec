"""Files of conventions section 8: scene .npz round trips and validation, detections CSV, JSON, atomicity."""
import doctest
import importlib
import json
import os
import pickle
import sys

import numpy as np
import pytest

from rismvdr import io
from rismvdr.io import atomic as io_atomic
from rismvdr.io import runtime as io_runtime
from rismvdr.physics import get_scenario, scenario_geometry, simulate, upa

SPEC_DTYPES = {
    "wavelength": np.float64, "positions": np.float64, "y": np.complex64, "H": np.complex64,
    "codes": np.complex64, "noise_var": np.float64, "gt_phi": np.float64, "gt_theta": np.float64,
    "gt_r": np.float64, "gt_power": np.float64, "snr_db": np.float64,
}


@pytest.fixture(scope="module")
def seed_case():
    cfg = get_scenario("seed")
    scenes = simulate(cfg, 0, 5)
    sf = io.scene_file_from_scenes(scenes, scenario_geometry(cfg), meta={"scenario": "seed", "seed": 0})
    return scenes, sf


@pytest.fixture(scope="module")
def full_case():
    cfg = get_scenario("full")
    scenes = simulate(cfg, 1, 2)
    return scenes, io.scene_file_from_scenes(scenes, scenario_geometry(cfg))


def assert_same_file(a: io.SceneFile, b: io.SceneFile):
    assert a.wavelength == b.wavelength
    assert a.meta == b.meta
    for key in io.SCENE_KEYS:
        if key in ("wavelength", "meta"):
            continue
        va, vb = getattr(a, key), getattr(b, key)
        assert (va is None) == (vb is None), key
        if va is not None:
            assert va.dtype == vb.dtype == SPEC_DTYPES[key], key
            np.testing.assert_array_equal(va, vb, err_msg=key)  # NaN == NaN here


# --- round trips -----------------------------------------------------------------------------


def test_round_trip_ris(seed_case, tmp_path):
    scenes, sf = seed_case
    path = tmp_path / "scenes.npz"
    io.save_scenes(path, sf)
    back = io.load_scenes(path)
    assert_same_file(sf, back)
    assert (back.n_scenes, back.n_snapshots, back.n_measurements, back.n_elements) == (5, 16, 16, 144)
    assert not back.full_array and back.has_truth and back.k_max == 5
    np.testing.assert_array_equal(back.truth_mask, np.asarray(scenes.mask))
    np.testing.assert_array_equal(back.y, np.asarray(scenes.y))
    np.testing.assert_array_equal(back.gt_phi[back.truth_mask], np.asarray(scenes.phi, np.float64)[back.truth_mask])
    assert np.all(np.isnan(back.gt_r[~back.truth_mask]))
    assert back.geometry().n_elements == 144 and float(back.geometry().wavelength) == 0.3


def test_file_keys_dtypes_and_no_pickle(seed_case, tmp_path):
    _, sf = seed_case
    path = tmp_path / "scenes.npz"
    io.save_scenes(path, sf)
    with np.load(path, allow_pickle=False) as npz:  # meta included: plain str, no pickle
        assert set(npz.files) == set(io.SCENE_KEYS)
        for key, dtype in SPEC_DTYPES.items():
            assert npz[key].dtype == dtype, key
        assert npz["wavelength"].shape == ()
        meta = npz["meta"]
        assert meta.shape == () and meta.dtype.kind == "U"
        assert isinstance(meta[()], np.str_)
        assert json.loads(str(meta)) == {"scenario": "seed", "seed": 0}


def test_scenes_from_file_reproduces_scene(seed_case, tmp_path):
    scenes, sf = seed_case
    io.save_scenes(tmp_path / "s.npz", sf)
    back = io.scenes_from_file(io.load_scenes(tmp_path / "s.npz"))
    for name in ("y", "H", "codes", "noise_var", "snr_db", "mask"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(scenes, name)), err_msg=name)
    mask = np.asarray(scenes.mask)
    for name in ("phi", "theta", "r", "power"):
        got = np.asarray(getattr(back, name))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got[mask], np.asarray(getattr(scenes, name))[mask], err_msg=name)
    assert np.all(np.asarray(back.power)[~mask] == 0)
    assert np.all(np.asarray(back.r)[~mask] == np.max(np.asarray(scenes.r)[mask]))
    r_ref = np.asarray(scenes.R_true)
    np.testing.assert_allclose(np.asarray(back.R_true), r_ref, atol=1e-5 * np.max(np.abs(r_ref)))


def test_round_trip_full_array(full_case, tmp_path):
    scenes, sf = full_case
    assert sf.full_array and sf.H is None and sf.codes is None
    path = tmp_path / "full.npz"
    io.save_scenes(path, sf)
    with np.load(path, allow_pickle=False) as npz:
        assert "H" not in npz.files and "codes" not in npz.files and "meta" not in npz.files
    back = io.load_scenes(path)
    assert_same_file(sf, back)
    assert back.n_measurements == back.n_elements == 144 and back.n_snapshots == 64
    scene = io.scenes_from_file(back)
    assert scene.full_array and scene.codes is None
    np.testing.assert_array_equal(np.asarray(scene.y), np.asarray(scenes.y))


def small_raw(s=2, l=3, m=4, nh=2, nv=2, k=2, seed=0):
    """A valid raw RIS scene dict (N = nh * nv), NaN-padded truth."""
    rng = np.random.default_rng(seed)
    g = upa(nh, nv, 0.15, 0.15, wavelength=0.3)
    n = nh * nv
    c = lambda *shape: (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    gt = lambda lo, hi: np.where([[True, False]] * s, rng.uniform(lo, hi, (s, k)), np.nan)
    return dict(
        wavelength=np.float64(0.3), positions=np.asarray(g.positions), y=c(s, l, m), H=c(s, m, n),
        codes=np.exp(1j * rng.uniform(0, 2 * np.pi, (s, l, n))).astype(np.complex64),
        noise_var=np.full(s, 0.1), gt_phi=gt(-1, 1), gt_theta=gt(-0.5, 0.5), gt_r=gt(1, 5),
        gt_power=gt(0.2, 1),
    )


def test_shared_channel_and_codes_broadcast(tmp_path):
    raw = small_raw()
    raw["H"], raw["codes"] = raw["H"][0], raw["codes"][0]
    np.savez(tmp_path / "shared.npz", **raw)
    sf = io.load_scenes(tmp_path / "shared.npz")
    assert sf.H.shape == (4, 4) and sf.codes.shape == (3, 4)
    io.save_scenes(tmp_path / "again.npz", sf)
    assert io.load_scenes(tmp_path / "again.npz").H.shape == (4, 4)
    scene = io.scenes_from_file(sf)
    assert scene.H.shape == (2, 4, 4) and scene.codes.shape == (2, 3, 4)
    np.testing.assert_array_equal(np.asarray(scene.H[1]), raw["H"])
    assert np.all(np.isnan(np.asarray(scene.snr_db)))  # unknown without the snr_db key


def test_scenes_from_file_without_the_truth_covariance(seed_case, tmp_path):
    """`truth_covariance=False` (what `localize`, `plot` and `evaluate` read): `R_true` is None,
    the rest is the same, and every method localizes the same as with it (the oracle MVDR builds
    its operator from the truth's positions, not from `R_true`)."""
    from rismvdr.localize.registry import localize, settings_for_scenario

    scenes, sf = seed_case
    io.save_scenes(tmp_path / "s.npz", sf)
    full = io.scenes_from_file(io.load_scenes(tmp_path / "s.npz"))
    bare = io.scenes_from_file(io.load_scenes(tmp_path / "s.npz"), truth_covariance=False)
    assert bare.R_true is None and full.R_true is not None
    for name in ("y", "H", "codes", "noise_var", "snr_db", "phi", "theta", "r", "power", "mask"):
        np.testing.assert_array_equal(np.asarray(getattr(bare, name)), np.asarray(getattr(full, name)), err_msg=name)
    assert bare[1:2].R_true is None and len(bare[1:2]) == 1
    cfg = get_scenario("seed")
    for method in ("mvdr-oracle", "mvdr-mf"):
        a, b = (localize(method, x, scenario_geometry(cfg), settings_for_scenario(cfg), progress=False,
                         keep_maps=False).detections for x in (full, bare))
        for u, v in zip(a, b):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=method)


def test_scenes_from_file_truth_variants():
    raw = small_raw()
    no_power = io.SceneFile(**{**raw, "gt_power": None, "wavelength": 0.3})
    scene = io.scenes_from_file(no_power)
    np.testing.assert_array_equal(np.asarray(scene.power), [[1, 0], [1, 0]])
    # R_true = A diag(p) A^H against an independent NumPy reference (one source per scene).
    pos = raw["positions"]
    for i in range(2):
        phi, th, r = raw["gt_phi"][i, 0], raw["gt_theta"][i, 0], raw["gt_r"][i, 0]
        u = r * np.array([np.cos(th) * np.cos(phi), np.cos(th) * np.sin(phi), np.sin(th)])
        a = np.exp(-1j * 2 * np.pi / 0.3 * (np.linalg.norm(u - pos, axis=1) - r))
        np.testing.assert_allclose(np.asarray(scene.R_true[i]), np.outer(a, a.conj()), atol=1e-5)

    no_truth = io.SceneFile(**{**raw, "wavelength": 0.3, "noise_var": None,
                               **dict.fromkeys(("gt_phi", "gt_theta", "gt_r", "gt_power"))})
    assert not no_truth.has_truth and no_truth.truth_mask.shape == (2, 0)
    scene = io.scenes_from_file(no_truth)
    assert scene.phi.shape == (2, 0) and scene.mask.shape == (2, 0)
    assert scene.R_true.shape == (2, 4, 4) and not np.any(np.asarray(scene.R_true))
    assert np.all(np.isnan(np.asarray(scene.noise_var)))


def test_unknown_keys_are_ignored_with_a_warning(tmp_path, caplog):
    raw = small_raw()
    np.savez(tmp_path / "x.npz", noise_variance=np.ones(2), **raw)
    with caplog.at_level("WARNING", logger="rismvdr.io.scenes"):
        sf = io.load_scenes(tmp_path / "x.npz")
    assert "noise_variance" in caplog.text and sf.n_scenes == 2


def test_lenient_dtypes_are_cast(tmp_path):
    raw = small_raw()
    raw["y"] = raw["y"].astype(np.complex128)
    raw["positions"] = raw["positions"].astype(np.float32)
    raw["noise_var"] = raw["noise_var"].astype(np.float32)
    np.savez(tmp_path / "x.npz", **raw)
    sf = io.load_scenes(tmp_path / "x.npz")
    assert sf.y.dtype == np.complex64 and sf.positions.dtype == np.float64 and sf.noise_var.dtype == np.float64


# --- validation ------------------------------------------------------------------------------


def _set(key, value):
    return lambda raw: raw.__setitem__(key, value(raw) if callable(value) else value)


def _drop(key):
    return lambda raw: raw.pop(key)


def _poke(key, index, value):
    def f(raw):
        a = raw[key].copy()
        a[index] = value
        raw[key] = a
    return f


BAD = {
    "missing wavelength": ("wavelength", _drop("wavelength")),
    "missing positions": ("positions", _drop("positions")),
    "missing y": ("y", _drop("y")),
    "real y": ("y", _set("y", lambda r: r["y"].real.copy())),
    "real H": ("H", _set("H", lambda r: np.abs(r["H"]))),
    "complex positions": ("positions", _set("positions", lambda r: r["positions"].astype(np.complex128))),
    "bool noise_var": ("noise_var", _set("noise_var", np.array([True, False]))),
    "meta not a string": ("meta", _set("meta", np.array(3))),
    "meta not JSON": ("meta", _set("meta", np.array("{scenario"))),
    "meta not an object": ("meta", _set("meta", np.array("[1, 2]"))),
    "y 2-D": ("y", _set("y", lambda r: r["y"][0])),
    "wavelength 1-D": ("wavelength", _set("wavelength", np.array([0.3]))),
    "positions [N, 2]": ("positions", _set("positions", lambda r: r["positions"][:, :2])),
    "H wrong N": ("H", _set("H", lambda r: r["H"][..., :3])),
    "H wrong M": ("H", _set("H", lambda r: r["H"][:, :3])),
    "H wrong S": ("H", _set("H", lambda r: r["H"][:1])),
    "codes wrong L": ("codes", _set("codes", lambda r: r["codes"][:, :2])),
    "codes wrong N": ("codes", _set("codes", lambda r: r["codes"][..., :3])),
    "H without codes": ("codes", _drop("codes")),
    "codes without H": ("H", _drop("H")),
    "full-array M != N": ("y", lambda r: (r.pop("H"), r.pop("codes"), r.__setitem__("y", r["y"][..., :3]))),
    "noise_var wrong shape": ("noise_var", _set("noise_var", np.ones(3))),
    "NaN in y": ("y", _poke("y", (1, 2, 3), np.nan)),
    "Inf in H": ("H", _poke("H", (0, 1, 1), np.inf)),
    "NaN in codes": ("codes", _poke("codes", (0, 0, 0), np.nan)),
    "NaN in positions": ("positions", _poke("positions", (2, 1), np.nan)),
    "NaN wavelength": ("wavelength", _set("wavelength", np.float64(np.nan))),
    "zero wavelength": ("wavelength", _set("wavelength", np.float64(0.0))),
    "NaN noise_var": ("noise_var", _poke("noise_var", 0, np.nan)),
    "negative noise_var": ("noise_var", _poke("noise_var", 0, -1.0)),
    "duplicate positions": ("positions", _set("positions", lambda r: r["positions"][[0, 0, 1, 2]])),
    "non-unit codes": ("codes", _set("codes", lambda r: (r["codes"] * 1.01).astype(np.complex64))),
    "truth shape mismatch": ("gt_theta", _set("gt_theta", lambda r: r["gt_theta"][:, :1])),
    "truth S mismatch": ("gt_phi", lambda r: [r.__setitem__(k, r[k][:1]) for k in io.SCENE_KEYS[6:10]]),
    "truth missing gt_r": ("gt_r", _drop("gt_r")),
    "power without location": ("gt_phi", lambda r: [r.pop(k) for k in ("gt_phi", "gt_theta", "gt_r")]),
    "partial truth NaN": ("gt_r", _poke("gt_r", (0, 0), np.nan)),
    "padded slot with a range": ("gt_r", _poke("gt_r", (1, 1), 2.0)),
    "power NaN pattern": ("gt_power", _poke("gt_power", (0, 1), 0.5)),
    "Inf in truth": ("gt_theta", _poke("gt_theta", (0, 0), np.inf)),
    "negative range": ("gt_r", _poke("gt_r", (1, 0), -1.0)),
    "negative power": ("gt_power", _poke("gt_power", (1, 0), -0.1)),
    "object array": ("y", _set("y", lambda r: np.array([r["y"], 1], dtype=object))),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_errors_name_the_key(case, tmp_path):
    key, mutate = BAD[case]
    raw = small_raw()
    raw["meta"] = np.array('{"scenario": "test"}')
    io.load_scenes(_write_raw(tmp_path / "ok.npz", raw))  # the unmutated file is valid
    mutate(raw)
    path = _write_raw(tmp_path / "bad.npz", raw)
    with pytest.raises(io.SceneFileError) as err:
        io.load_scenes(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: key '{key}': "), msg
    assert "\n" not in msg and err.value.key == key
    assert isinstance(err.value, ValueError)


def _write_raw(path, raw):
    np.savez(path, **raw)  # np.savez pickles object arrays when asked to: the loader must refuse
    return str(path)


def test_not_a_scene_file(tmp_path):
    cases = {
        "missing": tmp_path / "nope.npz",
        "directory": tmp_path,
        "text": tmp_path / "text.npz",
        "npy": tmp_path / "single.npy",
        "empty": tmp_path / "empty.npz",
    }
    cases["text"].write_text("scene,phi_deg\n0,1\n")
    np.save(cases["npy"], np.zeros(3))
    cases["empty"].write_bytes(b"")
    for name, path in cases.items():
        with pytest.raises(io.SceneFileError) as err:
            io.load_scenes(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value), name


def test_error_pickles():
    e = io.SceneFileError("f.npz", "y", "bad")
    assert str(pickle.loads(pickle.dumps(e))) == str(e) == "f.npz: key 'y': bad"


def test_save_validates_before_writing(tmp_path):
    raw = small_raw()
    raw["y"] = raw["y"][..., :3]
    sf = io.SceneFile(**{**raw, "wavelength": 0.3})
    path = tmp_path / "bad.npz"
    with pytest.raises(io.SceneFileError, match="key 'H'"):
        io.save_scenes(path, sf)
    assert os.listdir(tmp_path) == []


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_save_leaves_no_partial_file(seed_case, tmp_path, monkeypatch):
    _, sf = seed_case
    path = tmp_path / "scenes.npz"

    def crash(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip")
        assert os.path.exists(file.name)  # the temporary file exists at this point
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        io.save_scenes(path, sf)
    assert os.listdir(tmp_path) == []  # no target, no temporary file

    monkeypatch.undo()
    io.save_scenes(path, sf)
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(RuntimeError):
        io.save_scenes(path, sf)
    assert os.listdir(tmp_path) == ["scenes.npz"] and path.read_bytes() == before


def test_atomic_write_text_and_binary(tmp_path):
    path = tmp_path / "a.txt"
    with io.atomic_write(path) as f:
        f.write("one")
        assert not path.exists()  # nothing visible until the block ends
    assert path.read_text() == "one"
    os.chmod(path, 0o600)
    with io.atomic_write(path, "wb") as f:
        f.write(b"two")
    assert path.read_bytes() == b"two" and (os.stat(path).st_mode & 0o777) == 0o600
    with pytest.raises(ValueError, match="mode"):
        with io.atomic_write(path, "a"):
            pass


# --- detections CSV --------------------------------------------------------------------------


def test_detections_csv_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    s, k = 4, 3
    phi = rng.uniform(-1, 1, (s, k))
    theta = rng.uniform(-0.5, 0.5, (s, k))
    r = rng.uniform(0.5, 10, (s, k))
    score = rng.uniform(-12, 0, (s, k))
    valid = np.array([[True, True, False], [False, False, False], [True, False, True], [False] * 3])
    phi[~valid] = np.nan  # padding may hold anything
    path = tmp_path / "det.csv"
    io.write_detections_csv(path, phi, theta, r, score, valid)
    lines = path.read_text().splitlines()
    assert lines[0] == "scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db"
    assert len(lines) == 1 + valid.sum() and [ln.split(",")[0] for ln in lines[1:]] == ["0", "0", "2", "2"]
    row = np.array(lines[1].split(","), float)
    u = r[0, 0] * np.array([np.cos(theta[0, 0]) * np.cos(phi[0, 0]),
                            np.cos(theta[0, 0]) * np.sin(phi[0, 0]), np.sin(theta[0, 0])])
    np.testing.assert_allclose(row[4:7], u, rtol=1e-10)
    np.testing.assert_allclose(row[1:3], np.degrees([phi[0, 0], theta[0, 0]]), rtol=1e-10)

    det = io.read_detections_csv(path, n_scenes=s, k_max=k)
    packed = np.arange(k) < valid.sum(1, keepdims=True)  # a scene's detections fill its first slots
    np.testing.assert_array_equal(det.valid, packed)
    for got, want in zip(det[:4], (phi, theta, r, score)):
        np.testing.assert_allclose(got[packed], want[valid], rtol=1e-10)
        assert np.all(np.isnan(got[~packed]))
    inferred = io.read_detections_csv(path)  # S = 1 + last scene with a row, K = most per scene
    assert inferred.valid.shape == (3, 2)
    np.testing.assert_array_equal(inferred.valid.sum(1), [2, 0, 2])


def test_detections_csv_empty(tmp_path):
    path = tmp_path / "none.csv"
    z = np.zeros((3, 5))
    io.write_detections_csv(path, z, z, z + 1, z, np.zeros((3, 5), bool))
    assert path.read_text() == ",".join(io.DETECTION_COLUMNS) + "\n"
    det = io.read_detections_csv(path, n_scenes=3, k_max=5)
    assert det.phi.shape == (3, 5) and not det.valid.any()
    assert io.read_detections_csv(path).valid.shape == (0, 0)


def test_write_detections_rejects_bad_input(tmp_path):
    z = np.zeros((2, 2))
    v = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match="^theta:"):
        io.write_detections_csv(tmp_path / "d.csv", z, z[:1], z + 1, z, v)
    with pytest.raises(ValueError, match="^r:"):
        io.write_detections_csv(tmp_path / "d.csv", z, z, z, z, v)
    assert os.listdir(tmp_path) == []


HEADER = "scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db\n"
ROW = "0,10,5,2,1.9,0.3,0.17,-3\n"
BAD_CSV = {
    "missing column": ("score_db", HEADER.replace(",score_db", "") + ROW.rsplit(",", 1)[0] + "\n", {}),
    "non-numeric": ("r_m", HEADER + "0,10,5,two,1.9,0.3,0.17,-3\n", {}),
    "NaN": ("phi_deg", HEADER + "0,nan,5,2,1.9,0.3,0.17,-3\n", {}),
    "empty cell": ("theta_deg", HEADER + "0,10,,2,1.9,0.3,0.17,-3\n", {}),
    "scene not integer": ("scene", HEADER + "0.5,10,5,2,1.9,0.3,0.17,-3\n", {}),
    "negative scene": ("scene", HEADER + "-1,10,5,2,1.9,0.3,0.17,-3\n", {}),
    "scene out of range": ("scene", HEADER + ROW + ROW.replace("0,", "7,", 1), {"n_scenes": 3}),
    "too many in a scene": ("scene", HEADER + ROW * 3, {"k_max": 2}),
    "non-positive range": ("r_m", HEADER + "0,10,5,0,1.9,0.3,0.17,-3\n", {}),
    "renamed column": ("r_m", HEADER.replace("r_m", "range") + ROW, {}),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_detections_csv_names_the_column(case, tmp_path):
    column, text, kwargs = BAD_CSV[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(io.DetectionsFileError) as err:
        io.read_detections_csv(path, **kwargs)
    msg = str(err.value)
    assert f"column '{column}'" in msg and msg.startswith(str(path)) and "\n" not in msg, msg


def test_detections_csv_tolerates_spaces_and_order(tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("score_db, scene, phi_deg, theta_deg, r_m, x_m, y_m, z_m, note\n"
                    "-1, 1, 90, 0, 2, 0, 2, 0, hi\n\n")
    det = io.read_detections_csv(path)
    assert det.valid.shape == (2, 1) and det.valid[1, 0] and not det.valid[0, 0]
    np.testing.assert_allclose([det.phi[1, 0], det.r[1, 0], det.score_db[1, 0]], [np.pi / 2, 2, -1])


def test_detections_csv_missing_file(tmp_path):
    with pytest.raises(io.DetectionsFileError, match="no such file"):
        io.read_detections_csv(tmp_path / "nope.csv")


# --- JSON --------------------------------------------------------------------------------------


def test_write_json_nan_to_null(tmp_path):
    path = tmp_path / "m.json"
    obj = {"method": "mvdr", "f1": np.float32(0.5), "rmse": float("nan"), "crb": [1.0, np.inf],
           "per_k": np.array([[1, 2], [3, 4]]), "bins": np.array([0.5, np.nan]), "ok": np.bool_(True),
           "n": np.int64(3), "nested": {1: (None, "x")}}
    io.write_json(path, obj)
    back = json.loads(path.read_text())
    assert back == {"method": "mvdr", "f1": 0.5, "rmse": None, "crb": [1.0, None],
                    "per_k": [[1, 2], [3, 4]], "bins": [0.5, None], "ok": True, "n": 3,
                    "nested": {"1": [None, "x"]}}
    with pytest.raises(TypeError, match="complex"):
        io.write_json(tmp_path / "c.json", {"z": 1j})
    assert not (tmp_path / "c.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


# --- crashes: stale temporaries, files replaced together, SIGTERM -----------------------------


def test_next_write_removes_the_temporaries_a_killed_writer_left(tmp_path):
    """A writer killed with SIGKILL leaves `.<name>.<host>.<pid>.<random>.tmp`; the next write
    of the same target removes it (its process is gone), and leaves a live writer's alone."""
    import subprocess
    import sys
    import time

    target = tmp_path / "det.csv"
    script = (f"import sys, time; from rismvdr.io import atomic_write\n"
              f"with atomic_write({str(target)!r}) as f:\n"
              f"    f.write('half'); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".det.csv.") and f".{proc.pid}." in left[0]
    live = tmp_path / f".det.csv.{io_atomic._HOST}.{os.getpid()}.abcdefgh.tmp"  # a writer still running (this one)
    live.write_text("busy")
    other = tmp_path / ".other.csv.x1y2z3.tmp"  # another target's
    other.write_text("x")
    old = tmp_path / ".det.csv.q8w7e6r5.tmp"  # an older rismvdr's, ten minutes old
    old.write_text("x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with io.atomic_write(target) as f:
        f.write("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["det.csv", live.name, other.name])
    assert target.read_text() == "new"


def test_replaced_together_renames_all_or_none(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.npz"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(RuntimeError, match="after the first"):
        with io.replaced_together():
            with io.atomic_write(a) as f:
                f.write("new a")
            assert a.read_text() == "old a"  # written, not yet renamed
            raise RuntimeError("killed after the first file")
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.npz"]
    with io.replaced_together():
        with io.atomic_write(a) as f:
            f.write("new a")
        with io.atomic_write(b) as f:
            f.write("new b")
        assert a.read_text() == "old a" and b.read_text() == "old b"
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.npz"]


def test_sigterm_inside_an_atomic_write_removes_its_temporary(tmp_path):
    import signal
    import time

    target = tmp_path / "x.txt"
    with pytest.raises(io.Terminated) as err:
        with io.sigterm_raises():
            with io.atomic_write(target) as f:
                f.write("partial")
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
                time.sleep(30)  # (never reached)
    assert err.value.signum == signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is not io_runtime._raise_terminated  # the old handler is back


def test_read_json_names_the_flag_and_file(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"^--from-hpo: .*a.json: expected a JSON object, got list$"):
        io.read_json(p, "--from-hpo")
    p.write_text("\ufeff{\"k\": 1}")
    assert io.read_json(p, "--x") == {"k": 1}
    with pytest.raises(ValueError, match="no such file"):
        io.read_json(tmp_path / "none.json", "--x")


def test_maps_round_trip_and_grid_checks(tmp_path):
    from rismvdr.physics.spectra import make_grid

    grid = make_grid((-10.0, 10.0), (-4.0, 4.0), (1.0, 5.0), n_planes=3)
    n_theta, n_phi, n_planes = grid.shape
    power = np.random.default_rng(0).normal(size=(2, n_theta, n_phi))
    plane = np.zeros((2, n_theta, n_phi), np.int32)
    path = tmp_path / "m.npz"
    io.write_maps(path, power, plane, grid)
    p2, pl2, g2 = io.read_maps(path)
    np.testing.assert_array_equal(p2, power)
    np.testing.assert_array_equal(pl2, plane)
    assert g2 == grid
    io.write_maps(path, power, plane + n_planes, grid)
    with pytest.raises(ValueError, match="key 'plane': expected integer indices into grid_r"):
        io.read_maps(path)
    io.write_maps(path, power[:, :, :-1], plane[:, :, :-1], grid)
    with pytest.raises(ValueError, match="key 'power_db': shape .* does not fit the file's grid"):
        io.read_maps(path)


# --- the package ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["rismvdr.io", "rismvdr.io.atomic", "rismvdr.io.reports", "rismvdr.io.scenes"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_rismvdr_files_is_a_deprecated_alias(monkeypatch):
    monkeypatch.delitem(sys.modules, "rismvdr.files", raising=False)
    with pytest.warns(DeprecationWarning, match=r"^rismvdr\.files is deprecated; import from rismvdr\.io$"):
        files = importlib.import_module("rismvdr.files")
    assert set(files.__all__) <= set(io.__all__)  # what the old module held; io has more (the lock)
    assert all(getattr(files, name) is getattr(io, name) for name in files.__all__)
