"""A new member's initial sync between two albumsync daemons on loopback: wall, throughput, RSS, CPU.

    .venv/bin/python -m bench.lan_sync --files 200 --size-mib 5      # 1 GiB, as ANCHORS.md
    .venv/bin/python -m bench.lan_sync --files 5000 --size-kib 50    # small files

Two real `albumsync run` processes with their own data directories under --dir; the owner's
folder is filled with random files and published first (not timed: that is the scan benchmark);
the clock runs from the invite code being accepted until the member's copy is complete, so this
is the transfer alone. Peak RSS is each process's VmHWM; CPU is user+system seconds from /proc.
Everything is cleaned up by PID. The side-by-side comparison with Syncthing, where the clock
includes the sender's hashing, is bench/compare.py (`./dev bench`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench import dataset, processes
from bench.albumsync_peer import AlbumsyncNode
from bench.procstats import MB, CpuMeter, GiB, peak_rss_mib, wait_until

LIMIT = 1800.0


def run(args: argparse.Namespace) -> dict[str, object]:
    base = Path(args.dir or tempfile.mkdtemp(prefix="albumsync-bench-"))
    size = args.size_kib * 1024 if args.size_kib else args.size_mib * 1024 * 1024
    owner = AlbumsyncNode(base / "owner", "bench owner")
    member = AlbumsyncNode(base / "member", "bench member")
    try:
        data = dataset.ensure(base, "photos", args.files, size)
        data.link_into(base / "album")
        owner.start()
        member.start()
        started = time.monotonic()
        album = owner.create_album(base / "album")
        published = wait_until(
            lambda: owner.album_files(album) == data.count, LIMIT, 0.1, "publishing"
        )
        code = owner.invite_code(album)
        meter = CpuMeter({"sender": owner.pid, "receiver": member.pid})
        meter.start()
        accepted = time.monotonic()
        member.accept(code, base / "copy")
        done = wait_until(
            lambda: data.complete_in(base / "copy") == data.count, LIMIT, 0.05, "the copy"
        )
        cpu = meter.stop()
        data.verify_copy(base / "copy")
        wall = done - accepted
        return {
            "files": data.count,
            "bytes": data.total,
            "publish_s": round(published - started, 2),
            "sync_wall_s": round(wall, 2),
            "throughput_MBps": round(data.total / wall / MB, 1),
            "files_per_s": round(data.count / wall, 1),
            "cpu_s_per_GiB": {k: round(v / (data.total / GiB), 2) for k, v in cpu.items()},
            "peak_rss_MiB": {"owner": peak_rss_mib(owner.pid), "member": peak_rss_mib(member.pid)},
        }
    finally:
        processes.stop_all()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=5)
    parser.add_argument("--size-kib", type=int, default=0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
