"""Refresher: bursts merge into few refreshes, a slow album is paced, stop never cuts a refresh."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from daemon import refresher as refresher_module
from daemon.refresher import Refresher
from tests.daemon.test_engine_sync import until


def _album(name: bytes) -> Any:
    return SimpleNamespace(album_id=name, printable_id=name.decode())


class Recorder:
    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.runs: list[tuple[bytes, float, float]] = []  # (album, started, ended)
        self.finished = 0

    async def __call__(self, album: Any) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(self.duration)
        self.runs.append((album.album_id, started, loop.time()))
        self.finished += 1


async def _until(condition: Any, limit: float = 5.0) -> None:
    await until(condition, limit, step=0.005)


async def test_a_burst_during_a_refresh_gives_one_more_refresh() -> None:
    record = Recorder(0.05)
    refresher = Refresher(record)
    album = _album(b"a")
    refresher.soon(album)
    await _until(lambda: refresher._refreshing)
    for _ in range(100):
        refresher.soon(album)
    await _until(lambda: record.finished == 2 and not refresher._marked)
    await asyncio.sleep(0.3)
    assert record.finished == 2
    await refresher.stop()


async def test_a_slow_album_is_paced_and_others_are_not_held_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(refresher_module, "PACE", 2.0)
    record = Recorder(0.1)
    refresher = Refresher(record)
    slow = _album(b"slow")
    refresher.soon(slow)
    await _until(lambda: record.finished == 1)
    refresher.soon(slow)
    await _until(lambda: record.finished == 2)
    first_end, second_start = record.runs[0][2], record.runs[1][1]
    assert second_start - first_end >= 2.0 * 0.1 - 0.01
    await refresher.stop()


async def test_stop_waits_for_a_running_refresh_and_ends_a_waiting_one() -> None:
    record = Recorder(0.2)
    refresher = Refresher(record)
    album = _album(b"a")
    refresher.soon(album)
    await _until(lambda: refresher._refreshing)
    await refresher.stop()
    assert record.finished == 1  # completed, not cancelled
    refresher.soon(album)  # ignored once stopped
    await asyncio.sleep(0.3)
    assert record.finished == 1

    paced = Refresher(Recorder(0.3))
    paced.soon(album)
    await _until(lambda: paced.refresh.finished == 1)  # type: ignore[attr-defined]
    paced.soon(album)  # waits about 0.6 s before it may run
    loop = asyncio.get_running_loop()
    started = loop.time()
    await paced.stop()
    assert loop.time() - started < 0.2
    assert paced.refresh.finished == 1  # type: ignore[attr-defined]
