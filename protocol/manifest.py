"""Photo-manifest entries: one signed, hash-chained sequence per author per album.

Envelope {"entry": bytes, "sig": bytes}: the author's Ed25519 signature over the entry bytes with
domain b"manifest". An entry's hash is SHA-256 of its envelope. The entry is a canonical map whose
fields are all readable without any key, so a blind replica can store and verify it:

    album        32 bytes   the album ID
    author       32 bytes   the author's Ed25519 public key (the signer)
    seq          int >= 1   the author's own sequence number in this album
    prev         32 bytes   hash of the author's entry seq - 1 (absent when seq = 1)
    epoch        int        the key epoch whose album key seals the payload
    kind         text       "add" | "update" | "remove"
    file         16 bytes   the file's ID, drawn at random by its author when adding it
    file_author  32 bytes   remove only: whose file is removed (an update acts on its author's own)
    sealed       bytes      add/update only: 24-byte nonce + XChaCha20-Poly1305 ciphertext

The payload (name, size, times, content hash, per-file key, chunk list) is sealed under the epoch key
with every clear field as associated data, so a ciphertext moved into another entry does not open.
Remove entries carry no payload. Payload bounds follow from the fixed chunk size: a file of `size`
bytes has exactly ceil(size / CHUNK_SIZE) chunks, all CHUNK_SIZE bytes except the last.

Builders: protocol/manifest_builders.py. Chains and verdicts: manifest_state.py. Files: album_view.py.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace

import nacl.bindings as sodium
import nacl.exceptions

from protocol.chunks import (
    CHUNK_ID_SIZE,
    CHUNK_SIZE,
    FILE_KEY_SIZE,
    MAX_CHUNKS,
    MAX_FILE_SIZE,
    ChunkRef,
)
from protocol.encoding import Limits, Reader, Value, decode, encode
from protocol.epochs import EPOCH_KEY_SIZE, MAX_EPOCHS
from protocol.errors import DecodeError, LocalProtocolError, Reason, VerificationError
from protocol.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, DeviceKey, Rng, verify_signature
from protocol.names import MAX_PATH_BYTES, safe_relative_path
from protocol.statements import HASH_SIZE, MAX_SEQ

DOMAIN = b"manifest"
PAYLOAD_AD_PREFIX = b"albumsync/v1/manifest-payload\0"
FILE_ID_SIZE = 16
NONCE_SIZE = 24
TAG_SIZE = 16
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1
_MAX_CHUNK_BYTES = len(encode([bytes(CHUNK_ID_SIZE), CHUNK_SIZE]))  # one honest chunk, encoded
MAX_PAYLOAD_BYTES = MAX_CHUNKS * _MAX_CHUNK_BYTES + MAX_PATH_BYTES + 1024
MAX_SEALED_BYTES = NONCE_SIZE + MAX_PAYLOAD_BYTES + TAG_SIZE
MAX_ENTRY_BYTES = MAX_SEALED_BYTES + 512
MAX_ENVELOPE_BYTES = MAX_ENTRY_BYTES + 128

_ENVELOPE_LIMITS = Limits(
    max_total=MAX_ENVELOPE_BYTES, max_bytes=MAX_ENTRY_BYTES, max_text=16, max_items=8, max_depth=1
)
_ENTRY_LIMITS = Limits(
    max_total=MAX_ENTRY_BYTES, max_bytes=MAX_SEALED_BYTES, max_text=16, max_items=16, max_depth=1
)
_PAYLOAD_LIMITS = Limits(
    max_total=MAX_PAYLOAD_BYTES,
    max_bytes=64,
    max_text=MAX_PATH_BYTES,
    max_items=MAX_CHUNKS,
    max_depth=3,
)


class EntryKind(enum.Enum):
    """What a manifest entry does to the file it names."""

    ADD = "add"
    UPDATE = "update"
    REMOVE = "remove"


@dataclass(frozen=True, kw_only=True, slots=True)
class Payload:
    """What an add or update says about the file, readable only with the epoch key."""

    name: str
    size: int
    mtime_ns: int
    content_hash: bytes
    file_key: bytes
    chunks: tuple[ChunkRef, ...]
    captured_at: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """The clear fields of an entry; `file_author` equals `author` except in a remove."""

    album: bytes
    author: bytes
    seq: int
    prev: bytes | None
    epoch: int
    kind: EntryKind
    file_id: bytes
    file_author: bytes
    sealed: bytes = b""

    @property
    def file(self) -> tuple[bytes, bytes]:
        """The (file author, file ID) pair this entry acts on."""
        return (self.file_author, self.file_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class SignedEntry:
    """An entry whose author's signature has been verified; `hash` is SHA-256 of `envelope`."""

    entry: Entry
    envelope: bytes
    hash: bytes


def decode_entry(envelope: bytes, *, album: bytes | None = None) -> SignedEntry:
    """Decode an envelope and verify its author's signature (and its album, when given)."""
    outer = Reader(decode(envelope, _ENVELOPE_LIMITS), "manifest envelope")
    raw = outer.bytes("entry", max_len=MAX_ENTRY_BYTES)
    sig = outer.bytes("sig", size=SIGNATURE_SIZE)
    outer.finish()
    entry = _read_entry(Reader(decode(raw, _ENTRY_LIMITS), "manifest entry"))
    try:
        verify_signature(entry.author, DOMAIN, raw, sig)
    except VerificationError as err:
        raise VerificationError(
            err.reason, f"manifest entry {entry.seq} is not signed by the author it names"
        ) from None
    if album is not None and entry.album != album:
        raise VerificationError(Reason.WRONG_ALBUM, "this manifest entry belongs to another album")
    return SignedEntry(entry=entry, envelope=bytes(envelope), hash=_hash(envelope))


def sign_entry(author_key: DeviceKey, entry: Entry) -> SignedEntry:
    """The signed envelope of a well-formed entry; the key must be the entry's author."""
    if author_key.public != entry.author:
        raise LocalProtocolError("a manifest entry must be signed by the author it names")
    _check_shape(entry)
    raw = encode(_entry_fields(entry))
    envelope = encode({"entry": raw, "sig": author_key.sign(DOMAIN, raw)})
    return SignedEntry(entry=entry, envelope=envelope, hash=_hash(envelope))


def payload_associated_data(entry: Entry) -> bytes:
    """The AEAD associated data of an entry's payload: every clear field but `sealed`."""
    return PAYLOAD_AD_PREFIX + encode(_clear_fields(entry))


def seal_payload(entry: Entry, epoch_key: bytes, payload: Payload, rng: Rng) -> bytes:
    """The `sealed` field for `entry`: a checked payload encrypted under the epoch key."""
    _check_key(epoch_key)
    try:
        checked = check_payload(payload)
    except VerificationError as err:
        raise LocalProtocolError(f"refusing to write this payload: {err.message}") from None
    nonce = rng(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"rng returned {len(nonce)} bytes, not {NONCE_SIZE}")
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        encode_payload(checked), payload_associated_data(entry), nonce, epoch_key
    )
    return nonce + bytes(ciphertext)


def open_payload(entry: Entry, epoch_key: bytes) -> Payload:
    """Decrypt and check an add/update payload; VerificationError says why it is unusable."""
    _check_key(epoch_key)
    if entry.kind is EntryKind.REMOVE:
        raise LocalProtocolError("a remove entry carries no payload")
    nonce, ciphertext = entry.sealed[:NONCE_SIZE], entry.sealed[NONCE_SIZE:]
    try:
        plaintext = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, payload_associated_data(entry), nonce, epoch_key
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise VerificationError(
            Reason.DECRYPT_FAILED,
            f"the payload does not open with the key of epoch {entry.epoch}",
        ) from None
    try:
        return decode_payload(bytes(plaintext))
    except DecodeError as err:
        raise VerificationError(
            Reason.MALFORMED, f"the payload is malformed: {err.message}"
        ) from None


def encode_payload(payload: Payload) -> bytes:
    """The canonical bytes of a payload, unchecked (see `check_payload`)."""
    fields: dict[str, object] = {
        "name": payload.name,
        "size": payload.size,
        "mtime_ns": payload.mtime_ns,
        "content_hash": payload.content_hash,
        "file_key": payload.file_key,
        "chunks": [[chunk.chunk_id, chunk.size] for chunk in payload.chunks],
    }
    if payload.captured_at is not None:
        fields["captured_at"] = payload.captured_at
    return encode(fields)


def decode_payload(raw: bytes) -> Payload:
    """Decode and check a payload's plaintext; DecodeError or VerificationError otherwise."""
    r = Reader(decode(raw, _PAYLOAD_LIMITS), "manifest payload")
    payload = Payload(
        name=r.text("name", max_len=MAX_PATH_BYTES),
        size=r.int("size"),
        mtime_ns=r.int("mtime_ns", lo=MIN_INT64, hi=MAX_INT64),
        captured_at=_optional_int64(r, "captured_at"),
        content_hash=r.bytes("content_hash", size=HASH_SIZE),
        file_key=r.bytes("file_key", size=FILE_KEY_SIZE),
        chunks=tuple(_read_chunk(item) for item in r.list("chunks", max_items=MAX_CHUNKS)),
    )
    r.finish()
    return check_payload(payload)


def check_payload(payload: Payload) -> Payload:
    """The payload with its name normalised, or VerificationError naming the broken bound."""
    name = safe_relative_path(payload.name)
    _check_chunks(payload.size, payload.chunks)
    if len(payload.content_hash) != HASH_SIZE or len(payload.file_key) != FILE_KEY_SIZE:
        raise VerificationError(Reason.MALFORMED, "a content hash and a file key are 32 bytes")
    return replace(payload, name=name) if name != payload.name else payload


def entry_hash(envelope: bytes) -> bytes:
    """The hash that names an entry: of its whole envelope, so no decoding is needed."""
    return hashlib.sha256(envelope).digest()


_hash = entry_hash


def _clear_fields(entry: Entry) -> dict[str, object]:
    fields: dict[str, object] = {
        "album": entry.album,
        "author": entry.author,
        "seq": entry.seq,
        "epoch": entry.epoch,
        "kind": entry.kind.value,
        "file": entry.file_id,
    }
    if entry.prev is not None:
        fields["prev"] = entry.prev
    if entry.kind is EntryKind.REMOVE:
        fields["file_author"] = entry.file_author
    return fields


def _entry_fields(entry: Entry) -> dict[str, object]:
    fields = _clear_fields(entry)
    if entry.kind is not EntryKind.REMOVE:
        fields["sealed"] = entry.sealed
    return fields


def _check_shape(entry: Entry) -> None:
    """LocalProtocolError unless `entry` is one `_read_entry` would accept (sealed aside)."""
    sizes = [
        (entry.album, HASH_SIZE),
        (entry.author, PUBLIC_KEY_SIZE),
        (entry.file_id, FILE_ID_SIZE),
        (entry.file_author, PUBLIC_KEY_SIZE),
    ]
    if any(len(value) != size for value, size in sizes):
        raise LocalProtocolError("album, author, file ID or file author has the wrong size")
    if not 1 <= entry.seq <= MAX_SEQ or not 0 <= entry.epoch < MAX_EPOCHS:
        raise LocalProtocolError(f"seq {entry.seq} or epoch {entry.epoch} is out of range")
    wrong_prev = entry.prev is not None and len(entry.prev) != HASH_SIZE
    if (entry.seq == 1) != (entry.prev is None) or wrong_prev:
        raise LocalProtocolError("entry 1 has no prev hash; every later entry has a 32-byte one")
    if entry.kind is not EntryKind.REMOVE and entry.file_author != entry.author:
        raise LocalProtocolError("an add or update acts on the author's own file")
    if entry.kind is EntryKind.REMOVE and entry.sealed:
        raise LocalProtocolError("a remove entry carries no payload")
    if entry.kind is not EntryKind.REMOVE and len(entry.sealed) < NONCE_SIZE + TAG_SIZE:
        raise LocalProtocolError("an add or update carries a sealed payload (see seal_payload)")


def _read_entry(r: Reader) -> Entry:
    try:
        kind = EntryKind(r.text("kind", max_len=16))
    except ValueError:
        raise DecodeError("manifest entry: kind must be add, update or remove") from None
    author = r.bytes("author", size=PUBLIC_KEY_SIZE)
    seq = r.int("seq", lo=1, hi=MAX_SEQ)
    if seq == 1 and r.has("prev"):
        raise DecodeError("manifest entry: entry 1 of an author has no prev hash")
    removing = kind is EntryKind.REMOVE
    entry = Entry(
        album=r.bytes("album", size=HASH_SIZE),
        author=author,
        seq=seq,
        prev=r.bytes("prev", size=HASH_SIZE) if seq > 1 else None,
        epoch=r.int("epoch", hi=MAX_EPOCHS - 1),
        kind=kind,
        file_id=r.bytes("file", size=FILE_ID_SIZE),
        file_author=r.bytes("file_author", size=PUBLIC_KEY_SIZE) if removing else author,
        sealed=b"" if removing else r.bytes("sealed", max_len=MAX_SEALED_BYTES),
    )
    r.finish()
    if not removing and len(entry.sealed) < NONCE_SIZE + TAG_SIZE:
        raise DecodeError("manifest entry: the sealed payload is shorter than a nonce and a tag")
    return entry


def _read_chunk(item: Value) -> ChunkRef:
    if not (isinstance(item, list) and len(item) == 2):
        raise DecodeError("manifest payload: each chunk is a [chunk ID, size] pair")
    chunk_id, size = item
    if not (isinstance(chunk_id, bytes) and len(chunk_id) == CHUNK_ID_SIZE):
        raise DecodeError(f"manifest payload: a chunk ID is {CHUNK_ID_SIZE} bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DecodeError("manifest payload: a chunk size is a non-negative integer")
    return ChunkRef(chunk_id, size)


def _optional_int64(r: Reader, key: str) -> int | None:
    value = r.optional(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_INT64 <= value <= MAX_INT64:
        raise DecodeError(f"manifest payload: field '{key}' must be a 64-bit integer")
    return value


def _check_chunks(size: int, chunks: tuple[ChunkRef, ...]) -> None:
    """OUT_OF_BOUNDS unless `chunks` cut `size` bytes into full chunks and one shorter last one."""
    if not 0 <= size <= MAX_FILE_SIZE:
        raise _bounds(f"a file of {size} bytes exceeds the limit of {MAX_FILE_SIZE} bytes")
    expected = -(-size // CHUNK_SIZE)
    if len(chunks) != expected:
        raise _bounds(
            f"a file of {size} bytes has exactly {expected} chunks of at most {CHUNK_SIZE} "
            f"bytes, but the entry lists {len(chunks)}"
        )
    for index, chunk in enumerate(chunks):
        if len(chunk.chunk_id) != CHUNK_ID_SIZE:
            raise VerificationError(
                Reason.MALFORMED, f"chunk {index} has no {CHUNK_ID_SIZE}-byte ID"
            )
        if not 1 <= chunk.size <= CHUNK_SIZE:
            raise _bounds(f"chunk {index} claims {chunk.size} bytes, outside 1..{CHUNK_SIZE}")
        if index < len(chunks) - 1 and chunk.size != CHUNK_SIZE:
            raise _bounds(
                f"chunk {index} has {chunk.size} bytes; all but the last have {CHUNK_SIZE}"
            )
    total = sum(chunk.size for chunk in chunks)
    if total != size:
        raise _bounds(f"the chunks add up to {total} bytes, not the file's {size}")


def _bounds(message: str) -> VerificationError:
    return VerificationError(Reason.OUT_OF_BOUNDS, f"manifest payload: {message}")


def _check_key(epoch_key: bytes) -> None:
    if len(epoch_key) != EPOCH_KEY_SIZE:
        raise LocalProtocolError(f"an epoch key is {EPOCH_KEY_SIZE} bytes, not {len(epoch_key)}")
