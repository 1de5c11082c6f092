"""The album's membership state machine: which log entries and statements are valid, and why.

One writer, the album owner, signs a hash-chained log (protocol/membership_entries.py); every peer
folds it, entry by entry, into a `MembershipState` with `apply`.

Rules `apply` checks, in this order (the Reason in brackets):
  1. the envelope and entry decode canonically within their bounds  [DecodeError]
  2. the entry names this album                                      [WRONG_ALBUM]
  3. the album owner signed it                                       [BAD_SIGNATURE]
  4. no fork has been seen in this album                             [FORK]
  5. it is the next position: seq = head + 1, prev = head hash       [REPLAYED, FORK, BROKEN_CHAIN]
  6. the album is not deleted                                        [ALBUM_DELETED]
  7. epoch = current, or current + 1 for an epoch-starting entry     [WRONG_EPOCH]
  8. the kind's own rules: member states, bounds, after_seq never going back, sealed-key
     recipients, the invitee's certificate
                     [NOT_AUTHORIZED, BACKDATED, OUT_OF_BOUNDS, MALFORMED, BAD_CERTIFICATE, ...]

Members. invited -(accept)-> active -(leave)-> left; invited -(decline)-> declined; invited or
active -(remove)-> removed (removing an invitee cancels the invite). A device that declined, left or
was removed may be invited again: a new invite hash, a new membership, statements of the old void.

Epochs. A loss of access carries its new epoch itself: a `remove`, and a `record` of a decline or a
leave, is signed with epoch = current + 1 and holds the fresh key sealed to exactly the devices that
still read (the owner, invited and active members). So every loss of access is followed by a new
epoch before any other entry, by construction; rules 7 and 8 check it. `rotate` starts an epoch
without a loss. (A link revocation, when links arrive, is one more such loss entry.)

Statements (protocol/statements.py) are acted on at once: `apply_statement` adds a verified accept,
decline or leave to the state's unrecorded statements, which change statuses and `rights()` until
the owner's `record` entry makes them final. Whether a log entry is valid depends on the log alone,
never on which statements a peer happens to hold, so every peer reaches the same verdict on it.
A decline ends access after the member's last grant; a leave after max(that grant's after_seq, the
leave's last_seq). Both are the same Grant whether read from the statement or from its record.

Forks. A state that carries a `fork` (set by protocol/membership_log.py when the owner signed two
entries for one seq) refuses every entry and statement: nothing resolves a fork silently.

Keys. Verifying and folding need no key: a blind replica checks the whole chain. The album name,
the cover and invite messages are sealed (protocol/membership_sealing.py); a device reads them
with explicit calls that take its keys: `album_name(keys)`, `cover(keys)` (keys: epoch -> album
key, as `epoch_keys(device)` returns) and `invite_message(member, device)`. Each returns None when
the device lacks the key, and raises VerificationError (DECRYPT_FAILED, MALFORMED) when it holds
the key but the owner sealed something that does not open or is not a valid value.
A member's device name comes from its own accept statement (recorded or not yet), sealed under the
key of the epoch its invite reached: `member_name(state, member, keys)` reads it, and returns None
rather than raising when it does not open, since a peer's bad seal costs only the name.
Certificates are checked: a genesis or invite carries the device certificate of the key it names
(protocol/certificate.py), which holds nothing but that key (CN is the fixed "albumsync").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypedDict, TypeVar

from protocol import epochs, membership_sealing
from protocol.certificate import verify_certificate
from protocol.epochs import Delivery, KeyLedger, SealedKeys
from protocol.errors import Reason, VerificationError
from protocol.keys import DeviceKey, verify_signature, x25519_public_from_ed25519
from protocol.membership_entries import (
    DOMAIN,
    MAX_MEMBERS,
    DeleteAlbum,
    Entry,
    Genesis,
    Invite,
    Record,
    Remove,
    Rename,
    RoleChange,
    Rotate,
    SetCover,
    SignedEntry,
    associated_data,
    decode_entry,
    starts_epoch,
)
from protocol.rights import Grant, Rights, Role
from protocol.statements import SignedStatement, Statement, StatementKind, decode_statement

_T = TypeVar("_T")


class Status(enum.Enum):
    """Where a device stands in the album."""

    INVITED = "invited"
    ACTIVE = "active"
    DECLINED = "declined"
    LEFT = "left"
    REMOVED = "removed"


_READING = frozenset({Status.INVITED, Status.ACTIVE})


@dataclass(frozen=True, kw_only=True)
class Member:
    """A device invited into the album, as of its latest invite."""

    key: bytes
    cert: bytes
    role: Role
    status: Status
    invite: bytes  # hash of the invite entry that began this membership
    nonce: bytes
    message_box: bytes  # the invite message, sealed to the member (`invite_message` opens it)
    owner_message_box: bytes  # the same, sealed to the owner
    invited_seq: int
    invited_epoch: int
    invited_at: int
    sealed_name: bytes = b""  # the device name from this membership's recorded accept, if any


@dataclass(frozen=True, kw_only=True)
class Fork:
    """Proof that the owner signed two entries for one seq; `envelopes[i]` hashes to `hashes[i]`."""

    seq: int
    hashes: tuple[bytes, bytes]
    envelopes: tuple[bytes, bytes]

    @classmethod
    def between(cls, one: SignedEntry, other: SignedEntry) -> Fork:
        """The fork two entries for one seq prove, the same whichever arrived first."""
        first, second = sorted((one, other), key=lambda signed: signed.hash)
        return cls(
            seq=one.entry.seq,
            hashes=(first.hash, second.hash),
            envelopes=(first.envelope, second.envelope),
        )


@dataclass(frozen=True, kw_only=True)
class MembershipState:
    """The album as the verified log (plus unrecorded statements) says it is; never mutated."""

    album_id: bytes
    owner: bytes
    owner_cert: bytes
    created_at: int
    name_entry: Entry  # the latest rename, else the genesis: holds the sealed current name
    cover_entry: Entry | None  # the latest cover entry, if any
    deleted: bool
    head_seq: int
    head_hash: bytes
    epoch: int
    log_members: Mapping[bytes, Member]  # statuses as recorded in the log
    grants: Mapping[bytes, tuple[Grant, ...]]  # as recorded in the log
    invites: Mapping[bytes, bytes]  # every invite hash ever -> its member
    unrecorded: Mapping[bytes, tuple[SignedStatement, ...]]  # member -> statements not yet recorded
    fork: Fork | None = None
    # Determined by (album_id, head_hash) like the fields above, so left out of equality.
    ledger: KeyLedger | None = field(default=None, compare=False, repr=False)

    def album_name(self, keys: Mapping[int, bytes]) -> str | None:
        """The current name, or None without the key of the epoch it was sealed under."""
        entry = self.name_entry
        key = keys.get(entry.epoch)
        if key is None:
            return None
        assert isinstance(entry.body, (Genesis, Rename))
        return membership_sealing.open_name(
            entry.body.sealed_name, key=key, associated_data=associated_data(entry)
        )

    def cover(self, keys: Mapping[int, bytes]) -> bytes | None:
        """The current cover reference (b"" = none), or None without its epoch's key."""
        entry = self.cover_entry
        if entry is None:
            return b""
        key = keys.get(entry.epoch)
        if key is None:
            return None
        assert isinstance(entry.body, SetCover)
        return membership_sealing.open_cover(
            entry.body.sealed_cover, key=key, associated_data=associated_data(entry)
        )

    def invite_message(self, member: bytes, device: DeviceKey) -> str | None:
        """The message of `member`'s latest invite, for that member or the owner (else None)."""
        invited = self.log_members.get(member)
        if invited is None:
            return None
        if device.public == member:
            box = invited.message_box
        elif device.public == self.owner:
            box = invited.owner_message_box
        else:
            return None
        return membership_sealing.open_message(
            box, device=device, album=self.album_id, nonce=invited.nonce
        )

    @property
    def members(self) -> dict[bytes, Member]:
        """Every device ever invited, with its status now (unrecorded statements included)."""
        return {
            key: replace(member, status=self.status(key) or member.status)
            for key, member in self.log_members.items()
        }

    @property
    def pending_invites(self) -> tuple[Member, ...]:
        """Invites not answered yet, in log order."""
        invited = (m for m in self.members.values() if m.status is Status.INVITED)
        return tuple(sorted(invited, key=lambda m: m.invited_seq))

    def status(self, key: bytes) -> Status | None:
        """A device's status now (None: never invited); a statement counts as soon as it is seen."""
        member = self.log_members.get(key)
        if member is None:
            return None
        said = {signed.statement.kind for signed in self.unrecorded.get(key, ())}
        if StatementKind.LEAVE in said:
            return Status.LEFT
        if StatementKind.DECLINE in said:
            return Status.DECLINED
        if StatementKind.ACCEPT in said:
            return Status.ACTIVE
        return member.status

    def readers(self) -> frozenset[bytes]:
        """The devices the log seals the current epoch to: the owner, invited and active members."""
        members = (key for key, m in self.log_members.items() if m.status in _READING)
        return frozenset((self.owner, *members))

    def rights(self) -> Rights:
        """Grants per member for manifests; an unrecorded decline or leave already ends access."""
        grants = dict(self.grants)
        for key, held in self.unrecorded.items():
            for signed in held:
                said = signed.statement
                if said.kind is not StatementKind.ACCEPT:
                    grants[key] = (*grants.get(key, ()), _loss_grant(self, said))
        return Rights(owner=self.owner, grants=grants)

    def epoch_keys(self, device: DeviceKey) -> dict[int, bytes]:
        """Epoch -> album key for every box sealed to `device` (DECRYPT_FAILED for a bad box)."""
        return epochs.open_epoch_keys(self.ledger, device)

    def epoch_key(self, device: DeviceKey, epoch: int) -> bytes | None:
        """One epoch's album key if it was sealed to `device`, else None (one box opened)."""
        return epochs.open_epoch_key(self.ledger, device, epoch)

    def boxes(self, epoch: int) -> dict[bytes, bytes]:
        """Recipient -> sealed box of one epoch's key, over the whole log so far."""
        return epochs.boxes_of_epoch(self.ledger, epoch)

    def recipients(self, epoch: int) -> frozenset[bytes]:
        """The devices that were sealed the key of `epoch`."""
        return frozenset(self.boxes(epoch))

    def last_after_seq(self, key: bytes) -> int:
        """The after_seq of the member's latest recorded grant (0 if it has none)."""
        history = self.grants.get(key, ())
        return history[-1].after_seq if history else 0

    def to_record(self) -> tuple[bytes, ...]:
        """Statement envelopes the owner has yet to record, in the order it must record them."""
        held = sorted(self.unrecorded.items(), key=lambda kv: self.log_members[kv[0]].invited_seq)
        return tuple(signed.envelope for _, statements in held for signed in statements)


# ---------------------------------------------------------------------------------------------
# Verification


def verify_genesis(envelope: bytes, *, album_id: bytes | None = None) -> MembershipState:
    """The state of an album from its genesis entry; `album_id`, if given, must be its hash."""
    return _genesis_state(decode_entry(envelope), album_id)


def apply(state: MembershipState, envelope: bytes) -> MembershipState:
    """The state after the next log entry; VerificationError (with its Reason) if it is not."""
    return apply_signed(state, decode_entry(envelope))


def apply_signed(state: MembershipState, signed: SignedEntry) -> MembershipState:
    """`apply` for an entry decoded already (its signature is checked here)."""
    verify_origin(state, signed)
    return _advance(state, signed)


def verify_origin(state: MembershipState, signed: SignedEntry) -> None:
    """Raise unless the entry names this album and its owner signed it (position not checked)."""
    entry = signed.entry
    if isinstance(entry.body, Genesis):
        if signed.hash == state.album_id:
            raise VerificationError(
                Reason.REPLAYED, "this album's genesis entry is already applied"
            )
        raise VerificationError(Reason.WRONG_ALBUM, "a genesis entry of another album")
    if entry.album != state.album_id:
        raise VerificationError(
            Reason.WRONG_ALBUM, f"membership entry {entry.seq} belongs to another album"
        )
    _verify(state.owner, signed, f"membership entry {entry.seq} is not signed by the album owner")


def apply_statement(state: MembershipState, envelope: bytes) -> MembershipState:
    """The state with a member's accept, decline or leave acted on (before the owner records it)."""
    return apply_signed_statement(state, decode_statement(envelope))


def apply_signed_statement(state: MembershipState, signed: SignedStatement) -> MembershipState:
    """`apply_statement` for a statement decoded (and so signature-checked) already."""
    said = signed.statement
    if state.fork is not None:
        raise _forked(state.fork)
    if state.deleted:
        raise VerificationError(Reason.ALBUM_DELETED, "the owner deleted this album")
    held = state.unrecorded.get(said.member, ())
    kinds = {h.statement.kind for h in held}
    _check_binding(state, said, accepted=StatementKind.ACCEPT in kinds)
    answered = {StatementKind.ACCEPT, StatementKind.DECLINE} & kinds
    if signed in held or (said.kind in kinds if said.kind is StatementKind.LEAVE else answered):
        raise VerificationError(
            Reason.REPLAYED, f"{_device(said.member)} already made this kind of statement"
        )
    return replace(state, unrecorded=_put(state.unrecorded, said.member, (*held, signed)))


def member_name(state: MembershipState, member: bytes, keys: Mapping[int, bytes]) -> str | None:
    """The device name `member` sealed into its accept, read with `keys` (epoch -> album key).

    None when the member gave no name, `keys` lacks its invite's epoch, or the seal does not open
    or holds no valid name: the name is the member's own claim about itself, so a bad one only
    means that people see its short ID instead.
    """
    invited = state.log_members.get(member)
    if invited is None:
        return None
    sealed = _sealed_name(state, invited)
    key = keys.get(invited.invited_epoch)
    if not sealed or key is None:
        return None
    binding = membership_sealing.device_name_binding(state.album_id, member, invited.invite)
    try:
        return membership_sealing.open_device_name(sealed, key=key, associated_data=binding)
    except VerificationError:
        return None


# ---------------------------------------------------------------------------------------------
# Private helpers


def _sealed_name(state: MembershipState, member: Member) -> bytes:
    """The sealed device name of `member`'s current membership: its accept, recorded or not."""
    if member.sealed_name:
        return member.sealed_name
    for signed in state.unrecorded.get(member.key, ()):
        said = signed.statement
        if said.kind is StatementKind.ACCEPT and said.invite == member.invite:
            return said.sealed_name
    return b""


class _Changes(TypedDict, total=False):
    """The state fields one entry changes (head, epoch and statements are the caller's)."""

    name_entry: Entry
    cover_entry: Entry | None
    deleted: bool
    log_members: Mapping[bytes, Member]
    grants: Mapping[bytes, tuple[Grant, ...]]
    invites: Mapping[bytes, bytes]
    ledger: KeyLedger | None


def _genesis_state(signed: SignedEntry, album_id: bytes | None) -> MembershipState:
    body = signed.entry.body
    if not isinstance(body, Genesis):
        raise VerificationError(Reason.MALFORMED, "an album starts with its genesis entry")
    if album_id is not None and signed.hash != album_id:
        raise VerificationError(Reason.WRONG_ALBUM, "this genesis entry is of another album")
    _check_device(body.owner)
    _verify(body.owner, signed, "the genesis entry is not signed by the owner it names")
    _check_certificate(body.owner_cert, body.owner, "the owner")
    if [recipient for recipient, _ in body.keys] != [body.owner]:
        raise VerificationError(Reason.MALFORMED, "epoch 0's key must be sealed to the owner alone")
    if signed.entry.epoch != 0:
        raise VerificationError(Reason.WRONG_EPOCH, "the genesis entry starts epoch 0")
    return MembershipState(
        album_id=signed.hash,
        owner=body.owner,
        owner_cert=body.owner_cert,
        created_at=signed.entry.at,
        name_entry=signed.entry,
        cover_entry=None,
        deleted=False,
        head_seq=0,
        head_hash=signed.hash,
        epoch=0,
        log_members={},
        grants={},
        invites={},
        unrecorded={},
        ledger=epochs.record(None, _deliveries(body.keys, 0)),
    )


def _advance(state: MembershipState, signed: SignedEntry) -> MembershipState:
    entry = signed.entry
    if state.fork is not None:
        raise _forked(state.fork)
    _check_position(state, signed)
    if state.deleted:
        raise VerificationError(Reason.ALBUM_DELETED, "the owner deleted this album")
    _check_epoch(state, entry)
    changes = _apply_body(state, entry, signed.hash)
    moved = _moved(state, changes, head_seq=entry.seq, head_hash=signed.hash, epoch=entry.epoch)
    if moved.unrecorded:
        moved = replace(moved, unrecorded=_still_unrecorded(moved))
    return moved


def _moved(state: MembershipState, changes: _Changes, **head: object) -> MembershipState:
    """`replace(state, **changes, **head)` without running the 16-field __init__ again.

    One copy per entry is the hot path of verifying a long log (TESTPLAN P2: 10,000 entries in
    under 2 s, most of it Ed25519), and dataclasses.replace cost more than decoding the entry.
    The state has no derived or cached attributes, so copying its fields is the whole copy.
    """
    moved = object.__new__(MembershipState)
    fields = moved.__dict__
    fields.update(state.__dict__)
    fields.update(changes)
    fields.update(head)
    return moved


def _check_position(state: MembershipState, signed: SignedEntry) -> None:
    seq, head = signed.entry.seq, state.head_seq
    if seq == head and signed.hash != state.head_hash:
        raise VerificationError(
            Reason.FORK, f"the owner signed two different entries for seq {seq}"
        )
    if seq <= head:
        raise VerificationError(Reason.REPLAYED, f"entry {seq} is already in the log (at {head})")
    if seq > head + 1:
        raise VerificationError(
            Reason.BROKEN_CHAIN, f"entries {head + 1} to {seq - 1} are missing before entry {seq}"
        )
    if signed.entry.prev != state.head_hash:
        raise VerificationError(
            Reason.BROKEN_CHAIN, f"entry {seq} does not follow this device's entry {head}"
        )


def _check_epoch(state: MembershipState, entry: Entry) -> None:
    expected = state.epoch + 1 if starts_epoch(entry.body) else state.epoch
    if entry.epoch != expected:
        raise VerificationError(
            Reason.WRONG_EPOCH,
            f"a {entry.body.kind} entry at epoch {state.epoch} must name epoch {expected}, "
            f"not {entry.epoch}",
        )


def _apply_body(state: MembershipState, entry: Entry, entry_hash: bytes) -> _Changes:
    body = entry.body
    if isinstance(body, Invite):
        return _invite(state, body, entry, entry_hash)
    if isinstance(body, RoleChange):
        return _change_role(state, body)
    if isinstance(body, Remove):
        return _remove(state, body, entry.epoch)
    if isinstance(body, Record):
        return _record(state, body, entry.epoch)
    return _album_change(state, entry)


def _album_change(state: MembershipState, entry: Entry) -> _Changes:
    body = entry.body
    if isinstance(body, Rename):
        return {"name_entry": entry}
    if isinstance(body, SetCover):
        return {"cover_entry": entry}
    if isinstance(body, DeleteAlbum):
        return {"deleted": True}
    if isinstance(body, Rotate):
        _check_sealed_to(body.keys, state.readers())
        return {"ledger": epochs.record(state.ledger, _deliveries(body.keys, entry.epoch))}
    raise VerificationError(Reason.MALFORMED, f"a {body.kind} entry cannot follow the genesis")


def _change_role(state: MembershipState, body: RoleChange) -> _Changes:
    member = _reading_member(state, body.member)
    _check_after_seq(state, body.member, body.after_seq)
    return _Changes(
        log_members=_put(state.log_members, body.member, replace(member, role=body.role)),
        grants=_with_grant(state, body.member, Grant(body.after_seq, body.role)),
    )


def _invite(state: MembershipState, body: Invite, entry: Entry, entry_hash: bytes) -> _Changes:
    if body.member == state.owner:
        raise VerificationError(Reason.MALFORMED, "the owner cannot invite its own device")
    _check_device(body.member)
    _check_certificate(body.member_cert, body.member, _device(body.member))
    current = state.log_members.get(body.member)
    if current is not None and current.status in _READING:
        raise VerificationError(
            Reason.NOT_AUTHORIZED, f"{_device(body.member)} is already {current.status.value}"
        )
    if len(state.readers()) > MAX_MEMBERS:
        raise VerificationError(
            Reason.OUT_OF_BOUNDS, f"an album has at most {MAX_MEMBERS} members besides its owner"
        )
    if len(body.epoch_keys) != state.epoch + 1:
        raise VerificationError(
            Reason.WRONG_EPOCH,
            f"an invite at epoch {state.epoch} seals {state.epoch + 1} epoch keys, "
            f"not {len(body.epoch_keys)}",
        )
    _check_after_seq(state, body.member, body.after_seq)
    member = Member(
        key=body.member,
        cert=body.member_cert,
        role=body.role,
        status=Status.INVITED,
        invite=entry_hash,
        nonce=body.nonce,
        message_box=body.message_box,
        owner_message_box=body.owner_message_box,
        invited_seq=entry.seq,
        invited_epoch=state.epoch,
        invited_at=entry.at,
    )
    return _Changes(
        log_members=_put(state.log_members, body.member, member),
        grants=_with_grant(state, body.member, Grant(body.after_seq, body.role)),
        invites=_put(state.invites, entry_hash, body.member),
        ledger=epochs.record(state.ledger, [Delivery(body.member, 0, body.epoch_keys)]),
    )


def _remove(state: MembershipState, body: Remove, epoch: int) -> _Changes:
    member = _reading_member(state, body.member)
    _check_after_seq(state, body.member, body.after_seq)
    _check_sealed_to(body.keys, state.readers() - {body.member})
    grant = Grant(body.after_seq, None, keep_photos=body.keep_photos)
    return _lose(state, replace(member, status=Status.REMOVED), grant, body.keys, epoch)


def _record(state: MembershipState, body: Record, epoch: int) -> _Changes:
    said = body.statement.statement
    member = _check_binding(state, said, accepted=False)
    if said.kind is StatementKind.ACCEPT:
        active = replace(member, status=Status.ACTIVE, sealed_name=said.sealed_name)
        return {"log_members": _put(state.log_members, said.member, active)}
    _check_sealed_to(body.keys, state.readers() - {said.member})
    status = Status.LEFT if said.kind is StatementKind.LEAVE else Status.DECLINED
    grant = replace(_loss_grant(state, said), keep_photos=body.keep_photos)
    return _lose(state, replace(member, status=status), grant, body.keys, epoch)


def _lose(
    state: MembershipState, member: Member, grant: Grant, keys: SealedKeys, epoch: int
) -> _Changes:
    return _Changes(
        log_members=_put(state.log_members, member.key, member),
        grants=_with_grant(state, member.key, grant),
        ledger=epochs.record(state.ledger, _deliveries(keys, epoch)),
    )


def _check_binding(state: MembershipState, said: Statement, *, accepted: bool) -> Member:
    """The member a statement speaks for, if it is bound to this album and its open membership.

    `accepted`: an unrecorded accept of the same member was already seen (a leave may follow it).
    """
    if said.album != state.album_id:
        raise VerificationError(Reason.WRONG_ALBUM, "a statement about another album")
    invitee = state.invites.get(said.invite)
    if invitee is None:
        raise VerificationError(
            Reason.UNKNOWN_MEMBER, "a statement about an invite this device has not seen"
        )
    if invitee != said.member:
        raise VerificationError(
            Reason.NOT_AUTHORIZED, f"{_device(said.member)} answers an invite of another device"
        )
    member = state.log_members[said.member]
    if member.invite != said.invite:
        raise VerificationError(
            Reason.REPLAYED, f"a {said.kind.value} statement about an earlier invite"
        )
    if said.kind is StatementKind.LEAVE:
        _check_leave(state, member, said, accepted=accepted)
    elif said.nonce != member.nonce:
        raise VerificationError(Reason.NOT_AUTHORIZED, "the statement does not repeat the nonce")
    elif member.status is not Status.INVITED:
        raise VerificationError(
            Reason.REPLAYED, f"the invite of {_device(said.member)} is no longer open"
        )
    return member


def _check_leave(
    state: MembershipState, member: Member, said: Statement, *, accepted: bool
) -> None:
    if member.status is Status.INVITED and not accepted:
        # The member's accept has not reached this device yet (or its record): the leave waits.
        raise VerificationError(
            Reason.NOT_YET, f"{_device(said.member)} leaves an invite it has not accepted here yet"
        )
    if not (member.status is Status.ACTIVE or (accepted and member.status is Status.INVITED)):
        raise VerificationError(
            Reason.REPLAYED, f"{_device(said.member)} is {member.status.value}, it cannot leave"
        )
    if said.epoch < member.invited_epoch:
        raise VerificationError(Reason.MALFORMED, "a leave naming an epoch before its invite")
    if said.epoch > state.epoch:
        raise VerificationError(
            Reason.WRONG_EPOCH,
            f"a leave at epoch {said.epoch}, but this device knows epochs up to {state.epoch}",
        )


def _still_unrecorded(state: MembershipState) -> dict[bytes, tuple[SignedStatement, ...]]:
    """The unrecorded statements that still bind after the log moved (recorded ones drop out)."""
    kept: dict[bytes, tuple[SignedStatement, ...]] = {}
    for key, held in state.unrecorded.items():
        keep: list[SignedStatement] = []
        for signed in held:
            accepted = any(k.statement.kind is StatementKind.ACCEPT for k in keep)
            try:
                _check_binding(state, signed.statement, accepted=accepted)
            except VerificationError:
                continue
            keep.append(signed)
        if keep:
            kept[key] = tuple(keep)
    return kept


def _loss_grant(state: MembershipState, said: Statement) -> Grant:
    """A decline or leave ends access after the member's last grant, or its declared last seq."""
    last = state.last_after_seq(said.member)
    if said.kind is StatementKind.LEAVE:
        return Grant(max(last, said.last_seq), None)
    return Grant(last, None)


def _reading_member(state: MembershipState, key: bytes) -> Member:
    member = state.log_members.get(key)
    if member is None or member.status not in _READING:
        status = "not a member" if member is None else member.status.value
        raise VerificationError(Reason.NOT_AUTHORIZED, f"{_device(key)} is {status}")
    return member


def _check_after_seq(state: MembershipState, key: bytes, after_seq: int) -> None:
    last = state.last_after_seq(key)
    if after_seq < last:
        raise VerificationError(
            Reason.BACKDATED,
            f"after_seq {after_seq} for {_device(key)} goes back before {last}, "
            "which an earlier entry already set",
        )


def _with_grant(state: MembershipState, key: bytes, grant: Grant) -> dict[bytes, tuple[Grant, ...]]:
    return _put(state.grants, key, (*state.grants.get(key, ()), grant))


def _check_sealed_to(keys: SealedKeys, expected: frozenset[bytes]) -> None:
    got = frozenset(recipient for recipient, _ in keys)
    if got != expected:
        raise VerificationError(
            Reason.MALFORMED,
            f"the new epoch's key is sealed to {len(got)} devices, but {len(expected)} may read "
            f"({len(got - expected)} not entitled, {len(expected - got)} left out)",
        )


def _check_device(key: bytes) -> None:
    x25519_public_from_ed25519(key)


def _check_certificate(cert: bytes, key: bytes, whose: str) -> None:
    """The certificate must be the device certificate of `key`: it then holds nothing else."""
    try:
        certified = verify_certificate(cert)
    except VerificationError as err:
        raise VerificationError(err.reason, f"{whose}: {err.message}") from None
    if certified.public_key != key:
        raise VerificationError(
            Reason.BAD_CERTIFICATE, f"the certificate given for {whose} is another device's"
        )


def _verify(public: bytes, signed: SignedEntry, message: str) -> None:
    try:
        verify_signature(public, DOMAIN, signed.raw, signed.sig)
    except VerificationError:
        raise VerificationError(Reason.BAD_SIGNATURE, message) from None


def _forked(fork: Fork | None) -> VerificationError:
    seq = "?" if fork is None else str(fork.seq)
    return VerificationError(
        Reason.FORK,
        f"the owner signed two different entries for seq {seq}; this album accepts no "
        "membership change until the owner resolves it",
    )


def _deliveries(keys: SealedKeys, epoch: int) -> list[Delivery]:
    return [Delivery(recipient, epoch, (box,)) for recipient, box in keys]


def _put(mapping: Mapping[bytes, _T], key: bytes, value: _T) -> dict[bytes, _T]:
    copy = dict(mapping)
    copy[key] = value
    return copy


def _device(key: bytes) -> str:
    return f"device {key[:4].hex()}…"
