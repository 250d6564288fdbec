"""End-to-end CLI: simulate -> localize -> evaluate -> plot on a small set, demo, errors, the
command names, and a start-up that leaves JAX unloaded until a command runs."""
import argparse
import inspect
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from rismvdr.cli import build_parser, main
from rismvdr.cli.common import add_localizer_flags, localizer_settings
from rismvdr.io import load_scenes, read_detections_csv
from rismvdr.localize.settings import DEPLOYMENT_SEARCH_WIDTH
from rismvdr.physics import get_scenario

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


@pytest.mark.slow  # the whole demo through the CLI (make test-slow; tests/test_bench.py runs its parts)
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


def test_bad_override_is_a_clean_error(tmp_path, capsys):
    rc, _, err = _run(["simulate", "--scenes", 2, "--out", tmp_path / "x.npz", "--set", "nope=1"], capsys)
    assert rc == 2 and "nope" in err


# --- packaged named configs ---------------------------------------------------------------
def test_named_configs_are_packaged_and_the_checkout_files_are_the_same():
    from pathlib import Path

    from rismvdr.configs import CONFIGS, DEFAULT_SPACE, SPACES, config_file, load_named_config, space_file
    from rismvdr.train.config import load_config

    root = Path(__file__).resolve().parents[1]
    for name in CONFIGS:
        assert config_file(name).parent.name == "configs" and config_file(name).parent.parent.name == "rismvdr"
        assert load_named_config(name) == load_config(root / "configs" / f"{name}.py"), name
        assert load_named_config(name).name == name
    assert DEFAULT_SPACE in SPACES and space_file(DEFAULT_SPACE).is_file()
    assert config_file(root / "configs" / "tiny.py") == root / "configs" / "tiny.py"  # a path stays a path
    with pytest.raises(ValueError, match="--config: 'nope' is neither a packaged name"):
        config_file("nope")
    with pytest.raises(ValueError, match="--space"):
        space_file("tiny")


def test_train_config_by_name(tmp_path):
    from rismvdr.cli.train import train_config
    from rismvdr.configs import load_named_config

    cfg = train_config(argparse.Namespace(from_hpo=None, config="tiny", set=["steps=2"]))
    assert cfg == load_named_config("tiny").replace(steps=2)
    rc = main(["train", "--config", "no-such-config", "--workdir", str(tmp_path / "run")])
    assert rc == 2 and not (tmp_path / "run").exists()


def test_hpo_space_defaults_to_the_packaged_one():
    from rismvdr.configs import DEFAULT_SPACE

    search = ["--config", "tiny", "--workdir", "w"]
    for cmd in (["hpo", "run", *search, "--trials", "1"],
                ["hpo", "two-stage", *search, "--stage1-trials", "1", "--stage2-topk", "1"]):
        assert build_parser().parse_args(cmd).space == DEFAULT_SPACE


# --- files the CLI reads and writes -------------------------------------------------------
def test_evaluate_maps_file_missing_key_is_a_clean_error(scene_file, tmp_path, capsys):
    det = tmp_path / "det.csv"
    assert main(["localize", str(scene_file), "--method", "mvdr-oracle", "--out", str(det), "-q"]) == 0
    maps = tmp_path / "maps.npz"
    np.savez(maps, power_db=np.zeros((4, 2, 2)))
    rc, _, err = _run(["evaluate", scene_file, det, "--out", tmp_path / "m.json", "--maps", maps], capsys)
    assert rc == 2 and "key 'plane': missing" in err and not (tmp_path / "m.json").exists()


def test_scenario_from_meta_round_trip(scene_file):
    from rismvdr.io import scenario_from_meta
    from rismvdr.physics.scenarios import get_scenario

    sf = load_scenes(scene_file)
    assert scenario_from_meta(sf.meta) == get_scenario("seed", k_min=2, k_max=2, snr_db=(20.0, 20.0))
    assert scenario_from_meta(None) is None and scenario_from_meta({"scenario": "seed"}) is None


# --- persistent compilation cache ---------------------------------------------------------
@pytest.fixture
def jax_cache_settings():
    """Restore the test session's JAX cache settings (and the program store: off) after a test
    that lets the CLI change them."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from rismvdr.programs import enable_program_store, program_store

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    store = program_store()
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    enable_program_store(store)


def test_compile_cache_dir_from_the_environment(tmp_path, monkeypatch):
    from rismvdr.io import compile_cache_dir

    monkeypatch.delenv("RISMVDR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "rismvdr" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache_dir() == tmp_path / "home" / ".cache" / "rismvdr" / "jax"
    monkeypatch.setenv("RISMVDR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


def test_cli_keeps_compiled_programs_unless_told_not_to(tmp_path, monkeypatch, jax_cache_settings, capsys):
    import jax

    from rismvdr.io import PROGRAM_STORE_NAME
    from rismvdr.programs import program_store

    cache = tmp_path / "cache"
    monkeypatch.setenv("RISMVDR_CACHE_DIR", str(cache))
    monkeypatch.delenv("RISMVDR_COMPILE_CACHE", raising=False)
    before = jax.config.jax_compilation_cache_dir
    # off: the flag, or the environment variable
    assert _run(["--no-compile-cache", "simulate", "--scenes", 3, "--out", tmp_path / "a.npz"], capsys)[0] == 0
    monkeypatch.setenv("RISMVDR_COMPILE_CACHE", "0")
    assert _run(["simulate", "--scenes", 3, "--out", tmp_path / "b.npz"], capsys)[0] == 0
    assert jax.config.jax_compilation_cache_dir == before and not cache.exists()
    # on (the default): a shape no other test simulates is compiled and written into $RISMVDR_CACHE_DIR
    monkeypatch.delenv("RISMVDR_COMPILE_CACHE")
    assert _run(["simulate", "--scenes", 7, "--set", "k_max=4", "--out", tmp_path / "c.npz"], capsys)[0] == 0
    assert jax.config.jax_compilation_cache_dir == str(cache)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert any(cache.iterdir())
    assert program_store() == cache / PROGRAM_STORE_NAME


@pytest.mark.parametrize("where", ["directory", "missing folder"])
@pytest.mark.parametrize("command", ["simulate", "localize", "localize-maps", "evaluate"])
def test_unusable_output_path_is_a_one_line_error_before_any_work(command, where, scene_file, tmp_path, capsys):
    """An `--out` that is a directory or lies in a missing folder fails at once, naming the flag."""
    bad = tmp_path if where == "directory" else tmp_path / "missing" / "out.x"
    good = tmp_path / "ok.csv"
    argv, flag = {
        "simulate": (["simulate", "--scenes", "2", "--out", bad], "--out"),
        "localize": (["localize", scene_file, "--method", "mvdr-oracle", "--out", bad, "-q"], "--out"),
        "localize-maps": (["localize", scene_file, "--method", "mvdr-oracle", "--out", good, "--maps-out", bad,
                           "-q"], "--maps-out"),
        "evaluate": (["evaluate", scene_file, good, "--out", bad], "--out"),
    }[command]
    rc, out, err = _run(argv, capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert ("is a directory" in err) if where == "directory" else ("does not exist" in err)
    assert not good.exists()  # nothing was computed or written


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--scenes", "2", "--set", "k_min=x"], "k_min: expected an integer"),
    (["simulate", "--scenes", "2", "--set", "k_min=2.5"], "k_min: expected an integer"),
    (["simulate", "--scenes", "2", "--set", "phi_deg=95,100"], "phi_deg: values must lie in (-90.0, 90.0)"),
    (["simulate", "--scenes", "2", "--set", "snr_db=abc"], "--set snr_db: expected 2 numbers"),
    (["simulate", "--scenes", "2", "--set", "steering_model=near"], "steering_model: expected one of 'exact'"),
    (["localize", "SCENES", "--method", "mvdr-oracle", "--phi-range-deg", "-200", "200"],
     "phi_deg: the search box must lie in (-90, 90)"),
    (["localize", "SCENES", "--method", "mvdr-oracle", "--theta-range-deg", "-95", "95"],
     "theta_deg: the search box must lie in (-90, 90)"),
])
def test_bad_scenario_values_and_search_boxes_are_one_line_errors(argv, message, scene_file, tmp_path, capsys):
    out = tmp_path / "out.x"
    argv = [scene_file if a == "SCENES" else a for a in argv] + ["--out", out]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists()


def test_evaluate_files_is_what_evaluate_writes(scene_file, tmp_path, capsys):
    """`rismvdr.eval.evaluate_files` (the notebook's call) gives the record `rismvdr evaluate` writes."""
    from rismvdr.eval import evaluate_files
    from rismvdr.io import to_jsonable

    det, maps, out = tmp_path / "det.csv", tmp_path / "maps.npz", tmp_path / "m.json"
    assert main(["localize", str(scene_file), "--method", "mvdr-oracle", "--out", str(det), "--maps-out", str(maps),
                 "-q"]) == 0
    assert main(["evaluate", str(scene_file), str(det), "--maps", str(maps), "--out", str(out)]) == 0
    rec = evaluate_files(str(scene_file), det, maps_path=maps)
    assert rec["method"] == "det" and rec["test_set"]["n_scenes"] == 4
    assert json.loads(json.dumps(to_jsonable(rec))) == json.loads(out.read_text())


# --- command names --------------------------------------------------------------------------
def test_renamed_spellings_map_to_the_new_commands():
    from rismvdr.cli import renamed

    assert renamed(["-v", "hpo2", "--study", "s"])[0] == ["-v", "hpo", "two-stage", "--study", "s"]
    assert renamed(["export", "run", "--out", "m"])[0] == ["export-model", "run", "--out", "m"]
    assert renamed(["hpo", "--config", "tiny"])[0] == ["hpo", "run", "--config", "tiny"]
    for argv in (["hpo", "export", "--study", "s"], ["hpo", "--help"], ["hpo"], ["export-model", "run"], []):
        assert renamed(argv) == (argv, None)


def test_old_spellings_still_work_and_print_a_note(tmp_path, capsys):
    """`hpo` with flags and no subcommand (now `hpo run`), `hpo2` (`hpo two-stage`) and `export`
    (`export-model`) are accepted for one release, with one line on stderr."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    rc, out, err = _run(["hpo", "--config", "tiny", "--workdir", a_file, "--trials", 1], capsys)
    note, error = err.strip().splitlines()
    assert rc == 2 and out == ""
    assert note == ("WARNING rismvdr: `rismvdr hpo` without a subcommand is deprecated and will be removed in "
                    "the next release; use `rismvdr hpo run`")
    assert error.startswith("rismvdr hpo: error: --workdir") and "is a file" in error
    for old, new in (["hpo2"], "hpo two-stage"), (["export"], "export-model"):
        with pytest.raises(SystemExit) as e:
            main(old + ["--help"])
        captured = capsys.readouterr()
        assert e.value.code == 0 and f"usage: rismvdr {new} " in captured.out
        assert captured.err.strip() == (f"WARNING rismvdr: `rismvdr {old[0]}` is deprecated and will be removed in "
                                        f"the next release; use `rismvdr {new}`")


# --- help: every flag explained, no JAX ----------------------------------------------------
def _commands(parser, prefix=()):
    """Every command path of the parser: (), ("simulate",), ("plot", "scene"), ..."""
    out = [list(prefix)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, prefix + (name,))
    return out


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


UNITS = ("degrees", "metres", "dB", "seconds", "MiB", "dimensionless", "probability")


def test_every_flag_has_help_and_every_number_flag_its_unit():
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and len(action.help) > 8, (parser.prog, action.dest)
            if action.type is float:
                assert any(u in action.help for u in UNITS), (parser.prog, action.dest, action.help)


def _python(code: str, *argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", RISMVDR_COMPILE_CACHE="0")
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_help_of_every_command_leaves_jax_unloaded():
    """`rismvdr --help` and every command's `--help` (old spellings too) never import JAX."""
    commands = _commands(build_parser()) + [["hpo2"], ["export"]]
    assert ["localize"] in commands and ["hpo", "run"] in commands and len(commands) > 15
    code = ("import json, sys\n"
            "from rismvdr.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    try:\n"
            "        main(argv + ['--help'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, argv\n"
            "    assert 'jax' not in sys.modules, argv\n"
            "print('JAX-FREE', len(sys.argv[1]))\n")
    proc = _python(code, json.dumps(commands))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"JAX-FREE {len(json.dumps(commands))}"
    assert proc.stdout.count("usage: rismvdr") == len(commands)


@pytest.mark.parametrize("argv, message", [
    (["localize", "missing.npz", "--out", "{tmp}/nodir/x.csv"], "--out: the folder"),
    (["localize", "missing.npz", "--out", "{tmp}/x.csv", "--maps-out", "{tmp}/nodir/m.npz"], "--maps-out: the folder"),
    (["localize", "missing.npz", "--out", "{tmp}/x.csv", "--mad-z", "nan"], "--mad-z: must be a finite number"),
    (["localize", "missing.npz", "--out", "{tmp}/x.csv", "--residual-passes", "-1"], "--residual-passes: must be"),
    (["localize", "missing.npz", "--out", "{tmp}/x.csv", "--search-width", "0"], "--search-width: must be"),
    (["localize", "missing.npz", "--out", "{tmp}/x.csv", "--method", "nope"], "invalid choice: 'nope'"),
    (["train", "--config", "tiny", "--workdir", "{tmp}/a_file/run"], "--workdir: cannot create"),
    (["evaluate", "s.npz", "d.csv", "--out", "{tmp}/m.json", "--gate-r-m", "0"], "--gate-r-m: must be > 0 metres"),
])
def test_bad_flags_and_output_paths_are_refused_before_jax_loads(argv, message, tmp_path):
    (tmp_path / "a_file").write_text("")
    code = ("import sys\n"
            "from rismvdr.cli import main\n"
            "try:\n"
            "    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n"
            "    rc = e.code\n"
            "print('jax' in sys.modules)\n"
            "sys.exit(rc)\n")
    proc = _python(code, *(a.format(tmp=tmp_path) for a in argv))
    assert proc.returncode == 2 and proc.stdout.strip() == "False", (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_parser_mirrors_match_the_library():
    """The names and defaults the parser restates (the library's modules load JAX) are the library's."""
    from rismvdr.bench import speed, sweeps
    from rismvdr.bench.demo import run_demo
    from rismvdr.cli import bench, common, demo, evaluate, simulate
    from rismvdr.configs import CONFIGS, DEFAULT_SPACE
    from rismvdr.eval.evaluation import evaluate_detections, evaluate_files
    from rismvdr.io import CACHE_DIR_ENV, COMPILE_CACHE_ENV
    from rismvdr.localize.registry import METHODS
    from rismvdr.localize.settings import CONTINUATIONS, SEARCHES
    from rismvdr.physics.scenarios import DEFAULT_GATES
    from rismvdr.physics.simulate import simulate as simulate_scenes

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert common.METHOD_NAMES == tuple(METHODS) and common.DEFAULT_METHOD in METHODS
    assert common.CONTINUATIONS == tuple(CONTINUATIONS)
    assert common.CONFIG_NAMES == tuple(CONFIGS) and common.DEFAULT_SPACE == DEFAULT_SPACE
    assert common.SEARCHES == tuple(SEARCHES)
    assert (common.CACHE_DIR_ENV, common.COMPILE_CACHE_ENV) == (CACHE_DIR_ENV, COMPILE_CACHE_ENV)
    assert simulate.BATCH_SIZE == default(simulate_scenes, "batch_size")
    assert evaluate.GATES == DEFAULT_GATES.as_report()
    assert evaluate.SNR_BIN_DB == default(evaluate_files, "snr_bin_db") == default(evaluate_detections, "snr_bin_db")
    assert (demo.SCENES, demo.SEED, demo.SCENARIO) == tuple(default(run_demo, k) for k in ("n_scenes", "seed",
                                                                                            "scenario"))
    assert bench.SWEEPS == tuple(sweeps.SWEEPS) and bench.DEFAULT_SWEEPS == tuple(sweeps.DEFAULT_SWEEPS)
    assert (bench.SCENES_PER_POINT, bench.SCENES_PER_POINT_QUICK) == (sweeps.SCENES_PER_POINT,
                                                                      sweeps.SCENES_PER_POINT_QUICK)
    assert bench.PARTS == tuple(speed.PARTS)
    assert bench.SPEED_DEFAULTS == {k: default(speed.run_speed, k) for k in bench.SPEED_DEFAULTS}


def test_output_checks_give_the_io_answers(tmp_path):
    """The parser's output-path checks (restated: `rismvdr.io` loads JAX) answer as `rismvdr.io`'s."""
    import rismvdr.io as rio
    from rismvdr.cli import common

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    paths = (tmp_path, tmp_path / "missing" / "x", a_file, a_file / "x", tmp_path / "new", "relative.csv")

    def answer(check, path):
        try:
            check(path, "--out")
        except ValueError as e:
            return str(e)
        return None

    for name in ("check_output_file", "check_output_dir"):
        answers = [answer(getattr(common, name), p) for p in paths]
        assert answers == [answer(getattr(rio, name), p) for p in paths], name
        assert sum(a is None for a in answers) >= 1 and sum(a is not None for a in answers) >= 2


def test_search_width_defaults_by_channel_and_follows_the_flag():
    """`--search-width` reaches `CompressiveConfig.search_width`; without it a file whose scenario
    has a fixed deployment channel gets `DEPLOYMENT_SEARCH_WIDTH`, any other file 1."""
    parser = argparse.ArgumentParser()
    parser.add_argument("scenes")
    add_localizer_flags(parser)

    def width(name, *flags):
        args = parser.parse_args(["s.npz", *flags])
        sf = types.SimpleNamespace(meta={"config": get_scenario(name).as_dict()})  # as `simulate` records it
        return localizer_settings(args, sf).compressive_config().search_width

    assert width("seed-los") == DEPLOYMENT_SEARCH_WIDTH > 1
    assert width("seed") == 1
    assert width("seed-los", "--search-width", "3") == 3
    assert width("seed", "--search-width", "2") == 2
