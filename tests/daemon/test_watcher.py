"""daemon/watcher.py on real folders: latency, grouping per root, ignored paths, vanishing roots."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.files import AlbumFolder
from daemon.watcher import Changes, watch

ALBUM = bytes(16)


class Recorder:
    """Runs watch() in a task and queues (arrival time, batch) for the test to inspect."""

    def __init__(self, roots: list[Path], **options: Any) -> None:
        self.stop = asyncio.Event()
        self.queue: asyncio.Queue[tuple[float, Changes]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(roots, options))

    async def _run(self, roots: list[Path], options: dict[str, Any]) -> None:
        async for batch in watch(roots, stop_event=self.stop, **options):
            await self.queue.put((time.monotonic(), batch))

    async def wait_for(self, matches: Callable[[Changes], bool], within: float = 5.0) -> float:
        """Arrival time of the first batch that matches; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("the watcher reported nothing matching in time")
            try:
                arrived, batch = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                continue
            if matches(batch):
                return arrived

    async def ready(self, root: Path) -> None:
        """Touch a probe file until the watcher reports it: watching has begun."""
        probe = root / "probe.txt"
        for attempt in range(100):
            probe.write_text(str(attempt))
            try:
                await asyncio.wait_for(self._probe_seen(root), 0.1)
                break
            except TimeoutError:
                continue
        probe.unlink()
        await asyncio.sleep(0.2)
        self.drain()

    async def _probe_seen(self, root: Path) -> None:
        while "probe.txt" not in (await self.queue.get())[1].get(root, set()):
            pass

    def drain(self) -> list[Changes]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait()[1])
        return out

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "album"
    path.mkdir()
    AlbumFolder(path, ALBUM).create_marker()
    return path


async def test_new_file_reported_within_half_a_second(root: Path) -> None:
    rec = Recorder([root], debounce_ms=200, check_interval_ms=500)
    try:
        await rec.ready(root)
        latencies = []
        for i in range(5):
            start = time.monotonic()
            (root / f"new{i}.jpg").write_bytes(os.urandom(5 << 20))
            arrived = await rec.wait_for(lambda b, i=i: f"new{i}.jpg" in b.get(root, set()))
            latencies.append(arrived - start)
        print(f"\nwatcher latency for a new 5 MiB file: {[round(t * 1000) for t in latencies]} ms")
        assert max(latencies) < 0.5
    finally:
        await rec.close()


async def test_changes_grouped_per_root_with_relative_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        r.mkdir()
        AlbumFolder(r, ALBUM).create_marker()
    link = tmp_path / "link-to-b"
    link.symlink_to(b)  # the person chose a path through a link
    rec = Recorder([a, link], debounce_ms=300, check_interval_ms=500)
    try:
        await rec.ready(a)
        (a / "sub").mkdir()
        (a / "sub" / "x.jpg").write_bytes(b"x")
        (b / "y.jpg").write_bytes(b"y")
        seen: dict[Path, set[str]] = {}

        def collect(batch: Changes) -> bool:
            for r, paths in batch.items():
                seen.setdefault(r, set()).update(paths)
            # inotify may miss a file made before the new folder's watch exists: the folder is
            # reported, and the scanner walks it (scan_blocking(only=...) descends into folders)
            return "sub" in seen.get(a, set()) and "y.jpg" in seen.get(link, set())

        await rec.wait_for(collect)
        assert seen[a] <= {"sub", "sub/x.jpg"}
        assert seen[link] == {"y.jpg"}
    finally:
        await rec.close()


async def test_own_files_and_temporary_files_ignored_marker_change_rescans(root: Path) -> None:
    rec = Recorder([root], debounce_ms=100, check_interval_ms=500)
    try:
        await rec.ready(root)
        folder = AlbumFolder(root, ALBUM)
        partial = folder.open_partial("abcd")
        partial.write_at(0, b"incoming")
        partial.close()
        folder.open_partial("abcd").discard()
        (root / "real.jpg").write_bytes(b"r")
        await rec.wait_for(lambda b: "real.jpg" in b.get(root, set()))
        assert all(not p.startswith(".albumsync") for b in rec.drain() for p in b.get(root, ()))
        os.remove(root / ".albumsync" / "marker")  # D1(d): the scanner must re-check the folder
        await rec.wait_for(lambda b: b.get(root) == set())
    finally:
        await rec.close()


async def test_root_that_disappears_and_returns(root: Path) -> None:
    rec = Recorder([root], debounce_ms=100, check_interval_ms=300)
    try:
        await rec.ready(root)
        shutil.rmtree(root)
        await rec.wait_for(lambda b: b.get(root) == set())
        os.mkdir(root)
        await rec.wait_for(lambda b: b.get(root) == set())
        await rec.ready(root)  # watched again after it came back
        (root / "after.jpg").write_bytes(b"a")
        await rec.wait_for(lambda b: "after.jpg" in b.get(root, set()))
    finally:
        await rec.close()


async def test_missing_root_at_start_is_watched_once_it_exists(tmp_path: Path) -> None:
    root = tmp_path / "not-yet"
    rec = Recorder([root], debounce_ms=100, check_interval_ms=200)
    try:
        await asyncio.sleep(0.3)
        root.mkdir()
        await rec.wait_for(lambda b: b.get(root) == set())
        await rec.ready(root)
    finally:
        await rec.close()
