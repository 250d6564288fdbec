"""Exclusive locks on the directories a command owns: a training run's workdir, an HPO study's
directory.

Two trainers started on one workdir would both pass the "already holds checkpoints" check and
interleave their rows in one `metrics.jsonl`. `directory_lock` takes an OS file lock
(`fcntl.flock`, exclusive, non-blocking) on `<directory>/.lock` for as long as the command runs.
The kernel releases it when the process exits, also on a crash or `kill -9`, so a stale lock file
never blocks a later run: only a live holder does. The file holds the holder's process id and
host, which the second command names in its one-line error.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "DirectoryLockedError", "directory_lock"]

#: Name of the lock file inside a locked directory.
LOCK_NAME = ".lock"


class DirectoryLockedError(ValueError):
    """The directory is locked by another live process (a one-line message naming both)."""


def _holder(fd: int) -> str:
    """What the lock file says of its holder ("process 123 on host"), or "another process"."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 256).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, flag: str) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (created if missing) for the `with` block.

    Args:
      directory: the directory to lock.
      flag: the command-line flag that named it, for the error message (e.g. `--workdir`).

    Yields:
      The lock file's path.

    Raises:
      DirectoryLockedError: another live process holds the lock (its process id and host named).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DirectoryLockedError(f"{flag}: {d} is in use by {_holder(fd)}; wait for it to finish "
                                       "or choose another directory") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
