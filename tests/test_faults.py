"""Faults and bad input: every expected failure of the command line is one line on stderr naming
the flag or file and the problem, with exit status 2 and no traceback.

The CLI runs in-process (`rismvdr.cli.main`); every input here fails before any computation, so
the table runs in seconds. The slow tests at the end train a `tiny` run, damage its latest
checkpoint and resume it through the command line.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rismvdr.cli import main
from rismvdr.io import SceneFile, save_scenes

ROOT = Path(__file__).resolve().parents[1]
CSV_HEADER = "scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db\n"
CSV_ROW = "0,10,5,3,2.9,0.5,0.26,-1.5\n"


def _npy_bytes(header_shape, dtype, data: bytes) -> bytes:
    """A .npy member whose header declares `header_shape` but holds `data`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(header_shape)})
    return buf.getvalue() + data


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return path


def _good_members() -> dict[str, bytes]:
    """The arrays of a valid 2-scene RIS file (N = 4, M = 2, L = 3) as .npy members."""
    rng = np.random.default_rng(0)
    arrays = dict(
        wavelength=np.asarray(0.3),
        positions=np.stack([np.zeros(4), 0.15 * np.arange(4), np.zeros(4)], axis=1),
        y=(rng.normal(size=(2, 3, 2)) + 1j * rng.normal(size=(2, 3, 2))).astype(np.complex64),
        H=(rng.normal(size=(2, 4)) + 1j * rng.normal(size=(2, 4))).astype(np.complex64),
        codes=np.exp(1j * rng.uniform(0, 2 * np.pi, (3, 4))).astype(np.complex64),
        gt_phi=np.array([[0.2], [-0.1]]), gt_theta=np.array([[0.0], [0.1]]), gt_r=np.array([[3.0], [4.0]]),
    )
    out = {}
    for k, a in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, allow_pickle=False)
        out[k] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The good and bad input files of the table (no computation needed to make them)."""
    d = tmp_path_factory.mktemp("faults")
    good = _good_members()
    f = {"dir": d}
    f["scenes"] = _npz(d / "scenes.npz", good)
    f["huge_header"] = _npz(d / "huge.npz", {**good, "y": _npy_bytes((100_000, 1000, 200), np.complex64,
                                                                        good["y"][128:])})
    f["truncated_member"] = _npz(d / "trunc_member.npz", {**good, "y": good["y"][:-20]})
    pickled = io.BytesIO()
    np.lib.format.write_array(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["pickled"] = _npz(d / "pickled.npz", {**good, "meta": pickled.getvalue()})
    (d / "empty.npz").write_bytes(b"")
    f["empty"] = d / "empty.npz"
    (d / "text.npz").write_text("not an archive\n")
    f["text"] = d / "text.npz"
    f["cut_archive"] = d / "cut.npz"
    f["cut_archive"].write_bytes(f["scenes"].read_bytes()[:300])
    maps = io.BytesIO()
    np.savez(maps, power_db=np.zeros((2, 3, 4)), plane=np.zeros((2, 3, 4), np.int64),
             grid_phi=np.linspace(-1, 1, 5), grid_theta=np.linspace(-0.5, 0.5, 3), grid_r=np.array([1.0, 2.0]))
    f["maps_off_grid"] = d / "maps_off_grid.npz"
    f["maps_off_grid"].write_bytes(maps.getvalue())
    f["det"] = d / "det.csv"
    f["det"].write_text(CSV_HEADER + CSV_ROW)
    f["det_phi400"] = d / "det400.csv"
    f["det_phi400"].write_text(CSV_HEADER + CSV_ROW + CSV_ROW.replace("0,10,", "1,400,", 1))
    f["not_json"] = d / "metrics.json"
    f["not_json"].write_text("scene,phi\n1,2\n")
    f["a_file"] = d / "a_file"
    f["a_file"].write_text("x")
    f["bad_config"] = d / "bad_config.py"
    f["bad_config"].write_text("def get_config():\n    raise RuntimeError('boom in get_config')\n")
    f["bad_space"] = d / "bad_space.py"
    f["bad_space"].write_text("def get_space():\n    return {'optim.lr': ('float', 1e-3)}[None]\n")
    return f


def _out(f):
    return f["dir"] / "out.x"


# (argv with {name} placeholders for `files`, what the one line must contain)
BAD_INPUTS = {
    "scene header declares 149 GiB": (
        ["evaluate", "{huge_header}", "{det}", "--out", "{out}"], ["huge.npz", "key 'y'", "header declares", "GiB"]),
    "truncated .npy member": (
        ["evaluate", "{truncated_member}", "{det}", "--out", "{out}"], ["trunc_member.npz", "key 'y'", "truncated"]),
    "pickled member": (
        ["evaluate", "{pickled}", "{det}", "--out", "{out}"], ["pickled.npz", "key 'meta'", "pickled"]),
    "empty scene file": (["evaluate", "{empty}", "{det}", "--out", "{out}"], ["empty.npz", "empty file"]),
    "cut-off scene archive": (["evaluate", "{cut_archive}", "{det}", "--out", "{out}"], ["cut.npz", "not an .npz"]),
    "--maps empty": (["evaluate", "{scenes}", "{det}", "--out", "{out}", "--no-crb", "--maps", "{empty}"],
                     ["empty.npz", "empty file"]),
    "--maps not npz": (["evaluate", "{scenes}", "{det}", "--out", "{out}", "--no-crb", "--maps", "{text}"],
                       ["text.npz", "not an .npz archive"]),
    "--maps grid does not fit the map": (
        ["evaluate", "{scenes}", "{det}", "--out", "{out}", "--no-crb", "--maps", "{maps_off_grid}"],
        ["maps_off_grid.npz", "key 'power_db'", "does not fit the file's grid"]),
    "phi_deg=400 in a CSV": (["evaluate", "{scenes}", "{det_phi400}", "--out", "{out}", "--no-crb"],
                             ["det400.csv", "line 3", "phi_deg", "degrees", "400"]),
    "--gate-phi-deg -1": (["evaluate", "{scenes}", "{det}", "--out", "{out}", "--gate-phi-deg", "-1"],
                          ["--gate-phi-deg", "must be > 0 degrees, got -1"]),
    "--gate-r-m 0": (["evaluate", "{scenes}", "{det}", "--out", "{out}", "--gate-r-m", "0"],
                     ["--gate-r-m", "metres"]),
    "--mad-z nan": (["localize", "{scenes}", "--out", "{out}", "--threshold-mode", "mad", "--mad-z", "nan"],
                    ["--mad-z", "finite"]),
    "--residual-passes -1": (["localize", "{scenes}", "--out", "{out}", "--method", "learned", "--residual-passes", "-1"],
                             ["--residual-passes", ">= 0, got -1"]),
    "--threshold-db inf": (["localize", "{scenes}", "--out", "{out}", "--threshold-db", "inf"],
                           ["--threshold-db", "finite"]),
    "--r-range-m nan": (["localize", "{scenes}", "--out", "{out}", "--r-range-m", "0.5", "nan"],
                        ["--r-range-m", "finite"]),
    "--from-hpo not JSON": (["train", "--from-hpo", "{not_json}", "--workdir", "{dir}/w1"],
                            ["--from-hpo", "metrics.json", "not a JSON file"]),
    "plot snr of a non-JSON file": (["plot", "snr", "{not_json}", "--out", "{dir}/p.png"],
                                    ["metrics.json", "not a JSON file"]),
    "train --workdir is a file": (["train", "--config", "tiny", "--workdir", "{a_file}"],
                                  ["--workdir", "a_file", "is a file"]),
    "train --workdir under a file": (["train", "--config", "tiny", "--workdir", "{a_file}/run"],
                                     ["--workdir", "a_file", "is a file"]),
    "hpo --workdir is a file": (["hpo", "--config", "tiny", "--workdir", "{a_file}", "--trials", "1"],
                                ["--workdir", "is a file"]),
    "get_config() raises": (["train", "--config", "{bad_config}", "--workdir", "{dir}/w2"],
                            ["--config", "bad_config.py", "get_config() raised RuntimeError", "boom"]),
    "get_space() raises": (["hpo", "--config", "tiny", "--space", "{bad_space}", "--workdir", "{dir}/w3",
                            "--trials", "1"], ["--space", "bad_space.py", "get_space() raised KeyError"]),
    "--set k_min=x": (["simulate", "--scenes", "2", "--out", "{out}", "--set", "k_min=x"], ["k_min", "integer"]),
    "--out is a directory": (["localize", "{scenes}", "--out", "{dir}"], ["--out", "is a directory"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_flag_or_file_and_exit_2(case, files, capsys):
    argv, must = BAD_INPUTS[case]
    names = {**{k: str(v) for k, v in files.items()}, "out": str(_out(files))}
    rc = main([a.format(**names) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (case, captured.out, err)
    lines = [ln for ln in err.splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("rismvdr "), err
    assert "Traceback" not in err
    for text in must:
        assert text in lines[0], (text, lines[0])
    assert not _out(files).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("command", ["train", "hpo"])
def test_read_only_workdir_is_one_line(command, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        argv = [command, "--config", "tiny", "--workdir", str(ro / "run")] + (["--trials", "1"] if command == "hpo" else [])
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--workdir" in err and "not writable" in err
    finally:
        ro.chmod(0o700)


def test_csv_with_a_byte_order_mark_is_read(files, tmp_path):
    from rismvdr.io import read_detections_csv

    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (CSV_HEADER + CSV_ROW).encode())
    det = read_detections_csv(bom, n_scenes=2)
    assert det.valid.sum() == 1 and np.degrees(det.phi[0, 0]) == pytest.approx(10.0)


def test_sigterm_leaves_no_temporary_file_and_exits_143(tmp_path):
    """SIGTERM while a command writes its output: the temporary file is removed, the target
    is untouched, the status is 128 + 15 and the message one line."""
    out = tmp_path / "det.csv"
    out.write_text("old\n")
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import rismvdr.cli as cli
        import rismvdr.cli.localize as loc
        from rismvdr.io import atomic_write, replaced_together

        def cmd(args):  # a localize that is killed while writing its CSV
            with replaced_together():
                with atomic_write(args.out) as f:
                    f.write("partial")
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(30)
            return 0

        loc.run = cmd
        loc.check = lambda args: None  # no scene file: the command above reads none
        sys.exit(cli.main(["--no-compile-cache", "localize", "x.npz", "--out", {str(out)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "terminated"
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.csv"]


# ------------------------------------------------------------------------------------------
# A damaged latest checkpoint, through the command line (slow: trains a tiny run)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`rismvdr train --config tiny` with checkpoints at steps 3, 6, 9, 12 (all kept)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--config", "tiny", "--workdir", str(run), "--set", "steps=12", "--set", "keep_best=4",
                 "--set", "val_peak_scenes=2", "--set", "val_scenes=4", "-q"]) == 0
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [3, 6, 9, 12]
    return run


def _metrics_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _largest_data_files(step_dir):
    """The largest OCDBT data file in each data folder of the state (`state/d/` holds Orbax's
    merged copy, `state/ocdbt.process_0/d/` the process's; a restore reads one of them)."""
    state = step_dir / "state"
    return [max(d.iterdir(), key=lambda f: f.stat().st_size)
            for d in (state / "d", state / "ocdbt.process_0" / "d") if d.is_dir() and any(d.iterdir())]


DAMAGE = {
    "largest ocdbt data file deleted": lambda s: [f.unlink() for f in _largest_data_files(s)],
    "_METADATA deleted": lambda s: (s / "state" / "_METADATA").unlink(),
    "commit marker deleted": lambda s: (s / "commit_success.txt").unlink(),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(DAMAGE))
def test_resume_and_localize_fall_back_past_a_damaged_latest_checkpoint(tiny_run, tmp_path, capsys, caplog, how):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    DAMAGE[how](run / "checkpoints" / "12")
    # metrics.jsonl as a SIGKILL after step 12 leaves it: rows of steps 10-12 that the resumed run logs again
    before = _metrics_rows(run)
    assert max(r["step"] for r in before) == 12
    # `localize --checkpoint-step latest` uses step 9, with a warning naming step 12
    from rismvdr.localize.weights import load_learned

    assert load_learned(run, step="latest").info["metrics"]["val/objective"] == next(
        r["val/objective"] for r in before if r["step"] == 9 and "val/objective" in r)
    caplog.clear()
    with caplog.at_level("WARNING"):
        rc = main(["train", "--resume", "--workdir", str(run), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint step 12 ")]
    assert len(warned) == 1 and "is damaged or unfinished" in warned[0] and "\n" not in warned[0], warned
    assert any("deleting damaged checkpoint step 12" in r.getMessage() for r in caplog.records)
    after = _metrics_rows(run)
    keys = [(r["step"], "val/objective" in r or "val/cov" in r) for r in after]
    assert len(keys) == len(set(keys)), "metrics.jsonl repeats steps after the resume"
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [3, 6, 9, 12]
    # resumed exactly: step 12's validation equals the undamaged run's
    assert [r for r in after if r["step"] == 12 and "val/objective" in r] == [
        r for r in before if r["step"] == 12 and "val/objective" in r]


def test_resume_drops_the_metrics_rows_it_will_log_again(tmp_path):
    """metrics.jsonl after a SIGKILL at step 11 of a run checkpointed at 9: the rows of steps
    10-11 (and a half-written last line) go; training and validation rows up to 9 stay."""
    from rismvdr.train.trainer import _drop_metrics_after

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 12)] + [{"step": 9, "val/objective": 3.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 12, "lo')
    _drop_metrics_after(path, 9)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept == [r for r in rows if r["step"] <= 9]
    _drop_metrics_after(path, 9)  # nothing to drop: unchanged
    assert [json.loads(line) for line in path.read_text().splitlines()] == kept
    _drop_metrics_after(tmp_path / "absent.jsonl", 3)  # no file: nothing happens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
