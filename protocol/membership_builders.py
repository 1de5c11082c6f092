"""Writing the membership log: the owner's entries and the members' statements.

Every builder draws fresh secrets from `rng`, signs, and checks its result with the verifier
(protocol/membership.py) before returning it, so it never emits what a peer would refuse; a rule it
would break is a LocalProtocolError carrying the verifier's own sentence. Loss-of-access builders
(remove, record of a decline or leave) and rotate seal a fresh 32-byte epoch key to exactly the
devices that still read. Owner builders return (envelope, new state); statement builders return
the envelope, to gossip and to `apply_statement`.

Builders take plaintext (`name=`, `cover=`, `message=`), check it (the verifier cannot: it sees
ciphertext only) and seal it (protocol/membership_sealing.py): names and covers under the entry's
epoch key with a nonce from `rng`, messages to the invitee and the owner, and a member's device
name (`build_accept(name=)`) under the key of the epoch its invite reached, bound to the invite.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from protocol import epochs, membership_sealing
from protocol.epochs import EPOCH_KEY_SIZE, MAX_EPOCHS, SealedKeys
from protocol.errors import DecodeError, LocalProtocolError, VerificationError
from protocol.keys import DeviceKey, Rng, seal
from protocol.membership import MembershipState, apply, apply_statement, verify_genesis
from protocol.membership_entries import (
    Body,
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
    associated_data,
    sign_entry,
    starts_epoch,
)
from protocol.rights import Role
from protocol.statements import (
    NONCE_SIZE,
    Statement,
    StatementKind,
    decode_statement,
    sign_statement,
)


def build_genesis(
    owner: DeviceKey, *, owner_cert: bytes, name: str, now: int, rng: Rng
) -> tuple[bytes, MembershipState]:
    """A new album's genesis envelope and state; epoch 0's key is fresh from `rng`."""
    with _refusal():
        key = _random(rng, EPOCH_KEY_SIZE)
        keys = epochs.seal_epoch_key(key, [owner.public])
        body = Genesis(owner=owner.public, owner_cert=owner_cert, sealed_name=b"", keys=keys)
        entry = Entry(seq=0, epoch=0, at=now, body=body)
        sealed = membership_sealing.seal_name(
            name, key=key, associated_data=associated_data(entry), rng=rng
        )
        envelope = sign_entry(owner, replace(entry, body=replace(body, sealed_name=sealed)))
        return envelope, verify_genesis(envelope)


def build_invite(
    state: MembershipState,
    owner: DeviceKey,
    *,
    member: bytes,
    member_cert: bytes,
    role: Role,
    message: str = "",
    now: int,
    rng: Rng,
    after_seq: int | None = None,
) -> tuple[bytes, MembershipState]:
    """Invite `member` as viewer or editor, sealing it every epoch key so far.

    The message is sealed to the member and to the owner. `after_seq` defaults to the member's
    last grant (0 for a first invite).
    """
    with _refusal():
        keys = state.epoch_keys(owner)
        if sorted(keys) != list(range(state.epoch + 1)):
            raise LocalProtocolError("this device does not hold every epoch key of the album")
        nonce = _random(rng, NONCE_SIZE)
        boxes = [
            membership_sealing.seal_message(
                message, recipient=recipient, album=state.album_id, nonce=nonce
            )
            for recipient in (member, owner.public)
        ]
        body = Invite(
            member=member,
            member_cert=member_cert,
            role=role,
            message_box=boxes[0],
            owner_message_box=boxes[1],
            nonce=nonce,
            epoch_keys=tuple(seal(member, keys[epoch]) for epoch in sorted(keys)),
            after_seq=state.last_after_seq(member) if after_seq is None else after_seq,
        )
        return _write(state, owner, body, now)


def build_role(
    state: MembershipState,
    owner: DeviceKey,
    *,
    member: bytes,
    role: Role,
    after_seq: int,
    now: int,
) -> tuple[bytes, MembershipState]:
    """Change a member's role for its manifest entries numbered after `after_seq`."""
    with _refusal():
        return _write(state, owner, RoleChange(member=member, role=role, after_seq=after_seq), now)


def build_remove(
    state: MembershipState,
    owner: DeviceKey,
    *,
    member: bytes,
    after_seq: int,
    keep_photos: bool = False,
    now: int,
    rng: Rng,
) -> tuple[bytes, MembershipState]:
    """Remove a member (or cancel its invite) and start a new epoch for the devices that remain."""
    with _refusal():
        keys = _next_epoch(state, state.readers() - {member}, rng)
        body = Remove(member=member, after_seq=after_seq, keep_photos=keep_photos, keys=keys)
        return _write(state, owner, body, now)


def build_record(
    state: MembershipState,
    owner: DeviceKey,
    *,
    statement: bytes,
    keep_photos: bool = False,
    now: int,
    rng: Rng,
) -> tuple[bytes, MembershipState]:
    """Record a member's statement; a decline or leave starts a new epoch."""
    with _refusal():
        signed = decode_statement(statement)
        said = signed.statement
        if said.kind is StatementKind.ACCEPT:
            return _write(state, owner, Record(statement=signed), now)
        keys = _next_epoch(state, state.readers() - {said.member}, rng)
        body = Record(statement=signed, keep_photos=keep_photos, keys=keys)
        return _write(state, owner, body, now)


def build_rename(
    state: MembershipState, owner: DeviceKey, *, name: str, now: int, rng: Rng
) -> tuple[bytes, MembershipState]:
    """Rename the album; the name is sealed under the current epoch's key."""
    with _refusal():
        entry = _next_entry(state, owner, Rename(sealed_name=b""), now)
        sealed = membership_sealing.seal_name(
            name, key=_current_key(state, owner), associated_data=associated_data(entry), rng=rng
        )
        return _sign(state, owner, replace(entry, body=Rename(sealed_name=sealed)))


def build_cover(
    state: MembershipState, owner: DeviceKey, *, cover: bytes, now: int, rng: Rng
) -> tuple[bytes, MembershipState]:
    """Set the album's cover (a file reference of at most 64 bytes; empty clears it), sealed."""
    with _refusal():
        entry = _next_entry(state, owner, SetCover(sealed_cover=b""), now)
        sealed = membership_sealing.seal_cover(
            cover, key=_current_key(state, owner), associated_data=associated_data(entry), rng=rng
        )
        return _sign(state, owner, replace(entry, body=SetCover(sealed_cover=sealed)))


def build_delete(
    state: MembershipState, owner: DeviceKey, *, now: int
) -> tuple[bytes, MembershipState]:
    """Delete the album for everyone; the log accepts nothing after it."""
    with _refusal():
        return _write(state, owner, DeleteAlbum(), now)


def build_rotate(
    state: MembershipState, owner: DeviceKey, *, now: int, rng: Rng
) -> tuple[bytes, MembershipState]:
    """Start a new epoch for the current readers without anyone losing access."""
    with _refusal():
        return _write(state, owner, Rotate(keys=_next_epoch(state, state.readers(), rng)), now)


def build_accept(
    state: MembershipState,
    member: DeviceKey,
    *,
    now: int,
    name: str = "",
    rng: Rng | None = None,
) -> bytes:
    """The member's acceptance of its current invite.

    `name`, if given, is this device's name for the album's readers (the members who never meet
    it see it instead of a short ID): sealed under the key of the epoch the invite reached, which
    the invite sealed to the member, with a nonce from `rng`.
    """
    return _state_statement(state, member, StatementKind.ACCEPT, now=now, name=name, rng=rng)


def build_decline(state: MembershipState, member: DeviceKey, *, now: int) -> bytes:
    """The member's refusal of its current invite."""
    return _state_statement(state, member, StatementKind.DECLINE, now=now)


def build_leave(state: MembershipState, member: DeviceKey, *, last_seq: int, now: int) -> bytes:
    """The member's leave; `last_seq` is its last manifest entry, nothing after it counts."""
    return _state_statement(state, member, StatementKind.LEAVE, now=now, last_seq=last_seq)


# ---------------------------------------------------------------------------------------------
# Private helpers


def _write(
    state: MembershipState, owner: DeviceKey, body: Body, now: int
) -> tuple[bytes, MembershipState]:
    return _sign(state, owner, _next_entry(state, owner, body, now))


def _next_entry(state: MembershipState, owner: DeviceKey, body: Body, now: int) -> Entry:
    """`body` as the log's next entry (its header is what a sealed field is bound to)."""
    if owner.public != state.owner:
        raise LocalProtocolError("only the album owner writes the membership log")
    return Entry(
        album=state.album_id,
        seq=state.head_seq + 1,
        prev=state.head_hash,
        epoch=state.epoch + 1 if starts_epoch(body) else state.epoch,
        at=now,
        body=body,
    )


def _sign(state: MembershipState, owner: DeviceKey, entry: Entry) -> tuple[bytes, MembershipState]:
    envelope = sign_entry(owner, entry)
    return envelope, apply(state, envelope)


def _current_key(state: MembershipState, owner: DeviceKey) -> bytes:
    key = state.epoch_key(owner, state.epoch)
    if key is None:
        raise LocalProtocolError(f"this device does not hold the key of epoch {state.epoch}")
    return key


def _next_epoch(state: MembershipState, readers: frozenset[bytes], rng: Rng) -> SealedKeys:
    if state.epoch + 1 >= MAX_EPOCHS:
        raise LocalProtocolError(
            f"this album has used all {MAX_EPOCHS} key epochs; create a new album to go on sharing"
        )
    return epochs.seal_epoch_key(_random(rng, EPOCH_KEY_SIZE), readers)


def _state_statement(
    state: MembershipState,
    member: DeviceKey,
    kind: StatementKind,
    *,
    now: int,
    last_seq: int = 0,
    name: str = "",
    rng: Rng | None = None,
) -> bytes:
    with _refusal():
        current = state.log_members.get(member.public)
        if current is None:
            raise LocalProtocolError("this device has not been invited to the album")
        said = Statement(
            album=state.album_id, kind=kind, member=member.public, invite=current.invite, at=now
        )
        if kind is StatementKind.LEAVE:
            said = replace(said, epoch=state.epoch, last_seq=last_seq)
        else:
            said = replace(said, nonce=current.nonce)
        if name:
            said = replace(said, sealed_name=_seal_device_name(state, member, said, name, rng))
        envelope = sign_statement(member, said)
        apply_statement(state, envelope)
        return envelope


def _seal_device_name(
    state: MembershipState, member: DeviceKey, said: Statement, name: str, rng: Rng | None
) -> bytes:
    if rng is None:
        raise LocalProtocolError("sealing a device name needs rng")
    epoch = state.log_members[member.public].invited_epoch
    key = state.epoch_key(member, epoch)
    if key is None:
        raise LocalProtocolError(f"this device does not hold the key of epoch {epoch}")
    return membership_sealing.seal_device_name(
        name,
        key=key,
        associated_data=membership_sealing.device_name_binding(
            said.album, said.member, said.invite
        ),
        rng=rng,
    )


def _random(rng: Rng, size: int) -> bytes:
    value = rng(size)
    if not isinstance(value, bytes) or len(value) != size:
        raise LocalProtocolError(f"rng must return {size} bytes")
    return value


@contextmanager
def _refusal() -> Iterator[None]:
    """Turn a rule the log would refuse into the caller's error, with the log's own sentence."""
    try:
        yield
    except (VerificationError, DecodeError) as err:
        raise LocalProtocolError(f"the membership log refuses this: {err.message}") from err
