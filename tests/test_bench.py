"""`rismvdr bench accuracy` end to end through the CLI on a tiny point count."""
from __future__ import annotations

import csv
import json

import pytest

from rismvdr.bench import sweeps
from rismvdr.bench.accuracy_report import RECORD_KEYS, write_report
from rismvdr.cli import main


def _accuracy_argv(out, *methods, snr_db=("0", "25")) -> list[str]:
    """A 2-scene `bench accuracy` on the K = 1 SNR sweep."""
    return ["bench", "accuracy", "--out", str(out), "--scenes", "2", "--methods", *methods,
            "--sweeps", "snr_k1", "--snr-db", *snr_db, "--quiet"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(_accuracy_argv(out, "mvdr-oracle", "mvdr-mf")) == 0
    return out


def test_files_written(report):
    for name in ("accuracy.json", "accuracy.csv", "accuracy.md", "accuracy_summary.md", "f1_vs_snr.png",
                 "rmse_phi_vs_snr_k1.png"):
        assert (report / name).stat().st_size > 0, name


def test_summary_table(report):
    """The README's table: one row per method, the columns of the sweeps that ran."""
    summary = (report / "accuracy_summary.md").read_text()
    assert "| method | RMSE/sqrt(CRB) phi, K=1, 25 dB |" in summary
    assert "| mvdr-oracle |" in summary and "| mvdr-mf |" in summary
    assert "F1 base" not in summary  # the base sweep did not run


def test_json_and_csv_records(report):
    data = json.loads((report / "accuracy.json").read_text())
    records = data["records"]
    assert data["meta"]["n_scenes"] == 2
    assert len(records) == 4  # 2 SNR points x 2 methods
    for r in records:
        assert set(RECORD_KEYS) <= set(r)
        assert r["sweep"] == "snr_k1" and r["variable"] == "snr_db" and r["k"] == 1
    suites = {r["method"]: r["suite"] for r in records}
    assert suites == {"mvdr-oracle": "B2", "mvdr-mf": "B1"}
    with open(report / "accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    assert tuple(rows[0]) == RECORD_KEYS
    best = [r for r in records if r["method"] == "mvdr-oracle" and r["value"] == 25]
    assert len(best) == 1 and best[0]["f1"] >= 0.5
    row = [r for r in rows if r["method"] == "mvdr-oracle" and float(r["value"]) == 25][0]
    assert float(row["f1"]) == pytest.approx(best[0]["f1"])


def test_markdown_table(report):
    md = (report / "accuracy.md").read_text()
    assert "| suite | method | 0 | 25 |" in md
    assert "| B2 | mvdr-oracle |" in md


def test_points_and_stable_seeds():
    pts = sweeps.bench_points(("base", "snr", "k", "l"))
    assert len(pts) == 1 + 2 * 8 + 5 + 5
    assert {p.sweep for p in pts} == {"base", "snr_k1", "snr_k3", "k", "l"}
    one = sweeps.bench_points(("snr_k1",), snr_values_db=(25,))[0]
    same = [p for p in pts if p.sweep == "snr_k1" and p.value == 25][0]
    assert sweeps.point_seed(one) == sweeps.point_seed(same)
    assert len({sweeps.point_seed(p) for p in pts}) == len(pts)


@pytest.mark.parametrize("argv", [
    ["bench", "accuracy", "--out", "x", "--sweeps", "nope"],
    ["bench", "accuracy", "--out", "x", "--methods", "no-such-method"],
    ["bench", "accuracy"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_zero_scenes_exit_2(tmp_path, capsys):
    assert main(["bench", "accuracy", "--out", str(tmp_path), "--scenes", "0"]) == 2
    assert "scenes" in capsys.readouterr().err


def test_quick_points_are_a_thin_subset():
    """--quick thins every sweep (it must run in under 10 minutes on 2 cores); its points are
    points of the full run, with the same test sets (same point seeds)."""
    quick = sweeps.bench_points(sweeps.DEFAULT_SWEEPS, snr_values_db=sweeps.SNR_VALUES_QUICK_DB,
                                l_values=sweeps.L_VALUES_QUICK, k_values=sweeps.K_VALUES_QUICK,
                                r_bins_m=sweeps.R_BINS_QUICK_M)
    full = sweeps.bench_points(sweeps.DEFAULT_SWEEPS)
    assert [p.value for p in quick if p.sweep == "l"] == [4, 16, 32]
    assert [p.value for p in quick if p.sweep == "k"] == [1, 3, 5]
    assert [p.value for p in quick if p.sweep == "r"] == [1.25, 5.0, 9.0]
    assert len(quick) == 22 < len(full)
    full_seeds = {sweeps.point_seed(p) for p in full}
    assert all(sweeps.point_seed(p) in full_seeds for p in quick)


def test_ula15_scenario_in_fresnel_region():
    from rismvdr.physics.scenarios import get_scenario, scenario_geometry

    cfg = get_scenario("ula15")
    geometry = scenario_geometry(cfg)
    assert geometry.n_elements == 15 and geometry.linear
    assert cfg.n_snapshots == 100 and cfg.k_min == cfg.k_max == 2 and cfg.mode == "full"
    assert cfg.theta_deg == (0.0, 0.0) and cfg.power_db[0] == cfg.power_db[1]
    assert cfg.spacing_h == pytest.approx(cfg.wavelength / 2)
    y = geometry.positions[:, 1]
    aperture = float(y.max() - y.min())
    assert aperture == pytest.approx(2.1)
    assert 0.62 * (aperture ** 3 / cfg.wavelength) ** 0.5 <= cfg.r_m[0] < cfg.r_m[1] <= 2 * aperture ** 2 / cfg.wavelength


def test_ula_points_name_their_scenario():
    pts = sweeps.bench_points(("ula",))
    assert [p.value for p in pts] == list(sweeps.SNR_VALUES_DB)
    assert all(p.sweep == "ula" and p.scenario == sweeps.ULA_SCENARIO == "ula15" for p in pts)
    assert all(p.overrides["snr_db"] == (float(p.value),) * 2 for p in pts)
    assert all(p.scenario is None for p in sweeps.bench_points(("base", "snr", "k", "l")))
    assert "ula" in sweeps.DEFAULT_SWEEPS
    every = sweeps.bench_points(sweeps.SWEEPS)
    assert len({sweeps.point_seed(p) for p in every}) == len(every)


@pytest.fixture(scope="module")
def ula_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_ula")
    rc = main(["bench", "accuracy", "--out", str(out), "--scenes", "2", "--methods", "mvdr-oracle", "music-oracle-k",
               "mvdr-mf", "--sweeps", "ula", "--snr-db", "25", "--quiet"])
    assert rc == 0
    return out


def test_ula_sweep_end_to_end(ula_report):
    records = json.loads((ula_report / "accuracy.json").read_text())["records"]
    assert {r["method"] for r in records} == {"mvdr-oracle", "music-oracle-k"}  # mvdr-mf is not in ULA_METHODS
    for r in records:
        assert r["scenario"] == "ula15" and r["sweep"] == "ula" and r["k"] == 2 and r["n_snapshots"] == 100
        assert r["snr_db"] == 25 and r["f1"] >= 0.5
    assert (ula_report / "ula_rmse_vs_snr.png").stat().st_size > 0
    md = (ula_report / "accuracy.md").read_text()
    assert "15-element ULA along y, spacing 0.15 m = lambda/2" in md
    assert "T = L = 100 snapshots" in md and "2 D^2/lambda = 29.4 m" in md
    assert "RMSE / sqrt(CRB) over true positives, phi / r" in md
    assert "| B2 | music-oracle-k |" in md


def test_ula_sweep_skipped_without_its_methods(tmp_path):
    rc = main(["bench", "accuracy", "--out", str(tmp_path), "--scenes", "1", "--methods", "mvdr-mf",
               "--sweeps", "snr_k1", "ula", "--snr-db", "25", "--quiet"])
    assert rc == 0
    records = json.loads((tmp_path / "accuracy.json").read_text())["records"]
    assert records and all(r["sweep"] == "snr_k1" for r in records)
    assert not (tmp_path / "ula_rmse_vs_snr.png").exists()


def test_resume_keeps_records_and_runs_the_rest(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_accuracy_argv(out, "mvdr-oracle", snr_db=("25",))) == 0
    first = json.loads((out / "accuracy.json").read_text())["records"]
    assert main(_accuracy_argv(out, "mvdr-oracle") + ["--resume"]) == 0
    records = json.loads((out / "accuracy.json").read_text())["records"]
    assert sorted(r["value"] for r in records) == [0, 25]
    kept = [r for r in records if r["value"] == 25]
    assert kept == first  # not run again
    # a different scene count is a different test set: refused
    argv = _accuracy_argv(out, "mvdr-oracle", snr_db=("0",)) + ["--resume"]
    argv[argv.index("--scenes") + 1] = "3"
    assert main(argv) == 2
    assert "resume" in capsys.readouterr().err


def test_write_report_rebuilds_from_json(report):
    md = (report / "accuracy.md").read_text()
    (report / "accuracy.md").unlink()
    written = write_report(report)
    assert "accuracy.md" in written and "f1_vs_snr.png" in written
    assert (report / "accuracy.md").read_text() == md
