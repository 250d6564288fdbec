"""`rismvdr bench latency`: the parser answers without JAX, the mirrors are the library's, and a
minimal series (the reference and `rismvdr --help`) writes both report files."""
from __future__ import annotations

import inspect
import json
import statistics
import subprocess
import sys

import pytest

from rismvdr.bench import latency
from rismvdr.cli import bench


def test_help_loads_no_jax():
    """`rismvdr bench latency --help` is answered by the parser alone."""
    code = ("import sys\nfrom rismvdr.cli import build_parser\n"
            "try:\n    build_parser().parse_args(['bench', 'latency', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'jax' not in sys.modules, 'jax was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--out", "--methods", "--repeats", "--quick", "--timeout-s", "seconds"):
        assert flag in proc.stdout


def test_parser_mirrors_match_the_library():
    params = inspect.signature(latency.run_latency).parameters
    assert bench.LATENCY_DEFAULTS == {k: params[k].default for k in bench.LATENCY_DEFAULTS}
    assert bench.LATENCY_QUICK_METHODS == latency.QUICK_METHODS
    assert list(bench.LATENCY_METHODS) == latency.default_methods()


def test_plan_covers_every_command_and_cache(tmp_path):
    setup, commands = latency.plan_commands(tmp_path, methods=["somp-ml", "learned"], cli=["rismvdr"])
    assert setup[:2] == ["rismvdr", "simulate"] and "--scenes" in setup
    assert [(c.label, c.cache) for c in commands] == [
        ("rismvdr --help", None),
        ("rismvdr simulate --scenes 1", "cold"), ("rismvdr simulate --scenes 1", "warm"),
        ("rismvdr localize --method somp-ml", "cold"), ("rismvdr localize --method somp-ml", "warm"),
        ("rismvdr localize --method learned", "cold"), ("rismvdr localize --method learned", "warm")]
    with pytest.raises(ValueError, match="mvdr-sample"):
        latency.plan_commands(tmp_path, methods=["mvdr-sample"])


def test_minimal_series_writes_both_files(tmp_path, capsys):
    """The reference and `--help`, 2 timed runs each: every run recorded, the ratio over the
    reference's median of the same series."""
    out = tmp_path / "report"
    help_cmd = latency.Command("rismvdr --help", (*latency.cli_prefix(), "--help"))
    result = latency.run_latency(out, commands=[help_cmd], repeats=2, command="test")
    assert capsys.readouterr().err.count("\n") == 2 * 3  # a progress line per run

    doc = json.loads((out / "latency.json").read_text())
    assert doc == json.loads(json.dumps(result))
    m = doc["meta"]
    assert not m["partial"] and m["repeats"] == 2 and m["command"] == "test"
    for key in ("cpu_model", "cpu_count", "python", "backend"):
        assert m["machine"][key]
    assert m["machine"]["versions"]["jax"] and m["machine"]["versions"]["jaxlib"]
    assert len(m["load_avg_before"]) == 3 and len(m["load_avg_after"]) == 3

    runs = doc["runs"]  # a list of records, as pandas.DataFrame takes it
    assert {tuple(sorted(r)) for r in runs} == {("cache", "command", "cpu_s", "round", "seconds", "status", "warmup")}
    assert [(r["command"], r["round"]) for r in runs] == [
        (c, rnd) for rnd in range(3) for c in (latency.REFERENCE, "rismvdr --help")]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in runs)

    rows = {r["command"]: r for r in doc["records"]}
    ref = [r["seconds"] for r in runs if r["command"] == latency.REFERENCE and not r["warmup"]]
    hlp = [r["seconds"] for r in runs if r["command"] == "rismvdr --help" and not r["warmup"]]
    assert rows[latency.REFERENCE]["median_s"] == pytest.approx(statistics.median(ref))
    assert rows[latency.REFERENCE]["ratio_to_import_jax"] == pytest.approx(1.0)
    h = rows["rismvdr --help"]
    assert (h["n"], h["min_s"], h["max_s"]) == (2, min(hlp), max(hlp))
    assert h["ratio_to_import_jax"] == pytest.approx(statistics.median(hlp) / statistics.median(ref))

    table = (out / "latency.md").read_text()
    assert "| command | cache | median s | min-max s | ratio to import jax |" in table
    assert "`rismvdr --help`" in table and "load average" in table


def test_the_series_keeps_its_own_bytecode(tmp_path, monkeypatch, capsys):
    """Every process of a series reads and writes compiled bytecode in the series' own folder,
    even where the caller's environment says to write none (as after a `pip install`)."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    probe = latency.Command("probe", (sys.executable, "-c", "import sys; assert sys.pycache_prefix, 'no prefix'; "
                                      "assert not sys.dont_write_bytecode, 'no bytecode written'"))
    doc = latency.run_latency(tmp_path / "report", commands=[probe], repeats=1, command="test", progress=False)
    assert [r["status"] for r in doc["runs"]] == ["ok"] * 4, doc["runs"]
    assert "PYTHONPYCACHEPREFIX" in doc["meta"]["bytecode"]
    assert "bytecode: compiled by the warm-up round" in (tmp_path / "report" / "latency.md").read_text()
