"""Real daemons in network namespaces on one bridge: LAN discovery alone (issue 3) and N1 [root].

Each `albumsync run` gets a namespace of its own (tests/netns.py), listens on 0.0.0.0 and uses
mDNS; nobody is given another's address. The UI listens on 127.0.0.1 inside each namespace, so
the CLI is run there too (`Daemon.cli`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.invite import encode_invite, parse_invite
from tests.e2e.harness import Daemon
from tests.e2e.test_sync import tree, wait
from tests.netns import Network, require_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LAN_PREFIXES = ("tcp://10.231.", "tcp://[fd31:231:")
PARTITION_SECONDS = 60.0  # TESTPLAN N1: long past the dead-peer bound (daemon/peers.py DEAD_AFTER)
HEAL_LIMIT = 30.0  # N1: converged within 30 s after the heal


def cli_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(daemon.cli(*args, "--json").stdout)


def status(daemon: Daemon) -> Any:
    return cli_json(daemon, "status")


def peers_by_id(daemon: Daemon) -> dict[str, Any]:
    return {p["device_id"]: p for p in status(daemon)["peers"]}


def write_photos(folder: Path, prefix: str, count: int, size: int = 60_000) -> dict[str, bytes]:
    """New photos written under a temporary name and renamed, as a camera import would."""
    made = {}
    for i in range(count):
        name = f"{prefix}_{i:03}.jpg"
        data = os.urandom(size + i)
        tmp = folder / f".{name}.part"
        tmp.write_bytes(data)
        tmp.rename(folder / name)
        made[name] = data
    return made


@pytest.fixture
def lan(
    make_daemon: Callable[..., Daemon],
) -> Iterator[Callable[[int], tuple[Network, list[Daemon]]]]:
    """make(n): n daemons, each in its own namespace on one bridge, with mDNS on."""
    nets: list[Network] = []

    def make(
        n: int, names: tuple[str, ...] = ("Owner", "Member B", "Member C")
    ) -> tuple[Network, list[Daemon]]:
        require_root()
        net = Network(n)
        nets.append(net)
        daemons = [
            make_daemon(name, netns=node, listen="0.0.0.0:0", mdns=True)
            for name, node in zip(names, net.nodes, strict=False)
        ]
        return net, daemons

    yield make
    for net in nets:
        net.delete_all()  # also kills any process still running in the namespaces


def start_all(daemons: list[Daemon]) -> dict[str, str]:
    ids = {d.name: d.init() for d in daemons}
    for d in daemons:
        d.start()
    return ids


def assert_no_traceback(daemon: Daemon) -> None:
    """No traceback in the daemon's log, except zeroconf's own warning when a namespace has no
    IPv6 multicast route on `lo` (zeroconf logs the first send error on a socket with its stack)."""
    blocks = daemon.log().split("Traceback (most recent call last):")
    for before, after in itertools.pairwise(blocks):
        last_line = before.rstrip("\n").rsplit("\n", 1)[-1]
        if (
            last_line.startswith("WARNING zeroconf: Error with socket")
            and "Network is unreachable" in after.split("\n\n")[0]
        ):
            continue
        raise AssertionError(f"traceback in {daemon.name}'s log:\n{before[-2000:]}{after[:3000]}")


def only_lan_addresses(daemon: Daemon) -> None:
    """Every address this daemon knows or uses for a peer came from the LAN (mDNS or accepted)."""
    for peer in status(daemon)["peers"]:
        known = [*peer["addresses"], *([peer["address"]] if peer["address"] else [])]
        assert all(a.startswith(LAN_PREFIXES) for a in known), (daemon.name, peer)


def test_mdns_only_sync(lan, tmp_path: Path) -> None:
    """Issue 3: three devices on a LAN find each other by mDNS alone and sync an album."""
    _, (owner, b, c) = lan(3)
    ids = start_all([owner, b, c])
    photos = tmp_path / "Summer"
    photos.mkdir()
    originals = write_photos(photos, "IMG", 5, size=400_000)
    album = owner.cli("album", "create", str(photos), "--name", "Summer 2026").stdout.strip()

    # B: a direct invite by device ID. Nobody gives the owner an address of B: only mDNS can.
    owner.cli("invite", "create", album, "--role", "editor", "--to", ids["Member B"])
    wait(
        lambda: any(i["state"] == "pending" for i in cli_json(b, "invite", "list")["incoming"]),
        limit=30,
        what="the direct invite to reach B over a LAN-discovered connection",
    )
    b_dir = tmp_path / "b" / "Summer"
    b.cli("invite", "accept", album, "--path", str(b_dir))

    # C: a code with its addresses removed, so the owner's ID is all C has to go on.
    code = parse_invite(
        owner.cli("invite", "create", album, "--role", "viewer").stdout.strip(), int(time.time())
    )
    assert code.addresses, "the owner's code normally carries its LAN addresses"
    bare = encode_invite(dataclasses.replace(code, addresses=()))
    assert parse_invite(bare, int(time.time())).addresses == ()
    assert parse_invite(bare, int(time.time())).relays == ()
    c_dir = tmp_path / "c" / "Summer"
    c.cli("invite", "accept", bare, "--path", str(c_dir))

    for member in (b, c):
        member.cli("status", "--wait-synced", "60", timeout=90)
    assert tree(b_dir) == tree(c_dir) == tree(photos)
    assert set(tree(photos)) == set(originals)

    # A photo from B reaches the owner and C (C connects to B through its LAN sighting too).
    added = write_photos(b_dir, "from_b", 2)
    wait(
        lambda: set(added) <= set(tree(photos)) and set(added) <= set(tree(c_dir)),
        limit=30,
        what="B's photos at the owner and C",
    )
    assert tree(b_dir) == tree(c_dir) == tree(photos)

    for daemon in (owner, b, c):
        only_lan_addresses(daemon)
        connected = {d for d, p in peers_by_id(daemon).items() if p["connected"]}
        assert connected == set(ids.values()) - {ids[daemon.name]}, (daemon.name, connected)
    assert peers_by_id(owner)[ids["Member B"]]["via"] in ("lan", "incoming")
    for d in (owner, b, c):
        assert d.stop() == 0
        assert_no_traceback(d)


def members(daemon: Daemon, album: str) -> list[tuple[str, str, str]]:
    return sorted(
        (m["device_id"], m["role"], m["status"]) for m in cli_json(daemon, "member", "list", album)
    )


def album_state(daemon: Daemon) -> str:
    return str(cli_json(daemon, "album", "list")[0]["state"])


def test_N1_partition_and_heal(lan, tmp_path: Path) -> None:
    """N1: {owner} | {B, C} for PARTITION_SECONDS; both sides add photos, the owner removes C."""
    net, (owner, b, c) = lan(3)
    ids = start_all([owner, b, c])
    photos = tmp_path / "Album"
    photos.mkdir()
    before = write_photos(photos, "before", 5)
    album = owner.cli("album", "create", str(photos), "--name", "Partition").stdout.strip()
    dirs = {b.name: tmp_path / "b" / "Album", c.name: tmp_path / "c" / "Album"}
    for member in (b, c):
        owner.cli("invite", "create", album, "--role", "editor", "--to", ids[member.name])
        wait(
            lambda m=member: bool(cli_json(m, "invite", "list")["incoming"]),
            limit=30,
            what=f"the invite at {member.name}",
        )
        member.cli("invite", "accept", album, "--path", str(dirs[member.name]))
    for member in (b, c):
        member.cli("status", "--wait-synced", "60", timeout=90)
    wait(
        lambda: all(p["connected"] for p in peers_by_id(b).values()) and len(peers_by_id(b)) == 2,
        limit=30,
        what="B connected to both the owner and C before the partition",
    )
    wait(
        lambda: {s for _, _, s in members(owner, album)} == {"owner", "active"},
        limit=30,
        what="both accepts recorded at the owner",
    )

    net.partition([net.nodes[0]], net.nodes[1:])
    started = time.monotonic()
    owner.cli("member", "remove", album, ids[c.name])
    after_removal = write_photos(photos, "owner_after_removal", 20)
    from_b = write_photos(dirs[b.name], "from_b", 20)
    from_c = write_photos(dirs[c.name], "from_c", 20)  # C does not know yet it was removed
    # Hold the split for PARTITION_SECONDS exactly (B and C keep syncing with each other).
    time.sleep(max(0.0, PARTITION_SECONDS - (time.monotonic() - started)))
    assert not set(after_removal) & set(tree(dirs[b.name])), "the partition leaked"
    net.heal()
    healed = time.monotonic()
    held = healed - started

    # The owner's removal wins: C's photos from after its removal are not part of the album.
    expected = set(before) | set(after_removal) | set(from_b)

    def converged() -> bool:
        return (
            set(tree(photos)) == expected
            and tree(photos) == tree(dirs[b.name])
            and members(owner, album) == members(b, album)
            and album_state(c) == "removed"
        )

    took = wait(converged, limit=HEAL_LIMIT, what="convergence after the heal")
    print(f"\nN1: converged {took:.1f} s after a {held:.0f} s partition healed")
    assert time.monotonic() - healed <= HEAL_LIMIT + 5
    # The links across the split were found dead by silence (no FIN or RST crosses a partition),
    # not left hanging until TCP gave up.
    assert "the connection is dead" in owner.log()
    assert "the connection is dead" in b.log()
    statuses = {m[0]: m[2] for m in members(owner, album)}
    assert statuses[ids[c.name]] == "removed"
    assert statuses[ids[b.name]] == "active"
    # No photo lost or doubled (a conflict copy would be an extra name), everything intact.
    data = {**before, **after_removal, **from_b}
    for name, content in data.items():
        assert (photos / name).read_bytes() == content
        assert (dirs[b.name] / name).read_bytes() == content
    # What C added after its removal (unaware) is not in the album: the owner's removal wins.
    assert not set(from_c) & set(tree(photos))
    # The removed member got nothing the owner added after removing it.
    assert not set(after_removal) & set(tree(dirs[c.name]))
    for d in (owner, b):  # let work in flight finish before stopping
        d.cli("status", "--wait-synced", "30", timeout=60)
    for d in (owner, b, c):
        assert d.stop() == 0
        assert_no_traceback(d)
