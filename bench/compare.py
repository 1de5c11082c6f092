"""albumsync next to Syncthing 1.19 on the same data, loopback only: one command, one table.

    ./dev bench            # full: 1 GiB / 200 files x3, 5,000 x 50 KiB x3, latency x5, 100,000 entries
    ./dev bench --quick    # smoke run in under 3 minutes (smaller sets, one repetition)
    .venv/bin/python -m bench.compare --help

As root it installs Syncthing from Debian if missing, then re-runs itself in a network namespace
that holds only `lo`. Results: bench/results/<date>.json (quick: <date>-quick.json) and, for a full
run, BENCHMARKS.md. Data and processes live in a scratch directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import dataset, processes, report, syncthing_peer, workloads
from bench.procstats import MiB, loadavg, machine, summary

ROOT = Path(__file__).resolve().parent.parent
NETNS_FLAG = "ALBUMSYNC_BENCH_NETNS"

FULL: dict[str, Any] = {
    "bulk_files": 200,
    "bulk_each": (1 << 30) // 200,  # 5,368,709 B: 1 GiB in 200 files, as in ANCHORS.md
    "small_files": 5000,
    "small_each": 50 * 1024,
    "big_entries": 100_000,
    "big_each": 100,
    "latency_size": 5 * MiB,
    "latency_reps": {"albumsync": 5, "syncthing": 5},
    "reps": 3,
}
QUICK = FULL | {
    "bulk_files": 25,
    "small_files": 500,
    "big_entries": 2_000,
    "latency_reps": {"albumsync": 5, "syncthing": 2},
    "reps": 1,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").split("\n")[1:]),
    )
    parser.add_argument("--quick", action="store_true", help="smaller sets, one repetition")
    parser.add_argument(
        "--only",
        default="bulk,small,latency,scan,big_album",
        help="comma list of workloads to run (default: all)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per tool (default 3, quick 1)")
    parser.add_argument("--big-entries", type=int, help="entries in the big album")
    parser.add_argument("--scratch", help="scratch directory (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--host-net",
        action="store_true",
        help="as root, run in the host network namespace anyway (still loopback addresses)",
    )
    parser.add_argument("--out", help="results JSON (default bench/results/<date>[-quick].json)")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only rebuild the table (and BENCHMARKS.md for a full run) from a results file",
    )
    parser.add_argument(
        "--no-md", action="store_true", help="do not write BENCHMARKS.md (quick runs never do)"
    )
    return parser.parse_args(argv)


def ensure_syncthing() -> str:
    """The Syncthing version, installing the Debian package first when root and it is missing."""
    found = syncthing_peer.version()
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(
            "syncthing is not installed; as root run `apt-get install syncthing` (or `./dev bench`)"
        )
    print("[bench] installing syncthing (Debian package)", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", "syncthing"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = syncthing_peer.version()
    if not found:
        raise SystemExit("apt-get installed syncthing but `syncthing --version` still fails")
    return found


def enter_netns(argv: list[str]) -> None:
    """Re-execute this command in a new network namespace with only `lo` (up); root only."""
    script = f'ip link set lo up && {NETNS_FLAG}=1 exec "$0" "$@"'
    command = [sys.executable, "-m", "bench.compare", *argv]
    # Our own argv: the shell only runs the fixed script, which execs the argument list as is.
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c", script, *command])  # noqa: S606


def isolation() -> str:
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's
    if os.environ.get(NETNS_FLAG) == "1":
        return f"own network namespace, interfaces: {', '.join(interfaces)}; all on 127.0.0.1"
    return "host network namespace (not root or --host-net); every socket on 127.0.0.1"


def albumsync_version() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


class Bench:
    """Runs the selected workloads, each tool in turn, and collects the raw figures."""

    def __init__(self, params: dict[str, Any], scratch: Path, keep: bool) -> None:
        self.params = params
        self.scratch = scratch
        self.run = workloads.Run(scratch, keep)
        self.found: dict[str, Any] = {}

    def attempt(self, what: str, step: Callable[[], Any]) -> Any:
        """One measured run; a failure is recorded and reported instead of ending the bench."""
        print(f"[bench] {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)
        try:
            result = step()
        except Exception as exc:  # one failed run must not lose the others' figures
            traceback.print_exc()
            return {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"[bench]   {_brief(result)}", file=sys.stderr, flush=True)
        return result

    def sync(self, label: str, files: int, each: int) -> None:
        data = dataset.ensure(self.scratch, label, files, each)
        runs: dict[str, list[Any]] = {"albumsync": [], "syncthing": []}
        for rep in range(self.params["reps"]):
            tag = f"{label}-{rep + 1}"
            for tool, step in (
                ("albumsync", workloads.albumsync_initial_sync),
                ("syncthing", workloads.syncthing_initial_sync),
            ):
                runs[tool].append(self.attempt(f"{tag} {tool}", partial(step, self.run, data, tag)))
        self.found[label] = runs

    def scan(self) -> None:
        p = self.params
        data = dataset.ensure(self.scratch, "bulk", p["bulk_files"], p["bulk_each"])
        runs: dict[str, list[Any]] = {"albumsync": [], "syncthing": []}
        for rep in range(p["reps"]):
            for tool, step in (
                ("albumsync", workloads.albumsync_scan),
                ("syncthing", workloads.syncthing_scan),
            ):
                runs[tool].append(
                    self.attempt(f"scan-{rep + 1} {tool}", partial(step, self.run, data))
                )
        self.found["scan"] = runs

    def latency(self) -> None:
        p = self.params
        result = self.attempt(
            "latency (both pairs, alternating)",
            lambda: workloads.latency(self.run, p["latency_size"], p["latency_reps"], 3),
        )
        if "error" in result:
            result = {"albumsync": [result], "syncthing": [result]}
        self.found["latency"] = result | {
            f"{tool}_summary": summary(values)
            for tool, values in result.items()
            if isinstance(values, list) and values and isinstance(values[0], float)
        }

    def big_album(self) -> None:
        p = self.params
        data = dataset.ensure(self.scratch, "big", p["big_entries"], p["big_each"])
        self.found["big_album"] = {
            "albumsync": self.attempt(
                f"album of {data.count} entries, albumsync",
                lambda: workloads.albumsync_big_album(self.run, data),
            ),
            "syncthing": self.attempt(
                f"folder of {data.count} files, syncthing",
                lambda: workloads.syncthing_big_album(self.run, data),
            ),
        }


def _brief(result: Any) -> str:
    text = json.dumps(result)
    return text if len(text) < 400 else text[:400] + "..."


def params_for(args: argparse.Namespace) -> dict[str, Any]:
    params = dict(QUICK if args.quick else FULL)
    if args.reps:
        params["reps"] = args.reps
    if args.big_entries:
        params["big_entries"] = args.big_entries
    return params | labels(params)


def labels(params: dict[str, Any]) -> dict[str, str]:
    """The sizes as the table's titles print them."""
    return {
        "bulk_size": _size(params["bulk_each"]),
        "small_size": _size(params["small_each"]),
        "latency_label": _size(params["latency_size"]),
        "scan_size": _size(params["bulk_each"] * params["bulk_files"]),
    }


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor * 0.999:  # 1 GiB less a few bytes (200 equal files) is "1 GiB"
            value = round(n / factor, 2)
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value == int(value)
                else f"{value:.1f} {unit}"
            )
    return f"{n} B"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.chdir(ROOT)
    if args.render:
        render(Path(args.render), args)
        return
    st_version = ensure_syncthing()
    if os.geteuid() == 0 and not args.host_net and os.environ.get(NETNS_FLAG) != "1":
        enter_netns(argv)
    params = params_for(args)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="albumsync-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    processes.PIDFILE = scratch / "pids"
    command = os.environ.get("ALBUMSYNC_BENCH_COMMAND", "").strip() or shlex.join(
        [".venv/bin/python", "-m", "bench.compare", *argv]
    )
    results: dict[str, Any] = {
        "tool": "albumsync-vs-syncthing",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "loadavg": {"before": loadavg()},
        "versions": {"albumsync": albumsync_version(), "syncthing": st_version},
        "isolation": isolation(),
        "params": {k: v for k, v in params.items()},
    }
    bench = Bench(params, scratch, args.keep)
    only = set(args.only.split(","))
    began = time.monotonic()
    try:
        run_workloads(bench, only)
    except (KeyboardInterrupt, SystemExit) as stop:
        # Interrupted (Ctrl-C, SIGTERM): keep what was measured, marked as such.
        results["interrupted"] = f"stopped by {type(stop).__name__} {stop}".strip()
    finally:
        processes.stop_all()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    results["workloads"] = bench.found
    results["loadavg"]["after"] = loadavg()
    results["duration_s"] = round(time.monotonic() - began, 1)
    write(results, args)
    if "interrupted" in results:
        raise SystemExit(1)


def run_workloads(bench: Bench, only: set[str]) -> None:
    params = bench.params
    if "bulk" in only:
        bench.sync("bulk", params["bulk_files"], params["bulk_each"])
    if "small" in only:
        bench.sync("small", params["small_files"], params["small_each"])
    if "latency" in only:
        bench.latency()
    if "scan" in only:
        bench.scan()
    if "big_album" in only:
        bench.big_album()


def render(path: Path, args: argparse.Namespace) -> None:
    results = json.loads(path.read_text())
    results["params"] |= labels(results["params"])
    args.out, args.quick = str(path), results["mode"] == "quick"
    write(results, args)


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    date = time.strftime("%Y-%m-%d")
    out = (
        Path(args.out)
        if args.out
        else ROOT / "bench" / "results" / (f"{date}-quick.json" if args.quick else f"{date}.json")
    )
    results["results_file"] = _relative(out)
    table = report.rows(results)
    results["table"] = table
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report.markdown_table(table))
    print(
        f"\nload average before {results['loadavg']['before']}, after {results['loadavg']['after']};"
        f" {results['duration_s']} s; results in {results['results_file']}"
    )
    if not args.quick and not args.no_md:
        (ROOT / "BENCHMARKS.md").write_text(report.benchmarks_md(results, table))
        print("table written to BENCHMARKS.md")


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
