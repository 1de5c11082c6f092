"""Frame codec: header rules (TESTPLAN A1 at codec level), fuzzing (A2) of frames and of encoding."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.channel import MAX_MESSAGE
from protocol.encoding import Value, decode, encode
from protocol.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from protocol.frames import (
    HEADER_SIZE,
    MAX_BATCH_PAYLOAD,
    MAX_FRAME,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    FrameDecoder,
    decode_frame,
    encode_frame,
    message_type,
)
from protocol.messages import (
    MAX_CHUNK_CIPHERTEXT,
    MAX_MILLIS,
    MAX_REQUEST_ID,
    MAX_WIRE_ENTRY,
    ChunkData,
    ChunkMissing,
    ChunkRequest,
    Close,
    ErrorCode,
    Head,
    Hello,
    InviteOffer,
    InviteRedeem,
    LogEntries,
    LogRequest,
    ManifestEntries,
    ManifestHeads,
    ManifestRequest,
    Message,
    Ping,
    Pong,
    Statements,
)
from protocol.statements import MAX_SEQ
from tests.protocol.test_messages import MESSAGE_STRATEGIES, any_message

A2 = settings(max_examples=5000, deadline=None)  # TESTPLAN A2: 5k examples per decoder in PR
SOME = settings(max_examples=400, deadline=None)
ALBUM = b"A" * 32
CHUNK_DATA = MESSAGE_TYPES[0x31]


def _header(code: int, length: int, version: int = PROTOCOL_VERSION) -> bytes:
    return struct.pack(">BBI", version, code, length)


def _ids(n: int) -> tuple[bytes, ...]:
    return tuple(i.to_bytes(32, "big") for i in range(n))


# --- the frame format -------------------------------------------------------------------------


def test_known_answer() -> None:
    payload = b"\x08\x01\x06\x07sent_at\x03\xac\x02"  # {"sent_at": 300}
    assert encode_frame(Ping(sent_at=300)) == b"\x01\x03\x00\x00\x00\x0e" + payload
    assert decode_frame(b"\x01\x03\x00\x00\x00\x0e" + payload) == Ping(sent_at=300)
    assert encode_frame(Pong(sent_at=300))[1] == 0x04


def test_type_table_is_consistent() -> None:
    assert MAX_FRAME <= MAX_MESSAGE  # a frame always fits one message of the Noise channel
    for code, row in MESSAGE_TYPES.items():
        assert row.code == code
        assert message_type(row.cls) is row
        assert 0 < row.max_payload <= MAX_FRAME - HEADER_SIZE
    assert len({row.cls for row in MESSAGE_TYPES.values()}) == len(MESSAGE_TYPES)
    assert MESSAGE_TYPES[0x03].max_payload < 32  # a Ping is tiny


# The largest message of each type the field rules allow; its payload must be exactly the bound.
_MAXIMAL: list[Message] = [
    Hello(version=255, device_name="\U0010ffff" * 64, albums=_ids(1000)),
    Close(code=max(ErrorCode), message="\U0010ffff" * 256),
    Ping(sent_at=MAX_MILLIS),
    Pong(sent_at=MAX_MILLIS),
    LogRequest(album=ALBUM, after_seq=MAX_SEQ),
    ManifestHeads(album=ALBUM, heads=tuple(Head(author=a, seq=MAX_SEQ) for a in _ids(1000))),
    ManifestRequest(album=ALBUM, author=ALBUM, after_seq=MAX_SEQ, limit=1000),
    ChunkRequest(request_id=MAX_REQUEST_ID, album=ALBUM, chunk_id=ALBUM, size=MAX_CHUNK_CIPHERTEXT),
    ChunkData(request_id=MAX_REQUEST_ID, data=b"c" * MAX_CHUNK_CIPHERTEXT),
    ChunkMissing(request_id=MAX_REQUEST_ID, code=max(ErrorCode)),
    InviteRedeem(invite_id=b"i" * 16, proof=b"p" * 32),
    InviteOffer(album=ALBUM, entry=b"e" * MAX_WIRE_ENTRY),
]


@pytest.mark.parametrize("message", _MAXIMAL, ids=lambda m: type(m).__name__)
def test_each_bound_is_the_largest_valid_payload(message: Message) -> None:
    frame = encode_frame(message)
    assert len(frame) - HEADER_SIZE == message_type(type(message)).max_payload
    assert decode_frame(frame) == message


@pytest.mark.parametrize(
    "build",
    [
        lambda entries: Statements(album=ALBUM, statements=entries),
    ],
)
def test_batches_are_capped_at_max_batch_payload(
    build: Callable[[tuple[bytes, ...]], Message],
) -> None:
    assert message_type(type(build((b"x",)))).max_payload == MAX_BATCH_PAYLOAD
    # Many entries whose total is exactly the cap: accepted; one byte more: the sender must split.
    base = (b"e" * 1024,) * 510  # 1024: the largest statement
    overhead = len(encode_frame(build((*base, b"l" * 300)))) - HEADER_SIZE - 300
    last = MAX_BATCH_PAYLOAD - overhead
    assert 128 <= last < 1024  # same length-prefix width as 300, and a valid item
    exact = build((*base, b"l" * last))
    assert len(encode_frame(exact)) == HEADER_SIZE + MAX_BATCH_PAYLOAD
    with pytest.raises(LocalProtocolError, match="smaller batches"):
        encode_frame(build((*base, b"l" * (last + 1))))
    # A peer's oversized batch is refused by its header alone.
    with pytest.raises(RemoteProtocolError, match="the limit is"):
        FrameDecoder().receive_data(_header(_code_of(exact), MAX_BATCH_PAYLOAD + 1))


def _code_of(message: Message) -> int:
    return message_type(type(message)).code


def test_encode_refuses_an_unregistered_message() -> None:
    class Stray(Ping):
        __slots__ = ()

    with pytest.raises(LocalProtocolError, match="Stray is not in the table"):
        encode_frame(Stray(sent_at=1))


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "ends inside its 6-byte header"),
        (b"\x01\x03\x00\x00", "ends inside"),
        (_header(0x03, 14, version=2) + encode({"sent_at": 300}), "version 2"),
        (_header(0x03, 14, version=0) + encode({"sent_at": 300}), "version 0"),
        (_header(0x7F, 14) + encode({"sent_at": 300}), "unknown message type 0x7f"),
        (_header(0x03, 0), "empty Ping frame"),
        (_header(0x03, 15) + encode({"sent_at": 300}), "is 20 bytes but its header says 21"),
        (_header(0x03, 14) + encode({"sent_at": 300}) + b"\0", "header says 20"),
        (_header(0x03, 4) + encode({"sent_at": 300}), "header says 10"),
        (_header(0x03, 2) + b"\x08\x00", "field 'sent_at' is missing"),
        (_header(0x03, 3) + b"\x03\x01\x00", "trailing"),
        (_header(0x03, 1) + b"\x02", "Ping: expected a map"),
        (_header(0x04, 0xFFFFFFFF), "claiming 4294967295 bytes"),
    ],
)
def test_decode_frame_refuses(frame: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_frame(frame)


# --- TESTPLAN A1 at the codec level -----------------------------------------------------------


@pytest.mark.parametrize(
    "length", [0xFFFFFFFF, 0, CHUNK_DATA.max_payload + 1, MAX_FRAME + 1, 2**31 - 1]
)
def test_A1_frame_length_bounds_refused_at_the_header(length: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(Ping(sent_at=1)))
    decoder.receive_data(_header(0x31, length)[:5])  # a header still incomplete is no verdict
    with pytest.raises(RemoteProtocolError, match="ChunkData"):
        decoder.receive_data(_header(0x31, length)[5:])
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.next_frame()  # the frame before the bad header is not handed out either
    with pytest.raises(RemoteProtocolError):
        decode_frame(_header(0x31, length) + b"\0" * min(length, 64))


def test_A1_huge_claim_followed_by_10mb_is_refused_without_buffering() -> None:
    flood = _header(0x31, 2**31 - 1) + b"\xaa" * (10 * 1024 * 1024)
    pieces = [flood[i : i + 65536] for i in range(0, len(flood), 65536)]
    for feed in ([flood], pieces):
        decoder = FrameDecoder()
        tracemalloc.start()
        start = time.monotonic()
        try:
            with pytest.raises(RemoteProtocolError, match="claiming 2147483647 bytes"):
                decoder.receive_data(feed[0])
            for piece in feed[1:]:
                with pytest.raises(RemoteProtocolError, match="already failed"):
                    decoder.receive_data(piece)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.monotonic() - start < 1.0
        assert peak < MAX_FRAME // 4
        assert decoder.buffered == 0


def test_A1_bad_header_after_good_frames_in_one_piece_is_refused_before_buffering() -> None:
    good = encode_frame(Ping(sent_at=1)) * 3
    data = good + _header(0x31, 0xFFFFFFFF) + b"\xaa" * (4 * MAX_FRAME)
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="claiming 4294967295"):
            decoder.receive_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_FRAME // 4
    assert decoder.buffered == 0


def test_A1_header_then_silence_waits_with_bounded_memory() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.receive_data(_header(0x31, CHUNK_DATA.max_payload))
        for _ in range(1000):
            assert decoder.next_frame() is None
        decoder.receive_data(b"\x08")
        assert decoder.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_FRAME // 4
    assert decoder.buffered == HEADER_SIZE + 1


def test_a_bad_payload_kills_the_decoder() -> None:
    decoder = FrameDecoder()
    bad = _header(0x03, 2) + b"\x08\x00"
    decoder.receive_data(bad + encode_frame(Ping(sent_at=2)))
    with pytest.raises(DecodeError, match="'sent_at' is missing"):
        decoder.next_frame()
    for call in (decoder.next_frame, lambda: decoder.receive_data(b"")):
        with pytest.raises(RemoteProtocolError, match=r"already failed.*'sent_at' is missing"):
            call()
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (_header(0x03, 13, version=2), "version 2"),
        (_header(0x00, 13), "unknown message type 0x00"),
        (_header(0xFF, 13), "unknown message type 0xff"),
        (_header(0x03, 0), "empty Ping"),
        (_header(0x03, 100), "Ping frame claiming 100 bytes"),
    ],
)
def test_decoder_refuses_bad_headers_on_arrival(header: bytes, match: str) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(header[:3])
    with pytest.raises(RemoteProtocolError, match=match):
        decoder.receive_data(header[3:])


Mutation = tuple[str, int, int, bytes]
_MUTATION = st.tuples(
    st.sampled_from(["flip", "put", "insert", "delete", "cut"]),
    st.integers(0, 2**20),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=4),
)

# --- TESTPLAN A2: codec_fuzz_roundtrip for frames ---------------------------------------------


@SOME
@given(any_message)
def test_A2_codec_fuzz_roundtrip(message: Message) -> None:
    frame = encode_frame(message)
    decoded = decode_frame(frame)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode_frame(decoded) == frame


_frame_like = st.builds(
    lambda code, payload: _header(code, len(payload)) + payload,
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.binary(min_size=1, max_size=80),
)


@A2
@given(st.one_of(st.binary(max_size=80), _frame_like))
def test_A2_decode_frame_random_bytes(data: bytes) -> None:
    _decode_only_protocol_errors(data)


@settings(max_examples=1000, deadline=None)
@given(any_message, st.lists(_MUTATION, min_size=1, max_size=3))
def test_A2_decode_frame_mutated_frames(message: Message, mutations: list[Mutation]) -> None:
    mutated = _mutate(encode_frame(message), mutations)
    _decode_only_protocol_errors(mutated)
    decoder = FrameDecoder()
    try:
        decoder.receive_data(mutated)
        while (got := decoder.next_frame()) is not None:
            assert isinstance(got, Message)
    except RemoteProtocolError:
        pass


def _decode_only_protocol_errors(data: bytes) -> None:
    try:
        message = decode_frame(data)
    except RemoteProtocolError:
        return
    assert encode_frame(message) == data  # accepted bytes are the canonical encoding


# --- byte streams -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=5))
def test_every_byte_split_decodes_identically(messages: list[Message]) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    got: list[Message] = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        while (message := decoder.next_frame()) is not None:
            got.append(message)
    assert got == messages
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=6), st.data())
def test_random_splits_decode_identically(messages: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.receive_data(memoryview(stream)[start:end])
    got = []
    while (message := decoder.next_frame()) is not None:
        got.append(message)
    assert got == messages


def test_each_type_is_exercised_by_the_fuzz_strategies() -> None:
    assert {row.cls for row in MESSAGE_TYPES.values()} <= set(MESSAGE_STRATEGIES)


# --- TESTPLAN A2 for protocol/encoding.py -----------------------------------------------------

_values: st.SearchStrategy[Value] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_A2_encoding_round_trip(value: Value) -> None:
    raw = encode(value)
    assert decode(raw) == value
    assert encode(decode(raw)) == raw


@A2
@given(st.binary(max_size=100))
def test_A2_encoding_decode_random_bytes(data: bytes) -> None:
    _encoding_only_decode_errors(data)


@settings(max_examples=500, deadline=None)
@given(_values, st.lists(_MUTATION, min_size=1, max_size=3))
def test_A2_encoding_decode_mutated(value: Value, mutations: list[Mutation]) -> None:
    _encoding_only_decode_errors(_mutate(encode(value), mutations))


def _encoding_only_decode_errors(data: bytes) -> None:
    try:
        value = decode(data)
    except DecodeError:
        return
    assert encode(value) == data


def _mutate(raw: bytes, mutations: list[Mutation]) -> bytes:
    """Flip, replace, insert or delete bytes, or cut the end: what a broken peer might send."""
    for kind, where, byte, extra in mutations:
        at = where % (len(raw) + 1)
        if kind == "flip" and at < len(raw):
            raw = raw[:at] + bytes([raw[at] ^ (1 << (byte % 8))]) + raw[at + 1 :]
        elif kind == "put":
            raw = raw[:at] + bytes([byte]) + raw[at + 1 :]
        elif kind == "insert":
            raw = raw[:at] + extra + raw[at:]
        elif kind == "delete":
            raw = raw[:at] + raw[at + 1 + byte % 4 :]
        elif kind == "cut":
            raw = raw[:at]
    return raw


def test_entry_batches_may_fill_a_frame() -> None:
    """One log or manifest entry may be as large as a frame allows; senders batch the rest by size."""
    for cls in (LogEntries, ManifestEntries):
        assert message_type(cls).max_payload == MAX_FRAME - HEADER_SIZE


def test_the_largest_entries_travel_in_one_frame() -> None:
    """A file's manifest entry and a membership invite must each fit one ManifestEntries/LogEntries."""
    from protocol import manifest, membership_entries
    from protocol.frames import decode_frame, encode_frame
    from protocol.messages import LogEntries, ManifestEntries

    assert manifest.MAX_ENVELOPE_BYTES <= MAX_WIRE_ENTRY
    assert membership_entries.MAX_ENVELOPE_BYTES <= MAX_WIRE_ENTRY
    big = ManifestEntries(album=ALBUM, entries=(b"m" * manifest.MAX_ENVELOPE_BYTES,))
    assert decode_frame(encode_frame(big)) == big
    log = LogEntries(album=ALBUM, entries=(b"l" * membership_entries.MAX_ENVELOPE_BYTES,))
    assert decode_frame(encode_frame(log)) == log
