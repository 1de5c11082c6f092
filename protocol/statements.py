"""Membership statements: what a member signs about its own membership (accept, decline, leave).

A statement is not a membership-log entry. The member signs it (domain b"statement"), gossips it,
and every peer acts on it at once; the owner then records it in the log (a `record` entry embedding
the statement's bytes), which makes it final. Each statement names the album and the hash of the
invite entry that began this membership, so it cannot be replayed into another album or into a
later membership of the same device after a re-invitation. Accept and decline repeat the invite's
nonce; a leave names the key epoch it was made in and the member's last manifest sequence number.
An accept may carry the member's device name, sealed for the album's readers
(protocol/membership_sealing.py `seal_device_name`): a relay sees only its length in 32-byte steps,
and the member's signature over the statement authenticates it.

Wire form: envelope {"statement": bytes, "sig": bytes}; the statement is a canonical map with
album, kind ("accept" | "decline" | "leave"), member, invite, at, and nonce (accept, decline) or
epoch + last_seq (leave); an accept adds sealed_name when it has one (omitted when empty, so an
accept without a name has the same bytes as before names existed; an empty one is refused).
The signer is `member`; the statement's hash is SHA-256 of the envelope.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace

from protocol import membership_sealing
from protocol.encoding import Limits, Reader, decode, encode
from protocol.epochs import MAX_EPOCHS
from protocol.errors import DecodeError, LocalProtocolError, VerificationError
from protocol.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, DeviceKey, verify_signature

DOMAIN = b"statement"
HASH_SIZE = 32
NONCE_SIZE = 16
MAX_STATEMENT_BYTES = 1024
MAX_SEQ = 2**63 - 1
_SEALED_NAME = "sealed_name"

_LIMITS = Limits(
    max_total=MAX_STATEMENT_BYTES,
    max_bytes=MAX_STATEMENT_BYTES,
    max_text=64,
    max_items=16,
    max_depth=2,
)


class StatementKind(enum.Enum):
    """What the member says about the invite it names."""

    ACCEPT = "accept"
    DECLINE = "decline"
    LEAVE = "leave"


@dataclass(frozen=True, kw_only=True)
class Statement:
    """A member's statement; `nonce` is set for accept/decline, `epoch`/`last_seq` for leave.

    `sealed_name` (accept only, may be empty) is the member's device name as
    `membership_sealing.seal_device_name` sealed it.
    """

    album: bytes
    kind: StatementKind
    member: bytes
    invite: bytes
    at: int
    nonce: bytes = b""
    epoch: int = 0
    last_seq: int = 0
    sealed_name: bytes = b""


@dataclass(frozen=True, kw_only=True)
class SignedStatement:
    """A statement whose signature by `statement.member` has been verified."""

    statement: Statement
    envelope: bytes
    hash: bytes


def sign_statement(member: DeviceKey, statement: Statement) -> bytes:
    """The signed envelope of `statement`; the key must be the statement's member."""
    if member.public != statement.member:
        raise LocalProtocolError("a statement must be signed by the member it speaks for")
    raw = encode(_fields(statement))
    return encode({"statement": raw, "sig": member.sign(DOMAIN, raw)})


def decode_statement(envelope: bytes) -> SignedStatement:
    """Decode a statement envelope and verify its member's signature (DecodeError/BAD_SIGNATURE)."""
    outer = Reader(decode(envelope, _LIMITS), "statement envelope")
    raw = outer.bytes("statement", max_len=MAX_STATEMENT_BYTES)
    sig = outer.bytes("sig", size=SIGNATURE_SIZE)
    outer.finish()
    statement = _read(Reader(decode(raw, _LIMITS), "statement"))
    try:
        verify_signature(statement.member, DOMAIN, raw, sig)
    except VerificationError as err:
        raise VerificationError(
            err.reason, f"a {statement.kind.value} statement is not signed by the member it names"
        ) from None
    return SignedStatement(
        statement=statement, envelope=bytes(envelope), hash=hashlib.sha256(envelope).digest()
    )


def _fields(statement: Statement) -> dict[str, object]:
    fields: dict[str, object] = {
        "album": statement.album,
        "kind": statement.kind.value,
        "member": statement.member,
        "invite": statement.invite,
        "at": statement.at,
    }
    if statement.kind is StatementKind.LEAVE:
        if statement.nonce:
            raise LocalProtocolError("a leave statement carries no invite nonce")
        fields.update(epoch=statement.epoch, last_seq=statement.last_seq)
    else:
        if statement.epoch or statement.last_seq:
            raise LocalProtocolError("only a leave statement names an epoch and a last seq")
        fields["nonce"] = statement.nonce
    if statement.sealed_name:
        if statement.kind is not StatementKind.ACCEPT:
            raise LocalProtocolError("only an accept statement carries a device name")
        try:
            membership_sealing.check_sealed_device_name(statement.sealed_name, "statement")
        except DecodeError as err:
            raise LocalProtocolError(err.message) from None
        fields[_SEALED_NAME] = statement.sealed_name
    return fields


def _read(r: Reader) -> Statement:
    try:
        kind = StatementKind(r.text("kind", max_len=16))
    except ValueError:
        raise DecodeError("statement: kind must be accept, decline or leave") from None
    statement = Statement(
        album=r.bytes("album", size=HASH_SIZE),
        kind=kind,
        member=r.bytes("member", size=PUBLIC_KEY_SIZE),
        invite=r.bytes("invite", size=HASH_SIZE),
        at=r.int("at", hi=MAX_SEQ),
    )
    if kind is StatementKind.LEAVE:
        statement = replace(
            statement,
            epoch=r.int("epoch", hi=MAX_EPOCHS - 1),
            last_seq=r.int("last_seq", hi=MAX_SEQ),
        )
    else:
        statement = replace(statement, nonce=r.bytes("nonce", size=NONCE_SIZE))
    if kind is StatementKind.ACCEPT and r.has(_SEALED_NAME):
        # A decline or leave with a name falls to finish() as an unknown field.
        sealed = r.bytes(_SEALED_NAME, max_len=membership_sealing.MAX_SEALED_DEVICE_NAME_BYTES)
        membership_sealing.check_sealed_device_name(sealed, "statement: field 'sealed_name'")
        statement = replace(statement, sealed_name=sealed)
    r.finish()
    return statement
