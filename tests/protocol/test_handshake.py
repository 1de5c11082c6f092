"""Noise XX/IK handshake: interop with noiseprotocol, tampering, replay, splitting, fuzzing (A3)."""

import contextlib
import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from protocol.certificate import make_certificate
from protocol.channel import FINAL, MAX_FRAGMENT, MORE
from protocol.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from protocol.handshake import (
    MAX_PAYLOAD,
    Event,
    Handshake,
    HandshakeComplete,
    Pattern,
    PeerAuthenticated,
    verify_peer_identity,
)
from protocol.keys import DeviceKey

ALICE = DeviceKey(bytes(range(32)))
BOB = DeviceKey(bytes(range(1, 33)))
MALLORY = DeviceKey(bytes(range(2, 34)))
ALICE_CERT = make_certificate(ALICE)
BOB_CERT = make_certificate(BOB)
ALICE_X25519 = ALICE.x25519_public
BOB_X25519 = BOB.x25519_public
MIB = 1024 * 1024
NOISE_MAX_PLAINTEXT = 65535 - 16
# The documented placement: which message carries (initiator's, responder's) payload.
PAYLOAD_MESSAGE = {Pattern.XX: (2, 1), Pattern.IK: (0, 1)}
MESSAGE_COUNT = {Pattern.XX: 3, Pattern.IK: 2}

Tamper = Callable[[int, bytes], bytes]


def _start(pattern: Pattern, responder_key: DeviceKey = BOB) -> tuple[Handshake, Handshake]:
    remote = BOB_X25519 if pattern is Pattern.IK else None
    initiator = Handshake.initiator(ALICE, ALICE_CERT, os.urandom, remote_static=remote)
    return initiator, Handshake.responder(responder_key, BOB_CERT, os.urandom)


def _pump(
    initiator: Handshake,
    responder: Handshake,
    events: tuple[list[Event], list[Event]],
    tamper: Tamper | None = None,
) -> None:
    """Carry messages between the sides until both are quiet; message k passes `tamper`."""
    sides = (initiator, responder)
    sender, index = 0, 0
    while data := sides[sender].data_to_send():
        receiver = 1 - sender
        sides[receiver].receive_data(tamper(index, data) if tamper else data)
        while (event := sides[receiver].next_event()) is not None:
            events[receiver].append(event)
        sender, index = receiver, index + 1


def _handshake(pattern: Pattern) -> tuple[Handshake, Handshake, list[Event], list[Event]]:
    initiator, responder = _start(pattern)
    events: tuple[list[Event], list[Event]] = ([], [])
    _pump(initiator, responder, events)
    return initiator, responder, *events


def _completed(events: list[Event]) -> bool:
    return any(isinstance(event, HandshakeComplete) for event in events)


def _flip(message_index: int, byte: int, bit: int) -> Tamper:
    def tamper(index: int, data: bytes) -> bytes:
        if index != message_index:
            return data
        changed = bytearray(data)
        changed[byte] ^= 1 << bit
        return bytes(changed)

    return tamper


def _noise_span(index: int, data: bytes) -> list[int]:
    """Byte positions of the marker and the Noise message (not the length prefix) in a frame."""
    return [0, *range(3, len(data))] if index == 0 else list(range(2, len(data)))


def _record(pattern: Pattern) -> tuple[list[bytes], bytes]:
    """An honest session's handshake frames and the initiator's first transport frame."""
    recorded: list[bytes] = []

    def keep(index: int, data: bytes) -> bytes:
        recorded.append(data)
        return data

    initiator, responder = _start(pattern)
    _pump(initiator, responder, ([], []), keep)
    return recorded, initiator.into_channel().send(b"first request")


@pytest.mark.parametrize("pattern", list(Pattern))
def test_both_sides_agree_and_see_each_others_identity(pattern: Pattern) -> None:
    initiator, responder, i_events, r_events = _handshake(pattern)
    assert initiator.complete
    assert responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    assert i_events[0] == PeerAuthenticated(remote_static=BOB_X25519, payload=BOB_CERT)
    assert r_events[0] == PeerAuthenticated(remote_static=ALICE_X25519, payload=ALICE_CERT)
    assert verify_peer_identity(BOB_X25519, BOB_CERT).public_key == BOB.public
    first, second = initiator.into_channel(), responder.into_channel()
    second.receive_data(first.send(b"hello"))
    assert second.next_message() == b"hello"
    first.receive_data(second.send(b"hi"))
    assert first.next_message() == b"hi"


def test_only_an_ik_responder_starts_unconfirmed() -> None:
    for pattern in Pattern:
        _, _responder, i_events, r_events = _handshake(pattern)
        i_done = [e for e in i_events if isinstance(e, HandshakeComplete)]
        r_done = [e for e in r_events if isinstance(e, HandshakeComplete)]
        assert i_done[0].peer_confirmed
        assert r_done[0].peer_confirmed is (pattern is Pattern.XX)
        assert r_done[0].pattern is pattern


# --- interop with noiseprotocol -------------------------------------------------------------


def _theirs(pattern: Pattern, key: DeviceKey, *, initiator: bool) -> NoiseConnection:
    # Literal names, so that a wrong constant in our module cannot agree with itself here.
    connection = NoiseConnection.from_name(f"Noise_{pattern.name}_25519_AESGCM_SHA256".encode())
    connection.set_prologue(b"albumsync/1")
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, key.x25519_private)
    if initiator and pattern is Pattern.IK:
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, ALICE_X25519)
    connection.start_handshake()
    return connection


def _interop_handshake(pattern: Pattern, ours_initiator: bool) -> tuple[Handshake, NoiseConnection]:
    """Run ours (ALICE) against noiseprotocol (BOB); check payloads cross in the right places."""
    if ours_initiator:
        remote = BOB_X25519 if pattern is Pattern.IK else None
        ours = Handshake.initiator(ALICE, ALICE_CERT, os.urandom, remote_static=remote)
    else:
        ours = Handshake.responder(ALICE, ALICE_CERT, os.urandom)
    theirs = _theirs(pattern, BOB, initiator=not ours_initiator)
    our_payload_at = PAYLOAD_MESSAGE[pattern][0 if ours_initiator else 1]
    their_payload_at = PAYLOAD_MESSAGE[pattern][1 if ours_initiator else 0]
    events: list[Event] = []
    for index in range(MESSAGE_COUNT[pattern]):
        marker = pattern.value if index == 0 else b""
        if (index % 2 == 0) == ours_initiator:
            data = ours.data_to_send()
            assert data[: len(marker)] == marker
            body = data[len(marker) + 2 :]
            assert int.from_bytes(data[len(marker) : len(marker) + 2], "big") == len(body)
            received = bytes(theirs.read_message(body))
            assert received == (ALICE_CERT if index == our_payload_at else b"")
        else:
            payload = BOB_CERT if index == their_payload_at else b""
            message = bytes(theirs.write_message(payload))
            ours.receive_data(marker + len(message).to_bytes(2, "big") + message)
            while (event := ours.next_event()) is not None:
                events.append(event)
    assert theirs.handshake_finished
    assert ours.complete
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert events[0] == PeerAuthenticated(remote_static=BOB_X25519, payload=BOB_CERT)
    return ours, theirs


def _their_send(theirs: NoiseConnection, message: bytes) -> bytes:
    """Our documented channel framing, written with noiseprotocol's encrypt."""
    assert MAX_FRAGMENT == 65518  # 65535 - 16-byte tag - 1 flag byte
    pieces = [message[i : i + 65518] for i in range(0, len(message), 65518)] or [b""]
    wire = bytearray()
    for n, piece in enumerate(pieces):
        flag = FINAL if n == len(pieces) - 1 else MORE
        ciphertext = theirs.encrypt(bytes([flag]) + piece)
        wire += len(ciphertext).to_bytes(2, "big") + ciphertext
    return bytes(wire)


def _their_receive(theirs: NoiseConnection, wire: bytes) -> list[bytes]:
    """Our documented channel framing, read with noiseprotocol's decrypt."""
    messages, current, offset = [], bytearray(), 0
    while offset < len(wire):
        size = int.from_bytes(wire[offset : offset + 2], "big")
        plaintext = theirs.decrypt(wire[offset + 2 : offset + 2 + size])
        offset += 2 + size
        current += plaintext[1:]
        if plaintext[0] == FINAL:
            messages.append(bytes(current))
            current = bytearray()
    return messages


@pytest.mark.parametrize("ours_initiator", [True, False], ids=["ours-initiator", "ours-responder"])
@pytest.mark.parametrize("pattern", list(Pattern))
def test_A3_noise_interop_with_noiseprotocol(pattern: Pattern, ours_initiator: bool) -> None:
    ours, theirs = _interop_handshake(pattern, ours_initiator)
    data = os.urandom(MIB)
    # One Noise message at a time: the CipherStates and nonces are the spec's.
    for start in range(0, MIB, NOISE_MAX_PLAINTEXT):
        piece = data[start : start + NOISE_MAX_PLAINTEXT]
        assert theirs.decrypt(ours.send_cipher.encrypt_with_ad(b"", piece)) == piece
        assert ours.receive_cipher.decrypt_with_ad(b"", theirs.encrypt(piece)) == piece
    # Then whole 1 MiB messages through our SecureChannel framing.
    channel = ours.into_channel()
    assert _their_receive(theirs, channel.send(data)) == [data]
    channel.receive_data(_their_send(theirs, data[::-1]))
    assert channel.next_message() == data[::-1]
    with pytest.raises(LocalProtocolError):
        ours.into_channel()


def test_A3_ik_responder_without_our_key_cannot_be_reached() -> None:
    """IK aimed at a stale key fails cleanly at the responder, which says to retry with XX."""
    initiator, responder = _start(Pattern.IK, responder_key=MALLORY)
    responder.receive_data(initiator.data_to_send())
    with pytest.raises(HandshakeError, match="retry with XX"):
        responder.next_event()
    with pytest.raises(HandshakeError, match="failed earlier"):
        responder.next_event()
    with pytest.raises(HandshakeError):
        responder.receive_data(b"x")


def test_a_responder_may_refuse_ik() -> None:
    initiator = Handshake.initiator(ALICE, ALICE_CERT, os.urandom, remote_static=BOB_X25519)
    responder = Handshake.responder(BOB, BOB_CERT, os.urandom, accept_ik=False)
    responder.receive_data(initiator.data_to_send())
    with pytest.raises(HandshakeError, match="does not accept IK"):
        responder.next_event()


# --- tampering ------------------------------------------------------------------------------


def _run_tampered(pattern: Pattern, tamper: Tamper) -> tuple[list[Event], list[Event]]:
    initiator, responder = _start(pattern)
    events: tuple[list[Event], list[Event]] = ([], [])
    with pytest.raises(HandshakeError):
        _pump(initiator, responder, events, tamper)
    return events


@pytest.mark.parametrize("pattern", list(Pattern))
def test_A3_noise_tamper_every_bit(pattern: Pattern) -> None:
    """Every bit of every handshake message (marker and Noise bytes): the handshake fails."""
    recorded, _ = _record(pattern)
    flips = 0
    for index, data in enumerate(recorded):
        for byte in _noise_span(index, data):
            for bit in range(8):
                i_events, r_events = _run_tampered(pattern, _flip(index, byte, bit))
                flips += 1
                if index < MESSAGE_COUNT[pattern] - 1:
                    assert not _completed(i_events)
                r_done = [e for e in r_events if isinstance(e, HandshakeComplete)]
                # Only an IK responder finishes before message 2, and it stays unconfirmed.
                assert not r_done or (pattern is Pattern.IK and not r_done[0].peer_confirmed)
    cert, tag, key = len(ALICE_CERT), 16, 32
    sizes = {
        Pattern.XX: [1 + key, key + key + tag + cert + tag, key + tag + cert + tag],
        Pattern.IK: [1 + key + key + tag + cert + tag, key + cert + tag],
    }
    assert flips == 8 * sum(sizes[pattern])


@pytest.mark.parametrize("pattern", list(Pattern))
def test_A3_tampered_length_prefix_never_completes(pattern: Pattern) -> None:
    """A changed length fails at once or waits for bytes that never come (the daemon's timeout)."""
    recorded, _ = _record(pattern)
    for index in range(len(recorded)):
        start = 1 if index == 0 else 0
        for byte in (start, start + 1):
            for bit in range(8):
                initiator, responder = _start(pattern)
                with contextlib.suppress(HandshakeError):
                    _pump(initiator, responder, ([], []), _flip(index, byte, bit))
                receiver = (initiator, responder)[(index + 1) % 2]
                assert not receiver.complete
                if index < MESSAGE_COUNT[pattern] - 1:
                    assert not initiator.complete
                    assert not responder.complete


def test_a_payload_in_the_cleartext_first_xx_message_is_refused() -> None:
    theirs = _theirs(Pattern.XX, ALICE, initiator=True)
    message = bytes(theirs.write_message(b"unauthenticated"))
    responder = Handshake.responder(BOB, BOB_CERT, os.urandom)
    responder.receive_data(b"X" + len(message).to_bytes(2, "big") + message)
    with pytest.raises(HandshakeError, match="no payload"):
        responder.next_event()


def test_unknown_marker_and_oversized_message_are_refused() -> None:
    for wire, match in [(b"N\x00\x20", "not an albumsync handshake"), (b"X\xff\xff", "the most")]:
        responder = Handshake.responder(BOB, BOB_CERT, os.urandom)
        responder.receive_data(wire)
        with pytest.raises(HandshakeError, match=match):
            responder.next_event()


def test_a_low_order_ephemeral_key_is_refused() -> None:
    responder = Handshake.responder(BOB, BOB_CERT, os.urandom)
    responder.receive_data(b"X\x00\x20" + bytes(32))  # the all-zero point has order 1
    with pytest.raises(HandshakeError, match="low-order"):
        responder.next_event()
    initiator = Handshake.initiator(ALICE, ALICE_CERT, os.urandom)
    initiator.data_to_send()
    message = bytes(32) + bytes(64)
    initiator.receive_data(len(message).to_bytes(2, "big") + message)
    with pytest.raises(HandshakeError, match="low-order"):
        initiator.next_event()


# --- replay ---------------------------------------------------------------------------------


def test_A3_replayed_first_xx_message_gives_the_attacker_no_session() -> None:
    recorded, _frame = _record(Pattern.XX)
    fresh = Handshake.responder(BOB, BOB_CERT, os.urandom)
    fresh.receive_data(recorded[0])
    assert fresh.next_event() is None
    assert fresh.data_to_send() != recorded[1]  # a new ephemeral key: new keys
    fresh.receive_data(recorded[2])  # the attacker can only replay the old third message
    with pytest.raises(HandshakeError):
        fresh.next_event()
    assert not fresh.complete


def test_A3_replayed_first_ik_message_gives_the_attacker_no_session() -> None:
    recorded, frame = _record(Pattern.IK)
    fresh = Handshake.responder(BOB, BOB_CERT, os.urandom)
    fresh.receive_data(recorded[0])
    assert isinstance(fresh.next_event(), PeerAuthenticated)
    complete = fresh.next_event()
    assert isinstance(complete, HandshakeComplete)
    assert not complete.peer_confirmed
    channel = fresh.into_channel()
    assert not channel.peer_confirmed
    channel.receive_data(frame)  # the old session's first frame does not open under new keys
    with pytest.raises(RemoteProtocolError):
        channel.next_message()
    assert not channel.peer_confirmed
    with pytest.raises(RemoteProtocolError):
        channel.send(b"album data")


# --- splitting ------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", list(Pattern))
def test_A3_every_split_point_one_byte_at_a_time(pattern: Pattern) -> None:
    initiator, responder = _start(pattern)
    sides = (initiator, responder)
    events: tuple[list[Event], list[Event]] = ([], [])
    sender = 0
    while data := sides[sender].data_to_send():
        receiver = 1 - sender
        for i in range(len(data)):
            sides[receiver].receive_data(data[i : i + 1])
            while (event := sides[receiver].next_event()) is not None:
                events[receiver].append(event)
            assert _completed(events[receiver]) is False or i == len(data) - 1
        sender = receiver
    assert initiator.complete
    assert responder.complete
    assert initiator.handshake_hash == responder.handshake_hash


def test_transport_bytes_after_the_last_message_reach_the_channel() -> None:
    initiator = Handshake.initiator(ALICE, ALICE_CERT, os.urandom, remote_static=BOB_X25519)
    responder = Handshake.responder(BOB, BOB_CERT, os.urandom)
    responder.receive_data(initiator.data_to_send())
    while responder.next_event() is not None:
        pass
    server = responder.into_channel()
    initiator.receive_data(responder.data_to_send() + server.send(b"welcome"))
    while initiator.next_event() is not None:
        pass
    assert initiator.into_channel().next_message() == b"welcome"


def test_local_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Handshake.initiator(ALICE, bytes(MAX_PAYLOAD + 1), os.urandom)
    with pytest.raises(LocalProtocolError):
        Handshake.initiator(ALICE, b"", os.urandom, remote_static=b"short")
    with pytest.raises(LocalProtocolError):
        Handshake.initiator(ALICE, b"", lambda n: b"\x01")
    pending = Handshake.responder(BOB, b"", os.urandom)
    with pytest.raises(LocalProtocolError):
        pending.into_channel()
    with pytest.raises(LocalProtocolError):
        _ = pending.send_cipher
    assert pending.pattern is None


# --- identity -------------------------------------------------------------------------------


def test_verify_peer_identity_binds_certificate_to_static_key() -> None:
    device = verify_peer_identity(ALICE_X25519, ALICE_CERT)
    assert device.public_key == ALICE.public
    with pytest.raises(HandshakeError, match="another key"):
        verify_peer_identity(BOB_X25519, ALICE_CERT)
    with pytest.raises(HandshakeError, match="not valid"):
        verify_peer_identity(ALICE_X25519, ALICE_CERT[:-1] + b"\x00")
    with pytest.raises(HandshakeError, match="not valid"):
        verify_peer_identity(ALICE_X25519, b"")


def test_a_peer_presenting_someone_elses_certificate_is_caught() -> None:
    initiator = Handshake.initiator(MALLORY, ALICE_CERT, os.urandom)
    responder = Handshake.responder(BOB, BOB_CERT, os.urandom)
    events: tuple[list[Event], list[Event]] = ([], [])
    _pump(initiator, responder, events)
    claim = events[1][0]
    assert isinstance(claim, PeerAuthenticated)
    with pytest.raises(HandshakeError):
        verify_peer_identity(claim.remote_static, claim.payload)


# --- fuzzing --------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)
_framed = st.builds(
    lambda marker, body: marker + len(body).to_bytes(2, "big") + body,
    st.sampled_from([b"X", b"I"]),
    st.binary(max_size=500),
)


def _drain(handshake: Handshake) -> None:
    for _ in range(10):
        if handshake.next_event() is None:
            return


@FUZZ
@given(st.one_of(st.binary(max_size=600), _framed), st.booleans())
def test_random_bytes_into_a_responder_raise_only_handshake_errors(data: bytes, ik: bool) -> None:
    responder = Handshake.responder(BOB, BOB_CERT, os.urandom, accept_ik=ik)
    try:
        responder.receive_data(data)
        _drain(responder)
    except HandshakeError:
        assert not responder.complete


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(list(Pattern)))
def test_random_bytes_into_an_initiator_raise_only_handshake_errors(
    data: bytes, pattern: Pattern
) -> None:
    remote = BOB_X25519 if pattern is Pattern.IK else None
    initiator = Handshake.initiator(ALICE, ALICE_CERT, os.urandom, remote_static=remote)
    initiator.data_to_send()
    try:
        initiator.receive_data(len(data).to_bytes(2, "big") + data)
        _drain(initiator)
    except HandshakeError:
        pass
    assert not initiator.complete
