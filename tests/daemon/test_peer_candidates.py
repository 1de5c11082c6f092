"""TESTPLAN N5 at the connection layer: LAN announcements are candidates, the handshake decides.

Real PeerManagers on loopback. The discovery half of N5 (malformed records, the 1,000-service
flood, what we announce) is in test_discovery.py; here: a spoofed announcement of a member's ID
at an attacker's address costs one failed handshake and does not replace the member's proven
address, and announcements flooding one ID or many IDs keep the manager's memory bounded.
"""

from __future__ import annotations

from daemon import peers as peers_module
from protocol.ids import DeviceId
from tests.daemon.test_direct_replaces_relay import node, until, via


async def test_N5_spoofed_address_fails_the_handshake_and_keeps_the_real_one() -> None:
    a, victim, attacker = node("A"), node("Victim"), node("Attacker")
    victim_id = victim.identity.device_id
    a.peers.wants_nearby = lambda device: device == victim_id
    for n in (a, victim, attacker):
        await n.peers.start()
    real = f"tcp://127.0.0.1:{victim.peers.bound_port}"
    fake = f"tcp://127.0.0.1:{attacker.peers.bound_port}"
    try:
        a.peers.seen_on_lan(victim_id, [real])
        await until(lambda: via(a, victim) == "lan", what="A connects to the victim")
        assert a.peers.wanted[victim_id].verified == real

        # The victim drops off; the attacker announces the victim's ID at its own address.
        await victim.peers.stop()
        a.peers.seen_on_lan(victim_id, [fake])
        await until(
            lambda: a.peers.errors.get("wrong_device", 0) >= 1, what="the spoof's handshake"
        )
        assert victim_id not in a.peers.connections
        assert attacker.identity.device_id not in a.peers.connections
        state = a.peers.wanted[victim_id]
        assert (real, "lan") in state.addresses, "the proven address was replaced"
        assert state.verified == real
        assert f"answered as {attacker.identity.device_id.short}" in state.last_error

        # The victim comes back on its port: A finds it at the proven address, not the spoof.
        victim.peers.listen_port = int(real.rsplit(":", 1)[1])
        await victim.peers.start()
        a.peers.dial_now()
        await until(lambda: via(a, victim) == "lan", what="A reconnects to the victim")
        assert a.peers.connections[victim_id].peer.address == real
    finally:
        for n in (a, victim, attacker):
            await n.peers.stop()


def test_N5_announcement_floods_stay_bounded() -> None:
    a, victim = node("A"), node("Victim")
    victim_id = victim.identity.device_id
    a.peers.wants_nearby = lambda device: device == victim_id
    a.peers.want(victim_id, "tcp://192.0.2.1:22000", "static")
    state = a.peers.wanted[victim_id]
    state.verified = "tcp://192.0.2.7:22000"
    a.peers.want(victim_id, state.verified, "lan")
    # One ID at 1,000 addresses: only the newest few LAN addresses (and the proven one) stay.
    for i in range(1_000):
        a.peers.seen_on_lan(victim_id, [f"tcp://198.51.100.{i % 250 + 1}:{1024 + i}"])
        a.peers._adopt_nearby()
    lan = [address for address, source in state.addresses if source == "lan"]
    assert len(lan) <= peers_module.MAX_LAN_ADDRESSES + 1
    assert state.verified in lan
    assert ("tcp://192.0.2.1:22000", "static") in state.addresses
    assert lan[-1] == "tcp://198.51.100.250:2023"  # the newest announcement is among them
    # 1,000 IDs: the sightings kept are capped, and none is dialled (none is wanted).
    for i in range(1_000):
        a.peers.seen_on_lan(DeviceId(i.to_bytes(32, "big")), ["tcp://198.51.100.1:1"])
    a.peers._adopt_nearby()
    assert len(a.peers._lan_seen) <= peers_module.MAX_LAN_SEEN
    assert set(a.peers.wanted) == {victim_id}


def test_addresses_are_written_and_read_back_alike_for_ipv4_and_ipv6() -> None:
    for host, port in [("10.0.0.2", 22000), ("fd31:231:1::1", 46445), ("::1", 1)]:
        written = peers_module.tcp_address(host, port)
        assert written.startswith("tcp://[") == (":" in host)
        assert peers_module._split(written) == (host, port)
