"""The messages two albumsync peers exchange, and the bound every field of them keeps.

Each message is a frozen dataclass whose fields carry their wire rule in `Annotated[type, Rule]`.
One generic mechanism reads those rules: constructing a message checks them (LocalProtocolError: a
bug on our side), `to_fields()` turns it into the map that `protocol.frames` encodes, and
`from_fields(reader)` checks the same rules on a peer's map (DecodeError). Every field is always
present and unknown fields are refused, so a message has exactly one encoding. Adding a message is one
dataclass here plus one line in the table of `protocol.frames`.

Log entries, statements, manifest entries and chunks are opaque bytes here: their own modules verify
them. Lists are tuples, so messages are hashable and compare by value.
"""

from __future__ import annotations

import abc
import enum
import typing
import unicodedata
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Annotated, Any, Self

from protocol.encoding import Reader, Value, encode_varint
from protocol.errors import DecodeError, LocalProtocolError
from protocol.statements import MAX_SEQ, MAX_STATEMENT_BYTES

ID_SIZE = 32  # album IDs, author keys and chunk IDs (SHA-256 of the ciphertext)
INVITE_ID_SIZE = 16
INVITE_PROOF_SIZE = 32
MAX_VERSION = 255  # the frame header carries the version in one byte
MAX_DEVICE_NAME_CHARS = 64
MAX_CLOSE_MESSAGE_CHARS = 256
MAX_ALBUMS = 1000
MAX_BATCH_ITEMS = 1000  # entries, statements or heads in one message; a longer answer is split
MAX_WIRE_ENTRY = (
    1024 * 1024 + 2048
)  # one signed entry as it travels: the largest membership or manifest envelope
MAX_CHUNK_CIPHERTEXT = 256 * 1024 + 16  # a CHUNK_SIZE chunk plus its AES-GCM tag
MAX_REQUEST_ID = 2**32 - 1
MAX_MILLIS = 2**63 - 1


class ErrorCode(enum.IntEnum):
    """Why a peer closes the session or cannot serve a request; meanings in ERROR_MEANINGS."""

    NORMAL = 0
    GENERIC = 1
    PROTOCOL = 2
    VERSION = 3
    NO_SHARED_ALBUM = 4
    NOT_FOUND = 5
    NOT_ALLOWED = 6
    BUSY = 7
    SHUTTING_DOWN = 8
    INVITE_INVALID = 9
    TIMEOUT = 10
    DUPLICATE = 11

    @property
    def meaning(self) -> str:
        """The sentence a person reads for this code."""
        return ERROR_MEANINGS[self]


ERROR_MEANINGS: Mapping[ErrorCode, str] = MappingProxyType(
    {
        ErrorCode.NORMAL: "the peer closed the connection normally",
        ErrorCode.GENERIC: "the peer hit an unexpected error; its log says more",
        ErrorCode.PROTOCOL: "the peer received bytes that break the wire rules",
        ErrorCode.VERSION: "the peer speaks another protocol version; update albumsync on both devices",
        ErrorCode.NO_SHARED_ALBUM: "the peer shares no album with this device and holds no invite",
        ErrorCode.NOT_FOUND: "the peer does not have the requested data",
        ErrorCode.NOT_ALLOWED: "the peer may not give this device the requested data",
        ErrorCode.BUSY: "the peer is busy; the request can be retried later",
        ErrorCode.SHUTTING_DOWN: "the peer is shutting down",
        ErrorCode.INVITE_INVALID: "the invite is unknown, already used, revoked or expired",
        ErrorCode.TIMEOUT: "the peer stopped answering in time",
        ErrorCode.DUPLICATE: "the peer is already connected to this device",
    }
)


class Record:
    """Base of every message and nested record: bounds checked on construction, generic codec."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for name, rule in field_rules(type(self)):
            why = rule.problem(getattr(self, name))
            if why is not None:
                raise LocalProtocolError(f"cannot send {type(self).__name__}: {_join(name, why)}")

    def to_fields(self) -> dict[str, Value]:
        """The map of wire values that `encoding.encode` turns into this record's payload."""
        return {name: rule.to_wire(getattr(self, name)) for name, rule in field_rules(type(self))}

    @classmethod
    def from_fields(cls, r: Reader) -> Self:
        """The record a peer's map describes; DecodeError naming the first field that breaks a rule."""
        values = {
            name: rule.from_wire(r.raw(name), f"{r.what}.{name}") for name, rule in field_rules(cls)
        }
        r.finish()
        return typing.cast(Callable[..., Self], cls)(**values)


class Message(Record):
    """Base of the messages a frame carries (see `protocol.frames.MESSAGE_TYPES`)."""

    __slots__ = ()


class Rule(abc.ABC):
    """How one field is checked, put on the wire, read back, and how large it can encode."""

    @abc.abstractmethod
    def problem(self, value: object) -> str | None:
        """Why `value` breaks this rule (a phrase following the field's name), or None."""

    @abc.abstractmethod
    def max_size(self) -> int:
        """The most bytes a value obeying this rule takes in the canonical encoding."""

    def to_wire(self, value: Any) -> Value:
        """The encoding value for `value` (already checked)."""
        return typing.cast(Value, value)

    def from_wire(self, raw: Value, what: str) -> object:
        """The field value a peer sent as `raw`; DecodeError if it breaks the rule."""
        why = self.problem(raw)
        if why is not None:
            raise DecodeError(_join(what, why))
        return raw


@dataclass(frozen=True)
class Int(Rule):
    """A non-negative integer in [lo, hi]."""

    hi: int
    lo: int = 0

    def problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if not self.lo <= value <= self.hi:
            return f"= {value} is outside [{self.lo}, {self.hi}]"
        return None

    def max_size(self) -> int:
        return 1 + len(encode_varint(self.hi))


@dataclass(frozen=True)
class Fixed(Rule):
    """Bytes of exactly `size` (keys, IDs, proofs)."""

    size: int

    def problem(self, value: object) -> str | None:
        if not isinstance(value, bytes):
            return "must be bytes"
        if len(value) != self.size:
            return f"must be {self.size} bytes, not {len(value)}"
        return None

    def max_size(self) -> int:
        return 1 + len(encode_varint(self.size)) + self.size


@dataclass(frozen=True)
class Blob(Rule):
    """Opaque bytes of 1 to `max_len` bytes (entries, chunks): their own module verifies them."""

    max_len: int

    def problem(self, value: object) -> str | None:
        if not isinstance(value, bytes):
            return "must be bytes"
        if not value:
            return "must not be empty"
        if len(value) > self.max_len:
            return f"is {len(value)} bytes, longer than {self.max_len}"
        return None

    def max_size(self) -> int:
        return 1 + len(encode_varint(self.max_len)) + self.max_len


@dataclass(frozen=True)
class Text(Rule):
    """One line of text of at most `max_chars` characters, without control characters."""

    max_chars: int

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return "must be text"
        if len(value) > self.max_chars:
            return f"is longer than {self.max_chars} characters"
        # Names and messages are shown to people: no newlines, escapes or lone surrogates.
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
            return "contains control characters"
        return None

    def max_size(self) -> int:
        max_bytes = 4 * self.max_chars  # UTF-8 takes at most 4 bytes per character
        return 1 + len(encode_varint(max_bytes)) + max_bytes


@dataclass(frozen=True)
class Code(Rule):
    """A member of an IntEnum table (ErrorCode); an unknown number is refused."""

    table: type[enum.IntEnum]

    def problem(self, value: object) -> str | None:
        if not isinstance(value, self.table):
            return f"must be one of the {self.table.__name__} codes"
        return None

    def max_size(self) -> int:
        return 1 + len(encode_varint(max(self.table)))

    def to_wire(self, value: Any) -> Value:
        return int(value)

    def from_wire(self, raw: Value, what: str) -> object:
        if isinstance(raw, int) and not isinstance(raw, bool):
            try:
                return self.table(raw)
            except ValueError:
                raise DecodeError(f"{what} = {raw} is not a known {self.table.__name__}") from None
        raise DecodeError(f"{what} must be an integer")


@dataclass(frozen=True)
class Nested(Rule):
    """A Record (such as Head) encoded as a map inside a message."""

    cls: type[Record]

    def problem(self, value: object) -> str | None:
        # The record checked its own fields when it was constructed.
        return None if isinstance(value, self.cls) else f"must be a {self.cls.__name__}"

    def max_size(self) -> int:
        rules = field_rules(self.cls)
        size = 1 + len(encode_varint(len(rules)))
        for name, rule in rules:
            key = name.encode("utf-8")
            size += 1 + len(encode_varint(len(key))) + len(key) + rule.max_size()
        return size

    def to_wire(self, value: Any) -> Value:
        return typing.cast(Record, value).to_fields()

    def from_wire(self, raw: Value, what: str) -> object:
        return self.cls.from_fields(Reader(raw, what))


@dataclass(frozen=True)
class ListOf(Rule):
    """A tuple of at most `max_items` items obeying `item`; `distinct_by` refuses repeats."""

    item: Rule
    max_items: int
    distinct_by: Callable[[Any], Hashable] | None = None

    def problem(self, value: object) -> str | None:
        if not isinstance(value, tuple):
            return "must be a tuple"
        if len(value) > self.max_items:
            return f"has {len(value)} items, more than {self.max_items}"
        for i, item in enumerate(value):
            why = self.item.problem(item)
            if why is not None:
                return f"[{i}] {why}"
        return self._repeat(value)

    def max_size(self) -> int:
        return 1 + len(encode_varint(self.max_items)) + self.max_items * self.item.max_size()

    def to_wire(self, value: Any) -> Value:
        return [self.item.to_wire(item) for item in value]

    def from_wire(self, raw: Value, what: str) -> object:
        if not isinstance(raw, list):
            raise DecodeError(f"{what} must be a list")
        if len(raw) > self.max_items:
            raise DecodeError(f"{what} has {len(raw)} items, more than {self.max_items}")
        items = tuple(self.item.from_wire(item, f"{what}[{i}]") for i, item in enumerate(raw))
        why = self._repeat(items)
        if why is not None:
            raise DecodeError(_join(what, why))
        return items

    def _repeat(self, items: tuple[object, ...]) -> str | None:
        if self.distinct_by is None:
            return None
        seen: set[Hashable] = set()
        for i, item in enumerate(items):
            key = self.distinct_by(item)
            if key in seen:
                return f"[{i}] repeats an earlier item"
            seen.add(key)
        return None


def field_rules(cls: type[Record]) -> tuple[tuple[str, Rule], ...]:
    """The (name, rule) of each field of a Record class, in declaration order."""
    rules = _RULES.get(cls)
    if rules is None:
        rules = _RULES[cls] = _read_rules(cls)
    return rules


@dataclass(frozen=True, kw_only=True, slots=True)
class Head(Record):
    """The latest manifest sequence number this device holds for one author."""

    author: Annotated[bytes, Fixed(ID_SIZE)]
    seq: _Seq


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello(Message):
    """First message each way: who we are and which albums we hold."""

    version: Annotated[int, Int(lo=1, hi=MAX_VERSION)]
    device_name: Annotated[str, Text(MAX_DEVICE_NAME_CHARS)]
    albums: Annotated[tuple[bytes, ...], ListOf(Fixed(ID_SIZE), MAX_ALBUMS, _itself)]


@dataclass(frozen=True, kw_only=True, slots=True)
class LogRequest(Message):
    """Ask for an album's membership-log entries after position `after_seq` (0: from genesis)."""

    album: _AlbumId
    after_seq: _Seq


@dataclass(frozen=True, kw_only=True, slots=True)
class LogEntries(Message):
    """Membership-log entries, in log order, as their signed envelopes."""

    album: _AlbumId
    entries: _Entries


@dataclass(frozen=True, kw_only=True, slots=True)
class Statements(Message):
    """Members' signed statements (accept, decline, leave) for gossip."""

    album: _AlbumId
    statements: Annotated[tuple[bytes, ...], ListOf(Blob(MAX_STATEMENT_BYTES), MAX_BATCH_ITEMS)]


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestHeads(Message):
    """The latest manifest sequence number held per author, one head per author."""

    album: _AlbumId
    heads: Annotated[tuple[Head, ...], ListOf(Nested(Head), MAX_BATCH_ITEMS, _author)]


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestRequest(Message):
    """Ask for at most `limit` of one author's manifest entries after `after_seq`."""

    album: _AlbumId
    author: Annotated[bytes, Fixed(ID_SIZE)]
    after_seq: _Seq
    limit: Annotated[int, Int(lo=1, hi=MAX_BATCH_ITEMS)]


@dataclass(frozen=True, kw_only=True, slots=True)
class ManifestEntries(Message):
    """Manifest entries as their signed envelopes, each author's in sequence order."""

    album: _AlbumId
    entries: _Entries


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkRequest(Message):
    """Ask for one chunk by its ID; `size` is the ciphertext size the manifest promises."""

    request_id: _RequestId
    album: _AlbumId
    chunk_id: Annotated[bytes, Fixed(ID_SIZE)]
    size: Annotated[int, Int(lo=1, hi=MAX_CHUNK_CIPHERTEXT)]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkData(Message):
    """The ciphertext of a requested chunk; the receiver checks its SHA-256 before using it."""

    request_id: _RequestId
    data: Annotated[bytes, Blob(MAX_CHUNK_CIPHERTEXT)]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkMissing(Message):
    """A chunk request that cannot be served, and why."""

    request_id: _RequestId
    code: Annotated[ErrorCode, Code(ErrorCode)]


@dataclass(frozen=True, kw_only=True, slots=True)
class InviteRedeem(Message):
    """An invitee proves it holds the invite code `invite_id` was made from."""

    invite_id: Annotated[bytes, Fixed(INVITE_ID_SIZE)]
    proof: Annotated[bytes, Fixed(INVITE_PROOF_SIZE)]


@dataclass(frozen=True, kw_only=True, slots=True)
class InviteOffer(Message):
    """The owner's answer to a valid redeem: the signed invite entry for the invitee."""

    album: _AlbumId
    entry: Annotated[bytes, Blob(MAX_WIRE_ENTRY)]


@dataclass(frozen=True, kw_only=True, slots=True)
class Ping(Message):
    """Keepalive; the peer answers with a Pong carrying the same `sent_at` (ms, sender's clock)."""

    sent_at: _Millis


@dataclass(frozen=True, kw_only=True, slots=True)
class Pong(Message):
    """The answer to a Ping, echoing its `sent_at`."""

    sent_at: _Millis


@dataclass(frozen=True, kw_only=True, slots=True)
class Close(Message):
    """The last message of a session: a code from ErrorCode and a sentence for the log."""

    code: Annotated[ErrorCode, Code(ErrorCode)]
    message: Annotated[str, Text(MAX_CLOSE_MESSAGE_CHARS)]


def _itself(item: object) -> Hashable:
    return item


def _author(head: object) -> Hashable:
    return typing.cast(Head, head).author


_RULES: dict[type[Record], tuple[tuple[str, Rule], ...]] = {}


def _read_rules(cls: type[Record]) -> tuple[tuple[str, Rule], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    rules: list[tuple[str, Rule]] = []
    for f in fields(typing.cast(Any, cls)):
        found = [m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Rule)]
        if len(found) != 1:
            raise TypeError(f"{cls.__name__}.{f.name} needs exactly one wire Rule in Annotated[]")
        rules.append((f.name, found[0]))
    return tuple(rules)


def _join(what: str, why: str) -> str:
    # An item's problem starts with its index: "albums[3] must be ...", not "albums [3] ...".
    return f"{what}{why}" if why.startswith("[") else f"{what} {why}"


# Field types that several messages share.
_AlbumId = Annotated[bytes, Fixed(ID_SIZE)]
_Seq = Annotated[int, Int(hi=MAX_SEQ)]
_RequestId = Annotated[int, Int(hi=MAX_REQUEST_ID)]
_Millis = Annotated[int, Int(hi=MAX_MILLIS)]
_Entries = Annotated[tuple[bytes, ...], ListOf(Blob(MAX_WIRE_ENTRY), MAX_BATCH_ITEMS)]
