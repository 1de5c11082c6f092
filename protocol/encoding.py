"""Canonical binary encoding of everything albumsync signs, stores or sends.

Why our own format: signatures are computed over bytes, so one value must have exactly one encoding
(`encode(decode(b)) == b` for every accepted `b`), and the decoder faces untrusted peers, so every
length is bounded before anything is allocated. CBOR/msgpack libraries accept several encodings of one
value; this is a deliberately tiny subset with one.

Layout: one tag byte, then
    0x00 false   0x01 true   0x02 null
    0x03 unsigned integer      varint (LEB128, minimal, < 2**64)
    0x04 negative integer n    varint of (-1 - n)
    0x05 bytes                 varint length, raw bytes
    0x06 text                  varint length, UTF-8 (strict, no surrogates)
    0x07 list                  varint count, items
    0x08 map                   varint count, (text key, value) pairs with keys strictly increasing
                               by their UTF-8 bytes (so no duplicates)
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from protocol.errors import DecodeError, LocalProtocolError

# A recursive alias needs Union: `|` cannot combine with the string forward references at runtime.
Value = Union[None, bool, int, bytes, str, list["Value"], dict[str, "Value"]]  # noqa: UP007

_FALSE, _TRUE, _NULL, _UINT, _NINT, _BYTES, _TEXT, _LIST, _MAP = range(9)
_MAX_INT = 2**64 - 1
_MAX_VARINT_LEN = 10


@dataclass(frozen=True)
class Limits:
    """Bounds the decoder enforces before allocating; callers tighten them per message type."""

    max_total: int = 16 * 1024 * 1024
    max_bytes: int = 4 * 1024 * 1024
    max_text: int = 64 * 1024
    max_items: int = 100_000
    max_depth: int = 16


DEFAULT_LIMITS = Limits()


def encode(value: object) -> bytes:
    """Encode a value (None, bool, int, bytes, str, list/tuple, dict with str keys) canonically."""
    out = bytearray()
    _encode_into(out, value, 0)
    return bytes(out)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Value:
    """Decode exactly one canonical value that fills `data`; raise DecodeError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes to decode")
    if len(data) > limits.max_total:
        raise DecodeError(f"encoded value of {len(data)} bytes exceeds {limits.max_total}")
    decoder = _Decoder(bytes(data), limits)
    value = decoder.value(0)
    if decoder.pos != len(data):
        raise DecodeError(f"{len(data) - decoder.pos} trailing bytes after the value")
    return value


def encode_varint(n: int) -> bytes:
    if n < 0 or n > _MAX_INT:
        raise LocalProtocolError(f"an integer must be 0 to 2**64-1 to be encoded, not {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode_into(out: bytearray, value: object, depth: int) -> None:
    if depth > DEFAULT_LIMITS.max_depth:
        raise LocalProtocolError("value nests too deeply to encode")
    if value is None:
        out.append(_NULL)
    elif value is True:
        out.append(_TRUE)
    elif value is False:
        out.append(_FALSE)
    elif isinstance(value, int):
        _encode_int(out, value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(_BYTES)
        out += encode_varint(len(raw))
        out += raw
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_TEXT)
        out += encode_varint(len(raw))
        out += raw
    elif isinstance(value, (list, tuple)):
        out.append(_LIST)
        out += encode_varint(len(value))
        for item in value:
            _encode_into(out, item, depth + 1)
    elif isinstance(value, Mapping):
        _encode_map(out, value, depth)
    else:
        raise LocalProtocolError(f"cannot encode {type(value).__name__}")


def _encode_int(out: bytearray, value: int) -> None:
    if value >= 0:
        out.append(_UINT)
        out += encode_varint(value)
    else:
        out.append(_NINT)
        out += encode_varint(-1 - value)


def _encode_map(out: bytearray, value: Mapping[object, object], depth: int) -> None:
    items: list[tuple[bytes, object]] = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise LocalProtocolError("map keys must be str")
        items.append((key.encode("utf-8"), item))
    items.sort(key=lambda kv: kv[0])
    out.append(_MAP)
    out += encode_varint(len(items))
    for raw_key, item in items:
        out.append(_TEXT)
        out += encode_varint(len(raw_key))
        out += raw_key
        _encode_into(out, item, depth + 1)


class _Decoder:
    """One pass over `data`. The hot paths (tags, one-byte lengths, map keys) are inlined with
    locals: this decoder runs for every entry of every log and manifest a peer sends, and Python
    call overhead, not the work, was most of its cost."""

    __slots__ = ("data", "end", "limits", "pos")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.limits = limits

    def value(self, depth: int) -> Value:
        limits = self.limits
        if depth > limits.max_depth:
            raise DecodeError(f"value nests deeper than {limits.max_depth} levels")
        data, pos = self.data, self.pos
        if pos >= self.end:
            raise DecodeError("value ends early")
        tag = data[pos]
        self.pos = pos + 1
        if tag == _BYTES:
            return self._raw(limits.max_bytes, "byte string")
        if tag == _TEXT:
            try:
                return self._raw(limits.max_text, "text").decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise DecodeError("text is not valid UTF-8") from None
        if tag == _UINT:
            return self._varint()
        if tag == _MAP:
            return self._map(depth)
        if tag <= _NULL:
            return (False, True, None)[tag]
        if tag == _NINT:
            return -1 - self._varint()
        if tag == _LIST:
            count = self._count()
            return [self.value(depth + 1) for _ in range(count)]
        raise DecodeError(f"unknown value tag 0x{tag:02x}")

    def _varint(self) -> int:
        # Fast path: most integers and lengths fit one byte (< 0x80), which is always minimal
        # and in range; anything else takes the general loop below.
        data, pos = self.data, self.pos
        if pos < self.end and data[pos] < 0x80:
            self.pos = pos + 1
            return data[pos]
        result = 0
        for i in range(_MAX_VARINT_LEN):
            if pos >= self.end:
                raise DecodeError("value ends early")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise DecodeError("integer is not minimally encoded")
                if result > _MAX_INT:
                    raise DecodeError("integer exceeds 64 bits")
                self.pos = pos
                return result
        raise DecodeError("integer is longer than 10 bytes")

    def _count(self) -> int:
        count = self._varint()
        if count > self.limits.max_items:
            raise DecodeError(f"{count} items exceed the limit of {self.limits.max_items}")
        # Each item takes at least one byte: a count larger than what is left is a lie.
        if count > self.end - self.pos:
            raise DecodeError("item count exceeds the bytes that follow")
        return count

    def _raw(self, bound: int, what: str) -> bytes:
        data, pos = self.data, self.pos
        if pos < self.end and data[pos] < 0x80:
            length = data[pos]
            pos += 1
        else:
            length = self._varint()
            pos = self.pos
        if length > bound:
            raise DecodeError(f"{what} of {length} bytes exceeds the limit of {bound}")
        stop = pos + length
        if stop > self.end:
            raise DecodeError(f"{what} ends early")
        self.pos = stop
        return data[pos:stop]

    def _map(self, depth: int) -> dict[str, Value]:
        count = self._count()
        data, end, limits = self.data, self.end, self.limits
        max_bytes = limits.max_bytes
        inline = depth < limits.max_depth  # else value() must refuse the nesting
        result: dict[str, Value] = {}
        previous = b""
        for index in range(count):
            raw_key = self._key()
            if index and raw_key <= previous:
                raise DecodeError("map keys are not in strictly increasing order")
            previous = raw_key
            try:
                key = raw_key.decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise DecodeError("map key is not valid UTF-8") from None
            # Most values of a signed record are small integers and short byte strings (keys,
            # hashes, signatures): read those here rather than through value().
            pos = self.pos
            if inline and pos + 1 < end and data[pos + 1] < 0x80:
                tag = data[pos]
                if tag == _UINT:
                    self.pos = pos + 2
                    result[key] = data[pos + 1]
                    continue
                if tag == _BYTES and data[pos + 1] <= max_bytes:
                    stop = pos + 2 + data[pos + 1]
                    if stop > end:
                        raise DecodeError("byte string ends early")
                    self.pos = stop
                    result[key] = data[pos + 2 : stop]
                    continue
            result[key] = self.value(depth + 1)
        return result

    def _key(self) -> bytes:
        data, pos = self.data, self.pos
        if pos >= self.end:
            raise DecodeError("value ends early")
        if data[pos] != _TEXT:
            raise DecodeError("map keys must be text")
        self.pos = pos + 1
        return self._raw(self.limits.max_text, "map key")


class Reader:
    """Typed, bounded access to a decoded map; every miss is a DecodeError naming the field.

    Call `finish()` last: unknown fields are refused so that one value has one meaning.
    """

    def __init__(self, value: Value, what: str) -> None:
        if not isinstance(value, dict):
            raise DecodeError(f"{what}: expected a map")
        self._fields = value
        self._seen: set[str] = set()
        self.what = what

    def has(self, key: str) -> bool:
        return key in self._fields

    def raw(self, key: str) -> Value:
        if key not in self._fields:
            raise DecodeError(f"{self.what}: field '{key}' is missing")
        self._seen.add(key)
        return self._fields[key]

    def bytes(self, key: str, *, size: int | None = None, max_len: int | None = None) -> bytes:
        value = self.raw(key)
        if not isinstance(value, bytes):
            raise DecodeError(f"{self.what}: field '{key}' must be bytes")
        if size is not None and len(value) != size:
            raise DecodeError(f"{self.what}: field '{key}' must be {size} bytes, not {len(value)}")
        if max_len is not None and len(value) > max_len:
            raise DecodeError(f"{self.what}: field '{key}' is longer than {max_len} bytes")
        return value

    def int(self, key: str, *, lo: int = 0, hi: int = _MAX_INT) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(f"{self.what}: field '{key}' must be an integer")
        if not lo <= value <= hi:
            raise DecodeError(f"{self.what}: field '{key}' = {value} is outside [{lo}, {hi}]")
        return value

    def text(self, key: str, *, max_len: builtins.int) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise DecodeError(f"{self.what}: field '{key}' must be text")
        if len(value) > max_len:
            raise DecodeError(f"{self.what}: field '{key}' is longer than {max_len} characters")
        return value

    def bool(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise DecodeError(f"{self.what}: field '{key}' must be true or false")
        return value

    def list(self, key: str, *, max_items: builtins.int) -> Sequence[Value]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise DecodeError(f"{self.what}: field '{key}' must be a list")
        if len(value) > max_items:
            raise DecodeError(f"{self.what}: field '{key}' has more than {max_items} items")
        return value

    def map(self, key: str) -> Reader:
        return Reader(self.raw(key), f"{self.what}.{key}")

    def optional(self, key: str) -> Value:
        """The field's value, or None when absent; an explicit null is refused (one encoding)."""
        if key not in self._fields:
            return None
        value = self.raw(key)
        if value is None:
            raise DecodeError(f"{self.what}: field '{key}' is null; omit it instead")
        return value

    def finish(self) -> None:
        unknown = set(self._fields) - self._seen
        if unknown:
            raise DecodeError(f"{self.what}: unknown field(s) {', '.join(sorted(unknown))}")
