"""Atomic writes: a crash never leaves a half-written file.

Every writer of `rismvdr.io` (and the reports, plots and model records elsewhere) goes through
`atomic_write`: the content goes to a temporary file beside the target, which is flushed,
synced and renamed onto the target in one step. `replaced_together` renames several targets
at the end of one block; `remove_stale_temporaries` clears what a killed writer left behind;
`check_output_file` and `check_output_dir` check an output path before any work is done.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from rismvdr.io.runtime import _at_forced_exit, _sigterm_held

__all__ = [
    "atomic_write",
    "replaced_together",
    "remove_stale_temporaries",
    "check_output_file",
    "check_output_dir",
]

log = logging.getLogger(__name__)

_HOST = "".join(c for c in socket.gethostname() if c.isalnum())[:32] or "host"
_LEGACY_TMP_AGE_S = 600.0  # a temporary file without a writer id is stale after this long
_group = threading.local()  # the open `replaced_together` block of this thread, if any
_in_flight: set[str] = set()  # temporary files of this process not yet renamed or removed
_in_flight_lock = threading.Lock()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # portable fallback (briefly changes the process umask)
    os.umask(mask)
    return mask


def check_output_file(path, flag: str) -> None:
    """Check, before any work, that `path` can become an output file (what `atomic_write` needs).

    Raises:
      ValueError: naming `flag`: `path` is a directory, its folder does not exist or is not a
        folder, or the folder is not writable.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag}: {path!r} is a directory, expected a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}: the folder {folder!r} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: the folder {folder!r} is not writable")


def check_output_dir(path, flag: str) -> None:
    """Check, before any work, that `path` can be (or become) an output directory.

    Raises:
      ValueError: naming `flag`: `path` is an existing file, is not writable, or would be
        created under a file or an unwritable folder.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}: {path!r} is a file, expected a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag}: cannot create {path!r}: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing!r} is not writable"
        raise ValueError(f"{flag}: {path!r} {what}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process), or we cannot tell: keep its file
    return True


def remove_stale_temporaries(path) -> list[str]:
    """Remove the temporary files an earlier, killed writer of `path` left beside it.

    `atomic_write` names its temporary `.<name>.<host>.<pid>.<random>.tmp`; one whose writer ran
    on this host and is gone is removed (a live writer's, or another host's, is kept). A
    `.<name>.<random>.tmp` of an older rismvdr (no writer id) is removed once it is more than
    ten minutes old.

    Returns:
      the paths removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix): -len(".tmp")].split(".")
        full = os.path.join(directory, name)
        if len(parts) == 3 and parts[1].isdigit():
            stale = parts[0] == _HOST and not _pid_alive(int(parts[1]))
        else:
            try:
                stale = len(parts) == 1 and now - os.stat(full).st_mtime > _LEGACY_TMP_AGE_S
            except OSError:
                stale = False
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(full)
                removed.append(full)
                log.info("removed %s, left by a killed writer of %s", full, path)
    return removed


def _track(tmp: str) -> None:
    with _in_flight_lock:
        _in_flight.add(tmp)


def _untrack(tmp: str) -> None:
    with _in_flight_lock:
        _in_flight.discard(tmp)


def _remove_in_flight() -> None:
    """Remove every temporary file this process is writing (the SIGTERM watchdog's cleanup,
    run from its thread just before the process ends)."""
    locked = _in_flight_lock.acquire(timeout=1.0)  # (a snapshot of the set without it, at worst)
    try:
        paths = list(_in_flight)
    finally:
        if locked:
            _in_flight_lock.release()
    for tmp in paths:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


_at_forced_exit(_remove_in_flight)


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    _untrack(tmp)


@contextlib.contextmanager
def replaced_together() -> Iterator[None]:
    """Replace every file `atomic_write` writes inside the block together, when it ends.

    Each target's temporary file is written and synced as usual, but none is renamed onto its
    target until the block ends without error; then all are renamed, one right after the
    other. An error (or a signal, see `sigterm_raises`) inside the block removes every
    temporary file and leaves every target as it was. Used by `rismvdr localize` for the
    detections CSV and the maps file of one run.
    """
    if getattr(_group, "pending", None) is not None:
        yield  # nested: the outer block replaces everything
        return
    pending: list[tuple[str, str]] = []
    _group.pending = pending
    try:
        yield
    except BaseException:
        _group.pending = None
        for tmp, _ in pending:
            _discard(tmp)
        raise
    _group.pending = None
    with _sigterm_held():  # no SIGTERM between the renames (delivered right after them)
        for i, (tmp, path) in enumerate(pending):
            try:
                os.replace(tmp, path)
            except BaseException:
                for later, _ in pending[i:]:
                    _discard(later)
                done = [p for _, p in pending[:i]]
                if done:
                    log.error("%s not replaced, but %s already were: it is stale", path, ", ".join(done))
                raise
            _untrack(tmp)


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None) -> Iterator[Any]:
    """Open a temporary file beside `path`; on success move it onto `path` in one step.

    The temporary file lives in the target's directory (so `os.replace` is atomic), is named
    `.<name>.<host>.<pid>.<random>.tmp`, is flushed and fsynced before the rename, and is
    deleted if the body raises (SIGTERM too, inside `sigterm_raises`, whose watchdog also
    deletes it when the main thread is blocked): `path` is then untouched (absent, or its
    previous content). Temporary files of `path` left by a killed writer are removed first
    (`remove_stale_temporaries`). Inside `replaced_together` the rename waits for the end of
    that block. A new file gets the usual `0o666 & ~umask` permissions; a replaced file keeps
    its permissions.

    Args:
      path: target file.
      mode: `"w"` (text) or `"wb"` (binary, e.g. `.npz`, `fig.savefig(f, format="png")`).
      encoding: text encoding (text mode only).
      newline: passed to `open` in text mode (`""` for the `csv` module).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")
    >>> with atomic_write(p) as f:
    ...     _ = f.write("hello")
    >>> open(p).read()
    'hello'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{_HOST}.{os.getpid()}.", suffix=".tmp",
                               dir=directory)
    _track(tmp)
    try:
        try:
            if "b" in mode:
                f = os.fdopen(fd, mode)
            else:
                f = os.fdopen(fd, mode, encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            perm = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            perm = 0o666 & ~_umask()
        os.chmod(tmp, perm)
        pending = getattr(_group, "pending", None)
        if pending is not None:
            pending.append((tmp, path))  # renamed with the others at the end of replaced_together
        else:
            os.replace(tmp, path)
            _untrack(tmp)
    except BaseException:
        _discard(tmp)
        raise
