"""Test fixtures for the membership log: fixed device keys and an owner's album that records its log."""

from __future__ import annotations

import functools
import os
from dataclasses import replace

from protocol.certificate import make_certificate
from protocol.encoding import Value, decode
from protocol.keys import DeviceKey
from protocol.membership import MembershipState
from protocol.membership_builders import (
    build_accept,
    build_cover,
    build_decline,
    build_genesis,
    build_invite,
    build_leave,
    build_record,
    build_remove,
    build_rename,
    build_role,
    build_rotate,
)
from protocol.membership_entries import Entry, decode_entry, sign_entry, starts_epoch
from protocol.rights import Role

NOW = 1_780_000_000
OWNER = DeviceKey(bytes([1]) * 32)
EDITOR = DeviceKey(bytes([2]) * 32)
VIEWER = DeviceKey(bytes([3]) * 32)
LEAVER = DeviceKey(bytes([4]) * 32)
DECLINER = DeviceKey(bytes([5]) * 32)
STRANGER = DeviceKey(bytes([6]) * 32)
LATECOMER = DeviceKey(bytes([7]) * 32)
EVERYONE = (OWNER, EDITOR, VIEWER, LEAVER, DECLINER, STRANGER, LATECOMER)


@functools.cache
def cert(device: DeviceKey) -> bytes:
    """The device's certificate, as a genesis or an invite must carry it."""
    return make_certificate(device)


class Album:
    """An owner's album in a test: each step builds the next entry and keeps every envelope."""

    def __init__(self, owner: DeviceKey = OWNER, name: str = "Summer 2026") -> None:
        self.owner = owner
        self.genesis, self.state = build_genesis(
            owner, owner_cert=cert(owner), name=name, now=NOW, rng=os.urandom
        )
        self.envelopes = [self.genesis]
        self.statements: list[bytes] = []

    def _keep(self, written: tuple[bytes, MembershipState]) -> bytes:
        envelope, self.state = written
        self.envelopes.append(envelope)
        return envelope

    def invite(
        self,
        member: DeviceKey,
        role: Role = Role.EDITOR,
        after_seq: int | None = None,
        message: str = "Welcome!",
    ) -> bytes:
        return self._keep(
            build_invite(
                self.state,
                self.owner,
                member=member.public,
                member_cert=cert(member),
                role=role,
                message=message,
                now=NOW,
                rng=os.urandom,
                after_seq=after_seq,
            )
        )

    def record(self, statement: bytes, *, keep_photos: bool = False) -> bytes:
        self.statements.append(statement)
        return self._keep(
            build_record(
                self.state,
                self.owner,
                statement=statement,
                keep_photos=keep_photos,
                now=NOW,
                rng=os.urandom,
            )
        )

    def join(self, member: DeviceKey, role: Role = Role.EDITOR) -> bytes:
        """Invite, accept and record; returns the accept statement."""
        self.invite(member, role)
        accept = build_accept(self.state, member, now=NOW)
        self.record(accept)
        return accept

    def leave(self, member: DeviceKey, last_seq: int = 0) -> bytes:
        leave = build_leave(self.state, member, last_seq=last_seq, now=NOW)
        self.record(leave)
        return leave

    def decline(self, member: DeviceKey) -> bytes:
        decline = build_decline(self.state, member, now=NOW)
        self.record(decline)
        return decline

    def remove(self, member: DeviceKey, after_seq: int = 0, keep_photos: bool = False) -> bytes:
        return self._keep(
            build_remove(
                self.state,
                self.owner,
                member=member.public,
                after_seq=after_seq,
                keep_photos=keep_photos,
                now=NOW,
                rng=os.urandom,
            )
        )

    def rename(self, name: str) -> bytes:
        return self._keep(build_rename(self.state, self.owner, name=name, now=NOW, rng=os.urandom))

    def cover(self, cover: bytes) -> bytes:
        return self._keep(build_cover(self.state, self.owner, cover=cover, now=NOW, rng=os.urandom))

    def role(self, member: DeviceKey, role: Role, after_seq: int) -> bytes:
        return self._keep(
            build_role(
                self.state,
                self.owner,
                member=member.public,
                role=role,
                after_seq=after_seq,
                now=NOW,
            )
        )

    def read_name(self, device: DeviceKey) -> str | None:
        """The current album name as `device` reads it with the keys sealed to it."""
        return self.state.album_name(self.state.epoch_keys(device))

    def rotate(self) -> bytes:
        return self._keep(build_rotate(self.state, self.owner, now=NOW, rng=os.urandom))


def inner_fields(envelope: bytes, key: str = "entry") -> dict[str, Value]:
    """The decoded fields of the signed map inside an envelope ("entry" or "statement")."""
    outer = decode(envelope)
    assert isinstance(outer, dict)
    raw = outer[key]
    assert isinstance(raw, bytes)
    fields = decode(raw)
    assert isinstance(fields, dict)
    return fields


def resign(envelope: bytes, key: DeviceKey, **changes: object) -> bytes:
    """The envelope's entry with `changes` applied, signed by `key` (a forger or the owner)."""
    entry: Entry = replace(decode_entry(envelope).entry, **changes)  # type: ignore[arg-type]
    return sign_entry(key, entry)


def next_entry(state: MembershipState, envelope: bytes, key: DeviceKey, **changes: object) -> bytes:
    """`envelope`'s body re-signed by `key` at `state`'s next position (plus `changes`)."""
    body = decode_entry(envelope).entry.body
    fields: dict[str, object] = {
        "album": state.album_id,
        "seq": state.head_seq + 1,
        "prev": state.head_hash,
        "epoch": state.epoch + 1 if starts_epoch(body) else state.epoch,
    }
    fields.update(changes)
    return resign(envelope, key, **fields)
