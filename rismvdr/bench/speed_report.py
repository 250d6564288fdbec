"""The report of `rismvdr bench speed`: `speed.json` (`{"meta": ..., "records": [...]}`;
`pandas.DataFrame(json.load(f)["records"])`), `speed.csv` (columns `RECORD_KEYS`), `speed.md`
(one table) and `speed.png` (ratios over the NumPy formula)."""
from __future__ import annotations

from pathlib import Path

from rismvdr.bench.plots import plot_speed_ratios
from rismvdr.bench.report import fmt_number, write_records_csv
from rismvdr.io import atomic_write, write_json

__all__ = ["RECORD_KEYS", "speed_markdown", "write_speed_report"]

#: Every record's keys, in CSV column order.
RECORD_KEYS = ("part", "name", "variant", "grid", "batch", "scenes", "reps", "scenes_per_s", "median_s",
               "first_call_s", "ratio_vs_numpy", "baseline", "peak_rss_mib", "device_peak_mib", "status",
               "wall_s")


def speed_markdown(records: list[dict], meta: dict) -> str:
    """The report's one table (`speed.md`), headed by the machine, versions and command line."""
    m = meta["machine"]
    v = m.get("versions", {})
    lines = ["# rismvdr speed bench", "",
             f"{m.get('device_kind')} ({m.get('backend')}), {m.get('cpu_count')} CPUs ({m.get('cpu_model')}), "
             f"Python {m.get('python')}, jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, NumPy {v.get('numpy')}, "
             f"flax {v.get('flax')}; {m.get('date')}; load average at start {m.get('load_avg_1_5_15')}. "
             f"Command: `{meta['command']}`. Timings exclude the first call (compilation); peak host RSS "
             f"includes the JAX runtime ({fmt_number(m.get('runtime_rss_mib'), '.0f', '-')} MiB for a worker "
             f"that does nothing). Ratio: scenes/s over the NumPy original formula on the same grid, measured in "
             f"this run.", "",
             "| part | name | variant | grid | batch | scenes/s | ratio vs NumPy | first call (s) | "
             "peak host RSS (MiB) | device peak (MiB) | status |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        ratio = f"{r['ratio_vs_numpy']:.3g}x" if r.get("ratio_vs_numpy") else "-"
        cells = [fmt_number(r.get(k), spec, "-") for k, spec in (
            ("scenes_per_s", ".3g"), ("first_call_s", ".1f"), ("peak_rss_mib", ".0f"), ("device_peak_mib", ".0f"))]
        lines.append(f"| {r['part']} | {r['name']} | {r['variant']} | {r['grid'] or '-'} | {r['batch']} | "
                     f"{cells[0]} | {ratio} | {cells[1]} | {cells[2]} | {cells[3]} | {r['status']} |")
    return "\n".join(lines)


def write_speed_report(out: Path, meta: dict, records: list[dict], final: bool) -> list[str]:
    """Write `speed.json` and `speed.csv` (after every measurement) and, when `final`, `speed.md`
    and `speed.png`; returns the names written."""
    write_json(out / "speed.json", dict(meta=meta, records=records))
    write_records_csv(out / "speed.csv", records, RECORD_KEYS)
    written = ["speed.json", "speed.csv"]
    if final:
        with atomic_write(out / "speed.md") as f:
            f.write(speed_markdown(records, meta) + "\n")
        written.append("speed.md")
        if plot_speed_ratios(out / "speed.png", records):
            written.append("speed.png")
    return written
