"""Syncthing relay protocol v1, client side: the wire messages, their codec, and relay URIs.

Every message is a 12-byte header and an XDR body (big-endian; `opaque` and `string` are a 4-byte
length, the bytes, zero padding to a multiple of 4; an int, a bool and a uint16 are 4 bytes each):

    uint32 magic 0x9E79BC40 | int32 message type | int32 body length | body

The facts follow Syncthing's code where its spec differs (lib/relay/protocol/packets.go; see
research/relay-discovery.md §1): `JoinRelayRequest` carries a token string (relays before v1.22.1
ignore it, and an empty body means an empty token), response codes 0-3 and 100, the port is a uint16
in a 4-byte word. A header is judged the moment its 12 bytes arrive: wrong magic, unknown type, or a
length below zero or above MAX_MESSAGE_LENGTH (the bound Syncthing's relay enforces) ends the stream
before any body is buffered (TESTPLAN N4). Bodies are canonical: exact field sizes, zero padding,
bools 0 or 1, no trailing bytes, so `encode_message(decode_message(b)) == b` for every accepted `b`
except the legacy empty `JoinRelayRequest`. Relay URIs (`relay://host:port/?id=DEVICE-ID&token=T`)
must pin the relay's device ID; other query keys (strelaysrv prints pingInterval, networkTimeout…)
are tolerated and dropped, as Syncthing does.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.errors import DecodeError, LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.ids import ID_SIZE, DeviceId
from protocol.stream import HeaderedStream

MAGIC = 0x9E79BC40
HEADER_SIZE = 12
MAX_MESSAGE_LENGTH = 1024  # body bytes; Syncthing's relay refuses more (GHSA-x462-89pf-6r5h)
MAX_OPAQUE_SIZE = 32  # every opaque field of the protocol is declared <32>
SESSION_KEY_SIZE = 32
MAX_TOKEN_SIZE = 512  # UTF-8 bytes of a relay token; strelaysrv's are short passwords
MAX_ADDRESS_SIZE = 16  # an IPv6 (or IPv4-mapped) address
ALPN_PROTOCOL = "bep-relay"
SCHEME = "relay"
MAX_URI_LENGTH = 2048  # characters of a relay URI; strelaysrv prints about 250
MAX_HOST_LENGTH = 253  # a DNS name
MAX_QUERY_FIELDS = 32

Bytes = bytes | bytearray | memoryview


class MessageType(enum.IntEnum):
    """The message type numbers of relay protocol v1."""

    PING = 0
    PONG = 1
    JOIN_RELAY_REQUEST = 2
    JOIN_SESSION_REQUEST = 3
    RESPONSE = 4
    CONNECT_REQUEST = 5
    SESSION_INVITATION = 6
    RELAY_FULL = 7


class ResponseCode(enum.IntEnum):
    """The response codes strelaysrv sends (Response.code may carry any int32)."""

    SUCCESS = 0
    NOT_FOUND = 1
    ALREADY_CONNECTED = 2
    WRONG_TOKEN = 3
    UNEXPECTED_MESSAGE = 100


@dataclass(frozen=True)
class Ping:
    """Either side: are you there? Answered with Pong."""


@dataclass(frozen=True)
class Pong:
    """The answer to a Ping."""


@dataclass(frozen=True)
class RelayFull:
    """Relay to client: over its connection limit; it closes the connection."""


@dataclass(frozen=True, kw_only=True)
class JoinRelayRequest:
    """Client to relay, protocol mode: keep me connected and send me session invitations."""

    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _local(_token_problem(self.token))


@dataclass(frozen=True, kw_only=True)
class JoinSessionRequest:
    """Client to relay, session mode (plain TCP): join the session this invitation key names."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _local(_key_problem(self.key))


@dataclass(frozen=True, kw_only=True)
class Response:
    """Relay to client: the outcome of a join or connect request."""

    code: int
    message: str

    def __post_init__(self) -> None:
        _local(_response_problem(self.code, self.message))

    @property
    def ok(self) -> bool:
        return self.code == ResponseCode.SUCCESS


@dataclass(frozen=True, kw_only=True)
class ConnectRequest:
    """Client to relay, a temporary protocol connection: invite me to a session with this device."""

    device_id: DeviceId


@dataclass(frozen=True, kw_only=True)
class SessionInvitation:
    """Relay to both peers: join session `key` at address:port to reach `from_device`.

    `server_socket` is True on the side that was listening (joined) and False on the side that
    sent the ConnectRequest. An empty or unspecified `address`, or port 0, means "the relay you
    are talking to" (strelaysrv sends those when its advertised address has no host, or port 0).
    """

    from_device: DeviceId
    key: bytes = field(repr=False)
    address: bytes
    port: int
    server_socket: bool

    def __post_init__(self) -> None:
        _local(_key_problem(self.key) or _address_problem(self.address) or _port_problem(self.port))

    def session_address(self, relay_host: str, relay_port: int) -> tuple[str, int]:
        """Where to open the session connection, given the relay's own host and port."""
        host = relay_host
        if self.address:
            ip = ipaddress.ip_address(self.address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_unspecified:
                host = str(ip)
        return host, self.port or relay_port


RelayMessage = (
    Ping
    | Pong
    | JoinRelayRequest
    | JoinSessionRequest
    | Response
    | ConnectRequest
    | SessionInvitation
    | RelayFull
)


@dataclass(frozen=True)
class Header:
    """A checked message header: its type, and how many body bytes follow."""

    message_type: MessageType
    length: int


def encode_message(message: RelayMessage) -> bytes:
    """The header and body of `message`, ready to write."""
    message_type, body = _encode_body(message)
    return _HEADER.pack(MAGIC, message_type, len(body)) + body


def parse_header(data: Bytes) -> Header:
    """The checked 12-byte header `data`; RemoteProtocolError for bad magic, type or length."""
    if len(data) != HEADER_SIZE:
        raise LocalProtocolError(f"a relay message header is {HEADER_SIZE} bytes, not {len(data)}")
    magic, type_code, length = _HEADER.unpack(bytes(data))
    if magic != MAGIC:
        raise RemoteProtocolError(
            f"the relay sent a message with magic 0x{magic:08x}, not 0x{MAGIC:08x}: "
            "it does not speak Syncthing relay protocol v1 (check the relay URI's port)"
        )
    if type_code not in _MESSAGE_TYPES:
        raise RemoteProtocolError(f"the relay sent a message of unknown type {type_code}")
    if length < 0 or length > MAX_MESSAGE_LENGTH:
        raise RemoteProtocolError(
            f"the relay sent a {_name(MessageType(type_code))} claiming {length} body bytes; "
            f"relay messages have 0 to {MAX_MESSAGE_LENGTH}"
        )
    return Header(MessageType(type_code), length)


def decode_message(data: Bytes) -> RelayMessage:
    """The message in exactly one complete header and body; RemoteProtocolError otherwise."""
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(
            f"a relay message of {len(data)} bytes ends inside its {HEADER_SIZE}-byte header"
        )
    header = parse_header(data[:HEADER_SIZE])
    if len(data) != HEADER_SIZE + header.length:
        raise RemoteProtocolError(
            f"a relay {_name(header.message_type)} is {len(data)} bytes but its header says "
            f"{HEADER_SIZE + header.length}"
        )
    return decode_body(header, bytes(data[HEADER_SIZE:]))


def decode_body(header: Header, body: Bytes) -> RelayMessage:
    """The message a checked header and its body make; DecodeError if the body is not canonical."""
    if len(body) != header.length:
        raise LocalProtocolError(
            f"the header announces {header.length} body bytes, not {len(body)}"
        )
    decoder = _DECODERS[header.message_type]
    return decoder(_XdrReader(bytes(body), _name(header.message_type)))


class RelayDecoder(HeaderedStream[RelayMessage]):
    """Relay messages from a byte stream fed in pieces; any error kills it (every call raises)."""

    def __init__(self) -> None:
        super().__init__(
            header_size=HEADER_SIZE,
            body_length=lambda header: parse_header(header).length,
            decode=lambda header, body: decode_body(parse_header(header), body),
            failed="the relay message stream already failed",
        )


@dataclass(frozen=True, kw_only=True)
class RelayUri:
    """A relay to join: where it is, the device ID its certificate must have, its token if any."""

    host: str  # a DNS name or an IP address, without brackets
    port: int
    device_id: DeviceId
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _local(_host_problem(self.host) or _port_problem(self.port) or _token_problem(self.token))
        if self.port == 0:
            raise LocalProtocolError("a relay URI needs a port from 1 to 65535")

    @classmethod
    def parse(cls, text: str) -> RelayUri:
        """Read a relay URI a person pasted or an invite carried; DecodeError says what is wrong."""
        return _parse_relay_uri(text)

    @property
    def address(self) -> str:
        """host:port, with brackets around an IPv6 address."""
        return f"{_bracket(self.host)}:{self.port}"

    @property
    def public(self) -> str:
        """The URI without its token: safe to show, log or announce."""
        return f"{SCHEME}://{self.address}/?id={self.device_id}"

    def __str__(self) -> str:
        if not self.token:
            return self.public
        return self.public + "&token=" + urllib.parse.quote(self.token, safe="")


# --- private helpers -------------------------------------------------------------------------

_HEADER = struct.Struct(">Iii")
_WORD = struct.Struct(">I")
_MESSAGE_TYPES = frozenset(int(t) for t in MessageType)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _name(message_type: MessageType) -> str:
    """The message's name as the spec writes it: SESSION_INVITATION -> SessionInvitation."""
    return message_type.name.title().replace("_", "")


def _encode_body(message: RelayMessage) -> tuple[MessageType, bytes]:
    match message:
        case Ping():
            return MessageType.PING, b""
        case Pong():
            return MessageType.PONG, b""
        case RelayFull():
            return MessageType.RELAY_FULL, b""
        case JoinRelayRequest(token=token):
            return MessageType.JOIN_RELAY_REQUEST, _opaque(token.encode())
        case JoinSessionRequest(key=key):
            return MessageType.JOIN_SESSION_REQUEST, _opaque(key)
        case Response(code=code, message=text):
            return MessageType.RESPONSE, struct.pack(">i", code) + _opaque(text.encode())
        case ConnectRequest(device_id=device_id):
            return MessageType.CONNECT_REQUEST, _opaque(device_id.raw)
        case SessionInvitation():
            return MessageType.SESSION_INVITATION, _invitation_body(message)
    raise LocalProtocolError(f"{type(message).__name__} is not a relay message")


def _invitation_body(message: SessionInvitation) -> bytes:
    return b"".join(
        [
            _opaque(message.from_device.raw),
            _opaque(message.key),
            _opaque(message.address),
            _WORD.pack(message.port),
            _WORD.pack(int(message.server_socket)),
        ]
    )


def _opaque(data: bytes) -> bytes:
    return _WORD.pack(len(data)) + data + b"\0" * (-len(data) % 4)


class _XdrReader:
    """Bounded, canonical reads of one message body; DecodeError names the message and field."""

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._pos = 0
        self._what = what

    @property
    def empty(self) -> bool:
        return not self._body

    def word(self, name: str) -> int:
        if self._pos + 4 > len(self._body):
            raise self.error(f"it ends before its {name} field")
        (value,) = _WORD.unpack_from(self._body, self._pos)
        self._pos += 4
        return int(value)

    def int32(self, name: str) -> int:
        value = self.word(name)
        return value - 2**32 if value > _INT32_MAX else value

    def uint16(self, name: str) -> int:
        value = self.word(name)
        if value > 0xFFFF:
            raise self.error(f"its {name} {value} does not fit 16 bits")
        return value

    def bool(self, name: str) -> bool:
        value = self.word(name)
        if value not in (0, 1):
            raise self.error(f"its {name} is {value}, and a bool is 0 or 1")
        return value == 1

    def opaque(self, name: str, max_size: int) -> bytes:
        size = self.word(f"{name} length")
        if size > max_size:
            raise self.error(f"its {name} is {size} bytes, more than the {max_size} allowed")
        padded = size + (-size % 4)
        if self._pos + padded > len(self._body):
            raise self.error(f"it ends inside its {name}")
        data = self._body[self._pos : self._pos + size]
        if any(self._body[self._pos + size : self._pos + padded]):
            raise self.error(f"the padding after its {name} is not zero")
        self._pos += padded
        return data

    def text(self, name: str, max_size: int) -> str:
        try:
            return self.opaque(name, max_size).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"its {name} is not UTF-8") from None

    def finish(self) -> None:
        if self._pos != len(self._body):
            raise self.error(f"{len(self._body) - self._pos} bytes follow its last field")

    def check(self, problem: str | None) -> None:
        if problem is not None:
            raise self.error(problem)

    def error(self, why: str) -> DecodeError:
        return DecodeError(f"the relay sent a malformed {self._what}: {why}")


def _decode_empty(factory: Callable[[], RelayMessage]) -> Callable[[_XdrReader], RelayMessage]:
    def decode(reader: _XdrReader) -> RelayMessage:
        reader.finish()
        return factory()

    return decode


def _decode_join_relay(reader: _XdrReader) -> RelayMessage:
    if reader.empty:  # clients before v1.22.1 send no token field at all
        return JoinRelayRequest()
    token = reader.text("token", MAX_MESSAGE_LENGTH)
    reader.finish()
    reader.check(_token_problem(token))
    return JoinRelayRequest(token=token)


def _decode_join_session(reader: _XdrReader) -> RelayMessage:
    key = reader.opaque("key", MAX_OPAQUE_SIZE)
    reader.finish()
    reader.check(_key_problem(key))
    return JoinSessionRequest(key=key)


def _decode_response(reader: _XdrReader) -> RelayMessage:
    code = reader.int32("code")
    text = reader.text("message", MAX_MESSAGE_LENGTH)
    reader.finish()
    return Response(code=code, message=text)


def _decode_connect(reader: _XdrReader) -> RelayMessage:
    raw = reader.opaque("device ID", MAX_OPAQUE_SIZE)
    reader.finish()
    reader.check(_device_id_problem(raw))
    return ConnectRequest(device_id=DeviceId(raw))


def _decode_invitation(reader: _XdrReader) -> RelayMessage:
    raw = reader.opaque("from", MAX_OPAQUE_SIZE)
    key = reader.opaque("key", MAX_OPAQUE_SIZE)
    address = reader.opaque("address", MAX_OPAQUE_SIZE)
    port = reader.uint16("port")
    server_socket = reader.bool("server socket flag")
    reader.finish()
    reader.check(_device_id_problem(raw) or _key_problem(key) or _address_problem(address))
    return SessionInvitation(
        from_device=DeviceId(raw), key=key, address=address, port=port, server_socket=server_socket
    )


_DECODERS: dict[MessageType, Callable[[_XdrReader], RelayMessage]] = {
    MessageType.PING: _decode_empty(Ping),
    MessageType.PONG: _decode_empty(Pong),
    MessageType.RELAY_FULL: _decode_empty(RelayFull),
    MessageType.JOIN_RELAY_REQUEST: _decode_join_relay,
    MessageType.JOIN_SESSION_REQUEST: _decode_join_session,
    MessageType.RESPONSE: _decode_response,
    MessageType.CONNECT_REQUEST: _decode_connect,
    MessageType.SESSION_INVITATION: _decode_invitation,
}


def _local(problem: str | None) -> None:
    if problem is not None:
        raise LocalProtocolError(problem)


def _token_problem(token: str) -> str | None:
    size = _utf8_size(token)
    if size is None:
        return "a relay token must be valid Unicode text"
    if size > MAX_TOKEN_SIZE:
        return f"a relay token is at most {MAX_TOKEN_SIZE} bytes, not {size}"
    if any(unicodedata.category(char).startswith("C") for char in token):
        return "a relay token may not contain control characters"
    return None


def _key_problem(key: bytes) -> str | None:
    if len(key) != SESSION_KEY_SIZE:
        return f"a session key is {SESSION_KEY_SIZE} bytes, not {len(key)}"
    return None


def _device_id_problem(raw: bytes) -> str | None:
    if len(raw) != ID_SIZE:
        return f"a device ID is {ID_SIZE} bytes, not {len(raw)}"
    return None


def _address_problem(address: bytes) -> str | None:
    if len(address) not in (0, 4, MAX_ADDRESS_SIZE):
        return f"an address is empty, 4 or 16 bytes, not {len(address)}"
    return None


def _port_problem(port: int) -> str | None:
    if not 0 <= port <= 0xFFFF:
        return f"a port is 0 to 65535, not {port}"
    return None


def _response_problem(code: int, message: str) -> str | None:
    if not _INT32_MIN <= code <= _INT32_MAX:
        return f"a response code is a 32-bit signed integer, not {code}"
    size = _utf8_size(message)
    if size is None or size > MAX_MESSAGE_LENGTH - 8:
        return f"a response message is valid Unicode text of at most {MAX_MESSAGE_LENGTH - 8} bytes"
    return None


def _utf8_size(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return None


def _host_problem(host: str) -> str | None:
    if _ip_or_none(host) is not None:
        return None
    if len(host) > MAX_HOST_LENGTH or not all(
        _HOST_LABEL.fullmatch(label) for label in host.rstrip(".").split(".")
    ):
        return f"{host!r} is neither an IP address nor a host name"
    return None


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_relay_uri(text: str) -> RelayUri:
    if len(text) > MAX_URI_LENGTH:
        raise DecodeError(f"a relay URI is at most {MAX_URI_LENGTH} characters, not {len(text)}")
    text = text.strip()
    if not text.isascii() or not text.isprintable() or " " in text:
        raise DecodeError("a relay URI is one line of ASCII without spaces: check what was copied")
    try:
        parts = urllib.parse.urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise DecodeError(f"this relay URI cannot be read ({err}): expected {_EXAMPLE}") from None
    if parts.scheme.lower() != SCHEME:
        raise DecodeError(f"a relay URI starts with {SCHEME}://, as in {_EXAMPLE}")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise DecodeError(f"a relay URI has no user name, password or #fragment: {_EXAMPLE}")
    if parts.path not in ("", "/"):
        raise DecodeError(f"a relay URI has no path after the port: {_EXAMPLE}")
    if not host:
        raise DecodeError(
            "the relay URI has no host: strelaysrv prints relay://:PORT/… when it listens on "
            "every interface; put the relay's address or name before the port"
        )
    if not port:
        raise DecodeError(f"the relay URI needs a port (strelaysrv uses 22067): {_EXAMPLE}")
    device_id, token = _relay_query(parts.query)
    try:
        return RelayUri(host=host, port=port, device_id=device_id, token=token)
    except LocalProtocolError as err:
        raise DecodeError(f"this relay URI is unusable: {err.message}") from None


def _relay_query(query: str) -> tuple[DeviceId, str]:
    try:
        fields = urllib.parse.parse_qsl(
            query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS, errors="strict"
        )
    except (ValueError, UnicodeDecodeError) as err:
        raise DecodeError(f"the relay URI's query cannot be read ({err})") from None
    values: dict[str, list[str]] = {}
    for key, value in fields:
        values.setdefault(key, []).append(value)
    ids, tokens = values.get("id", []), values.get("token", [])
    if not ids or not ids[0]:
        raise DecodeError(
            "the relay URI has no ?id=: pin the relay's device ID, printed by strelaysrv in its "
            f"URI line, as in {_EXAMPLE}"
        )
    if len(ids) > 1 or len(tokens) > 1:
        raise DecodeError("the relay URI names its id or token twice; keep one of each")
    try:
        device_id = DeviceId.parse(ids[0])
    except ProtocolError as err:
        raise DecodeError(f"the relay URI's id is not a device ID: {err.message}") from None
    return device_id, tokens[0] if tokens else ""


_EXAMPLE = "relay://relay.example.net:22067/?id=XXXXXXX-XXXXXXX-…"

# The responses strelaysrv sends; built last because construction runs the checks above.
RESPONSE_SUCCESS = Response(code=ResponseCode.SUCCESS, message="success")
RESPONSE_NOT_FOUND = Response(code=ResponseCode.NOT_FOUND, message="not found")
RESPONSE_ALREADY_CONNECTED = Response(
    code=ResponseCode.ALREADY_CONNECTED, message="already connected"
)
RESPONSE_WRONG_TOKEN = Response(code=ResponseCode.WRONG_TOKEN, message="wrong token")
RESPONSE_UNEXPECTED_MESSAGE = Response(
    code=ResponseCode.UNEXPECTED_MESSAGE, message="unexpected message"
)
