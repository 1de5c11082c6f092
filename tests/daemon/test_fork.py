"""TESTPLAN C2 between real peers: the owner's key signs two histories, two members meet.

The owner device goes away; a client holding the owner's key (a stolen or misbehaving owner)
gives member X one entry for the next log position and member Y another. When X and Y meet,
both must raise the fork alarm within 10 s with both entry hashes, adopt neither branch silently,
and refuse every membership change after the fork point.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from daemon import reports
from daemon.connection import Connection, open_channel
from daemon.core import Core
from daemon.identity import Identity
from protocol.membership_builders import build_rename
from protocol.membership_entries import decode_entry
from protocol.messages import LogEntries
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree, until

pytestmark = pytest.mark.timeout(120)


async def _as_owner(owner: Identity, member: Core) -> Connection:
    """A channel to `member` that authenticates with the owner's key (the owner's daemon is off)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", member.engine.peers.bound_port)
    return await open_channel(reader, writer, owner, initiator=True, address="x", via="static")


async def _deliver(owner: Identity, member: Core, album_id: bytes, envelope: bytes) -> None:
    conn = await _as_owner(owner, member)
    try:
        await conn.send(LogEntries(album=album_id, entries=(envelope,)))
        hash_ = decode_entry(envelope).hash
        album = member.engine.albums[album_id]
        await until(lambda: album.log.state.head_hash == hash_, what="the member takes the entry")
    finally:
        conn.close()


async def test_C2_owner_equivocation_is_an_alarm_on_both_members(tmp_path: Path) -> None:
    owner = await make_core(tmp_path / "owner", "Owner laptop")
    x = await make_core(tmp_path / "x", "Member X")
    y = await make_core(tmp_path / "y", "Member Y")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(os.urandom(100_000))
    async with running(x, y):
        async with running(owner):
            album = await owner.engine.create_album(photos, "Before the fork")
            await until(lambda: album.view is not None and len(album.view.files) == 1)
            for member in (x, y):
                _, code = await owner.engine.create_invite(
                    album.album_id, role=Role.EDITOR, message="", to_device=None
                )
                assert code is not None
                target = tmp_path / f"album_{member.identity.name[-1]}"
                await member.engine.redeem_code(code, target)
                await until(lambda t=target: tree(t) == tree(photos), what="member sync")
            base = album.membership
        # The owner's daemon is gone; its key signs two different entries for the same position.
        now = int(time.time())
        branch_a, state_a = build_rename(
            base, owner.identity.key, name="Branch A", now=now, rng=os.urandom
        )
        branch_b, _ = build_rename(
            base, owner.identity.key, name="Branch B", now=now, rng=os.urandom
        )
        hashes = {decode_entry(e).hash.hex() for e in (branch_a, branch_b)}
        assert x.identity.device_id not in y.engine.peers.connections  # they have not met yet
        await _deliver(owner.identity, x, album.album_id, branch_a)
        await _deliver(owner.identity, y, album.album_id, branch_b)
        album_x, album_y = x.engine.albums[album.album_id], y.engine.albums[album.album_id]
        assert (album_x.name(), album_y.name()) == ("Branch A", "Branch B")
        assert (album_x.membership.fork, album_y.membership.fork) == (None, None)

        # X and Y meet (directly), at the same log height: both must see the fork in 10 s.
        await x.engine.add_peer(
            y.identity.device_id, f"tcp://127.0.0.1:{y.engine.peers.bound_port}"
        )
        took = await until(
            lambda: album_x.membership.fork is not None and album_y.membership.fork is not None,
            limit=10.0,
            what="fork alarm on both members",
        )
        print(f"\nfork alarm on both members {took:.2f} s after they met")
        for member, mine in ((x, album_x), (y, album_y)):
            summary = await reports.album_summary(member, mine)
            assert summary.fork
            assert set(summary.fork_hashes) == hashes
            assert any("fork" in p and all(h[:12] in p for h in hashes) for p in summary.problems)
            activity = await reports.activity(member)
            assert any(a.kind == "alarm" and "two different" in a.text for a in activity)
            # Neither branch is adopted silently: the name is the one before the fork point.
            assert mine.name() == "Before the fork"

        # Every membership change after the fork point is refused, on both members.
        after_a, _ = build_rename(
            state_a, owner.identity.key, name="After A", now=now + 1, rng=os.urandom
        )
        conn = await _as_owner(owner.identity, x)
        try:
            await conn.send(LogEntries(album=album.album_id, entries=(after_a,)))
            await until(
                lambda: x.engine.errors.get("log_entry_refused", 0) >= 1,
                what="the entry after the fork point is refused",
            )
        finally:
            conn.close()
        assert album_x.log.state.head_seq == decode_entry(branch_a).entry.seq - 1
        assert album_x.name() == "Before the fork"
    # The proof is stored: after a restart the alarm is still there, with the same hashes.
    again = await Core.open(x.config)
    async with running(again):
        summary = await reports.album_summary(again, again.engine.albums[album.album_id])
        assert set(summary.fork_hashes) == hashes
