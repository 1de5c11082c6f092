"""TESTPLAN N4 at channel level: a malicious relay between two real in-process daemons.

`TamperRelay` speaks enough of Syncthing relay protocol v1 (TLS + ALPN bep-relay on one port,
pinned by its certificate; plain session joins on another) to bring a member and an owner together,
and then misbehaves once: it flips, drops, duplicates or reorders bytes of the owner-to-member
stream mid-transfer, answers a session join with a negative length, pipes the member to an impostor
while claiming to connect it to the owner, or sends the owner's joined connection negative and
oversized control lengths. Every time: the Noise channel (or the relay client) notices, the
connection is closed and dialled again, the album still arrives bit-identical, no session is kept
with the wrong device, and both daemons keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.connection import ConnectionClosedError, open_channel
from daemon.core import Core
from daemon.identity import Identity
from daemon.reports import status_report
from protocol.certificate import make_certificate, tls_credentials
from protocol.ids import DeviceId
from protocol.invite import encode_invite, parse_invite
from protocol.keys import DeviceKey
from protocol.relay import (
    ALPN_PROTOCOL,
    MAGIC,
    ConnectRequest,
    JoinRelayRequest,
    JoinSessionRequest,
    Ping,
    Pong,
    RelayDecoder,
    RelayUri,
    Response,
    SessionInvitation,
    encode_message,
)
from protocol.rights import Role
from tests.daemon.test_engine_sync import running, tree, until
from tests.daemon.test_relay_sync import make_core

pytestmark = pytest.mark.timeout(120)

TAMPER_AT = 300_000  # bytes into the owner-to-member stream: past the handshake, inside chunks
Tamper = Callable[[bytes, int], list[bytes]]


def header(message_type: int, length: int) -> bytes:
    return (
        MAGIC.to_bytes(4, "big")
        + message_type.to_bytes(4, "big", signed=True)
        + length.to_bytes(4, "big", signed=True)
    )


class TamperRelay:
    """A relay that misbehaves once, in the way `mode` says, then relays honestly."""

    def __init__(self, tmp_path: Path, mode: str) -> None:
        key = DeviceKey(os.urandom(32))
        credentials = tls_credentials(key)
        pem = tmp_path / "tamper-relay.pem"
        pem.write_bytes(credentials.certificate_pem + credentials.private_key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pem)
        self.context.set_alpn_protocols([ALPN_PROTOCOL])
        self.device_id = DeviceId.from_certificate(make_certificate(key))
        self.mode = mode
        self.done = False  # the misbehaviour happened
        self.sessions = 0  # sessions piped
        self.impostor = Identity.from_seed(os.urandom(32), "impostor")
        self.joined: asyncio.StreamWriter | None = None
        self._pending: dict[bytes, tuple[bytes, bool]] = {}  # key -> (session id, from dialer)
        self._halves: dict[
            bytes, dict[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        ] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = self.session_port = 0

    @property
    def uri(self) -> str:
        return str(RelayUri(host="127.0.0.1", port=self.port, device_id=self.device_id))

    async def start(self) -> None:
        tls = await asyncio.start_server(self._protocol, "127.0.0.1", 0, ssl=self.context)
        plain = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self._servers = [tls, plain]
        self.port = tls.sockets[0].getsockname()[1]
        self.session_port = plain.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- protocol mode ------------------------------------------------------------------------

    async def _protocol(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = RelayDecoder()
        with contextlib.suppress(Exception):
            while data := await reader.read(4096):
                decoder.receive_data(data)
                while (message := decoder.next_message()) is not None:
                    if isinstance(message, JoinRelayRequest):
                        self.joined = writer
                        writer.write(encode_message(Response(code=0, message="success")))
                    elif isinstance(message, Ping):
                        writer.write(encode_message(Pong()))
                    elif isinstance(message, ConnectRequest):
                        await self._invite(message.device_id, writer)
                        writer.close()
                        return
                    await writer.drain()
        writer.close()

    async def _invite(self, wanted: DeviceId, dialer: asyncio.StreamWriter) -> None:
        session = os.urandom(8)
        key_dialer, key_owner = os.urandom(32), os.urandom(32)
        self._pending[key_dialer] = (session, True)
        self._pending[key_owner] = (session, False)
        # Whatever happens next, the relay claims to connect the dialer to the device it asked for.
        dialer.write(encode_message(self._invitation(wanted, key_dialer, server_socket=False)))
        await dialer.drain()
        if self.mode == "impostor" and not self.done:
            return  # the impostor answers the session in place of the owner
        assert self.joined is not None, "the owner has not joined the relay"
        someone = DeviceId(bytes(32))  # the relay may say anything here; nothing trusts it
        self.joined.write(encode_message(self._invitation(someone, key_owner, server_socket=True)))
        await self.joined.drain()

    def _invitation(
        self, device: DeviceId, key: bytes, *, server_socket: bool
    ) -> SessionInvitation:
        return SessionInvitation(
            from_device=device,
            key=key,
            address=b"",
            port=self.session_port,
            server_socket=server_socket,
        )

    # --- session mode -------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readexactly(12 + 4 + 32)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        decoder = RelayDecoder()
        decoder.receive_data(raw)
        message = decoder.next_message()
        assert isinstance(message, JoinSessionRequest)
        session, from_dialer = self._pending.pop(message.key, (b"", False))
        if not session:
            writer.write(encode_message(Response(code=1, message="not found")))
            writer.close()
            return
        if self.mode == "bad_length" and from_dialer and not self.done:
            self.done = True
            writer.write(header(4, -1))  # a Response claiming -1 body bytes
            await writer.drain()
            writer.close()
            return
        writer.write(encode_message(Response(code=0, message="success")))
        await writer.drain()
        if self.mode == "impostor" and from_dialer and not self.done:
            self.done = True
            self._spawn(self._impostor(reader, writer))
            return
        halves = self._halves.setdefault(session, {})
        halves[from_dialer] = (reader, writer)
        if len(halves) == 2:
            del self._halves[session]
            self.sessions += 1
            member, owner = halves[True], halves[False]
            tamper = self._tamper() if not self.done else None
            self._spawn(_pipe(owner[0], member[1], tamper))
            self._spawn(_pipe(member[0], owner[1], None))

    async def _impostor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A complete, valid Noise handshake, but as a device the member did not ask for.
        with contextlib.suppress(ConnectionClosedError):
            conn = await open_channel(
                reader, writer, self.impostor, initiator=False, address="member", via="relay"
            )
            with contextlib.suppress(ConnectionClosedError):
                while True:
                    await conn.receive()

    def _tamper(self) -> Tamper | None:
        held: list[bytes] = []

        def tamper(data: bytes, offset: int) -> list[bytes]:
            if self.done and not held:
                return [data]
            if held:  # reorder: the block after the held one goes first
                return [data, held.pop()]
            if offset + len(data) <= TAMPER_AT:
                return [data]
            self.done = True
            at = max(0, TAMPER_AT - offset)
            if self.mode == "flip":
                return [data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]]
            if self.mode == "drop":
                return [data[:at]]
            if self.mode == "duplicate":
                return [data, data]
            if self.mode == "reorder":
                held.append(data)
                return []
            raise AssertionError(f"unknown mode {self.mode}")

        return tamper if self.mode in ("flip", "drop", "duplicate", "reorder") else None

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tamper: Tamper | None
) -> None:
    offset = 0
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(16384):
            for piece in tamper(data, offset) if tamper else [data]:
                writer.write(piece)
            offset += len(data)
            await writer.drain()
    writer.close()


async def _start_sharing(owner: Core, member: Core, tmp_path: Path, uri: str) -> tuple[Path, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i}.jpg").write_bytes(os.urandom(700_000 + i))
    album = await owner.engine.create_album(photos, "Tamper")
    await until(lambda: album.view is not None and len(album.view.files) == 3, what="publish")
    _, code = await owner.engine.create_invite(
        album.album_id, role=Role.EDITOR, message="", to_device=None
    )
    assert code is not None
    parsed = parse_invite(code, int(time.time()))
    assert parsed.relays == (uri,)
    # Only the relay leads to the owner (port 9 on loopback refuses at once).
    only_relay = encode_invite(dataclasses.replace(parsed, addresses=("tcp://127.0.0.1:9",)))
    target = tmp_path / "member-photos"
    await member.engine.redeem_code(only_relay, target)
    return photos, target


async def _still_answering(*cores: Core) -> None:
    for core in cores:
        report = await status_report(core)
        assert report.device_id == str(core.identity.device_id)


@pytest.mark.parametrize("mode", ["flip", "drop", "duplicate", "reorder", "impostor", "bad_length"])
async def test_N4_tampering_relay_is_detected_and_redialled(tmp_path: Path, mode: str) -> None:
    relay = TamperRelay(tmp_path, mode)
    await relay.start()
    try:
        owner = await make_core(tmp_path / "owner", "Owner", relays=(relay.uri,))
        member = await make_core(tmp_path / "member", "Member")
        async with running(owner, member):
            await until(lambda: relay.joined is not None, what="the owner to join the relay")
            photos, target = await _start_sharing(owner, member, tmp_path, relay.uri)
            await until(lambda: tree(target) == tree(photos), limit=60, what="sync after tampering")
            assert relay.done, f"the relay never got to misbehave ({mode})"
            conn = member.engine.peers.connections[owner.identity.device_id]
            assert conn.peer.device_id == owner.identity.device_id
            assert conn.peer.via == "relay"
            assert relay.impostor.device_id not in member.engine.peers.connections
            assert relay.impostor.device_id not in member.engine.peer_names
            if mode == "impostor":
                assert member.engine.peers.errors.get("wrong_device", 0) >= 1
                assert relay.sessions >= 1
            elif mode == "bad_length":
                assert relay.sessions >= 1
            else:  # the tampered session died and a second one carried the rest
                assert relay.sessions >= 2
            await _still_answering(owner, member)
    finally:
        await relay.stop()


async def test_N4_bad_control_lengths_on_the_joined_connection(tmp_path: Path) -> None:
    relay = TamperRelay(tmp_path, "honest")
    await relay.start()
    try:
        owner = await make_core(tmp_path / "owner", "Owner", relays=(relay.uri,))
        async with running(owner):
            client = owner.relays.dialer(relay.uri)
            await until(lambda: client.status.joins == 1, what="joined")
            for joins, bad in enumerate([header(0, -1), header(6, 1 << 30), header(4, 1025)], 2):
                assert relay.joined is not None
                relay.joined.write(bad)
                await until(lambda j=joins: client.status.joins == j, what=f"rejoin {joins}")
                await _still_answering(owner)
            assert client.running
    finally:
        await relay.stop()
