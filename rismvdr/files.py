"""Files of SPEC section 8: scene files (`.npz`), detections (`.csv`), reports (`.json`).

Scene file keys (`np.savez`, read back with `allow_pickle=False`, so opening one never runs
code). S scenes, L snapshots, M measurements per snapshot, N surface elements:

| key | dtype, shape | meaning |
|---|---|---|
| `wavelength` | float64 scalar | metres, > 0 |
| `positions` | float64 `[N, 3]` | element positions, metres, array frame (SPEC section 1) |
| `y` | complex64 `[S, L, M]` | measurements (M = N in full-array mode) |
| `H` | complex64 `[S, M, N]` or `[M, N]` | channel (one per scene, or shared); absent in full-array mode |
| `codes` | complex64 `[S, L, N]` or `[L, N]` | unit-modulus RIS codes; absent in full-array mode |
| `noise_var` | float64 `[S]` | optional, sigma^2 (linear) |
| `gt_phi`, `gt_theta` | float64 `[S, Kmax]` | optional truth, radians, NaN-padded |
| `gt_r` | float64 `[S, Kmax]` | optional truth, metres, NaN-padded |
| `gt_power` | float64 `[S, Kmax]` | optional truth, linear, NaN-padded (needs the three above) |
| `snr_db` | float64 `[S]` | extension, optional: the SNR the simulator was asked for, dB |
| `meta` | str scalar (`<U`) | extension, optional: a JSON object (scenario name, seed, ...) |

`H` and `codes` come together (RIS mode) or not at all (full-array mode). A truth slot is a
source in all of `gt_phi`/`gt_theta`/`gt_r` (and `gt_power` when present) or NaN in all of them.
Complex keys may be complex128 in a user's file (read as complex64); real keys may be float32
or integer (read as float64). Unknown keys are ignored with a warning. A malformed file raises
`SceneFileError` with a one-line message `"{path}: key '{key}': {problem}"`.

Detections file: columns `scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db`, one row a
detection, `scene` the 0-based scene index, `(x, y, z) = r [cos th cos phi, cos th sin phi,
sin th]`. Maps file (`localize --maps-out`): `.npz` with `MAP_KEYS`. Every writer here goes
through `atomic_write`: a crash never leaves a half-written file.

Compiled programs: `enable_compile_cache` keeps XLA executables in a directory (per user by
default, `compile_cache_dir`), so a second run with the same shapes does not compile again.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from rismvdr.localize.detect import Detections
from rismvdr.physics.geometry import from_positions
from rismvdr.physics.scenarios import SceneConfig
from rismvdr.physics.simulate import Scene, truth_covariance
from rismvdr.physics.spectra import Grid
from rismvdr.physics.steering import steering

__all__ = [
    "SCENE_KEYS",
    "DETECTION_COLUMNS",
    "SceneFileError",
    "DetectionsFileError",
    "SceneFile",
    "scene_file_from_scenes",
    "scenes_from_file",
    "scenario_from_meta",
    "MAP_KEYS",
    "write_maps",
    "read_maps",
    "save_scenes",
    "load_scenes",
    "write_detections_csv",
    "read_detections_csv",
    "write_json",
    "read_json",
    "to_jsonable",
    "atomic_write",
    "replaced_together",
    "remove_stale_temporaries",
    "sigterm_raises",
    "Terminated",
    "check_output_file",
    "check_output_dir",
    "CACHE_DIR_ENV",
    "COMPILE_CACHE_ENV",
    "compile_cache_dir",
    "enable_compile_cache",
    "enable_default_compile_cache",
]

log = logging.getLogger(__name__)

_REQUIRED = ("wavelength", "positions", "y")
_COMPLEX = ("y", "H", "codes")
_TRUTH_LOC = ("gt_phi", "gt_theta", "gt_r")
_TRUTH = _TRUTH_LOC + ("gt_power",)
_REAL = ("wavelength", "positions", "noise_var", "snr_db") + _TRUTH
#: Every key a scene file may hold, in the order they are written (SPEC 8, then extensions).
SCENE_KEYS = ("wavelength", "positions", "y", "H", "codes", "noise_var") + _TRUTH + ("snr_db", "meta")
#: Columns of a detections CSV, in order.
DETECTION_COLUMNS = ("scene", "phi_deg", "theta_deg", "r_m", "x_m", "y_m", "z_m", "score_db")
_CODE_TOL = 1e-3  # allowed deviation of |c| from 1


class SceneFileError(ValueError):
    """A scene file (or an in-memory `SceneFile`) that breaks the contract of SPEC section 8."""

    def __init__(self, path: str, key: str | None, problem: str):
        self.path, self.key, self.problem = str(path), key, problem
        where = f"{path}: key '{key}'" if key is not None else f"{path}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # picklable (multiprocessing) despite the custom signature
        return type(self), (self.path, self.key, self.problem)


class DetectionsFileError(ValueError):
    """A malformed detections CSV; the message names the line and the column."""

    def __init__(self, path: str, line: int | None, column: str | None, problem: str):
        self.path, self.line, self.column, self.problem = str(path), line, column, problem
        where = str(path)
        if line is not None:
            where += f": line {line}"
        if column is not None:
            where += f": column '{column}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.column, self.problem)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


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


_HOST = "".join(c for c in socket.gethostname() if c.isalnum())[:32] or "host"
_LEGACY_TMP_AGE_S = 600.0  # a temporary file without a writer id is stale after this long
_group = threading.local()  # the open `replaced_together` block of this thread, if any


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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    _group.pending = None
    blocked = _block_sigterm()  # no SIGTERM between the renames (delivered right after them)
    try:
        for i, (tmp, path) in enumerate(pending):
            try:
                os.replace(tmp, path)
            except BaseException:
                for later, _ in pending[i:]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(later)
                done = [p for _, p in pending[:i]]
                if done:
                    log.error("%s not replaced, but %s already were: it is stale", path, ", ".join(done))
                raise
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _block_sigterm() -> bool:
    if not hasattr(signal, "pthread_sigmask"):
        return False
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except (OSError, ValueError):
        return False
    return signal.SIGTERM not in before  # unblock afterwards only what was blocked here


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
    nothing. A handler installed inside the block (the trainer's) takes precedence while set."""
    try:
        old = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None) -> Iterator[Any]:
    """Open a temporary file beside `path`; on success move it onto `path` in one step.

    The temporary file lives in the target's directory (so `os.replace` is atomic), is named
    `.<name>.<host>.<pid>.<random>.tmp`, is flushed and fsynced before the rename, and is
    deleted if the body raises (SIGTERM too, inside `sigterm_raises`): `path` is then untouched
    (absent, or its previous content). Temporary files of `path` left by a killed writer are
    removed first (`remove_stale_temporaries`). Inside `replaced_together` the rename waits
    for the end of that block. A new file gets the usual `0o666 & ~umask` permissions; a
    replaced file keeps its permissions.

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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# Scene files
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SceneFile:
    """The content of a scene file, as NumPy arrays on the host (see the module docstring).

    Built by `load_scenes` or `scene_file_from_scenes`, both of which validate it;
    `save_scenes` validates again before writing.

    Attributes:
      wavelength: metres.
      positions: `[N, 3]` float64 element positions, metres.
      y: `[S, L, M]` complex64 measurements.
      H: `[S, M, N]` or `[M, N]` complex64 channel, None in full-array mode.
      codes: `[S, L, N]` or `[L, N]` complex64 RIS codes, None in full-array mode.
      noise_var: `[S]` float64 sigma^2, or None.
      gt_phi, gt_theta: `[S, Kmax]` float64 true angles, radians, NaN-padded, or None.
      gt_r: `[S, Kmax]` float64 true ranges, metres, NaN-padded, or None.
      gt_power: `[S, Kmax]` float64 true powers, linear, NaN-padded, or None.
      snr_db: `[S]` float64 requested SNR, dB, or None (extension key).
      meta: JSON-compatible dict (scenario name, seed, ...), or None (extension key).
    """

    wavelength: float
    positions: np.ndarray
    y: np.ndarray
    H: np.ndarray | None = None
    codes: np.ndarray | None = None
    noise_var: np.ndarray | None = None
    gt_phi: np.ndarray | None = None
    gt_theta: np.ndarray | None = None
    gt_r: np.ndarray | None = None
    gt_power: np.ndarray | None = None
    snr_db: np.ndarray | None = None
    meta: dict | None = None

    @property
    def n_scenes(self) -> int:
        """S."""
        return int(self.y.shape[0])

    @property
    def n_snapshots(self) -> int:
        """L."""
        return int(self.y.shape[1])

    @property
    def n_measurements(self) -> int:
        """M (= N in full-array mode)."""
        return int(self.y.shape[2])

    @property
    def n_elements(self) -> int:
        """N."""
        return int(self.positions.shape[0])

    @property
    def full_array(self) -> bool:
        """True when every element is sampled directly (no H, no codes)."""
        return self.H is None

    @property
    def has_truth(self) -> bool:
        return self.gt_phi is not None

    @property
    def k_max(self) -> int:
        """Truth slots per scene (0 without truth)."""
        return int(self.gt_phi.shape[1]) if self.has_truth else 0

    @property
    def truth_mask(self) -> np.ndarray:
        """`[S, Kmax]` bool, True for a real source (`[S, 0]` without truth)."""
        if not self.has_truth:
            return np.zeros((self.n_scenes, 0), bool)
        return ~np.isnan(self.gt_phi)

    def geometry(self):
        """The `ArrayGeometry` of the file's positions and wavelength."""
        return from_positions(self.positions, self.wavelength)


def _fields(sf: SceneFile) -> dict:
    return {f.name: getattr(sf, f.name) for f in dataclasses.fields(sf)}


def _validate(raw: Mapping[str, Any], source: str) -> dict:
    """Check raw arrays against SPEC section 8 and return them normalised (SceneFile fields).

    `raw` maps keys to arrays (from a file) or field values (from a `SceneFile`; `meta` may
    then be a dict). Raises `SceneFileError(source, key, problem)` at the first problem.
    """

    def fail(key, problem):
        raise SceneFileError(source, key, problem)

    for key in _REQUIRED:
        if raw.get(key) is None:
            fail(key, "missing (required)")
    unknown = sorted(set(raw) - set(SCENE_KEYS))
    if unknown:
        log.warning("%s: ignoring unknown key(s) %s", source, ", ".join(map(repr, unknown)))

    out: dict[str, Any] = {k: None for k in SCENE_KEYS}
    # --- dtypes ------------------------------------------------------------------------------
    for key in _COMPLEX + _REAL:
        if raw.get(key) is None:
            continue
        a = np.asarray(raw[key])
        kind = a.dtype.kind
        if key in _COMPLEX:
            if kind != "c":
                fail(key, f"expected complex64 (or complex128), got {a.dtype}")
            out[key] = a.astype(np.complex64, copy=False)
        else:
            if kind not in "fiu":
                fail(key, f"expected float64 (or float32), got {a.dtype}")
            out[key] = a.astype(np.float64, copy=False)
    out["meta"] = _validate_meta(raw.get("meta"), fail)

    # --- shapes ------------------------------------------------------------------------------
    def ndim(key, allowed):
        a = out[key]
        if a is not None and a.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            fail(key, f"expected a {want} array, got shape {list(a.shape)}")

    ndim("wavelength", (0,))
    ndim("positions", (2,))
    ndim("y", (3,))
    ndim("H", (2, 3))
    ndim("codes", (2, 3))
    for key in ("noise_var", "snr_db"):
        ndim(key, (1,))
    for key in _TRUTH:
        ndim(key, (2,))

    pos, y = out["positions"], out["y"]
    if pos.shape[1] != 3 or pos.shape[0] < 1:
        fail("positions", f"expected shape [N, 3] with N >= 1, got {list(pos.shape)}")
    n = pos.shape[0]
    if min(y.shape) < 1:
        fail("y", f"expected shape [S, L, M] with S, L, M >= 1, got {list(y.shape)}")
    s, l, m = y.shape

    if (out["H"] is None) != (out["codes"] is None):
        present, missing = ("H", "codes") if out["codes"] is None else ("codes", "H")
        fail(missing, f"missing: '{present}' is present, and RIS mode needs both 'H' and 'codes' "
                      f"(full-array mode has neither)")
    if out["H"] is None:
        if m != n:
            fail("y", f"full-array mode (no 'H'/'codes') needs M = N = {n} (from 'positions'), "
                      f"got y of shape {list(y.shape)}")
    else:
        for key, rows, rows_name in (("H", m, "M"), ("codes", l, "L")):
            a = out[key]
            if a.shape[-1] != n:
                fail(key, f"last axis is N = {a.shape[-1]}, but 'positions' has N = {n}")
            if a.shape[-2] != rows:
                fail(key, f"axis -2 is {rows_name} = {a.shape[-2]}, but 'y' has {rows_name} = {rows}")
            if a.ndim == 3 and a.shape[0] != s:
                fail(key, f"per-scene array has S = {a.shape[0]}, but 'y' has S = {s}")
    for key in ("noise_var", "snr_db"):
        if out[key] is not None and out[key].shape != (s,):
            fail(key, f"expected shape [{s}] (S from 'y'), got {list(out[key].shape)}")

    truth_present = [k for k in _TRUTH if out[k] is not None]
    if truth_present:
        for key in _TRUTH_LOC:
            if out[key] is None:
                fail(key, f"missing: truth needs all of gt_phi, gt_theta, gt_r "
                          f"(found {', '.join(truth_present)})")
        shape = out["gt_phi"].shape
        if shape[0] != s:
            fail("gt_phi", f"expected shape [S, Kmax] with S = {s} (from 'y'), got {list(shape)}")
        for key in truth_present:
            if out[key].shape != shape:
                fail(key, f"shape {list(out[key].shape)} differs from gt_phi's {list(shape)}")

    # --- values ------------------------------------------------------------------------------
    wavelength = float(out["wavelength"])
    if not math.isfinite(wavelength):
        fail("wavelength", f"not finite ({wavelength})")
    if wavelength <= 0:
        fail("wavelength", f"must be > 0, got {wavelength}")
    for key in ("positions", "y", "H", "codes", "noise_var", "snr_db"):
        _check_finite(out[key], key, fail)
    if out["noise_var"] is not None and np.any(out["noise_var"] < 0):
        fail("noise_var", f"must be >= 0, got min {float(np.min(out['noise_var']))}")
    if out["codes"] is not None:
        dev = float(np.max(np.abs(np.abs(out["codes"]) - 1.0)))
        if dev > _CODE_TOL:
            fail("codes", f"not unit modulus (max ||c| - 1| = {dev:.3g} > {_CODE_TOL:g})")
    if n > 1:
        d2 = np.sum((pos[:, None, :] - pos[None, :, :]) ** 2, axis=-1)
        np.fill_diagonal(d2, np.inf)
        if np.min(d2) <= 0:
            i, j = np.unravel_index(np.argmin(d2), d2.shape)
            fail("positions", f"elements {min(i, j)} and {max(i, j)} share one position")

    if truth_present:
        nan = np.isnan(out["gt_phi"])
        for key in truth_present:
            a = out[key]
            if np.any(np.isinf(a)):
                fail(key, "contains Inf (use NaN to pad empty slots)")
            diff = np.isnan(a) != nan
            if np.any(diff):
                i, k = np.argwhere(diff)[0]
                fail(key, f"NaN pattern differs from gt_phi at scene {i}, slot {k}: a slot must be "
                          f"a source in all truth keys or NaN in all of them")
        r = out["gt_r"][~nan]
        if r.size and np.min(r) <= 0:
            fail("gt_r", f"ranges must be > 0, got min {float(np.min(r))}")
        if out["gt_power"] is not None:
            p = out["gt_power"][~nan]
            if p.size and np.min(p) < 0:
                fail("gt_power", f"powers must be >= 0, got min {float(np.min(p))}")

    fields = {k: out[k] for k in SCENE_KEYS}
    fields["wavelength"] = wavelength
    return fields


def _check_finite(a, key, fail):
    if a is None or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        fail(key, f"contains {int(np.sum(bad))} non-finite value(s) (NaN or Inf), first at index {list(idx)}")


def _validate_meta(meta, fail) -> dict | None:
    """`meta` as a dict: from a 0-d str array (file) or a dict (in memory)."""
    if meta is None:
        return None
    if isinstance(meta, Mapping):
        try:
            return json.loads(json.dumps(to_jsonable(meta), allow_nan=False))
        except (TypeError, ValueError) as e:
            fail("meta", f"not JSON-serialisable: {e}")
    a = np.asarray(meta)
    if a.dtype.kind != "U" or a.ndim != 0:
        fail("meta", f"expected a str scalar holding a JSON object, got dtype {a.dtype}, shape {list(a.shape)}")
    try:
        value = json.loads(str(a.item()))
    except ValueError as e:
        fail("meta", f"not valid JSON ({e})")
    if not isinstance(value, dict):
        fail("meta", f"expected a JSON object, got {type(value).__name__}")
    return value


_DEFLATE_MAX_RATIO = 1032  # the most a deflate stream can expand (zlib's bound)


def _npz_members(path: str, fail) -> dict[str, np.ndarray]:
    """Every `.npy` member of an `.npz` file, read with `allow_pickle=False`.

    Each member's header is checked before anything is allocated: the bytes its shape and
    dtype declare must be the bytes the member holds (a header declaring 149 GiB over a few
    kilobytes is refused, a truncated member is named as truncated), and the member's size in
    the zip directory must be one the archive can hold (at most `_DEFLATE_MAX_RATIO` times its
    compressed size). `fail(key, problem)` raises (`key` None for the file as a whole).
    """
    if os.path.isdir(path):
        fail(None, "is a directory, expected an .npz file")
    if not os.path.exists(path):
        fail(None, "no such file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as e:
        fail(None, f"unreadable ({e.strerror or type(e).__name__})")
    if size == 0:
        fail(None, "empty file (0 bytes), expected an .npz archive")
    if magic == b"\x93NUMPY":
        fail(None, "not an .npz archive (a single .npy array)")
    if not zipfile.is_zipfile(path):
        fail(None, "not an .npz archive (no zip directory: another format, or truncated)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        fail(None, f"not a readable .npz archive ({type(e).__name__}: {e})")
    out = {}
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            out[key] = _npz_member(zf, info, key, size, fail)
    return out


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # unreachable


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, archive_size: int, fail) -> np.ndarray:
    if info.compress_size > archive_size:
        fail(key, f"the zip directory gives {info.compress_size} bytes, more than the whole file ({archive_size})")
    bound = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO)
    if info.file_size > bound:
        fail(key, f"the zip directory gives {_human_bytes(info.file_size)}, more than its "
                  f"{_human_bytes(info.compress_size)} of stored data can hold")
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                fail(key, f"unsupported .npy format version {version[0]}.{version[1]}")
            header = fh.tell()
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        fail(key, f"not a .npy array (bad header: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
    if dtype.hasobject:
        fail(key, "holds pickled Python objects; scene files hold plain arrays")
    need = math.prod(shape) * dtype.itemsize
    have = info.file_size - header
    if need != have:
        what = "truncated" if have < need else "longer than its header says"
        fail(key, f"{what}: the header declares shape {list(shape)} {dtype} ({_human_bytes(need)}), "
                  f"the member holds {_human_bytes(max(have, 0))}")
    try:
        with zf.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
        fail(key, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


def load_scenes(path) -> SceneFile:
    """Read and validate a scene file (`.npz`, read with `allow_pickle=False`).

    Complex keys are returned as complex64 and real keys as float64 whatever their stored
    precision; `meta` is parsed into a dict. Every member's `.npy` header is checked against
    the bytes the member holds before the array is allocated (`_npz_members`).

    Raises:
      SceneFileError: file missing, empty or not an `.npz` archive, a member whose header
        declares more (or less) data than it holds, a required key missing, a wrong dtype or
        shape, inconsistent S/L/M/N between keys, non-finite data, non-unit codes,
        inconsistent truth padding, ... (one line naming the key and the problem).
    """
    path = os.fspath(path)

    def fail(key, problem):
        raise SceneFileError(path, key, problem)

    raw = _npz_members(path, fail)
    return SceneFile(**_validate(raw, path))


def save_scenes(path, sf: SceneFile) -> None:
    """Validate `sf` and write it as an uncompressed `.npz` with the dtypes of SPEC section 8.

    Atomic: written to a temporary file in the same directory and renamed onto `path`, so a
    crash leaves either the old file or the new one. `path` is used as given (no suffix added).
    """
    path = os.fspath(path)
    f = _validate(_fields(sf), path)
    arrays = {"wavelength": np.asarray(f["wavelength"], np.float64)}
    for key in SCENE_KEYS[1:]:
        v = f[key]
        if v is None:
            continue
        if key == "meta":
            arrays[key] = np.asarray(json.dumps(v, sort_keys=True), dtype=np.str_)
        else:
            arrays[key] = np.ascontiguousarray(v, np.complex64 if key in _COMPLEX else np.float64)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def scene_file_from_scenes(scenes, geometry, *, meta: dict | None = None) -> SceneFile:
    """Convert the simulator's `Scene` (batched, jax arrays) to a validated `SceneFile`.

    Truth is NaN-padded where `scenes.mask` is False; `gt_power`, `noise_var` and `snr_db`
    are included. An unbatched scene (`y` of shape `[L, M]`) becomes a file with S = 1.

    Args:
      scenes: `Scene` with `y` `[S, L, M]` (or `[L, M]`).
      geometry: the `ArrayGeometry` the scenes were simulated with.
      meta: optional JSON-compatible dict stored under `meta` (e.g. scenario name and seed).
    """
    host = jax.device_get(scenes)
    if np.ndim(host.y) == 2:
        host = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], host)
    mask = np.asarray(host.mask, bool)

    def truth(a):
        return np.where(mask, np.asarray(a, np.float64), np.nan)

    def opt(a, dtype):
        return None if a is None else np.asarray(a, dtype)

    fields = dict(
        wavelength=float(np.asarray(geometry.wavelength)),
        positions=np.asarray(geometry.positions, np.float64),
        y=np.asarray(host.y, np.complex64),
        H=opt(host.H, np.complex64),
        codes=opt(host.codes, np.complex64),
        noise_var=np.asarray(host.noise_var, np.float64),
        gt_phi=truth(host.phi),
        gt_theta=truth(host.theta),
        gt_r=truth(host.r),
        gt_power=truth(host.power),
        snr_db=np.asarray(host.snr_db, np.float64),
        meta=None if meta is None else dict(meta),
    )
    return SceneFile(**_validate(fields, "Scene"))


def scenes_from_file(sf: SceneFile, *, model: str = "exact") -> Scene:
    """A batched `Scene` (complex64/float32 jax arrays) for methods that take one.

    - A shared `H` `[M, N]` / `codes` `[L, N]` is broadcast to every scene.
    - `noise_var` and `snr_db` are NaN where the file has none (unknown).
    - Truth: padded slots get phi = theta = power = 0 and r = the largest true range in
      the file (1.0 if there is none), so every slot is a valid steering argument; `mask`
      is False there. Without `gt_power`, true sources get power 1. Without truth at all,
      the truth arrays have shape `[S, 0]`.
    - `R_true = A diag(p) A^H` from the truth with the shared `steering` function and
      `model` (zeros without truth). It is not trace-normalised.
    """
    f = _validate(_fields(sf), "SceneFile")
    sf = SceneFile(**f)
    s, l, m, n = sf.n_scenes, sf.n_snapshots, sf.n_measurements, sf.n_elements
    real = np.float32

    def per_scene(a, rows):
        return None if a is None else jnp.asarray(np.broadcast_to(a, (s, rows, n)))

    def unknown_or(a):
        return np.full(s, np.nan, real) if a is None else a.astype(real)

    mask = sf.truth_mask
    if sf.has_truth:
        finite_r = sf.gt_r[mask]
        r_pad = float(np.max(finite_r)) if finite_r.size else 1.0
        phi = np.where(mask, sf.gt_phi, 0.0).astype(real)
        theta = np.where(mask, sf.gt_theta, 0.0).astype(real)
        r = np.where(mask, sf.gt_r, r_pad).astype(real)
        power = (mask.astype(real) if sf.gt_power is None else np.where(mask, sf.gt_power, 0.0)).astype(real)
    else:
        phi = theta = r = power = np.zeros((s, 0), real)
    r_true = _truth_covariance(sf.geometry(), phi, theta, r, power, model=model)
    return Scene(
        y=jnp.asarray(sf.y),
        H=per_scene(sf.H, m),
        codes=per_scene(sf.codes, l),
        noise_var=jnp.asarray(unknown_or(sf.noise_var)),
        snr_db=jnp.asarray(unknown_or(sf.snr_db)),
        phi=jnp.asarray(phi),
        theta=jnp.asarray(theta),
        r=jnp.asarray(r),
        power=jnp.asarray(power),
        mask=jnp.asarray(mask),
        R_true=r_true,
    )


def _truth_covariance(geometry, phi, theta, r, power, *, model: str):
    """`[S, N, N]` complex64 `A diag(p) A^H` from `[S, K]` float32 truth (zeros if K = 0)."""
    s, k = phi.shape
    n = geometry.n_elements
    if k == 0:
        return jnp.zeros((s, n, n), jnp.complex64)
    return _truth_covariance_jit(geometry.astype(np.float32), phi, theta, r, power, model=model)


@functools.partial(jax.jit, static_argnames="model")
def _truth_covariance_jit(geometry, phi, theta, r, power, *, model):
    a = steering(geometry, phi, theta, r, model=model, dtype=jnp.complex64)  # [S, K, N]
    return truth_covariance(a, power)


def scenario_from_meta(meta: Mapping[str, Any] | None) -> SceneConfig | None:
    """The scenario a scene file was simulated from, decoded from its `meta["config"]`.

    `rismvdr simulate` records the whole `SceneConfig` there; a file from elsewhere may have
    no `meta`, no `config`, or one this version cannot build: the answer is then None (the
    caller falls back to its defaults). Keys `SceneConfig` does not have are ignored.

    >>> scenario_from_meta({"config": {"name": "seed", "k_max": 3}}).k_max
    3
    >>> scenario_from_meta({"scenario": "seed"}) is None
    True
    """
    if not meta or "config" not in meta:
        return None
    fields = {f.name for f in dataclasses.fields(SceneConfig)}
    cfg = {k: (tuple(tuple(r) for r in v) if k == "positions" and v is not None else
               tuple(v) if isinstance(v, list) else v)
           for k, v in meta["config"].items() if k in fields}
    try:
        return SceneConfig(**cfg)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Maps (`rismvdr localize --maps-out`)
# --------------------------------------------------------------------------------------------

#: Keys of a maps file, in the order they are written.
MAP_KEYS = ("power_db", "plane", "grid_phi", "grid_theta", "grid_r")


def write_maps(path, power_db, plane, grid: Grid) -> None:
    """Write the 2.5D maps of a localization run as an `.npz` (atomic).

    Args:
      path: output file.
      power_db: `[S, n_theta, n_phi]` plane-maximised spectrum, dB.
      plane: `[S, n_theta, n_phi]` integer, the range plane of each maximum.
      grid: the search grid (written as `grid_phi` `[n_phi]` rad, `grid_theta` `[n_theta]` rad,
        `grid_r` `[n_planes]` m).
    """
    phi, theta, r = grid.arrays()
    with atomic_write(path, "wb") as f:
        np.savez(f, power_db=power_db, plane=plane, grid_phi=phi, grid_theta=theta, grid_r=r)


def read_maps(path) -> tuple[np.ndarray, np.ndarray, Grid]:
    """Read a maps file of `write_maps`: `(power_db, plane, grid)`.

    Raises:
      ValueError: one line naming the file (and the key): not an `.npz` archive (empty, another
        format, a member whose header declares more data than it holds), a key missing, or
        maps that do not lie on their grid (`power_db` and `plane` `[S, n_theta, n_phi]` with
        the grid's lengths, `plane` an index into `grid_r`, the angles finite and increasing, the
        ranges > 0).
    """
    path = os.fspath(path)

    def fail(key, problem):
        where = f"{path}: key '{key}'" if key is not None else path
        raise ValueError(f"{where}: {problem}")

    z = _npz_members(path, fail)
    for key in MAP_KEYS:
        if key not in z:
            fail(key, "missing (write it with localize --maps-out)")
    axes = {}
    for key in ("grid_phi", "grid_theta", "grid_r"):
        a = z[key]
        if a.ndim != 1 or a.size < 1 or a.dtype.kind not in "fiu" or not np.all(np.isfinite(a)):
            fail(key, f"expected a non-empty 1-D array of finite numbers, got {a.dtype} {list(a.shape)}")
        if key != "grid_r" and a.size > 1 and not np.all(np.diff(a) > 0):
            fail(key, "not increasing")
        axes[key] = a
    n_theta, n_phi, n_r = axes["grid_theta"].size, axes["grid_phi"].size, axes["grid_r"].size
    power_db, plane = z["power_db"], z["plane"]
    for key, a in (("power_db", power_db), ("plane", plane)):
        if a.ndim != 3 or a.shape[1:] != (n_theta, n_phi):
            fail(key, f"shape {list(a.shape)} does not fit the file's grid: expected [S, {n_theta}, {n_phi}] "
                      "(n_theta from grid_theta, n_phi from grid_phi)")
    if power_db.dtype.kind != "f":
        fail("power_db", f"expected floats (dB), got {power_db.dtype}")
    if plane.shape != power_db.shape:
        fail("plane", f"shape {list(plane.shape)} differs from power_db's {list(power_db.shape)}")
    if plane.dtype.kind not in "iu" or (plane.size and (plane.min() < 0 or plane.max() >= n_r)):
        fail("plane", f"expected integer indices into grid_r (0..{n_r - 1})")
    if np.any(axes["grid_r"] <= 0):
        fail("grid_r", f"ranges must be > 0 m, got min {float(axes['grid_r'].min())}")
    grid = Grid(tuple(axes["grid_phi"].tolist()), tuple(axes["grid_theta"].tolist()), tuple(axes["grid_r"].tolist()))
    return power_db, plane, grid


# --------------------------------------------------------------------------------------------
# Detections CSV
# --------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return format(float(v), ".12g")


def write_detections_csv(path, phi, theta, r, score_db, valid) -> None:
    """Write padded detections as one CSV row per valid entry (atomic).

    Args:
      path: target `.csv`.
      phi, theta: `[S, Kmax]` radians.
      r: `[S, Kmax]` metres.
      score_db: `[S, Kmax]` detection score, dB.
      valid: `[S, Kmax]` bool; invalid entries are ignored (they may hold anything).

    Raises:
      ValueError: naming the argument: mismatched shapes, or a valid entry with a
        non-finite angle or range, a range <= 0, or a NaN score.
    """
    arrays = {}
    for name, a in (("phi", phi), ("theta", theta), ("r", r), ("score_db", score_db)):
        arrays[name] = np.asarray(a, np.float64)
    v = np.asarray(valid)
    if v.dtype != bool:
        if not np.all((v == 0) | (v == 1)):
            raise ValueError(f"valid: expected a bool mask, got dtype {v.dtype}")
        v = v.astype(bool)
    if v.ndim != 2:
        raise ValueError(f"valid: expected shape [S, Kmax], got {list(v.shape)}")
    for name, a in arrays.items():
        if a.shape != v.shape:
            raise ValueError(f"{name}: expected shape {list(v.shape)} (from valid), got {list(a.shape)}")
    for name in ("phi", "theta", "r"):
        if not np.all(np.isfinite(arrays[name][v])):
            raise ValueError(f"{name}: non-finite value at a valid detection")
    if np.any(arrays["r"][v] <= 0):
        raise ValueError("r: range <= 0 at a valid detection")
    if np.any(np.isnan(arrays["score_db"][v])):
        raise ValueError("score_db: NaN at a valid detection")

    p, t, rr = arrays["phi"], arrays["theta"], arrays["r"]
    x = rr * np.cos(t) * np.cos(p)
    yy = rr * np.cos(t) * np.sin(p)
    z = rr * np.sin(t)
    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(DETECTION_COLUMNS)
        for i, k in np.argwhere(v):
            w.writerow([int(i), _fmt(np.degrees(p[i, k])), _fmt(np.degrees(t[i, k])), _fmt(rr[i, k]),
                        _fmt(x[i, k]), _fmt(yy[i, k]), _fmt(z[i, k]), _fmt(arrays["score_db"][i, k])])


def read_detections_csv(path, n_scenes: int | None = None, k_max: int | None = None) -> Detections:
    """Read a detections CSV back into padded `[S, Kmax]` arrays (radians, metres).

    Returns the detector's own container, `rismvdr.localize.detect.Detections`, holding float64 NumPy
    arrays (phi, theta, r, score_db NaN where not valid) and a bool `valid`.

    Columns may come in any order (extra columns are ignored); detections of a scene fill its
    slots in file order. `x_m, y_m, z_m` must be numbers but are not checked against
    (phi, theta, r).

    Args:
      path: the `.csv` file.
      n_scenes: S; default `1 + ` the largest scene index (0 for a file without rows).
      k_max: slots per scene; default the largest number of detections in one scene.

    Raises:
      DetectionsFileError: missing file, missing column, a non-numeric or NaN value, an angle
        outside [-180, 180] (azimuth) or [-90, 90] (elevation) degrees, a scene index out of
        range, or more than `k_max` detections in a scene (one line naming the file, the line
        and the column). A UTF-8 byte-order mark before the header is accepted.
    """
    path = os.fspath(path)

    def fail(line, column, problem):
        raise DetectionsFileError(path, line, column, problem)

    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # (a BOM, as spreadsheets write, is skipped)
    except FileNotFoundError:
        fail(None, None, "no such file")
    except IsADirectoryError:
        fail(None, None, "is a directory, expected a .csv file")
    rows: list[tuple[int, int, list[float]]] = []  # (line, scene, values)
    try:
        with fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                fail(1, None, f"empty file, expected the header {','.join(DETECTION_COLUMNS)}")
            header = [h.strip() for h in header]
            col = {}
            for j, name in enumerate(header):
                if name in col:
                    fail(1, name, "appears twice in the header")
                col[name] = j
            for name in DETECTION_COLUMNS:
                if name not in col:
                    fail(1, name, f"missing from the header (expected {','.join(DETECTION_COLUMNS)})")
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    fail(line, None, f"expected {len(header)} fields, got {len(row)}")
                scene_text = row[col["scene"]].strip()
                try:
                    scene = int(scene_text)
                except ValueError:
                    fail(line, "scene", f"not an integer scene index: {scene_text!r}")
                if scene < 0 or (n_scenes is not None and scene >= n_scenes):
                    bound = f"[0, {n_scenes})" if n_scenes is not None else ">= 0"
                    fail(line, "scene", f"index {scene} out of range (expected {bound})")
                values = []
                for name in DETECTION_COLUMNS[1:]:
                    text = row[col[name]].strip()
                    try:
                        v = float(text)
                    except ValueError:
                        fail(line, name, f"not a number: {text!r}")
                    if math.isnan(v):
                        fail(line, name, "NaN")
                    if name != "score_db" and math.isinf(v):
                        fail(line, name, f"not finite: {text!r}")
                    values.append(v)
                if values[2] <= 0:
                    fail(line, "r_m", f"range must be > 0, got {values[2]}")
                if not -180.0 <= values[0] <= 180.0:
                    fail(line, "phi_deg", f"azimuth must lie in [-180, 180] degrees, got {values[0]:g}")
                if not -90.0 <= values[1] <= 90.0:
                    fail(line, "theta_deg", f"elevation must lie in [-90, 90] degrees, got {values[1]:g}")
                rows.append((line, scene, values))
    except UnicodeDecodeError:
        fail(None, None, "not a UTF-8 text file")
    except csv.Error as e:
        fail(None, None, f"malformed CSV ({e})")

    counts: dict[int, int] = {}
    for line, scene, _ in rows:
        counts[scene] = counts.get(scene, 0) + 1
        if k_max is not None and counts[scene] > k_max:
            fail(line, "scene", f"scene {scene} has more than k_max = {k_max} detections")
    s = n_scenes if n_scenes is not None else (max(counts) + 1 if counts else 0)
    k = k_max if k_max is not None else max(counts.values(), default=0)
    out = np.full((4, s, k), np.nan)
    valid = np.zeros((s, k), bool)
    slot = dict.fromkeys(counts, 0)
    for _, scene, (phi_deg, theta_deg, r_m, _x, _y, _z, score) in rows:
        j = slot[scene]
        slot[scene] += 1
        out[:, scene, j] = (np.radians(phi_deg), np.radians(theta_deg), r_m, score)
        valid[scene, j] = True
    return Detections(out[0], out[1], out[2], out[3], valid)


# --------------------------------------------------------------------------------------------
# JSON reports
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for `json.dumps`: dicts (str keys), lists, str, int, float, bool, None.

    The one JSON sanitiser of rismvdr (reports, metrics, model records, HPO exports). NaN and
    +-inf become `None` (JSON has neither); NumPy/jax scalars and arrays become Python numbers
    and (nested) lists; tuples become lists; dataclasses and NamedTuples become dicts; paths
    become strings. Anything else (complex numbers, objects) raises `TypeError`.

    >>> to_jsonable({"x": np.array([1.0, np.nan]), "k": (np.int64(3), True)})
    {'x': [1.0, None], 'k': [3, True]}
    """
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "_asdict"):  # NamedTuple
        return to_jsonable(obj._asdict())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__array__"):  # np.ndarray, jax.Array
        a = np.asarray(obj)
        if a.dtype.kind in "biuf":
            return to_jsonable(a.tolist()) if a.ndim else to_jsonable(a.item())
        if a.dtype.kind == "U":
            return a.tolist()
    raise TypeError(f"to_jsonable: cannot write a {type(obj).__name__} as JSON")


def read_json(path, flag: str, *, want: type = dict) -> Any:
    """Read a JSON file given by `flag` (a command-line flag or argument name).

    Raises:
      ValueError: one line naming `flag` and the file: missing, a directory, unreadable, not
        UTF-8 JSON, or not a `want` (an object by default) at the top.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            value = json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{flag}: {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{flag}: {path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{flag}: {path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag}: {path}: not a JSON file ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except OSError as e:
        raise ValueError(f"{flag}: {path}: unreadable ({e.strerror or type(e).__name__})") from None
    if not isinstance(value, want):
        raise ValueError(f"{flag}: {path}: expected a JSON {'object' if want is dict else want.__name__}, "
                         f"got {type(value).__name__}")
    return value


def write_json(path, obj, *, indent: int = 2) -> None:
    """Write `obj` as JSON (atomic). NaN and +-Inf become `null`; arrays become lists."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)
    with atomic_write(path, "w") as fh:
        fh.write(text + "\n")


# --------------------------------------------------------------------------------------------
# Persistent compilation cache
# --------------------------------------------------------------------------------------------

#: Environment variable: the directory of the command line's compilation cache.
CACHE_DIR_ENV = "RISMVDR_CACHE_DIR"
#: Environment variable: `0` (or `false`, `no`, `off`) turns the command line's cache off.
COMPILE_CACHE_ENV = "RISMVDR_COMPILE_CACHE"


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
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    if min_compile_time_s is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
        if min_compile_time_s == 0:
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()


def enable_default_compile_cache() -> Path | None:
    """Turn on the per-user compilation cache (`compile_cache_dir`) for every program.

    Off (returns None, JAX untouched) when `$RISMVDR_COMPILE_CACHE` is `0`, `false`, `no` or
    `off`; also when `$RISMVDR_CACHE_DIR` is unset and JAX already has a cache directory (from
    `JAX_COMPILATION_CACHE_DIR`, or set by the program that calls rismvdr): that choice stands.

    Returns:
      the cache directory now in use, or None.
    """
    if os.environ.get(COMPILE_CACHE_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not os.environ.get(CACHE_DIR_ENV) and jax.config.jax_compilation_cache_dir is not None:
        return None
    path = compile_cache_dir()
    enable_compile_cache(path, min_compile_time_s=0.0)
    return path
