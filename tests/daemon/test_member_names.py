"""Members who never meet see each other's names: each accept carries its device's name, sealed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon import reports
from daemon.core import Core
from protocol.membership import Status
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until

pytestmark = pytest.mark.timeout(120)


async def _join_by_code(owner: Core, member: Core, album_id: bytes, target: Path) -> None:
    _, code = await owner.engine.create_invite(
        album_id, role=Role.EDITOR, message="", to_device=None
    )
    assert code is not None
    await member.engine.redeem_code(code, target)


async def _activity_line(core: Core, text: str, limit: float = 20.0) -> None:
    """Wait until a line of `core`'s activity log contains `text` (the engine writes it later)."""
    for _ in range(int(limit / 0.05)):
        if any(text in line.text for line in await reports.activity(core)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no activity line with {text!r} after {limit} s")


def _names_seen_by(core: Core, album_id: bytes) -> dict[str, str]:
    album = core.engine.albums[album_id]
    return {info.device_id: info.name for info in reports.members(core, album)}


async def test_members_that_never_connected_see_each_others_names(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Home server")
    alice = await make_core(tmp_path / "alice", "Alice's laptop")
    bruno = await make_core(tmp_path / "bruno", "Bruno's desktop")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(os.urandom(20_000))
    async with running(owner, alice, bruno):
        album = await owner.engine.create_album(photos, "Holiday")
        await until(lambda: album.view is not None and len(album.view.files) == 1, what="publish")
        # Codes carry the owner's static address only (no mDNS): each member meets the owner alone.
        await _join_by_code(owner, alice, album.album_id, tmp_path / "a" / "Holiday")
        await until(
            lambda: album.membership.status(alice.identity.key.public) is Status.ACTIVE,
            what="alice joins",
        )
        await _join_by_code(owner, bruno, album.album_id, tmp_path / "b" / "Holiday")
        # Bruno adds a photo: it reaches Alice through the owner.
        b_dir = tmp_path / "b" / "Holiday"
        await until(lambda: tree(b_dir) == tree(photos), what="bruno has the photos")
        (b_dir / "from_bruno.jpg").write_bytes(os.urandom(10_000))
        a_dir = tmp_path / "a" / "Holiday"
        await until((a_dir / "from_bruno.jpg").exists, what="bruno's photo at alice")

        bruno_id = str(bruno.identity.device_id)
        await until(
            lambda: _names_seen_by(alice, album.album_id).get(bruno_id) == "Bruno's desktop",
            what="alice sees bruno's name",
        )
        # Alice never met Bruno: no connection, no hello, so the name came sealed in his accept.
        assert bruno.identity.device_id not in alice.engine.peer_names
        assert alice.identity.device_id not in bruno.engine.peer_names
        seen_by_alice = _names_seen_by(alice, album.album_id)
        assert seen_by_alice == {
            str(owner.identity.device_id): "Home server",
            str(alice.identity.device_id): "Alice's laptop",
            bruno_id: "Bruno's desktop",
        }
        # Who added a photo shows the same name, and so does the activity line built by the engine.
        mine = alice.engine.albums[album.album_id]
        added_by = {f.path: f.added_by_name for f in reports.files(alice, mine, 0, 10)}
        assert added_by["from_bruno.jpg"] == "Bruno's desktop"
        await _activity_line(alice, "Bruno's desktop added 1 photo to Holiday")
        await until(
            lambda: (
                _names_seen_by(bruno, album.album_id).get(str(alice.identity.device_id))
                == "Alice's laptop"
            ),
            what="bruno sees alice's name",
        )
