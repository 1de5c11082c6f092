"""The versioned frame every application message travels in, and the table of message types.

    version (1 byte) | type (1 byte) | payload length (4 bytes, big endian) | payload

The payload is the message's fields as one canonical `protocol.encoding` map (`protocol.messages`).
A header is judged the moment its 6 bytes arrive: an unknown version or type, a zero length, or a
length above that type's bound ends the stream before any of the payload is buffered (TESTPLAN A1),
so a peer's claims cannot make us hold more than MAX_FRAME. Each type's bound is the largest payload
its field rules allow, capped at MAX_BATCH_PAYLOAD for batches; every frame fits one channel message.
Frames are canonical: `encode_frame(decode_frame(b)) == b` for every accepted `b`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocol.encoding import Limits, Reader, decode, encode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    ChunkData,
    ChunkMissing,
    ChunkRequest,
    Close,
    Hello,
    InviteOffer,
    InviteRedeem,
    LogEntries,
    LogRequest,
    ManifestEntries,
    ManifestHeads,
    ManifestRequest,
    Message,
    Nested,
    Ping,
    Pong,
    Statements,
)
from protocol.stream import HeaderedStream

PROTOCOL_VERSION = 1
HEADER_SIZE = 6
MAX_FRAME = 1024 * 1024 + 4096  # header + payload: one application message of the channel
MAX_BATCH_PAYLOAD = 512 * 1024  # a batch of entries or statements; a longer answer is split

Bytes = bytes | bytearray | memoryview

_HEADER = struct.Struct(">BBI")
_MAX_DEPTH = 3  # message map -> list -> nested record map -> its fields


@dataclass(frozen=True)
class MessageType:
    """One row of the type table: the wire number, the class, the largest payload accepted."""

    code: int
    cls: type[Message]
    max_payload: int


def _row(code: int, cls: type[Message], cap: int = MAX_FRAME - HEADER_SIZE) -> MessageType:
    return MessageType(code=code, cls=cls, max_payload=min(cap, Nested(cls).max_size()))


def _table(*rows: MessageType) -> Mapping[int, MessageType]:
    by_code = {row.code: row for row in rows}
    if len(by_code) != len(rows) or len({row.cls for row in rows}) != len(rows):
        raise ValueError("each message type needs its own code and its own class")
    if not all(0 <= code <= 0xFF for code in by_code):
        raise ValueError("a message type code is one byte")
    return MappingProxyType(by_code)


# The one table of message types: adding a message is one line here and one dataclass.
MESSAGE_TYPES = _table(
    _row(0x01, Hello),
    _row(0x02, Close),
    _row(0x03, Ping),
    _row(0x04, Pong),
    _row(0x10, LogRequest),
    _row(0x11, LogEntries),  # one entry may fill a frame; senders batch the rest by size
    _row(0x12, Statements, MAX_BATCH_PAYLOAD),
    _row(0x20, ManifestHeads),
    _row(0x21, ManifestRequest),
    _row(0x22, ManifestEntries),
    _row(0x30, ChunkRequest),
    _row(0x31, ChunkData),
    _row(0x32, ChunkMissing),
    _row(0x40, InviteRedeem),
    _row(0x41, InviteOffer),
)


def message_type(cls: type[Message]) -> MessageType:
    """The table row of a message class; LocalProtocolError if it has none."""
    row = _BY_CLASS.get(cls)
    if row is None:
        raise LocalProtocolError(f"{cls.__name__} is not in the table of message types")
    return row


def encode_frame(message: Message) -> bytes:
    """The frame carrying `message`; LocalProtocolError if it exceeds its type's bound (split it)."""
    row = message_type(type(message))
    payload = encode(message.to_fields())
    if len(payload) > row.max_payload:
        raise LocalProtocolError(
            f"a {row.cls.__name__} of {len(payload)} bytes exceeds the limit of "
            f"{row.max_payload}; send its items in smaller batches"
        )
    return _HEADER.pack(PROTOCOL_VERSION, row.code, len(payload)) + payload


def decode_frame(data: Bytes) -> Message:
    """The message in exactly one complete frame; RemoteProtocolError (or DecodeError) otherwise."""
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(f"a frame of {len(data)} bytes ends inside its 6-byte header")
    row, length = _check_header(bytes(data[:HEADER_SIZE]))
    if len(data) != HEADER_SIZE + length:
        raise RemoteProtocolError(
            f"a {row.cls.__name__} frame is {len(data)} bytes but its header says "
            f"{HEADER_SIZE + length}"
        )
    return _decode_payload(row, bytes(data[HEADER_SIZE:]))


class FrameDecoder(HeaderedStream[Message]):
    """Frames from a byte stream fed in pieces; any error kills it for good (every call raises)."""

    def __init__(self) -> None:
        super().__init__(
            header_size=HEADER_SIZE,
            body_length=_frame_length,
            decode=_decode_frame_body,
            failed="the frame stream already failed and cannot continue",
        )

    def next_frame(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        return self.next_message()


_BY_CLASS: Mapping[type[Message], MessageType] = {row.cls: row for row in MESSAGE_TYPES.values()}
_LIMITS: Mapping[int, Limits] = {
    row.code: Limits(
        max_total=row.max_payload,
        max_bytes=row.max_payload,
        max_text=row.max_payload,
        max_items=row.max_payload,
        max_depth=_MAX_DEPTH,
    )
    for row in MESSAGE_TYPES.values()
}


def _check_header(header: bytes) -> tuple[MessageType, int]:
    version, code, length = _HEADER.unpack(header)
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"the peer speaks wire protocol version {version}, this device speaks "
            f"{PROTOCOL_VERSION}: update albumsync on both devices"
        )
    row = MESSAGE_TYPES.get(code)
    if row is None:
        raise RemoteProtocolError(f"the peer sent a frame of unknown message type 0x{code:02x}")
    if length == 0:
        raise RemoteProtocolError(f"the peer sent an empty {row.cls.__name__} frame")
    if length > row.max_payload:
        raise RemoteProtocolError(
            f"the peer sent a {row.cls.__name__} frame claiming {length} bytes; "
            f"the limit is {row.max_payload}"
        )
    return row, length


def _frame_length(header: bytes) -> int:
    return _check_header(header)[1]


def _decode_frame_body(header: bytes, payload: bytes) -> Message:
    return _decode_payload(MESSAGE_TYPES[_HEADER.unpack(header)[1]], payload)


def _decode_payload(row: MessageType, payload: bytes) -> Message:
    value = decode(payload, _LIMITS[row.code])
    return row.cls.from_fields(Reader(value, row.cls.__name__))
