"""Peer connections: listen, dial, keep one connection per device, keep it alive.

The manager knows transport, not albums: whom to dial and whether to keep an authenticated peer
are asked of the engine (`Policy`), and every message goes to the engine's handler. One task per
connection reads; sending is the engine's, through `Connection.send`.

Direct beats relayed (issue 5). While a device is connected through a relay and a direct address
of it is known (LAN sighting, static, invite), that address is tried now and then; once a direct
handshake proves the same device, the direct connection takes over and the relayed one is retired.
Both ends apply the same order (direct over relay, then the connection the lower device ID opened),
so they keep the same connection and never swap back and forth; a connection that has been probed
and has not answered (STALE_AFTER) may be replaced by any newer one.

Dead peers (issue 3, TESTPLAN N1). A partition drops packets without a reset, so TCP alone would
keep a dead connection "up" for many minutes. Each connection is watched: once the peer has sent
nothing for KEEPALIVE_INTERVAL it gets a Ping; once it has sent nothing for DEAD_AFTER (any byte
counts, also bytes of a large chunk still arriving, and so does a slow peer taking our backlog), the
connection is aborted: its requests in flight go to other peers (Policy.disconnected) and the
device is redialed. A device connected within RECENTLY_CONNECTED is redialed at least every
REDIAL_BACKOFF_MAX seconds, so a healed network is used again within seconds, not a minute.
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
from daemon.errors import ConfigError, DaemonError
from daemon.identity import Identity
from daemon.relay_client import RelayClient, RelayError
from protocol.ids import DeviceId
from protocol.messages import Close, ErrorCode, Message, Ping, Pong

log = logging.getLogger("albumsync.peers")

# A peer silent this long gets a Ping. Whichever end's silence hits it first pings and the other
# answers, so an idle connection costs one small Ping and Pong per interval.
KEEPALIVE_INTERVAL = 7.5
DEAD_AFTER = 15.0  # silent this long (a Ping unanswered for 7.5 s): dead, closed, redialed
STALE_AFTER = (KEEPALIVE_INTERVAL + DEAD_AFTER) / 2  # probed, unanswered: any newer one replaces it
WATCH_STEP = 1.0  # how often a connection silent past KEEPALIVE_INTERVAL is looked at again
# Messages read ahead of the engine per connection (each at most 1 MiB + framing), so that a Ping
# is answered while the engine is still busy with an earlier message.
INBOX_MESSAGES = 4
MAX_PENDING_HANDSHAKES = 64  # TESTPLAN A4(b): a flood of silent sockets cannot starve real peers
DIAL_BACKOFF_MIN = 1.0
DIAL_BACKOFF_MAX = 60.0
# A device we were connected to recently (its connection died, the network may come back) is
# redialed at least this often, so a healed partition is used within seconds (TESTPLAN N1); one
# that has been away longer than RECENTLY_CONNECTED falls back to the full backoff.
REDIAL_BACKOFF_MAX = 3.0
RECENTLY_CONNECTED = 600.0
# Tries of a direct path while connected through a relay: soon, then at most every 30 s, so a path
# that opens up is in use within a minute (TESTPLAN N3) without dialing a blocked one constantly.
UPGRADE_RETRY_MIN = 5.0
UPGRADE_RETRY_MAX = 30.0
RETIRE_GRACE = 5.0  # a replaced connection is read this long, so replies already sent arrive
MAX_LAN_SEEN = 256  # devices whose LAN announcements are remembered (oldest forgotten first)
MAX_LAN_ADDRESSES = 16  # LAN addresses kept per device (oldest dropped first)


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
    verified: str = ""  # the last address where the handshake proved this device
    upgrade_failures: int = 0  # direct tries that failed while connected through a relay
    upgrade_next_try: float = 0.0
    retry_now: bool = False  # dial_now() came while a dial was under way: no backoff after it
    lost_at: float | None = None  # time.monotonic() when our last connection to it ended


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
    _stopping: bool = False
    # Unfinished incoming handshakes, oldest first (a dict keeps insertion order).
    _pending: dict[asyncio.StreamWriter, None] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _dialing: set[DeviceId] = field(default_factory=set)
    # relay URI -> a client that can request sessions through it (set by Core when relays are on)
    relay_dialer: Callable[[str], RelayClient] | None = None
    # device -> whether to dial it when seen on the LAN (set by Core; None: never)
    wants_nearby: Callable[[DeviceId], bool] | None = None
    bound_port: int = 0
    # device -> tcp:// addresses from its latest LAN announcement (candidates, unverified)
    _lan_seen: dict[DeviceId, list[str]] = field(default_factory=dict)

    async def start(self) -> None:
        self._stopping = False  # a manager may be started again after stop()
        try:
            self._server = await asyncio.start_server(
                self._accept, self.listen_host, self.listen_port
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for peers on {self.listen_host}:{self.listen_port} "
                f"({exc.strerror or exc}); if another program or another albumsync data "
                "directory uses that port, pick another with --listen HOST:PORT"
            ) from None
        self.bound_port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._dial_loop())

    async def stop(self) -> None:
        self._stopping = True
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
            if via == "lan":
                _trim_lan(state)
            state.next_try = 0.0
            if _is_direct(via):  # a new direct path: worth trying even while relayed
                state.upgrade_next_try = 0.0
                state.upgrade_failures = 0
        if remote_static is not None:
            state.remote_static = remote_static
        self._wake.set()

    def forget(self, device_id: DeviceId) -> None:
        self.wanted.pop(device_id, None)
        conn = self.connections.get(device_id)
        if conn is not None:
            conn.close()

    def dial_now(self) -> None:
        for device_id, state in self.wanted.items():
            state.next_try = 0.0
            state.retry_now = device_id in self._dialing
        self._wake.set()

    def seen_on_lan(self, device_id: DeviceId, addresses: list[str]) -> None:
        """A LAN announcement: candidate addresses, dialed once `wants_nearby` says so."""
        self._lan_seen.pop(device_id, None)
        self._lan_seen[device_id] = addresses[:MAX_LAN_ADDRESSES]
        while len(self._lan_seen) > MAX_LAN_SEEN:
            del self._lan_seen[next(iter(self._lan_seen))]
        state = self.wanted.get(device_id)
        if state is not None and device_id not in self.connections:
            # It announced itself again (back on the network): worth a dial now, not after the
            # backoff. At most one dial per device runs at a time, so a flood costs little.
            state.next_try = min(state.next_try, time.monotonic())
        self._wake.set()

    def _adopt_nearby(self) -> None:
        """Dial devices seen on the LAN that we now want (a new member, invitee or code owner)."""
        for device_id, addresses in list(self._lan_seen.items()):
            state = self.wanted.get(device_id)
            if state is None:
                if self.wants_nearby is None or not self.wants_nearby(device_id):
                    continue
            elif all((address, "lan") in state.addresses for address in addresses):
                continue
            for address in addresses:
                self.want(device_id, address, "lan")

    # --- accepting ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio.start_server runs this as its own task: track it so that stop() cancels a
        # handshake in flight instead of letting it reach the engine after the store closed.
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            peername = writer.get_extra_info("peername") or ("?", 0)
            await self.accept_stream(
                reader, writer, tcp_address(peername[0], peername[1]), "incoming"
            )
        except asyncio.CancelledError:
            # Python 3.11's start_server callback calls task.exception() on this task, which
            # raises (and logs a traceback) if the task ends cancelled: end it normally instead.
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

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
        if self._stopping:
            conn.close()
            return
        await self._run(conn)

    # --- dialing --------------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            self._adopt_nearby()
            now = time.monotonic()
            for device_id, state in list(self.wanted.items()):
                if device_id in self._dialing:
                    continue
                conn = self.connections.get(device_id)
                if conn is None and state.next_try <= now:
                    state.next_try = now + DIAL_BACKOFF_MAX  # until the attempt finishes
                    self._dialing.add(device_id)
                    self._spawn(self._dial(device_id, state))
                elif conn is not None and _should_upgrade(conn, state, now):
                    state.upgrade_next_try = now + UPGRADE_RETRY_MAX  # until it finishes
                    self._dialing.add(device_id)
                    self._spawn(self._upgrade(device_id, state))
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # arrives as the event is set, and stop() then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    async def _dial(self, device_id: DeviceId, state: DialState) -> None:
        try:
            conn = await self._first_answer(device_id, state, _dial_order(state))
        finally:
            self._dialing.discard(device_id)
        if conn is None:
            state.failures += 1
            state.next_try = time.monotonic() + _dial_delay(state, time.monotonic())
            if state.retry_now:  # asked to dial now while this attempt ran: do not back off
                state.retry_now = False
                state.next_try = 0.0
                self._wake.set()
            return
        state.failures = 0
        state.next_try = 0.0
        if not _is_direct(conn.peer.via):
            # Every direct address just failed: give the network a moment before trying again.
            state.upgrade_next_try = time.monotonic() + _upgrade_delay(state)
        await self._run(conn)

    async def _upgrade(self, device_id: DeviceId, state: DialState) -> None:
        """Connected through a relay: try the direct addresses; _run prefers what answers."""
        try:
            direct = [a for a in _dial_order(state) if _is_direct(a[1])]
            conn = await self._first_answer(device_id, state, direct)
        finally:
            self._dialing.discard(device_id)
        if conn is None:
            state.upgrade_failures += 1
            state.upgrade_next_try = time.monotonic() + _upgrade_delay(state)
            return
        # upgrade_failures is not reset here: a direct path that works for a moment and then
        # fails again (back to the relay) is retried no faster than one that never worked. A new
        # direct address (want) resets it.
        log.info("direct path to %s open at %s", device_id.short, conn.peer.address)
        await self._run(conn)

    async def _first_answer(
        self, device_id: DeviceId, state: DialState, addresses: list[tuple[str, str]]
    ) -> Connection | None:
        """The first of `addresses` where the handshake proves `device_id`, or None."""
        for address, via in addresses:
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
            state.verified = address
            return conn
        return None

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
            self.connections[peer.device_id] = conn
            await self._retire(existing)
        else:
            self.connections[peer.device_id] = conn
        log.info(
            "connected to %s (%s) via %s at %s",
            peer.name,
            peer.device_id.short,
            peer.via,
            peer.address,
        )
        watch = asyncio.create_task(self._watch(conn))
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        room = asyncio.Semaphore(INBOX_MESSAGES)
        reading = asyncio.create_task(self._read_loop(conn, inbox, room))
        try:
            await self.policy.connected(conn)
            while (message := await inbox.get()) is not None:
                room.release()
                await self.policy.message(conn, message)
        except ConnectionClosedError as exc:
            log.info("lost %s: %s", peer.device_id.short, exc)
        finally:
            watch.cancel()
            reading.cancel()
            conn.close()
            if self.connections.get(peer.device_id) is conn:
                del self.connections[peer.device_id]
                state = self.wanted.get(peer.device_id)
                if state is not None:
                    state.lost_at = time.monotonic()
                    state.next_try = state.lost_at + DIAL_BACKOFF_MIN
                    self._wake.set()
                # Fails the chunk requests still waiting on this connection (Transfers.peer_gone),
                # so they are asked of another peer at once.
                await self.policy.disconnected(conn)

    async def _read_loop(
        self, conn: Connection, inbox: asyncio.Queue[Message | None], room: asyncio.Semaphore
    ) -> None:
        """Read ahead of the engine (at most INBOX_MESSAGES waiting), answering Pings at once;
        None in the inbox ends the connection."""
        try:
            while True:
                message = await conn.receive()
                if isinstance(message, Ping):
                    await _quietly(conn.send(Pong(sent_at=message.sent_at)))
                elif isinstance(message, Pong):
                    continue
                elif isinstance(message, Close):
                    log.info(
                        "%s closed the connection: %s", conn.peer.device_id.short, message.message
                    )
                    return
                else:
                    await room.acquire()
                    inbox.put_nowait(message)
        except ConnectionClosedError as exc:
            log.info("disconnected from %s: %s", conn.peer.device_id.short, exc)
        finally:
            inbox.put_nowait(None)

    async def _watch(self, conn: Connection) -> None:
        """Ping a connection that has gone quiet; abort it once it is dead (see the module doc)."""
        pinged_at: float | None = None  # conn.last_heard when we last pinged: one Ping per silence
        ping: asyncio.Task[None] | None = None
        taking = _Backlog()
        try:
            while not conn.closed:
                silent = min(conn.silent_for(), taking.quiet_for(conn))
                if silent >= DEAD_AFTER:
                    log.info(
                        "%s sent nothing for %.0f s, not even an answer to a ping: "
                        "the connection is dead; reconnecting",
                        conn.peer.device_id.short,
                        silent,
                    )
                    conn.abort(f"no answer for {silent:.0f} s")
                    return
                if silent >= KEEPALIVE_INTERVAL:
                    if pinged_at != conn.last_heard and (ping is None or ping.done()):
                        pinged_at = conn.last_heard
                        # Its own task: the send may wait behind a stalled one, the watch may not.
                        ping = asyncio.create_task(
                            _quietly(conn.send(Ping(sent_at=int(time.time() * 1000))))
                        )
                    await asyncio.sleep(min(WATCH_STEP, DEAD_AFTER - silent))
                elif taking.waiting:  # a backlog: look often enough to see it shrink
                    await asyncio.sleep(min(WATCH_STEP, KEEPALIVE_INTERVAL - silent))
                else:
                    await asyncio.sleep(KEEPALIVE_INTERVAL - silent)
        finally:
            if ping is not None:
                ping.cancel()

    def _prefer_new(self, existing: Connection, new: Connection) -> bool:
        """Which of two connections to one device to keep; both ends must reach the same answer.

        A silent one loses (it is probably dead); then direct beats relayed; then, when both
        sides dialled at once, both keep the connection the lower device ID initiated.
        """
        if existing.silent_for() > STALE_AFTER:
            return True
        if _is_direct(existing.peer.via) != _is_direct(new.peer.via):
            return _is_direct(new.peer.via)
        if existing.peer.initiator == new.peer.initiator:
            return False  # same direction twice: keep the one that is already working
        mine_lower = self.identity.device_id.raw < new.peer.device_id.raw
        return new.peer.initiator == mine_lower

    async def _retire(self, old: Connection) -> None:
        """Hand the device over to its new connection; close the old one after a grace period.

        Nothing new goes out on the old one (the engine sends on `connections`), but it is still
        read for RETIRE_GRACE seconds so that replies already on their way (chunks) are not lost;
        then it is closed and the engine told it is gone.
        """
        log.info(
            "replacing the connection to %s via %s at %s",
            old.peer.device_id.short,
            old.peer.via,
            old.peer.address,
        )
        self._spawn(self._close_after_grace(old))

    async def _close_after_grace(self, old: Connection) -> None:
        try:
            await asyncio.sleep(RETIRE_GRACE)
        finally:
            old.close()  # also when stopping
        await self.policy.disconnected(old)  # its _run no longer does: it is not current

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


def _is_direct(via: str) -> bool:
    return via != "relay"


def _should_upgrade(conn: Connection, state: DialState, now: float) -> bool:
    return (
        not _is_direct(conn.peer.via)
        and state.upgrade_next_try <= now
        and any(_is_direct(via) for _, via in state.addresses)
    )


@dataclass
class _Backlog:
    """Whether a peer that says nothing still takes the bytes we send it (a slow receiver).

    Looked at on each watch step: if a backlog waited at the last look and the OS has taken more
    of our bytes since, the peer is acknowledging them, so it is alive.
    """

    taken: int = -1
    waiting: int = 0
    progress_at: float = field(default_factory=time.monotonic)

    def quiet_for(self, conn: Connection) -> float:
        """Seconds since the peer last took some of a backlog of ours."""
        taken, waiting = conn.sending()
        now = time.monotonic()
        if self.waiting > 0 and taken > self.taken:
            self.progress_at = now
        self.taken, self.waiting = taken, waiting
        return now - self.progress_at


def _dial_delay(state: DialState, now: float) -> float:
    """Seconds until the next dial of a device that just failed one: doubling from
    DIAL_BACKOFF_MIN up to DIAL_BACKOFF_MAX, or REDIAL_BACKOFF_MAX at most if it was connected
    within RECENTLY_CONNECTED."""
    delay = min(DIAL_BACKOFF_MAX, DIAL_BACKOFF_MIN * 2.0 ** min(state.failures, 6))
    if state.lost_at is not None and now - state.lost_at < RECENTLY_CONNECTED:
        delay = min(delay, REDIAL_BACKOFF_MAX)
    return delay


def _upgrade_delay(state: DialState) -> float:
    """Seconds until the next direct try: UPGRADE_RETRY_MIN, doubling up to UPGRADE_RETRY_MAX."""
    return min(
        UPGRADE_RETRY_MAX, UPGRADE_RETRY_MIN * 2.0 ** min(max(state.upgrade_failures - 1, 0), 4)
    )


def _dial_order(state: DialState) -> list[tuple[str, str]]:
    """Where to dial first: the address last proven, other direct paths, relays last."""
    return sorted(
        state.addresses,
        key=lambda a: (not _is_direct(a[1]), a[0] != state.verified),
    )


def _trim_lan(state: DialState) -> None:
    """Keep the newest MAX_LAN_ADDRESSES LAN addresses (and the proven one): a flood stays small."""
    lan = [a for a in state.addresses if a[1] == "lan" and a[0] != state.verified]
    for stale in lan[: max(0, len(lan) - MAX_LAN_ADDRESSES)]:
        state.addresses.remove(stale)


def tcp_address(host: str, port: int) -> str:
    """The tcp://HOST:PORT form of an address, IPv6 hosts in brackets (parsed back by _split)."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _split(address: str) -> tuple[str, int]:
    rest = address.removeprefix("tcp://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


PeerCallback = Callable[[Connection], Awaitable[None]]
