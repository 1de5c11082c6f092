"""Batched "X added N photos" notices still being collected when the daemon stops are written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon import reports
from daemon.core import Core
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until

pytestmark = pytest.mark.timeout(60)


async def test_a_notice_batched_at_stop_is_written_not_lost(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Owner laptop")
    member = await make_core(tmp_path / "member", "Member")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i}.jpg").write_bytes(os.urandom(20_000 + i))
    target = tmp_path / "copy"
    async with running(owner, member):
        album = await owner.engine.create_album(photos, "Notices")
        await until(lambda: album.view is not None and len(album.view.files) == 3)
        _, code = await owner.engine.create_invite(
            album.album_id, role=Role.VIEWER, message="", to_device=None
        )
        assert code is not None
        await member.engine.redeem_code(code, target)
        await until(lambda: target.exists() and tree(target) == tree(photos), limit=30)
        assert member.engine._flushing  # still batching (2 s) when the daemon stops
    again = await Core.open(member.config)
    try:
        texts = [a.text for a in await reports.activity(again)]
    finally:
        await again.close()
    assert "Owner laptop added 3 photos to Notices" in texts
