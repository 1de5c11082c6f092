"""Membership state machine: forged entries (C1), epochs (C5), roles (C6), replays (C7), statuses."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from protocol.encoding import decode, encode
from protocol.epochs import seal_epoch_key
from protocol.errors import LocalProtocolError, Reason, VerificationError
from protocol.keys import DeviceKey
from protocol.membership import (
    MembershipState,
    Status,
    apply,
    apply_statement,
    member_name,
    verify_genesis,
)
from protocol.membership_builders import (
    build_accept,
    build_cover,
    build_decline,
    build_delete,
    build_invite,
    build_leave,
    build_record,
    build_remove,
    build_rename,
    build_role,
    build_rotate,
)
from protocol.membership_entries import MAX_MEMBERS, decode_entry, sign_entry
from protocol.membership_log import AddStatus, MembershipLog
from protocol.rights import Grant, Role
from protocol.statements import Statement, StatementKind, sign_statement
from tests.protocol.membership_helpers import (
    DECLINER,
    EDITOR,
    EVERYONE,
    LATECOMER,
    LEAVER,
    NOW,
    OWNER,
    STRANGER,
    VIEWER,
    Album,
    cert,
    next_entry,
    resign,
)


def _refused(reason: Reason, state: MembershipState, envelope: bytes) -> None:
    with pytest.raises(VerificationError) as err:
        apply(state, envelope)
    assert err.value.reason is reason, err.value.message


def _refused_statement(reason: Reason, state: MembershipState, envelope: bytes) -> None:
    with pytest.raises(VerificationError) as err:
        apply_statement(state, envelope)
    assert err.value.reason is reason, err.value.message


def _log_of(album: Album) -> MembershipLog:
    log = MembershipLog(album.genesis, album_id=album.state.album_id)
    for envelope in album.envelopes[1:]:
        log.add(envelope)
    assert log.state == album.state
    return log


def _with_sig(envelope: bytes, flip: int) -> bytes:
    fields = decode(envelope)
    assert isinstance(fields, dict)
    sig = bytearray(fields["sig"])  # type: ignore[arg-type]
    sig[flip % len(sig)] ^= 0x01
    return encode({"entry": fields["entry"], "sig": bytes(sig)})


# ---------------------------------------------------------------------------------------------
# Genesis


def test_genesis_names_the_album_and_seals_epoch_zero_to_the_owner() -> None:
    album = Album()
    state = album.state
    assert state.album_id == decode_entry(album.genesis).hash
    assert (state.owner, state.epoch, state.head_seq) == (OWNER.public, 0, 0)
    assert album.read_name(OWNER) == "Summer 2026"
    assert state.recipients(0) == {OWNER.public}
    assert set(state.epoch_keys(OWNER)) == {0}
    assert verify_genesis(album.genesis, album_id=state.album_id) == state
    with pytest.raises(VerificationError) as err:
        verify_genesis(album.genesis, album_id=bytes(32))
    assert err.value.reason is Reason.WRONG_ALBUM
    with pytest.raises(VerificationError) as err:
        verify_genesis(_with_sig(album.genesis, 5))
    assert err.value.reason is Reason.BAD_SIGNATURE


def test_a_genesis_sealed_to_someone_else_is_refused() -> None:
    album = Album()
    leaked = seal_epoch_key(os.urandom(32), [OWNER.public, STRANGER.public])
    with pytest.raises(VerificationError) as err:
        verify_genesis(resign(album.genesis, OWNER, body=_replace_keys(album.genesis, leaked)))
    assert err.value.reason is Reason.MALFORMED


# ---------------------------------------------------------------------------------------------
# C1: forged and cross-album entries


@pytest.fixture(scope="module")
def two_albums() -> tuple[Album, Album, Album]:
    """Album Y and album X of the same owner at the same length, and a stranger's album Z."""
    y, x, z = Album(name="Y"), Album(name="X"), Album(owner=STRANGER, name="Z")
    for album in (y, x, z):
        album.join(EDITOR)
        album.invite(VIEWER, Role.VIEWER)
    return y, x, z


def _c1_cases(y: Album, x: Album, z: Album) -> list[tuple[str, bytes, Reason]]:
    state = y.state
    rename, _ = build_rename(state, OWNER, name="Forged", now=NOW, rng=os.urandom)
    remove, _ = build_remove(
        state, OWNER, member=VIEWER.public, after_seq=0, now=NOW, rng=os.urandom
    )
    copied, _ = build_rename(x.state, OWNER, name="From X", now=NOW, rng=os.urandom)
    strangers, _ = build_rename(z.state, STRANGER, name="From Z", now=NOW, rng=os.urandom)
    raw = decode(rename)
    assert isinstance(raw, dict)
    other_entry = decode(resign(rename, OWNER, body=decode_entry(copied).entry.body))
    assert isinstance(other_entry, dict)
    return [
        ("bad signature", _with_sig(rename, 17), Reason.BAD_SIGNATURE),
        (
            "entry changed under its signature",
            encode({"entry": other_entry["entry"], "sig": raw["sig"]}),
            Reason.BAD_SIGNATURE,
        ),
        ("signed by an editor", next_entry(state, rename, EDITOR), Reason.BAD_SIGNATURE),
        ("signed by a stranger", next_entry(state, rename, STRANGER), Reason.BAD_SIGNATURE),
        ("copied from album X (same owner)", copied, Reason.WRONG_ALBUM),
        ("copied from album Z (another owner)", strangers, Reason.WRONG_ALBUM),
        ("wrong prev hash", next_entry(state, rename, OWNER, prev=bytes(32)), Reason.BROKEN_CHAIN),
        (
            "prev hash of album X",
            next_entry(state, rename, OWNER, prev=x.state.head_hash),
            Reason.BROKEN_CHAIN,
        ),
        ("wrong epoch", next_entry(state, rename, OWNER, epoch=1), Reason.WRONG_EPOCH),
        ("loss without a new epoch", next_entry(state, remove, OWNER, epoch=0), Reason.WRONG_EPOCH),
        ("loss skipping an epoch", next_entry(state, remove, OWNER, epoch=2), Reason.WRONG_EPOCH),
        ("replayed old entry", y.envelopes[1], Reason.REPLAYED),
        ("replayed genesis", y.genesis, Reason.REPLAYED),
        ("genesis of album X", x.genesis, Reason.WRONG_ALBUM),
    ]


def test_C1_forged_and_cross_album_entries(two_albums: tuple[Album, Album, Album]) -> None:
    y, x, z = two_albums
    log = _log_of(y)
    before, chain = log.state, log.envelopes()
    for name, envelope, reason in _c1_cases(y, x, z):
        _refused(reason, y.state, envelope)
        if reason is Reason.REPLAYED:  # a log knows the entry and says so
            assert log.add(envelope).status is AddStatus.DUPLICATE, name
        else:
            with pytest.raises(VerificationError) as err:
                log.add(envelope)
            assert err.value.reason is reason, name
        assert log.state == before, name
        assert log.envelopes() == chain, name
        assert log.pending == 0, name


def test_C1_an_entry_with_a_gap_waits_at_log_level_and_fails_alone(
    two_albums: tuple[Album, Album, Album],
) -> None:
    y, _, _ = two_albums
    rename, _ = build_rename(y.state, OWNER, name="Later", now=NOW, rng=os.urandom)
    ahead = next_entry(y.state, rename, OWNER, seq=y.state.head_seq + 2)
    _refused(Reason.BROKEN_CHAIN, y.state, ahead)
    log = _log_of(y)
    assert log.add(ahead).status.value == "buffered"
    assert log.state == y.state


def test_C1_state_is_unchanged_by_every_rejection(two_albums: tuple[Album, Album, Album]) -> None:
    y, x, z = two_albums
    snapshot = repr(y.state)
    for _, envelope, _ in _c1_cases(y, x, z):
        with pytest.raises(VerificationError):
            apply(y.state, envelope)
    assert repr(y.state) == snapshot


# ---------------------------------------------------------------------------------------------
# C5: removal secrecy at key level


def _assert_sealed_exactly(state: MembershipState, epoch: int, expected: set[DeviceKey]) -> None:
    assert state.recipients(epoch) == {key.public for key in expected}
    key = state.epoch_keys(OWNER)[epoch]
    for recipient, box in state.boxes(epoch).items():
        for device in EVERYONE:
            if device.public == recipient:
                assert device.open_sealed(box) == key
            else:
                with pytest.raises(VerificationError) as err:
                    device.open_sealed(box)
                assert err.value.reason is Reason.DECRYPT_FAILED


def test_C5_every_loss_starts_an_epoch_sealed_to_exactly_the_remaining_devices() -> None:
    album = Album()
    album.join(EDITOR)
    album.join(VIEWER, Role.VIEWER)
    album.join(LEAVER, Role.VIEWER)
    album.invite(DECLINER)
    assert album.state.epoch == 0
    assert album.state.recipients(0) == {
        k.public for k in (OWNER, EDITOR, VIEWER, LEAVER, DECLINER)
    }

    album.remove(EDITOR, after_seq=3)
    assert album.state.epoch == 1
    _assert_sealed_exactly(album.state, 1, {OWNER, VIEWER, LEAVER, DECLINER})
    album.leave(LEAVER, last_seq=0)
    assert album.state.epoch == 2
    _assert_sealed_exactly(album.state, 2, {OWNER, VIEWER, DECLINER})
    album.decline(DECLINER)
    assert album.state.epoch == 3
    _assert_sealed_exactly(album.state, 3, {OWNER, VIEWER})
    album.rotate()
    _assert_sealed_exactly(album.state, 4, {OWNER, VIEWER})

    state = album.state
    owner_keys = state.epoch_keys(OWNER)
    assert sorted(owner_keys) == [0, 1, 2, 3, 4]
    assert len(set(owner_keys.values())) == 5, "every epoch has a fresh key"
    assert state.epoch_keys(VIEWER) == owner_keys
    # What each departed device holds stops before the epoch its loss started.
    assert state.epoch_keys(EDITOR) == {0: owner_keys[0]}
    assert sorted(state.epoch_keys(LEAVER)) == [0, 1]
    assert sorted(state.epoch_keys(DECLINER)) == [0, 1, 2]
    assert state.epoch_keys(STRANGER) == {}
    # A newcomer gets the whole history (removal secrecy, not forward secrecy for newcomers).
    album.invite(LATECOMER)
    assert album.state.epoch_keys(LATECOMER) == owner_keys
    assert album.state.recipients(4) == {OWNER.public, VIEWER.public, LATECOMER.public}


def test_C5_a_loss_must_seal_its_new_epoch_to_exactly_the_remaining_devices() -> None:
    album = Album()
    album.join(EDITOR)
    album.join(VIEWER, Role.VIEWER)
    state = album.state
    remove, _ = build_remove(
        state, OWNER, member=EDITOR.public, after_seq=0, now=NOW, rng=os.urandom
    )
    key = os.urandom(32)
    leaking = seal_epoch_key(key, [OWNER.public, VIEWER.public, EDITOR.public])
    missing = seal_epoch_key(key, [OWNER.public])
    stranger = seal_epoch_key(key, [OWNER.public, VIEWER.public, STRANGER.public])
    for keys in (leaking, missing, stranger, ()):
        forged = resign(remove, OWNER, body=_replace_keys(remove, keys))
        _refused(Reason.MALFORMED, state, forged)
    rotate, _ = build_rotate(state, OWNER, now=NOW, rng=os.urandom)
    _refused(Reason.MALFORMED, state, resign(rotate, OWNER, body=_replace_keys(rotate, missing)))


def test_C5_leave_and_decline_records_start_an_epoch_too() -> None:
    album = Album()
    album.join(LEAVER)
    album.invite(DECLINER)
    leave = build_leave(album.state, LEAVER, last_seq=4, now=NOW)
    decline = build_decline(album.state, DECLINER, now=NOW)
    for statement in (leave, decline):
        record, _ = build_record(album.state, OWNER, statement=statement, now=NOW, rng=os.urandom)
        assert decode_entry(record).entry.epoch == 1
        _refused(Reason.WRONG_EPOCH, album.state, resign(record, OWNER, epoch=0))
    accept_free = Album()
    accept_free.invite(EDITOR)
    accept = build_accept(accept_free.state, EDITOR, now=NOW)
    record, _ = build_record(accept_free.state, OWNER, statement=accept, now=NOW, rng=os.urandom)
    assert decode_entry(record).entry.epoch == 0


# ---------------------------------------------------------------------------------------------
# C6: role escalation


def _owner_entries(state: MembershipState) -> dict[str, bytes]:
    rng = os.urandom
    written = {
        "invite": build_invite(
            state,
            OWNER,
            member=STRANGER.public,
            member_cert=cert(STRANGER),
            role=Role.EDITOR,
            now=NOW,
            rng=rng,
        ),
        "role": build_role(
            state, OWNER, member=VIEWER.public, role=Role.EDITOR, after_seq=0, now=NOW
        ),
        "rename": build_rename(state, OWNER, name="Mine now", now=NOW, rng=os.urandom),
        "cover": build_cover(state, OWNER, cover=b"photo-ref", now=NOW, rng=os.urandom),
        "remove": build_remove(state, OWNER, member=VIEWER.public, after_seq=0, now=NOW, rng=rng),
        "rotate": build_rotate(state, OWNER, now=NOW, rng=rng),
        "delete": build_delete(state, OWNER, now=NOW),
    }
    return {kind: envelope for kind, (envelope, _) in written.items()}


def test_C6_an_editor_or_viewer_signing_an_owner_entry_is_refused() -> None:
    album = Album()
    album.join(EDITOR)
    album.join(VIEWER, Role.VIEWER)
    log = _log_of(album)
    before = log.state
    for kind, envelope in _owner_entries(album.state).items():
        for signer in (EDITOR, VIEWER):
            forged = next_entry(album.state, envelope, signer)
            _refused(Reason.BAD_SIGNATURE, album.state, forged)
            with pytest.raises(VerificationError) as err:
                log.add(forged)
            assert err.value.reason is Reason.BAD_SIGNATURE, kind
    assert log.state == before


def test_C6_only_the_owner_key_can_build_log_entries() -> None:
    album = Album()
    album.join(EDITOR)
    state = album.state
    attempts: list[Callable[[], object]] = [
        lambda: build_rename(state, EDITOR, name="x", now=NOW, rng=os.urandom),
        lambda: build_cover(state, EDITOR, cover=b"x", now=NOW, rng=os.urandom),
        lambda: build_role(
            state, EDITOR, member=EDITOR.public, role=Role.EDITOR, after_seq=0, now=NOW
        ),
        lambda: build_invite(
            state,
            EDITOR,
            member=STRANGER.public,
            member_cert=cert(STRANGER),
            role=Role.VIEWER,
            now=NOW,
            rng=os.urandom,
        ),
        lambda: build_remove(
            state, EDITOR, member=EDITOR.public, after_seq=0, now=NOW, rng=os.urandom
        ),
        lambda: build_delete(state, EDITOR, now=NOW),
    ]
    for attempt in attempts:
        with pytest.raises(LocalProtocolError):
            attempt()


def test_C6_statements_by_non_members_or_for_other_albums_are_refused() -> None:
    album = Album()
    album.invite(EDITOR)
    state = album.state
    invite = state.log_members[EDITOR.public]
    base = Statement(
        album=state.album_id,
        kind=StatementKind.ACCEPT,
        member=STRANGER.public,
        invite=invite.invite,
        nonce=invite.nonce,
        at=NOW,
    )
    _refused_statement(Reason.NOT_AUTHORIZED, state, sign_statement(STRANGER, base))
    owner_says = Statement(
        album=state.album_id,
        kind=StatementKind.ACCEPT,
        member=OWNER.public,
        invite=invite.invite,
        nonce=invite.nonce,
        at=NOW,
    )
    _refused_statement(Reason.NOT_AUTHORIZED, state, sign_statement(OWNER, owner_says))
    unknown = Statement(
        album=state.album_id,
        kind=StatementKind.ACCEPT,
        member=STRANGER.public,
        invite=bytes(32),
        nonce=invite.nonce,
        at=NOW,
    )
    _refused_statement(Reason.UNKNOWN_MEMBER, state, sign_statement(STRANGER, unknown))
    wrong_nonce = Statement(
        album=state.album_id,
        kind=StatementKind.ACCEPT,
        member=EDITOR.public,
        invite=invite.invite,
        nonce=bytes(16),
        at=NOW,
    )
    _refused_statement(Reason.NOT_AUTHORIZED, state, sign_statement(EDITOR, wrong_nonce))
    with pytest.raises(LocalProtocolError):
        build_accept(state, STRANGER, now=NOW)
    assert apply_statement(state, build_accept(state, EDITOR, now=NOW)).status(EDITOR.public) is (
        Status.ACTIVE
    )


def test_C6_rights_give_each_member_exactly_its_role() -> None:
    album = Album()
    album.join(EDITOR)
    album.join(VIEWER, Role.VIEWER)
    rights = album.state.rights()
    assert rights.role_for_entry(EDITOR.public, 1) is Role.EDITOR
    assert rights.role_for_entry(VIEWER.public, 1) is Role.VIEWER
    assert rights.role_for_entry(STRANGER.public, 1) is None
    assert rights.role_for_entry(OWNER.public, 1) is Role.OWNER


# ---------------------------------------------------------------------------------------------
# C7: replayed invites and statements


def test_C7_old_accept_replayed_after_the_member_left() -> None:
    album = Album()
    accept = album.join(EDITOR)
    album.leave(EDITOR, last_seq=2)
    state = album.state
    _refused_statement(Reason.REPLAYED, state, accept)
    with pytest.raises(LocalProtocolError):
        build_record(state, OWNER, statement=accept, now=NOW, rng=os.urandom)
    record_again = next_entry(state, album.envelopes[2], OWNER)  # the accept's record, re-signed
    _refused(Reason.REPLAYED, state, record_again)
    assert album.state.status(EDITOR.public) is Status.LEFT


def test_C7_invite_and_statements_replayed_into_another_album() -> None:
    x, y = Album(name="X"), Album(name="Y")
    invite_x = x.invite(EDITOR)
    y.invite(VIEWER)
    _refused(Reason.WRONG_ALBUM, y.state, invite_x)
    accept_x = build_accept(x.state, EDITOR, now=NOW)
    _refused_statement(Reason.WRONG_ALBUM, y.state, accept_x)
    y.invite(EDITOR)  # even once invited to Y too, X's accept does not carry over
    _refused_statement(Reason.WRONG_ALBUM, y.state, accept_x)
    with pytest.raises(LocalProtocolError):
        build_record(y.state, OWNER, statement=accept_x, now=NOW, rng=os.urandom)


def test_C7_one_invite_used_twice() -> None:
    album = Album()
    album.invite(EDITOR)
    accept = build_accept(album.state, EDITOR, now=NOW)
    decline = build_decline(album.state, EDITOR, now=NOW + 1)
    seen = apply_statement(album.state, accept)
    _refused_statement(Reason.REPLAYED, seen, accept)
    _refused_statement(Reason.REPLAYED, seen, decline)
    album.record(accept)
    _refused_statement(Reason.REPLAYED, album.state, accept)
    _refused_statement(Reason.REPLAYED, album.state, decline)
    accepted_twice = next_entry(album.state, album.envelopes[-1], OWNER)
    _refused(Reason.REPLAYED, album.state, accepted_twice)
    # Another device cannot take over the invite by accepting it under its own key.
    hijack = Statement(
        album=album.state.album_id,
        kind=StatementKind.ACCEPT,
        member=STRANGER.public,
        invite=album.state.log_members[EDITOR.public].invite,
        nonce=album.state.log_members[EDITOR.public].nonce,
        at=NOW,
    )
    _refused_statement(Reason.NOT_AUTHORIZED, album.state, sign_statement(STRANGER, hijack))


def test_C7_leave_replayed_after_re_invitation() -> None:
    album = Album()
    album.join(EDITOR)
    old_leave = album.leave(EDITOR, last_seq=3)
    album.join(EDITOR)
    state = album.state
    assert state.status(EDITOR.public) is Status.ACTIVE
    _refused_statement(Reason.REPLAYED, state, old_leave)
    with pytest.raises(LocalProtocolError):
        build_record(state, OWNER, statement=old_leave, now=NOW, rng=os.urandom)
    log = _log_of(album)
    assert log.add_statement(old_leave) is AddStatus.DUPLICATE  # it is in the log already
    assert log.state == state
    assert log.state.status(EDITOR.public) is Status.ACTIVE
    # The new membership's own leave still works.
    fresh = build_leave(state, EDITOR, last_seq=9, now=NOW)
    assert apply_statement(state, fresh).status(EDITOR.public) is Status.LEFT


# ---------------------------------------------------------------------------------------------
# Statuses, grants and statements acted on at once


def test_a_leave_is_acted_on_at_once_and_the_record_keeps_the_same_grants() -> None:
    album = Album()
    album.join(EDITOR)
    leave = build_leave(album.state, EDITOR, last_seq=5, now=NOW)
    seen = apply_statement(album.state, leave)
    assert seen.status(EDITOR.public) is Status.LEFT
    assert seen.log_members[EDITOR.public].status is Status.ACTIVE
    rights = seen.rights()
    assert rights.role_for_entry(EDITOR.public, 5) is Role.EDITOR
    assert rights.role_for_entry(EDITOR.public, 6) is None
    assert seen.to_record() == (leave,)
    assert seen.readers() == album.state.readers(), "keys change only when the owner records"
    album.state = seen
    album.record(leave, keep_photos=True)
    recorded = album.state
    assert recorded.unrecorded == {}
    assert recorded.status(EDITOR.public) is Status.LEFT
    assert recorded.rights().grants[EDITOR.public] == (
        Grant(0, Role.EDITOR),
        Grant(5, None, keep_photos=True),
    )
    assert recorded.rights().photos_stay(EDITOR.public)


def test_a_leave_cannot_reach_behind_the_owners_last_grant() -> None:
    album = Album()
    album.join(EDITOR)
    album._keep(
        build_role(
            album.state, OWNER, member=EDITOR.public, role=Role.VIEWER, after_seq=12, now=NOW
        )
    )
    leave = build_leave(album.state, EDITOR, last_seq=3, now=NOW)
    assert apply_statement(album.state, leave).rights().grants[EDITOR.public][-1] == Grant(12, None)
    album.record(leave)
    assert album.state.rights().grants[EDITOR.public][-1] == Grant(12, None)


def test_after_seq_never_goes_back() -> None:
    album = Album()
    album.join(EDITOR)
    album._keep(
        build_role(album.state, OWNER, member=EDITOR.public, role=Role.VIEWER, after_seq=7, now=NOW)
    )
    role, _ = build_role(
        album.state, OWNER, member=EDITOR.public, role=Role.EDITOR, after_seq=8, now=NOW
    )
    _refused(Reason.BACKDATED, album.state, resign(role, OWNER, body=_body_with(role, after_seq=6)))
    with pytest.raises(LocalProtocolError, match="goes back"):
        build_remove(album.state, OWNER, member=EDITOR.public, after_seq=6, now=NOW, rng=os.urandom)
    album.remove(EDITOR, after_seq=9)
    with pytest.raises(LocalProtocolError, match="goes back"):
        album.invite(EDITOR, after_seq=8)
    album.invite(EDITOR)  # defaults to the last grant
    assert album.state.rights().grants[EDITOR.public][-1] == Grant(9, Role.EDITOR)


def test_member_rules() -> None:
    album = Album()
    album.invite(EDITOR)
    for attempt in (
        lambda: album.invite(EDITOR),  # already invited
        lambda: album.invite(OWNER),  # the owner itself
        lambda: build_role(
            album.state, OWNER, member=STRANGER.public, role=Role.EDITOR, after_seq=0, now=NOW
        ),
        lambda: album.remove(STRANGER),
        lambda: build_leave(album.state, EDITOR, last_seq=0, now=NOW),  # not accepted yet
        lambda: album.invite(DeviceKey(bytes(32)), Role.OWNER),
    ):
        with pytest.raises(LocalProtocolError):
            attempt()
    album.remove(EDITOR)  # cancels the invite
    assert album.state.status(EDITOR.public) is Status.REMOVED
    assert album.state.pending_invites == ()
    assert album.state.rights().current_role(EDITOR.public) is None


def test_an_album_has_at_most_max_members() -> None:
    album = Album()
    for i in range(MAX_MEMBERS):
        album.invite(DeviceKey(i.to_bytes(2, "big") * 16), Role.VIEWER)
    with pytest.raises(LocalProtocolError, match="at most"):
        album.invite(STRANGER)
    album.remove(DeviceKey((0).to_bytes(2, "big") * 16))
    album.invite(STRANGER)
    assert len(album.state.readers()) == MAX_MEMBERS + 1


def test_album_fields_and_their_bounds() -> None:
    album = Album()
    album.invite(EDITOR)
    album.invite(VIEWER, Role.VIEWER)
    album.rename("Winter")
    album.cover(b"f" * 64)
    state = album.state
    keys = state.epoch_keys(EDITOR)
    assert (state.album_name(keys), state.cover(keys), state.head_seq) == ("Winter", b"f" * 64, 4)
    assert [m.key for m in state.pending_invites] == [EDITOR.public, VIEWER.public]
    assert state.invite_message(EDITOR.public, EDITOR) == "Welcome!"
    for bad, why in (
        ("", "is empty"),
        ("   ", "is empty"),
        ("x" * 201, "longer than 200"),
        ("tab\there", "U\\+0009"),
        ("esc\x1b[31m", "U\\+001B"),
        ("\ud800", "not valid Unicode"),
    ):
        with pytest.raises(LocalProtocolError, match=why):
            build_rename(state, OWNER, name=bad, now=NOW, rng=os.urandom)
    with pytest.raises(LocalProtocolError, match="at most 64 bytes"):
        build_cover(state, OWNER, cover=b"f" * 65, now=NOW, rng=os.urandom)
    for member_cert, why in ((b"c" * 4097, "longer than 4096"), (b"c", "certificate refused")):
        with pytest.raises(LocalProtocolError, match=why):
            build_invite(
                state,
                OWNER,
                member=STRANGER.public,
                member_cert=member_cert,
                role=Role.VIEWER,
                now=NOW,
                rng=os.urandom,
            )
    for message, why in (("m" * 1001, "longer than 1000"), ("bell\x07", "U\\+0007")):
        with pytest.raises(LocalProtocolError, match=why):
            build_invite(
                state,
                OWNER,
                member=STRANGER.public,
                member_cert=cert(STRANGER),
                role=Role.VIEWER,
                message=message,
                now=NOW,
                rng=os.urandom,
            )


def test_a_deleted_album_accepts_nothing() -> None:
    album = Album()
    album.invite(EDITOR)
    accept = build_accept(album.state, EDITOR, now=NOW)
    album._keep(build_delete(album.state, OWNER, now=NOW))
    assert album.state.deleted
    rename, _ = build_rename(Album().state, OWNER, name="x", now=NOW, rng=os.urandom)
    _refused(Reason.ALBUM_DELETED, album.state, next_entry(album.state, rename, OWNER))
    _refused_statement(Reason.ALBUM_DELETED, album.state, accept)
    with pytest.raises(LocalProtocolError):
        album.rename("After")


def test_the_owner_records_statements_in_order() -> None:
    album = Album()
    album.invite(EDITOR)
    album.invite(VIEWER, Role.VIEWER)
    state = album.state
    state = apply_statement(state, build_accept(state, VIEWER, now=NOW))
    state = apply_statement(state, build_accept(state, EDITOR, now=NOW))
    leave = build_leave(state, EDITOR, last_seq=0, now=NOW)
    state = apply_statement(state, leave)
    assert state.status(EDITOR.public) is Status.LEFT
    for statement in state.to_record():
        state = build_record(state, OWNER, statement=statement, now=NOW, rng=os.urandom)[1]
    assert state.unrecorded == {}
    assert (state.status(EDITOR.public), state.status(VIEWER.public)) == (
        Status.LEFT,
        Status.ACTIVE,
    )
    assert state.epoch == 1


def _replace_keys(envelope: bytes, keys: object) -> object:
    return _body_with(envelope, keys=keys)


def _body_with(envelope: bytes, **changes: object) -> object:
    from dataclasses import replace

    return replace(decode_entry(envelope).entry.body, **changes)  # type: ignore[arg-type]


def test_sign_entry_is_deterministic() -> None:
    album = Album()
    envelope = album.rename("Again")
    entry = decode_entry(envelope).entry
    assert sign_entry(OWNER, entry) == envelope


# ---------------------------------------------------------------------------------------------
# Device names: carried by the member's accept, kept by its membership


def test_a_member_keeps_the_name_of_its_accept_whether_recorded_or_not() -> None:
    album = Album()
    album.invite(EDITOR)
    accept = build_accept(album.state, EDITOR, now=NOW, name="Ottoline's phone", rng=os.urandom)
    # A peer that holds only the statement (gossiped, not yet recorded) reads the name ...
    peer = _log_of(album)
    assert peer.add_statement(accept) is AddStatus.APPLIED
    keys = peer.state.epoch_keys(OWNER)
    assert member_name(peer.state, EDITOR.public, keys) == "Ottoline's phone"
    assert peer.state.log_members[EDITOR.public].sealed_name == b""
    # ... and after the owner's record the state keeps it in the member: same name, same state.
    album.record(accept)
    assert album.state.log_members[EDITOR.public].sealed_name != b""
    assert member_name(album.state, EDITOR.public, keys) == "Ottoline's phone"
    peer.add(album.envelopes[-1])
    assert peer.state == album.state
    assert member_name(peer.state, EDITOR.public, keys) == "Ottoline's phone"
    # A blind replica holds the same state and reads no name.
    assert member_name(_log_of(album).state, EDITOR.public, {}) is None


def test_a_re_invited_member_has_no_name_until_it_accepts_again() -> None:
    album = Album()
    album.invite(EDITOR)
    album.record(build_accept(album.state, EDITOR, now=NOW, name="Old laptop", rng=os.urandom))
    album.remove(EDITOR)
    assert member_name(album.state, EDITOR.public, album.state.epoch_keys(OWNER)) == "Old laptop"
    album.invite(EDITOR)
    assert member_name(album.state, EDITOR.public, album.state.epoch_keys(OWNER)) is None
    album.record(build_accept(album.state, EDITOR, now=NOW, name="New laptop", rng=os.urandom))
    assert member_name(album.state, EDITOR.public, album.state.epoch_keys(OWNER)) == "New laptop"
    # Sealed under the epoch the second invite reached (1, after the remove): a member that only
    # holds epoch 0's key does not read it.
    assert album.state.log_members[EDITOR.public].invited_epoch == 1
    only_first = {0: album.state.epoch_keys(OWNER)[0]}
    assert member_name(album.state, EDITOR.public, only_first) is None


def test_a_decline_or_leave_never_carries_a_name() -> None:
    album = Album()
    album.invite(DECLINER)
    decline = build_decline(album.state, DECLINER, now=NOW)
    said = Statement(
        album=album.state.album_id,
        kind=StatementKind.DECLINE,
        member=DECLINER.public,
        invite=album.state.log_members[DECLINER.public].invite,
        nonce=album.state.log_members[DECLINER.public].nonce,
        at=NOW,
        sealed_name=bytes(72),
    )
    with pytest.raises(LocalProtocolError, match="only an accept"):
        sign_statement(DECLINER, said)
    album.record(decline)
    assert member_name(album.state, DECLINER.public, album.state.epoch_keys(OWNER)) is None
