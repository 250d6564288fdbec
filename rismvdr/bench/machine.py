"""The machine record of a bench run, and a process's peak memory (host RSS, accelerator).

`machine_record` runs inside a speed-bench worker: it starts the JAX runtime, so the RSS it
reports is that of a worker that has done nothing yet (every other worker's floor).
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import socket
import sys
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp

__all__ = ["VERSIONED", "peak_rss_mib", "device_peak_mib", "cpu_model", "package_version", "machine_record"]

#: Distributions whose versions a machine record lists.
VERSIONED = ("jax", "jaxlib", "numpy", "scipy", "flax", "optax", "orbax-checkpoint", "rismvdr", "torch")


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def device_peak_mib() -> float | None:
    """JAX's `peak_bytes_in_use` of the first local device, MiB (None: the backend has no memory stats)."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        return None
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`; elsewhere `platform.processor()`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(dist: str) -> str | None:
    """Installed version of a distribution (None when absent)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_record() -> dict:
    """Date, host, platform, CPU, load, JAX backend and device, XLA flags, versions of
    `VERSIONED`, PyTorch's CUDA view (None when torch is not importable) and the RSS of this
    process after starting the JAX runtime (`runtime_rss_mib`)."""
    jax.block_until_ready(jnp.ones(8) * 2)
    dev = jax.devices()[0]
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(), platform=platform.platform(), python=platform.python_version(),
        cpu_model=cpu_model(), cpu_count=os.cpu_count(),
        load_avg_1_5_15=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
        xla_flags=os.environ.get("XLA_FLAGS"), runtime_rss_mib=peak_rss_mib(),
        versions={m: package_version(m) for m in VERSIONED},
    )
    info["torch"] = None
    try:
        import torch  # optional dependency: the PyTorch baseline runs only where it is installed

        info["torch"] = dict(version=torch.__version__, cuda=bool(torch.cuda.is_available()),
                             device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except Exception:  # noqa: BLE001 - torch is optional
        pass
    return info
