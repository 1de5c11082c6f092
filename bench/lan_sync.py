"""Initial sync between two albumsync daemons on loopback: wall time, throughput, peak RSS, CPU.

    .venv/bin/python -m bench.lan_sync --files 200 --size-mib 5      # 1 GiB, as ANCHORS.md
    .venv/bin/python -m bench.lan_sync --files 5000 --size-kib 50    # small files

Two real `albumsync run` processes with their own data directories under --dir; the owner's
folder is filled with random files and published first (not timed: that is the scan benchmark);
the clock runs from the invite code being accepted until the member's copy is complete. Peak RSS
is each process's VmHWM; CPU is user+system seconds from /proc. Everything is cleaned up by PID.
The side-by-side comparison with Syncthing is bench/README's job (issue 6); this is the daemon's
own tool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(home: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip()


def start(home: Path, name: str) -> subprocess.Popen[bytes]:
    cli(home, "init", "--name", name)
    log = (home / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "--home",
            str(home),
            "run",
            "--ui",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not (home / "daemon.json").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"daemon {name} did not start: {(home / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return proc


def proc_stats(pid: int) -> tuple[int, float]:
    """(peak RSS in bytes, CPU seconds) of a live process."""
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm, (int(fields[11]) + int(fields[12])) / ticks


def make_files(folder: Path, count: int, size: int) -> int:
    folder.mkdir(parents=True)
    block = os.urandom(size)
    for i in range(count):
        # Distinct content per file (the first bytes differ), random elsewhere: cheap to make.
        (folder / f"IMG_{i:05}.jpg").write_bytes(i.to_bytes(8, "big") + block[8:])
    return count * size


def wait_copied(folder: Path, total: int, limit: float) -> None:
    """Until the member's folder holds every byte (final names only; partials live elsewhere)."""
    deadline = time.monotonic() + limit
    while sum(p.stat().st_size for p in folder.glob("IMG_*")) < total if folder.exists() else True:
        if time.monotonic() > deadline:
            raise SystemExit(f"not synced after {limit} s")
        time.sleep(0.05)


def wait_synced(home: Path, limit: float) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "--home",
            str(home),
            "status",
            "--wait-synced",
            str(limit),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    base = Path(args.dir or tempfile.mkdtemp(prefix="albumsync-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        owner_home, member_home = base / "owner", base / "member"
        size = args.size_kib * 1024 if args.size_kib else args.size_mib * 1024 * 1024
        total = make_files(base / "photos", args.files, size)
        owner = start(owner_home, "bench owner")
        member = start(member_home, "bench member")
        procs += [owner, member]
        started = time.monotonic()
        album = cli(owner_home, "album", "create", str(base / "photos"), "--name", "bench")
        wait_synced(owner_home, 600)
        while json.loads(cli(owner_home, "album", "list", "--json"))[0]["files"] < args.files:
            time.sleep(0.1)
        publish = time.monotonic() - started
        code = cli(owner_home, "invite", "create", album, "--role", "viewer")
        owner_cpu0 = proc_stats(owner.pid)[1]
        member_cpu0 = proc_stats(member.pid)[1]
        started = time.monotonic()
        cli(member_home, "invite", "accept", code, "--path", str(base / "copy"))
        wait_copied(base / "copy", total, 1800)
        wall = time.monotonic() - started
        owner_rss, owner_cpu = proc_stats(owner.pid)
        member_rss, member_cpu = proc_stats(member.pid)
        copied = sum(p.stat().st_size for p in (base / "copy").glob("IMG_*"))
        if copied != total:
            raise SystemExit(f"copy incomplete: {copied} of {total} bytes")
        return {
            "files": args.files,
            "bytes": total,
            "publish_s": round(publish, 2),
            "sync_wall_s": round(wall, 2),
            "throughput_MBps": round(total / wall / 1e6, 1),
            "files_per_s": round(args.files / wall, 1),
            "cpu_s_per_GiB": {
                "sender": round((owner_cpu - owner_cpu0) / (total / 2**30), 2),
                "receiver": round((member_cpu - member_cpu0) / (total / 2**30), 2),
            },
            "peak_rss_MiB": {
                "owner": round(owner_rss / 2**20, 1),
                "member": round(member_rss / 2**20, 1),
            },
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=5)
    parser.add_argument("--size-kib", type=int, default=0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
