"""Detections files (`.csv`): one row a detection.

Columns `scene,phi_deg,theta_deg,r_m,x_m,y_m,z_m,score_db`, `scene` the 0-based scene index,
`(x, y, z) = r [cos th cos phi, cos th sin phi, sin th]`. Written atomically
(`atomic_write`); read back into the detector's padded `[S, Kmax]` arrays.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from rismvdr.io.atomic import atomic_write
from rismvdr.localize.detect import Detections

__all__ = ["DETECTION_COLUMNS", "DetectionsFileError", "write_detections_csv", "read_detections_csv"]

#: Columns of a detections CSV, in order.
DETECTION_COLUMNS = ("scene", "phi_deg", "theta_deg", "r_m", "x_m", "y_m", "z_m", "score_db")


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
    try:
        with fh:
            rows = _read_rows(csv.reader(fh), n_scenes, fail)
    except UnicodeDecodeError:
        fail(None, None, "not a UTF-8 text file")
    except csv.Error as e:
        fail(None, None, f"malformed CSV ({e})")
    return _padded(rows, n_scenes, k_max, fail)


def _read_rows(reader, n_scenes: int | None, fail) -> list[tuple[int, int, list[float]]]:
    """`(line, scene, values)` of every non-blank row; `values` the columns after `scene`."""
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
    rows = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            fail(line, None, f"expected {len(header)} fields, got {len(row)}")
        rows.append((line, _scene_index(row[col["scene"]], line, n_scenes, fail),
                     _row_values(row, col, line, fail)))
    return rows


def _scene_index(cell: str, line: int, n_scenes: int | None, fail) -> int:
    text = cell.strip()
    try:
        scene = int(text)
    except ValueError:
        fail(line, "scene", f"not an integer scene index: {text!r}")
    if scene < 0 or (n_scenes is not None and scene >= n_scenes):
        bound = f"[0, {n_scenes})" if n_scenes is not None else ">= 0"
        fail(line, "scene", f"index {scene} out of range (expected {bound})")
    return scene


def _row_values(row: list[str], col: dict[str, int], line: int, fail) -> list[float]:
    """The numbers of one row (`DETECTION_COLUMNS[1:]`), checked: finite (the score may be
    +-inf), a range > 0 and angles in range."""
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
    return values


def _padded(rows, n_scenes: int | None, k_max: int | None, fail) -> Detections:
    """The rows in padded `[S, Kmax]` arrays, each scene's detections in file order."""
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
