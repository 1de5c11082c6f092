"""Message dataclasses: every field's bound holds on construction and on decoding, one encoding each.

The strategies here build valid messages of every type; test_frames.py uses them for TESTPLAN A2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import Reader, Value, decode, encode
from protocol.errors import DecodeError, LocalProtocolError
from protocol.frames import MESSAGE_TYPES
from protocol.messages import (
    ERROR_MEANINGS,
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
    Int,
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
    Record,
    Statements,
)
from protocol.statements import MAX_SEQ

ALBUM = b"A" * 32
AUTHOR = b"B" * 32

_ids = st.binary(min_size=32, max_size=32)
_seqs = st.integers(0, MAX_SEQ)
_request_ids = st.integers(0, MAX_REQUEST_ID)
_millis = st.integers(0, MAX_MILLIS)
_blobs = st.binary(min_size=1, max_size=300)
_entries = st.lists(_blobs, max_size=6).map(tuple)
_line = st.characters(blacklist_categories=("Cc", "Cs"))
_codes = st.sampled_from(ErrorCode)

MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(
        Hello,
        version=st.integers(1, 255),
        device_name=st.text(_line, max_size=64),
        albums=st.lists(_ids, max_size=6, unique=True).map(tuple),
    ),
    Close: st.builds(Close, code=_codes, message=st.text(_line, max_size=256)),
    Ping: st.builds(Ping, sent_at=_millis),
    Pong: st.builds(Pong, sent_at=_millis),
    LogRequest: st.builds(LogRequest, album=_ids, after_seq=_seqs),
    LogEntries: st.builds(LogEntries, album=_ids, entries=_entries),
    Statements: st.builds(
        Statements, album=_ids, statements=st.lists(_blobs, max_size=6).map(tuple)
    ),
    ManifestHeads: st.builds(
        ManifestHeads,
        album=_ids,
        heads=st.lists(
            st.builds(Head, author=_ids, seq=_seqs), max_size=6, unique_by=lambda h: h.author
        ).map(tuple),
    ),
    ManifestRequest: st.builds(
        ManifestRequest,
        album=_ids,
        author=_ids,
        after_seq=_seqs,
        limit=st.integers(1, 1000),
    ),
    ManifestEntries: st.builds(ManifestEntries, album=_ids, entries=_entries),
    ChunkRequest: st.builds(
        ChunkRequest,
        request_id=_request_ids,
        album=_ids,
        chunk_id=_ids,
        size=st.integers(1, MAX_CHUNK_CIPHERTEXT),
    ),
    ChunkData: st.builds(ChunkData, request_id=_request_ids, data=st.binary(min_size=1)),
    ChunkMissing: st.builds(ChunkMissing, request_id=_request_ids, code=_codes),
    InviteRedeem: st.builds(
        InviteRedeem,
        invite_id=st.binary(min_size=16, max_size=16),
        proof=st.binary(min_size=32, max_size=32),
    ),
    InviteOffer: st.builds(InviteOffer, album=_ids, entry=_blobs),
}
any_message: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == {row.cls for row in MESSAGE_TYPES.values()}


@settings(max_examples=300, deadline=None)
@given(any_message)
def test_A2_fields_round_trip(message: Message) -> None:
    name = type(message).__name__
    value = decode(encode(message.to_fields()))
    assert type(message).from_fields(Reader(value, name)) == message


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: Hello(version=0, device_name="a", albums=()),
            r"version = 0 is outside \[1, 255\]",
        ),
        (lambda: Hello(version=256, device_name="a", albums=()), "version"),
        (lambda: Hello(version=True, device_name="a", albums=()), "version must be an integer"),
        (lambda: Hello(version=1, device_name="x" * 65, albums=()), "longer than 64 characters"),
        (lambda: Hello(version=1, device_name="a\nb", albums=()), "control characters"),
        (lambda: Hello(version=1, device_name="\ud800", albums=()), "control characters"),
        (lambda: Hello(version=1, device_name=b"a", albums=()), "device_name must be text"),  # type: ignore[arg-type]
        (lambda: Hello(version=1, device_name="", albums=(b"a" * 31,)), r"\[0\] must be 32 bytes"),
        (lambda: Hello(version=1, device_name="", albums=(ALBUM, ALBUM)), r"albums\[1\] repeats"),
        (lambda: Hello(version=1, device_name="", albums=[ALBUM]), "must be a tuple"),  # type: ignore[arg-type]
        (
            lambda: Hello(
                version=1, device_name="", albums=tuple(i.to_bytes(32, "big") for i in range(1001))
            ),
            "1001 items, more than 1000",
        ),
        (lambda: LogRequest(album=ALBUM, after_seq=-1), "after_seq = -1"),
        (lambda: LogRequest(album=ALBUM, after_seq=MAX_SEQ + 1), "after_seq"),
        (lambda: LogRequest(album=bytearray(ALBUM), after_seq=1), "album must be bytes"),  # type: ignore[arg-type]
        (lambda: LogEntries(album=ALBUM, entries=(b"",)), r"entries\[0\] must not be empty"),
        (
            lambda: LogEntries(album=ALBUM, entries=(b"x" * (MAX_WIRE_ENTRY + 1),)),
            f"longer than {MAX_WIRE_ENTRY}",
        ),
        (lambda: LogEntries(album=ALBUM, entries=(b"x",) * 1001), "more than 1000"),
        (lambda: Statements(album=ALBUM, statements=(b"s" * 1025,)), "longer than 1024"),
        (lambda: Head(author=AUTHOR[:31], seq=1), "author must be 32 bytes"),
        (
            lambda: ManifestHeads(
                album=ALBUM, heads=(Head(author=AUTHOR, seq=1), Head(author=AUTHOR, seq=2))
            ),
            r"heads\[1\] repeats",
        ),
        (lambda: ManifestHeads(album=ALBUM, heads=(AUTHOR,)), r"\[0\] must be a Head"),  # type: ignore[arg-type]
        (
            lambda: ManifestRequest(album=ALBUM, author=AUTHOR, after_seq=0, limit=0),
            "limit = 0",
        ),
        (
            lambda: ManifestRequest(album=ALBUM, author=AUTHOR, after_seq=0, limit=1001),
            "limit = 1001",
        ),
        (
            lambda: ChunkRequest(request_id=2**32, album=ALBUM, chunk_id=AUTHOR, size=1),
            "request_id",
        ),
        (
            lambda: ChunkRequest(
                request_id=1, album=ALBUM, chunk_id=AUTHOR, size=MAX_CHUNK_CIPHERTEXT + 1
            ),
            "size",
        ),
        (lambda: ChunkRequest(request_id=1, album=ALBUM, chunk_id=AUTHOR, size=0), "size = 0"),
        (
            lambda: ChunkData(request_id=1, data=b"c" * (MAX_CHUNK_CIPHERTEXT + 1)),
            f"longer than {MAX_CHUNK_CIPHERTEXT}",
        ),
        (lambda: ChunkMissing(request_id=1, code=5), "code must be one of the ErrorCode codes"),  # type: ignore[arg-type]
        (lambda: InviteRedeem(invite_id=b"i" * 15, proof=b"p" * 32), "invite_id must be 16"),
        (lambda: InviteRedeem(invite_id=b"i" * 16, proof=b"p" * 33), "proof must be 32"),
        (lambda: InviteOffer(album=ALBUM, entry=b""), "entry must not be empty"),
        (lambda: Ping(sent_at=-1), "sent_at = -1"),
        (lambda: Pong(sent_at=MAX_MILLIS + 1), "sent_at"),
        (lambda: Close(code=ErrorCode.NORMAL, message="m" * 257), "longer than 256"),
        (lambda: Close(code=0, message=""), "code must be one of the ErrorCode codes"),  # type: ignore[arg-type]
    ],
)
def test_construction_refuses_out_of_bounds(build: Callable[[], object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        build()


_HELLO = Hello(version=1, device_name="kitchen", albums=(ALBUM,))
_HEADS = ManifestHeads(album=ALBUM, heads=(Head(author=AUTHOR, seq=4),))
_MISSING = ChunkMissing(request_id=7, code=ErrorCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("message", "field", "bad", "match"),
    [
        (_HELLO, "version", 0, "Hello.version = 0 is outside"),
        (_HELLO, "version", True, "Hello.version must be an integer"),
        (_HELLO, "version", "1", "Hello.version must be an integer"),
        (_HELLO, "device_name", "x" * 65, "Hello.device_name is longer than 64"),
        (_HELLO, "device_name", "tab\there", "Hello.device_name contains control"),
        (_HELLO, "device_name", b"kitchen", "Hello.device_name must be text"),
        (_HELLO, "albums", ALBUM, "Hello.albums must be a list"),
        (_HELLO, "albums", [ALBUM, ALBUM], r"Hello.albums\[1\] repeats"),
        (_HELLO, "albums", [ALBUM[:5]], r"Hello.albums\[0\] must be 32 bytes, not 5"),
        (_HELLO, "albums", [b"%d" % i * 32 for i in range(1001)], "1001 items"),
        (
            _HEADS,
            "heads",
            [{"author": AUTHOR}],
            r"ManifestHeads.heads\[0\]: field 'seq' is missing",
        ),
        (
            _HEADS,
            "heads",
            [{"author": AUTHOR, "seq": 1, "x": 0}],
            r"ManifestHeads.heads\[0\]: unknown field\(s\) x",
        ),
        (
            _HEADS,
            "heads",
            [{"author": AUTHOR, "seq": 1}, {"author": AUTHOR, "seq": 2}],
            r"ManifestHeads.heads\[1\] repeats",
        ),
        (_HEADS, "heads", [[AUTHOR, 1]], r"ManifestHeads.heads\[0\]: expected a map"),
        (_MISSING, "code", 99, "ChunkMissing.code = 99 is not a known ErrorCode"),
        (_MISSING, "code", -1, "ChunkMissing.code = -1 is not a known ErrorCode"),
        (_MISSING, "code", False, "ChunkMissing.code must be an integer"),
        (_MISSING, "code", None, "ChunkMissing.code must be an integer"),
        (_MISSING, "request_id", 2**32, "ChunkMissing.request_id"),
    ],
)
def test_decoding_refuses_each_broken_field(
    message: Message, field: str, bad: Value, match: str
) -> None:
    fields = message.to_fields()
    fields[field] = bad
    with pytest.raises(DecodeError, match=match):
        _from_wire(type(message), fields)


@pytest.mark.parametrize("message", [_HELLO, _HEADS, _MISSING, Ping(sent_at=1)])
def test_decoding_refuses_missing_and_unknown_fields(message: Message) -> None:
    fields = message.to_fields()
    first = next(iter(fields))
    with pytest.raises(DecodeError, match=f"field '{first}' is missing"):
        _from_wire(type(message), {k: v for k, v in fields.items() if k != first})
    with pytest.raises(DecodeError, match=r"unknown field\(s\) zzz"):
        _from_wire(type(message), {**fields, "zzz": 1})
    with pytest.raises(DecodeError, match="expected a map"):
        type(message).from_fields(Reader([], type(message).__name__))


def test_error_codes_are_stable_and_each_has_a_meaning() -> None:
    # The numbers travel on the wire: changing one breaks every older peer.
    assert {code.name: code.value for code in ErrorCode} == {
        "NORMAL": 0,
        "GENERIC": 1,
        "PROTOCOL": 2,
        "VERSION": 3,
        "NO_SHARED_ALBUM": 4,
        "NOT_FOUND": 5,
        "NOT_ALLOWED": 6,
        "BUSY": 7,
        "SHUTTING_DOWN": 8,
        "INVITE_INVALID": 9,
        "TIMEOUT": 10,
        "DUPLICATE": 11,
    }
    assert set(ERROR_MEANINGS) == set(ErrorCode)
    assert ErrorCode.NOT_FOUND.meaning == "the peer does not have the requested data"
    assert len(set(ERROR_MEANINGS.values())) == len(ErrorCode)


def test_fields_map_has_one_shape() -> None:
    assert _HEADS.to_fields() == {"album": ALBUM, "heads": [{"author": AUTHOR, "seq": 4}]}
    assert _MISSING.to_fields() == {"request_id": 7, "code": 5}
    assert type(_MISSING.to_fields()["code"]) is int


def test_messages_are_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        _HELLO.version = 2  # type: ignore[misc]
    assert hash(_HEADS) == hash(ManifestHeads(album=ALBUM, heads=(Head(author=AUTHOR, seq=4),)))


def test_a_field_without_a_rule_is_a_programming_error() -> None:
    @dataclass(frozen=True, kw_only=True)
    class NoRule(Record):
        a: Annotated[int, Int(hi=5)]
        b: int

    with pytest.raises(TypeError, match=r"NoRule.b needs exactly one wire Rule"):
        NoRule(a=1, b=2)


def _from_wire(cls: type[Message], fields: dict[str, Value]) -> Message:
    return cls.from_fields(Reader(decode(encode(fields)), cls.__name__))
