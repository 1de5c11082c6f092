"""daemon/relay_client.py against the stock strelaysrv on 127.0.0.1, and against a fake relay.

The real relay (Debian `syncthing-relaysrv`) runs with `-pools=` (no public pool), no status
server, no NAT, a private key directory, and listens on 127.0.0.1 only; a test checks that it holds
no socket to anything but loopback. If the binary is missing it is fetched with `apt-get download`
and unpacked (never `apt-get install`: the package's postinst starts a *public* relay on systemd
hosts); the tests skip, saying why, when that is impossible.

The fake relay (an asyncio TLS server written here) covers what a real one will not do: a
negative or oversized length, garbage, a lying invitation, a missing ALPN, an invitation flood
(TESTPLAN N4, at the relay-client level). Set ALBUMSYNC_BENCH=1 for the 256 MiB throughput print.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.relay_client import RelayClient, RelayError, RelayState, SessionRefusedError
from protocol.certificate import make_certificate, tls_credentials
from protocol.ids import DeviceId
from protocol.keys import DeviceKey
from protocol.relay import (
    ALPN_PROTOCOL,
    MAGIC,
    RESPONSE_ALREADY_CONNECTED,
    RESPONSE_NOT_FOUND,
    RESPONSE_SUCCESS,
    ConnectRequest,
    JoinRelayRequest,
    JoinSessionRequest,
    Ping,
    RelayDecoder,
    RelayFull,
    RelayMessage,
    RelayUri,
    SessionInvitation,
    decode_message,
    encode_message,
)

e2e = pytest.mark.e2e
MiB = 1024 * 1024
TRANSFER = 8 * MiB
BENCH = 256 * MiB
JOIN_WITHIN = 10.0
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# --- the real strelaysrv ------------------------------------------------------------------------


@dataclass
class Relay:
    """A running strelaysrv on 127.0.0.1; `uri` is what it printed, pinned to its device ID."""

    proc: subprocess.Popen[str]
    uri: RelayUri
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def strelaysrv(tmp_path_factory: pytest.TempPathFactory) -> str:
    found = shutil.which("strelaysrv")
    if found:
        return found
    return _fetch_strelaysrv(tmp_path_factory.mktemp("strelaysrv-deb"))


@pytest.fixture(scope="module")
def relay(strelaysrv: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    running = start_relay(strelaysrv, tmp_path_factory.mktemp("relay-keys"), "-message-timeout=5s")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def short_timeout_relay(
    strelaysrv: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    # The relay never pings within a test (1 min) and cuts a connection silent for 3 s: only the
    # client's own pings can keep it joined. (2 s also cut a fresh session before its second end
    # had joined when CI was busy.)
    running = start_relay(
        strelaysrv,
        tmp_path_factory.mktemp("relay-keys-short"),
        "-ping-interval=1m",
        "-network-timeout=3s",
        "-message-timeout=5s",
    )
    yield running
    running.stop()


def start_relay(binary: str, keys: Path, *flags: str) -> Relay:
    """strelaysrv on a free loopback port (a concrete one: `:0` would be advertised as port 0)."""
    keys.mkdir(mode=0o700, exist_ok=True)
    for _ in range(3):
        port = _free_port()
        args = [binary, f"-listen=127.0.0.1:{port}", "-status-srv=", "-pools=", "-nat=false"]
        proc = subprocess.Popen(
            [*args, f"-keys={keys}", *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        relay_log: list[str] = []
        threading.Thread(target=_drain, args=(proc, lines, relay_log), daemon=True).start()
        uri = _await_uri(lines)
        if uri is not None:
            _await_port(port)
            return Relay(proc=proc, uri=RelayUri.parse(uri), log=relay_log)
        proc.kill()
        proc.wait()
    pytest.fail(f"strelaysrv did not start: {relay_log}")


def _fetch_strelaysrv(into: Path) -> str:
    """The binary from the Debian package, unpacked without running its maintainer scripts."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("strelaysrv is not installed and this is not a Debian-like system with apt-get")

    def download() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", "download", "syncthing-relaysrv"],
            cwd=into, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    done = download()
    if done.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, check=False)
        done = download()
    debs = sorted(into.glob("syncthing-relaysrv_*.deb"))
    if done.returncode != 0 or not debs:
        why = "" if os.geteuid() == 0 else " (and not root, so apt-get update was not tried)"
        pytest.skip(
            f"cannot fetch the syncthing-relaysrv package{why}: {done.stderr.strip()[-300:]}"
        )
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(into / "root")], check=True, timeout=60)
    binary = into / "root" / "usr" / "bin" / "strelaysrv"
    if not binary.exists():
        pytest.skip(f"{debs[0].name} holds no usr/bin/strelaysrv")
    return str(binary)


def _drain(proc: subprocess.Popen[str], lines: queue.Queue[str | None], keep: list[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        keep.append(line.rstrip())
        lines.put(line)
    lines.put(None)


def _await_uri(lines: queue.Queue[str | None]) -> str | None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            return None
        if line is None:
            return None
        if "URI: relay://" in line:
            return line.split("URI: ", 1)[1].strip()
    return None


def _await_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- clients ------------------------------------------------------------------------------------


@dataclass
class Peer:
    """A relay client with its own device key, collecting the invitations it receives."""

    client: RelayClient
    device_id: DeviceId
    invitations: asyncio.Queue[SessionInvitation]


@pytest.fixture
async def make_peer(tmp_path: Path) -> AsyncIterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(uri: RelayUri | str, *, seed: bytes | None = None, **options: float) -> Peer:
        key = DeviceKey(seed or os.urandom(32))
        invitations: asyncio.Queue[SessionInvitation] = asyncio.Queue()
        options.setdefault("backoff_min", 0.2)
        options.setdefault("backoff_max", 1.0)
        client = RelayClient(key, tmp_path, uri, invitations.put_nowait, **options)  # type: ignore[arg-type]
        peer = Peer(client, DeviceId.from_certificate(make_certificate(key)), invitations)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.client.close()


async def joined(*peers: Peer) -> None:
    for peer in peers:
        peer.client.start()
    for peer in peers:
        try:
            async with asyncio.timeout(JOIN_WITHIN):
                await peer.client.wait_joined()
        except TimeoutError:
            pytest.fail(f"not joined within {JOIN_WITHIN} s: {peer.client.status}")


async def connect_pair(dialer: Peer, listener: Peer) -> tuple[Streams, Streams]:
    """Both ends of one relayed session: the dialer asks, the listener accepts its invitation."""
    invitation, reader, writer = await dialer.client.open_session(listener.device_id)
    assert invitation.from_device == listener.device_id
    assert not invitation.server_socket
    async with asyncio.timeout(5):
        incoming = await listener.invitations.get()
    assert incoming.from_device == dialer.device_id
    assert incoming.server_socket
    listener_streams = await listener.client.connect_session(incoming)
    return (reader, writer), listener_streams


async def exchange(a: Streams, b: Streams, size: int) -> None:
    """Send `size` random bytes each way at once; assert both arrive intact."""
    data_a, data_b = os.urandom(size), os.urandom(size)
    got_b, got_a, _, _ = await asyncio.gather(
        _receive(a[0], size), _receive(b[0], size), _send(a[1], data_a), _send(b[1], data_b)
    )
    assert got_a == hashlib.sha256(data_a).digest()
    assert got_b == hashlib.sha256(data_b).digest()


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    view = memoryview(data)
    for offset in range(0, len(data), MiB):
        writer.write(view[offset : offset + MiB])
        await writer.drain()


async def _receive(reader: asyncio.StreamReader, size: int) -> bytes:
    digest, left = hashlib.sha256(), size
    while left:
        chunk = await reader.read(min(left, 4 * MiB))
        if not chunk:
            raise AssertionError(f"the stream ended {left} bytes early")
        digest.update(chunk)
        left -= len(chunk)
    return digest.digest()


def _close(*streams: Streams) -> None:
    for _, writer in streams:
        writer.close()


# --- tests against the real strelaysrv ----------------------------------------------------------


@e2e
async def test_two_devices_exchange_8_mib_each_way_through_strelaysrv(
    relay: Relay, make_peer: Callable[..., Peer]
) -> None:
    alice, bob = make_peer(relay.uri), make_peer(relay.uri)
    await joined(alice, bob)
    assert alice.client.state is RelayState.JOINED
    assert alice.client.status.last_error is None
    a, b = await connect_pair(alice, bob)
    await exchange(a, b, TRANSFER)
    # The listener can also dial: sessions are symmetric once open.
    b2, a2 = await connect_pair(bob, alice)
    await exchange(b2, a2, 64 * 1024)
    _close(a, b, a2, b2)


@e2e
def test_strelaysrv_holds_no_socket_beyond_loopback(relay: Relay) -> None:
    inodes = _socket_inodes(relay.proc.pid)
    assert inodes, "strelaysrv should at least be listening"
    endpoints = [e for e in _proc_net_endpoints() if e[0] in inodes]
    assert endpoints, "its listening socket should be in /proc/net"
    for _, local, remote in endpoints:
        for address in (local, remote):
            assert address.is_loopback or address.is_unspecified, (local, remote)


@e2e
async def test_wrong_pinned_relay_id_is_refused(
    relay: Relay, make_peer: Callable[..., Peer]
) -> None:
    wrong = RelayUri(host=relay.uri.host, port=relay.uri.port, device_id=_some_id(b"impostor"))
    peer = make_peer(wrong)
    with pytest.raises(RelayError, match=f"has device ID {relay.uri.device_id}, but its URI pins"):
        await peer.client.request_session(_some_id(b"anyone"))
    peer.client.start()
    await _until(lambda: peer.client.state is RelayState.FAILED)
    assert "but its URI pins" in (peer.client.status.last_error or "")
    assert peer.client.status.joins == 0


@e2e
async def test_not_found_is_retried_until_the_device_joins(
    relay: Relay, make_peer: Callable[..., Peer], caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = make_peer(relay.uri), make_peer(relay.uri)
    await joined(alice)
    caplog.set_level(logging.DEBUG, logger="albumsync.relay")
    request = asyncio.create_task(alice.client.request_session(bob.device_id))
    await asyncio.sleep(1.2)  # at least two "not found" answers (retries after 0.5 s, 1 s)
    assert not request.done()
    await joined(bob)
    invitation = await asyncio.wait_for(request, 15)
    assert invitation.from_device == bob.device_id
    assert "not found" in caplog.text
    async with asyncio.timeout(5):
        incoming = await bob.invitations.get()
    a, b = (
        await alice.client.connect_session(invitation),
        await bob.client.connect_session(incoming),
    )
    await exchange(a, b, 1024)
    _close(a, b)


@e2e
async def test_not_found_gives_up_with_a_clear_error(
    relay: Relay, make_peer: Callable[..., Peer]
) -> None:
    alice = make_peer(relay.uri)
    with pytest.raises(SessionRefusedError, match="not found") as refused:
        await alice.client.request_session(_some_id(b"nobody"), attempts=2)
    assert refused.value.retryable


@e2e
async def test_already_connected_join_is_retried(
    relay: Relay, make_peer: Callable[..., Peer]
) -> None:
    seed = os.urandom(32)
    first, second = make_peer(relay.uri, seed=seed), make_peer(relay.uri, seed=seed)
    await joined(first)
    second.client.start()
    await _until(lambda: "already connected" in (second.client.status.last_error or ""))
    assert second.client.state is not RelayState.JOINED
    await first.client.close()
    await joined(second)  # its retries succeed once the ID is free


@e2e
async def test_keepalive_idle_client_stays_joined_past_the_network_timeout(
    short_timeout_relay: Relay, make_peer: Callable[..., Peer]
) -> None:
    uri = short_timeout_relay.uri
    alice = make_peer(uri, ping_interval=0.5)
    bob = make_peer(uri, ping_interval=0.5)
    silent = make_peer(uri, ping_interval=60.0)  # the control: no pings of its own
    await joined(alice, bob, silent)
    await asyncio.sleep(7.5)  # 2.5 x the relay's network timeout, and no relay ping
    for peer in (alice, bob):
        assert peer.client.state is RelayState.JOINED
        assert peer.client.status.joins == 1, f"cut and rejoined: {peer.client.status}"
    assert silent.client.status.joins >= 2, f"the control was not cut: {silent.client.status}"
    a, b = await connect_pair(alice, bob)
    await exchange(a, b, 256 * 1024)
    _close(a, b)


@e2e
async def test_keepalive_the_relays_pings_are_answered(
    strelaysrv: str, tmp_path: Path, make_peer: Callable[..., Peer]
) -> None:
    fast = start_relay(
        strelaysrv, tmp_path / "keys", "-ping-interval=0.5s", "-network-timeout=1.5s"
    )
    try:
        quiet = make_peer(fast.uri, ping_interval=60.0)  # only Pongs keep it alive here
        await joined(quiet)
        await asyncio.sleep(4.0)
        assert quiet.client.state is RelayState.JOINED
        assert quiet.client.status.joins == 1, quiet.client.status
    finally:
        fast.stop()


@e2e
@pytest.mark.skipif(os.environ.get("ALBUMSYNC_BENCH") != "1", reason="set ALBUMSYNC_BENCH=1")
async def test_bench_256_mib_relay_vs_direct(relay: Relay, make_peer: Callable[..., Peer]) -> None:
    alice, bob = make_peer(relay.uri), make_peer(relay.uri)
    await joined(alice, bob)
    accepted: asyncio.Queue[Streams] = asyncio.Queue()

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    data = os.urandom(BENCH)
    relayed, direct = [], []
    for _ in range(3):  # alternate, so both paths see the same machine load
        a, b = await connect_pair(alice, bob)
        relayed.append(await _one_way(a, b, data))
        _close(a, b)
        c = await asyncio.open_connection("127.0.0.1", port)
        d = await accepted.get()
        direct.append(await _one_way(c, d, data))
        _close(c, d)
    server.close()
    print("\n256 MiB one way, asyncio, one process, SHA-256 on both ends, 3 runs each:")
    for name, times in (("through strelaysrv", relayed), ("direct loopback TCP", direct)):
        rates = ", ".join(f"{BENCH / MiB / t:.0f}" for t in times)
        print(f"  {name}: {rates} MiB/s (best {min(times):.2f} s)")


async def _one_way(sender: Streams, receiver: Streams, data: bytes) -> float:
    start = time.perf_counter()
    got, _ = await asyncio.gather(_receive(receiver[0], len(data)), _send_hashed(sender[1], data))
    elapsed = time.perf_counter() - start
    assert got == hashlib.sha256(data).digest()
    return elapsed


async def _send_hashed(writer: asyncio.StreamWriter, data: bytes) -> None:
    digest = hashlib.sha256()  # the sender hashes too, as a sync engine would
    view = memoryview(data)
    for offset in range(0, len(data), MiB):
        digest.update(view[offset : offset + MiB])
        writer.write(view[offset : offset + MiB])
        await writer.drain()


# --- the fake relay (TESTPLAN N4 at the relay-client level) ------------------------------------

Script = Callable[[RelayMessage], Awaitable[bytes | None]]


class FakeRelay:
    """A TLS server speaking just enough relay protocol; `script` answers each client message."""

    def __init__(
        self, tmp_path: Path, script: Script, *, alpn: bool = True, hang_up: bool = False
    ) -> None:
        self.hang_up = hang_up  # close the connection after each answer
        key = DeviceKey(os.urandom(32))
        credentials = tls_credentials(key)
        pem = tmp_path / f"fake-relay-{os.urandom(4).hex()}.pem"
        pem.write_bytes(credentials.certificate_pem + credentials.private_key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pem)
        if alpn:
            self.context.set_alpn_protocols([ALPN_PROTOCOL])
        self.device_id = DeviceId.from_certificate(make_certificate(key))
        self.script = script
        self.connections = 0
        self.received: list[RelayMessage] = []
        self.raw_bytes = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def uri(self) -> RelayUri:
        return RelayUri(host="127.0.0.1", port=self.port, device_id=self.device_id)

    async def __aenter__(self) -> FakeRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = RelayDecoder()
        with contextlib.suppress(Exception):
            while data := await reader.read(4096):
                self.raw_bytes += len(data)
                decoder.receive_data(data)
                while (message := decoder.next_message()) is not None:
                    self.received.append(message)
                    answer = await self.script(message)
                    if answer is None:
                        writer.close()
                        return
                    writer.write(answer)
                    await writer.drain()
                    if self.hang_up and answer:
                        writer.close()
                        return
        writer.close()


def _join_then(after_join: bytes) -> Script:
    async def script(message: RelayMessage) -> bytes | None:
        if isinstance(message, JoinRelayRequest):
            return encode_message(RESPONSE_SUCCESS) + after_join
        return b""

    return script


def _header(message_type: int, length: int, magic: int = MAGIC) -> bytes:
    return (
        magic.to_bytes(4, "big")
        + message_type.to_bytes(4, "big", signed=True)
        + length.to_bytes(4, "big", signed=True)
    )


@pytest.mark.parametrize(
    ("after_join", "error"),
    [
        (_header(0, -1), "claiming -1 body bytes"),
        (_header(6, 1 << 30), "claiming 1073741824 body bytes"),
        (_header(6, 1025), "claiming 1025 body bytes"),
        (b"\x16\x03\x01\x02\x00" + b"\xff" * 40, "magic 0x16030102"),
        (_header(4, 8) + b"\0\0\0\0\0\0\0\xff", "malformed Response"),
        (
            _header(3, 36) + b"\0\0\0\x20" + bytes(32),
            "sent a JoinSessionRequest on the joined connection",
        ),
        (_header(4, 16) + b"\0" * 7, "closed the connection mid-message"),
        (encode_message(RelayFull()), "the relay is full"),
    ],
)
async def test_N4_malformed_relay_messages_are_clear_errors_not_crashes(
    tmp_path: Path, make_peer: Callable[..., Peer], after_join: bytes, error: str
) -> None:
    async with FakeRelay(tmp_path, _join_then(after_join), hang_up=True) as fake:
        peer = make_peer(fake.uri, backoff_min=0.1, backoff_max=0.2)
        peer.client.start()
        await _until(lambda: fake.connections >= 2 and peer.client.status.last_error is not None)
        assert error in (peer.client.status.last_error or ""), peer.client.status
        assert "relay" in (peer.client.status.last_error or "")
        assert peer.client.running, "the client must keep retrying, not die"


async def test_N4_header_then_silence_times_out(
    tmp_path: Path, make_peer: Callable[..., Peer]
) -> None:
    async with FakeRelay(tmp_path, _join_then(_header(4, 16) + b"\0" * 7)) as fake:
        peer = make_peer(fake.uri, ping_interval=10.0, idle_timeout=0.5)
        peer.client.start()
        await _until(lambda: peer.client.state is RelayState.FAILED)
        assert peer.client.status.last_error == "the relay did not answer in time"
        assert peer.client.running


async def test_N4_relay_offering_another_device_is_refused(
    tmp_path: Path, make_peer: Callable[..., Peer]
) -> None:
    impostor = _some_id(b"impostor")

    async def script(message: RelayMessage) -> bytes | None:
        assert isinstance(message, ConnectRequest)
        invitation = SessionInvitation(
            from_device=impostor, key=bytes(32), address=b"", port=1, server_socket=False
        )
        return encode_message(invitation)

    async with FakeRelay(tmp_path, script) as fake:
        peer = make_peer(fake.uri)
        with pytest.raises(RelayError, match=r"offered a session with .* when asked for"):
            await peer.client.request_session(_some_id(b"wanted"))


async def test_pin_mismatch_sends_nothing(tmp_path: Path, make_peer: Callable[..., Peer]) -> None:
    async with FakeRelay(tmp_path, _join_then(b"")) as fake:
        wrong = RelayUri(host="127.0.0.1", port=fake.port, device_id=_some_id(b"pinned"))
        peer = make_peer(wrong)
        with pytest.raises(RelayError, match="but its URI pins"):
            await peer.client.request_session(_some_id(b"anyone"))
        await asyncio.sleep(0.1)
        assert fake.connections == 1
        assert fake.raw_bytes == 0  # the device ID we wanted never left this machine


async def test_missing_alpn_is_refused(tmp_path: Path, make_peer: Callable[..., Peer]) -> None:
    async with FakeRelay(tmp_path, _join_then(b""), alpn=False) as fake:
        peer = make_peer(fake.uri)
        with pytest.raises(RelayError, match="did not agree to ALPN 'bep-relay'"):
            await peer.client.request_session(_some_id(b"anyone"))
        assert fake.raw_bytes == 0


async def test_invitation_flood_is_rate_limited(
    tmp_path: Path, make_peer: Callable[..., Peer], caplog: pytest.LogCaptureFixture
) -> None:
    flood = b"".join(
        encode_message(
            SessionInvitation(
                from_device=_some_id(b"%d" % i),
                key=bytes(32),
                address=b"",
                port=1,
                server_socket=True,
            )
        )
        for i in range(25)
    )
    async with FakeRelay(tmp_path, _join_then(flood + encode_message(Ping()))) as fake:
        peer = make_peer(fake.uri)
        await joined(peer)
        await _until(lambda: len(fake.received) >= 2)  # our Pong to the Ping after the flood
        assert peer.invitations.qsize() == 10
        assert peer.client.status.invitations_dropped == 15
        assert "dropping the rest" in caplog.text
        assert peer.client.state is RelayState.JOINED


async def test_already_connected_session_join_asks_again(
    tmp_path: Path, make_peer: Callable[..., Peer]
) -> None:
    # A plain TCP "session port" refusing the first join with "already connected", then accepting.
    joins: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(12 + 36)
        joins.append(data)
        answer = RESPONSE_ALREADY_CONNECTED if len(joins) == 1 else RESPONSE_SUCCESS
        writer.write(encode_message(answer) + (b"peer says hi" if answer.ok else b""))
        await writer.drain()
        if not answer.ok:
            writer.close()
        else:
            await reader.read()

    session_server = await asyncio.start_server(session, "127.0.0.1", 0)
    session_port = session_server.sockets[0].getsockname()[1]
    wanted = _some_id(b"wanted")
    requests = 0

    async def script(message: RelayMessage) -> bytes | None:
        nonlocal requests
        assert isinstance(message, ConnectRequest)
        requests += 1
        if requests == 1:
            return encode_message(RESPONSE_NOT_FOUND)
        invitation = SessionInvitation(
            from_device=wanted,
            key=bytes([requests]) * 32,
            address=ipaddress.ip_address("::ffff:127.0.0.1").packed,
            port=session_port,
            server_socket=False,
        )
        return encode_message(invitation)

    async with FakeRelay(tmp_path, script) as fake:
        peer = make_peer(fake.uri)
        invitation, reader, writer = await peer.client.open_session(wanted)
        assert await reader.readexactly(12) == b"peer says hi"  # early bytes are not swallowed
        writer.close()
    session_server.close()
    assert requests == 3  # not found, then an invitation refused as already connected, then one
    assert [JoinSessionRequest(key=bytes([n]) * 32) for n in (2, 3)] == [
        decode_message(j) for j in joins
    ]
    assert invitation.key == bytes([3]) * 32


async def test_unreachable_relay_reports_and_retries(
    tmp_path: Path, make_peer: Callable[..., Peer]
) -> None:
    uri = RelayUri(host="127.0.0.1", port=_free_port(), device_id=_some_id(b"gone"))
    peer = make_peer(uri, backoff_min=0.1, backoff_max=0.2)
    peer.client.start()
    await _until(lambda: peer.client.state is RelayState.FAILED)
    assert "cannot reach the relay" in (peer.client.status.last_error or "")
    with pytest.raises(RelayError, match="cannot ask the relay"):
        await peer.client.request_session(_some_id(b"x"))
    await peer.client.close()
    assert peer.client.state is RelayState.STOPPED


async def test_close_is_prompt_while_reconnecting_fast(
    tmp_path: Path, make_peer: Callable[..., Peer]
) -> None:
    # Regression: asyncio.wait_for (3.11) could swallow close()'s cancellation when a connect
    # failed at the same moment, and the loop went on forever.
    uri = RelayUri(host="127.0.0.1", port=_free_port(), device_id=_some_id(b"gone"))
    for _ in range(20):
        peer = make_peer(uri, backoff_min=0.001, backoff_max=0.001)
        peer.client.start()
        await asyncio.sleep(0.02)
        async with asyncio.timeout(2):
            await peer.client.close()
        assert not peer.client.running


def test_bad_uri_and_cert_dir_are_config_errors(tmp_path: Path) -> None:
    key = DeviceKey(os.urandom(32))
    with pytest.raises(ConfigError, match="no \\?id="):
        RelayClient(key, tmp_path, "relay://127.0.0.1:22067/", lambda _: None)
    with pytest.raises(ConfigError, match="cannot write the relay TLS key"):
        RelayClient(key, tmp_path / "missing", f"relay://h:1/?id={_some_id(b'r')}", lambda _: None)
    assert list(tmp_path.iterdir()) == []  # the key file is removed as soon as it is loaded


# --- helpers ------------------------------------------------------------------------------------


def _some_id(label: bytes) -> DeviceId:
    return DeviceId(hashlib.sha256(b"relay client test " + label).digest())


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state the code under test owns
            await asyncio.sleep(0.02)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _proc_net_endpoints() -> Iterator[
    tuple[
        str,
        ipaddress.IPv4Address | ipaddress.IPv6Address,
        ipaddress.IPv4Address | ipaddress.IPv6Address,
    ]
]:
    for name in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            yield fields[9], _proc_address(fields[1]), _proc_address(fields[2])


def _proc_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    hex_ip = text.split(":", maxsplit=1)[0]
    raw = bytes.fromhex(hex_ip)
    # /proc/net prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
