"""Manifest entries and payloads: wire form, signatures, sealing, bounds (B4), forgeries (C1)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tracemalloc
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.chunks import CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE, ChunkRef
from protocol.encoding import encode, encode_varint
from protocol.errors import DecodeError, LocalProtocolError, Reason, VerificationError
from protocol.manifest import (
    MAX_PAYLOAD_BYTES,
    MAX_SEALED_BYTES,
    NONCE_SIZE,
    TAG_SIZE,
    Entry,
    EntryKind,
    Payload,
    check_payload,
    decode_entry,
    decode_payload,
    encode_payload,
    open_payload,
    sign_entry,
)
from protocol.manifest_builders import AuthorChain, make_add, make_remove, make_update
from protocol.names import MAX_PATH_BYTES
from tests.protocol.manifest_helpers import (
    ALBUM,
    EDITOR,
    KEY0,
    KEY1,
    OTHER_ALBUM,
    OWNER,
    STRANGER,
    counter_rng,
    editor_add,
    payload,
    resign,
    seal_raw,
)

FILE_ID = b"\x11" * 16


def _plain_entry(kind: EntryKind = EntryKind.ADD) -> Entry:
    return Entry(
        album=ALBUM,
        author=EDITOR.public,
        seq=1,
        prev=None,
        epoch=0,
        kind=kind,
        file_id=FILE_ID,
        file_author=EDITOR.public,
    )


# --- round trips -------------------------------------------------------------------------------


def test_add_update_remove_round_trip_through_the_wire() -> None:
    chain = AuthorChain(EDITOR, ALBUM)
    rng = counter_rng()
    added = chain.add(0, KEY0, payload("Trip/a.jpg"), rng, file_id=FILE_ID)
    updated = chain.update(0, KEY0, FILE_ID, payload("Trip/a.jpg", 5000, mark=b"v2"), rng)
    removed = chain.remove(0, EDITOR.public, FILE_ID)
    for signed in (added, updated, removed):
        again = decode_entry(signed.envelope, album=ALBUM)
        assert again == signed
        assert again.hash == hashlib.sha256(signed.envelope).digest()
    assert (added.entry.seq, updated.entry.seq, removed.entry.seq) == (1, 2, 3)
    assert added.entry.prev is None
    assert updated.entry.prev == added.hash
    assert removed.entry.prev == updated.hash
    assert (chain.seq, chain.head) == (3, removed.hash)
    assert open_payload(added.entry, KEY0) == payload("Trip/a.jpg")
    assert open_payload(updated.entry, KEY0).size == 5000
    assert removed.entry.sealed == b""
    with pytest.raises(LocalProtocolError):
        open_payload(removed.entry, KEY0)


def test_envelope_is_verifiable_without_any_key_and_hides_the_payload() -> None:
    signed = editor_add(1, None, "secret-beach.jpg")
    decoded = decode_entry(signed.envelope)  # no key involved
    assert decoded.entry.kind is EntryKind.ADD
    assert b"secret-beach" not in signed.envelope


def test_payload_name_is_normalised_to_nfc() -> None:
    nfd = "e\u0301te\u0301.jpg"
    signed = editor_add(1, None, nfd)
    assert open_payload(signed.entry, KEY0).name == "\u00e9t\u00e9.jpg"


def test_builders_refuse_what_verifiers_would_refuse() -> None:
    rng = counter_rng()
    bad_payload = replace(payload("a.jpg"), size=10)
    with pytest.raises(LocalProtocolError, match="chunks add up"):
        make_add(
            EDITOR, ALBUM, seq=1, prev=None, epoch=0, epoch_key=KEY0, payload=bad_payload, rng=rng
        )
    with pytest.raises(LocalProtocolError, match="prev"):
        editor_add(2, None, "a.jpg", rng=rng)
    with pytest.raises(LocalProtocolError, match="prev"):
        make_remove(
            EDITOR,
            ALBUM,
            seq=1,
            prev=b"\0" * 32,
            epoch=0,
            file_author=EDITOR.public,
            file_id=FILE_ID,
        )
    with pytest.raises(LocalProtocolError, match="epoch key"):
        make_add(
            EDITOR,
            ALBUM,
            seq=1,
            prev=None,
            epoch=0,
            epoch_key=b"short",
            payload=payload("a.jpg"),
            rng=rng,
        )
    with pytest.raises(LocalProtocolError, match="signed by the author"):
        sign_entry(OWNER, _plain_entry(EntryKind.REMOVE))
    with pytest.raises(LocalProtocolError, match="own file"):
        sign_entry(EDITOR, replace(_plain_entry(EntryKind.UPDATE), file_author=OWNER.public))
    with pytest.raises(LocalProtocolError, match="resumes"):
        AuthorChain(EDITOR, ALBUM, seq=3)
    with pytest.raises(LocalProtocolError, match=r"unsafe|refusing"):
        editor_add(1, None, "../escape.jpg", rng=rng)


# --- C1 at entry level ---------------------------------------------------------------------------


def test_C1_bad_signature_and_wrong_signer_are_refused() -> None:
    signed = editor_add(1, None, "a.jpg")
    broken = bytearray(signed.envelope)
    broken[-1] ^= 1  # last byte of the signature
    with pytest.raises(VerificationError) as err:
        decode_entry(bytes(broken))
    assert err.value.reason is Reason.BAD_SIGNATURE
    # The same entry bytes signed by a stranger still name EDITOR as the author.
    forged = resign(STRANGER, signed.envelope)
    with pytest.raises(VerificationError) as err:
        decode_entry(forged)
    assert err.value.reason is Reason.BAD_SIGNATURE


def test_C1_entry_replayed_into_another_album_is_refused() -> None:
    signed = editor_add(1, None, "a.jpg")
    with pytest.raises(VerificationError) as err:
        decode_entry(signed.envelope, album=OTHER_ALBUM)
    assert err.value.reason is Reason.WRONG_ALBUM
    # Relabelled and re-signed by its author, the payload no longer opens: the album is bound in.
    moved = decode_entry(resign(EDITOR, signed.envelope, album=OTHER_ALBUM), album=OTHER_ALBUM)
    with pytest.raises(VerificationError) as err:
        open_payload(moved.entry, KEY0)
    assert err.value.reason is Reason.DECRYPT_FAILED


def test_C1_wrong_epoch_key_does_not_open() -> None:
    signed = make_add(
        EDITOR,
        ALBUM,
        seq=1,
        prev=None,
        epoch=1,
        epoch_key=KEY0,
        payload=payload("a.jpg"),
        rng=counter_rng(),
    )
    with pytest.raises(VerificationError) as err:
        open_payload(signed.entry, KEY1)
    assert err.value.reason is Reason.DECRYPT_FAILED
    # Relabelling the epoch (re-signed) breaks the associated data, even with the right key.
    relabelled = decode_entry(resign(EDITOR, signed.envelope, epoch=0))
    with pytest.raises(VerificationError):
        open_payload(relabelled.entry, KEY0)


def test_C1_ciphertext_swapped_between_entries_does_not_open() -> None:
    rng = counter_rng()
    a = editor_add(1, None, "a.jpg", rng=rng)
    b = editor_add(2, a.hash, "b.jpg", rng=rng)
    swapped = resign(EDITOR, b.envelope, sealed=a.entry.sealed)  # the author itself swaps
    with pytest.raises(VerificationError) as err:
        open_payload(decode_entry(swapped).entry, KEY0)
    assert err.value.reason is Reason.DECRYPT_FAILED
    # Anyone else swapping breaks the signature.
    outer_swap = bytearray(b.envelope)
    start = b.envelope.index(b.entry.sealed)
    outer_swap[start : start + len(b.entry.sealed)] = a.entry.sealed[: len(b.entry.sealed)]
    with pytest.raises((VerificationError, DecodeError)):
        decode_entry(bytes(outer_swap))


def test_C1_every_bit_flip_of_an_envelope_is_refused() -> None:
    signed = make_remove(
        EDITOR, ALBUM, seq=2, prev=b"\x09" * 32, epoch=0, file_author=OWNER.public, file_id=FILE_ID
    )
    for index in range(len(signed.envelope)):
        for bit in range(8):
            tampered = bytearray(signed.envelope)
            tampered[index] ^= 1 << bit
            with pytest.raises((DecodeError, VerificationError)):
                decode_entry(bytes(tampered))


def test_entry_shape_rules_on_the_wire() -> None:
    signed = editor_add(2, b"\x01" * 32, "a.jpg")
    cases = {
        "kind": ("delete", "kind must be"),
        "seq": (0, "seq"),
        "file": (b"short", "file"),
        "sealed": (b"x" * 10, "shorter than a nonce"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(DecodeError, match=message):
            decode_entry(resign(EDITOR, signed.envelope, **{field: value}))
    first = editor_add(1, None, "a.jpg")
    with pytest.raises(DecodeError, match="no prev"):
        decode_entry(resign(EDITOR, first.envelope, prev=b"\x01" * 32))
    with pytest.raises(DecodeError, match="unknown field"):
        decode_entry(resign(EDITOR, first.envelope, file_author=EDITOR.public))
    removal = make_remove(
        EDITOR, ALBUM, seq=1, prev=None, epoch=0, file_author=OWNER.public, file_id=FILE_ID
    )
    with pytest.raises(DecodeError, match="unknown field"):
        decode_entry(resign(EDITOR, removal.envelope, sealed=b"x" * 40))


# --- B4 -----------------------------------------------------------------------------------------


def _raw_payload(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "name": "a.jpg",
        "size": 1000,
        "mtime_ns": 0,
        "content_hash": b"\x01" * 32,
        "file_key": b"\x02" * 32,
        "chunks": [[b"\x03" * 32, 1000]],
    }
    fields.update(changes)
    return encode(fields)


def _refusal(raw: bytes) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        decode_payload(raw)
    return err.value


def test_B4_manifest_bounds() -> None:
    full = [b"\x03" * 32, CHUNK_SIZE]
    cases = {
        "10 GiB in 3 chunks": _raw_payload(size=10 * 1024**3, chunks=[full, full, full]),
        "more than the largest file": _raw_payload(size=MAX_FILE_SIZE + 1, chunks=[full]),
        "chunk of 0 bytes": _raw_payload(size=CHUNK_SIZE, chunks=[[b"\x03" * 32, 0]]),
        "chunk bigger than the chunk size": _raw_payload(
            size=CHUNK_SIZE + 1, chunks=[[b"\x03" * 32, CHUNK_SIZE + 1]]
        ),
        "size is not the sum": _raw_payload(size=1000, chunks=[[b"\x03" * 32, 999]]),
        "a short chunk before the last": _raw_payload(
            size=CHUNK_SIZE + 1, chunks=[[b"\x03" * 32, 1], [b"\x03" * 32, CHUNK_SIZE]]
        ),
        "chunks for an empty file": _raw_payload(size=0, chunks=[[b"\x03" * 32, 1]]),
    }
    for label, raw in cases.items():
        assert _refusal(raw).reason is Reason.OUT_OF_BOUNDS, label


def test_B4_claimed_counts_allocate_nothing() -> None:
    # A chunk list header claiming 10**7 items, followed by one real item: refused by the count.
    honest = _raw_payload()
    header = encode("chunks") + b"\x07" + encode_varint(1)
    assert header in honest
    for claimed in (10**7, MAX_CHUNKS + 1):
        lying = honest.replace(header, encode("chunks") + b"\x07" + encode_varint(claimed))
        tracemalloc.start()
        with pytest.raises(DecodeError, match="exceed"):
            decode_payload(lying)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1024 * 1024
    tracemalloc.start()
    raw = _raw_payload(size=MAX_FILE_SIZE, chunks=[[b"\x03" * 32, CHUNK_SIZE]] * 3)
    assert _refusal(raw).reason is Reason.OUT_OF_BOUNDS
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1024 * 1024


def test_B4_sealed_out_of_bounds_payload_is_refused_after_decryption() -> None:
    entry = _plain_entry()
    signed = seal_raw(EDITOR, entry, KEY0, _raw_payload(size=10 * 1024**3))
    assert decode_entry(signed.envelope) == signed  # a blind replica cannot tell
    with pytest.raises(VerificationError) as err:
        open_payload(signed.entry, KEY0)
    assert err.value.reason is Reason.OUT_OF_BOUNDS
    garbage = seal_raw(EDITOR, entry, KEY0, b"\xff not a payload")
    with pytest.raises(VerificationError) as err:
        open_payload(garbage.entry, KEY0)
    assert err.value.reason is Reason.MALFORMED


def test_B4_boundary_sizes_are_accepted() -> None:
    for size in (0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE):
        p = payload("a.jpg", size)
        assert decode_payload(encode_payload(p)) == p
    assert MAX_CHUNKS * CHUNK_SIZE >= MAX_FILE_SIZE > (MAX_CHUNKS - 1) * CHUNK_SIZE


def test_B4_the_largest_honest_payload_fits_the_limits() -> None:
    # Encoding 262,144 chunks takes seconds; encoding grows by exactly one chunk's bytes per chunk.
    count = 1000
    p = Payload(
        name="n" * MAX_PATH_BYTES,
        size=count * CHUNK_SIZE,
        mtime_ns=-(2**63),
        captured_at=-(2**63),
        content_hash=bytes(32),
        file_key=bytes(32),
        chunks=(ChunkRef(bytes(32), CHUNK_SIZE),) * count,
    )
    one_chunk = len(encode([bytes(32), CHUNK_SIZE]))
    largest = len(encode_payload(p)) + (MAX_CHUNKS - count) * one_chunk + 2  # longer count varint
    assert largest <= MAX_PAYLOAD_BYTES
    assert NONCE_SIZE + largest + TAG_SIZE <= MAX_SEALED_BYTES


def test_payload_unsafe_name_is_refused() -> None:
    for name in ("../x.jpg", "/etc/passwd", "a/\x00b"):
        assert _refusal(_raw_payload(name=name)).reason is Reason.UNSAFE_NAME, name


def test_payload_field_types() -> None:
    with pytest.raises(DecodeError, match="unknown field"):
        decode_payload(_raw_payload(extra=1))
    with pytest.raises(DecodeError):
        decode_payload(_raw_payload(captured_at=None))
    with pytest.raises(DecodeError, match="64-bit"):
        decode_payload(_raw_payload(captured_at=2**63))
    with pytest.raises(DecodeError, match="pair"):
        decode_payload(_raw_payload(chunks=[[b"\x03" * 32]]))
    assert decode_payload(_raw_payload(captured_at=-5, mtime_ns=-1)).captured_at == -5


# --- hypothesis ------------------------------------------------------------------------------------

_NAMES = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
    min_size=1,
    max_size=3,
).map(lambda parts: "/".join(parts) + ".jpg")

_PAYLOADS = st.builds(
    lambda name, size, mtime, captured, mark: replace(
        payload(name, size, mark=mark), mtime_ns=mtime, captured_at=captured
    ),
    _NAMES,
    st.integers(0, 5 * CHUNK_SIZE),
    st.integers(-(2**63), 2**63 - 1),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=4),
)


@settings(max_examples=100, deadline=None)
@given(_PAYLOADS)
def test_payload_round_trip(p: Payload) -> None:
    assert decode_payload(encode_payload(p)) == p
    assert check_payload(p) == p


@settings(max_examples=60, deadline=None)
@given(
    _PAYLOADS,
    st.integers(1, 2**63 - 1),
    st.integers(0, 9_999),
    st.sampled_from(list(EntryKind)),
    st.binary(min_size=16, max_size=16),
)
def test_entry_round_trip(
    p: Payload, seq: int, epoch: int, kind: EntryKind, file_id: bytes
) -> None:
    prev = None if seq == 1 else hashlib.sha256(seq.to_bytes(8, "big")).digest()
    rng = counter_rng()
    if kind is EntryKind.ADD:
        signed = make_add(
            EDITOR,
            ALBUM,
            seq=seq,
            prev=prev,
            epoch=epoch,
            epoch_key=KEY0,
            payload=p,
            rng=rng,
            file_id=file_id,
        )
    elif kind is EntryKind.UPDATE:
        signed = make_update(
            EDITOR,
            ALBUM,
            seq=seq,
            prev=prev,
            epoch=epoch,
            epoch_key=KEY0,
            file_id=file_id,
            payload=p,
            rng=rng,
        )
    else:
        signed = make_remove(
            EDITOR,
            ALBUM,
            seq=seq,
            prev=prev,
            epoch=epoch,
            file_author=OWNER.public,
            file_id=file_id,
        )
    decoded = decode_entry(signed.envelope, album=ALBUM)
    assert decoded == signed
    if kind is not EntryKind.REMOVE:
        assert open_payload(decoded.entry, KEY0) == p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    for decoder in (decode_entry, decode_payload):
        with contextlib.suppress(DecodeError, VerificationError):
            decoder(data)


_WIRE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=8,
)
_ENTRY_KEYS = ["album", "author", "seq", "prev", "epoch", "kind", "file", "file_author", "sealed"]
_PAYLOAD_KEYS = ["name", "size", "mtime_ns", "captured_at", "content_hash", "file_key", "chunks"]


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_ENTRY_KEYS), _WIRE_VALUES, max_size=9),
    st.dictionaries(st.sampled_from(_PAYLOAD_KEYS), _WIRE_VALUES, max_size=7),
    st.binary(min_size=64, max_size=64),
)
def test_structured_garbage_only_raises_protocol_errors(
    entry: dict[str, object], fields: dict[str, object], sig: bytes
) -> None:
    for envelope in (
        encode({"entry": encode(entry), "sig": sig}),
        encode({"entry": encode(entry), "sig": os.urandom(3)}),
    ):
        with pytest.raises((DecodeError, VerificationError)):
            decode_entry(envelope)
    with contextlib.suppress(DecodeError, VerificationError):
        decode_payload(encode(fields))


def test_chunk_ids_must_be_hashes() -> None:
    bad = replace(payload("a.jpg"), chunks=(ChunkRef(b"short", 1000),))
    with pytest.raises(VerificationError) as err:
        check_payload(bad)
    assert err.value.reason is Reason.MALFORMED
