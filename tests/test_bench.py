"""`rismvdr bench accuracy` end to end through the CLI on a tiny point count."""
from __future__ import annotations

import csv
import io
import json
import sys

import matplotlib.colors as mcolors
import numpy as np
import pytest

from rismvdr.bench import accuracy_report, sweeps
from rismvdr.bench import plots as bench_plots
from rismvdr.bench.accuracy import run_accuracy
from rismvdr.bench.accuracy_report import RECORD_KEYS, attach_bound, write_report
from rismvdr.bench.demo import run_demo
from rismvdr.bench.report import fmt_number
from rismvdr.cli import main
from rismvdr.eval import plots as eval_plots
from rismvdr.eval.metrics import format_table


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
    assert "| bound | ml-oracle | - | - |" in md  # the bound row stays, not run here
    assert "F1 / bound: the bound `ml-oracle` did not run in this sweep." in md


def test_records_without_the_bound(report):
    """The bound not among --methods: f1_bound and the ratio are None; a fixed-SNR point has no
    per-bin F1 (one bin)."""
    for r in json.loads((report / "accuracy.json").read_text())["records"]:
        assert r["f1_bound"] is None and r["f1_over_bound"] is None
        assert "f1_per_snr_bin" not in r


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
    every = [p for p in sweeps.bench_points(sweeps.SWEEPS) if p.seed_key is None]  # the deployment sweeps share one
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


# --- the bound: ml-oracle's F1 beside every method's ----------------------------------------------
@pytest.fixture(scope="module")
def bound_report(tmp_path_factory):
    """A 4-scene run of a blind method and the bound on the base set (SNR U[-5, 20] dB: several
    SNR bins)."""
    out = tmp_path_factory.mktemp("bench_bound")
    assert main(["bench", "accuracy", "--out", str(out), "--scenes", "4", "--methods", "mvdr-mf",
                 sweeps.BOUND_METHOD, "--sweeps", "base", "--quiet"]) == 0
    return out


def test_records_carry_the_bound(bound_report):
    records = json.loads((bound_report / "accuracy.json").read_text())["records"]
    assert sorted((r["sweep"], r["method"]) for r in records) == [("base", "ml-oracle"), ("base", "mvdr-mf")]
    bound = {r["sweep"]: r for r in records if r["method"] == sweeps.BOUND_METHOD}
    assert bound["base"]["suite"] == "bound"
    assert bound["base"]["f1"] >= 0.5  # started at the truth: most sources held within the gates
    for r in records:
        assert r["f1_bound"] == bound[r["sweep"]]["f1"]
        assert r["f1_over_bound"] == pytest.approx(r["f1"] / r["f1_bound"])
    # the base point spans several SNR bins: F1, the bound's F1 and the ratio per bin
    for r in (r for r in records if r["sweep"] == "base"):
        per, n = r["f1_per_snr_bin"], r["n_scenes_per_snr_bin"]
        assert set(per) == set(n) and sum(n.values()) == 4
        assert all(-5.0 <= float(b.strip("[)").split(",")[0]) < 20.0 for b in per)
        assert r["f1_bound_per_snr_bin"] == bound["base"]["f1_per_snr_bin"]
        for b, f1 in per.items():
            want = None if not r["f1_bound_per_snr_bin"][b] else f1 / r["f1_bound_per_snr_bin"][b]
            assert r["f1_over_bound_per_snr_bin"][b] == pytest.approx(want)
    with open(bound_report / "accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"f1_bound", "f1_over_bound"} <= set(rows[0])
    assert float(rows[0]["f1_bound"]) == pytest.approx(bound[rows[0]["sweep"]]["f1"])


def test_tables_show_the_bound(bound_report):
    records = json.loads((bound_report / "accuracy.json").read_text())["records"]
    mf = [r for r in records if r["sweep"] == "base" and r["method"] == "mvdr-mf"][0]
    md = (bound_report / "accuracy.md").read_text()
    assert "| suite | method | F1 | F1 / bound |" in md
    assert f"| B1 | mvdr-mf | {mf['f1']:.3f} | {mf['f1_over_bound']:.2f} |" in md
    assert "| bound | ml-oracle |" in md and "F1 per SNR bin" in md
    assert "| ml-oracle (bound) |" in md  # the per-bin table's bound row
    summary = (bound_report / "accuracy_summary.md").read_text()
    assert "| method | F1 base | F1 / bound base | F1 / bound base, [" in summary
    assert summary.rstrip().splitlines()[-1].startswith("| ml-oracle (bound) | ")
    assert f"| mvdr-mf | {mf['f1']:.3f} | {mf['f1_over_bound']:.2f} |" in summary


def test_attach_bound_is_nan_safe():
    def rec(method, sweep, f1, per=None):
        r = dict(method=method, sweep=sweep, value=None, f1=f1)
        if per is not None:
            r["f1_per_snr_bin"] = per
        return r

    records = [rec("a", "base", 0.4, {"[0,5)": 0.5, "[5,10)": 0.2}), rec("ml-oracle", "base", 0.8,
                                                                         {"[0,5)": 0.0, "[5,10)": 0.4}),
               rec("a", "k", 0.3), rec("ml-oracle", "k", 0.0),  # bound 0
               rec("a", "l", 0.3), rec("ml-oracle", "l", float("nan")),  # bound NaN
               rec("a", "r", 0.5)]  # no bound at that point
    attach_bound(records)
    a = {r["sweep"]: r for r in records if r["method"] == "a"}
    assert a["base"]["f1_bound"] == 0.8 and a["base"]["f1_over_bound"] == pytest.approx(0.5)
    assert a["base"]["f1_bound_per_snr_bin"] == {"[0,5)": 0.0, "[5,10)": 0.4}
    assert a["base"]["f1_over_bound_per_snr_bin"] == {"[0,5)": None, "[5,10)": pytest.approx(0.5)}
    assert a["k"]["f1_bound"] == 0.0 and a["k"]["f1_over_bound"] is None
    assert a["l"]["f1_bound"] is None and a["l"]["f1_over_bound"] is None
    assert a["r"]["f1_bound"] is None and a["r"]["f1_over_bound"] is None
    assert accuracy_report.ratio(0.3, None) is None and accuracy_report.ratio(None, 0.5) is None


def test_summary_has_the_bound_row_when_the_bound_did_not_run():
    """Records of a run without the bound (e.g. an older accuracy.json): the bound row and the
    ratio column are there, with '-'."""
    recs = [dict(method="somp-ml", sweep="base", value=None, f1=0.78, median_pos_err_m=0.18)]
    text = accuracy_report.summary_table(attach_bound(recs), dict(n_scenes=100, seed=0))
    assert "| method | F1 base | F1 / bound base | median err base (m) |" in text
    assert "| somp-ml | 0.780 | - | 0.180 |" in text
    assert text.splitlines()[-1] == "| ml-oracle (bound) | - | - | - |"


def test_summary_and_headline_of_deployment_sweeps():
    """Deployment records get their own summary columns (F1 per codebook and resolution, F1 /
    bound with designed 2-bit codes, F1 at each impairment sweep's worst point), and the
    report's headline names the scenario the records ran on."""
    def rec(method, sweep, value, f1):
        return dict(method=method, sweep=sweep, value=value, f1=f1, scenario="seed-los", suite="B1")

    recs = [rec(m, sweep, bits, f1 + 0.01 * bits) for m, f1 in (("somp-ml", 0.3), ("ml-oracle", 0.6))
            for sweep in ("deploy_random", "deploy_designed") for bits in (0, 1, 2)]
    recs += [rec(m, "nmse", v, f1) for m, f1 in (("somp-ml", 0.2), ("ml-oracle", 0.5)) for v in (-30.0, -10.0)]
    text = accuracy_report.summary_table(attach_bound(recs), dict(n_scenes=10, seed=0))
    assert ("| method | F1 random continuous | F1 random 2-bit | F1 random 1-bit | F1 designed continuous | "
            "F1 designed 2-bit | F1 designed 1-bit | F1 / bound designed 2-bit | F1 NMSE -10 dB |") in text
    assert "| somp-ml | 0.300 | 0.320 | 0.310 | 0.300 | 0.320 | 0.310 | 0.52 | 0.200 |" in text
    assert text.splitlines()[-1] == "| ml-oracle (bound) | 0.600 | 0.620 | 0.610 | 0.600 | 0.620 | 0.610 | 1.00 | 0.500 |"
    md = accuracy_report._markdown(recs, dict(scenario="seed", n_scenes=10, seed=0, wall_s=1.0))
    assert "`seed-los` scenario, 10 scenes per point" in md and "`seed` scenario" not in md


def test_snr_bin_table():
    text = accuracy_report.snr_bin_table({"a": {"[5,10)": 0.5, "[-5,0)": 0.25}, "ml-oracle": {"[-5,0)": 0.5,
                                                                                           "[5,10)": 1.0}},
                                         {"[-5,0)": 3, "[5,10)": 2})
    lines = text.splitlines()
    assert lines[0] == "| method | [-5,0) dB (n=3) | [5,10) dB (n=2) |"
    assert lines[2] == "| a | 0.250 (0.50) | 0.500 (0.50) |"
    assert lines[3] == "| ml-oracle (bound) | 0.500 | 1.000 |"
    no_bound = accuracy_report.snr_bin_table({"a": {"[0,5)": 0.5}}).splitlines()
    assert no_bound[2:] == ["| a | 0.500 (-) |", "| ml-oracle (bound) | - |"]


def test_format_table_bound_column():
    plain = format_table({"a": {"f1": 0.4}, "ml-oracle": {"f1": 0.8}})
    assert "F1 / bound" not in plain and "(bound)" not in plain  # backward compatible
    text = format_table({"ml-oracle": {"f1": 0.8}, "a": {"f1": 0.4}}, bound="ml-oracle").splitlines()
    assert text[0].startswith("| method | P | R | F1 | F1 / bound | FP/scene |")
    assert text[2].startswith("| a | n/a | n/a | 0.400 | 0.50 | n/a |")
    assert text[3].startswith("| ml-oracle (bound) | n/a | n/a | 0.800 | 1.00 |")
    zero = format_table({"a": {"f1": 0.4}, "b": {"f1": 0.0}}, bound="b").splitlines()
    assert zero[2].startswith("| a | n/a | n/a | 0.400 | n/a |")
    assert format_table({"a": {"f1": 0.4}}, bound="ml-oracle") == format_table({"a": {"f1": 0.4}})


def _captured_figure(monkeypatch, module):
    figs = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path: figs.append(fig))
    return figs


def _bound_lines(fig, label="bound (ml-oracle)"):
    return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == label]


def test_plot_f1_draws_the_bound(monkeypatch):
    figs = _captured_figure(monkeypatch, bench_plots)
    recs = [dict(sweep="snr_k1", value=v, method=m, f1=f) for v in (0, 10)
            for m, f in (("somp-ml", 0.5 + v / 40), ("ml-oracle", 0.7 + v / 40))]
    assert bench_plots.plot_f1("unused.png", recs, dict(snr_k1=("K = 1", "SNR (dB)")), bound="ml-oracle")
    (line,) = _bound_lines(figs[0])
    assert line.get_linestyle() == "--" and mcolors.to_rgba(line.get_color()) == (0.0, 0.0, 0.0, 1.0)
    assert list(line.get_ydata()) == [0.7, 0.95]
    assert [ln.get_label() for ln in figs[0].axes[0].get_lines()] == ["somp-ml", "bound (ml-oracle)"]
    assert bench_plots.plot_f1("unused.png", recs, dict(snr_k1=("K = 1", "SNR (dB)")))  # no bound: plain curves
    assert not _bound_lines(figs[1])


def test_plot_snr_curves_draws_the_bound(monkeypatch):
    figs = _captured_figure(monkeypatch, eval_plots)
    group = lambda f: dict(f1=f, median_pos_err_m=0.1, rmse_phi_deg=0.5, sqrt_crb_phi_deg=0.3)  # noqa: E731
    ms = {"somp-ml": dict(per_snr_bin={"[-5,0)": group(0.5), "[0,5)": group(0.8)}),
          "ml-oracle": dict(per_snr_bin={"[-5,0)": group(0.7), "[0,5)": group(0.9)})}
    eval_plots.plot_snr_curves("unused.png", ms)
    lines = _bound_lines(figs[0])
    assert len(lines) == 3  # F1, position error, RMSE panels
    assert list(lines[0].get_ydata()) == [0.7, 0.9] and lines[0].get_linestyle() == "--"
    eval_plots.plot_snr_curves("unused.png", ms, bound=None)
    assert not _bound_lines(figs[1])


def test_demo_reports_the_bound(tmp_path, capsys):
    results = run_demo(tmp_path / "demo", n_scenes=4, methods=["mvdr-mf", sweeps.BOUND_METHOD])
    assert list(results) == ["mvdr-mf", "ml-oracle"]
    mf, bound = results["mvdr-mf"], results["ml-oracle"]
    assert mf["f1_bound"] == bound["f1"] and bound["f1_over_bound"] == pytest.approx(1.0)
    assert mf["f1_over_bound"] == pytest.approx(mf["f1"] / bound["f1"])
    for b, r in mf["f1_over_bound_per_snr_bin"].items():
        bf = bound["per_snr_bin"][b]["f1"]
        assert r == (pytest.approx(mf["per_snr_bin"][b]["f1"] / bf) if bf else None)
    captured = capsys.readouterr()
    printed = captured.out
    # stderr is not a terminal here: a line per method as it starts and finishes, the bound first
    assert "[1/2] ml-oracle: localizing 4 scenes ..." in captured.err
    assert "[2/2] mvdr-mf: 4 scenes in " in captured.err and "localizing" not in printed
    report = (tmp_path / "demo" / "report.md").read_text()
    saved = json.loads((tmp_path / "demo" / "metrics_mvdr-mf.json").read_text())
    assert saved["f1_over_bound"] == pytest.approx(mf["f1_over_bound"])
    for text in (printed, report):
        assert "| F1 | F1 / bound |" in text
        assert "| ml-oracle (bound) |" in text and "F1 per SNR bin" in text
        assert f"| mvdr-mf | {fmt_number(mf['precision'])} | {fmt_number(mf['recall'])} | {mf['f1']:.3f} | " \
               f"{fmt_number(mf['f1_over_bound'], '.2f')} |" in text


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_only_off_a_terminal(monkeypatch, capsys):
    accuracy_report.progress_line("somp: 3 scenes in 1.0 s")
    assert capsys.readouterr().err == "somp: 3 scenes in 1.0 s\n"
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    accuracy_report.progress_line("somp: 3 scenes in 1.0 s")  # the tqdm bars show progress there
    assert terminal.getvalue() == ""


def test_accuracy_prints_a_line_per_method_off_a_terminal(tmp_path, capsys):
    run_accuracy(tmp_path, n_scenes=1, methods=["mvdr-mf"], sweeps=("snr_k1",), snr_values_db=(25,))
    err = capsys.readouterr().err.splitlines()
    assert [ln for ln in err if "mvdr-mf: " in ln][0].endswith("mvdr-mf: localizing 1 scenes ...")
    assert any("mvdr-mf: 1 scenes in " in ln and ", F1 " in ln for ln in err)
    run_accuracy(tmp_path / "quiet", n_scenes=1, methods=["mvdr-mf"], sweeps=("snr_k1",), snr_values_db=(25,),
                 progress=False)
    assert "localizing" not in capsys.readouterr().err


# --- deployment sweeps ------------------------------------------------------------------------
def test_deployment_points_share_one_test_set_and_are_not_defaults():
    pts = sweeps.bench_points(("deploy", "nmse", "phase_error", "failure"))
    assert [p.sweep for p in pts[:6]] == ["deploy_random"] * 3 + ["deploy_designed"] * 3
    assert {p.scenario for p in pts} == {sweeps.DEPLOY_SCENARIO}
    assert len({sweeps.point_seed(p) for p in pts}) == 1  # the same sources, symbols and noise
    assert all(p.codes == "designed" for p in pts[6:])
    for name, field in (("nmse", "channel_nmse_db"), ("phase_error", "code_phase_error_deg"),
                        ("failure", "element_failure")):
        rows = [p for p in pts if p.sweep == name]
        assert [p.overrides[field] for p in rows] == list({"nmse": sweeps.NMSE_VALUES_DB,
                                                            "phase_error": sweeps.PHASE_ERROR_VALUES_DEG,
                                                            "failure": sweeps.FAILURE_VALUES}[name])
        assert all(p.overrides["code_bits"] == sweeps.IMPAIRMENT_CODE_BITS for p in rows)
    assert not set(sweeps.DEPLOY_SWEEPS) & set(sweeps.DEFAULT_SWEEPS)
    # the other sweeps keep their per-point seeds
    base = sweeps.bench_points(("base", "k"))
    assert len({sweeps.point_seed(p) for p in base}) == len(base)


@pytest.mark.slow
def test_deployment_sweeps_end_to_end(tmp_path):
    """Designed codes written with their judgement; a point equal to an earlier one (phase error
    0 = failure 0) reuses its records; the plots of the impairments are written."""
    res = run_accuracy(tmp_path, n_scenes=2, methods=["ml-oracle"], sweeps=("phase_error", "failure"),
                       progress=False)
    recs = {(r["sweep"], r["value"]): r for r in res["records"]}
    assert recs[("failure", 0.0)]["same_as"] == "phase_error 0.0"
    assert recs[("failure", 0.0)]["f1"] == recs[("phase_error", 0.0)]["f1"]
    assert "same_as" not in recs[("failure", 0.1)]
    book = tmp_path / "codes" / "designed_2bit.npz"
    with np.load(book, allow_pickle=False) as z:
        assert z["codes"].shape == (16, 144) and np.allclose(np.abs(z["codes"]), 1.0, atol=1e-3)
        meta = json.loads(str(z["meta"]))
    assert meta["bits"] == 2 and set(meta["median_sqrt_crb_designed"]) == {"phi", "theta", "r"}
    assert (tmp_path / "f1_vs_impairments.png").is_file()
