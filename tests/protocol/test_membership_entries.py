"""Membership entries: canonical round trips, bounds, and untrusted bytes (A2 for log entries)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.encoding import decode, encode
from protocol.errors import DecodeError, LocalProtocolError, VerificationError
from protocol.keys import DeviceKey
from protocol.membership import MembershipState, apply, apply_statement
from protocol.membership_builders import build_accept, build_leave
from protocol.membership_entries import (
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
    decode_entry,
    sign_entry,
)
from protocol.membership_log import MembershipLog
from protocol.membership_sealing import (
    MAX_MESSAGE_BOX_BYTES,
    MAX_SEALED_NAME_BYTES,
    MIN_MESSAGE_BOX_BYTES,
    MIN_SEALED_NAME_BYTES,
    PAD_BLOCK,
    SEALED_COVER_BYTES,
)
from protocol.rights import Role
from protocol.statements import Statement, StatementKind, decode_statement, sign_statement
from tests.protocol.membership_helpers import (
    DECLINER,
    EDITOR,
    LEAVER,
    NOW,
    OWNER,
    VIEWER,
    Album,
    cert,
    inner_fields,
    resign,
)

UNTRUSTED = (DecodeError, VerificationError)
MEMBERS = [EDITOR, VIEWER, LEAVER, DECLINER]


def _full_album() -> tuple[Album, list[MembershipState]]:
    """An album whose log holds every kind of entry, and the state before each entry."""
    album = Album()
    states = [album.state]

    def step(action: Any, *args: Any, **kwargs: Any) -> None:
        action(*args, **kwargs)
        states.append(album.state)

    step(album.invite, EDITOR)
    step(album.record, build_accept(album.state, EDITOR, now=NOW))
    step(album.invite, VIEWER, Role.VIEWER)
    step(album.invite, DECLINER)
    step(album.decline, DECLINER)
    step(album.invite, LEAVER)
    step(album.record, build_accept(album.state, LEAVER, now=NOW))
    step(album.record, build_leave(album.state, LEAVER, last_seq=3, now=NOW), keep_photos=True)
    step(album.rename, "Autumn")
    step(album.remove, VIEWER, after_seq=0)
    step(album.rotate)
    return album, states


FULL, STATES = _full_album()
KINDS = {type(decode_entry(e).entry.body).__name__ for e in FULL.envelopes}


def test_the_full_album_covers_every_kind_but_cover_and_delete() -> None:
    assert {"Genesis", "Invite", "Record", "Remove", "Rename", "Rotate"} == KINDS


# ---------------------------------------------------------------------------------------------
# Round trips

keys32 = st.binary(min_size=32, max_size=32)
boxes = st.binary(min_size=80, max_size=80)
sealed = st.lists(st.tuples(keys32, boxes), max_size=4, unique_by=lambda p: p[0]).map(
    lambda pairs: tuple(sorted(pairs))
)


def _sealed_sizes(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    """Opaque sealed values of every size a verifier without keys accepts."""
    return st.integers(0, (hi - lo) // PAD_BLOCK).flatmap(
        lambda blocks: st.binary(min_size=lo + blocks * PAD_BLOCK, max_size=lo + blocks * PAD_BLOCK)
    )


sealed_names = _sealed_sizes(MIN_SEALED_NAME_BYTES, MAX_SEALED_NAME_BYTES)
sealed_covers = st.binary(min_size=SEALED_COVER_BYTES, max_size=SEALED_COVER_BYTES)
message_boxes = _sealed_sizes(MIN_MESSAGE_BOX_BYTES, MAX_MESSAGE_BOX_BYTES)
roles = st.sampled_from([Role.VIEWER, Role.EDITOR])
seqs = st.integers(0, 2**63 - 1)


@st.composite
def signed_statements(draw: st.DrawFn) -> Any:
    member = draw(st.sampled_from(MEMBERS))
    kind = draw(st.sampled_from(list(StatementKind)))
    statement = Statement(
        album=draw(keys32),
        kind=kind,
        member=member.public,
        invite=draw(keys32),
        at=draw(st.integers(0, 2**40)),
    )
    if kind is StatementKind.LEAVE:
        statement = Statement(
            **{**statement.__dict__, "epoch": draw(st.integers(0, 9_999)), "last_seq": draw(seqs)}
        )
    else:
        statement = Statement(
            **{**statement.__dict__, "nonce": draw(st.binary(min_size=16, max_size=16))}
        )
    return decode_statement(sign_statement(member, statement))


@st.composite
def records(draw: st.DrawFn) -> Record:
    signed = draw(signed_statements())
    kind = signed.statement.kind
    if kind is StatementKind.ACCEPT:
        return Record(statement=signed)
    keep = draw(st.booleans()) if kind is StatementKind.LEAVE else False
    return Record(statement=signed, keep_photos=keep, keys=draw(sealed))


bodies = st.one_of(
    st.builds(
        Invite,
        member=keys32,
        member_cert=st.binary(max_size=64),
        role=roles,
        message_box=message_boxes,
        owner_message_box=message_boxes,
        nonce=st.binary(min_size=16, max_size=16),
        epoch_keys=st.lists(boxes, min_size=1, max_size=4).map(tuple),
        after_seq=seqs,
    ),
    st.builds(RoleChange, member=keys32, role=roles, after_seq=seqs),
    st.builds(Remove, member=keys32, after_seq=seqs, keep_photos=st.booleans(), keys=sealed),
    records(),
    st.builds(Rename, sealed_name=sealed_names),
    st.builds(SetCover, sealed_cover=sealed_covers),
    st.just(DeleteAlbum()),
    st.builds(Rotate, keys=sealed),
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    if draw(st.integers(0, 9)) == 0:
        genesis = Genesis(
            owner=draw(keys32),
            owner_cert=draw(st.binary(max_size=64)),
            sealed_name=draw(sealed_names),
            keys=draw(sealed),
        )
        return Entry(seq=0, epoch=draw(st.integers(0, 9_999)), at=draw(seqs), body=genesis)
    return Entry(
        seq=draw(st.integers(1, 2**63 - 1)),
        epoch=draw(st.integers(0, 9_999)),
        at=draw(seqs),
        body=draw(bodies),
        album=draw(keys32),
        prev=draw(keys32),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries())
def test_entries_round_trip_canonically(entry: Entry) -> None:
    envelope = sign_entry(OWNER, entry)
    signed = decode_entry(envelope)
    assert signed.entry == entry
    assert encode(decode(envelope)) == envelope
    assert encode(decode(signed.raw)) == signed.raw
    assert sign_entry(OWNER, signed.entry) == envelope


def test_every_logged_entry_round_trips() -> None:
    for envelope in FULL.envelopes:
        assert sign_entry(OWNER, decode_entry(envelope).entry) == envelope


# ---------------------------------------------------------------------------------------------
# Untrusted bytes


def _only_protocol_errors(call: Any, *args: Any) -> None:
    with contextlib.suppress(*UNTRUSTED):
        call(*args)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_A2_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    log = MembershipLog(FULL.genesis)
    for call, args in (
        (decode_entry, (data,)),
        (decode_statement, (data,)),
        (apply, (FULL.state, data)),
        (apply_statement, (FULL.state, data)),
        (log.add, (data,)),
        (log.add_statement, (data,)),
    ):
        _only_protocol_errors(call, *args)
    assert log.state.head_seq == 0


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(1, len(FULL.envelopes) - 1),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=4,
    ),
)
def test_A2_mutated_entries_are_always_refused(
    index: int, edits: list[tuple[int, int, str]]
) -> None:
    original = FULL.envelopes[index]
    data = bytearray(original)
    for position, value, how in edits:
        at = position % (len(data) + 1)
        if how == "x" and at < len(data):
            data[at] ^= value or 1
        elif how == "i":
            data.insert(at, value)
        elif at < len(data):
            del data[at]
    if bytes(data) == original:
        return
    with pytest.raises(UNTRUSTED):
        apply(STATES[index - 1], bytes(data))


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.binary(max_size=90)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(1, len(FULL.envelopes) - 1), field=st.text(max_size=12), value=values)
def test_A2_owner_signed_garbage_fields_raise_only_protocol_errors(
    index: int, field: str, value: Any
) -> None:
    """Even the owner's key cannot make a verifier crash: every field replaced by any value."""
    fields = inner_fields(FULL.envelopes[index])
    fields[field if field else next(iter(fields))] = value
    raw = encode(fields)
    envelope = encode({"entry": raw, "sig": OWNER.sign(b"membership", raw)})
    state = STATES[index - 1]
    try:
        after = apply(state, envelope)
    except UNTRUSTED:
        return
    assert after.head_seq == state.head_seq + 1  # a harmless change, e.g. another sealed name


# ---------------------------------------------------------------------------------------------
# Canonical form: one value, one encoding


def _entry_fields(envelope: bytes) -> dict[str, Any]:
    return dict(inner_fields(envelope))


def _signed(fields: dict[str, Any]) -> bytes:
    raw = encode(fields)
    return encode({"entry": raw, "sig": OWNER.sign(b"membership", raw)})


@pytest.mark.parametrize(
    ("index", "change", "refusal"),
    [
        (0, {"album": bytes(32)}, "unknown field(s) album"),  # a genesis names no album
        (0, {"seq": 1}, "the genesis is seq 0"),
        (1, {"seq": 0}, "the genesis is seq 0"),
        (1, {"role": "Editor"}, "role must be"),  # Role.parse would accept it; the wire does not
        (1, {"role": "owner"}, "role must be"),
        (1, {"extra": 1}, "unknown field(s) extra"),
        (1, {"nonce": bytes(15)}, "must be 16 bytes"),
        (1, {"epoch_keys": [bytes(79)]}, "sealed epoch key is 80 bytes"),
        (1, {"message_box": bytes(MIN_MESSAGE_BOX_BYTES - 1)}, "not the size of a sealed value"),
        (1, {"owner_message_box": bytes(MIN_MESSAGE_BOX_BYTES + 1)}, "whole 32-byte blocks"),
        (1, {"message": "Welcome!"}, "unknown field(s) message"),  # no plaintext message
        (1, {"cert": b"cert"}, "device certificate refused"),
        (1, {"cert": cert(VIEWER)}, "is another device's"),
        (0, {"cert": cert(EDITOR)}, "is another device's"),
        (0, {"name": "Summer 2026"}, "unknown field(s) name"),  # no plaintext name
        (9, {"sealed_name": b""}, "not the size of a sealed value"),
        (9, {"sealed_name": bytes(MAX_SEALED_NAME_BYTES + PAD_BLOCK)}, "longer than 872 bytes"),
        (9, {"sealed_name": "Autumn"}, "must be bytes"),
        (10, {"keys": []}, "sealed to 0 devices, but 2 may read"),  # decodes; the rules refuse
        (2, {"keys": []}, "unknown field(s) keys"),  # a recorded accept carries no keys
        (8, {"keep_photos": None}, "must be true or false"),
    ],
)
def test_non_canonical_or_out_of_bounds_fields_are_refused(
    index: int, change: dict[str, Any], refusal: str
) -> None:
    envelope = _signed({**_entry_fields(FULL.envelopes[index]), **change})
    check = MembershipLog if index == 0 else lambda e: apply(STATES[index - 1], e)
    with pytest.raises(UNTRUSTED) as err:
        check(envelope)
    assert refusal in err.value.message


def test_unsorted_or_duplicate_recipients_are_refused() -> None:
    fields = _entry_fields(FULL.envelopes[-1])  # the rotate
    pairs = fields["keys"]
    assert len(pairs) >= 2
    for bad in (list(reversed(pairs)), [pairs[0], pairs[0]]):
        with pytest.raises(DecodeError, match="sorted and unique"):
            decode_entry(_signed({**fields, "keys": bad}))


def test_a_record_can_only_carry_what_its_statement_needs() -> None:
    accept = decode_entry(FULL.envelopes[2]).entry.body
    assert isinstance(accept, Record)
    with pytest.raises(LocalProtocolError):
        Record(statement=accept.statement, keep_photos=True).fields()
    with pytest.raises(LocalProtocolError):
        Record(statement=accept.statement, keys=((bytes(32), bytes(80)),)).fields()


def test_an_editor_signature_never_passes_for_the_owner() -> None:
    for index in range(1, len(FULL.envelopes)):
        with pytest.raises(VerificationError):
            apply(STATES[index - 1], resign(FULL.envelopes[index], EDITOR))


def test_a_random_owner_cannot_pass_a_forged_genesis_as_this_album() -> None:
    other = DeviceKey(os.urandom(32))
    forged = resign(
        FULL.genesis,
        other,
        body=Genesis(
            owner=other.public,
            owner_cert=cert(other),
            sealed_name=decode_entry(FULL.genesis).entry.body.sealed_name,  # type: ignore[union-attr]
            keys=decode_entry(FULL.genesis).entry.body.keys,  # type: ignore[union-attr]
        ),
    )
    with pytest.raises(VerificationError):
        MembershipLog(forged, album_id=FULL.state.album_id)
