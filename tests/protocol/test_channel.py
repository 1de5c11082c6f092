"""SecureChannel: fragmentation, strict nonce order, permanent failure, splitting, speed (A3)."""

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.channel import (
    FINAL,
    MAX_FRAGMENT,
    MAX_MESSAGE,
    MAX_NONCE,
    MORE,
    CipherState,
    SecureChannel,
)
from protocol.errors import LocalProtocolError, RemoteProtocolError

KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))
SIZES = [0, 1, MAX_FRAGMENT - 1, MAX_FRAGMENT, MAX_FRAGMENT + 1, 2 * MAX_FRAGMENT, MAX_MESSAGE]


def _pair() -> tuple[SecureChannel, SecureChannel]:
    """Two ends of one channel: each sends with the key the other receives with."""
    a = SecureChannel(send_cipher=CipherState(KEY_A), receive_cipher=CipherState(KEY_B))
    b = SecureChannel(send_cipher=CipherState(KEY_B), receive_cipher=CipherState(KEY_A))
    return a, b


def _frames(wire: bytes) -> list[bytes]:
    """Split wire bytes into transport frames (length prefix included)."""
    frames, offset = [], 0
    while offset < len(wire):
        end = offset + 2 + int.from_bytes(wire[offset : offset + 2], "big")
        frames.append(wire[offset:end])
        offset = end
    return frames


def _raw_frame(cipher: CipherState, plaintext: bytes) -> bytes:
    ciphertext = cipher.encrypt_with_ad(b"", plaintext)
    return len(ciphertext).to_bytes(2, "big") + ciphertext


def _assert_dead(channel: SecureChannel) -> None:
    assert channel.failed
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        channel.next_message()
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        channel.receive_data(b"more")
    with pytest.raises(RemoteProtocolError, match="failed earlier"):
        channel.send(b"reply")


@pytest.mark.parametrize("size", SIZES)
def test_messages_of_every_size_arrive_whole(size: int) -> None:
    a, b = _pair()
    message = os.urandom(size)
    wire = a.send(message)
    fragments = max(1, -(-size // MAX_FRAGMENT))
    assert len(_frames(wire)) == fragments
    assert len(wire) == size + fragments * (2 + 16 + 1)
    b.receive_data(wire)
    assert b.next_message() == message
    assert b.next_message() is None


def test_many_messages_in_one_read_come_out_in_order() -> None:
    a, b = _pair()
    messages = [os.urandom(n) for n in (5, 0, 70_000, 3, 200_000)]
    b.receive_data(b"".join(a.send(m) for m in messages))
    assert [b.next_message() for _ in messages] == messages
    assert b.next_message() is None


def test_oversized_message_is_refused_on_both_sides() -> None:
    a, b = _pair()
    with pytest.raises(LocalProtocolError, match="at most"):
        a.send(bytes(MAX_MESSAGE + 1))
    cipher = CipherState(KEY_A)
    for _ in range(MAX_MESSAGE // MAX_FRAGMENT + 1):
        b.receive_data(_raw_frame(cipher, bytes([MORE]) + bytes(MAX_FRAGMENT)))
    with pytest.raises(RemoteProtocolError, match="over"):
        b.next_message()
    _assert_dead(b)


@pytest.mark.parametrize(
    "fragments",
    [
        [bytes([MORE]) + b"short", bytes([FINAL]) + b"x"],  # a non-final fragment must be full
        [bytes([7]) + b"x"],  # unknown flag
        [bytes([MORE]) + bytes(MAX_FRAGMENT), bytes([FINAL])],  # empty last fragment
    ],
    ids=["short-fragment", "unknown-flag", "empty-last"],
)
def test_non_canonical_framing_is_refused(fragments: list[bytes]) -> None:
    _, b = _pair()
    cipher = CipherState(KEY_A)
    b.receive_data(b"".join(_raw_frame(cipher, f) for f in fragments))
    with pytest.raises(RemoteProtocolError, match="framed"):
        b.next_message()
    _assert_dead(b)


def test_a_frame_too_short_for_a_tag_is_refused() -> None:
    _, b = _pair()
    b.receive_data(b"\x00\x10" + bytes(16))
    with pytest.raises(RemoteProtocolError, match="smallest"):
        b.next_message()
    _assert_dead(b)


def test_the_first_frame_from_the_peer_confirms_it() -> None:
    a, _ = _pair()
    b = SecureChannel(
        send_cipher=CipherState(KEY_B), receive_cipher=CipherState(KEY_A), peer_confirmed=False
    )
    b.receive_data(a.send(b"hello"))
    assert not b.peer_confirmed
    assert b.next_message() == b"hello"
    assert b.peer_confirmed


def test_a_cipher_state_never_uses_the_reserved_nonce() -> None:
    with pytest.raises(LocalProtocolError, match="nonces"):
        CipherState(KEY_A, nonce=MAX_NONCE).encrypt_with_ad(b"", b"x")
    with pytest.raises(RemoteProtocolError):
        CipherState(KEY_A, nonce=MAX_NONCE).decrypt_with_ad(b"", bytes(17))
    last = CipherState(KEY_A, nonce=MAX_NONCE - 1)
    assert (
        CipherState(KEY_A, nonce=MAX_NONCE - 1).decrypt_with_ad(
            b"", last.encrypt_with_ad(b"", b"x")
        )
        == b"x"
    )
    with pytest.raises(LocalProtocolError):
        CipherState(b"short")


# --- replay, reorder, drop, modify (A3) -----------------------------------------------------


def test_A3_replayed_transport_frame_kills_the_channel() -> None:
    a, b = _pair()
    frame = a.send(b"pay 10 coins")
    b.receive_data(frame)
    assert b.next_message() == b"pay 10 coins"
    b.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="replayed"):
        b.next_message()
    _assert_dead(b)
    b_good = _pair()[1]  # a fresh receiver still accepts the sender's next frame in order
    b_good.receive_data(frame + a.send(b"next"))
    assert [b_good.next_message(), b_good.next_message()] == [b"pay 10 coins", b"next"]


@pytest.mark.parametrize(
    ("order", "delivered"),
    [([1, 0], []), ([1], []), ([0, 2], [b"one"])],
    ids=["reordered", "first-dropped", "gap"],
)
def test_A3_reordered_or_dropped_frames_kill_the_channel(
    order: list[int], delivered: list[bytes]
) -> None:
    a, b = _pair()
    frames = [a.send(m) for m in (b"one", b"two", b"three")]
    received: list[bytes | None] = []

    def deliver() -> None:
        for index in order:
            b.receive_data(frames[index])
            received.append(b.next_message())

    with pytest.raises(RemoteProtocolError):
        deliver()
    assert received == delivered
    _assert_dead(b)


def test_A3_every_modified_bit_of_a_frame_is_refused() -> None:
    a, _ = _pair()
    frame = a.send(b"chunk")
    for byte in range(len(frame)):
        for bit in range(8):
            _, b = _pair()
            changed = bytearray(frame)
            changed[byte] ^= 1 << bit
            b.receive_data(changed)
            if byte < 2:
                # A changed length is refused, or waits for bytes that never come.
                try:
                    assert b.next_message() is None
                except RemoteProtocolError:
                    _assert_dead(b)
                continue
            with pytest.raises(RemoteProtocolError):
                b.next_message()
            _assert_dead(b)


def test_A3_a_fragment_of_another_message_cannot_be_spliced_in() -> None:
    a, b = _pair()
    first = _frames(a.send(bytes(2 * MAX_FRAGMENT)))
    second = _frames(a.send(b"x" * (2 * MAX_FRAGMENT)))
    b.receive_data(first[0] + second[1])
    with pytest.raises(RemoteProtocolError):
        b.next_message()
    _assert_dead(b)


# --- splitting ------------------------------------------------------------------------------


def test_A3_every_split_point_of_a_transport_frame() -> None:
    a, _ = _pair()
    message = os.urandom(100)
    wire = a.send(message)
    for cut in range(len(wire) + 1):
        _, b = _pair()
        b.receive_data(wire[:cut])
        first = b.next_message()
        b.receive_data(wire[cut:])
        second = b.next_message()
        assert (first, second) == ((message, None) if cut == len(wire) else (None, message))


def test_A3_multi_fragment_message_one_byte_at_a_time() -> None:
    a, b = _pair()
    message = os.urandom(2 * MAX_FRAGMENT + 1000)
    wire = a.send(message) + a.send(b"tail")
    got = []
    for i in range(len(wire)):
        b.receive_data(wire[i : i + 1])
        while (m := b.next_message()) is not None:
            got.append(m)
    assert got == [message, b"tail"]


# --- fuzzing --------------------------------------------------------------------------------

_framed = st.builds(
    lambda body: len(body).to_bytes(2, "big") + body, st.binary(min_size=0, max_size=300)
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), _framed), max_size=4))
def test_random_bytes_into_a_channel_raise_only_remote_protocol_errors(reads: list[bytes]) -> None:
    _, b = _pair()
    try:
        for data in reads:
            b.receive_data(data)
            assert b.next_message() is None  # no forgery ever decrypts
    except RemoteProtocolError:
        _assert_dead(b)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=3 * MAX_FRAGMENT // 2), max_size=3), st.data())
def test_any_split_of_any_messages_round_trips(messages: list[bytes], data: st.DataObject) -> None:
    a, b = _pair()
    wire = b"".join(a.send(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        b.receive_data(wire[start:end])
        while (m := b.next_message()) is not None:
            got.append(m)
    assert got == messages


# --- speed ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)  # quadratic buffer handling would take minutes here
def test_throughput_64_mib_in_256_kib_messages() -> None:
    a, b = _pair()
    message = os.urandom(256 * 1024)
    count = 256  # 64 MiB
    read_size = 64 * 1024  # what one socket read typically returns
    started = time.perf_counter()
    received = 0
    for _ in range(count):
        wire = memoryview(a.send(message))
        for start in range(0, len(wire), read_size):
            b.receive_data(wire[start : start + read_size])
            while (m := b.next_message()) is not None:
                received += len(m)
    elapsed = time.perf_counter() - started
    assert received == count * len(message)
    print(f"SecureChannel: 64 MiB sent and received in {elapsed:.2f} s = {64 / elapsed:.0f} MiB/s")
