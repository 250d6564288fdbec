"""Scene files (`.npz`) of conventions section 8: measurements, geometry and, optionally, the truth.

Scene file keys (`np.savez`, read back with `allow_pickle=False`, so opening one never runs
code). S scenes, L snapshots, M measurements per snapshot, N surface elements:

| key | dtype, shape | meaning |
|---|---|---|
| `wavelength` | float64 scalar | metres, > 0 |
| `positions` | float64 `[N, 3]` | element positions, metres, array frame (conventions section 1) |
| `y` | complex64 `[S, L, M]` | measurements (M = N in full-array mode) |
| `H` | complex64 `[S, M, N]` or `[M, N]` | channel (one per scene, or shared); absent in full-array mode |
| `codes` | complex64 `[S, L, N]` or `[L, N]` | unit-modulus RIS codes; absent in full-array mode |
| `noise_var` | float64 `[S]` | optional, sigma^2 (linear) |
| `gt_phi`, `gt_theta` | float64 `[S, Kmax]` | optional truth, radians, NaN-padded |
| `gt_r` | float64 `[S, Kmax]` | optional truth, metres, NaN-padded |
| `gt_power` | float64 `[S, Kmax]` | optional truth, linear, NaN-padded (needs the three above) |
| `snr_db` | float64 `[S]` | extension, optional: SNR, dB (requested; realised over a deployment's floor) |
| `meta` | str scalar (`<U`) | extension, optional: a JSON object (scenario name, seed, `config`, ...) |

`H` and `codes` come together (RIS mode) or not at all (full-array mode). A truth slot is a
source in all of `gt_phi`/`gt_theta`/`gt_r` (and `gt_power` when present) or NaN in all of them.
Complex keys may be complex128 in a user's file (read as complex64); real keys may be float32
or integer (read as float64). Unknown keys are ignored with a warning. `meta`'s `config`, when
present, is the `SceneConfig` the file was simulated from: an object whose fields have their
types (`scenario_from_meta`). A malformed file raises `SceneFileError` with a one-line message
`"{path}: key '{key}': {problem}"`.

`save_scenes` writes through `atomic_write`: a crash never leaves a half-written file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import typing
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np

from rismvdr.io.atomic import atomic_write
from rismvdr.io.reports import to_jsonable
from rismvdr.physics.geometry import from_positions
from rismvdr.physics.scenarios import SceneConfig
from rismvdr.physics.simulate import Scene, truth_covariance_from_sources

__all__ = [
    "SCENE_KEYS",
    "SceneFileError",
    "SceneFile",
    "scene_file_from_scenes",
    "scenes_from_file",
    "scenario_from_meta",
    "save_scenes",
    "load_scenes",
    "load_codebook",
    "save_codebook",
]

log = logging.getLogger(__name__)

_REQUIRED = ("wavelength", "positions", "y")
_COMPLEX = ("y", "H", "codes")
_TRUTH_LOC = ("gt_phi", "gt_theta", "gt_r")
_TRUTH = _TRUTH_LOC + ("gt_power",)
_REAL = ("wavelength", "positions", "noise_var", "snr_db") + _TRUTH
#: Every key a scene file may hold, in the order they are written (conventions section 8, then extensions).
SCENE_KEYS = ("wavelength", "positions", "y", "H", "codes", "noise_var") + _TRUTH + ("snr_db", "meta")
_CODE_TOL = 1e-3  # allowed deviation of |c| from 1
#: The `SceneConfig` fields whose default is None and whose value, when given, is an integer.
_OPTIONAL_INTEGERS = ("deployment_seed",)
#: The `SceneConfig` fields that name one of a few choices (`Literal`), with their choices.
_CHOICES = {name: typing.get_args(hint) for name, hint in typing.get_type_hints(SceneConfig).items()
            if typing.get_origin(hint) is Literal}


class SceneFileError(ValueError):
    """A scene file (or an in-memory `SceneFile`) that breaks the contract of conventions section 8."""

    def __init__(self, path: str, key: str | None, problem: str):
        self.path, self.key, self.problem = str(path), key, problem
        where = f"{path}: key '{key}'" if key is not None else f"{path}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # picklable (multiprocessing) despite the custom signature
        return type(self), (self.path, self.key, self.problem)


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
      snr_db: `[S]` float64 SNR, dB (the requested one, or the realised one over a deployment's
        noise floor, conventions section 9), or None (extension key).
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
    """Check raw arrays against conventions section 8 and return them normalised (SceneFile fields).

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

    out = _cast_dtypes(raw, fail)
    _check_ndims(out, fail)
    _check_sizes(out, fail)
    _check_truth_shapes(out, fail)
    wavelength = _check_values(out, fail)
    _check_truth_values(out, fail)
    fields = {k: out[k] for k in SCENE_KEYS}
    fields["wavelength"] = wavelength
    return fields


def _cast_dtypes(raw: Mapping[str, Any], fail) -> dict[str, Any]:
    """Every key of `SCENE_KEYS` (None where absent): complex keys as complex64, real keys as
    float64, `meta` as a dict."""
    out: dict[str, Any] = {k: None for k in SCENE_KEYS}
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
    return out


def _check_ndims(out: Mapping[str, Any], fail) -> None:
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


def _check_sizes(out: Mapping[str, Any], fail) -> None:
    """S, L, M, N agree between `y`, `positions`, `H`, `codes`, `noise_var` and `snr_db`; `H`
    and `codes` come together or not at all."""
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


def _check_truth_shapes(out: Mapping[str, Any], fail) -> None:
    """Truth comes as all of gt_phi, gt_theta, gt_r (gt_power optional), each `[S, Kmax]`."""
    truth_present = [k for k in _TRUTH if out[k] is not None]
    if not truth_present:
        return
    for key in _TRUTH_LOC:
        if out[key] is None:
            fail(key, f"missing: truth needs all of gt_phi, gt_theta, gt_r "
                      f"(found {', '.join(truth_present)})")
    shape = out["gt_phi"].shape
    s = out["y"].shape[0]
    if shape[0] != s:
        fail("gt_phi", f"expected shape [S, Kmax] with S = {s} (from 'y'), got {list(shape)}")
    for key in truth_present:
        if out[key].shape != shape:
            fail(key, f"shape {list(out[key].shape)} differs from gt_phi's {list(shape)}")


def _check_values(out: Mapping[str, Any], fail) -> float:
    """The values of everything but the truth; returns the wavelength as a float."""
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
    pos = out["positions"]
    if pos.shape[0] > 1:
        d2 = np.sum((pos[:, None, :] - pos[None, :, :]) ** 2, axis=-1)
        np.fill_diagonal(d2, np.inf)
        if np.min(d2) <= 0:
            i, j = np.unravel_index(np.argmin(d2), d2.shape)
            fail("positions", f"elements {min(i, j)} and {max(i, j)} share one position")
    return wavelength


def _check_truth_values(out: Mapping[str, Any], fail) -> None:
    """One NaN pattern across the truth keys, no Inf, ranges > 0 and powers >= 0."""
    truth_present = [k for k in _TRUTH if out[k] is not None]
    if not truth_present:
        return
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


def _check_finite(a, key, fail):
    if a is None or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        fail(key, f"contains {int(np.sum(bad))} non-finite value(s) (NaN or Inf), first at index {list(idx)}")


def _validate_meta(meta, fail) -> dict | None:
    """`meta` as a dict: from a 0-d str array (file) or a dict (in memory); its `config`, when
    present, is checked by `_check_meta_config`."""
    if meta is None:
        return None
    if isinstance(meta, Mapping):
        try:
            value = json.loads(json.dumps(to_jsonable(meta), allow_nan=False))
        except (TypeError, ValueError) as e:
            fail("meta", f"not JSON-serialisable: {e}")
    else:
        a = np.asarray(meta)
        if a.dtype.kind != "U" or a.ndim != 0:
            fail("meta", f"expected a str scalar holding a JSON object, got dtype {a.dtype}, shape {list(a.shape)}")
        try:
            value = json.loads(str(a.item()))
        except ValueError as e:
            fail("meta", f"not valid JSON ({e})")
        if not isinstance(value, dict):
            fail("meta", f"expected a JSON object, got {_json_type(value)}")
    _check_meta_config(value.get("config"), fail)
    return value


def _json_type(value) -> str:
    """The JSON name of a parsed value's type (object, array, string, number, boolean, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _field_type_problem(default, value) -> str | None:
    """What is wrong with the JSON `value` of a `SceneConfig` field whose default is `default`
    (None: nothing). Types only: the values are checked where they are used."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if isinstance(default, float):
        return None if _finite_number(value) else "expected a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(default, tuple):
        ok = isinstance(value, list) and len(value) == len(default) and all(_finite_number(v) for v in value)
        return None if ok else f"expected [min, max], {len(default)} finite numbers"
    return None


def _check_meta_config(config, fail) -> None:
    """`meta["config"]` (the scenario a file was simulated from, `scenario_from_meta`): absent,
    null or a JSON object whose keys that name `SceneConfig` fields hold values of those fields'
    types (`positions`: null or `[[x, y, z], ...]` in metres; a field of a few choices, such as
    `steering_model`, one of them). Other keys are ignored; numbers are not range-checked here
    (a command's flags may replace the search box)."""
    if config is None:
        return
    if not isinstance(config, Mapping):
        fail("meta", f"config: expected a JSON object (the scenario's fields), got {_json_type(config)}")
    for f in dataclasses.fields(SceneConfig):
        if f.name not in config:
            continue
        value = config[f.name]
        if f.name == "positions":
            ok = value is None or (isinstance(value, list) and len(value) >= 1 and all(
                isinstance(row, list) and len(row) == 3 and all(_finite_number(c) for c in row) for row in value))
            problem = None if ok else "expected null or [[x, y, z], ...], rows of 3 finite numbers (metres)"
        elif f.name in _CHOICES:
            ok = isinstance(value, str) and value in _CHOICES[f.name]
            problem = None if ok else f"expected one of {', '.join(map(repr, _CHOICES[f.name]))}"
        elif f.default is None:  # an optional number (None: the field's documented fallback)
            integer = f.name in _OPTIONAL_INTEGERS
            ok = value is None or (_finite_number(value) and (not integer or isinstance(value, int)))
            problem = None if ok else f"expected null or {'an integer' if integer else 'a finite number'}"
        else:
            problem = _field_type_problem(f.default, value)
        if problem:
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            fail("meta", f"config.{f.name}: {problem}, got {_json_type(value)} {shown}")


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


def load_codebook(path) -> np.ndarray:
    """The RIS codebook of a codebook file: an `.npz` whose key `codes` holds `[L, N]` complex
    codes (conventions section 9), read with `allow_pickle=False` and the scene files' guards.

    Only the key is checked here; `rismvdr.physics.simulate.check_codebook` checks the codes
    against a scenario (shape, finite, unit modulus). Other keys are ignored.

    Raises:
      SceneFileError: file missing or not an `.npz` archive, a bad member, no key `codes`
        (one line naming the file and the key).
    """
    path = os.fspath(path)

    def fail(key, problem):
        raise SceneFileError(path, key, problem)

    members = _npz_members(path, fail)
    if "codes" not in members:
        fail("codes", f"missing (a codebook file holds its [L, N] codes under 'codes'; found "
                      f"{', '.join(map(repr, sorted(members))) or 'no arrays'})")
    return members["codes"]


def save_codebook(path, codes, *, phases=None, meta: dict | None = None) -> None:
    """Write a codebook file (conventions section 9) atomically: `codes` `[L, N]` complex64, optional
    `phases` `[L, N]` float64 (radians) and `meta` (a JSON object, as in scene files).

    Raises:
      ValueError: `codes` not a finite `[L, N]` array of unit-modulus entries (within 1e-3),
        `phases` of another shape, or `meta` not JSON-serialisable.
    """
    path = os.fspath(path)
    c = np.asarray(codes)
    if c.ndim != 2 or 0 in c.shape:
        raise ValueError(f"codes: expected [L, N], got shape {list(c.shape)}")
    if not np.all(np.isfinite(c)) or np.max(np.abs(np.abs(c) - 1.0)) > 1e-3:
        raise ValueError("codes: expected finite unit-modulus entries")
    arrays = {"codes": np.ascontiguousarray(c, np.complex64)}
    if phases is not None:
        ph = np.asarray(phases, np.float64)
        if ph.shape != c.shape:
            raise ValueError(f"phases: expected the codes' shape {list(c.shape)}, got {list(ph.shape)}")
        arrays["phases"] = ph
    if meta is not None:
        try:
            text = json.dumps(to_jsonable(meta), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"meta: not JSON-serialisable: {exc}") from exc
        arrays["meta"] = np.asarray(text, dtype=np.str_)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def save_scenes(path, sf: SceneFile) -> None:
    """Validate `sf` and write it as an uncompressed `.npz` with the dtypes of conventions section 8.

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


def scene_file_from_scenes(scenes, geometry, *, meta: dict | None = None,
                           shared: tuple[str, ...] = ()) -> SceneFile:
    """Convert the simulator's `Scene` (batched, jax arrays) to a validated `SceneFile`.

    Truth is NaN-padded where `scenes.mask` is False; `gt_power`, `noise_var` and `snr_db`
    are included. An unbatched scene (`y` of shape `[L, M]`) becomes a file with S = 1.

    Args:
      scenes: `Scene` with `y` `[S, L, M]` (or `[L, M]`).
      geometry: the `ArrayGeometry` the scenes were simulated with.
      meta: optional JSON-compatible dict stored under `meta` (e.g. scenario name and seed).
      shared: keys among `"H"`, `"codes"` that are the same for every scene (a deployment's fixed
        channel, a given codebook): stored once, `H` as `[M, N]` and `codes` as `[L, N]`.

    Raises:
      ValueError: a key of `shared` that is not `"H"` or `"codes"`, or that differs between scenes.
    """
    host = jax.device_get(scenes)
    if np.ndim(host.y) == 2:
        host = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], host)
    mask = np.asarray(host.mask, bool)
    for key in shared:
        if key not in ("H", "codes"):
            raise ValueError(f"shared: expected keys among 'H', 'codes', got {key!r}")

    def truth(a):
        return np.where(mask, np.asarray(a, np.float64), np.nan)

    def opt(a, dtype, key):
        if a is None:
            return None
        a = np.asarray(a, dtype)
        if key in shared:
            if not np.all(a == a[:1]):
                raise ValueError(f"shared: '{key}' differs between scenes; it cannot be stored once")
            a = a[0]
        return a

    fields = dict(
        wavelength=float(np.asarray(geometry.wavelength)),
        positions=np.asarray(geometry.positions, np.float64),
        y=np.asarray(host.y, np.complex64),
        H=opt(host.H, np.complex64, "H"),
        codes=opt(host.codes, np.complex64, "codes"),
        noise_var=np.asarray(host.noise_var, np.float64),
        gt_phi=truth(host.phi),
        gt_theta=truth(host.theta),
        gt_r=truth(host.r),
        gt_power=truth(host.power),
        snr_db=np.asarray(host.snr_db, np.float64),
        meta=None if meta is None else dict(meta),
    )
    return SceneFile(**_validate(fields, "Scene"))


def _on_device(a) -> jax.Array:
    """A host array on the default device, as it is (`jnp.asarray` runs a small program per
    shape and dtype, one more to load in every process)."""
    return jax.device_put(np.asarray(a))


def scenes_from_file(sf: SceneFile, *, model: str = "exact", truth_covariance: bool = True) -> Scene:
    """A batched `Scene` (complex64/float32 jax arrays) for methods that take one.

    - A shared `H` `[M, N]` / `codes` `[L, N]` is broadcast to every scene.
    - `noise_var` and `snr_db` are NaN where the file has none (unknown).
    - Truth: padded slots get phi = theta = power = 0 and r = the largest true range in
      the file (1.0 if there is none), so every slot is a valid steering argument; `mask`
      is False there. Without `gt_power`, true sources get power 1. Without truth at all,
      the truth arrays have shape `[S, 0]`.
    - `R_true = A diag(p) A^H` from the truth with the shared `steering` function and
      `model` (zeros without truth). It is not trace-normalised. With `truth_covariance` False
      it is None: no method of `rismvdr.localize` reads it (the oracle MVDR builds its operator
      from the truth's positions), and building it is a program of its own and `S N^2` complex
      numbers (166 MB for 1000 scenes of 144 elements), which `rismvdr localize`, `plot` and
      `evaluate` skip.
    """
    f = _validate(_fields(sf), "SceneFile")
    sf = SceneFile(**f)
    s, l, m, n = sf.n_scenes, sf.n_snapshots, sf.n_measurements, sf.n_elements
    real = np.float32

    def per_scene(a, rows):
        return None if a is None else _on_device(np.broadcast_to(a, (s, rows, n)))

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
    r_true = (truth_covariance_from_sources(sf.geometry(), phi, theta, r, power, model=model)
              if truth_covariance else None)
    return Scene(
        y=_on_device(sf.y),
        H=per_scene(sf.H, m),
        codes=per_scene(sf.codes, l),
        noise_var=_on_device(unknown_or(sf.noise_var)),
        snr_db=_on_device(unknown_or(sf.snr_db)),
        phi=_on_device(phi),
        theta=_on_device(theta),
        r=_on_device(r),
        power=_on_device(power),
        mask=_on_device(mask),
        R_true=r_true,
    )


def scenario_from_meta(meta: Mapping[str, Any] | None, *, source: str = "SceneFile") -> SceneConfig | None:
    """The scenario a scene file was simulated from, decoded from its `meta["config"]`.

    `rismvdr simulate` records the `SceneConfig` there (`SceneConfig.as_dict`: the deployment
    fields of conventions section 9 only where they differ from their defaults, so a field that
    is absent takes its default); a file from elsewhere may have no `meta` or no `config` (or a
    null one): the answer is then None (the caller falls back to its defaults). Keys
    `SceneConfig` does not have are ignored. The values are not
    range-checked: the caller's settings check what they use (a command's flags may replace the
    scenario's search box first).

    Args:
      meta: a scene file's `meta` (`SceneFile.meta`), or None.
      source: the file it came from, named in errors.

    Raises:
      SceneFileError: `meta` is not a JSON object, or its `config` is not one, or a field of
        `config` has the wrong type (one line naming `source`, the key `meta` and the field).

    >>> scenario_from_meta({"config": {"name": "seed", "k_max": 3}}).k_max
    3
    >>> scenario_from_meta({"scenario": "seed"}) is None
    True
    """
    if meta is None:
        return None

    def fail(key, problem):
        raise SceneFileError(source, key, problem)

    if not isinstance(meta, Mapping):
        fail("meta", f"expected a JSON object, got {_json_type(meta)}")
    try:  # as a file holds it: tuples as lists, NumPy numbers as Python ones
        meta = json.loads(json.dumps(to_jsonable(meta), allow_nan=False))
    except (TypeError, ValueError) as e:
        fail("meta", f"not JSON-serialisable: {e}")
    config = meta.get("config")
    _check_meta_config(config, fail)
    if config is None:
        return None
    fields = {f.name for f in dataclasses.fields(SceneConfig)}
    cfg = {k: (tuple(tuple(r) for r in v) if k == "positions" and v is not None else
               tuple(v) if isinstance(v, list) else v)
           for k, v in config.items() if k in fields}
    return SceneConfig(**cfg)
