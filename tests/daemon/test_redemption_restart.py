"""A code pasted while the owner's device is away survives a restart of the redeeming device."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest

from daemon import reports
from daemon.core import Core
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until
from tests.e2e.harness import free_port

pytestmark = pytest.mark.timeout(60)


async def test_redemption_waits_across_a_restart(tmp_path: Path) -> None:
    made = await make_core(tmp_path / "owner", "Owner laptop")
    await made.close()
    # A fixed port: the code names the owner's address, which must still hold after its restart.
    owner_config = dataclasses.replace(made.config, listen_port=free_port())
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i}.jpg").write_bytes(os.urandom(50_000 + i))
    owner = await Core.open(owner_config)
    async with running(owner):
        album = await owner.engine.create_album(photos, "Trip")
        await until(lambda: album.view is not None and len(album.view.files) == 3)
        _, code = await owner.engine.create_invite(
            album.album_id, role=Role.VIEWER, message="", to_device=None
        )
        assert code is not None
    # The owner's laptop is asleep while the code is pasted, and the member's device restarts.
    member = await make_core(tmp_path / "member", "Grandma's tablet")
    target = tmp_path / "copy"
    async with running(member):
        await member.engine.redeem_code(code, target)
        assert [a.state for a in reports.joining(member)] == ["joining"]
    with sqlite3.connect(tmp_path / "member" / "state.db") as db:
        assert db.execute("SELECT count(*) FROM redemptions").fetchone()[0] == 1
    member = await Core.open(member.config)
    owner = await Core.open(owner_config)
    async with running(member, owner):
        assert [a.state for a in reports.joining(member)] == ["joining"]
        await until(lambda: target.exists() and tree(target) == tree(photos), limit=30)
    with sqlite3.connect(tmp_path / "member" / "state.db") as db:
        assert db.execute("SELECT count(*) FROM redemptions").fetchone()[0] == 0
