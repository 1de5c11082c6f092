"""daemon/discovery.py: what it announces, whom it sees, and how little a flood or a spoof costs.

TESTPLAN N5 (mdns_spoof_flood_and_leak) and the discovery half of N1's setup (peers in separate
network namespaces find each other). Real zeroconf traffic runs between subprocesses, each in its
own namespace when we are root; the flood falls back to the host's loopback otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zeroconf import (  # type: ignore[attr-defined]  # the DNS* names: kept for compatibility, not in __all__
    DNSAddress,
    DNSIncoming,
    DNSNsec,
    DNSPointer,
    DNSService,
    DNSText,
    InterfaceChoice,
    IPVersion,
    ServiceInfo,
)

from daemon import discovery
from daemon.discovery import (
    MAX_ADDRESSES,
    MAX_SERVICES,
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Candidate,
    Discovery,
    instance_name,
    is_device_id,
    local_addresses,
    read_candidate,
)
from protocol.ids import DeviceId
from tests.netns import Network, network, require_root

ROOT = Path(__file__).resolve().parents[2]
SPOOF_HOST = "203.0.113.66"  # TEST-NET-3: only ever a record value, never dialled
LINE_LIMIT = 2**24  # an observer's stats line under a flood is far beyond asyncio's 64 KiB
SEEN_WITHIN = 5.0  # seconds for a peer to show up, from the later of the two starts


def fake_id(n: int) -> str:
    """A well-formed device ID that belongs to no certificate."""
    return str(DeviceId(hashlib.sha256(b"albumsync discovery test %d" % n).digest()))


def _wrong_check(device_id: str) -> str:
    """The ID with its last check character changed."""
    return device_id[:-1] + ("A" if device_id[-1] != "A" else "B")


def txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(item)]) + item for item in items)


def info(text: bytes, *, port: int = 22000, addresses: list[str] | None = None) -> ServiceInfo:
    service = ServiceInfo(SERVICE_TYPE, "X." + SERVICE_TYPE, port=port, properties=text)
    service.addresses = [socket.inet_pton(_family(a), a) for a in addresses or ["192.0.2.7"]]
    return service


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


# --- announcements read without a network ---------------------------------------------------

VICTIM = fake_id(0)


def test_instance_name_is_two_id_groups_and_no_host_name() -> None:
    name = instance_name(VICTIM)
    assert name == "-".join(VICTIM.split("-")[:2])
    assert len(name) == 15
    assert socket.gethostname().lower() not in name.lower()


def test_is_device_id_takes_only_the_printed_form() -> None:
    assert is_device_id(VICTIM)
    assert not is_device_id(VICTIM.lower())
    assert not is_device_id(VICTIM.replace("-", ""))
    assert not is_device_id(_wrong_check(VICTIM))
    assert not is_device_id(VICTIM + "-AAAAAAA")
    assert not is_device_id("")


def test_read_candidate_accepts_a_well_formed_announcement() -> None:
    service = info(
        txt(b"id=" + VICTIM.encode(), b"v=1", b"future=x"),
        addresses=["192.0.2.7", "2001:db8::7"],
    )
    assert read_candidate(service) == Candidate(
        VICTIM, (("192.0.2.7", 22000), ("2001:db8::7", 22000))
    )


@pytest.mark.parametrize(
    ("label", "text", "port", "addresses"),
    [
        ("no id", txt(b"v=1"), 22000, None),
        ("no version", txt(b"id=" + VICTIM.encode()), 22000, None),
        ("version not a number", txt(b"id=" + VICTIM.encode(), b"v=one"), 22000, None),
        ("lower-case id", txt(b"id=" + VICTIM.lower().encode(), b"v=1"), 22000, None),
        ("id without dashes", txt(b"id=" + VICTIM.replace("-", "").encode(), b"v=1"), 22000, None),
        ("wrong check character", txt(b"id=" + _wrong_check(VICTIM).encode(), b"v=1"), 22000, None),
        (
            "id twice",
            txt(b"id=" + VICTIM.encode(), b"v=1", b"ID=" + fake_id(1).encode()),
            22000,
            None,
        ),
        ("truncated TXT", txt(b"id=" + VICTIM.encode(), b"v=1")[:-1], 22000, None),
        ("oversized TXT", txt(b"id=" + VICTIM.encode(), b"v=1", *[b"x" * 200] * 3), 22000, None),
        ("non-ASCII id", txt("id=é".encode(), b"v=1"), 22000, None),
        ("port 0", txt(b"id=" + VICTIM.encode(), b"v=1"), 0, None),
        ("only multicast addresses", txt(b"id=" + VICTIM.encode(), b"v=1"), 22000, ["224.0.0.251"]),
        ("unspecified address", txt(b"id=" + VICTIM.encode(), b"v=1"), 22000, ["0.0.0.0"]),
    ],
)
def test_N5_malformed_announcement_is_ignored(
    label: str, text: bytes, port: int, addresses: list[str] | None
) -> None:
    assert read_candidate(info(text, port=port, addresses=addresses)) is None, label


def test_N5_addresses_per_announcement_are_capped() -> None:
    many = [f"192.0.2.{i}" for i in range(1, 60)]
    candidate = read_candidate(info(txt(b"id=" + VICTIM.encode(), b"v=1"), addresses=many))
    assert candidate is not None
    assert len(candidate.addresses) == MAX_ADDRESSES


def test_constructor_refuses_a_malformed_own_id_or_port() -> None:
    with pytest.raises(ValueError, match="device ID"):
        Discovery(VICTIM.lower(), 22000, lambda *_: None)
    with pytest.raises(ValueError, match="port"):
        Discovery(VICTIM, 0, lambda *_: None)


def test_local_addresses_leave_out_loopback_and_link_local() -> None:
    found = local_addresses(InterfaceChoice.All, IPVersion.All)
    assert found
    if any(not a.startswith(("127.", "::1")) for a in found):
        assert not any(a.startswith("127.") or a == "::1" for a in found)
    assert not any(a.lower().startswith("fe80:") for a in found)
    assert local_addresses(["127.0.0.1"], IPVersion.All) == ["127.0.0.1"]
    assert local_addresses(["127.0.0.1", "::1"], IPVersion.V4Only) == ["127.0.0.1"]


# --- real mDNS between processes ------------------------------------------------------------

PEER_SCRIPT = r"""
import asyncio, json, sys, time
from daemon.discovery import Discovery

def emit(**event):
    print(json.dumps({"t": time.time(), **event}), flush=True)

async def main(device_id, port, *interfaces):
    loop = asyncio.get_running_loop()
    options = {"interfaces": list(interfaces)} if interfaces else {}
    disc = Discovery(device_id, port, lambda d, a: emit(event="seen", id=d, addresses=a), **options)
    emit(event="starting")
    await disc.start()
    emit(event="started", instance=disc.instance_name)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands():  # until stdin closes
        while line := await reader.readline():
            if line.strip() == b"refresh":
                await disc.refresh_addresses()
                emit(event="refreshed")

    closed = asyncio.ensure_future(commands())
    last = None
    while not closed.done():
        now = {d.device_id: sorted(map(list, d.addresses)) for d in disc.nearby()}
        if now != last:
            emit(event="nearby", devices=now)
            last = now
        await asyncio.wait([closed], timeout=0.05)
    await disc.stop()
    emit(event="stopped")

asyncio.run(main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:]))
"""

# Everything a third party on the LAN hears: zeroconf's parsed records, and the raw packets.
CAPTURE_SCRIPT = r"""
import asyncio, json, socket, struct, sys, time
from zeroconf import DNSAddress, DNSPointer, DNSService, DNSText, RecordUpdateListener
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

def emit(**event):
    print(json.dumps({"t": time.time(), **event}), flush=True)

class Records(RecordUpdateListener):
    def async_update_records(self, zc, now, records):
        for update in records:
            r = update.new
            item = {"event": "record", "kind": type(r).__name__, "name": r.name, "ttl": r.ttl}
            if isinstance(r, DNSText):
                item["text"] = r.text.hex()
            elif isinstance(r, DNSService):
                item.update(server=r.server, port=r.port)
            elif isinstance(r, DNSPointer):
                item["alias"] = r.alias
            elif isinstance(r, DNSAddress):
                item["address"] = socket.inet_ntop(
                    socket.AF_INET6 if len(r.address) == 16 else socket.AF_INET, r.address)
            emit(**item)

class Raw(asyncio.DatagramProtocol):
    packets = []
    def datagram_received(self, data, addr):
        self.packets.append(data)

async def main(address):
    loop = asyncio.get_running_loop()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    raw.bind(("224.0.0.251", 5353))
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                   socket.inet_aton("224.0.0.251") + socket.inet_aton(address))
    await loop.create_datagram_endpoint(Raw, sock=raw)
    zc = AsyncZeroconf(interfaces=[address])
    zc.zeroconf.async_add_listener(Records(), None)
    browser = AsyncServiceBrowser(zc.zeroconf, sys.argv[2], handlers=[lambda **kw: None])
    emit(event="started")
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    await browser.async_cancel()
    await zc.async_close()
    emit(event="raw", packets=[p.hex() for p in Raw.packets])

asyncio.run(main(sys.argv[1]))
"""

OBSERVER_SCRIPT = r"""
import asyncio, gc, json, logging, sys, time
from daemon.discovery import Discovery

def emit(**event):
    print(json.dumps({"t": time.time(), **event}), flush=True)

class Count(logging.Handler):
    warnings = 0
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            Count.warnings += 1

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

async def main(address, device_id):
    logging.getLogger("daemon.discovery").addHandler(Count())
    loop = asyncio.get_running_loop()
    seen = []
    disc = Discovery(device_id, 22001, lambda d, a: seen.append([d, a]), interfaces=[address])
    await disc.start()
    emit(event="started")
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip():
        gc.collect()
        emit(event="stats", tracked=disc.tracked_services, ignored=disc.ignored_services,
             warnings=Count.warnings, rss=rss(), seen=seen[-2000:],
             nearby={d.device_id: sorted(map(list, d.addresses)) for d in disc.nearby()})
    await disc.stop()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

FLOOD_SCRIPT = r"""
import asyncio, json, sys, time
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

def emit(**event):
    print(json.dumps({"t": time.time(), **event}), flush=True)

def service(name, text, port, address):
    return AsyncServiceInfo(sys.argv[2], name + "." + sys.argv[2], port=port, properties=text,
                            server=name + ".local.", parsed_addresses=[address])

async def register(zc, infos):
    sent = await asyncio.gather(*(zc.async_register_service(i, cooperating_responders=True)
                                  for i in infos))
    await asyncio.gather(*sent)

async def main(address, plan_file):
    plan = json.load(open(plan_file))
    loop = asyncio.get_running_loop()
    zc = AsyncZeroconf(interfaces=[address])
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    for step in ("spoof", "flood"):
        await reader.readline()
        await register(zc, [service(n, bytes.fromhex(t), p, a) for n, t, p, a in plan[step]])
        emit(event=step, count=len(plan[step]))
    await reader.read()
    await zc.async_close()

asyncio.run(main(sys.argv[1], sys.argv[3]))
"""


class Script:
    """A helper script in a subprocess: its JSON lines land in .events; commands go to stdin."""

    def __init__(self, label: str, proc: asyncio.subprocess.Process) -> None:
        self.label = label
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._pumps = [asyncio.ensure_future(self._out()), asyncio.ensure_future(self._err())]

    @classmethod
    async def start(cls, label: str, argv: list[str]) -> Script:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
            limit=LINE_LIMIT,
        )
        return cls(label, proc)

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], within: float, what: str, since: int = 0
    ) -> dict[str, Any]:
        """The first event from index `since` on that matches; fails after `within` seconds."""
        deadline = time.monotonic() + within
        checked = since
        while True:
            for event in self.events[checked:]:
                if match(event):
                    return event
            checked = len(self.events)
            out = self._pumps[0]
            if out.done():
                ended = out.exception() or "end of output"
                pytest.fail(f"{self.label}: {ended!r} before {what}; stderr:\n{self.err_text}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.label}: no {what} within {within} s; stderr:\n{self.err_text}")
            await asyncio.sleep(0.02)

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def ask(self, within: float = 10) -> dict[str, Any]:
        """Ask an observer for its stats and wait for the answer."""
        count = len(self.events)
        await self.send("stats")
        return await self.wait_for(lambda e: e["event"] == "stats", within, "stats", since=count)

    async def close(self, within: float = 10) -> None:
        """Close stdin (the scripts stop cleanly on EOF); kill the process if it lingers."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        # Process has no close(): without this a transport left open on a failure path is
        # collected after the loop has closed, and pytest reports that instead of the failure.
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()

    @property
    def err_text(self) -> str:
        return self.stderr.decode(errors="replace")[-3000:]

    async def _out(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))

    async def _err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()


@contextlib.asynccontextmanager
async def scripts() -> AsyncIterator[list[Script]]:
    """Collects started scripts and closes (or kills) every one of them on the way out."""
    started: list[Script] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(s.close() for s in started), return_exceptions=True)


@pytest.fixture
def lan() -> Iterator[Network]:
    with network(4, subnet=7) as net:
        yield net


def _peer_addresses(net: Network, node: str, port: int) -> list[list[Any]]:
    expected = [[net.address(node), port]]
    if os.path.exists("/proc/net/if_inet6"):
        expected.append([net.address(node, 6), port])
    return sorted(expected)


async def _start_peer(
    net: Network, node: str, device_id: str, port: int, run: list[Script]
) -> Script:
    argv = net.exec_argv(node, [sys.executable, "-c", PEER_SCRIPT, device_id, str(port)])
    peer = await Script.start(node.rsplit("-", 1)[1], argv)
    run.append(peer)
    await peer.wait_for(lambda e: e["event"] == "starting", 10, "start")
    return peer


async def _mesh_latencies(
    net: Network, peers: dict[str, tuple[Script, str, int]]
) -> dict[str, float]:
    """Seconds until each peer lists each other one with exactly its netns addresses."""
    latencies = {}
    for watcher, (script, _, _) in peers.items():
        for other, (other_script, other_id, other_port) in peers.items():
            if other == watcher:
                continue
            want = _peer_addresses(net, other, other_port)
            event = await script.wait_for(
                _lists(other_id, want), SEEN_WITHIN + 3, f"sight of {other} at {want}"
            )
            began = max(_started_at(script), _started_at(other_script))
            latencies[f"{script.label} sees {other_script.label}"] = event["t"] - began
    return latencies


def _lists(device_id: str, addresses: list[list[Any]]) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        return bool(event["event"] == "nearby" and event["devices"].get(device_id) == addresses)

    return match


def _started_at(script: Script) -> float:
    return float(next(e["t"] for e in script.events if e["event"] == "starting"))


@pytest.mark.root
@pytest.mark.timeout(60)
async def test_N1_setup_peers_in_namespaces_find_each_other_and_hear_goodbyes(lan: Network) -> None:
    n1, n2, n3, n4 = lan.nodes
    ids = {n1: fake_id(1), n2: fake_id(2), n3: fake_id(3)}
    ports = {n1: 22001, n2: 22002, n3: 22003}
    async with scripts() as run:
        capture = await Script.start(
            "capture",
            lan.exec_argv(
                n4, [sys.executable, "-c", CAPTURE_SCRIPT, lan.address(n4), SERVICE_TYPE]
            ),
        )
        run.append(capture)
        await capture.wait_for(lambda e: e["event"] == "started", 10, "capture start")
        peers = {}
        for node in (n1, n2):
            peers[node] = (
                await _start_peer(lan, node, ids[node], ports[node], run),
                ids[node],
                ports[node],
            )
        two = await _mesh_latencies(lan, peers)
        peers[n3] = (await _start_peer(lan, n3, ids[n3], ports[n3], run), ids[n3], ports[n3])
        three = await _mesh_latencies(lan, peers)
        print("discovery latency, 2 peers:", {k: round(v, 2) for k, v in two.items()})
        print("discovery latency, 3 peers:", {k: round(v, 2) for k, v in three.items()})
        assert max([*two.values(), *three.values()]) < SEEN_WITHIN

        for node, (script, _, _) in peers.items():
            seen = [e for e in script.events if e["event"] == "seen"]
            assert {e["id"] for e in seen} == {ids[n] for n in peers if n != node}, (
                "own ID or a stranger"
            )

        await _check_address_change(lan, n1, peers[n1][0], peers[n2][0], (ids[n1], ports[n1]))

        leaving, _, _ = peers.pop(n3)
        marks = {script.label: len(script.events) for script, _, _ in peers.values()}
        gone_at = time.time()
        await leaving.close()
        assert leaving.events[-1]["event"] == "stopped", leaving.err_text
        for script, _, _ in peers.values():
            event = await script.wait_for(
                lambda e: e["event"] == "nearby" and ids[n3] not in e["devices"],
                5,
                "goodbye",
                since=marks[script.label],
            )
            print(f"{script.label} dropped the stopped peer after {event['t'] - gone_at:.2f} s")

        await capture.close()
    _check_capture(capture, lan, ids, ports, moved=n1)


async def _check_address_change(
    net: Network, node: str, moving: Script, watcher: Script, peer: tuple[str, int]
) -> None:
    """A peer that gains an address and calls refresh_addresses() is seen there (N2 IP change)."""
    device_id, port = peer
    new_address = f"10.231.{net.subnet}.101"
    net.run_in(node, ["ip", "addr", "add", f"{new_address}/24", "dev", "eth0"])
    began = time.time()
    await moving.send("refresh")
    await moving.wait_for(lambda e: e["event"] == "refreshed", 5, "refresh")
    event = await watcher.wait_for(
        lambda e: e["event"] == "nearby" and [new_address, port] in e["devices"].get(device_id, []),
        5,
        "the new address",
    )
    print(f"{watcher.label} saw {moving.label}'s new address after {event['t'] - began:.2f} s")


def _check_capture(
    capture: Script, net: Network, ids: dict[str, str], ports: dict[str, int], moved: str
) -> None:
    """N5 leak: what a third party heard names devices by ID only; TXT is exactly id and v."""
    records = [e for e in capture.events if e["event"] == "record"]
    ours = {instance_name(i).lower(): node for node, i in ids.items()}
    texts = {}
    for record in records:
        label = record["name"].split(".")[0].lower()
        assert label in ours or record["name"].lower() == SERVICE_TYPE.lower(), record
        if record["kind"] == "DNSText":
            texts[ours[label]] = bytes.fromhex(record["text"])
        elif record["kind"] == "DNSService":
            node = ours[label]
            assert record["server"].lower() == f"{instance_name(ids[node])}.local.".lower()
            assert record["port"] == ports[node]
        elif record["kind"] == "DNSAddress" and record["ttl"] > 0:
            node = ours[label]
            allowed = [a for a, _ in _peer_addresses(net, node, 0)]
            allowed += [f"10.231.{net.subnet}.101"] if node == moved else []
            assert record["address"] in allowed, record
    for node, device_id in ids.items():
        expected = txt(b"id=" + device_id.encode(), b"v=" + PROTOCOL_VERSION.encode())
        assert texts[node] == expected, f"TXT of {node}: {texts.get(node)!r}"

    raw = [
        bytes.fromhex(p) for p in next(e for e in capture.events if e["event"] == "raw")["packets"]
    ]
    for device_id in ids.values():
        assert any(device_id.encode() in packet for packet in raw), "the raw capture missed us"
    secrets = {socket.gethostname().split(".")[0], getpass.getuser(), Path.home().name}
    for packet in raw:
        for secret in secrets:  # shorter ones could occur inside a base32 device ID by chance
            if len(secret) >= 3:
                assert secret.lower().encode() not in packet.lower(), f"{secret!r} on the wire"
        for name in _names_in(packet):
            labels = name.lower().split(".")
            assert not {s.lower() for s in secrets} & set(labels), f"{name!r} names this host"


def _names_in(packet: bytes) -> list[str]:
    """Every DNS name in an mDNS packet: questions, owners, SRV targets, PTR aliases."""
    message = DNSIncoming(packet)
    assert message.valid, "an unparseable packet in the capture"
    names = [q.name for q in message.questions]
    for record in message.answers():
        assert isinstance(record, DNSPointer | DNSService | DNSText | DNSAddress | DNSNsec), record
        names.append(record.name)
        if isinstance(record, DNSService):
            names.append(record.server)
        elif isinstance(record, DNSPointer):
            names.append(record.alias)
    return names


def _flood_plan(victim: str, count: int) -> dict[str, list[list[Any]]]:
    """Spoof: the victim's ID at another address. Flood: malformed first, then well-formed IDs."""
    spoof = [["ZZZZZZZ-SPOOFED", txt(b"id=" + victim.encode(), b"v=1").hex(), 40000, SPOOF_HOST]]
    flood = []
    for i in range(count):
        device_id = fake_id(10_000 + i)
        kind = i % 5 if i < count // 10 else -1
        text = {
            0: txt(b"v=1"),
            1: txt(b"id=" + device_id.lower().encode(), b"v=1"),
            2: txt(b"id=" + _wrong_check(device_id).encode(), b"v=1"),
            3: txt(b"id=" + device_id.encode()),
            4: txt(b"id=" + device_id.encode(), b"v=1", b"id=" + victim.encode()),
        }.get(kind, txt(b"id=" + device_id.encode(), b"v=1"))
        flood.append([f"bogus{i}", text.hex(), 1024 + i, f"198.51.100.{i % 250 + 1}"])
    return {"spoof": spoof, "flood": flood}


@pytest.fixture
def flood_site() -> Iterator[tuple[Callable[[list[str]], list[str]], str]]:
    """(argv wrapper, address): one namespace of our own as root, else the host's loopback."""
    try:
        require_root()
    except pytest.skip.Exception:
        yield (lambda argv: argv), "127.0.0.1"
        return
    with Network(1, subnet=8) as net:
        node = net.nodes[0]
        yield (lambda argv: net.exec_argv(node, argv)), net.address(node)


@pytest.mark.timeout(60)
async def test_N5_flood_stays_bounded_and_a_spoof_only_adds_a_candidate(
    flood_site: tuple[Callable[[list[str]], list[str]], str], tmp_path: Path
) -> None:
    wrap, address = flood_site
    victim, observer_id = fake_id(100), fake_id(101)
    plan = _flood_plan(victim, 1_000)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    well_formed = {victim} | {fake_id(10_000 + i) for i in range(100, 1_000)}
    py = sys.executable
    async with scripts() as run:
        observer = await Script.start(
            "observer", wrap([py, "-c", OBSERVER_SCRIPT, address, observer_id])
        )
        victim_peer = await Script.start(
            "victim", wrap([py, "-c", PEER_SCRIPT, victim, "22100", address])
        )
        flooder = await Script.start(
            "flooder", wrap([py, "-c", FLOOD_SCRIPT, address, SERVICE_TYPE, str(plan_file)])
        )
        run += [observer, victim_peer, flooder]
        await observer.wait_for(lambda e: e["event"] == "started", 10, "start")
        victim_at = [address, 22100]
        await _until(observer, lambda s: victim_at in s["nearby"].get(victim, []), "the victim")

        await flooder.send("spoof")
        both = sorted([victim_at, [SPOOF_HOST, 40000]])
        stats = await _until(observer, lambda s: s["nearby"].get(victim) == both, "the spoof")
        assert [victim, [[SPOOF_HOST, 40000]]] in stats["seen"], "reported as a candidate"
        baseline = stats["rss"]

        await flooder.send("flood")
        await flooder.wait_for(lambda e: e["event"] == "flood", 30, "flood sent")
        stats = await _until(observer, lambda s: s["tracked"] + s["ignored"] >= 800, "the flood")
        await asyncio.sleep(1.0)
        stats = await observer.ask()

    growth = (stats["rss"] - baseline) / 2**20
    print(
        f"flood: tracked {stats['tracked']}, ignored {stats['ignored']}, RSS growth {growth:.1f} MiB, "
        f"{stats['warnings']} warning line(s)"
    )
    assert stats["tracked"] <= MAX_SERVICES
    assert len(stats["nearby"]) <= MAX_SERVICES
    assert growth < 20
    assert stats["warnings"] == 1, "one log line per minute, not one per ignored service"
    assert set(stats["nearby"]) <= well_formed, "a malformed announcement was taken"
    assert stats["nearby"][victim] == both, "the victim's address was replaced or lost"


async def _until(
    observer: Script, ok: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        stats = await observer.ask()
        if ok(stats):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(
                f"observer never saw {what}: {json.dumps(stats)[:2000]}\n{observer.err_text}"
            )
        await asyncio.sleep(0.2)


def test_zeroconf_socket_errors_are_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    discovery._quiet_network_tracebacks()
    zc_log = logging.getLogger("zeroconf")
    with caplog.at_level(logging.WARNING, logger="zeroconf"):
        try:
            raise OSError(101, "Network is unreachable")
        except OSError as exc:
            zc_log.warning("Error with socket ('::1', 5353)): %s", exc, exc_info=exc)
        try:
            raise ValueError("a bug in zeroconf")
        except ValueError as exc:
            zc_log.warning("unexpected: %s", exc, exc_info=exc)
    network, bug = caplog.records
    assert "Network is unreachable" in network.getMessage()
    assert network.exc_info is None
    assert bug.exc_info is not None  # anything else keeps its traceback
