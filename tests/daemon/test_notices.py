"""Batched "X added N photos" notices still being collected when the daemon stops are written."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from daemon import reports
from daemon.core import Core
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until

pytestmark = pytest.mark.timeout(60)


async def _two_devices(tmp_path: Path, photos: int) -> tuple[Core, Core, Path, Path]:
    owner = await make_core(tmp_path / "owner", "Owner laptop")
    member = await make_core(tmp_path / "member", "Member")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(photos):
        (folder / f"IMG_{i}.jpg").write_bytes(os.urandom(20_000 + i))
    return owner, member, folder, tmp_path / "copy"


async def _share(owner: Core, member: Core, folder: Path, target: Path, count: int) -> None:
    """The owner makes an album of `folder` (`count` photos); the member joins it by code."""
    album = await owner.engine.create_album(folder, "Notices")
    await until(lambda: album.view is not None and len(album.view.files) == count)
    _, code = await owner.engine.create_invite(
        album.album_id, role=Role.VIEWER, message="", to_device=None
    )
    assert code is not None
    await member.engine.redeem_code(code, target)


async def _activity(core: Core) -> list[str]:
    again = await Core.open(core.config)
    try:
        return [a.text for a in await reports.activity(again)]
    finally:
        await again.close()


async def test_a_notice_batched_at_stop_is_written_not_lost(tmp_path: Path) -> None:
    owner, member, photos, target = await _two_devices(tmp_path, 3)
    async with running(owner, member):
        await _share(owner, member, photos, target, 3)
        await until(lambda: target.exists() and tree(target) == tree(photos), limit=30)
        assert member.engine._flushing  # still batching (2 s) when the daemon stops
    assert "Owner laptop added 3 photos to Notices" in await _activity(member)


async def test_a_notice_being_written_at_stop_is_finished_before_the_store_closes(
    tmp_path: Path,
) -> None:
    """The batch timer fired and its write is in flight when the daemon stops (a CI failure:
    "Cannot operate on a closed database", and the notice lost)."""
    owner, member, photos, target = await _two_devices(tmp_path, 1)
    writing = asyncio.Event()
    add_activity = member.store.add_activity

    async def slow_add_activity(**fields: Any) -> None:
        if fields["kind"] == "photos":
            writing.set()
            await asyncio.sleep(0.5)
        await add_activity(**fields)

    member.store.add_activity = slow_add_activity  # type: ignore[method-assign]
    async with running(owner, member):
        await _share(owner, member, photos, target, 1)
        await asyncio.wait_for(writing.wait(), timeout=30)
        assert not member.engine._flushing  # the timer fired: only the write is left
    assert "Owner laptop added 1 photo to Notices" in await _activity(member)
