"""SIGTERM inside `sigterm_raises`: the process ends with status 143 and leaves no temporary file,
whether its main thread answers the signal (`Terminated` unwinds the stack) or is blocked inside
C code, where only the watchdog thread can end it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rismvdr.io import Terminated, atomic_write, replaced_together, runtime, sigterm_raises

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")

WATCHDOG = "rismvdr-sigterm-watchdog"


def _start(script: str) -> subprocess.Popen:
    """Run `script` in a fresh interpreter; return once it has printed `ready`."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the child did not get ready ({line!r}): {err}")
    return proc


def _terminate(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, float, str]:
    """SIGTERM the child; (status, seconds until it ended, stderr)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {timeout:g} s after SIGTERM")
    return proc.returncode, time.monotonic() - t0, err


def test_sigterm_while_the_main_thread_is_blocked_in_c_code_ends_the_process(tmp_path):
    """The main thread waits forever on a mutex it holds (ctypes releases the GIL, and a mutex
    wait does not return on a signal), so its Python handler never runs: the watchdog removes
    the temporary file and ends the process with 143 (not -15) after the grace period.

    `ready` comes from a second thread once the main thread waits inside the second lock (a
    glibc mutex word is 2 while a thread waits on it): that thread runs while the main thread
    is blocked, as the watchdog must, and the signal cannot arrive before the wait begins.
    """
    target = tmp_path / "det.csv"
    target.write_text("old\n")
    proc = _start(f"""
        import ctypes, sys, threading, time
        from rismvdr.io import Terminated, atomic_write, sigterm_raises

        libc = ctypes.CDLL(None)
        mutex = ctypes.create_string_buffer(64)  # all zeros: a default (non-recursive) pthread mutex
        word = ctypes.c_int.from_buffer(mutex)

        def announce():
            deadline = time.monotonic() + 5.0
            while word.value != 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            print("ready", flush=True)

        try:
            with sigterm_raises():
                with atomic_write({str(target)!r}) as f:
                    f.write("partial")
                    f.flush()
                    libc.pthread_mutex_lock(mutex)
                    threading.Thread(target=announce, daemon=True).start()
                    libc.pthread_mutex_lock(mutex)  # locks it again: waits forever, whatever the signals
        except Terminated:
            sys.exit(99)  # the handler ran: the main thread was not blocked yet
    """)
    left = [p.name for p in tmp_path.iterdir() if p.name != "det.csv"]
    assert len(left) == 1 and left[0].startswith(".det.csv.") and left[0].endswith(".tmp")
    status, seconds, err = _terminate(proc)
    assert status == 143, (status, err)
    assert runtime.SIGTERM_GRACE_S - 0.5 < seconds < 10.0
    assert "watchdog" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.csv"]
    assert target.read_text() == "old\n"


def test_sigterm_answered_by_the_main_thread_ends_the_usual_way(tmp_path):
    """A main thread that runs the handler unwinds through `Terminated` (status 143 from the
    caller, as the command line does), at its own pace: a cleanup that outlasts the grace
    period is not cut short by the watchdog."""
    target = tmp_path / "det.csv"
    target.write_text("old\n")
    proc = _start(f"""
        import sys, time
        from rismvdr.io import Terminated, atomic_write, replaced_together, runtime, sigterm_raises

        runtime.SIGTERM_GRACE_S = 0.3
        try:
            with sigterm_raises():
                try:
                    with atomic_write({str(target)!r}) as f:
                        f.write("partial")
                        print("ready", flush=True)
                        time.sleep(60)
                finally:
                    time.sleep(1.0)  # a slow cleanup, after the handler has answered
                    print("cleaned up", file=sys.stderr, flush=True)
        except Terminated as e:
            print("terminated", file=sys.stderr)
            sys.exit(128 + e.signum)
    """)
    status, seconds, err = _terminate(proc)
    assert status == 143, (status, err)
    assert err.strip().splitlines()[-2:] == ["cleaned up", "terminated"], err
    assert "watchdog" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.csv"]
    assert target.read_text() == "old\n"


def test_the_wakeup_fd_and_the_handler_are_restored_and_the_watchdog_stops(tmp_path):
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    receiver.setblocking(False)
    old_fd = signal.set_wakeup_fd(sender.fileno())
    old_handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Terminated):
            with sigterm_raises():
                with sigterm_raises():  # nested: still one watchdog
                    assert [t.name for t in threading.enumerate()].count(WATCHDOG) == 1
                    with atomic_write(tmp_path / "x.txt") as f:
                        f.write("partial")
                        os.kill(os.getpid(), signal.SIGTERM)
                        time.sleep(30)  # (interrupted: the handler raises)
        assert WATCHDOG not in [t.name for t in threading.enumerate()]
        assert signal.getsignal(signal.SIGTERM) is old_handler
        assert os.listdir(tmp_path) == []
        assert int(signal.SIGTERM) in receiver.recv(64)  # the previous wakeup fd heard the signal too
    finally:
        assert signal.set_wakeup_fd(old_fd) == sender.fileno()  # it was back in place
        receiver.close()
        sender.close()


def test_a_handler_installed_inside_the_block_keeps_its_own_way_of_stopping(monkeypatch):
    """The trainer installs its own SIGTERM handler (a flag checked at the next step); the
    watchdog must not end the process while that handler is set."""
    monkeypatch.setattr(runtime, "SIGTERM_GRACE_S", 0.2)
    got = []
    with sigterm_raises():
        old = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.8)  # well past the grace period: still here
        finally:
            signal.signal(signal.SIGTERM, old)
    assert got == [signal.SIGTERM]


def test_sigterm_during_the_renames_of_replaced_together_waits_for_the_last(tmp_path, monkeypatch):
    """A SIGTERM sent from another thread after the first of two renames: both targets are
    replaced, then `Terminated` is raised (the signal mask of the main thread alone would not
    hold it back: another thread takes the signal and the handler runs in the main thread)."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    real_replace = os.replace

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if os.fspath(dst) == os.fspath(a):
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            sender.start()
            sender.join()
            time.sleep(0.2)  # time for the signal to reach a thread

    monkeypatch.setattr(os, "replace", replace_then_signal)
    with pytest.raises(Terminated):
        with sigterm_raises():
            with replaced_together():
                for path in (a, b):
                    with atomic_write(path) as f:
                        f.write("new")
    assert a.read_text() == "new" and b.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]
