"""Membership-log entries: their kinds, fields, bounds and canonical signed encoding.

The envelope is {"entry": bytes, "sig": bytes}: the owner's Ed25519 signature over the entry bytes
with domain b"membership". An entry's hash is SHA-256 of its envelope; the album ID is the genesis
entry's hash. An entry is a canonical map of seq (0 = genesis), epoch (the key epoch in force after
it), at (the owner's clock, informational), kind, the kind's fields, and, in every entry but the
genesis, album (the album ID) and prev (the hash of entry seq - 1).

Kinds and their fields (SealedKeys: [recipient, box] pairs sorted by recipient):
    genesis  owner, cert, sealed_name, keys (epoch 0, the owner alone)
    invite   member, cert, role, message_box, owner_message_box, nonce,
             epoch_keys (box of epoch e at index e), after_seq
    role     member, role, after_seq
    remove   member, after_seq, keep_photos, keys (the new epoch)
    record   statement (a member's signed statement, protocol/statements.py);
             decline and leave add keys (the new epoch), leave adds keep_photos
    rename   sealed_name     cover   sealed_cover (a file reference, empty = none)
    delete   -               rotate  keys (the new epoch)
Nothing that names a person or a thing is clear: the album name and cover are encrypted under the
entry's epoch key with `associated_data(entry)` bound in, the invite message is sealed to the
invitee and the owner (protocol/membership_sealing.py). Decoding checks shape and bounds only, and
needs no key; whether an entry may follow a state: protocol/membership.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from protocol import epochs, membership_sealing
from protocol.certificate import MAX_CERTIFICATE_SIZE
from protocol.encoding import Limits, Reader, decode, encode
from protocol.epochs import MAX_EPOCHS, SealedKeys
from protocol.errors import DecodeError, LocalProtocolError
from protocol.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, DeviceKey
from protocol.rights import Role
from protocol.statements import (
    HASH_SIZE,
    MAX_SEQ,
    MAX_STATEMENT_BYTES,
    NONCE_SIZE,
    SignedStatement,
    StatementKind,
    decode_statement,
)

DOMAIN = b"membership"
MAX_MEMBERS = 100  # devices besides the owner that may read at once (Proton's limit)
MAX_ENTRY_BYTES = 1024 * 1024  # an invite carrying MAX_EPOCHS sealed keys fits
MAX_ENVELOPE_BYTES = MAX_ENTRY_BYTES + 128

_LIMITS = Limits(
    max_total=MAX_ENVELOPE_BYTES,
    max_bytes=MAX_ENTRY_BYTES,
    max_text=32,  # kinds, roles and field names: every person-readable text is sealed
    max_items=MAX_EPOCHS,
    max_depth=4,
)
_ROLES = {"viewer": Role.VIEWER, "editor": Role.EDITOR}


@dataclass(frozen=True, kw_only=True)
class Genesis:
    """Creates the album: the owner's key and certificate, the sealed name, epoch 0's key."""

    kind: ClassVar[str] = "genesis"
    owner: bytes
    owner_cert: bytes
    sealed_name: bytes  # under epoch 0's key
    keys: SealedKeys

    def fields(self) -> dict[str, object]:
        return {
            "owner": self.owner,
            "cert": self.owner_cert,
            "sealed_name": self.sealed_name,
            "keys": epochs.encode_sealed_keys(self.keys),
        }

    @classmethod
    def read(cls, r: Reader) -> Genesis:
        return cls(
            owner=r.bytes("owner", size=PUBLIC_KEY_SIZE),
            owner_cert=r.bytes("cert", max_len=MAX_CERTIFICATE_SIZE),
            sealed_name=_read_sealed_name(r),
            keys=_read_sealed(r, "keys"),
        )


@dataclass(frozen=True, kw_only=True)
class Invite:
    """Invites a device; `epoch_keys[e]` is epoch e's key sealed to it, for every epoch so far.

    The message is sealed twice: to the invitee (`message_box`) and to the owner.
    """

    kind: ClassVar[str] = "invite"
    member: bytes
    member_cert: bytes
    role: Role
    message_box: bytes
    owner_message_box: bytes
    nonce: bytes
    epoch_keys: tuple[bytes, ...]
    after_seq: int

    def fields(self) -> dict[str, object]:
        return {
            "member": self.member,
            "cert": self.member_cert,
            "role": self.role.label,
            "message_box": self.message_box,
            "owner_message_box": self.owner_message_box,
            "nonce": self.nonce,
            "epoch_keys": list(self.epoch_keys),
            "after_seq": self.after_seq,
        }

    @classmethod
    def read(cls, r: Reader) -> Invite:
        what = f"{r.what}.epoch_keys"
        return cls(
            member=r.bytes("member", size=PUBLIC_KEY_SIZE),
            member_cert=r.bytes("cert", max_len=MAX_CERTIFICATE_SIZE),
            role=_read_role(r),
            message_box=_read_message_box(r, "message_box"),
            owner_message_box=_read_message_box(r, "owner_message_box"),
            nonce=r.bytes("nonce", size=NONCE_SIZE),
            epoch_keys=tuple(
                epochs.check_box(box, what) for box in r.list("epoch_keys", max_items=MAX_EPOCHS)
            ),
            after_seq=r.int("after_seq", hi=MAX_SEQ),
        )


@dataclass(frozen=True, kw_only=True)
class RoleChange:
    """Gives an invited or active member a new role for its manifest entries after `after_seq`."""

    kind: ClassVar[str] = "role"
    member: bytes
    role: Role
    after_seq: int

    def fields(self) -> dict[str, object]:
        return {"member": self.member, "role": self.role.label, "after_seq": self.after_seq}

    @classmethod
    def read(cls, r: Reader) -> RoleChange:
        return cls(
            member=r.bytes("member", size=PUBLIC_KEY_SIZE),
            role=_read_role(r),
            after_seq=r.int("after_seq", hi=MAX_SEQ),
        )


@dataclass(frozen=True, kw_only=True)
class Remove:
    """Removes a member (or cancels an invite) and starts the next epoch, sealed in `keys`."""

    kind: ClassVar[str] = "remove"
    member: bytes
    after_seq: int
    keep_photos: bool
    keys: SealedKeys

    def fields(self) -> dict[str, object]:
        return {
            "member": self.member,
            "after_seq": self.after_seq,
            "keep_photos": self.keep_photos,
            "keys": epochs.encode_sealed_keys(self.keys),
        }

    @classmethod
    def read(cls, r: Reader) -> Remove:
        return cls(
            member=r.bytes("member", size=PUBLIC_KEY_SIZE),
            after_seq=r.int("after_seq", hi=MAX_SEQ),
            keep_photos=r.bool("keep_photos"),
            keys=_read_sealed(r, "keys"),
        )


@dataclass(frozen=True, kw_only=True)
class Record:
    """Records a member's statement; a decline or leave starts the next epoch, sealed in `keys`."""

    kind: ClassVar[str] = "record"
    statement: SignedStatement
    keep_photos: bool = False  # leave only: the owner keeps the leaver's photos
    keys: SealedKeys = ()  # decline and leave only

    def fields(self) -> dict[str, object]:
        said = self.statement.statement.kind
        if (said is not StatementKind.LEAVE and self.keep_photos) or (
            said is StatementKind.ACCEPT and self.keys
        ):
            raise LocalProtocolError(f"a recorded {said.value} carries no keys or photo choice")
        fields: dict[str, object] = {"statement": self.statement.envelope}
        if said is not StatementKind.ACCEPT:
            fields["keys"] = epochs.encode_sealed_keys(self.keys)
        if said is StatementKind.LEAVE:
            fields["keep_photos"] = self.keep_photos
        return fields

    @classmethod
    def read(cls, r: Reader) -> Record:
        statement = decode_statement(r.bytes("statement", max_len=MAX_STATEMENT_BYTES))
        said = statement.statement.kind
        if said is StatementKind.ACCEPT:
            return cls(statement=statement)
        return cls(
            statement=statement,
            keep_photos=r.bool("keep_photos") if said is StatementKind.LEAVE else False,
            keys=_read_sealed(r, "keys"),
        )


@dataclass(frozen=True, kw_only=True)
class Rename:
    """Renames the album; the name is sealed under the entry's epoch key."""

    kind: ClassVar[str] = "rename"
    sealed_name: bytes

    def fields(self) -> dict[str, object]:
        return {"sealed_name": self.sealed_name}

    @classmethod
    def read(cls, r: Reader) -> Rename:
        return cls(sealed_name=_read_sealed_name(r))


@dataclass(frozen=True, kw_only=True)
class SetCover:
    """Sets the album's cover to a file reference (empty: no cover), sealed like a name."""

    kind: ClassVar[str] = "cover"
    sealed_cover: bytes

    def fields(self) -> dict[str, object]:
        return {"sealed_cover": self.sealed_cover}

    @classmethod
    def read(cls, r: Reader) -> SetCover:
        what = f"{r.what}.sealed_cover"
        return cls(
            sealed_cover=membership_sealing.check_sealed_cover(r.bytes("sealed_cover"), what)
        )


@dataclass(frozen=True, kw_only=True)
class DeleteAlbum:
    """Deletes the album for everyone; members keep their local files. Nothing follows it."""

    kind: ClassVar[str] = "delete"

    def fields(self) -> dict[str, object]:
        return {}

    @classmethod
    def read(cls, r: Reader) -> DeleteAlbum:
        return cls()


@dataclass(frozen=True, kw_only=True)
class Rotate:
    """Starts the next epoch without a loss of access; `keys` seals it to every reader."""

    kind: ClassVar[str] = "rotate"
    keys: SealedKeys

    def fields(self) -> dict[str, object]:
        return {"keys": epochs.encode_sealed_keys(self.keys)}

    @classmethod
    def read(cls, r: Reader) -> Rotate:
        return cls(keys=_read_sealed(r, "keys"))


Body = Genesis | Invite | RoleChange | Remove | Record | Rename | SetCover | DeleteAlbum | Rotate
_BODIES: dict[str, type[Body]] = {
    body.kind: body
    for body in (Genesis, Invite, RoleChange, Remove, Record, Rename, SetCover, DeleteAlbum, Rotate)
}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One membership-log entry; `album` and `prev` are None in the genesis only."""

    seq: int
    epoch: int
    at: int
    body: Body
    album: bytes | None = None
    prev: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class SignedEntry:
    """A decoded entry with its signed bytes, signature, envelope and hash (not yet verified)."""

    entry: Entry
    raw: bytes
    sig: bytes
    envelope: bytes
    hash: bytes


def sign_entry(owner: DeviceKey, entry: Entry) -> bytes:
    """The signed envelope of `entry` (no rule is checked: see the build_* functions)."""
    fields: dict[str, object] = {
        "seq": entry.seq,
        "epoch": entry.epoch,
        "at": entry.at,
        "kind": entry.body.kind,
        **entry.body.fields(),
    }
    if entry.album is not None:
        fields["album"] = entry.album
    if entry.prev is not None:
        fields["prev"] = entry.prev
    raw = encode(fields)
    return encode({"entry": raw, "sig": owner.sign(DOMAIN, raw)})


def decode_entry(envelope: bytes) -> SignedEntry:
    """Decode an entry envelope within the bounds above; its signature is not checked here."""
    outer = Reader(decode(envelope, _LIMITS), "membership entry envelope")
    raw = outer.bytes("entry", max_len=MAX_ENTRY_BYTES)
    sig = outer.bytes("sig", size=SIGNATURE_SIZE)
    outer.finish()
    entry = _read_entry(Reader(decode(raw, _LIMITS), "membership entry"))
    return SignedEntry(
        entry=entry, raw=raw, sig=sig, envelope=bytes(envelope), hash=_sha256(envelope)
    )


def associated_data(entry: Entry) -> bytes:
    """What an entry's sealed name or cover is bound to: its header (the body's kind included).

    kind, seq, epoch, at and prev, and the album ID, or in the genesis (whose hash is the album
    ID, so cannot be inside it) the owner's key.
    """
    header: dict[str, object] = {
        "kind": entry.body.kind,
        "seq": entry.seq,
        "epoch": entry.epoch,
        "at": entry.at,
    }
    if isinstance(entry.body, Genesis):
        header["owner"] = entry.body.owner
    if entry.album is not None:
        header["album"] = entry.album
    if entry.prev is not None:
        header["prev"] = entry.prev
    return encode(header)


def starts_epoch(body: Body) -> bool:
    """Whether an entry of this body starts the next key epoch (every loss of access does)."""
    if isinstance(body, Record):
        return body.statement.statement.kind is not StatementKind.ACCEPT
    return isinstance(body, (Remove, Rotate))


# ---------------------------------------------------------------------------------------------
# Private helpers


def _read_entry(r: Reader) -> Entry:
    kind = r.text("kind", max_len=16)
    body_type = _BODIES.get(kind)
    if body_type is None:
        raise DecodeError(f"membership entry: unknown kind {kind!r}")
    seq = r.int("seq", hi=MAX_SEQ)
    if (body_type is Genesis) != (seq == 0):
        raise DecodeError("membership entry: seq 0 is the genesis, and the genesis is seq 0")
    epoch = r.int("epoch", hi=MAX_EPOCHS - 1)
    at = r.int("at", hi=MAX_SEQ)
    album = prev = None
    if seq:
        album, prev = r.bytes("album", size=HASH_SIZE), r.bytes("prev", size=HASH_SIZE)
    body = body_type.read(r)
    r.finish()
    return Entry(seq=seq, epoch=epoch, at=at, body=body, album=album, prev=prev)


def _read_sealed_name(r: Reader) -> bytes:
    value = r.bytes("sealed_name", max_len=membership_sealing.MAX_SEALED_NAME_BYTES)
    return membership_sealing.check_sealed_name(value, f"{r.what}.sealed_name")


def _read_message_box(r: Reader, key: str) -> bytes:
    value = r.bytes(key, max_len=membership_sealing.MAX_MESSAGE_BOX_BYTES)
    return membership_sealing.check_message_box(value, f"{r.what}.{key}")


def _read_role(r: Reader) -> Role:
    text = r.text("role", max_len=16)
    if text not in _ROLES:
        raise DecodeError(f"{r.what}: role must be 'viewer' or 'editor', not {text!r}")
    return _ROLES[text]


def _read_sealed(r: Reader, key: str) -> SealedKeys:
    return epochs.decode_sealed_keys(r.list(key, max_items=MAX_MEMBERS + 1), f"{r.what}.{key}")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
