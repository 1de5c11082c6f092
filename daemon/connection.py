"""One authenticated, encrypted connection to a peer over an asyncio stream.

Adapter between a byte stream (direct TCP or a relay session: the same code) and the sans-I/O
`protocol.handshake` / `protocol.channel` / `protocol.frames` machines. It proves the peer's device
ID during the handshake and then moves whole frames; it decides nothing about albums.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
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

    close_reason = ""

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
        _note_arrivals(writer.transport, self._heard)

    def _heard(self) -> None:
        self._last_received = time.monotonic()

    @property
    def last_heard(self) -> float:
        """time.monotonic() when the peer's bytes last arrived (or the connection opened)."""
        return self._last_received

    def silent_for(self) -> float:
        """Seconds since the peer's bytes last reached this process.

        Bytes count when they arrive, even while the read loop is still busy with an earlier
        message (serving a chunk over a slow link). Silence while asyncio's flow control has
        stopped reading (we are behind) counts too: if the peer is waiting on us while we wait
        on it, the connection is stuck, and dropping it is the way out.
        """
        return time.monotonic() - self._last_received

    def sending(self) -> tuple[int, int]:
        """(bytes the OS has taken from us so far, bytes still waiting in our buffer).

        While a backlog waits, the OS taking more of it means the peer acknowledges (reads) what
        we sent: a peer that only receives, slowly, is alive although it says nothing.
        """
        waiting = self._writer.transport.get_write_buffer_size()
        return self.bytes_out - waiting, waiting

    async def send(self, message: Message) -> None:
        """Encrypt and write one message; waits while the socket's buffer is full (backpressure)."""
        if self.closed:
            raise ConnectionClosedError(self.close_reason or "connection already closed")
        async with self._send_lock:
            if self.closed:  # closed while this send waited for the lock
                raise ConnectionClosedError(self.close_reason or "connection already closed")
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
            if self.closed:  # closed on our side (replaced, stopped, declared dead)
                raise ConnectionClosedError(self.close_reason or "the connection was closed")
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
                reason = self.close_reason or "the peer closed the connection"
                self.close()
                raise ConnectionClosedError(reason)
            self.bytes_in += len(data)
            self._heard()
            try:
                self._channel.receive_data(data)
            except RemoteProtocolError as exc:
                self.close()
                raise ConnectionClosedError(f"channel broken: {exc}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()

    def abort(self, reason: str) -> None:
        """Drop a connection judged dead at once: what it still had to send is thrown away.

        close() would first try to flush that backlog to a peer that no longer reads, so the socket
        and a send waiting on it (a handler serving a chunk) would hang until TCP gave up, many
        minutes later. Aborting wakes that send and ends the read loop with `reason`.
        """
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._writer.transport.abort()


class _ArrivalNotes(asyncio.Protocol):
    """Sits between a transport and its stream protocol, noting each arrival of bytes.

    Everything is passed on unchanged; only `data_received` also calls `heard`.
    """

    def __init__(self, inner: asyncio.Protocol, heard: Callable[[], None]) -> None:
        self._inner = inner
        self._heard = heard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._heard()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _note_arrivals(transport: asyncio.BaseTransport, heard: Callable[[], None]) -> None:
    """Have `heard` called whenever bytes reach `transport` (TCP, or TLS to a relay)."""
    inner = transport.get_protocol()
    if isinstance(inner, asyncio.Protocol) and not isinstance(inner, _ArrivalNotes):
        transport.set_protocol(_ArrivalNotes(inner, heard))


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
