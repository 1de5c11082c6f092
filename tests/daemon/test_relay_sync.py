"""Issue 5: two devices whose only path is the household relay (the real strelaysrv on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.core import Core
from daemon.errors import ConfigError
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


def joined(core: Core, uri: str) -> bool:
    return any(
        e.status.state.value == "joined" and uri.startswith(e.uri) for e in core.relays.entries()
    )


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
        await until(lambda: joined(owner, uri), what="owner joins the relay")
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


async def test_relay_setting_is_saved_joined_and_put_in_codes(
    relay: Relay,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`relay add` joins at once and survives a restart; a --relay flag cannot be removed."""
    uri = str(relay.uri)
    home = tmp_path / "owner"
    owner = await make_core(home, "Home server")
    photos = tmp_path / "photos"
    photos.mkdir()
    async with running(owner):
        assert owner.relays.entries() == []
        with pytest.raises(ConfigError, match="relay URI"):
            await owner.relays.add("relay://127.0.0.1:1/?id=NOT-AN-ID")
        entry = await owner.relays.add(uri)
        assert entry.source == "setting"
        await until(lambda: joined(owner, uri), what="joined right after `relay add`")
        album = await owner.engine.create_album(photos, "Visit")
        _, code = await owner.engine.create_invite(
            album.album_id, role=Role.VIEWER, message="", to_device=None
        )
        assert code is not None
        assert parse_invite(code, int(time.time())).relays == (uri,)
    again = await Core.open(dataclasses.replace(owner.config, relays=(uri,)))
    async with running(again):
        await until(lambda: joined(again, uri), what="the saved relay is joined after a restart")
        assert [e.source for e in again.relays.entries()] == ["flag"]
        with pytest.raises(ConfigError, match="--relay"):
            await again.relays.remove(uri)
    plain = await Core.open(dataclasses.replace(owner.config, relays=()))
    async with running(plain):
        assert [e.source for e in plain.relays.entries()] == ["setting"]
        await plain.relays.remove(uri)
        assert plain.relays.entries() == []
        with pytest.raises(ConfigError, match="no relay"):
            await plain.relays.remove(uri)
