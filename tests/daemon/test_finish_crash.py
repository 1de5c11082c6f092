"""E1's crash window between the rename into place and the index write, made deterministic.

A receiver killed right after `PartialFile.finish` renamed a complete file into place, and before
the index recorded it, restarts with an untracked file at that path holding exactly the incoming
bytes. It must take that file as the download, not keep it as "IMG (conflict local).jpg" next to a
second copy (seen in CI's E1 run).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest

from daemon.core import Core
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until
from tests.e2e.harness import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.EDITOR])
async def test_E1_a_file_renamed_before_the_index_knew_is_taken_as_is(
    tmp_path: Path, role: Role
) -> None:
    """A viewer's download takes the file; an editor's scan may see it first and must take it
    too, not publish it as its own photo (a conflict copy on every device)."""
    made = await make_core(tmp_path / "owner", "Owner")
    await made.close()
    # A fixed port: the member must find the owner again after both restart.
    owner = await Core.open(dataclasses.replace(made.config, listen_port=free_port()))
    member = await make_core(tmp_path / "member", "Member")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i}.jpg").write_bytes(os.urandom(300_000 + i))
    target = tmp_path / "copy"
    async with running(owner, member):
        album = await owner.engine.create_album(photos, "Crash window")
        await until(lambda: album.view is not None and len(album.view.files) == 3)
        _, code = await owner.engine.create_invite(
            album.album_id, role=role, message="", to_device=None
        )
        assert code is not None
        await member.engine.redeem_code(code, target)
        await until(lambda: target.exists() and tree(target) == tree(photos), limit=30)
    # The state a SIGKILL between the rename and the index write leaves: the bytes are in place,
    # the index does not know them.
    with sqlite3.connect(tmp_path / "member" / "state.db") as db:
        db.execute("DELETE FROM local_files WHERE path = 'IMG_1.jpg'")
        db.execute("DELETE FROM chunk_index WHERE path = 'IMG_1.jpg'")
    owner = await Core.open(owner.config)
    member = await Core.open(member.config)
    async with running(owner, member):
        await until(
            lambda: (
                "IMG_1.jpg" in member.engine.albums[album.album_id].local
                and member.engine.albums[album.album_id].local["IMG_1.jpg"].file is not None
            ),
            limit=30,
            what="the file is indexed as the album's again",
        )
        mine = member.engine.albums[album.album_id]
        assert mine.local["IMG_1.jpg"].file_author == owner.engine.albums[album.album_id].me.public
        assert mine.manifest.entries(mine.me.public) == ()  # nothing published as its own
    assert tree(target) == tree(photos), sorted(tree(target))
