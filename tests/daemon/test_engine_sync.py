"""Two and three real Cores in one event loop: real SQLite, real folders, real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.core import Core
from daemon.identity import create_identity
from daemon.store import Store
from protocol.rights import Role

pytestmark = pytest.mark.timeout(120)


async def make_core(home: Path, name: str) -> Core:
    store = await Store.open(home / "state.db")
    await create_identity(store, name)
    await store.close()
    config = Config(home=home, ui_port=0, listen_host="127.0.0.1", listen_port=0, mdns=False, watch_debounce_ms=20)
    return await Core.open(config)


@asynccontextmanager
async def running(*cores: Core) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tasks:
        for core in cores:
            await core.start(tasks)
        try:
            yield
        finally:
            for core in cores:
                await core.stop()
                await core.close()


async def until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time() - start


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".albumsync" not in p.relative_to(root).parts
    }


async def test_invite_by_code_then_sync_both_ways_and_remove(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Ana's laptop")
    member = await make_core(tmp_path / "member", "Bob's desktop")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(os.urandom(700_000))
    (photos / "sub").mkdir()
    (photos / "sub" / "IMG_0002.jpg").write_bytes(os.urandom(10_000))
    async with running(owner, member):
        album = await owner.engine.create_album(photos, "Summer 2026")
        await until(lambda: len(album.view.files) == 2 if album.view else False, what="owner publishes")
        _, code = await owner.engine.create_invite(album.album_id, role=Role.EDITOR, message="hi Bob", to_device=None)
        assert code is not None
        target = tmp_path / "bob" / "Summer"
        await member.engine.redeem_code(code, target)
        await until(lambda: tree(target) == tree(photos), what="member has the photos")
        mine = member.engine.albums[album.album_id]
        assert mine.state == "active"
        assert mine.my_role is Role.EDITOR
        assert mine.name() == "Summer 2026"
        # the editor adds a photo: it reaches the owner
        (target / "from_bob.jpg").write_bytes(os.urandom(300_000))
        elapsed = await until(lambda: (photos / "from_bob.jpg").exists() and tree(photos) == tree(target), what="owner gets bob's photo")
        print(f"\nnew 300 KB photo appeared at the owner in {elapsed:.2f} s")
        # the owner removes the member: new epoch, the member knows it is removed
        epoch_before = album.membership.epoch
        await owner.engine.remove_member(album.album_id, member.identity.device_id, keep_photos=False)
        assert album.membership.epoch == epoch_before + 1
        await until(lambda: mine.state == "removed", what="member learns it was removed")
        # bob's photo left the album with him (no keep_photos): the owner's copy went to the trash
        await until(lambda: not (photos / "from_bob.jpg").exists(), what="bob's photo trashed at the owner")
        assert any(p.name == "from_bob.jpg" for p in (photos / ".albumsync" / "trash").rglob("*"))
        # a photo added after the removal never reaches bob, and he holds no key for it
        (photos / "after.jpg").write_bytes(os.urandom(5_000))
        await until(lambda: any(f.path == "after.jpg" for f in album.view.files) if album.view else False, what="owner publishes after removal")
        await asyncio.sleep(0.5)
        assert not (target / "after.jpg").exists()
        assert album.membership.epoch not in mine.keys
