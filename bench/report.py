"""The side-by-side table: per workload, albumsync's figure, Syncthing's, their ratio, the target.

Figures are medians with their spread (min-max) when a workload ran more than once. The ratio is
always albumsync / Syncthing, so whether higher is better depends on the metric (the "better"
column says which way). Targets are ANCHORS.md's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procstats import percentile

Extract = Callable[[dict[str, Any]], float]


@dataclass(frozen=True)
class Metric:
    workload: str  # key in results["workloads"]
    title: str
    unit: str
    better: str  # "lower" | "higher"
    extract: Extract
    target: str = ""


def _get(*keys: str) -> Extract:
    def extract(run: dict[str, Any]) -> float:
        value: Any = run
        for key in keys:
            value = value[key]
        return float(value)

    return extract


METRICS = [
    Metric("bulk", "initial sync, wall", "s", "lower", _get("wall_s"), "ratio <= 0.8"),
    Metric(
        "bulk", "initial sync, throughput", "MB/s", "higher", _get("throughput_MBps"), ">= 1.25"
    ),
    Metric("bulk", "CPU per GiB, sender", "s", "lower", _get("cpu_s_per_GiB", "sender")),
    Metric("bulk", "CPU per GiB, receiver", "s", "lower", _get("cpu_s_per_GiB", "receiver")),
    Metric("bulk", "CPU per GiB, both", "s", "lower", _get("cpu_s_per_GiB", "both"), "<= 0.7"),
    Metric(
        "bulk", "peak RSS, sender", "MiB", "lower", _get("peak_rss_MiB", "sender"), "<= 120 MiB"
    ),
    Metric(
        "bulk", "peak RSS, receiver", "MiB", "lower", _get("peak_rss_MiB", "receiver"), "<= 120 MiB"
    ),
    Metric("small", "initial sync, wall", "s", "lower", _get("wall_s")),
    Metric("small", "files per second", "files/s", "higher", _get("files_per_s"), ">= 3"),
    Metric("small", "CPU per file, sender", "ms", "lower", _get("cpu_ms_per_file", "sender")),
    Metric("small", "CPU per file, receiver", "ms", "lower", _get("cpu_ms_per_file", "receiver")),
    Metric("small", "CPU per file, both", "ms", "lower", _get("cpu_ms_per_file", "both")),
    Metric("scan", "scan + hash, wall", "s", "lower", _get("wall_s")),
    Metric("scan", "scan + hash, rate", "MB/s", "higher", _get("rate_MBps"), ">= 1.0"),
    Metric("scan", "scan + hash, CPU", "s", "lower", _get("cpu_s")),
    Metric("big_album", "publish N entries (info)", "s", "lower", _get("publish_s")),
    Metric(
        "big_album", "owner RSS, idle", "MiB", "lower", _get("owner_idle_rss_MiB"), "<= 200 MiB"
    ),
    Metric("big_album", "new member catch-up", "s", "lower", _get("catch_up_s"), "<= 30 s"),
]

WORKLOAD_TITLES = {
    "bulk": "initial sync {bulk_files} files, {scan_size}",
    "small": "initial sync {small_files} x {small_size}",
    "latency": "new {latency_label} photo, watcher on",
    "scan": "scan + hash {scan_size}, one device",
    "big_album": "album of {big_entries} small entries",
}


def _runs(results: dict[str, Any], workload: str, tool: str) -> list[dict[str, Any]]:
    found = results["workloads"].get(workload, {}).get(tool, [])
    runs = found if isinstance(found, list) else [found]
    return [r for r in runs if isinstance(r, dict) and "error" not in r]


def _errors(results: dict[str, Any], workload: str, tool: str) -> list[str]:
    found = results["workloads"].get(workload, {}).get(tool, [])
    runs = found if isinstance(found, list) else [found]
    return [str(r["error"]) for r in runs if isinstance(r, dict) and "error" in r]


def _cell(values: list[float]) -> tuple[str, float | None]:
    if not values:
        return "n/a", None
    middle = statistics.median(values)
    text = _fmt(middle)
    if len(values) > 1:
        text += f" ({_fmt(min(values))}-{_fmt(max(values))})"
    return text, middle


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per metric: workload, metric, albumsync, Syncthing, ratio, better, target."""
    params = results["params"]
    found: list[dict[str, str]] = []
    for metric in METRICS:
        if metric.workload not in results["workloads"]:
            continue
        cells = {}
        medians = {}
        for tool in ("albumsync", "syncthing"):
            values = [metric.extract(run) for run in _runs(results, metric.workload, tool)]
            cells[tool], medians[tool] = _cell(values)
            if not values and _errors(results, metric.workload, tool):
                cells[tool] = "failed"
        reason = results["workloads"][metric.workload].get("syncthing_note")
        if medians["syncthing"] is None and reason:
            cells["syncthing"] = f"n/a ({reason})"
        found.append(_row(metric, params, cells, medians))
    found[_latency_index(found) : _latency_index(found)] = _latency_rows(results)
    return found


def _row(
    metric: Metric,
    params: dict[str, Any],
    cells: dict[str, str],
    medians: dict[str, float | None],
) -> dict[str, str]:
    a, s = medians["albumsync"], medians["syncthing"]
    ratio = f"{a / s:.2f}" if a is not None and s else "n/a"
    return {
        "workload": WORKLOAD_TITLES[metric.workload].format(**params),
        "metric": f"{metric.title} ({metric.unit})",
        "albumsync": cells["albumsync"],
        "syncthing": cells["syncthing"],
        "ratio": ratio,
        "better": metric.better,
        "target": metric.target,
    }


def _latency_index(found: list[dict[str, str]]) -> int:
    """Latency rows go after the small-file rows, before the scan rows."""
    scan = WORKLOAD_TITLES["scan"].split(" {")[0]
    for i, row in enumerate(found):
        if row["workload"].startswith(scan):
            return i
    return len(found)


def _latency_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    latency = results["workloads"].get("latency")
    if not latency:
        return []
    found = []
    for name, pct, target in (("median", 50, "<= 0.5 s"), ("p95", 95, "<= 1 s")):
        medians: dict[str, float | None] = {}
        cells = {}
        for tool in ("albumsync", "syncthing"):
            values = latency.get(tool) or []
            if not isinstance(values, list) or not values:
                medians[tool], cells[tool] = None, "failed" if values else "n/a"
                continue
            medians[tool] = percentile(sorted(values), pct)
            cells[tool] = f"{_fmt(medians[tool] or 0)} (n={len(values)})"
        metric = Metric("latency", f"{name}, to complete at the peer", "s", "lower", _get(), target)
        found.append(_row(metric, results["params"], cells, medians))
    return found


def markdown_table(table: list[dict[str, str]]) -> str:
    head = "| workload | metric | albumsync | Syncthing | ratio | better | target |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    last = ""
    for row in table:
        workload = row["workload"] if row["workload"] != last else ""
        last = row["workload"]
        lines.append(
            f"| {workload} | {row['metric']} | {row['albumsync']} | {row['syncthing']} "
            f"| {row['ratio']} | {row['better']} | {row['target']} |"
        )
    return "\n".join(lines)


ANALYSIS = Path(__file__).with_name("analysis.md")  # hand-written: where the time goes


def benchmarks_md(results: dict[str, Any], table: list[dict[str, str]]) -> str:
    """The whole BENCHMARKS.md for one run, then bench/analysis.md (profiles and what would
    close each gap), which is kept by hand and survives regeneration."""
    m = results["machine"]
    load = results["loadavg"]
    errors = [
        f"- {workload} / {tool}: {error}"
        for workload in results["workloads"]
        for tool in ("albumsync", "syncthing")
        for error in _errors(results, workload, tool)
    ]
    return f"""# Benchmarks: albumsync next to Syncthing

Generated by `bench/compare.py` (issue #6); re-run with the command below and commit the new
file. Compare **ratios from one run**: this machine is shared and noisy, absolute figures from
different days are not comparable (ANCHORS.md).

- Date: {results["started"]}
- Command: `{results["command"]}` ({results["mode"]} mode)
- Machine: {m["cpu_model"]}, nproc {m["nproc"]}, {m["mem_total_gib"]} GiB memory, kernel {m["kernel"]}
- Load average (1/5/15 min) before: {_load(load["before"])}; after: {_load(load["after"])}
- Versions: albumsync {results["versions"]["albumsync"]}; {results["versions"]["syncthing"]}
- Network: {results["isolation"]}
- Raw figures: `{results["results_file"]}`{_interrupted(results)}

{markdown_table(table)}

Ratio = albumsync / Syncthing (medians); "better" says which direction wins. Cells are
median (min-max) over {results["params"]["reps"]} repetition(s), run alternately (albumsync,
Syncthing, albumsync, ...), each with fresh data directories, keys and databases on both sides.

## Method

- **Data**: random bytes (incompressible JPEG stand-ins), written once, hard-linked into each
  run's sender folder, so both tools read the same inodes from the page cache.
- **Initial sync**: the clock starts when the files appear at the sender and stops when every
  final name exists at the receiver (both tools write partial files under other names), then
  every size and a sample of contents are checked. albumsync: owner and member daemons are up,
  the member has joined the (empty) album, then the files are renamed into the owner's folder.
  Syncthing: the sender's prefilled folder is unpaused (ANCHORS.md's method). Both include the
  sender's hashing. CPU = utime+stime of each daemon over the window (Syncthing: its inner
  process, not the monitor); peak RSS = VmHWM.
- **New photo**: both pairs up and in sync with watchers on (albumsync defaults; Syncthing
  defaults, fsWatcherDelayS=10); a fresh random file is copied into the sender folder; the clock
  stops when it is at the receiver at full size. Reps alternate tools with 0.5-3 s random gaps.
- **Scan + hash**: one daemon alone; albumsync from `POST /albums` until its view lists every
  file (hash, encrypt, sign, store); Syncthing from unpause until `localFiles` is complete and
  the folder idle.
- **Album of many entries**: albumsync: the owner publishes N tiny files; idle RSS 3 s later;
  a new member's time from accepting the invite until its view lists N entries (polled every
  1 s: each poll costs the daemon O(N) work). Syncthing: the
  sender scans N files (publish includes its start-up); idle RSS 3 s later; a new peer's time
  from connecting until its global index lists N files.
{chr(10).join(["", "## Failures", "", *errors]) if errors else ""}
{_analysis()}"""


def _analysis() -> str:
    return "\n" + ANALYSIS.read_text(encoding="utf-8") if ANALYSIS.exists() else ""


def _interrupted(results: dict[str, Any]) -> str:
    if "interrupted" not in results:
        return ""
    return f"\n- **Incomplete run**: {results['interrupted']}; workloads not reached are missing"


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
