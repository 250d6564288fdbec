"""`rismvdr bench speed`: the baseline formula is the MVDR spectrum, the plan covers every part,
and one small run goes end to end through the CLI (real worker processes)."""
from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest

from rismvdr.bench import speed as bench_speed
from rismvdr.bench.baselines import numpy_original_mvdr
from rismvdr.bench.speed_report import RECORD_KEYS
from rismvdr.cli import main
from rismvdr.localize.registry import method_names
from rismvdr.physics import get_scenario, scenario_geometry, simulate
from rismvdr.physics.spectra import grid_steering, make_grid, mvdr_spectrum


def test_numpy_original_formula_is_the_mvdr_spectrum():
    """The denominator times the same quantity rismvdr computes (float64 reference)."""
    cfg = get_scenario("seed", k_min=3, k_max=3, dtype="complex128")
    geometry = scenario_geometry(cfg)
    R = np.asarray(simulate(cfg, jax.random.key(3), 1).R_true[0])
    grid = make_grid((-20.0, 20.0), (-10.0, 10.0), (1.0, 5.0), phi_step_deg=5.0, theta_step_deg=5.0, n_planes=3)
    a = np.asarray(grid_steering(geometry, grid, dtype=np.complex128)).reshape(-1, geometry.n_elements)
    ours = np.asarray(mvdr_spectrum(R, a))
    ref = numpy_original_mvdr(R, a.T)
    np.testing.assert_allclose(ref, ours, rtol=1e-9)


def test_plan_covers_every_part_and_method():
    specs = bench_speed.plan_measurements(gpu=False, quick=True)
    kinds = [s["kind"] for s in specs]
    assert kinds[:2] == ["numpy", "numpy"]  # baselines run first
    assert {"dense", "woodbury", "detect", "train", "method"} <= set(kinds)
    assert "torch" not in kinds
    assert [s["name"] for s in specs if s["kind"] == "method"] == method_names(full_array=False)
    assert {s["stage"] for s in specs if s["kind"] == "train"} == {"backbone", "refiner"}
    gpu = bench_speed.plan_measurements(gpu=True, quick=False, torch_cuda=True, parts=("spectrum",))
    assert [s["kind"] for s in gpu][:2] == ["numpy", "torch"]
    assert {s["batch"] for s in gpu if s["kind"] == "woodbury"} == {64, 256}
    with pytest.raises(ValueError, match="parts"):
        bench_speed.plan_measurements(gpu=False, quick=True, parts=("nope",))
    with pytest.raises(ValueError, match="methods"):
        bench_speed.plan_measurements(gpu=False, quick=True, methods=["nope"])


@pytest.mark.slow  # the whole speed bench through the CLI (make test-slow)
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "speed"
    rc = main(["bench", "speed", "--out", str(out), "--quick", "--parts", "methods", "--methods", "mvdr-oracle",
               "--method-scenes", "4", "--method-batch", "2", "--quiet"])
    assert rc == 0
    data = json.loads((out / "speed.json").read_text())
    assert data["meta"]["partial"] is False
    assert data["meta"]["machine"]["versions"]["jax"] == jax.__version__
    recs = {r["name"]: r for r in data["records"]}
    assert set(recs) == {"numpy", "mvdr-oracle"}
    assert all(r["status"] == "ok" for r in recs.values())
    base, m = recs["numpy"], recs["mvdr-oracle"]
    assert base["grid"] == "121 x 61 x 16" and base["ratio_vs_numpy"] == pytest.approx(1.0)
    assert m["scenes_per_s"] > 0 and m["peak_rss_mib"] > 100
    assert m["ratio_vs_numpy"] == pytest.approx(m["scenes_per_s"] / base["scenes_per_s"])
    with open(out / "speed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == RECORD_KEYS and len(rows) == 2
    md = (out / "speed.md").read_text()
    assert "| methods | mvdr-oracle |" in md and "jax " + jax.__version__ in md
    assert (out / "speed.png").stat().st_size > 0


def test_failed_worker_is_recorded_not_fatal(tmp_path):
    res = bench_speed._run_worker(dict(kind="no-such-kind"), env=None, timeout_s=60)
    assert res["status"].startswith("failed")
