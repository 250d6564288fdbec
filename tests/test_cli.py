"""End-to-end CLI: simulate -> localize -> evaluate -> plot on a small set, demo, errors."""
import json

import numpy as np
import pytest

from rismvdr.cli import main, parse_overrides
from rismvdr.files import load_scenes, read_detections_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "scenes.npz"
    assert main(["simulate", "--scenario", "seed", "--scenes", "4", "--seed", "0", "--out", str(path),
                 "--set", "k_min=2", "--set", "k_max=2", "--set", "snr_db=20,20"]) == 0
    return path


def test_simulate_writes_spec_file(scene_file):
    sf = load_scenes(scene_file)
    assert sf.n_scenes == 4 and sf.n_elements == 144 and sf.y.shape == (4, 16, 16)
    assert sf.y.dtype == np.complex64 and sf.positions.dtype == np.float64
    assert np.all(sf.truth_mask.sum(1) == 2)
    assert sf.meta["scenario"] == "seed" and sf.meta["seed"] == 0
    assert sf.meta["config"]["k_max"] == 2 and tuple(sf.meta["config"]["snr_db"]) == (20.0, 20.0)


def test_localize_evaluate_plot(scene_file, tmp_path, capsys):
    det = tmp_path / "det.csv"
    maps = tmp_path / "maps.npz"
    rc, out, err = _run(["localize", scene_file, "--method", "mvdr-oracle", "--out", det,
                         "--maps-out", maps, "-q"], capsys)
    assert rc == 0, err
    header = det.read_text().splitlines()[0]
    assert header == "scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db"
    d = read_detections_csv(det, n_scenes=4)
    assert d.valid.sum() == 8  # two sources in each of 4 scenes at 20 dB, oracle covariance

    metrics_path = tmp_path / "metrics.json"
    rc, out, err = _run(["evaluate", scene_file, det, "--out", metrics_path, "--maps", maps,
                         "--label", "oracle"], capsys)
    assert rc == 0, err
    m = json.loads(metrics_path.read_text())
    assert m["method"] == "oracle" and m["test_set"]["n_scenes"] == 4
    assert m["f1"] == pytest.approx(1.0) and m["fp_per_scene"] == 0
    assert m["rmse_over_sqrt_crb_phi"] is not None and m["mean_pssr_db"] is not None
    assert "| oracle |" in out  # the printed table

    png = tmp_path / "scene.png"
    rc, _, err = _run(["plot", "scene", scene_file, "--index", 1, "--method", "mvdr-oracle",
                       "--detections", det, "--out", png], capsys)
    assert rc == 0, err
    assert png.read_bytes()[:8] == PNG_MAGIC
    png2 = tmp_path / "snr.png"
    rc, _, err = _run(["plot", "snr", metrics_path, "--out", png2], capsys)
    assert rc == 0, err
    assert png2.read_bytes()[:8] == PNG_MAGIC


def test_demo_report(tmp_path, capsys):
    out = tmp_path / "report"
    rc, stdout, err = _run(["demo", "--out", out, "--scenes", 3, "--methods", "mvdr-oracle", "mvdr-mf"], capsys)
    assert rc == 0, err
    for name in ("report.md", "metrics.json", "scenes.npz", "snr_curves.png", "position_error_cdf.png",
                 "detections_mvdr-oracle.csv", "metrics_mvdr-mf.json", "scene0_mvdr-oracle.png"):
        assert (out / name).exists(), name
    allm = json.loads((out / "metrics.json").read_text())
    assert set(allm["methods"]) == {"mvdr-oracle", "mvdr-mf"}
    assert "| mvdr-oracle |" in (out / "report.md").read_text()


def test_malformed_scene_file_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, wavelength=np.float64(0.3), positions=np.zeros((4, 3)))  # no 'y'
    out = tmp_path / "det.csv"
    rc, _, err = _run(["localize", bad, "--out", out], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "'y'" in err
    assert not out.exists()


def test_wrong_mode_method_leaves_no_output(scene_file, tmp_path, capsys):
    out = tmp_path / "det.csv"
    rc, _, err = _run(["localize", scene_file, "--method", "mvdr-sample", "--out", out], capsys)
    assert rc == 2 and "method" in err
    assert not out.exists()


@pytest.mark.parametrize("cmd", [["simulate"], ["localize"], ["evaluate"], ["plot", "scene"], ["plot", "snr"], ["demo"]])
def test_help_documents_flags(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text or "metrics" in text
    if cmd[0] in ("localize",) or cmd == ["plot", "scene"]:
        assert "degrees" in text and "metres" in text


def test_parse_overrides():
    assert parse_overrides(["k_min=3", "snr_db=10,10", "array=ula"]) == {
        "k_min": 3, "snr_db": (10.0, 10.0), "array": "ula"}
    assert parse_overrides(["snr_db=[5, 5]"]) == {"snr_db": (5, 5)}
    with pytest.raises(ValueError, match="--set"):
        parse_overrides(["k_min"])


def test_bad_override_is_a_clean_error(tmp_path, capsys):
    rc, _, err = _run(["simulate", "--scenes", 2, "--out", tmp_path / "x.npz", "--set", "nope=1"], capsys)
    assert rc == 2 and "nope" in err
