"""Confidential log fields: what a blind replica cannot read (C9), bindings, bounds, bad plaintext."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.epochs import MAX_EPOCHS, SEALED_KEY_SIZE
from protocol.errors import DecodeError, LocalProtocolError, Reason, VerificationError
from protocol.membership import MembershipState, apply
from protocol.membership_builders import build_accept, build_cover, build_rename
from protocol.membership_entries import (
    MAX_ENTRY_BYTES,
    Entry,
    Invite,
    Rename,
    associated_data,
    decode_entry,
)
from protocol.membership_log import MembershipLog
from protocol.membership_sealing import (
    MAX_COVER_BYTES,
    MAX_MESSAGE_BOX_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_SEALED_NAME_BYTES,
    MIN_MESSAGE_BOX_BYTES,
    MIN_SEALED_NAME_BYTES,
    SEALED_COVER_BYTES,
    check_message_box,
    check_sealed_name,
    open_cover,
    open_message,
    open_name,
    seal_cover,
    seal_message,
    seal_name,
)
from protocol.rights import Role
from tests.protocol.membership_helpers import (
    DECLINER,
    EDITOR,
    LATECOMER,
    LEAVER,
    NOW,
    OWNER,
    STRANGER,
    VIEWER,
    Album,
    next_entry,
)

FIRST_NAME = "Zanzibar Honeymoon ✈ 2026"
SECOND_NAME = "Quetzalcoatl Reunion"
FINAL_NAME = "Grandma Philippa's Ninetieth"
COVER = b"cover:IMG_4711-Bartholomew.jpg"
MESSAGES = {
    EDITOR: "Hello Ottoline, here are the Zanzibar photos",
    VIEWER: "For Cornelius only: please don't share",
    DECLINER: "Wilhelmina, you were there too!\nSee you soon.",
    LEAVER: "Ptolemy, add yours when you can",
    LATECOMER: "",
}
SECRETS = [FIRST_NAME, SECOND_NAME, FINAL_NAME, COVER.decode(), *MESSAGES.values()]


def _c9_album() -> Album:
    """Every kind of entry (but delete, which has no fields) and statement, with secrets in them."""
    album = Album(name=FIRST_NAME)
    for member in (EDITOR, LEAVER):
        album.invite(member, message=MESSAGES[member])
        album.record(build_accept(album.state, member, now=NOW))
    album.invite(VIEWER, Role.VIEWER, message=MESSAGES[VIEWER])
    album.invite(DECLINER, message=MESSAGES[DECLINER])
    album.decline(DECLINER)
    album.rename(SECOND_NAME)
    album.cover(COVER)
    album.role(EDITOR, Role.VIEWER, after_seq=4)
    album.role(EDITOR, Role.EDITOR, after_seq=9)
    album.leave(LEAVER, last_seq=2)
    album.remove(VIEWER, after_seq=0)
    album.rotate()
    album.rename(FINAL_NAME)
    album.invite(LATECOMER, Role.VIEWER, message=MESSAGES[LATECOMER])
    return album


C9 = _c9_album()


def _proper_words(secret: str) -> list[str]:
    """The capitalised words of a secret (lower-case ones, like "photos", name clear fields)."""
    return [word for word in secret.split() if len(word) >= 5 and word[0].isupper()]


def test_C9_log_bytes_hold_no_names_or_messages() -> None:
    """C9 (sans-I/O part): a replica's copy of the log names no album, cover or message."""
    everything = b"".join([*C9.envelopes, *C9.statements])
    # The search works on what is clear: keys and the certificates' fixed CN are in the bytes.
    assert OWNER.public in everything
    assert VIEWER.public in everything
    assert b"albumsync" in everything
    searched = [
        (text, encoding)
        for secret in SECRETS
        for text in [secret, *_proper_words(secret)]
        if text
        for encoding in ("utf-8", "utf-16-le", "utf-16-be")
    ]
    assert len(searched) > 50
    assert [found for found in searched if found[0].encode(found[1]) in everything] == []

    # A blind replica verifies the whole chain without any key ...
    replica = MembershipLog(C9.genesis, album_id=C9.state.album_id)
    for envelope in C9.envelopes[1:]:
        replica.add(envelope)
    state = replica.state
    assert state == C9.state
    # ... and reads nothing.
    assert state.album_name({}) is None
    assert state.cover({}) is None
    assert state.epoch_keys(STRANGER) == {}
    for member in MESSAGES:
        assert state.invite_message(member.public, STRANGER) is None

    # A member with the keys reads the current name and cover; each invitee reads its message.
    keys = state.epoch_keys(EDITOR)
    assert state.album_name(keys) == FINAL_NAME
    assert state.cover(keys) == COVER
    for member, message in MESSAGES.items():
        assert state.invite_message(member.public, member) == message
        assert state.invite_message(member.public, OWNER) == message
        other = EDITOR if member is not EDITOR else VIEWER
        assert state.invite_message(member.public, other) is None, "members need not read it"


def test_C9_a_removed_member_cannot_read_names_set_after_its_removal() -> None:
    state = C9.state
    removed_keys = state.epoch_keys(VIEWER)
    assert state.album_name(removed_keys) is None
    # It still reads what it was given: the name sealed before its removal.
    before = MembershipLog(C9.genesis)
    for envelope in C9.envelopes[1 : C9.envelopes.index(_rename_of(SECOND_NAME)) + 1]:
        before.add(envelope)
    assert before.state.album_name(removed_keys) == SECOND_NAME
    # A newcomer is handed every epoch key, so it reads the genesis name of the history too.
    genesis_only = MembershipLog(C9.genesis).state
    assert genesis_only.album_name(state.epoch_keys(LATECOMER)) == FIRST_NAME


def test_C9_a_wrong_key_is_an_error_not_a_name() -> None:
    state = C9.state
    wrong = {epoch: os.urandom(32) for epoch in range(state.epoch + 1)}
    for read in (state.album_name, state.cover):
        with pytest.raises(VerificationError) as err:
            read(wrong)
        assert err.value.reason is Reason.DECRYPT_FAILED


def _rename_of(name: str) -> bytes:
    keys = C9.state.epoch_keys(OWNER)
    for envelope in C9.envelopes:
        entry = decode_entry(envelope).entry
        if isinstance(entry.body, Rename):
            opened = open_name(
                entry.body.sealed_name,
                key=keys[entry.epoch],
                associated_data=associated_data(entry),
            )
            if opened == name:
                return envelope
    raise AssertionError(name)


# ---------------------------------------------------------------------------------------------
# Bindings: a ciphertext moved to another entry or album does not open


def _unreadable_after(state: MembershipState, envelope: bytes, *, cover: bool = False) -> None:
    """Apply a re-signed entry (the blind verifier accepts it); its name or cover will not open."""
    moved = apply(state, envelope)
    keys = moved.epoch_keys(OWNER)
    read = moved.cover if cover else moved.album_name
    with pytest.raises(VerificationError) as err:
        read(keys)
    assert err.value.reason is Reason.DECRYPT_FAILED


def test_a_sealed_name_moved_to_another_entry_or_album_does_not_open() -> None:
    album, other = Album(name="Here"), Album(name="Elsewhere")
    old = album.rename("Old name")
    album.rename("New name")
    elsewhere, _ = build_rename(other.state, OWNER, name="Theirs", now=NOW, rng=os.urandom)
    genesis_name = decode_entry(album.genesis).entry.body.sealed_name  # type: ignore[union-attr]
    for sealed in (
        decode_entry(old).entry.body.sealed_name,  # type: ignore[union-attr]
        decode_entry(elsewhere).entry.body.sealed_name,  # type: ignore[union-attr]
        genesis_name,
    ):
        moved = next_entry(album.state, old, OWNER, body=Rename(sealed_name=sealed))
        _unreadable_after(album.state, moved)
    # The same plaintext under the same key, but at another time: still bound to its header.
    later = next_entry(album.state, old, OWNER, at=NOW + 1)
    _unreadable_after(album.state, later)


def test_a_sealed_cover_moved_to_another_entry_does_not_open() -> None:
    album = Album()
    first = album.cover(b"first")
    moved = next_entry(album.state, first, OWNER)
    _unreadable_after(album.state, moved, cover=True)


def test_an_invite_message_moved_to_another_invite_does_not_open() -> None:
    album = Album()
    first = album.invite(EDITOR, message="first invite")
    album.remove(EDITOR)
    album.invite(EDITOR, message="second invite")
    body = decode_entry(first).entry.body
    assert isinstance(body, Invite)
    state = album.state
    assert state.invite_message(EDITOR.public, EDITOR) == "second invite"
    member = state.log_members[EDITOR.public]
    for box in (body.message_box, member.owner_message_box):
        with pytest.raises(VerificationError) as err:
            open_message(box, device=EDITOR, album=state.album_id, nonce=member.nonce)
        assert err.value.reason is Reason.DECRYPT_FAILED
    # The invite's own box, but another album's ID: refused as well.
    with pytest.raises(VerificationError):
        open_message(member.message_box, device=EDITOR, album=bytes(32), nonce=member.nonce)


# ---------------------------------------------------------------------------------------------
# What the owner could seal wrongly: readers refuse it with a reason


def _sealed_raw(plaintext: bytes, key: bytes, entry: Entry) -> bytes:
    nonce = os.urandom(24)
    ad = b"albumsync/v1/membership-name\0" + associated_data(entry)
    return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


@pytest.mark.parametrize(
    ("plaintext", "why"),
    [
        (b"bell\x07\x80" + bytes(26), "control character U\\+0007"),
        (b"\xff\xfe\x80" + bytes(29), "not valid UTF-8"),
        (b"   \x80" + bytes(28), "is empty"),
        (b"name\x80" + bytes(59), "not padded canonically"),  # one zero block too many
        (b"name" + bytes(28), "not padded canonically"),  # no marker
        (b"x" * 801 + b"\x80" + bytes(30), "longer than 200"),
    ],
)
def test_an_owner_sealed_name_that_is_not_a_name_is_malformed(plaintext: bytes, why: str) -> None:
    album = Album()
    template = album.rename("Template")
    entry = replace(decode_entry(template).entry, seq=album.state.head_seq + 1)
    entry = replace(entry, prev=album.state.head_hash)
    key = album.state.epoch_keys(OWNER)[0]
    envelope = next_entry(
        album.state, template, OWNER, body=Rename(sealed_name=_sealed_raw(plaintext, key, entry))
    )
    state = apply(album.state, envelope)  # the blind verifier cannot tell
    with pytest.raises(VerificationError, match=why) as err:
        state.album_name(state.epoch_keys(OWNER))
    assert err.value.reason is Reason.MALFORMED


def test_builders_refuse_plaintext_a_reader_would_refuse() -> None:
    album = Album()
    state = album.state
    with pytest.raises(LocalProtocolError, match="is empty"):
        build_rename(state, OWNER, name=" \n", now=NOW, rng=os.urandom)
    with pytest.raises(LocalProtocolError, match="rng must return 24 bytes"):
        build_rename(state, OWNER, name="ok", now=NOW, rng=lambda n: bytes(n - 1))
    with pytest.raises(LocalProtocolError, match="at most 64 bytes"):
        build_cover(state, OWNER, cover=bytes(MAX_COVER_BYTES + 1), now=NOW, rng=os.urandom)
    with pytest.raises(LocalProtocolError, match="epoch key is 32 bytes"):
        seal_name("x", key=bytes(31), associated_data=b"", rng=os.urandom)


def test_a_member_key_renames_nothing_and_the_owner_needs_its_epoch_key() -> None:
    album = Album()
    album.join(EDITOR)
    with pytest.raises(LocalProtocolError, match="only the album owner"):
        build_rename(album.state, EDITOR, name="Mine", now=NOW, rng=os.urandom)
    assert album.state.epoch_key(EDITOR, 0) == album.state.epoch_key(OWNER, 0)
    assert album.state.epoch_key(STRANGER, 0) is None
    assert album.state.epoch_key(OWNER, 1) is None


# ---------------------------------------------------------------------------------------------
# Sizes: what the length of a ciphertext tells, and the bounds a keyless verifier enforces


def _name_size(name: str) -> int:
    return len(seal_name(name, key=bytes(32), associated_data=b"", rng=os.urandom))


def test_sealed_sizes_tell_a_range_not_a_length() -> None:
    assert {_name_size(name) for name in ("Al", "Summer 2026", "x" * 31)} == {MIN_SEALED_NAME_BYTES}
    assert _name_size("x" * 32) == MIN_SEALED_NAME_BYTES + 32
    assert _name_size("\U0001f600" * MAX_NAME_CHARS) == MAX_SEALED_NAME_BYTES
    for cover in (b"", b"x", bytes(MAX_COVER_BYTES)):
        sealed = seal_cover(cover, key=bytes(32), associated_data=b"", rng=os.urandom)
        assert len(sealed) == SEALED_COVER_BYTES
        assert open_cover(sealed, key=bytes(32), associated_data=b"") == cover
    album, nonce = bytes(32), bytes(16)
    longest = "\U0001f600" * MAX_MESSAGE_CHARS
    for message, size in (("", MIN_MESSAGE_BOX_BYTES), (longest, MAX_MESSAGE_BOX_BYTES)):
        box = seal_message(message, recipient=EDITOR.public, album=album, nonce=nonce)
        assert len(box) == size
        assert check_message_box(box, "box") == box
        assert open_message(box, device=EDITOR, album=album, nonce=nonce) == message


def test_the_largest_invite_fits_an_entry() -> None:
    """MAX_EPOCHS sealed keys, the largest message twice, the largest certificate: still in bounds."""
    album = Album()
    body = Invite(
        member=EDITOR.public,
        member_cert=bytes(4096),
        role=Role.VIEWER,
        message_box=bytes(MAX_MESSAGE_BOX_BYTES),
        owner_message_box=bytes(MAX_MESSAGE_BOX_BYTES),
        nonce=bytes(16),
        epoch_keys=(bytes(SEALED_KEY_SIZE),) * MAX_EPOCHS,
        after_seq=2**63 - 1,
    )
    envelope = next_entry(album.state, album.invite(VIEWER), OWNER, body=body)
    signed = decode_entry(envelope)
    assert len(signed.raw) <= MAX_ENTRY_BYTES
    assert signed.entry.body == body


# ---------------------------------------------------------------------------------------------
# Untrusted bytes: opening anything raises only VerificationError


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=MAX_SEALED_NAME_BYTES + 64), key=st.binary(min_size=32, max_size=32))
def test_A2_opening_random_bytes_raises_only_verification_errors(data: bytes, key: bytes) -> None:
    for call in (
        lambda: open_name(data, key=key, associated_data=b""),
        lambda: open_cover(data, key=key, associated_data=b""),
        lambda: open_message(data, device=EDITOR, album=bytes(32), nonce=bytes(16)),
    ):
        with pytest.raises(VerificationError):
            call()
    with contextlib.suppress(DecodeError):
        check_sealed_name(data, "name")
    with contextlib.suppress(DecodeError):
        check_message_box(data, "box")


@settings(max_examples=100, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=200).filter(
        str.strip
    ),
    message=st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\n"), max_size=80),
)
def test_names_and_messages_round_trip_within_the_checked_sizes(name: str, message: str) -> None:
    key, ad = os.urandom(32), b"header"
    sealed = seal_name(name, key=key, associated_data=ad, rng=os.urandom)
    assert check_sealed_name(sealed, "name") == sealed
    assert open_name(sealed, key=key, associated_data=ad) == name
    box = seal_message(message, recipient=VIEWER.public, album=bytes(32), nonce=bytes(16))
    assert MIN_MESSAGE_BOX_BYTES <= len(box) <= MAX_MESSAGE_BOX_BYTES
    assert open_message(box, device=VIEWER, album=bytes(32), nonce=bytes(16)) == message


def test_seal_message_refuses_what_it_cannot_bind_or_bound() -> None:
    too_long = "m" * (MAX_MESSAGE_CHARS + 1)
    with pytest.raises(VerificationError, match="longer than 1000"):
        seal_message(too_long, recipient=EDITOR.public, album=bytes(32), nonce=bytes(16))
    with pytest.raises(LocalProtocolError, match="binds a 32-byte album ID"):
        seal_message("m", recipient=EDITOR.public, album=bytes(31), nonce=bytes(16))
