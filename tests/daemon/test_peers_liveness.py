"""TESTPLAN N1 at the connection level (issue 3): dead peers are noticed fast, live slow ones are not.

A partition drops packets without a reset, so the only sign of a dead peer is silence. These tests
run one real PeerManager against hand-made peers on loopback, with the liveness timers shortened
(the rule is the same; the tests just do not wait 15 s per case):

- a peer that completes the handshake, then reads but never writes, is pinged once, declared dead
  within DEAD_AFTER, and redialed;
- a peer that sends a large message slowly, a peer that waits while our read loop is busy, and a
  peer that only takes our bytes (slowly) are all alive and kept;
- with real Cores, the chunk requests in flight on a connection that dies are failed at once
  (Policy.disconnected -> Transfers.peer_gone) and the file completes after the heal, long before
  the 30 s request timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon import peers as peers_module
from daemon.connection import Connection, ConnectionClosedError, PeerInfo, open_channel
from daemon.identity import Identity
from daemon.peers import DialState, PeerManager, _dial_delay
from protocol.frames import encode_frame
from protocol.invite import encode_invite, parse_invite
from protocol.messages import ChunkData, Message, Ping, Pong
from protocol.rights import Role
from tests.daemon.test_engine_sync import make_core, running, tree
from tests.daemon.test_engine_sync import until as shared_until

pytestmark = pytest.mark.timeout(90)

KEEPALIVE = 0.4
DEAD = 1.2


@pytest.fixture
def fast_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "KEEPALIVE_INTERVAL", KEEPALIVE)
    monkeypatch.setattr(peers_module, "DEAD_AFTER", DEAD)
    monkeypatch.setattr(peers_module, "STALE_AFTER", (KEEPALIVE + DEAD) / 2)
    monkeypatch.setattr(peers_module, "WATCH_STEP", 0.1)
    monkeypatch.setattr(peers_module, "DIAL_BACKOFF_MIN", 0.1)
    monkeypatch.setattr(peers_module, "REDIAL_BACKOFF_MAX", 0.3)


@dataclass
class Recorder:
    """A Policy that keeps every peer, records what it is told, and can hold a message a while."""

    connected_: list[Connection] = field(default_factory=list)
    disconnected_: list[Connection] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    hold_first_message: float = 0.0

    def accepts(self, peer: PeerInfo) -> bool:
        return True

    async def connected(self, conn: Connection) -> None:
        self.connected_.append(conn)

    async def message(self, conn: Connection, message: Message) -> None:
        self.messages.append(message)
        if len(self.messages) == 1 and self.hold_first_message:
            await asyncio.sleep(self.hold_first_message)  # a slow handler: the read loop is busy

    async def disconnected(self, conn: Connection) -> None:
        self.disconnected_.append(conn)


@contextlib.asynccontextmanager
async def manager() -> AsyncIterator[tuple[PeerManager, Recorder]]:
    identity = Identity.from_seed(os.urandom(32), "A")
    policy = Recorder()
    peers = PeerManager(identity, policy, "127.0.0.1", 0)
    await peers.start()
    try:
        yield peers, policy
    finally:
        await peers.stop()


Behaviour = Callable[["FakePeer", Connection, asyncio.StreamWriter], Awaitable[None]]


class FakePeer:
    """A listening device that completes the Noise handshake, then does what `behave` says."""

    def __init__(self, behave: Behaviour, *, rcvbuf: int = 0) -> None:
        self.identity = Identity.from_seed(os.urandom(32), "test peer")
        self.behave = behave
        self.rcvbuf = rcvbuf
        self.handshakes = 0
        self.received: list[Message] = []
        self.conns: list[Connection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def device_id(self) -> object:
        return self.identity.device_id

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.conns:
            conn.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.rcvbuf:
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf
            )
        with contextlib.suppress(ConnectionClosedError, asyncio.CancelledError):
            conn = await open_channel(
                reader, writer, self.identity, initiator=False, address="a", via="incoming"
            )
            self.handshakes += 1
            self.conns.append(conn)
            await self.behave(self, conn, writer)
        writer.close()

    async def read_all(self, conn: Connection) -> None:
        """Read and keep every message, answering nothing."""
        while True:
            self.received.append(await conn.receive())

    def count(self, kind: type[Message]) -> int:
        return sum(isinstance(m, kind) for m in self.received)


@contextlib.asynccontextmanager
async def fake_peer(behave: Behaviour, **kw: int) -> AsyncIterator[tuple[FakePeer, str]]:
    peer = FakePeer(behave, **kw)
    address = await peer.start()
    try:
        yield peer, address
    finally:
        await peer.stop()


async def until(check: Callable[[], bool], limit: float = 10.0, what: str = "") -> float:
    return await shared_until(check, limit, what, step=0.01)  # the timers here are short


async def mute(peer: FakePeer, conn: Connection, writer: asyncio.StreamWriter) -> None:
    """Reads everything, writes nothing: a peer behind a partition, as the kernel sees it."""
    await peer.read_all(conn)


async def test_N1_a_silent_peer_is_pinged_declared_dead_and_redialed(fast_timers: None) -> None:
    async with manager() as (a, policy), fake_peer(mute) as (peer, address):
        a.want(peer.identity.device_id, address, "static")
        await until(lambda: len(policy.connected_) == 1, what="the first connection")
        first = policy.connected_[0]
        heard_last = first.last_heard  # the handshake's last message; the peer says nothing more
        await until(lambda: first in policy.disconnected_, limit=DEAD + 3, what="dead peer noticed")
        took = time.monotonic() - heard_last
        print(f"\nsilent peer declared dead {took:.2f} s after its last byte (bound {DEAD} s)")
        assert DEAD <= took <= DEAD + 0.5
        assert first.closed
        assert "no answer" in first.close_reason
        # Probed exactly once during that silence (not every watch step), and not answered.
        assert peer.count(Ping) == 1
        # Redialed: a second handshake and a new connection, soon after.
        redial = await until(
            lambda: len(policy.connected_) == 2 and peer.handshakes == 2,
            limit=3.0,
            what="the redial",
        )
        print(f"redialed {redial:.2f} s after the dead connection was dropped")
        assert a.connections[peer.identity.device_id] is policy.connected_[1]


async def trickle(peer: FakePeer, conn: Connection, writer: asyncio.StreamWriter) -> None:
    """Sends one 256 KiB chunk over 3 x DEAD seconds, in small pieces; answers nothing."""
    reading = asyncio.ensure_future(peer.read_all(conn))
    try:
        message = ChunkData(request_id=7, data=b"\x5a" * (256 * 1024))
        data = conn._channel.send(encode_frame(message))  # the bytes Connection.send would write
        pieces = 40
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await asyncio.sleep(3 * DEAD / pieces)
        await asyncio.Event().wait()
    finally:
        reading.cancel()


async def test_N1_a_slow_sender_is_not_killed(fast_timers: None) -> None:
    """A large chunk still arriving (however slowly) is not silence."""
    async with manager() as (a, policy), fake_peer(trickle) as (peer, address):
        a.want(peer.identity.device_id, address, "static")
        await until(lambda: len(policy.connected_) == 1, what="connected")
        conn = policy.connected_[0]
        took = await until(lambda: bool(policy.messages), limit=3 * DEAD + 3, what="the chunk")
        print(f"\n256 KiB trickled in over {took:.2f} s (dead after {DEAD} s of silence)")
        assert took > 2 * DEAD  # it really was slower than the dead bound
        [message] = policy.messages
        assert isinstance(message, ChunkData)
        assert message.data == b"\x5a" * (256 * 1024)
        assert not policy.disconnected_
        assert not conn.closed
        assert a.connections[peer.identity.device_id] is conn
        assert peer.count(Ping) == 0  # bytes kept arriving: no probe was needed


def waits_for_us(messages: int) -> Behaviour:
    """Sends `messages` messages (the first one takes us 3 x DEAD to handle), then a Ping every
    KEEPALIVE / 2; keeps what we answer."""

    async def behave(peer: FakePeer, conn: Connection, writer: asyncio.StreamWriter) -> None:
        reading = asyncio.ensure_future(peer.read_all(conn))
        try:
            for i in range(messages):
                await conn.send(ChunkData(request_id=i + 1, data=b"slow"))
            while True:
                await asyncio.sleep(KEEPALIVE / 2)
                await conn.send(Ping(sent_at=1))
        finally:
            reading.cancel()

    return behave


async def test_N1_pings_are_answered_while_the_engine_is_busy(fast_timers: None) -> None:
    """The engine handles a message for 3 x DEAD; the peer's pings are answered meanwhile."""
    async with manager() as (a, policy), fake_peer(waits_for_us(1)) as (peer, address):
        policy.hold_first_message = 3 * DEAD
        a.want(peer.identity.device_id, address, "static")
        await until(lambda: len(policy.connected_) == 1, what="connected")
        conn = policy.connected_[0]
        await until(lambda: bool(policy.messages), what="the first message")
        pongs = await until(lambda: peer.count(Pong) >= 3, limit=2 * DEAD, what="pongs")
        assert pongs < 2 * DEAD
        assert len(policy.messages) == 1, "the handler was meant to be still busy"
        assert a.connections[peer.identity.device_id] is conn
        assert not policy.disconnected_


async def test_N1_bytes_count_while_unread(
    fast_timers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine is busy and the read-ahead is full, so the peer's pings wait unread: they still
    arrived, so the peer is alive, and they are answered once the engine is done."""
    monkeypatch.setattr(peers_module, "INBOX_MESSAGES", 2)
    async with manager() as (a, policy), fake_peer(waits_for_us(4)) as (peer, address):
        policy.hold_first_message = 3 * DEAD
        a.want(peer.identity.device_id, address, "static")
        await until(lambda: len(policy.connected_) == 1, what="connected")
        conn = policy.connected_[0]
        await until(lambda: bool(policy.messages), what="the first message")
        await asyncio.sleep(2 * DEAD)
        assert peer.count(Pong) == 0, "the read-ahead was meant to be full"
        assert not policy.disconnected_
        await until(lambda: peer.count(Pong) > 0, limit=2 * DEAD, what="pongs after the handler")
        assert len(policy.messages) == 4
        assert a.connections[peer.identity.device_id] is conn
        assert not conn.closed
        assert not policy.disconnected_


async def slow_reader(peer: FakePeer, conn: Connection, writer: asyncio.StreamWriter) -> None:
    """Takes our bytes at about 400 KB/s and never writes."""
    reader = conn._reader
    while await reader.read(8192):  # noqa: ASYNC110 - pacing the reads is the point
        await asyncio.sleep(0.02)
    await asyncio.Event().wait()


async def test_N1_a_slow_receiver_taking_our_backlog_is_not_killed(fast_timers: None) -> None:
    """A peer that only receives (slowly) says nothing, yet acknowledges our bytes: alive."""
    async with (
        manager() as (a, policy),
        fake_peer(slow_reader, rcvbuf=16384) as (peer, address),
    ):
        a.want(peer.identity.device_id, address, "static")
        await until(lambda: len(policy.connected_) == 1, what="connected")
        conn = policy.connected_[0]
        # Small kernel buffers, so that our backlog waits where the watch can see it shrink.
        conn._writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sent = 0
        started = time.monotonic()
        chunk = ChunkData(request_id=2, data=os.urandom(200_000))
        with contextlib.suppress(ConnectionClosedError):
            while time.monotonic() - started < 4 * DEAD:
                await conn.send(chunk)
                sent += len(chunk.data)
        elapsed = time.monotonic() - started
        print(f"\nsent {sent / 1e6:.1f} MB to a peer that never wrote, over {elapsed:.1f} s")
        assert conn.silent_for() > DEAD  # it really said nothing for longer than the bound
        assert not conn.closed, "a slow receiver was declared dead"
        assert not policy.disconnected_


async def test_N1_a_lan_announcement_cuts_the_redial_backoff(fast_timers: None) -> None:
    async with manager() as (a, _), fake_peer(mute) as (peer, address):
        device = peer.identity.device_id
        # As after many failed dials: the next one would be a minute away.
        a.wanted[device] = DialState(addresses=[(address, "lan")], next_try=time.monotonic() + 60)
        await asyncio.sleep(0.3)
        assert peer.handshakes == 0
        a.seen_on_lan(device, [address])
        took = await until(
            lambda: peer.handshakes == 1, limit=2.0, what="a dial after the sighting"
        )
        print(f"\ndialed {took:.2f} s after the LAN announcement")


def test_N1_redial_backoff_is_short_for_a_device_connected_recently() -> None:
    now = 1000.0
    never = DialState(addresses=[], failures=10)
    assert _dial_delay(never, now) == peers_module.DIAL_BACKOFF_MAX
    lost = DialState(addresses=[], failures=10, lost_at=now - 50)
    assert _dial_delay(lost, now) == peers_module.REDIAL_BACKOFF_MAX
    long_gone = dataclasses.replace(lost, lost_at=now - peers_module.RECENTLY_CONNECTED - 1)
    assert _dial_delay(long_gone, now) == peers_module.DIAL_BACKOFF_MAX
    first = DialState(addresses=[], failures=1, lost_at=now - 1)
    assert _dial_delay(first, now) == 2 * peers_module.DIAL_BACKOFF_MIN


class Partition:
    """A TCP proxy to `port` that can partition: on `cut()` every pipe it carries goes black (bytes
    are dropped, nothing is closed: no FIN, no RST) and new connections are turned away until
    `heal()`. Pipes that went black stay black, as a TCP connection deep in retransmission backoff
    does. From the server to the client it forwards at about `rate` bytes per second, so that a
    transfer is still under way when the cut comes."""

    def __init__(self, port: int, rate: int) -> None:
        self.port = port
        self.rate = rate
        self.is_cut = False
        self.server: asyncio.Server | None = None
        self._live: list[list[bool]] = []  # one flag per carried connection: [black]
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def cut(self) -> None:
        self.is_cut = True
        for black in self._live:
            black[0] = True

    def heal(self) -> None:
        self.is_cut = False

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]
        black = [False]
        self._live.append(black)
        for task in (
            asyncio.ensure_future(self._pipe(reader, up_writer, black, rate=0)),
            asyncio.ensure_future(self._pipe(up_reader, writer, black, rate=self.rate)),
        ):
            self._pipes.add(task)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        black: list[bool],
        rate: int,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(16384):
                if black[0]:
                    continue  # dropped, as a partition drops packets
                writer.write(data)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        if not black[0]:
            writer.close()


async def test_N1_requests_on_a_dead_connection_fail_at_once_and_resume_after_heal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real Cores: a member downloading through a link that goes black mid-transfer."""
    # Both Cores share this event loop, and joining does real disk work: give a Pong a second.
    dead = 3.0
    monkeypatch.setattr(peers_module, "KEEPALIVE_INTERVAL", 1.0)
    monkeypatch.setattr(peers_module, "DEAD_AFTER", dead)
    monkeypatch.setattr(peers_module, "STALE_AFTER", 2.0)
    monkeypatch.setattr(peers_module, "WATCH_STEP", 0.1)
    monkeypatch.setattr(peers_module, "REDIAL_BACKOFF_MAX", 0.5)
    owner = await make_core(tmp_path / "owner", "Owner")
    member = await make_core(tmp_path / "member", "Member")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(os.urandom(6 * 1024 * 1024))
    async with running(owner, member):
        link = Partition(owner.engine.peers.bound_port, rate=1_500_000)
        try:
            proxy = await link.start()
            album = await owner.engine.create_album(photos, "Partition")
            await until(lambda: album.view is not None and len(album.view.files) == 1, 20)
            _, text = await owner.engine.create_invite(
                album.album_id, role=Role.VIEWER, message="", to_device=None
            )
            assert text is not None
            # The member reaches the owner only through the link.
            code = parse_invite(text, int(time.time()))
            target = tmp_path / "member_album"
            await member.engine.redeem_code(
                encode_invite(dataclasses.replace(code, addresses=(proxy,), relays=())), target
            )
            owner_id = owner.identity.device_id
            transfers = member.transfers

            def in_flight(conn: Connection) -> int:
                return sum(c is conn for c in transfers.sent_on.values())

            await until(lambda: owner_id in member.engine.peers.connections, 20, "connected")
            conn = member.engine.peers.connections[owner_id]
            await until(
                lambda: conn.bytes_in > 1_000_000 and in_flight(conn) > 0,
                limit=20,
                what="the download under way",
            )
            assert tree(target) != tree(photos)
            link.cut()
            cut_at = time.monotonic()
            await until(lambda: conn.closed, limit=dead + 3, what="the dead link noticed")
            noticed = time.monotonic() - cut_at
            # Policy.disconnected -> Transfers.peer_gone: nothing waits on the dead connection.
            await until(lambda: in_flight(conn) == 0, limit=0.5, what="requests failed")
            assert "no answer" in conn.close_reason
            await asyncio.sleep(dead)  # the partition lasts a while longer; redials are refused
            assert owner_id not in member.engine.peers.connections
            link.heal()
            healed = time.monotonic()
            await until(
                lambda: owner_id in member.engine.peers.connections, limit=3, what="the redial"
            )
            back = time.monotonic() - healed
            done = await until(lambda: tree(target) == tree(photos), limit=20, what="the photo")
            print(
                f"\ndead link noticed {noticed:.2f} s after the cut (bound {dead} s); "
                f"reconnected {back:.2f} s after the heal; photo complete {back + done:.2f} s "
                "after the heal"
            )
            assert noticed <= dead + 1.0
            assert back + done < 15.0  # far less than REQUEST_TIMEOUT (30 s) would have taken
        finally:
            await link.close()
