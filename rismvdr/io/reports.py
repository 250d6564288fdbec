"""JSON reports: the one JSON sanitiser of rismvdr (`to_jsonable`), and JSON files.

`write_json` writes through `atomic_write`; `read_json` names the flag and the file in every
error.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from rismvdr.io.atomic import atomic_write

__all__ = ["to_jsonable", "read_json", "write_json"]


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
