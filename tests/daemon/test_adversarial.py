"""Hostile peers against real in-process Cores: strangers, silent sockets, members serving bad chunks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from daemon.connection import Connection, ConnectionClosedError, open_channel
from daemon.core import Core
from daemon.identity import Identity
from protocol.messages import ChunkData, ChunkMissing, ChunkRequest, Close, ErrorCode, Message
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until

pytestmark = pytest.mark.timeout(120)

PHOTO = "IMG_0001.jpg"


async def _album_with_photo(core: Core, folder: Path, size: int) -> bytes:
    await asyncio.to_thread(_write_photo, folder, size)
    album = await core.engine.create_album(folder, "Adversarial")
    await until(lambda: album.view is not None and len(album.view.files) == 1, what="publish")
    return album.album_id


def _write_photo(folder: Path, size: int) -> None:
    folder.mkdir(parents=True)
    (folder / PHOTO).write_bytes(os.urandom(size))


async def _join_by_code(owner: Core, member: Core, album_id: bytes, target: Path) -> None:
    _, code = await owner.engine.create_invite(
        album_id, role=Role.VIEWER, message="", to_device=None
    )
    assert code is not None
    await member.engine.redeem_code(code, target)


async def test_A4a_non_member_is_closed_after_the_handshake(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Owner")
    stranger = Identity.from_seed(os.urandom(32), "stranger")
    async with running(owner):
        await _album_with_photo(owner, tmp_path / "photos", 300_000)
        reader, writer = await asyncio.open_connection("127.0.0.1", owner.engine.peers.bound_port)
        conn = await open_channel(
            reader, writer, stranger, initiator=True, address="owner", via="static"
        )
        assert conn.peer.device_id == owner.identity.device_id
        received: list[Message] = []
        async with asyncio.timeout(5.0):
            with pytest.raises(ConnectionClosedError):
                await _receive_all(conn, received)
        assert len(received) == 1, f"a stranger was sent {[type(m).__name__ for m in received]}"
        assert isinstance(received[0], Close)
        assert received[0].code is ErrorCode.NO_SHARED_ALBUM
        assert owner.engine.peers.errors.get("not_member") == 1
        assert stranger.device_id not in owner.engine.peers.connections


async def _receive_all(conn: Connection, into: list[Message]) -> None:
    while True:
        into.append(await conn.receive())


async def test_A4b_silent_connections_do_not_starve_a_real_peer(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Owner")
    member = await make_core(tmp_path / "member", "Member")
    loop = asyncio.get_running_loop()
    async with running(owner, member):
        album_id = await _album_with_photo(owner, tmp_path / "photos", 200_000)
        port = owner.engine.peers.bound_port
        fds_before = len(os.listdir("/proc/self/fd"))
        flood_started = loop.time()
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        watchers = []
        for reader, writer in silent:
            writer.write(b"X")  # a valid XX marker, then silence
            watchers.append(asyncio.ensure_future(_eof_after(reader, loop, flood_started)))
        try:
            # During the flood a real member joins by code and syncs (TESTPLAN: connects < 2 s).
            joined = loop.time()
            target = tmp_path / "member_album"
            await _join_by_code(owner, member, album_id, target)
            await until(
                lambda: tree(target) == tree(tmp_path / "photos"),
                limit=5.0,
                what="sync during the flood",
            )
            synced_after = loop.time() - joined
            closed_after = await asyncio.gather(*watchers)
        finally:
            for _, writer in silent:
                writer.close()
        print(
            f"\nreal member synced in {synced_after:.2f} s during a flood of 100 silent sockets; "
            f"every silent socket closed by {max(closed_after):.2f} s"
        )
        assert synced_after < 2.0
        assert max(closed_after) <= 12.0  # the handshake timeout (10 s) bounds every silent socket
        errors = owner.engine.peers.errors
        assert errors.get("handshake_evicted", 0) + errors.get("handshake_failed", 0) >= 100
        await asyncio.sleep(0.1)
        # Back to the baseline, give or take what the new membership holds open on purpose:
        # the connection (one socket per side here) and the member's folder watcher.
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 6


async def _eof_after(
    reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop, start: float
) -> float:
    async with asyncio.timeout(15.0):
        try:
            data = await reader.read(1)
        except ConnectionError:
            data = b""
    assert data == b"", "the daemon sent bytes to a socket that never finished a handshake"
    return loop.time() - start


async def test_B3_a_bad_chunk_is_refused_and_fetched_from_another_peer(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Owner")
    peer_a = await make_core(tmp_path / "a", "Member A")
    peer_b = await make_core(tmp_path / "b", "Member B")
    newcomer = await make_core(tmp_path / "c", "Member C")
    photos = tmp_path / "photos"
    async with running(owner, peer_a, peer_b, newcomer):
        album_id = await _album_with_photo(owner, photos, 1024 * 1024 + 12_345)
        original = hashlib.sha256((photos / PHOTO).read_bytes()).hexdigest()
        for core in (peer_a, peer_b):
            target = tmp_path / f"{core.identity.name}_album"
            await _join_by_code(owner, core, album_id, target)
            await until(lambda t=target: tree(t) == tree(photos), what="member synced")  # type: ignore[misc]
        bad_served = _serve_flipped_chunks(peer_a)
        _hold_back_from(owner, newcomer, peer_a)
        # C knows A's address (as a person would type it); only A and the owner are reachable.
        await newcomer.engine.add_peer(
            peer_a.identity.device_id, f"tcp://127.0.0.1:{peer_a.engine.peers.bound_port}"
        )
        await peer_a.engine.add_peer(
            newcomer.identity.device_id, f"tcp://127.0.0.1:{newcomer.engine.peers.bound_port}"
        )
        target = tmp_path / "c_album"
        await _join_by_code(owner, newcomer, album_id, target)

        def photo_is_right() -> bool:
            path = target / PHOTO
            if not path.exists():
                return False
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == original, "a file with bad bytes appeared under the final name"
            return True

        elapsed = await until(photo_is_right, limit=30.0, what="C gets the photo")
        print(f"\nC got the photo in {elapsed:.2f} s; A served {bad_served[0]} bad chunks")
        assert bad_served[0] > 0
        assert newcomer.transfers.bad_chunks > 0
        assert newcomer.transfers.bad_chunks <= bad_served[0]
        # A is deprioritised: its slot at C remembers the bad chunk and asks it last.
        slot_a = next(
            s
            for s in newcomer.transfers.slots.values()
            if s.conn.peer.device_id == peer_a.identity.device_id
        )
        assert slot_a.bad_chunks > 0
        assert tree(target) == tree(photos)
        assert peer_b.identity.device_id not in newcomer.engine.peers.connections


def _serve_flipped_chunks(core: Core) -> list[int]:
    """Make `core` answer every chunk request with one flipped byte; returns a live counter."""
    served = [0]
    serve = core.transfers.serve

    async def bad_serve(conn: object, message: ChunkRequest) -> None:
        capture = _Capture(conn)
        await serve(capture, message)  # type: ignore[arg-type]
        for sent in capture.sent:
            reply = sent
            if isinstance(sent, ChunkData):
                flipped = bytes([sent.data[0] ^ 0x01]) + sent.data[1:]
                reply = dataclasses.replace(sent, data=flipped)
                served[0] += 1
            with _quiet():
                await conn.send(reply)  # type: ignore[attr-defined]

    core.transfers.serve = bad_serve  # type: ignore[method-assign]
    return served


def _hold_back_from(owner: Core, newcomer: Core, bad_peer: Core) -> None:
    """The owner says 'not found' to C until C has met a bad chunk (at most 15 s): A is asked."""
    serve = owner.transfers.serve
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0

    async def slow_serve(conn: object, message: ChunkRequest) -> None:
        peer = conn.peer  # type: ignore[attr-defined]
        if (
            peer.device_id == newcomer.identity.device_id
            and newcomer.transfers.bad_chunks == 0
            and loop.time() < deadline
        ):
            await asyncio.sleep(0.2)
            with _quiet():
                await conn.send(  # type: ignore[attr-defined]
                    ChunkMissing(request_id=message.request_id, code=ErrorCode.NOT_FOUND)
                )
            return
        await serve(conn, message)  # type: ignore[arg-type]

    owner.transfers.serve = slow_serve  # type: ignore[method-assign]


class _Capture:
    """A stand-in connection that keeps what `Transfers.serve` sends."""

    def __init__(self, conn: object) -> None:
        self.peer = conn.peer  # type: ignore[attr-defined]
        self.closed = False
        self.sent: list[ChunkData | ChunkMissing] = []

    async def send(self, message: ChunkData | ChunkMissing) -> None:
        self.sent.append(message)


def _quiet() -> contextlib.suppress:
    return contextlib.suppress(ConnectionClosedError)
