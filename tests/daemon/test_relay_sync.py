"""Issue 5: two devices whose only path is the household relay (the real strelaysrv on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.core import Core
from daemon.identity import create_identity
from daemon.store import Store
from protocol.invite import encode_invite, parse_invite
from protocol.rights import Role
from tests.daemon.test_engine_sync import running, tree, until
from tests.daemon.test_relay_client import Relay, relay, strelaysrv  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def make_core(home: Path, name: str, relays: tuple[str, ...] = ()) -> Core:
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
        relays=relays,
    )
    return await Core.open(config)


async def test_N3_sync_through_the_relay_only(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    uri = str(relay.uri)
    owner = await make_core(tmp_path / "owner", "Grandma's laptop", relays=(uri,))
    member = await make_core(tmp_path / "member", "Trip laptop")
    photos = tmp_path / "photos"
    photos.mkdir()
    originals = {f"IMG_{i}.jpg": os.urandom(1_500_000 + i) for i in range(3)}
    for name, data in originals.items():
        (photos / name).write_bytes(data)
    async with running(owner, member):
        await until(lambda: owner.relays[0].state.value == "joined", what="owner joins the relay")
        album = await owner.engine.create_album(photos, "Visit")
        await until(lambda: album.view is not None and len(album.view.files) == 3, what="publish")
        _, code = await owner.engine.create_invite(
            album.album_id, role=Role.EDITOR, message="", to_device=None
        )
        assert code is not None
        parsed = parse_invite(code, int(time.time()))
        assert parsed.relays == (uri,)
        # The member cannot reach the owner directly: only the relay in the code works.
        unreachable = encode_invite(dataclasses.replace(parsed, addresses=("tcp://127.0.0.1:9",)))
        started = time.monotonic()
        target = tmp_path / "member-photos"
        await member.engine.redeem_code(unreachable, target)
        await until(lambda: tree(target) == tree(photos), limit=60, what="sync through the relay")
        print(f"\n4.5 MB album synced through strelaysrv in {time.monotonic() - started:.2f} s")
        conn = member.engine.peers.connections[owner.identity.device_id]
        assert conn.peer.via == "relay"
        # And back: the member's photo reaches the owner over the same relayed channel.
        (target / "from_trip.jpg").write_bytes(os.urandom(200_000))
        await until(
            (photos / "from_trip.jpg").exists, limit=30, what="photo back through the relay"
        )
