"""Confidential log fields: what a blind replica cannot read (C9), bindings, bounds, bad plaintext."""

from __future__ import annotations

import contextlib
import os
import unicodedata
from dataclasses import replace

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.epochs import MAX_EPOCHS, SEALED_KEY_SIZE
from protocol.errors import DecodeError, LocalProtocolError, Reason, VerificationError
from protocol.keys import DeviceKey
from protocol.membership import MembershipState, apply, apply_statement, member_name
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
    MAX_DEVICE_NAME_CHARS,
    MAX_MESSAGE_BOX_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_SEALED_DEVICE_NAME_BYTES,
    MAX_SEALED_NAME_BYTES,
    MIN_MESSAGE_BOX_BYTES,
    MIN_SEALED_DEVICE_NAME_BYTES,
    MIN_SEALED_NAME_BYTES,
    SEALED_COVER_BYTES,
    check_message_box,
    check_sealed_device_name,
    check_sealed_name,
    device_name_binding,
    open_cover,
    open_device_name,
    open_message,
    open_name,
    seal_cover,
    seal_device_name,
    seal_message,
    seal_name,
)
from protocol.rights import Role
from protocol.statements import Statement, StatementKind, decode_statement, sign_statement
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
DEVICE_NAMES = {EDITOR: "Ottoline's Thinkpad", LEAVER: "Ptolemy Workstation"}
SECRETS = [
    FIRST_NAME,
    SECOND_NAME,
    FINAL_NAME,
    COVER.decode(),
    *MESSAGES.values(),
    *DEVICE_NAMES.values(),
]


def _c9_album() -> Album:
    """Every kind of entry (but delete, which has no fields) and statement, with secrets in them."""
    album = Album(name=FIRST_NAME)
    for member in (EDITOR, LEAVER):
        album.invite(member, message=MESSAGES[member])
        accept = build_accept(
            album.state, member, now=NOW, name=DEVICE_NAMES[member], rng=os.urandom
        )
        album.record(accept)
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
    """C9 (sans-I/O part): a replica's copy of the log names no album, cover, message or device."""
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
    for member in DEVICE_NAMES:
        assert member_name(state, member.public, {}) is None

    # A member with the keys reads the current name and cover; each invitee reads its message.
    keys = state.epoch_keys(EDITOR)
    assert state.album_name(keys) == FINAL_NAME
    assert state.cover(keys) == COVER
    for member, message in MESSAGES.items():
        assert state.invite_message(member.public, member) == message
        assert state.invite_message(member.public, OWNER) == message
        other = EDITOR if member is not EDITOR else VIEWER
        assert state.invite_message(member.public, other) is None, "members need not read it"
    # Every reader, the owner included, reads the device names members sealed into their accepts
    # (the leaver's too: who added a photo stays readable after the author left).
    for reader in (OWNER, EDITOR, LATECOMER):
        reader_keys = state.epoch_keys(reader)
        for member, name in DEVICE_NAMES.items():
            assert member_name(state, member.public, reader_keys) == name


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
# Device names in accept statements: bound to album, member and invite; a bad one is no name


def _named_accept(album: Album, member: DeviceKey, name: str) -> bytes:
    album.invite(member)
    return build_accept(album.state, member, now=NOW, name=name, rng=os.urandom)


def _sealed_name_of(accept: bytes) -> bytes:
    return decode_statement(accept).statement.sealed_name


def _with_sealed_name(state: MembershipState, member: DeviceKey, sealed: bytes) -> bytes:
    """`member`'s accept of its current invite carrying `sealed`, signed by the member itself."""
    invited = state.log_members[member.public]
    said = Statement(
        album=state.album_id,
        kind=StatementKind.ACCEPT,
        member=member.public,
        invite=invited.invite,
        nonce=invited.nonce,
        at=NOW,
        sealed_name=sealed,
    )
    return sign_statement(member, said)


def test_a_device_name_opens_only_for_its_album_member_and_invite() -> None:
    here, there = Album(name="Here"), Album(name="There")
    here.join(VIEWER)
    mine = _named_accept(here, EDITOR, "Ottoline's phone")
    theirs = _named_accept(there, EDITOR, "Ottoline's phone")
    # Not recorded yet: every reader acts on the accept at once, the name with it.
    state = apply_statement(here.state, mine)
    for reader in (OWNER, EDITOR, VIEWER):
        assert member_name(state, EDITOR.public, state.epoch_keys(reader)) == "Ottoline's phone"
    assert member_name(state, EDITOR.public, {}) is None
    assert member_name(state, STRANGER.public, state.epoch_keys(OWNER)) is None
    assert member_name(state, VIEWER.public, state.epoch_keys(OWNER)) is None, "it gave none"

    # The member's own seal from another album, re-signed into this album's accept: no name.
    moved = apply_statement(
        here.state, _with_sealed_name(here.state, EDITOR, _sealed_name_of(theirs))
    )
    assert member_name(moved, EDITOR.public, moved.epoch_keys(OWNER)) is None
    # Another member replaying the editor's seal as its own: no name either.
    here.invite(LATECOMER)
    replayed = apply_statement(
        here.state, _with_sealed_name(here.state, LATECOMER, _sealed_name_of(mine))
    )
    assert member_name(replayed, LATECOMER.public, replayed.epoch_keys(OWNER)) is None
    # The same seal, its own member, but a later membership (another invite): no name.
    here.record(mine)
    assert member_name(here.state, EDITOR.public, here.state.epoch_keys(OWNER)) == (
        "Ottoline's phone"
    )
    here.leave(EDITOR)
    assert member_name(here.state, EDITOR.public, here.state.epoch_keys(OWNER)) == (
        "Ottoline's phone"
    ), "the name of a member that left stays readable"
    here.invite(EDITOR)
    assert member_name(here.state, EDITOR.public, here.state.epoch_keys(OWNER)) is None
    again = apply_statement(
        here.state, _with_sealed_name(here.state, EDITOR, _sealed_name_of(mine))
    )
    assert member_name(again, EDITOR.public, again.epoch_keys(OWNER)) is None
    # At the binding level: each part of (album, member, invite) counts.
    key, binding = os.urandom(32), device_name_binding(bytes(32), EDITOR.public, bytes(32))
    sealed = seal_device_name("Laptop", key=key, associated_data=binding, rng=os.urandom)
    assert open_device_name(sealed, key=key, associated_data=binding) == "Laptop"
    for other in (
        device_name_binding(b"\1" * 32, EDITOR.public, bytes(32)),
        device_name_binding(bytes(32), VIEWER.public, bytes(32)),
        device_name_binding(bytes(32), EDITOR.public, b"\1" * 32),
    ):
        with pytest.raises(VerificationError) as err:
            open_device_name(sealed, key=key, associated_data=other)
        assert err.value.reason is Reason.DECRYPT_FAILED


def test_a_removed_member_cannot_read_the_names_of_members_invited_after_it() -> None:
    album = Album()
    album.join(VIEWER)
    album.remove(VIEWER)
    album.record(_named_accept(album, EDITOR, "New desktop"))
    state = album.state
    assert member_name(state, EDITOR.public, state.epoch_keys(OWNER)) == "New desktop"
    assert member_name(state, EDITOR.public, state.epoch_keys(VIEWER)) is None


def _padded(data: bytes) -> bytes:
    marked = data + b"\x80"
    return marked + bytes(-len(marked) % 32)


@pytest.mark.parametrize(
    ("plaintext", "why"),
    [
        (_padded("evil\u202egpj.exe".encode()), "unprintable character U\\+202E"),
        (_padded(b"tab\there"), "control character U\\+0009"),
        (_padded("e\u0301".encode()), "not in Unicode NFC"),
        (_padded(b" "), "is empty"),
        (_padded(b"x" * 65), "longer than 64"),
        (_padded(b"\xff"), "not valid UTF-8"),
        (b"name" + bytes(28), "not padded canonically"),
    ],
)
def test_a_device_name_that_is_not_a_name_is_malformed_and_reads_as_none(
    plaintext: bytes, why: str
) -> None:
    album = Album()
    album.invite(EDITOR)
    state = album.state
    invited = state.log_members[EDITOR.public]
    key = state.epoch_keys(EDITOR)[invited.invited_epoch]
    binding = device_name_binding(state.album_id, EDITOR.public, invited.invite)
    nonce = os.urandom(24)
    ad = b"albumsync/v1/device-name\0" + binding
    sealed = nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    with pytest.raises(VerificationError, match=why) as err:
        open_device_name(sealed, key=key, associated_data=binding)
    assert err.value.reason is Reason.MALFORMED
    accepted = apply_statement(
        state, _with_sealed_name(state, EDITOR, sealed)
    )  # blind: it can't tell
    assert member_name(accepted, EDITOR.public, accepted.epoch_keys(OWNER)) is None
    # Random bytes of a valid size (they do not open) read as no name as well.
    garbage = _with_sealed_name(state, EDITOR, os.urandom(MIN_SEALED_DEVICE_NAME_BYTES))
    accepted = apply_statement(state, garbage)
    assert member_name(accepted, EDITOR.public, accepted.epoch_keys(OWNER)) is None


def test_build_accept_seals_nfc_and_refuses_what_a_reader_would_refuse() -> None:
    album = Album()
    album.invite(EDITOR)
    state = album.state
    accept = build_accept(state, EDITOR, now=NOW, name="Ame\u0301lie's Mac", rng=os.urandom)
    named = apply_statement(state, accept)
    assert member_name(named, EDITOR.public, named.epoch_keys(OWNER)) == "Am\u00e9lie's Mac"
    for bad, why in (
        ("x" * (MAX_DEVICE_NAME_CHARS + 1), "longer than 64"),
        ("\u202eevil", "unprintable"),
        ("line\nbreak", "control character"),
        ("   ", "is empty"),
    ):
        with pytest.raises(LocalProtocolError, match=why):
            build_accept(state, EDITOR, now=NOW, name=bad, rng=os.urandom)
    with pytest.raises(LocalProtocolError, match="needs rng"):
        build_accept(state, EDITOR, now=NOW, name="Laptop")
    # No name: the accept is the one it always was.
    assert decode_statement(build_accept(state, EDITOR, now=NOW)).statement.sealed_name == b""


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


def test_sealed_device_names_tell_a_range_not_a_length() -> None:
    def size(name: str) -> int:
        return len(seal_device_name(name, key=bytes(32), associated_data=b"", rng=os.urandom))

    assert {size(name) for name in ("A", "Bob's phone", "x" * 31)} == {MIN_SEALED_DEVICE_NAME_BYTES}
    assert size("x" * 32) == MIN_SEALED_DEVICE_NAME_BYTES + 32
    assert size("\U0001f600" * MAX_DEVICE_NAME_CHARS) == MAX_SEALED_DEVICE_NAME_BYTES


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
        lambda: open_device_name(data, key=key, associated_data=b""),
    ):
        with pytest.raises(VerificationError):
            call()
    with contextlib.suppress(DecodeError):
        check_sealed_name(data, "name")
    with contextlib.suppress(DecodeError):
        check_message_box(data, "box")
    with contextlib.suppress(DecodeError):
        check_sealed_device_name(data, "device name")


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


@settings(max_examples=100, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=64).filter(
        lambda text: text.strip() != "" and text.isprintable()
    )
)
def test_device_names_round_trip_in_nfc_within_the_checked_sizes(name: str) -> None:
    key, ad = os.urandom(32), device_name_binding(bytes(32), EDITOR.public, bytes(32))
    nfc = unicodedata.normalize("NFC", name)
    if len(nfc) > MAX_DEVICE_NAME_CHARS:  # NFC can lengthen a few scripts' names
        with pytest.raises(VerificationError):
            seal_device_name(name, key=key, associated_data=ad, rng=os.urandom)
        return
    sealed = seal_device_name(name, key=key, associated_data=ad, rng=os.urandom)
    assert check_sealed_device_name(sealed, "device name") == sealed
    assert open_device_name(sealed, key=key, associated_data=ad) == nfc
