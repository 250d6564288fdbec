"""The process around a command: SIGTERM handling and the persistent compilation cache.

SIGTERM: inside `sigterm_raises`, SIGTERM raises `Terminated` in the main thread, so cleanup
code runs (`atomic_write` removes its temporary file) and the command line exits with status
143 (128 + 15). A main thread blocked inside C code (a JAX `device_get` waiting on a program
that never finishes, any native call that never returns) never runs a Python signal handler:
a watchdog thread then removes the temporary files `atomic_write` has in flight and ends the
process with status 143 when the handler has not run `SIGTERM_GRACE_S` seconds after the signal.

Compiled programs: `enable_compile_cache` keeps XLA executables in a directory (per user by
default, `compile_cache_dir`), so a second run with the same shapes does not compile again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


__all__ = [
    "Terminated",
    "sigterm_raises",
    "SIGTERM_GRACE_S",
    "CACHE_DIR_ENV",
    "COMPILE_CACHE_ENV",
    "PROGRAM_STORE_NAME",
    "compile_cache_dir",
    "enable_compile_cache",
    "enable_default_compile_cache",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# SIGTERM
# --------------------------------------------------------------------------------------------

#: Seconds the main thread has, inside `sigterm_raises`, to answer SIGTERM (run its handler)
#: before the watchdog ends the process with status 143.
SIGTERM_GRACE_S = 3.0
_FORCED_EXIT_STATUS = 128 + int(signal.SIGTERM)
_STOP = b"\0"  # written to the watchdog's socket to end it (no signal has number 0)
_forced_exit_cleanups: list[Callable[[], object]] = []
_RECOUNT_S = 0.25  # while a SIGTERM is pending, the watchdog renews its count of answers this often
_answered = 0  # SIGTERMs `_raise_terminated` has answered (written by the main thread only)
_watchdog_running = False  # read and written by the main thread only
_held = 0  # depth of `_sigterm_held` blocks in the main thread
_held_signum: int | None = None  # a SIGTERM that arrived inside them


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM inside `sigterm_raises`: unwinds like Ctrl-C, so
    `atomic_write` removes its temporary file."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises `Terminated` (a `KeyboardInterrupt`) in the main thread,
    so cleanup code runs (`atomic_write` removes its temporary file) instead of the process
    vanishing. The previous handler is restored at the end; outside the main thread this does
    nothing. A handler installed inside the block (the trainer's) takes precedence while set.

    A main thread blocked inside C code cannot run the handler. A watchdog thread hears the
    signal too (through `signal.set_wakeup_fd`): when the handler has not run
    `SIGTERM_GRACE_S` seconds after a SIGTERM, it removes every temporary file `atomic_write`
    has in flight and ends the process with status 143 (`os._exit`: no other cleanup runs,
    buffered output is lost). Once the handler has run the process stops the usual way, at its
    own pace; a second SIGTERM is watched again. The watchdog stays out of the way while a
    handler installed inside the block is set. The previous wakeup fd is restored at the end
    (meanwhile it gets every byte the watchdog receives).
    """
    try:
        old = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        with _sigterm_watchdog():
            yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_terminated(signum, frame):
    global _answered, _held_signum
    _answered += 1
    if _held:
        _held_signum = signum  # raised at the end of `_sigterm_held`
        return
    raise Terminated(signum)


def _at_forced_exit(cleanup: Callable[[], object]) -> None:
    """Call `cleanup()` from the watchdog thread just before it ends the process."""
    _forced_exit_cleanups.append(cleanup)


@contextlib.contextmanager
def _sigterm_watchdog() -> Iterator[None]:
    """Run the watchdog thread for the block (one: a nested block relies on the outer one's)."""
    global _watchdog_running
    if _watchdog_running or not hasattr(signal, "set_wakeup_fd"):
        yield
        return
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    answered = _answered  # before any signal can reach the socket
    try:
        old_fd = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # no wakeup fd here: the handler alone
        receiver.close()
        sender.close()
        yield
        return
    thread = threading.Thread(target=_watch, args=(receiver, old_fd, answered), name="rismvdr-sigterm-watchdog",
                              daemon=True)
    thread.start()
    _watchdog_running = True
    try:
        yield
    finally:
        _watchdog_running = False
        signal.set_wakeup_fd(old_fd)
        with contextlib.suppress(OSError):
            sender.send(_STOP)
        thread.join(timeout=1.0)
        receiver.close()
        sender.close()


def _watch(receiver: socket.socket, forward_fd: int, answered: int) -> None:
    """The watchdog thread: read signal numbers from `receiver`; end the process when a SIGTERM
    stays unanswered by `_raise_terminated` for `SIGTERM_GRACE_S` seconds.

    `answered` is a count of answers given before any signal still unread was sent. It is
    renewed only while nothing is unread: the count is read first, the socket found empty
    second, so a signal answered before the count was read had been read already. A signal's
    byte is written before its handler runs, so a new SIGTERM counts as answered once the
    count exceeds the value held when its byte was read. While a SIGTERM is pending the count
    is renewed every `_RECOUNT_S` seconds, so that a later one is judged on its own.
    """
    deadline = baseline = None
    try:
        while True:
            count = _answered
            if not select.select([receiver], [], [], 0)[0]:
                answered = count
            if deadline is not None and time.monotonic() >= deadline:
                if _answered <= baseline:
                    _forced_exit()
                deadline = None
            timeout = None if deadline is None else min(_RECOUNT_S, max(0.0, deadline - time.monotonic()))
            if not select.select([receiver], [], [], timeout)[0]:
                continue
            data = receiver.recv(4096)
            signals = data.split(_STOP)[0]
            if signals and forward_fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(forward_fd, signals)
            if not data or _STOP in data:
                return
            if (int(signal.SIGTERM) in signals and (deadline is None or _answered > baseline)
                    and signal.getsignal(signal.SIGTERM) is _raise_terminated):
                deadline, baseline = time.monotonic() + SIGTERM_GRACE_S, answered
    except (OSError, ValueError):  # the socket was closed under us: the block has ended
        return


def _forced_exit() -> None:
    for cleanup in list(_forced_exit_cleanups):
        with contextlib.suppress(Exception):
            cleanup()
    message = (f"terminated (SIGTERM unanswered for {SIGTERM_GRACE_S:g} s: the main thread is blocked; "
               f"ended by the watchdog)\n")
    with contextlib.suppress(OSError):
        os.write(2, message.encode())  # not sys.stderr: the blocked main thread may hold its lock
    os._exit(_FORCED_EXIT_STATUS)


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """Hold SIGTERM back for the block (a few renames): it takes effect right after the block.

    SIGTERM is blocked in this thread, which holds back its default action. In a process with
    other threads the signal reaches one of them instead and its Python handler still runs in
    the main thread: inside `sigterm_raises` that handler then only records the signal, and
    `Terminated` is raised when the block ends.
    """
    global _held, _held_signum
    main = threading.current_thread() is threading.main_thread()
    blocked = _block_sigterm()
    if main:
        _held += 1
    try:
        yield
    finally:
        if main:
            _held -= 1
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a pending one acts here
        if main and not _held and _held_signum is not None:
            signum, _held_signum = _held_signum, None
            raise Terminated(signum)


def _block_sigterm() -> bool:
    """Block SIGTERM in this thread; True when it was not blocked before (unblock it later)."""
    if not hasattr(signal, "pthread_sigmask"):
        return False
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except (OSError, ValueError):
        return False
    return signal.SIGTERM not in before  # unblock afterwards only what was blocked here


# --------------------------------------------------------------------------------------------
# Persistent compilation cache
# --------------------------------------------------------------------------------------------

#: Environment variable: the directory of the command line's compilation cache.
CACHE_DIR_ENV = "RISMVDR_CACHE_DIR"
#: Environment variable: `0` (or `false`, `no`, `off`) turns the command line's cache off.
COMPILE_CACHE_ENV = "RISMVDR_COMPILE_CACHE"
#: The folder of traced programs inside a compilation cache directory (`enable_compile_cache`).
PROGRAM_STORE_NAME = "rismvdr-programs"


def compile_cache_dir() -> Path:
    """The per-user directory of compiled XLA programs: `$RISMVDR_CACHE_DIR` if set, else
    `$XDG_CACHE_HOME/rismvdr/jax`, else `~/.cache/rismvdr/jax`."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rismvdr" / "jax"


def enable_compile_cache(path: str | os.PathLike | None, *, min_compile_time_s: float | None = None) -> None:
    """Use a persistent XLA compilation cache in `path` (None: leave JAX's setting alone).

    A program compiled once (same shapes, same code, same jax version) is then loaded from
    `path` by later runs and by other processes instead of being compiled again (seconds to
    minutes per program). Takes effect even if this process has compiled already.

    Args:
      path: cache directory (created if missing), or None.
      min_compile_time_s: programs that compiled faster are not written (None: JAX's setting,
        1 s by default; 0 writes every program, with no size threshold either).
    """
    if path is None:
        return
    import jax  # deferred: the signal handling here, used before any work, loads no JAX
    from jax.experimental.compilation_cache import compilation_cache  # deferred: as above

    from rismvdr.programs import enable_program_store  # deferred: loads JAX, as above

    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    if min_compile_time_s is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
        if min_compile_time_s == 0:
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()
    enable_program_store(Path(path) / PROGRAM_STORE_NAME)


def enable_default_compile_cache() -> Path | None:
    """Turn on the per-user compilation cache (`compile_cache_dir`) for every program.

    Off (returns None, JAX untouched) when `$RISMVDR_COMPILE_CACHE` is `0`, `false`, `no` or
    `off`; also when `$RISMVDR_CACHE_DIR` is unset and JAX already has a cache directory (from
    `JAX_COMPILATION_CACHE_DIR`, or set by the program that calls rismvdr): that choice stands.

    A directory that cannot be created or written (a read-only home, say) is not an error: a
    one-line warning names it and the command runs without the cache.

    Returns:
      the cache directory now in use, or None.
    """
    import jax  # deferred: the signal handling here, used before any work, loads no JAX

    if os.environ.get(COMPILE_CACHE_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not os.environ.get(CACHE_DIR_ENV) and jax.config.jax_compilation_cache_dir is not None:
        return None
    path = compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        log.warning("compilation cache %s is not writable (%s); running without it", path, e.strerror or e)
        return None
    enable_compile_cache(path, min_compile_time_s=0.0)
    return path
