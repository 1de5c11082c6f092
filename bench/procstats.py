"""What the benchmarks read from /proc: a process's CPU and memory, the machine, and summaries.

Stdlib only, so the harness runs with any Python 3.11 and measures nothing but the daemons.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

MB = 1_000_000  # throughput figures are 10^6 bytes per second, as in ANCHORS.md
MiB = 1 << 20
GiB = 1 << 30


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a live process, in bytes; empty if it is gone."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def rss_mib(pid: int) -> float:
    return round(memory(pid).get("VmRSS", 0) / MiB, 1)


def peak_rss_mib(pid: int) -> float:
    return round(memory(pid).get("VmHWM", 0) / MiB, 1)


def children(pid: int) -> list[int]:
    """Direct children of a process (Syncthing's monitor re-executes itself as one)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            found += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {
            name: round(cpu_seconds(pid) - self.before[name], 3) for name, pid in self.pids.items()
        }
        return self.used


class RssSampler(threading.Thread):
    """Samples VmRSS of some processes every `period` seconds and keeps each one's maximum.

    VmHWM covers a process's whole life; this one covers only the measured window.
    """

    def __init__(self, pids: dict[str, int], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids, self.period = pids, period
        self.peak = dict.fromkeys(pids, 0)
        self._stop_flag = threading.Event()

    def run(self) -> None:
        while not self._stop_flag.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], memory(pid).get("VmRSS", 0))
            self._stop_flag.wait(self.period)

    def finish(self) -> dict[str, float]:
        self._stop_flag.set()
        self.join()
        return {name: round(value / MiB, 1) for name, value in self.peak.items()}


def summary(values: list[float]) -> dict[str, object]:
    """Median, spread (min, max), p95 and the values themselves; p95 by linear interpolation."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "min": ordered[0],
        "max": ordered[-1],
        "p95": round(percentile(ordered, 95), 4),
        "values": values,
    }


def percentile(ordered: list[float], pct: float) -> float:
    """The pct-th percentile of sorted values, interpolating between ranks (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, object]:
    """CPU model, core count and memory, for the results and BENCHMARKS.md."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    flags_line = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    meminfo = Path("/proc/meminfo").read_text()
    mem = re.search(r"MemTotal:\s*(\d+)", meminfo)
    return {
        "cpu_model": model.group(1).strip() if model else "unknown",
        "nproc": os.cpu_count(),
        "mem_total_gib": round(int(mem.group(1)) / (1 << 20), 1) if mem else None,
        "cpu_flags": sorted(flags & {"aes", "avx2", "sha_ni", "hypervisor"}),
        "kernel": os.uname().release,
    }


def wait_until(predicate: Callable[[], bool], limit: float, period: float, what: str) -> float:
    """Poll `predicate()` until it is true; return the monotonic time it first was."""
    deadline = time.monotonic() + limit
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {limit:.0f} s")
        time.sleep(period)


class BenchError(Exception):
    """A benchmark step failed; the message says which and what was seen."""
