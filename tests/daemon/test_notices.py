"""Batched "X added N photos" notices still being collected when the daemon stops are written."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon import reports
from daemon.core import Core
from tests.daemon.test_engine_sync import running, share_by_code, tree, two_devices, until

pytestmark = pytest.mark.timeout(60)


async def _activity(core: Core) -> list[str]:
    again = await Core.open(core.config)
    try:
        return [a.text for a in await reports.activity(again)]
    finally:
        await again.close()


async def test_a_notice_batched_at_stop_is_written_not_lost(tmp_path: Path) -> None:
    owner, member, photos, target = await two_devices(tmp_path, 3)
    async with running(owner, member):
        await share_by_code(owner, member, photos, target, 3)
        await until(lambda: target.exists() and tree(target) == tree(photos), limit=30)
        assert member.engine._flushing  # still batching (2 s) when the daemon stops
    assert "Owner laptop added 3 photos to Notices" in await _activity(member)


async def test_a_notice_being_written_at_stop_is_finished_before_the_store_closes(
    tmp_path: Path,
) -> None:
    """The batch timer fired and its write is in flight when the daemon stops (a CI failure:
    "Cannot operate on a closed database", and the notice lost)."""
    owner, member, photos, target = await two_devices(tmp_path, 1)
    writing = asyncio.Event()
    add_activity = member.store.add_activity

    async def slow_add_activity(**fields: Any) -> None:
        if fields["kind"] == "photos":
            writing.set()
            await asyncio.sleep(0.5)
        await add_activity(**fields)

    member.store.add_activity = slow_add_activity  # type: ignore[method-assign]
    async with running(owner, member):
        await share_by_code(owner, member, photos, target, 1)
        await asyncio.wait_for(writing.wait(), timeout=30)
        assert not member.engine._flushing  # the timer fired: only the write is left
    assert "Owner laptop added 1 photo to Notices" in await _activity(member)
