"""TESTPLAN N3 (issue 5): relay only, then direct, with real daemons and strelaysrv [root].

Three namespaces on one bridge: the owner, the member, and the household relay (Debian's
strelaysrv). nftables in the owner's and the member's namespaces drops all traffic between them,
so the relay is the only path. The member redeems a code whose only working route is the relay
URI (pinned relay ID) it carries. While the album syncs, a raw AF_PACKET socket in the relay's
namespace records every frame; the TCP streams rebuilt from it must hold no file name, album name,
device name or photo bytes. Then the drop rules go and the member must be connected directly
within 60 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.invite import parse_invite
from protocol.relay import RelayUri
from tests.daemon.test_relay_client import strelaysrv  # noqa: F401 - fixture
from tests.e2e.harness import Daemon
from tests.e2e.test_sync import tree, wait
from tests.netns import Network, require_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RELAY_PORT = 22067
ALBUM_NAME = "Grandma's Visit 2026"
DEVICE_NAMES = ("Grandma laptop", "Trip tablet")
DIRECT_LIMIT = 60.0  # N3: a direct connection replaces the relay within 60 s of unblocking
TABLE = "albumsync_n3"

CAPTURE = r"""
import signal, socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 28)  # SO_RCVBUFFORCE: a slow reader loses nothing
sock.bind((sys.argv[2], 0))
out = open(sys.argv[1], "wb", buffering=0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("capturing", flush=True)
while True:
    frame = sock.recv(1 << 18)
    out.write(len(frame).to_bytes(4, "big") + frame)
"""


def cli_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(daemon.cli(*args, "--json").stdout)


def block(net: Network, node: str, other: str) -> None:
    """Drop every packet between `node` and `other`, both ways, inside `node`'s namespace."""
    v4, v6 = net.address(other), net.address(other, 6)
    rules = f"""
table inet {TABLE} {{
    chain input {{ type filter hook input priority 0; policy accept;
        ip saddr {v4} drop
        ip6 saddr {v6} drop
    }}
    chain output {{ type filter hook output priority 0; policy accept;
        ip daddr {v4} drop
        ip6 daddr {v6} drop
    }}
}}
"""
    net.run_in(node, ["nft", "-f", "-"], input=rules)


def unblock(net: Network, node: str) -> None:
    net.run_in(node, ["nft", "delete", "table", "inet", TABLE])


def start_relay(
    net: Network, node: str, binary: str, keys: Path
) -> tuple[subprocess.Popen[str], str]:
    keys.mkdir(mode=0o700)
    proc = net.popen_in(
        node,
        [
            binary,
            f"-listen={net.address(node)}:{RELAY_PORT}",
            "-status-srv=",
            "-pools=",
            "-nat=false",
            f"-keys={keys}",
            "-message-timeout=5s",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if "URI: relay://" in line:
            return proc, line.split("URI: ", 1)[1].strip()
    proc.kill()
    raise AssertionError(f"strelaysrv did not print its URI: {''.join(seen)}")


def tcp_streams(capture: Path) -> dict[tuple[str, int, str, int], bytes]:
    """The TCP payload of every direction of every connection in a capture, in sequence order."""
    segments: dict[tuple[str, int, str, int], dict[int, bytes]] = {}
    data = capture.read_bytes()
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        frame = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":  # IPv4 only: the relay's address
            continue
        ip = frame[14:]
        ihl, proto = (ip[0] & 0x0F) * 4, ip[9]
        total = struct.unpack_from(">H", ip, 2)[0]
        if proto != 6:
            continue
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            key = (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport)
            segments.setdefault(key, {})[seq] = payload
    streams = {}
    for key, by_seq in segments.items():
        out, end = bytearray(), None
        for seq in sorted(by_seq):  # (wrap-around of seq is not a concern for a few MiB)
            payload = by_seq[seq]
            if end is not None and seq < end:
                payload = payload[end - seq :]  # a retransmission overlapping what we have
            out += payload
            end = max(end or 0, seq + len(by_seq[seq]))
        streams[key] = bytes(out)
    return streams


@pytest.fixture
def net() -> Iterator[Network]:
    require_root()
    if shutil.which("nft") is None:
        pytest.skip("needs nftables (`nft`; ./dev test installs it)")
    with Network(3) as network:
        yield network


def test_N3_relay_only_then_direct(
    net: Network,
    strelaysrv: str,  # noqa: F811 - the fixture (the installed binary, or one from the .deb)
    make_daemon,
    tmp_path: Path,
) -> None:
    owner_ns, member_ns, relay_ns = net.nodes
    relay_proc, uri = start_relay(net, relay_ns, strelaysrv, tmp_path / "relay-keys")
    capture_file = tmp_path / "relay.capture"
    capture = net.popen_in(
        relay_ns,
        [sys.executable, "-c", CAPTURE, str(capture_file), "eth0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stdout is not None
        assert capture.stdout.readline().strip() == "capturing"
        block(net, owner_ns, member_ns)
        block(net, member_ns, owner_ns)
        owner = make_daemon(
            DEVICE_NAMES[0], netns=owner_ns, listen="0.0.0.0:0", extra_args=["--relay", uri]
        )
        member = make_daemon(DEVICE_NAMES[1], netns=member_ns, listen="0.0.0.0:0")
        ids = {d.name: d.init() for d in (owner, member)}
        owner.start()
        member.start()
        wait(
            lambda: cli_json(owner, "relay", "list")[0]["state"] == "joined",
            limit=30,
            what="the owner to join the relay",
        )

        photos = tmp_path / "photos"
        photos.mkdir()
        originals = {f"IMG_{i:04}_beach.jpg": os.urandom(1_500_000 + i) for i in range(4)}
        for name, data in originals.items():
            (photos / name).write_bytes(data)
        album = owner.cli("album", "create", str(photos), "--name", ALBUM_NAME).stdout.strip()
        code = owner.cli("invite", "create", album, "--role", "editor").stdout.strip()
        parsed = parse_invite(code, int(time.time()))
        assert [RelayUri.parse(r).public for r in parsed.relays] == [RelayUri.parse(uri).public]
        assert any(net.address(owner_ns) in a for a in parsed.addresses)  # blocked, but tried

        started = time.monotonic()
        target = tmp_path / "member-photos"
        member.cli("invite", "accept", code, "--path", str(target))
        member.cli("status", "--wait-synced", "90", timeout=120)
        assert tree(target) == tree(photos)
        print(f"\nN3: 6 MB album synced through strelaysrv in {time.monotonic() - started:.1f} s")
        peer = _peer(member, ids[DEVICE_NAMES[0]])
        assert (peer["connected"], peer["via"]) == (True, "relay"), peer

        # The relay carried the album, and none of it in the clear.
        capture.send_signal(signal.SIGTERM)
        capture.wait(10)
        streams = tcp_streams(capture_file)
        relayed = sum(len(s) for k, s in streams.items() if RELAY_PORT in (k[1], k[3]))
        assert relayed >= sum(map(len, originals.values())), f"only {relayed} bytes captured"
        print(f"N3: {relayed} bytes through the relay captured, none of them plaintext")
        everything = list(streams.values())
        secrets = [n.encode() for n in originals] + [ALBUM_NAME.encode(), b"beach"]
        secrets += [n.encode() for n in DEVICE_NAMES]
        rng = random.Random(5)
        for data in originals.values():
            for _ in range(16):
                at = rng.randrange(len(data) - 32)
                secrets.append(data[at : at + 32])
        for secret in secrets:
            assert not any(secret in s for s in everything), f"{secret[:40]!r} crossed the relay"
        hashes = {hashlib.sha256(d).digest() for d in originals.values()}
        assert not any(h in s for h in hashes for s in everything)

        # Open the direct path: the member must switch to it within a minute.
        unblock(net, owner_ns)
        unblock(net, member_ns)
        took = wait(
            lambda: _peer(member, ids[DEVICE_NAMES[0]])["via"] not in ("relay", ""),
            limit=DIRECT_LIMIT,
            what="a direct connection to replace the relay",
        )
        peer = _peer(member, ids[DEVICE_NAMES[0]])
        print(f"N3: direct connection in use {took:.1f} s after unblocking: {peer['address']}")
        assert peer["address"].startswith(f"tcp://{net.address(owner_ns)}:")
        back = _peer(owner, ids[DEVICE_NAMES[1]])
        assert (back["connected"], back["via"]) == (True, "incoming"), back
        # The album still syncs, now directly.
        (target / "after_switch.jpg").write_bytes(os.urandom(300_000))
        wait((photos / "after_switch.jpg").exists, limit=30, what="a photo over the direct path")
        assert tree(target) == tree(photos)
        for d in (owner, member):
            d.cli("status", "--wait-synced", "30", timeout=60)
        for d in (owner, member):
            assert d.stop() == 0
            assert "Traceback" not in d.log(), d.log()
    finally:
        for proc in (capture, relay_proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _peer(daemon: Daemon, device_id: str) -> dict[str, Any]:
    peers = {p["device_id"]: p for p in cli_json(daemon, "status")["peers"]}
    return peers.get(device_id, {"connected": False, "via": "", "address": ""})
