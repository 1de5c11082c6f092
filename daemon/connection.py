"""One authenticated, encrypted connection to a peer over an asyncio stream.

Adapter between a byte stream (direct TCP or a relay session: the same code) and the sans-I/O
`protocol.handshake` / `protocol.channel` / `protocol.frames` machines. It proves the peer's device
ID during the handshake and then moves whole frames; it decides nothing about albums.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from daemon.identity import Identity
from protocol.channel import SecureChannel
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.frames import decode_frame, encode_frame
from protocol.handshake import (
    HANDSHAKE_TIMEOUT,
    Handshake,
    HandshakeComplete,
    PeerAuthenticated,
    verify_peer_identity,
)
from protocol.ids import DeviceId
from protocol.introduction import Introduction, decode_introduction
from protocol.messages import Message

READ_SIZE = 256 * 1024


class ConnectionClosedError(ConnectionError):
    """The peer went away or broke the protocol; the connection is gone."""


@dataclass(frozen=True)
class PeerInfo:
    """Who is on the other end, as proven by the handshake."""

    device_id: DeviceId
    public_key: bytes  # Ed25519
    certificate: bytes
    name: str
    address: str  # "tcp://host:port" as seen from here
    via: str  # "lan" | "static" | "invite" | "relay" | "incoming"
    initiator: bool = False  # this device opened the connection (dialled it)


class Connection:
    """A live channel; `send` frames out, `receive` frames in. Close with `close()`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        channel: SecureChannel,
        peer: PeerInfo,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._channel = channel
        self._send_lock = asyncio.Lock()
        self.peer = peer
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._last_received = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the peer last sent us a byte (keepalives arrive every 20 s)."""
        return time.monotonic() - self._last_received

    async def send(self, message: Message) -> None:
        """Encrypt and write one message; waits while the socket's buffer is full (backpressure)."""
        if self.closed:
            raise ConnectionClosedError("connection already closed")
        async with self._send_lock:
            data = self._channel.send(encode_frame(message))
            self.bytes_out += len(data)
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self.close()
                raise ConnectionClosedError(str(exc)) from None

    async def receive(self) -> Message:
        """The next message; ConnectionClosedError when the peer leaves or misbehaves."""
        while True:
            try:
                raw = self._channel.next_message()
                if raw is not None:
                    return decode_frame(raw)
            except ProtocolError as exc:
                self.close()
                raise ConnectionClosedError(
                    f"protocol error from {self.peer.device_id.short}: {exc}"
                ) from None
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError) as exc:
                self.close()
                raise ConnectionClosedError(str(exc)) from None
            if not data:
                self.close()
                raise ConnectionClosedError("the peer closed the connection")
            self.bytes_in += len(data)
            self._last_received = time.monotonic()
            try:
                self._channel.receive_data(data)
            except RemoteProtocolError as exc:
                self.close()
                raise ConnectionClosedError(f"channel broken: {exc}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()


async def open_channel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    identity: Identity,
    *,
    initiator: bool,
    address: str,
    via: str,
    remote_static: bytes | None = None,
    limit: float = HANDSHAKE_TIMEOUT,
) -> Connection:
    """Run the Noise handshake on a fresh stream; raises ConnectionClosedError on any failure."""
    try:
        async with asyncio.timeout(limit):
            return await _handshake(
                reader,
                writer,
                identity,
                initiator=initiator,
                address=address,
                via=via,
                remote_static=remote_static,
            )
    except TimeoutError:
        writer.close()
        raise ConnectionClosedError(
            f"handshake with {address} timed out after {limit:.0f} s"
        ) from None
    except (ProtocolError, ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise ConnectionClosedError(f"handshake with {address} failed: {exc}") from None


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    identity: Identity,
    *,
    initiator: bool,
    address: str,
    via: str,
    remote_static: bytes | None,
) -> Connection:
    payload = Introduction(certificate=identity.certificate, name=identity.name).encode()
    if initiator:
        hs = Handshake.initiator(identity.key, payload, os.urandom, remote_static=remote_static)
    else:
        hs = Handshake.responder(identity.key, payload, os.urandom)
    peer: PeerInfo | None = None
    while True:
        await _flush(hs, writer)
        event = hs.next_event()
        await _flush(hs, writer)  # reading a message may have produced our answer
        if isinstance(event, PeerAuthenticated):
            peer = _identify(event, address, via, initiator)
        elif isinstance(event, HandshakeComplete):
            if peer is None:
                raise RemoteProtocolError("handshake completed without the peer's certificate")
            return Connection(reader, writer, hs.into_channel(), peer)
        else:
            data = await reader.read(READ_SIZE)
            if not data:
                raise ConnectionError("the peer closed the connection during the handshake")
            hs.receive_data(data)


async def _flush(hs: Handshake, writer: asyncio.StreamWriter) -> None:
    out = hs.data_to_send()
    if out:
        writer.write(out)
        await writer.drain()


def _identify(event: PeerAuthenticated, address: str, via: str, initiator: bool) -> PeerInfo:
    intro = decode_introduction(event.payload)
    certified = verify_peer_identity(event.remote_static, intro.certificate)
    return PeerInfo(
        device_id=certified.device_id,
        public_key=certified.public_key,
        certificate=intro.certificate,
        name=intro.name,
        address=address,
        via=via,
        initiator=initiator,
    )
