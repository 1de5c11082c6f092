"""Peer connections: listen, dial, keep one connection per device, keep it alive.

The manager knows transport, not albums: whom to dial and whether to keep an authenticated peer
are asked of the engine (`Policy`), and every message goes to the engine's handler. One task per
connection reads; sending is the engine's, through `Connection.send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from daemon.connection import Connection, ConnectionClosedError, PeerInfo, open_channel
from daemon.errors import DaemonError
from daemon.identity import Identity
from daemon.relay_client import RelayClient, RelayError
from protocol.ids import DeviceId
from protocol.messages import Close, ErrorCode, Message, Ping, Pong

log = logging.getLogger("albumsync.peers")

KEEPALIVE_INTERVAL = 20.0
IDLE_TIMEOUT = 60.0
MAX_PENDING_HANDSHAKES = 64  # TESTPLAN A4(b): a flood of silent sockets cannot starve real peers
DIAL_BACKOFF_MIN = 1.0
DIAL_BACKOFF_MAX = 60.0


class Policy(Protocol):
    """What the engine decides for the connection layer."""

    def accepts(self, peer: PeerInfo) -> bool: ...

    async def connected(self, conn: Connection) -> None: ...

    async def message(self, conn: Connection, message: Message) -> None: ...

    async def disconnected(self, conn: Connection) -> None: ...


@dataclass
class DialState:
    addresses: list[tuple[str, str]]  # (tcp://host:port, via)
    remote_static: bytes | None = None
    failures: int = 0
    next_try: float = 0.0
    last_error: str = ""


@dataclass
class PeerManager:
    identity: Identity
    policy: Policy
    listen_host: str
    listen_port: int
    connections: dict[DeviceId, Connection] = field(default_factory=dict)
    wanted: dict[DeviceId, DialState] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Unfinished incoming handshakes, oldest first (a dict keeps insertion order).
    _pending: dict[asyncio.StreamWriter, None] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _dialing: set[DeviceId] = field(default_factory=set)
    # relay URI -> a client that can request sessions through it (set by Core when relays are on)
    relay_dialer: Callable[[str], RelayClient] | None = None
    bound_port: int = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        self.bound_port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._dial_loop())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def want(
        self, device_id: DeviceId, address: str, via: str, remote_static: bytes | None = None
    ) -> None:
        """Keep trying to be connected to `device_id`, at this address among others."""
        state = self.wanted.setdefault(device_id, DialState(addresses=[]))
        if (address, via) not in state.addresses:
            state.addresses.append((address, via))
            state.next_try = 0.0
        if remote_static is not None:
            state.remote_static = remote_static
        self._wake.set()

    def forget(self, device_id: DeviceId) -> None:
        self.wanted.pop(device_id, None)
        conn = self.connections.get(device_id)
        if conn is not None:
            conn.close()

    def dial_now(self) -> None:
        for state in self.wanted.values():
            state.next_try = 0.0
        self._wake.set()

    # --- accepting ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        await self.accept_stream(
            reader, writer, f"tcp://{_host(peername[0])}:{peername[1]}", "incoming"
        )

    async def accept_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, via: str
    ) -> None:
        """Answer the Noise handshake on a stream someone opened to us (TCP, or a relay session)."""
        if len(self._pending) >= MAX_PENDING_HANDSHAKES:
            # TESTPLAN A4(b): evict the oldest unfinished handshake rather than refuse the newest.
            # A real peer finishes in milliseconds, so a flood of silent sockets cannot lock it out.
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.close()
            self._count("handshake_evicted")
        self._pending[writer] = None
        try:
            conn = await open_channel(
                reader, writer, self.identity, initiator=False, address=address, via=via
            )
        except ConnectionClosedError as exc:
            self._count("handshake_failed")
            log.debug("incoming handshake from %s failed: %s", address, exc)
            return
        finally:
            self._pending.pop(writer, None)
        await self._run(conn)

    # --- dialing --------------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            now = time.monotonic()
            for device_id, state in list(self.wanted.items()):
                if (
                    device_id in self.connections
                    or device_id in self._dialing
                    or state.next_try > now
                ):
                    continue
                state.next_try = now + DIAL_BACKOFF_MAX  # until the attempt finishes
                self._dialing.add(device_id)
                self._spawn(self._dial(device_id, state))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def _dial(self, device_id: DeviceId, state: DialState) -> None:
        try:
            await self._dial_addresses(device_id, state)
        finally:
            self._dialing.discard(device_id)

    async def _dial_addresses(self, device_id: DeviceId, state: DialState) -> None:
        # Direct paths first (LAN, static, invite addresses); a relay only when none answers.
        ordered = sorted(state.addresses, key=lambda a: a[0].startswith("relay://"))
        for address, via in ordered:
            try:
                reader, writer = await self._open_stream(device_id, address)
                conn = await open_channel(
                    reader,
                    writer,
                    self.identity,
                    initiator=True,
                    address=address,
                    via=via,
                    remote_static=None,
                )
            except (OSError, TimeoutError, ConnectionClosedError, DaemonError) as exc:
                state.last_error = f"{address}: {exc}"
                continue
            if conn.peer.device_id != device_id:
                # Discovery addresses are candidates; the handshake decides who answered (TESTPLAN N5).
                self._count("wrong_device")
                state.last_error = (
                    f"{address} answered as {conn.peer.device_id.short}, not {device_id.short}"
                )
                conn.close()
                continue
            state.failures = 0
            state.next_try = 0.0
            self._dialing.discard(device_id)
            await self._run(conn)
            return
        state.failures += 1
        state.next_try = time.monotonic() + min(
            DIAL_BACKOFF_MAX, DIAL_BACKOFF_MIN * 2 ** min(state.failures, 6)
        )

    async def _open_stream(
        self, device_id: DeviceId, address: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to `device_id` at `address`: TCP, or a session through a relay."""
        if address.startswith("relay://"):
            if self.relay_dialer is None:
                raise RelayError("relays are not set up on this device")
            _, reader, writer = await self.relay_dialer(address).open_session(device_id)
            return reader, writer
        host, port = _split(address)
        return await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)

    # --- a live connection ------------------------------------------------------------------

    async def _run(self, conn: Connection) -> None:
        peer = conn.peer
        if peer.device_id == self.identity.device_id:
            conn.close()
            return
        if not self.policy.accepts(peer):
            # TESTPLAN A4(a): a device that shares nothing with us gets nothing but a goodbye.
            self._count("not_member")
            log.info(
                "closing connection from %s (%s): shares no album with this device",
                peer.device_id.short,
                peer.address,
            )
            await _quietly(
                conn.send(Close(code=ErrorCode.NO_SHARED_ALBUM, message="no shared album"))
            )
            conn.close()
            return
        existing = self.connections.get(peer.device_id)
        if existing is not None and not existing.closed:
            if not self._prefer_new(existing, conn):
                conn.close()
                return
            existing.close()
        self.connections[peer.device_id] = conn
        log.info(
            "connected to %s (%s) via %s at %s",
            peer.name,
            peer.device_id.short,
            peer.via,
            peer.address,
        )
        keepalive = asyncio.create_task(self._keepalive(conn))
        try:
            await self.policy.connected(conn)
            await self._read_loop(conn)
        except ConnectionClosedError as exc:
            log.info("lost %s: %s", peer.device_id.short, exc)
        finally:
            keepalive.cancel()
            conn.close()
            if self.connections.get(peer.device_id) is conn:
                del self.connections[peer.device_id]
                await self.policy.disconnected(conn)
                state = self.wanted.get(peer.device_id)
                if state is not None:
                    state.next_try = time.monotonic() + DIAL_BACKOFF_MIN
                    self._wake.set()

    async def _read_loop(self, conn: Connection) -> None:
        last_seen = time.monotonic()
        while True:
            try:
                message = await asyncio.wait_for(conn.receive(), timeout=IDLE_TIMEOUT)
            except TimeoutError:
                log.info(
                    "%s silent for %.0f s; reconnecting",
                    conn.peer.device_id.short,
                    time.monotonic() - last_seen,
                )
                return
            except ConnectionClosedError as exc:
                log.info("disconnected from %s: %s", conn.peer.device_id.short, exc)
                return
            last_seen = time.monotonic()
            if isinstance(message, Ping):
                await _quietly(conn.send(Pong(sent_at=message.sent_at)))
            elif isinstance(message, Pong):
                continue
            elif isinstance(message, Close):
                log.info("%s closed the connection: %s", conn.peer.device_id.short, message.message)
                return
            else:
                await self.policy.message(conn, message)

    async def _keepalive(self, conn: Connection) -> None:
        while not conn.closed:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            await _quietly(conn.send(Ping(sent_at=int(time.time() * 1000))))

    def _prefer_new(self, existing: Connection, new: Connection) -> bool:
        """Both sides dialled at once: both keep the connection the lower device ID initiated."""
        existing_mine = existing.peer.via != "incoming"
        new_mine = new.peer.via != "incoming"
        if existing_mine == new_mine:
            return False  # same direction twice: keep the one that is already working
        mine_lower = self.identity.device_id.raw < new.peer.device_id.raw
        return new_mine == mine_lower

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("peer task failed: %r", task.exception())

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _quietly(coro: Awaitable[None]) -> None:
    with contextlib.suppress(ConnectionClosedError):
        await coro


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split(address: str) -> tuple[str, int]:
    rest = address.removeprefix("tcp://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


PeerCallback = Callable[[Connection], Awaitable[None]]
