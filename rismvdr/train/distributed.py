"""Several processes (`--distributed`): start JAX's multi-process runtime from the environment,
and turn a lost process into a bounded, one-line failure.

- `initialize` reads `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`
  and `JAX_PROCESS_ID` itself (JAX 0.10 reads only the address) and passes them to
  `jax.distributed.initialize`; with none of them set, JAX detects the cluster (Slurm, Open MPI,
  Kubernetes, TPU pods). The CPU collectives are gloo (JAX's CPU default since 0.4.3x, set here
  in case it is off), so a CPU-only run uses every process too.
- A lost process: JAX's coordination service marks it dead after `timeout_s` without a
  heartbeat and terminates the others; on the CPU a collective with a dead peer fails at once.
  The trainer turns that failure into `ProcessLostError` (one line, naming the step), the CLI
  prints it and leaves with `exit_now` (JAX's own shutdown barrier would wait for the dead
  process, then abort with a C++ stack trace). Where JAX itself terminates the process (the
  coordinator, process 0, was lost; a hung collective past the heartbeat timeout), it aborts
  with its own log; a small watcher process started by `initialize` then adds the one-line
  error on stderr (it prints unless the process ends through Python's exit or `exit_now`).

>>> is_main()  # one process: it is the main one
True
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import subprocess
import sys
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["ENV_VARS", "ProcessLostError", "initialize", "is_main", "process_summary", "lost_process_guard",
           "exit_now", "any_process"]

log = logging.getLogger(__name__)
#: The environment variables `initialize` reads (host:port of process 0, process count, this process's id).
ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# The watcher: reads its pipe until this process ends; prints argv[2] on stderr unless it read "ok".
_WATCHER = ("import os, sys\n"
            "fd = int(sys.argv[1]); data = b''\n"
            "while True:\n"
            "    chunk = os.read(fd, 64)\n"
            "    if not chunk: break\n"
            "    data += chunk\n"
            "if b'ok' not in data: os.write(2, sys.argv[2].encode() + b'\\n')\n")
_watch_fd: int | None = None


def _start_watcher(message: str) -> None:
    """Start the watcher process (see the module docstring) with the line it may print."""
    global _watch_fd
    r, w = os.pipe()
    subprocess.Popen([sys.executable, "-I", "-c", _WATCHER, str(r), message], pass_fds=(r,),
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
    os.close(r)
    _watch_fd = w
    atexit.register(_clean_exit)  # after JAX's own atexit handler was registered: runs before it


def _release_watcher() -> None:
    global _watch_fd
    if _watch_fd is not None:
        try:
            os.write(_watch_fd, b"ok")
            os.close(_watch_fd)
        except OSError:
            pass
        _watch_fd = None


def _clean_exit() -> None:
    """At Python's exit: JAX's shutdown barrier first (it may still abort), then release the watcher."""
    jax.distributed.shutdown()
    _release_watcher()


def exit_now(status: int) -> None:
    """Leave at once with `status` (after the caller printed its one-line error): no shutdown
    barrier with a lost process, no second message from the watcher."""
    sys.stdout.flush()
    sys.stderr.flush()
    _release_watcher()
    os._exit(status)


class ProcessLostError(RuntimeError):
    """A multi-process run broke off (another process was lost, or a collective failed)."""


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {text!r}") from None


def _settings_from_env() -> tuple[str | None, int | None, int | None]:
    """(coordinator address, process count, process id) from `ENV_VARS`, validated; all None
    when none is set (JAX then detects the cluster)."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = _env_int("JAX_NUM_PROCESSES")
    pid = _env_int("JAX_PROCESS_ID")
    given = [v is not None for v in (address, n, pid)]
    if any(given) and not all(given):
        missing = [name for name, g in zip(ENV_VARS, given) if not g]
        raise ValueError(f"{missing[0]}: not set (--distributed from the environment needs all of "
                         f"{', '.join(ENV_VARS)}, or none of them under Slurm/Open MPI)")
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"JAX_COORDINATOR_ADDRESS: expected host:port, got {address!r}")
        if n < 1:
            raise ValueError(f"JAX_NUM_PROCESSES: must be >= 1, got {n}")
        if not 0 <= pid < n:
            raise ValueError(f"JAX_PROCESS_ID: must lie in [0, {n - 1}] (JAX_NUM_PROCESSES={n}), got {pid}")
    return address, n, pid


def initialize(*, timeout_s: int = 100, command: str = "rismvdr",
               advice: str = "restart every process with --resume") -> None:
    """Join the multi-process run described by the environment (see the module docstring).

    Call it before anything touches a device (first thing in a command).

    Args:
      timeout_s: seconds process 0 waits for every process to connect, and seconds without a
        heartbeat after which a process counts as lost (the others then stop).
      command: how the one-line error of an aborted process starts (e.g. "rismvdr train").
      advice: what that line tells the user to do.

    Raises:
      ValueError: a malformed or partial `JAX_*` environment, or no cluster found.
    """
    if not (isinstance(timeout_s, int) and timeout_s >= 1):
        raise ValueError(f"timeout_s: expected whole seconds >= 1, got {timeout_s!r}")
    address, n, pid = _settings_from_env()
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    wanted = dict(initialization_timeout=timeout_s, heartbeat_timeout_seconds=timeout_s)
    accepted = inspect.signature(jax.distributed.initialize).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    who = "process" if pid is None else f"process {pid} of {n}"
    _start_watcher(f"{command}: error: {who} was terminated by JAX's distributed runtime (or killed): a "
                   f"process of the run was lost or did not join within {timeout_s} s; {advice}")
    try:
        jax.distributed.initialize(address, n, pid, **kwargs)
    except ValueError as err:  # JAX's "Number of processes must be defined." and the like
        raise ValueError(f"--distributed: {err} (set {', '.join(ENV_VARS)}, or run under Slurm/Open MPI)") from None
    log.info("%s", process_summary())


def is_main() -> bool:
    """Whether this is process 0, the one that writes logs, metrics and reports."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process (the same answer in every process: a small
    collective when there are several, so every process must call it at the same point; the
    trainer asks once a step whether a SIGTERM arrived anywhere, so all stop at the same step)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def process_summary() -> str:
    """'process i of n, k local devices (platform)'."""
    return (f"process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local "
            f"{jax.default_backend()} device(s) of {jax.device_count()}")


@contextlib.contextmanager
def lost_process_guard(where: Callable[[], str], *, advice: str = "restart every process with --resume",
                       keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """In a multi-process run, any error inside the block (a collective with a dead peer, a
    failed barrier) becomes a `ProcessLostError` whose one line names `where()` (e.g. the step),
    the original error's first line and `advice`; errors of the types in `keep` (e.g. a bad
    input every process sees alike) pass unchanged. A single process is left alone."""
    try:
        yield
    except (KeyboardInterrupt, ProcessLostError, *keep):
        raise
    except Exception as err:
        if jax.process_count() == 1:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ProcessLostError(
            f"{process_summary()}: the run broke off at {where()} ({first[:300]}); another process was "
            f"probably lost: {advice}") from err
