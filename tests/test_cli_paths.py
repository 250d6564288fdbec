"""An output never overwrites an input or another output of the same command.

Every command compares each output path (resolved, symlinks followed) with every input path and
with its other outputs before any work: a one-line error naming both flags, exit status 2, and
every file as it was. Run in-process: the refusal comes before JAX loads or any file is read.
"""
from __future__ import annotations

import os

import pytest

from rismvdr.cli import main

#: (argv, the flag refused, the flag it collides with); paths relative to the test's directory.
CASES = [
    (["localize", "S.npz", "--out", "S.npz"], "--out", "SCENES"),
    (["localize", "S.npz", "--out", "d.csv", "--maps-out", "S.npz"], "--maps-out", "SCENES"),
    (["localize", "S.npz", "--out", "x", "--maps-out", "./x"], "--maps-out", "--out"),
    (["localize", "S.npz", "--out", "link.npz"], "--out", "SCENES"),
    (["localize", "S.npz", "--out", "sub/../S.npz"], "--out", "SCENES"),
    (["evaluate", "S.npz", "d.csv", "--out", "d.csv"], "--out", "DETECTIONS"),
    (["evaluate", "S.npz", "d.csv", "--out", "S.npz"], "--out", "SCENES"),
    (["evaluate", "S.npz", "d.csv", "--maps", "m.npz", "--out", "m.npz"], "--out", "--maps"),
    (["plot", "scene", "S.npz", "--out", "S.npz"], "--out", "SCENES"),
    (["plot", "scene", "S.npz", "--detections", "d.csv", "--out", "d.csv"], "--out", "--detections"),
    (["plot", "snr", "a.json", "b.json", "--out", "b.json"], "--out", "METRICS"),
    (["train", "--config", "c.py", "--workdir", "c.py"], "--workdir", None),
    (["export-model", "run", "--out", "run"], "--out", "WORKDIR"),
    (["hpo", "export", "--study", "s", "--storage", "j.journal", "--out", "j.journal"], "--out", "--storage"),
    (["hpo", "trials", "--study", "s", "--storage", "j.journal", "--out", "j.journal"], "--out", "--storage"),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("S.npz", "d.csv", "m.npz", "a.json", "b.json", "c.py", "j.journal"):
        (tmp_path / name).write_bytes(f"input {name}".encode())
    (tmp_path / "run").mkdir()
    (tmp_path / "sub").mkdir()
    os.symlink("S.npz", tmp_path / "link.npz")
    return tmp_path


def _snapshot(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv,flag,other", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_an_output_that_is_an_input_is_refused(files, argv, flag, other, capsys):
    before = _snapshot(files)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"error: {flag}: " in err
    if other is not None:
        assert f"same file as {other}" in err
    assert _snapshot(files) == before
