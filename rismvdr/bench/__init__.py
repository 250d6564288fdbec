"""Benchmarks and the demo: accuracy sweeps, speed, the README's demo report.

`bench accuracy`: `sweeps` (points, values, defaults), `methods` (which methods run where),
`accuracy` (the runner), `accuracy_report` (tables, summary). `bench speed`: `speed` (the plan
and the driver), `speed_worker` (one measurement per process), `baselines` (the original NumPy
formula), `machine` (machine record, peak memory), `speed_report`. `bench latency`: `latency`
(whole commands timed against `import jax` in the same series). Shared: `report` (cells, CSV),
`plots` (figures). `demo`: the README's report.
"""
from rismvdr.bench.accuracy import run_accuracy
from rismvdr.bench.accuracy_report import write_report
from rismvdr.bench.demo import run_demo
from rismvdr.bench.latency import run_latency
from rismvdr.bench.speed import run_speed
from rismvdr.bench.sweeps import CPU_SKIPS

__all__ = ["run_accuracy", "write_report", "run_speed", "run_latency", "run_demo", "CPU_SKIPS"]
