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
    config = Config(
        home=home,
        ui_port=0,
        listen_host="127.0.0.1",
        listen_port=0,
        mdns=False,
        watch_debounce_ms=20,
    )
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


async def until(
    check: Callable[[], bool], limit: float = 20.0, what: str = "condition", step: float = 0.02
) -> float:
    """Seconds until `check()` holds, polled every `step`; AssertionError after `limit`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(step)
    return loop.time() - start


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".albumsync" not in p.relative_to(root).parts
    }


async def two_devices(tmp_path: Path, photos: int) -> tuple[Core, Core, Path, Path]:
    owner = await make_core(tmp_path / "owner", "Owner laptop")
    member = await make_core(tmp_path / "member", "Member")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(photos):
        (folder / f"IMG_{i}.jpg").write_bytes(os.urandom(20_000 + i))
    return owner, member, folder, tmp_path / "copy"


async def share_by_code(
    owner: Core, member: Core, folder: Path, target: Path, count: int, *, name: str = "Notices"
) -> None:
    """The owner makes an album of `folder` (`count` photos); the member joins it by code."""
    album = await owner.engine.create_album(folder, name)
    await until(lambda: album.view is not None and len(album.view.files) == count)
    _, code = await owner.engine.create_invite(
        album.album_id, role=Role.VIEWER, message="", to_device=None
    )
    assert code is not None
    await member.engine.redeem_code(code, target)


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
        await until(
            lambda: len(album.view.files) == 2 if album.view else False, what="owner publishes"
        )
        _, code = await owner.engine.create_invite(
            album.album_id, role=Role.EDITOR, message="hi Bob", to_device=None
        )
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
        elapsed = await until(
            lambda: (photos / "from_bob.jpg").exists() and tree(photos) == tree(target),
            what="owner gets bob's photo",
        )
        print(f"\nnew 300 KB photo appeared at the owner in {elapsed:.2f} s")
        # the owner removes the member: new epoch, the member knows it is removed
        epoch_before = album.membership.epoch
        await owner.engine.remove_member(
            album.album_id, member.identity.device_id, keep_photos=False
        )
        assert album.membership.epoch == epoch_before + 1
        await until(lambda: mine.state == "removed", what="member learns it was removed")
        # bob's photo left the album with him (no keep_photos): the owner's copy went to the trash
        await until(
            lambda: not (photos / "from_bob.jpg").exists(), what="bob's photo trashed at the owner"
        )
        assert any(p.name == "from_bob.jpg" for p in (photos / ".albumsync" / "trash").rglob("*"))
        # a photo added after the removal never reaches bob, and he holds no key for it
        (photos / "after.jpg").write_bytes(os.urandom(5_000))
        await until(
            lambda: any(f.path == "after.jpg" for f in album.view.files) if album.view else False,
            what="owner publishes after removal",
        )
        await asyncio.sleep(0.5)
        assert not (target / "after.jpg").exists()
        assert album.membership.epoch not in mine.keys


async def test_three_devices_roles_direct_invite_trash_and_marker(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Home server")
    editor = await make_core(tmp_path / "editor", "Desktop")
    viewer = await make_core(tmp_path / "viewer", "Laptop")
    photos = tmp_path / "album"
    photos.mkdir()
    for i in range(5):
        (photos / f"IMG_{i:04}.jpg").write_bytes(os.urandom(50_000 + i))
    async with running(owner, editor, viewer):
        album = await owner.engine.create_album(photos, "Family")
        await until(lambda: album.view is not None and len(album.view.files) == 5, what="publish")
        for core in (editor, viewer):
            # Static addresses, as people type them without mDNS: each side adds the other.
            await owner.engine.add_peer(
                core.identity.device_id, f"tcp://127.0.0.1:{core.engine.peers.bound_port}"
            )
            await core.engine.add_peer(
                owner.identity.device_id, f"tcp://127.0.0.1:{owner.engine.peers.bound_port}"
            )
        await owner.engine.create_invite(
            album.album_id,
            role=Role.EDITOR,
            message="for the desktop",
            to_device=editor.identity.device_id,
        )
        await owner.engine.create_invite(
            album.album_id, role=Role.VIEWER, message="", to_device=viewer.identity.device_id
        )
        # Each invitee sees a pending invite and accepts it into a folder of its choice.
        await until(
            lambda: (
                album.album_id in editor.engine.albums and album.album_id in viewer.engine.albums
            ),
            what="invites arrive",
        )
        incoming = await editor.store.invites_in()
        assert [(r["album_name"], r["role"], r["message"], r["owner_name"]) for r in incoming] == [
            ("Family", "editor", "for the desktop", "Home server")
        ]
        ed_dir, vw_dir = tmp_path / "ed" / "Family", tmp_path / "vw" / "Family"
        await editor.engine.accept_invite(album.album_id, ed_dir)
        await viewer.engine.accept_invite(album.album_id, vw_dir)
        await until(lambda: tree(ed_dir) == tree(photos) == tree(vw_dir), what="all three in sync")
        ed_album = editor.engine.albums[album.album_id]
        vw_album = viewer.engine.albums[album.album_id]
        await until(
            lambda: album.membership.status(editor.identity.key.public).value == "active",
            what="accept recorded",
        )

        # A viewer's local file is indexed but never published.
        (vw_dir / "viewer_local.jpg").write_bytes(b"viewer bytes")
        viewer.publisher.schedule(vw_album)
        await until(
            lambda: vw_album.local.get("viewer_local.jpg") is not None,
            what="viewer indexes its file",
        )
        assert vw_album.local["viewer_local.jpg"].state == "local_only"
        await asyncio.sleep(0.5)
        assert not (photos / "viewer_local.jpg").exists()

        # A forged add signed by the viewer's own key is refused by every member.
        from protocol.manifest import Payload
        from protocol.manifest_builders import make_add

        epoch = vw_album.membership.epoch
        forged = make_add(
            viewer.identity.key,
            album.album_id,
            seq=1,
            prev=None,
            epoch=epoch,
            epoch_key=vw_album.keys[epoch],
            payload=Payload(
                name="forged.jpg",
                size=0,
                mtime_ns=0,
                content_hash=bytes(32),
                file_key=bytes(32),
                chunks=(),
            ),
            rng=os.urandom,
        )
        await viewer.engine.add_manifest_entries(vw_album, [forged.envelope])
        await viewer.engine.broadcast_manifest(vw_album, [forged.envelope])
        await asyncio.sleep(0.5)
        for core, folder in ((owner, photos), (editor, ed_dir)):
            view = core.engine.albums[album.album_id].view
            assert view is not None
            assert "forged.jpg" not in {f.path for f in view.files}
            assert any(v.hash == forged.hash for v in view.rejected)
            assert not (folder / "forged.jpg").exists()

        # The owner deletes two photos: they go to every member's trash, never straight away.
        (photos / "IMG_0000.jpg").unlink()
        (photos / "IMG_0001.jpg").unlink()
        await until(
            lambda: (
                not any(
                    (d / n).exists()
                    for d in (ed_dir, vw_dir)
                    for n in ("IMG_0000.jpg", "IMG_0001.jpg")
                )
            ),
            what="removal propagates",
        )
        for member_dir in (ed_dir, vw_dir):
            trashed = {p.name for p in (member_dir / ".albumsync" / "trash").rglob("*.jpg")}
            assert {"IMG_0000.jpg", "IMG_0001.jpg"} <= trashed

        # The editor's folder loses its marker: nothing it "lost" is published as deleted.
        (ed_dir / ".albumsync" / "marker").unlink()
        for p in list(ed_dir.glob("IMG_*.jpg")):
            p.unlink()
        editor.publisher.schedule(ed_album)
        await asyncio.sleep(1.0)
        assert any("marker" in p for p in ed_album.problems)
        assert sorted(tree(photos)) == ["IMG_0002.jpg", "IMG_0003.jpg", "IMG_0004.jpg"]
