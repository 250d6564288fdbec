"""Report writing shared by the benches: number cells of markdown tables, record CSV files."""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence

from rismvdr.io import atomic_write

__all__ = ["fmt_number", "write_records_csv"]


def fmt_number(v, spec: str = ".3f", missing: str = "n/a") -> str:
    """`format(v, spec)` for a finite number, else `missing` (None, NaN, inf, text)."""
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else missing


def write_records_csv(path, records: Sequence[dict], keys: Sequence[str]) -> None:
    """Write flat records as CSV (atomically): columns `keys` in that order, None as an empty
    cell, other keys left out."""
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(keys), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
