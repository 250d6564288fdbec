"""Exclusive directory locks: two trainers (or two HPO studies) never share a directory.

`rismvdr.io.lock.directory_lock` takes an OS lock the kernel releases when the holder exits,
also on SIGKILL: a second holder gets a one-line error naming the directory and the live holder;
after the holder is gone the directory is free again, whatever file it left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from rismvdr.configs.tiny import get_config
from rismvdr.io.lock import LOCK_NAME, DirectoryLockedError, directory_lock
from rismvdr.train.trainer import fit

HOLD = textwrap.dedent("""
    import sys, time
    from rismvdr.io.lock import directory_lock
    with directory_lock(sys.argv[1], "--workdir"):
        print("ready", flush=True)
        time.sleep(600)
""")


def test_a_second_holder_in_the_same_process_is_refused(tmp_path):
    with directory_lock(tmp_path / "run", "--workdir") as path:
        assert path.name == LOCK_NAME and path.exists()
        with pytest.raises(DirectoryLockedError, match=r"^--workdir: .*run is in use by process \d+ on "):
            with directory_lock(tmp_path / "run", "--workdir"):
                pass
    with directory_lock(tmp_path / "run", "--workdir"):  # released on leaving the block
        pass


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(DirectoryLockedError) as info:
            with directory_lock(tmp_path, "--workdir"):
                pass
        msg = str(info.value)
        assert f"process {proc.pid} on" in msg and "\n" not in msg
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no clean-up runs
        proc.wait(timeout=30)
        with directory_lock(tmp_path, "--workdir"):  # the stale lock file does not block
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fit_refuses_a_workdir_another_trainer_holds(tmp_path):
    """The lock is taken before anything is built or written: the held workdir stays as it was."""
    workdir = tmp_path / "run"
    with directory_lock(workdir, "--workdir"):
        before = sorted(p.name for p in workdir.iterdir())
        with pytest.raises(DirectoryLockedError, match="--workdir"):
            fit(get_config(), workdir, progress=False)
        assert sorted(p.name for p in workdir.iterdir()) == before
