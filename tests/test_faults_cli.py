"""Classes of bad input the command line refuses: each is one line on stderr naming the flag or
file and the problem, exit status 2, and nothing written (or, where a flag settles the matter,
the right result).

The classes: a scene file whose `meta` (or its scenario `config`) has the wrong types; an HPO
storage that cannot be opened (an unknown SQLAlchemy dialect, a missing driver, an unreachable
database, a file that is not a journal); a scene file's own search box outside the front
half-space (a box flag replaces it); a count or seed flag out of its range; `demo` methods that
cannot run on its scenario; a flag the parser itself refuses; `plot snr` of a JSON without the
per-SNR breakdown; and `learned-refiner` with a model that has no refiner. Every case fails
before any computation; only the test of a box flag over the file's box localizes (two tiny
scenes), and the `learned-refiner` tests simulate two seed scenes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rismvdr.cli import build_parser, main
from rismvdr.io import SceneFile, SceneFileError, load_scenes, save_scenes, scenario_from_meta

CSV = "scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db\n0,10,5,3,2.9,0.5,0.26,-1.5\n"
#: A seed-scenario `config` as `rismvdr simulate` records it (the fields the tests here change).
CONFIG = {"name": "seed", "phi_deg": [-60.0, 60.0], "theta_deg": [-30.0, 30.0], "r_m": [0.5, 10.0],
          "steering_model": "exact", "k_max": 5, "positions": None, "wavelength": 0.3}


def _arrays() -> dict[str, np.ndarray]:
    """A valid 2-scene RIS file (N = 4, M = 2, L = 3) with truth."""
    rng = np.random.default_rng(0)
    return dict(
        wavelength=np.asarray(0.3),
        positions=np.stack([np.zeros(4), 0.15 * np.arange(4), np.zeros(4)], axis=1),
        y=(rng.normal(size=(2, 3, 2)) + 1j * rng.normal(size=(2, 3, 2))).astype(np.complex64),
        H=(rng.normal(size=(2, 4)) + 1j * rng.normal(size=(2, 4))).astype(np.complex64),
        codes=np.exp(1j * rng.uniform(0, 2 * np.pi, (3, 4))).astype(np.complex64),
        gt_phi=np.array([[0.2], [-0.1]]), gt_theta=np.array([[0.0], [0.1]]), gt_r=np.array([[3.0], [4.0]]),
        snr_db=np.array([10.0, 10.0]),
    )


def _scene_file(path: Path, meta_text: str | None) -> Path:
    """The file of `_arrays` with `meta_text` stored under `meta` as it is (no checks)."""
    arrays = _arrays()
    if meta_text is not None:
        arrays["meta"] = np.asarray(meta_text, dtype=np.str_)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _cli(argv, capsys) -> tuple[int, str]:
    """Run the CLI in this process: (exit status, the one error line; '' when none)."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith("WARNING")]
    assert "Traceback" not in err, err
    assert len(lines) <= 1, err
    return rc, lines[0] if lines else ""


def _refused(argv, capsys, must) -> str:
    rc, line = _cli(argv, capsys)
    assert rc == 2 and line.startswith("rismvdr "), (rc, line)
    for text in must:
        assert text in line, (text, line)
    return line


# ------------------------------------------------------------------------------------------
# A scene file's meta and its scenario config
# ------------------------------------------------------------------------------------------
BAD_META = {
    "meta a JSON string": (json.dumps("seed"), ["expected a JSON object, got string"]),
    "meta a JSON string holding an object": (json.dumps(json.dumps({"config": CONFIG})),
                                             ["expected a JSON object, got string"]),
    "meta a JSON array": ("[1, 2]", ["expected a JSON object, got array"]),
    "config a string": (json.dumps({"config": json.dumps(CONFIG)}), ["config: expected a JSON object", "string"]),
    "config an array": (json.dumps({"config": [1, 2]}), ["config: expected a JSON object", "array"]),
    "config a number": (json.dumps({"config": 3}), ["config: expected a JSON object", "number"]),
    "positions a number": (json.dumps({"config": {**CONFIG, "positions": 5}}), ["config.positions", "got number 5"]),
    "positions a flat list": (json.dumps({"config": {**CONFIG, "positions": [1, 2]}}), ["config.positions"]),
    "positions rows of 2": (json.dumps({"config": {**CONFIG, "positions": [[0, 0], [1, 1]]}}), ["config.positions"]),
    "positions a string row": (json.dumps({"config": {**CONFIG, "positions": ["abc"]}}), ["config.positions"]),
    "k_max a string": (json.dumps({"config": {**CONFIG, "k_max": "five"}}), ["config.k_max", "an integer"]),
    "k_max 2.5": (json.dumps({"config": {**CONFIG, "k_max": 2.5}}), ["config.k_max", "an integer"]),
    "k_max true": (json.dumps({"config": {**CONFIG, "k_max": True}}), ["config.k_max", "an integer"]),
    "wavelength a string": (json.dumps({"config": {**CONFIG, "wavelength": "0.3"}}),
                            ["config.wavelength", "a finite number"]),
    "wavelength NaN": (json.dumps({"config": {**CONFIG, "wavelength": float("nan")}}),
                       ["config.wavelength", "a finite number"]),
    "phi_deg a number": (json.dumps({"config": {**CONFIG, "phi_deg": 5}}), ["config.phi_deg", "[min, max]"]),
    "phi_deg three numbers": (json.dumps({"config": {**CONFIG, "phi_deg": [1, 2, 3]}}), ["config.phi_deg"]),
    "r_m with a string": (json.dumps({"config": {**CONFIG, "r_m": [0.5, "10"]}}), ["config.r_m"]),
    "name a number": (json.dumps({"config": {**CONFIG, "name": 3}}), ["config.name", "a string"]),
    "steering_model unknown": (json.dumps({"config": {**CONFIG, "steering_model": "near"}}),
                               ["config.steering_model", "'exact'"]),
}


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta")
    (d / "det.csv").write_text(CSV)
    return d


@pytest.mark.parametrize("command", ["localize", "evaluate", "plot scene"])
@pytest.mark.parametrize("case", list(BAD_META))
def test_mistyped_meta_is_a_scene_file_error_naming_the_file_and_key(case, command, meta_dir, capsys):
    text, must = BAD_META[case]
    path = _scene_file(meta_dir / f"{case.replace(' ', '_')}.npz", text)
    out = meta_dir / ("out.png" if command == "plot scene" else "out.csv")
    argv = {"localize": ["localize", path, "--out", out],
            "evaluate": ["evaluate", path, meta_dir / "det.csv", "--out", out],
            "plot scene": ["plot", "scene", path, "--out", out]}[command]
    _refused(argv, capsys, [path.name, "key 'meta'", *must])
    assert not out.exists()


@pytest.mark.parametrize("case", list(BAD_META))
def test_mistyped_meta_through_the_library(case, tmp_path):
    text, must = BAD_META[case]
    path = _scene_file(tmp_path / "bad.npz", text)
    with pytest.raises(SceneFileError, match="key 'meta'") as e:
        load_scenes(path)
    assert str(path) in str(e.value) and all(m in str(e.value) for m in must) and "\n" not in str(e.value)
    meta = json.loads(text)
    if isinstance(meta, dict):  # in memory: scenario_from_meta names its source; save_scenes writes nothing
        with pytest.raises(SceneFileError, match=r"^x\.npz: key 'meta': "):
            scenario_from_meta(meta, source="x.npz")
        arrays = {k: v for k, v in _arrays().items() if k != "wavelength"}
        with pytest.raises(SceneFileError, match="key 'meta'"):
            save_scenes(tmp_path / "new.npz", SceneFile(wavelength=0.3, meta=meta, **arrays))
        assert not (tmp_path / "new.npz").exists()


def test_well_typed_meta_is_read_and_unknown_or_null_configs_are_no_scenario(tmp_path):
    path = _scene_file(tmp_path / "ok.npz", json.dumps({"config": {**CONFIG, "future_field": {"x": 1}}}))
    cfg = scenario_from_meta(load_scenes(path).meta, source=str(path))
    assert cfg.phi_deg == (-60.0, 60.0) and cfg.k_max == 5 and cfg.positions is None
    assert scenario_from_meta({"config": None}) is None and scenario_from_meta({"seed": 0}) is None
    custom = {"config": {"array": "custom", "positions": ((0.0, 0.0, 0.0), (0.0, 0.15, 0.0)), "k_max": np.int64(2)}}
    cfg = scenario_from_meta(custom)  # in memory: tuples and NumPy numbers are as good as JSON
    assert cfg.positions == ((0.0, 0.0, 0.0), (0.0, 0.15, 0.0)) and cfg.k_max == 2


# ------------------------------------------------------------------------------------------
# The file's own search box and the box flags
# ------------------------------------------------------------------------------------------
WIDE = {"phi_deg": ({**CONFIG, "phi_deg": [-120.0, 120.0]}, "--phi-range-deg", ["-60", "60"]),
        "theta_deg": ({**CONFIG, "theta_deg": [-95.0, 10.0]}, "--theta-range-deg", ["-10", "10"]),
        "r_m": ({**CONFIG, "r_m": [0.0, 10.0]}, "--r-range-m", ["1", "5"])}


@pytest.mark.parametrize("field", list(WIDE))
def test_a_files_box_outside_the_limits_is_named_unless_a_flag_replaces_it(field, tmp_path, capsys):
    config, flag, values = WIDE[field]
    path = _scene_file(tmp_path / "wide.npz", json.dumps({"config": config}))
    out = tmp_path / "det.csv"
    _refused(["localize", path, "--out", out], capsys, ["wide.npz", "key 'meta'", f"config.{field}", flag])
    assert not out.exists()
    args = build_parser().parse_args(["localize", str(path), "--out", str(out), flag, *values])
    from rismvdr.cli.common import localizer_settings

    settings = localizer_settings(args, load_scenes(path))
    assert getattr(settings.search, field) == tuple(float(v) for v in values)


def test_a_box_flag_over_a_wide_file_box_localizes(tmp_path, capsys):
    path = _scene_file(tmp_path / "wide.npz", json.dumps({"config": WIDE["phi_deg"][0]}))
    out = tmp_path / "det.csv"
    rc, line = _cli(["localize", path, "--out", out, "--method", "mvdr-oracle", "--phi-range-deg", "-30", "30",
                     "--theta-range-deg", "-10", "10", "--phi-step-deg", "10", "--theta-step-deg", "10",
                     "--planes", "2", "--no-refine", "--significance", "none", "-q"], capsys)
    assert rc == 0 and line == "" and out.read_text().startswith("scene,phi_deg")


# ------------------------------------------------------------------------------------------
# Count, seed and other range flags (refused before JAX loads)
# ------------------------------------------------------------------------------------------
OUT = ["--out", "{tmp}/out.x"]
BAD_COUNTS = [
    (["simulate", "--scenes", "0", *OUT], "--scenes", ">= 1"),
    (["simulate", "--batch-size", "0", *OUT], "--batch-size", ">= 1"),
    (["simulate", "--batch-size", "-3", *OUT], "--batch-size", ">= 1"),
    (["simulate", "--seed", "-1", *OUT], "--seed", "[0, 4294967295]"),
    (["simulate", "--seed", str(2**32), *OUT], "--seed", "[0, 4294967295]"),
    (["localize", "s.npz", "--batch-size", "0", *OUT], "--batch-size", ">= 1"),
    (["localize", "s.npz", "--planes", "0", *OUT], "--planes", ">= 1"),
    (["localize", "s.npz", "--k-max", "0", *OUT], "--k-max", ">= 1"),
    (["localize", "s.npz", "--phi-step-deg", "0", *OUT], "--phi-step-deg", "> 0 degrees"),
    (["localize", "s.npz", "--threshold-db", "-1", *OUT], "--threshold-db", ">= 0"),
    (["localize", "s.npz", "--phi-range-deg", "-100", "10", *OUT], "--phi-range-deg", "(-90, 90)"),
    (["localize", "s.npz", "--phi-range-deg", "10", "-10", *OUT], "--phi-range-deg", "MIN <= MAX"),
    (["localize", "s.npz", "--r-range-m", "0", "4", *OUT], "--r-range-m", "(0, inf)"),
    (["localize", "s.npz", "--checkpoint-step", "-3", *OUT], "--checkpoint-step", "step number >= 0"),
    (["localize", "s.npz", "--distributed-timeout-s", "0", *OUT], "--distributed-timeout-s", ">= 1"),
    (["plot", "scene", "s.npz", "--index", "-1", *OUT], "--index", ">= 0"),
    (["plot", "scene", "s.npz", "--batch-size", "-3", *OUT], "--batch-size", ">= 1"),
    (["demo", "--scenes", "0", "--out", "{tmp}/demo"], "--scenes", ">= 1"),
    (["demo", "--seed", "-5", "--out", "{tmp}/demo"], "--seed", "[0, 4294967295]"),
    (["bench", "accuracy", "--scenes", "0", "--out", "{tmp}/b"], "--scenes", ">= 1"),
    (["bench", "speed", "--method-batch", "0", "--out", "{tmp}/b"], "--method-batch", ">= 1"),
    (["bench", "speed", "--method-scenes", "-1", "--out", "{tmp}/b"], "--method-scenes", ">= 1"),
    (["bench", "speed", "--timeout-s", "0", "--out", "{tmp}/b"], "--timeout-s", "> 0 s"),
    (["train", "--config", "tiny", "--workdir", "{tmp}/w", "--devices", "0"], "--devices", ">= 1"),
    (["train", "--config", "tiny", "--workdir", "{tmp}/w", "--stop-at", "0"], "--stop-at", ">= 1"),
    (["train-refiner", "--backbone", "b", "--workdir", "{tmp}/w", "--backbone-step", "x"], "--backbone-step",
     "'best', 'latest'"),
    (["hpo", "run", "--config", "tiny", "--workdir", "{tmp}/w", "--trials", "0"], "--trials", ">= 1"),
    (["hpo", "run", "--config", "tiny", "--workdir", "{tmp}/w", "--trials", "1", "--workers", "0"], "--workers",
     ">= 1"),
    (["hpo", "run", "--config", "tiny", "--workdir", "{tmp}/w", "--trials", "1", "--epochs", "0"], "--epochs",
     ">= 1"),
    (["hpo", "run", "--config", "tiny", "--workdir", "{tmp}/w", "--trials", "1", "--e2e-scenes", "0"],
     "--e2e-scenes", ">= 1"),
    (["hpo", "run", "--config", "tiny", "--workdir", "{tmp}/w", "--trials", "1", "--grace-s", "0"], "--grace-s",
     ">= 1"),
    (["hpo", "run", "--config", "tiny", "--workdir", "{tmp}/w", "--trials", "1", "--sampler-seed", "-1"],
     "--sampler-seed", "[0, 4294967295]"),
    (["hpo", "two-stage", "--config", "tiny", "--workdir", "{tmp}/w", "--stage1-trials", "2",
      "--stage2-topk", "0"], "--stage2-topk", ">= 1"),
    (["hpo", "export", "--study", "s", "--workdir", "{tmp}/w", "--trial", "-1", "--out", "{tmp}/b.json"],
     "--trial", ">= 0"),
    (["export-model", "run", "--out", "{tmp}/m", "--step", "-2"], "--step", "step number >= 0"),
    (["export-model", "run", "--out", "{tmp}/m", "--record-check", "0"], "--record-check", ">= 1"),
]


@pytest.mark.parametrize("argv, flag, allowed", BAD_COUNTS, ids=lambda v: v if isinstance(v, str) else None)
def test_a_count_flag_out_of_range_is_refused_naming_it(argv, flag, allowed, tmp_path, capsys):
    line = _refused([a.format(tmp=tmp_path) for a in argv], capsys, [f"{flag}:", allowed])
    assert line.startswith(f"rismvdr {argv[0]}: error: {flag}:"), line
    assert sorted(tmp_path.iterdir()) == []


#: The arguments each command needs besides the flag under test (none of the files exists).
REQUIRED = {"simulate": [*OUT], "localize": ["s.npz", *OUT], "evaluate": ["s.npz", "d.csv", *OUT],
            "plot scene": ["s.npz", *OUT], "plot snr": ["m.json", *OUT], "demo": ["--out", "{tmp}/d"],
            "bench accuracy": ["--out", "{tmp}/b"], "bench speed": ["--out", "{tmp}/b"],
            "bench latency": ["--out", "{tmp}/b"], "train": ["--config", "tiny", "--workdir", "{tmp}/w"],
            "train-refiner": ["--backbone", "b", "--workdir", "{tmp}/w"],
            "hpo run": ["--config", "tiny", "--workdir", "{tmp}/w", "--trials", "1"],
            "hpo two-stage": ["--config", "tiny", "--workdir", "{tmp}/w", "--stage1-trials", "2", "--stage2-topk", "1"],
            "hpo export": ["--study", "s", "--workdir", "{tmp}/w", "--out", "{tmp}/b.json"],
            "hpo trials": ["--study", "s", "--workdir", "{tmp}/w", "--out", "{tmp}/t.csv"],
            "export-model": ["run", "--out", "{tmp}/m"], "design codes": ["--out", "{tmp}/c.npz"]}


def _integer_flags(parser, words=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _integer_flags(sub, (*words, name))
        elif action.option_strings and action.type not in (None, str, float):
            yield " ".join(words), action.option_strings[-1], action.nargs if isinstance(action.nargs, int) else 1


INTEGER_FLAGS = sorted(set(_integer_flags(build_parser())))


def test_every_integer_flag_is_covered():
    assert len(INTEGER_FLAGS) > 40 and {c for c, _, _ in INTEGER_FLAGS} <= set(REQUIRED)


@pytest.mark.parametrize("command, flag, nargs", INTEGER_FLAGS)
def test_every_integer_flag_refuses_minus_one_naming_itself(command, flag, nargs, tmp_path, capsys):
    """Counts, seeds, indices, seconds: -1 is out of range for each, refused by its flag (a flag
    of several values gets -1 for each)."""
    argv = [*command.split(), *(a.format(tmp=tmp_path) for a in REQUIRED[command]), flag, *["-1"] * nargs]
    try:
        rc = main(argv)
    except SystemExit as e:  # a flag whose type refuses it (argparse)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag in err and "-1" in err, err
    assert sorted(tmp_path.iterdir()) == []


def test_count_flags_are_refused_before_jax_loads(tmp_path):
    cases = [[a.format(tmp=tmp_path) for a in argv] for argv, _, _ in BAD_COUNTS]
    code = ("import json, sys\n"
            "from rismvdr.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    assert main(argv) == 2, argv\n"
            "    assert 'jax' not in sys.modules, argv\n"
            "print('JAX-FREE')\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", RISMVDR_COMPILE_CACHE="0"))
    assert proc.returncode == 0 and proc.stdout.strip() == "JAX-FREE", proc.stderr
    assert proc.stderr.count("error:") == len(cases)


# ------------------------------------------------------------------------------------------
# HPO storages
# ------------------------------------------------------------------------------------------
URLS = {"unknown dialect": ("foo://bar", "NoSuchModuleError"),
        "unreachable PostgreSQL": ("postgresql+psycopg2://u:secret@127.0.0.1:1/db", "127.0.0.1"),
        "unknown driver": ("mysql+nosuchdriver://u@127.0.0.1:1/db", "mysql"),
        "driver not installed (or no server)": ("mysql+pymysql://u@127.0.0.1:1/db", "mysql"),
        "unparsable URL": ("postgresql://u@host:notaport/db", "postgresql")}


def _hpo_argv(sub: str, tmp: Path, storage: str | None) -> list:
    more = ["--storage", storage] if storage is not None else []
    if sub == "run":
        return ["hpo", "run", "--config", "tiny", "--workdir", tmp / "w", "--trials", "1", *more]
    return ["hpo", sub, "--study", "s", "--workdir", tmp / "w", "--out",
            tmp / ("b.json" if sub == "export" else "t.csv"), *more]


@pytest.mark.parametrize("sub", ["run", "export", "trials"])
@pytest.mark.parametrize("case", list(URLS))
def test_a_database_url_that_cannot_be_opened_is_one_line_naming_storage(case, sub, tmp_path, capsys):
    url, shown = URLS[case]
    line = _refused(_hpo_argv(sub, tmp_path, url), capsys, ["--storage:", "cannot open the database", shown])
    assert "secret" not in line  # the password is not printed
    assert sorted(tmp_path.iterdir()) == []  # no workdir, no compilation cache, no output


NOT_JOURNALS = {"text": "hello\nworld\n", "one text line": "hello", "JSON object": '{"a": 1}\n',
                "JSON object, no newline": '{"a": 1}', "JSON list": "[1, 2]\n", "pretty JSON": '{\n "a": 1\n}\n',
                "records then text": '{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\nhello\n'}


@pytest.mark.parametrize("sub", ["run", "export", "trials"])
@pytest.mark.parametrize("case", list(NOT_JOURNALS))
def test_a_file_that_is_not_a_journal_is_named(case, sub, tmp_path, capsys):
    journal = tmp_path / "j.txt"
    journal.write_text(NOT_JOURNALS[case])
    _refused(_hpo_argv(sub, tmp_path, str(journal)), capsys, ["--storage:", "j.txt", "not an Optuna journal"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.txt"]
    assert journal.read_text() == NOT_JOURNALS[case]


def test_a_workdir_journal_that_is_not_one_names_workdir_and_a_directory_is_refused(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "hpo.journal").write_text("[]\n")
    _refused(_hpo_argv("trials", tmp_path, None), capsys, ["--workdir:", "hpo.journal", "not an Optuna journal"])
    _refused(_hpo_argv("export", tmp_path, str(tmp_path)), capsys, ["--storage:", "is a directory"])
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "b.json").exists()


def test_optuna_journals_pass_the_check_even_with_a_torn_last_line(tmp_path):
    import optuna

    from rismvdr.hpo.storage import check_storage, make_storage

    path = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=make_storage(str(path)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    check_storage(str(path))
    with open(path, "ab") as fh:
        fh.write(b'{"op_code":5,"worker_id":"w","tri')  # a writer stopped mid-line
    check_storage(str(path))
    assert len(optuna.load_study(study_name="s", storage=make_storage(str(path))).trials) == 2
    check_storage(str(tmp_path / "new.journal"))  # no file yet: fine, and none is created
    assert not (tmp_path / "new.journal").exists()
    with pytest.raises(ValueError, match=r"^--workdir: .*x\.txt.* not an Optuna journal"):
        (tmp_path / "x.txt").write_text("x\n")
        make_storage(str(tmp_path / "x.txt"), flag="--workdir")


# ------------------------------------------------------------------------------------------
# demo methods, plot snr
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, must", [
    (["--scenario", "nosuch"], ["--scenario:", "unknown 'nosuch'"]),
    (["--methods", "bartlett", "mvdr-sample"], ["--methods:", "'mvdr-sample'", "'seed'"]),
    (["--scenario", "ula15", "--methods", "learned"], ["--methods:", "'learned'", "'ula15'"]),
])
def test_demo_refuses_methods_and_scenarios_before_writing(argv, must, tmp_path, capsys):
    _refused(["demo", "--out", tmp_path / "demo", "--scenes", "2", *argv], capsys, must)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("argv, must", [
    (["demo", "--methods", "nosuch", "--out", "{tmp}/demo"], ["rismvdr demo: error:", "--methods", "'nosuch'"]),
    (["bench", "accuracy", "--methods", "nosuch", "--out", "{tmp}/b"], ["rismvdr bench accuracy: error:", "--methods"]),
    (["localize", "--out", "{tmp}/x.csv"], ["rismvdr localize: error:", "required: scenes"]),
    (["simulate", "--scenes", "many", "--out", "{tmp}/x.npz"], ["--scenes", "invalid int value: 'many'"]),
])
def test_flags_the_parser_refuses_are_one_line_too(argv, must, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(m in err for m in must) and "--help`" in err, err
    assert sorted(tmp_path.iterdir()) == []


EVALUATED = {"method": "m", "f1": 0.5, "per_snr_bin": {
    "[0,5)": {"f1": 0.5, "median_pos_err_m": 0.2, "rmse_phi_deg": None},
    "[5,10)": {"f1": 0.7, "median_pos_err_m": 0.1, "rmse_phi_deg": 0.4}}}
NO_CURVES = {
    "empty object": ({}, ["key 'per_snr_bin': missing"]),
    "a JSON list": ([1, 2], ["expected a JSON object, got list"]),
    "metrics without per-SNR bins": ({"method": "m", "f1": 0.5}, ["key 'per_snr_bin': missing"]),
    "no SNR bins": ({**EVALUATED, "per_snr_bin": {}}, ["key 'per_snr_bin': empty"]),
    "bins a list": ({**EVALUATED, "per_snr_bin": [1]}, ["key 'per_snr_bin'", "got list"]),
    "a bin key not [lo,hi)": ({**EVALUATED, "per_snr_bin": {"high": EVALUATED["per_snr_bin"]["[0,5)"]}},
                              ["bin 'high'"]),
    "a bin without f1": ({**EVALUATED, "per_snr_bin": {"[0,5)": {"median_pos_err_m": 1, "rmse_phi_deg": 1}}},
                         ["bin [0,5)", "'f1' missing"]),
    "f1 a string": ({**EVALUATED, "per_snr_bin": {"[0,5)": {"f1": "x", "median_pos_err_m": 1, "rmse_phi_deg": 1}}},
                    ["'f1' not a number"]),
    "a report with a method without bins": ({"methods": {"a": EVALUATED, "b": {"f1": 1}}},
                                            ["key 'methods.b.per_snr_bin': missing"]),
}


@pytest.mark.parametrize("case", list(NO_CURVES))
def test_plot_snr_without_the_per_snr_breakdown_is_refused(case, tmp_path, capsys):
    content, must = NO_CURVES[case]
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(EVALUATED))
    bad.write_text(json.dumps(content))
    _refused(["plot", "snr", good, bad, "--out", tmp_path / "p.png"], capsys, ["bad.json", *must])
    assert not (tmp_path / "p.png").exists()


def test_plot_snr_draws_evaluate_metrics_and_a_reports_methods(tmp_path, capsys):
    one, report = tmp_path / "one.json", tmp_path / "report.json"
    one.write_text(json.dumps(EVALUATED))
    report.write_text(json.dumps({"test_set": {}, "methods": {"a": EVALUATED, "b": EVALUATED}}))
    rc, line = _cli(["plot", "snr", one, report, one, "--out", tmp_path / "p.png"], capsys)
    assert rc == 0 and line == "" and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------
# learned-refiner with a model that has no refiner (simulates two seed scenes)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_scenes_and_backbone_only_model(tmp_path_factory):
    """Two seed scenes, and the shipped model exported without its refiner (what
    `export-model --backbone-only` of a `train` run gives)."""
    from rismvdr.localize.weights import default_weights_dir

    d = tmp_path_factory.mktemp("refiner")
    scenes = d / "scenes.npz"
    assert main(["simulate", "--scenes", "2", "--out", str(scenes)]) == 0
    model = d / "backbone_only"
    model.mkdir()
    shutil.copy(default_weights_dir() / "model.npz", model / "model.npz")
    record = json.loads((default_weights_dir() / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**record, "refiner": None, "n_refiner": 0}))
    return scenes, model


def test_weights_that_do_not_fit_their_model_are_one_line_and_write_nothing(
        seed_scenes_and_backbone_only_model, tmp_path, capsys):
    """An exported model whose arrays do not fit its recorded config is read without building the
    network (its definition is deferred); where the network is first built, the run stops with
    one line naming the array, and writes nothing."""
    from rismvdr.localize.weights import default_weights_dir

    scenes, _ = seed_scenes_and_backbone_only_model
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(default_weights_dir() / "model.json", model / "model.json")
    with np.load(default_weights_dir() / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["b0003"] = np.zeros(arrays["b0003"].shape + (2,), arrays["b0003"].dtype)
    np.savez(model / "model.npz", **arrays)
    out = tmp_path / "out"
    out.mkdir()
    _refused(["localize", scenes, "--out", out / "det.csv", "--method", "learned", "--checkpoint", model], capsys,
             ["weights: array 3 has shape", "the model expects"])
    assert sorted(out.iterdir()) == []


@pytest.mark.parametrize("command", ["localize", "plot scene"])
def test_learned_refiner_without_a_refiner_is_one_line_and_writes_nothing(
        command, seed_scenes_and_backbone_only_model, tmp_path, capsys):
    scenes, model = seed_scenes_and_backbone_only_model
    out, maps = tmp_path / ("det.csv" if command == "localize" else "p.png"), tmp_path / "maps.npz"
    argv = (["localize", scenes, "--out", out, "--maps-out", maps] if command == "localize"
            else ["plot", "scene", scenes, "--out", out])
    _refused(argv + ["--method", "learned-refiner", "--checkpoint", model], capsys, ["has no refiner", "learned"])
    assert sorted(tmp_path.iterdir()) == []
