"""The measured workloads, each once for albumsync and once for Syncthing, on the same data.

Every run starts from fresh data directories (new keys, empty databases) for both peers, and
removes them when it ends. The clocks:

- initial sync: from the files appearing at the sender (albumsync: the 200 files are renamed into
  a shared album's folder whose member has joined; Syncthing: the prefilled folder is unpaused,
  as in ANCHORS.md) until every final name exists at the receiver. Both include the sender's
  hashing, so both are "photos appear here, how long until they are there".
- scan: one device alone, from the folder being added (albumsync: album create; Syncthing:
  unpause) until its index holds every file.
- latency: both pairs up, in sync, watchers on; a 5 MiB file is copied into the sender folder and
  the clock stops when the receiver has it under its final name at full size.
- big album: the owner publishes N tiny files once; its idle RSS; then a new member's time from
  accepting the invite until its view lists all N entries (Syncthing: a new peer's time from
  connecting until its global index lists all N files).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import syncthing_peer
from bench.albumsync_peer import AlbumsyncNode
from bench.dataset import Dataset, random_file
from bench.procstats import (
    MB,
    CpuMeter,
    GiB,
    RssSampler,
    peak_rss_mib,
    rss_mib,
    wait_until,
)
from bench.syncthing_peer import SyncthingNode

SYNC_LIMIT = 1800.0
JOIN_SETTLE = 1.0  # after a member joins: its first scans of the empty folder are done


@dataclass
class Run:
    """Where one run keeps its files; removed (after its processes stopped) when it ends."""

    scratch: Path
    keep: bool = False

    def dir(self, label: str) -> Path:
        path = self.scratch / "run" / label
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def done(self, path: Path) -> None:
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def syncthing_ports() -> tuple[int, int]:
    """A GUI port and a listen port, each with its +1 neighbour free (for the second peer)."""
    while True:
        gui, listen = free_port(), free_port()
        ports = {gui, gui + 1, listen, listen + 1}
        if len(ports) == 4 and all(_port_free(p) for p in ports):
            return gui, listen


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _sync_figures(data: Dataset, wall: float, cpu: dict[str, float]) -> dict[str, Any]:
    gib = data.total / GiB
    return {
        "files": data.count,
        "bytes": data.total,
        "wall_s": round(wall, 3),
        "throughput_MBps": round(data.total / wall / MB, 1),
        "files_per_s": round(data.count / wall, 1),
        "cpu_s": cpu,
        "cpu_s_per_GiB": {k: round(v / gib, 2) for k, v in cpu.items()}
        | {"both": round(sum(cpu.values()) / gib, 2)},
        "cpu_ms_per_file": {k: round(1000 * v / data.count, 2) for k, v in cpu.items()}
        | {"both": round(1000 * sum(cpu.values()) / data.count, 2)},
    }


# --- initial sync ----------------------------------------------------------------------------


def albumsync_initial_sync(run: Run, data: Dataset, label: str) -> dict[str, Any]:
    base = run.dir(f"albumsync-{label}")
    a_folder, b_folder, stage = base / "A", base / "B", base / "stage"
    a_folder.mkdir()
    data.link_into(stage)
    owner = AlbumsyncNode(base / "owner", "bench owner")
    member = AlbumsyncNode(base / "member", "bench member")
    try:
        owner.start()
        member.start()
        album = owner.create_album(a_folder)
        member.accept(owner.invite_code(album), b_folder)
        wait_until(lambda: member.joined(album), 120, 0.1, "the albumsync member joining")
        time.sleep(JOIN_SETTLE)

        def begin() -> None:
            for name in data.names:
                os.rename(stage / name, a_folder / name)

        pids = {"sender": owner.pid, "receiver": member.pid}
        return _measure_sync(data, b_folder, pids, begin, "albumsync sync")
    finally:
        owner.stop()
        member.stop()
        run.done(base)


def _measure_sync(
    data: Dataset, b_folder: Path, pids: dict[str, int], begin: Callable[[], None], what: str
) -> dict[str, Any]:
    """Time, CPU and memory of both sides from `begin()` until every file is complete at the
    receiver, then check the copy: the same window for both tools."""
    meter, sampler = CpuMeter(pids), RssSampler(pids)
    sampler.start()
    meter.start()
    started = time.monotonic()
    begin()
    ended = wait_until(lambda: data.complete_in(b_folder) == data.count, SYNC_LIMIT, 0.05, what)
    cpu = meter.stop()
    window_rss = sampler.finish()
    data.verify_copy(b_folder)
    figures = _sync_figures(data, ended - started, cpu)
    figures["peak_rss_MiB"] = {name: peak_rss_mib(pid) for name, pid in pids.items()}
    figures["window_peak_rss_MiB"] = window_rss
    return figures


def syncthing_initial_sync(run: Run, data: Dataset, label: str) -> dict[str, Any]:
    base = run.dir(f"syncthing-{label}")
    a_folder, b_folder = base / "A", base / "B"
    data.link_into(a_folder)
    a, b = syncthing_peer.pair(base, a_folder, b_folder, a_paused=True, ports=syncthing_ports())
    try:
        syncthing_peer.start_connected(a, b)
        pids = {"sender": a.pid, "receiver": b.pid}
        return _measure_sync(data, b_folder, pids, a.unpause, "syncthing sync")
    finally:
        a.stop()
        b.stop()
        run.done(base)


# --- scan and hash, one device alone ---------------------------------------------------------


def _scan_figures(data: Dataset, wall: float, cpu: float, pid: int) -> dict[str, Any]:
    return {
        "files": data.count,
        "bytes": data.total,
        "wall_s": round(wall, 3),
        "rate_MBps": round(data.total / wall / MB, 1),
        "cpu_s": round(cpu, 3),
        "peak_rss_MiB": peak_rss_mib(pid),
    }


def albumsync_scan(run: Run, data: Dataset) -> dict[str, Any]:
    base = run.dir("albumsync-scan")
    folder = base / "A"
    data.link_into(folder)
    node = AlbumsyncNode(base / "home", "bench scan")
    try:
        node.start()
        meter = CpuMeter({"node": node.pid})
        meter.start()
        started = time.monotonic()
        album = node.create_album(folder)
        ended = wait_until(
            lambda: node.album_files(album) == data.count, SYNC_LIMIT, 0.02, "albumsync scan"
        )
        cpu = meter.stop()["node"]
        return _scan_figures(data, ended - started, cpu, node.pid)
    finally:
        node.stop()
        run.done(base)


def syncthing_scan(run: Run, data: Dataset) -> dict[str, Any]:
    base = run.dir("syncthing-scan")
    folder = base / "A"
    data.link_into(folder)
    (folder / ".stfolder").mkdir()
    gui, listen = syncthing_ports()
    node = SyncthingNode(base / "st-a", "bench-scan", gui, listen)
    node.generate()
    node.configure(None, folder, paused=True)
    try:
        node.start()
        meter = CpuMeter({"node": node.pid})
        meter.start()
        started = time.monotonic()
        node.unpause()

        def indexed() -> bool:
            status = node.folder_status()
            return bool(status["localFiles"] == data.count and status["state"] == "idle")

        ended = wait_until(indexed, SYNC_LIMIT, 0.02, "syncthing scan")
        cpu = meter.stop()["node"]
        return _scan_figures(data, ended - started, cpu, node.pid)
    finally:
        node.stop()
        run.done(base)


# --- a new photo, watcher on -----------------------------------------------------------------


@dataclass
class LatencyPair:
    """A running sender/receiver pair of one tool, in sync, that new files are dropped into."""

    tool: str
    sender_folder: Path
    receiver_folder: Path
    stop: Any  # () -> None

    def one(self, staging: Path, name: str, size: int, limit: float = 120) -> float:
        source = staging / name
        random_file(source, size)  # fresh random bytes: nothing to reuse from earlier files
        target = self.receiver_folder / name

        def arrived() -> bool:
            try:
                return target.stat().st_size == size
            except FileNotFoundError:
                return False

        started = time.monotonic()
        shutil.copyfile(source, self.sender_folder / name)
        ended = wait_until(arrived, limit, 0.005, f"{self.tool}: {name} at the receiver")
        source.unlink()
        return round(ended - started, 4)


def albumsync_latency_pair(base: Path, seed: list[Path]) -> LatencyPair:
    a_folder, b_folder = base / "A", base / "B"
    a_folder.mkdir()
    for path in seed:
        os.link(path, a_folder / path.name)
    owner = AlbumsyncNode(base / "owner", "latency owner")
    member = AlbumsyncNode(base / "member", "latency member")

    def stop() -> None:
        owner.stop()
        member.stop()

    try:
        owner.start()
        member.start()
        album = owner.create_album(a_folder)
        wait_until(lambda: owner.album_files(album) == len(seed), 120, 0.1, "albumsync seed")
        member.accept(owner.invite_code(album), b_folder)
        wait_until(
            lambda: all((b_folder / p.name).exists() for p in seed), 120, 0.1, "albumsync seed copy"
        )
    except BaseException:
        stop()
        raise
    return LatencyPair("albumsync", a_folder, b_folder, stop)


def syncthing_latency_pair(base: Path, seed: list[Path]) -> LatencyPair:
    a_folder, b_folder = base / "st-A", base / "st-B"
    a_folder.mkdir()
    for path in seed:
        os.link(path, a_folder / path.name)
    a, b = syncthing_peer.pair(base, a_folder, b_folder, a_paused=False, ports=syncthing_ports())

    def stop() -> None:
        a.stop()
        b.stop()

    try:
        syncthing_peer.start_connected(a, b)
        wait_until(
            lambda: all((b_folder / p.name).exists() for p in seed), 120, 0.1, "syncthing seed copy"
        )
    except BaseException:
        stop()
        raise
    return LatencyPair("syncthing", a_folder, b_folder, stop)


def latency(run: Run, size: int, reps: dict[str, int], seed_files: int) -> dict[str, list[float]]:
    """Both pairs up at once; reps alternate albumsync, Syncthing, albumsync, ..."""
    base = run.dir("latency")
    staging = base / "staging"
    staging.mkdir()
    seed = []
    for i in range(seed_files):
        path = staging / f"SEED_{i:03d}.jpg"
        random_file(path, size)
        seed.append(path)
    pairs: list[LatencyPair] = []
    try:
        pairs.append(albumsync_latency_pair(base, seed))
        pairs.append(syncthing_latency_pair(base, seed))
        time.sleep(3)  # let both watchers settle after the seed copies
        found: dict[str, list[float]] = {p.tool: [] for p in pairs}
        counter = 0
        for rep in range(max(reps.values())):
            for pair in pairs:
                if rep >= reps[pair.tool]:
                    continue
                counter += 1
                found[pair.tool].append(pair.one(staging, f"NEW_{counter:04d}.jpg", size))
                # Syncthing's watcher fires on a timer; a random gap keeps the copies from
                # locking to its phase (ANCHORS.md's method).
                time.sleep(random.uniform(0.5, 3.0))  # noqa: S311 - not for security
        return found
    finally:
        for pair in pairs:
            pair.stop()
        run.done(base)


# --- an album of many small entries ----------------------------------------------------------


def albumsync_big_album(run: Run, data: Dataset) -> dict[str, Any]:
    base = run.dir("albumsync-big")
    folder = base / "A"
    data.link_into(folder)
    owner = AlbumsyncNode(base / "owner", "big owner")
    member = AlbumsyncNode(base / "member", "big member")
    try:
        owner.start()
        member.start()
        started = time.monotonic()
        album = owner.create_album(folder)
        # Each poll builds the album summary, O(entries) on the daemon's loop: poll slowly.
        published = wait_until(
            lambda: owner.album_files(album) == data.count, SYNC_LIMIT, 2.0, "albumsync publish"
        )
        time.sleep(3)  # idle: the scan's buffers are released, nothing else is going on
        idle_rss = rss_mib(owner.pid)
        code = owner.invite_code(album)
        accepted = time.monotonic()
        member.accept(code, base / "B")
        caught_up = wait_until(
            lambda: member.album_files(album) == data.count, SYNC_LIMIT, 1.0, "albumsync catch-up"
        )
        return {
            "entries": data.count,
            "publish_s": round(published - started, 2),
            "owner_idle_rss_MiB": idle_rss,
            "catch_up_s": round(caught_up - accepted, 2),
            "member_rss_at_catch_up_MiB": rss_mib(member.pid),
        }
    finally:
        owner.stop()
        member.stop()
        run.done(base)


def syncthing_big_album(run: Run, data: Dataset) -> dict[str, Any]:
    base = run.dir("syncthing-big")
    a_folder, b_folder = base / "A", base / "B"
    data.link_into(a_folder)
    a, b = syncthing_peer.pair(base, a_folder, b_folder, a_paused=False, ports=syncthing_ports())
    try:
        started = time.monotonic()
        a.start()

        def indexed() -> bool:
            status = a.folder_status()
            return bool(status["localFiles"] == data.count and status["state"] == "idle")

        scanned = wait_until(indexed, SYNC_LIMIT, 0.5, "syncthing scan of the big folder")
        time.sleep(3)
        idle_rss = rss_mib(a.pid)
        b.start()
        connected = wait_until(lambda: b.connected_to(a), 120, 0.05, "syncthing connect")
        indexed_at_b = wait_until(
            lambda: b.folder_status()["globalFiles"] == data.count,
            SYNC_LIMIT,
            0.2,
            "syncthing index exchange",
        )
        return {
            "entries": data.count,
            "publish_s": round(scanned - started, 2),
            "owner_idle_rss_MiB": idle_rss,
            "catch_up_s": round(indexed_at_b - connected, 2),
            "member_rss_at_catch_up_MiB": rss_mib(b.pid),
        }
    finally:
        a.stop()
        b.stop()
        run.done(base)
