"""Shared by the benchmark scripts: the machine record and the result file."""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
from pathlib import Path

import jax
import numpy as np


def machine_info(**extra) -> dict:
    """Date, host, platform, CPU count, device, JAX and NumPy versions (plus `extra`)."""
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                host=socket.gethostname(), platform=platform.platform(), cpus=os.cpu_count(),
                device=str(jax.devices()[0].device_kind), n_devices=len(jax.devices()), jax=jax.__version__,
                numpy=np.__version__, **extra)


def write_results(out, default_name: str, info: dict, rows: list) -> Path:
    """Write `{"machine": info, "results": rows}` to `out` (default `results/<default_name>`)."""
    out = Path(out or Path(__file__).parent / "results" / default_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=info, results=rows), indent=2))
    print(f"wrote {out}")
    return out
