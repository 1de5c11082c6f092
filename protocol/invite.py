"""Invite codes: what the owner's device hands to a person to copy, paste and redeem.

Text form: "albumsync:" + lower-case base32 (no padding) of

    version byte (1) | canonical map (protocol/encoding.py) | first 4 bytes of SHA-256 of the rest

The checksum catches typos and truncation before anything else is read; the base32 must be the one
canonical spelling of its bytes (unused trailing bits zero), so every single-character change is
refused. Map keys are one letter to keep the code short:

    a  album ID (32)         o  owner's device ID, raw (32)    i  invite ID (16)
    s  secret (16)           r  role (1 viewer, 2 editor)       x  expires at (unix seconds)
    t  tcp://host:port addresses (<= 8)                         y  relay URIs (<= 4)

The secret is single-use and never crosses the wire: the invitee proves it holds it with
`redeem_proof`, an HMAC bound to its own device ID and the album, so a proof observed on a relay
cannot be replayed by another device or for another album. Anyone who sees the code itself can
redeem it until it expires or is used; the UI says so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from protocol.encoding import Limits, Reader, Value, decode, encode
from protocol.errors import (
    DecodeError,
    InviteCodeError,
    LocalProtocolError,
    Reason,
    VerificationError,
)
from protocol.ids import DeviceId
from protocol.rights import Role

PREFIX = "albumsync:"
VERSION = 1
ID_SIZE = 32  # album ID and device ID
INVITE_ID_SIZE = 16
SECRET_SIZE = 16
CHECKSUM_SIZE = 4
PROOF_SIZE = 32  # HMAC-SHA256
MAX_ADDRESSES = 8
MAX_ADDRESS_CHARS = 255
MAX_RELAYS = 4
MAX_RELAY_CHARS = 512
MAX_EXPIRES_AT = 253_402_300_799  # 9999-12-31 23:59:59 UTC: the last second a date can show
MAX_CODE_BYTES = 5 * 1024  # above the largest code the bounds allow (about 4.3 KB)
MAX_CODE_TEXT = 4 * MAX_CODE_BYTES  # pasted text we look at, line breaks and indentation included

_INVITABLE = (Role.VIEWER, Role.EDITOR)
_LIMITS = Limits(
    max_total=MAX_CODE_BYTES, max_bytes=ID_SIZE, max_text=MAX_RELAY_CHARS, max_items=8, max_depth=2
)
_PROOF_DOMAIN = b"albumsync/v1/invite-redeem\x00"
_BASE32 = re.compile("[a-z2-7]*")
_TCP = re.compile(r"tcp://(?P<host>\[[^\]]*\]|[^:/\[\]@?#]*):(?P<port>[0-9]{1,5})")
_RELAY = re.compile(
    r"relay://(?P<host>\[[^\]]*\]|[^:/\[\]@?#]*):(?P<port>[0-9]{1,5})/?\?(?P<query>[^#\s]*)"
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_AGAIN = "copy the whole code again, or ask for a new one"


@dataclass(frozen=True, kw_only=True)
class InviteCode:
    """Everything a device needs to find the owner's device and join the album once."""

    album_id: bytes
    owner_id: bytes  # raw device ID: SHA-256 of the owner's certificate
    invite_id: bytes
    secret: bytes = field(repr=False)
    role: Role
    expires_at: int
    addresses: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()


def new_invite_code(
    *,
    album_id: bytes,
    owner_id: bytes,
    role: Role,
    expires_at: int,
    addresses: Sequence[str] = (),
    relays: Sequence[str] = (),
    rng: Callable[[int], bytes],
) -> InviteCode:
    """A fresh invite with a random invite ID and single-use secret; LocalProtocolError if invalid."""
    code = InviteCode(
        album_id=album_id,
        owner_id=owner_id,
        invite_id=rng(INVITE_ID_SIZE),
        secret=rng(SECRET_SIZE),
        role=role,
        expires_at=expires_at,
        addresses=tuple(addresses),
        relays=tuple(relays),
    )
    _check_ours(code)
    return code


def encode_invite(code: InviteCode) -> str:
    """The text a person copies: "albumsync:" + base32 of version, fields and checksum."""
    _check_ours(code)
    fields = {
        "a": code.album_id,
        "o": code.owner_id,
        "i": code.invite_id,
        "s": code.secret,
        "r": int(code.role),
        "x": code.expires_at,
        "t": list(code.addresses),
        "y": list(code.relays),
    }
    body = bytes([VERSION]) + encode(fields)
    data = body + hashlib.sha256(body).digest()[:CHECKSUM_SIZE]
    return PREFIX + base64.b32encode(data).decode("ascii").rstrip("=").lower()


def parse_invite(text: str, now: int) -> InviteCode:
    """Read a pasted invite code; InviteCodeError says what is wrong and what to do."""
    body = _unwrap(text)
    if body[0] != VERSION:
        raise InviteCodeError(
            f"this invite code uses format {body[0]}, which this albumsync does not know "
            f"(it reads format {VERSION}); update albumsync or ask for a new code"
        )
    try:
        code = _read_fields(decode(body[1:], _LIMITS))
    except DecodeError as exc:
        raise InviteCodeError(f"this invite code is damaged ({exc.message}); {_AGAIN}") from None
    _check_fields(code)
    if code.expires_at <= now:
        when = datetime.fromtimestamp(code.expires_at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise InviteCodeError(f"this invite expired on {when}; ask for a new one")
    return code


def redeem_proof(secret: bytes, device_id_raw: bytes, album_id: bytes) -> bytes:
    """The invitee's proof that it holds the invite secret, bound to its device ID and the album."""
    if len(secret) != SECRET_SIZE or len(device_id_raw) != ID_SIZE or len(album_id) != ID_SIZE:
        raise LocalProtocolError(
            "a redeem proof binds a 16-byte secret, 32-byte device and album IDs"
        )
    message = _PROOF_DOMAIN + album_id + device_id_raw
    return hmac.new(secret, message, hashlib.sha256).digest()


def verify_redeem_proof(secret: bytes, device_id_raw: bytes, album_id: bytes, proof: bytes) -> None:
    """Raise VerificationError(NOT_AUTHORIZED) unless `proof` is this device's proof of `secret`."""
    expected = redeem_proof(secret, device_id_raw, album_id)
    if not hmac.compare_digest(expected, proof):
        raise VerificationError(
            Reason.NOT_AUTHORIZED,
            "the invite proof does not match: wrong or used invite, or another device's proof",
        )


def _unwrap(text: str) -> bytes:
    """The checked body (version + fields) of a pasted code; InviteCodeError for anything else."""
    if not isinstance(text, str) or len(text) > MAX_CODE_TEXT:
        raise InviteCodeError("this is not an albumsync invite code: it is far too long")
    compact = "".join(text.split())
    if not compact.isascii() or not compact.lower().startswith(PREFIX):
        raise InviteCodeError(
            f"this is not an albumsync invite code: those start with '{PREFIX}'; "
            "copy the code the album's owner sent you"
        )
    chars = compact[len(PREFIX) :].lower()
    if _BASE32.fullmatch(chars) is None:
        char = next(c for c in chars if not _BASE32.fullmatch(c))
        raise InviteCodeError(
            f"this invite code contains {char!r}, which never appears in one; {_AGAIN}"
        )
    data = _decode_base32(chars)
    body, checksum = data[:-CHECKSUM_SIZE], data[-CHECKSUM_SIZE:]
    if not body or hashlib.sha256(body).digest()[:CHECKSUM_SIZE] != checksum:
        raise InviteCodeError(f"this invite code is incomplete or mistyped (checksum); {_AGAIN}")
    return body


def _decode_base32(chars: str) -> bytes:
    """Bytes of canonical unpadded base32; a length or trailing bits no encoder makes is damage."""
    try:
        data = base64.b32decode(chars.upper() + "=" * (-len(chars) % 8))
    except (binascii.Error, ValueError):
        data = b""
    if len(data) <= CHECKSUM_SIZE or base64.b32encode(data).decode().rstrip("=").lower() != chars:
        raise InviteCodeError(f"this invite code is incomplete or mistyped; {_AGAIN}")
    return data


def _read_fields(value: Value) -> InviteCode:
    r = Reader(value, "invite code")
    code = InviteCode(
        album_id=r.bytes("a", size=ID_SIZE),
        owner_id=r.bytes("o", size=ID_SIZE),
        invite_id=r.bytes("i", size=INVITE_ID_SIZE),
        secret=r.bytes("s", size=SECRET_SIZE),
        role=_role(r.int("r", lo=0, hi=255)),
        expires_at=r.int("x", hi=MAX_EXPIRES_AT),
        addresses=_texts(r.list("t", max_items=MAX_ADDRESSES), "address"),
        relays=_texts(r.list("y", max_items=MAX_RELAYS), "relay"),
    )
    r.finish()
    return code


def _texts(items: Sequence[Value], what: str) -> tuple[str, ...]:
    if not all(isinstance(item, str) for item in items):
        raise DecodeError(f"every {what} must be text")
    return tuple(str(item) for item in items)


def _role(number: int) -> Role:
    try:
        return Role(number)
    except ValueError:
        raise InviteCodeError(
            f"this invite offers a role this albumsync does not know ({number}); update albumsync "
            "or ask for a new invite"
        ) from None


def _check_ours(code: InviteCode) -> None:
    """_check_fields for a code we make: a bad field is our bug, not the person's."""
    sizes = ((code.album_id, ID_SIZE), (code.owner_id, ID_SIZE), (code.invite_id, INVITE_ID_SIZE))
    if any(len(raw) != size for raw, size in (*sizes, (code.secret, SECRET_SIZE))):
        raise LocalProtocolError("an invite has 32-byte album and owner IDs, 16-byte ID and secret")
    if not 0 <= code.expires_at <= MAX_EXPIRES_AT:
        raise LocalProtocolError(f"invite expiry {code.expires_at} is outside 0..{MAX_EXPIRES_AT}")
    try:
        _check_fields(code)
    except InviteCodeError as exc:
        raise LocalProtocolError(exc.message) from None


def _check_fields(code: InviteCode) -> None:
    if code.role not in _INVITABLE:
        raise InviteCodeError(
            f"this invite offers the role '{code.role.label}'; an invite makes a viewer or an "
            "editor: ask for a new one"
        )
    if len(code.addresses) > MAX_ADDRESSES or len(code.relays) > MAX_RELAYS:
        raise InviteCodeError(
            f"an invite lists at most {MAX_ADDRESSES} addresses, {MAX_RELAYS} relays"
        )
    for address in code.addresses:
        _check_address(address)
    for relay in code.relays:
        _check_relay(relay)


def _check_address(address: str) -> None:
    match = _TCP.fullmatch(address) if len(address) <= MAX_ADDRESS_CHARS else None
    if match is None or not _PRINTABLE.fullmatch(address):
        raise InviteCodeError(
            f"this invite has a bad address {_show(address)}: expected tcp://host:port "
            f"(at most {MAX_ADDRESS_CHARS} characters); ask for a new one"
        )
    _check_host_port(match["host"], match["port"], address)


def _check_relay(relay: str) -> None:
    match = _RELAY.fullmatch(relay) if len(relay) <= MAX_RELAY_CHARS else None
    if match is None or not _PRINTABLE.fullmatch(relay):
        raise InviteCodeError(
            f"this invite has a bad relay {_show(relay)}: expected relay://host:port/?id=DEVICE-ID "
            f"(at most {MAX_RELAY_CHARS} characters); ask for a new one"
        )
    _check_host_port(match["host"], match["port"], relay)
    ids = [part[3:] for part in match["query"].split("&") if part.startswith("id=")]
    if len(ids) != 1:
        raise InviteCodeError(f"this invite's relay {_show(relay)} must name its device ID once")
    try:
        DeviceId.parse(ids[0])
    except DecodeError as exc:
        raise InviteCodeError(
            f"this invite's relay {_show(relay)} has a bad ID: {exc.message}"
        ) from None


def _check_host_port(host: str, port: str, whole: str) -> None:
    if not (_valid_host(host) and port[0] != "0" and int(port) <= 65535):
        raise InviteCodeError(
            f"this invite has a bad address {_show(whole)}: the host must be a name, an IPv4 "
            "address or an [IPv6] address, and the port 1-65535; ask for a new one"
        )


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    if labels[-1].isdigit():  # looks like IPv4, so it must be one (no 999.1.1.1, no 010.0.0.1)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
