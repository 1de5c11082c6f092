"""Issue 5 / TESTPLAN N3 (rule): a direct connection replaces a relayed one, once, on both ends.

Two real PeerManagers on loopback. The "relay" is a stand-in that pipes a session straight into the
other manager's accept_stream as via="relay" (the real strelaysrv path is in test_relay_sync and the
netns test); the "direct" path goes through a switchable TCP proxy, so it can be blocked and opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from daemon import peers as peers_module
from daemon.connection import Connection, PeerInfo, open_channel
from daemon.identity import Identity
from daemon.peers import PeerManager
from protocol.ids import DeviceId
from protocol.messages import Message
from tests.daemon.test_engine_sync import until as shared_until

pytestmark = pytest.mark.timeout(60)


@dataclass
class Recorder:
    """A Policy that keeps every peer and records what the manager tells it."""

    connected_: list[Connection] = field(default_factory=list)
    disconnected_: list[Connection] = field(default_factory=list)

    def accepts(self, peer: PeerInfo) -> bool:
        return True

    async def connected(self, conn: Connection) -> None:
        self.connected_.append(conn)

    async def message(self, conn: Connection, message: Message) -> None:
        return None

    async def disconnected(self, conn: Connection) -> None:
        self.disconnected_.append(conn)


@dataclass
class Node:
    identity: Identity
    policy: Recorder
    peers: PeerManager


def node(name: str) -> Node:
    identity = Identity.from_seed(os.urandom(32), name)
    policy = Recorder()
    return Node(identity, policy, PeerManager(identity, policy, "127.0.0.1", 0))


class FakeRelay:
    """open_session(device) hands one end of a fresh TCP pipe to that device's accept_stream."""

    def __init__(self, nodes: dict[DeviceId, Node]) -> None:
        self.nodes = nodes
        self.sessions = 0

    async def open_session(
        self, device_id: DeviceId
    ) -> tuple[None, asyncio.StreamReader, asyncio.StreamWriter]:
        target = self.nodes[device_id].peers
        accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(None)
            await target.accept_stream(reader, writer, "relay://fake", "relay")

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await accepted
        server.close()
        self.sessions += 1
        return None, reader, writer


class Gate:
    """A TCP proxy to `port` that drops every connection while `open` is False."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open = False
        self.refused = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def pair(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Node, Node, Gate]]:
    # Short timers: the rule is the same, the test just does not wait 5-30 s for each try.
    monkeypatch.setattr(peers_module, "UPGRADE_RETRY_MIN", 0.2)
    monkeypatch.setattr(peers_module, "UPGRADE_RETRY_MAX", 0.5)
    monkeypatch.setattr(peers_module, "RETIRE_GRACE", 0.3)
    a, b = node("A"), node("B")
    relay = FakeRelay({a.identity.device_id: a, b.identity.device_id: b})
    for n in (a, b):
        n.peers.relay_dialer = lambda uri: relay  # type: ignore[assignment,return-value]
        await n.peers.start()
    gate = Gate(b.peers.bound_port)
    try:
        yield a, b, gate
    finally:
        gate.close()
        for n in (a, b):
            await n.peers.stop()


async def until(check: Callable[[], bool], limit: float = 10.0, what: str = "") -> float:
    return await shared_until(check, limit, what)


def via(n: Node, other: Node) -> str:
    conn = n.peers.connections.get(other.identity.device_id)
    return conn.peer.via if conn is not None and not conn.closed else ""


async def test_N3_direct_path_replaces_the_relay_once_it_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch) as (a, b, gate):
        direct = await gate.start()
        a.peers.want(b.identity.device_id, direct, "static")
        a.peers.want(b.identity.device_id, "relay://fake", "relay")
        await until(lambda: via(a, b) == "relay" and via(b, a) == "relay", what="relayed")
        relayed_a = a.peers.connections[b.identity.device_id]
        relayed_b = b.peers.connections[a.identity.device_id]

        # Blocked: the direct path is tried again and again (with backoff) but nothing changes.
        await until(lambda: gate.refused >= 3, what="direct tries while blocked")
        assert via(a, b) == "relay"
        assert a.peers.connections[b.identity.device_id] is relayed_a

        gate.open = True
        took = await until(
            lambda: via(a, b) == "static" and via(b, a) == "incoming", what="the direct switch"
        )
        print(f"\ndirect connection in use {took:.2f} s after the path opened")
        conn_a = a.peers.connections[b.identity.device_id]
        conn_b = b.peers.connections[a.identity.device_id]
        assert conn_a.peer.initiator
        assert not conn_b.peer.initiator
        await until(lambda: relayed_a.closed and relayed_b.closed, what="relay sessions closed")
        await until(
            lambda: relayed_a in a.policy.disconnected_ and relayed_b in b.policy.disconnected_,
            what="the engine told the relayed connections are gone",
        )

        # Stable: no flapping back to the relay, and the relay is not asked again.
        sessions = a.peers.relay_dialer("relay://fake").sessions  # type: ignore[misc, attr-defined]
        await asyncio.sleep(1.5)
        assert a.peers.connections[b.identity.device_id] is conn_a
        assert b.peers.connections[a.identity.device_id] is conn_b
        assert a.peers.relay_dialer("relay://fake").sessions == sessions  # type: ignore[misc, attr-defined]
        assert len(a.policy.connected_) == 2
        assert len(b.policy.connected_) == 2


async def test_N3_relay_session_arriving_while_direct_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch) as (a, b, gate):
        gate.open = True
        a.peers.want(b.identity.device_id, await gate.start(), "lan")
        await until(lambda: via(a, b) == "lan" and via(b, a) == "incoming", what="direct")
        direct_b = b.peers.connections[a.identity.device_id]
        # B's side asks for a relayed session anyway (say its relay client raced the LAN).
        relay = a.peers.relay_dialer("relay://fake")  # type: ignore[misc]
        _, reader, writer = await relay.open_session(a.identity.device_id)
        conn = await open_channel(
            reader, writer, b.identity, initiator=True, address="relay://fake", via="relay"
        )
        run = asyncio.ensure_future(b.peers._run(conn))
        await until(lambda: conn.closed, what="the relayed duplicate closed")
        await run
        assert b.peers.connections[a.identity.device_id] is direct_b
        assert not direct_b.closed


def fake(device: DeviceId, *, via: str, initiator: bool, silent: float = 0.0) -> Connection:
    conn = Connection.__new__(Connection)
    conn.peer = PeerInfo(device, b"", b"", "x", "tcp://x:1", via, initiator)
    conn._last_received = time.monotonic() - silent  # type: ignore[attr-defined]
    conn.closed = False
    return conn


def test_N3_both_ends_keep_the_same_connection() -> None:
    """_prefer_new: direct over relay, a silent one loses, else the lower ID's dial; symmetric."""
    a, b = node("A"), node("B")
    ida, idb = a.identity.device_id, b.identity.device_id

    def keep(n: Node, existing: Connection, new: Connection) -> Connection:
        return new if n.peers._prefer_new(existing, new) else existing

    # The same two connections as each end sees them: (A's view, B's view).
    cases = {
        "direct by A": (
            fake(idb, via="lan", initiator=True),
            fake(ida, via="incoming", initiator=False),
        ),
        "direct by B": (
            fake(idb, via="incoming", initiator=False),
            fake(ida, via="lan", initiator=True),
        ),
        "relay by A": (
            fake(idb, via="relay", initiator=True),
            fake(ida, via="relay", initiator=False),
        ),
        "relay by B": (
            fake(idb, via="relay", initiator=False),
            fake(ida, via="relay", initiator=True),
        ),
    }
    lower = "A" if ida.raw < idb.raw else "B"
    for first, second in [
        ("relay by A", "direct by B"),
        ("relay by B", "direct by A"),
        ("direct by A", "relay by B"),
        ("direct by A", "direct by B"),
        ("direct by B", "direct by A"),
        ("relay by A", "relay by B"),
    ]:
        kept_a = keep(a, cases[first][0], cases[second][0])
        kept_b = keep(b, cases[first][1], cases[second][1])
        name_a = first if kept_a is cases[first][0] else second
        name_b = first if kept_b is cases[first][1] else second
        assert name_a == name_b, (first, second, name_a, name_b)
        if first.split()[0] != second.split()[0]:
            assert name_a.startswith("direct"), (first, second)
        else:
            assert name_a.endswith(lower), (first, second)
    # A connection silent for longer than two keepalives is replaced, even by a relayed one.
    dead = fake(idb, via="lan", initiator=True, silent=peers_module.STALE_AFTER + 1)
    assert a.peers._prefer_new(dead, fake(idb, via="relay", initiator=False))
