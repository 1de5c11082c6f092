"""Chunk crypto: split a file version into chunks, encrypt each, address it by its ciphertext hash.

- Every chunk holds CHUNK_SIZE plaintext bytes except the last (1..CHUNK_SIZE); an empty file has
  none. 256 KiB was measured (ANCHORS.md): AES-GCM + SHA-256 run at the same rate as with 1 MiB
  buffers, while staying under glibc's 1 MiB mmap threshold that makes larger buffers page-fault.
- AES-256-GCM with a per-file-version random key. The nonce is derived from the chunk index alone
  (4 zero bytes + 8-byte big-endian index), so any member re-encrypting its own copy produces the
  same ciphertext. That is safe because a file key never encrypts other content: an edited file is a
  new version with a new key. The associated data repeats the index under a domain label.
- A chunk's ID is the SHA-256 of its ciphertext. `decrypt_chunk` checks the ID before the tag, and
  `verify_chunk` lets a blind replica check a chunk without any key. WebCrypto has both primitives,
  so a browser can do the same.

Sizes and indexes from outside raise VerificationError(OUT_OF_BOUNDS); wrong arguments from our own
side raise LocalProtocolError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.errors import LocalProtocolError, Reason, VerificationError

CHUNK_SIZE = 256 * 1024  # plaintext bytes in every chunk but the last
# A file's whole chunk list travels in one manifest entry, and an entry must fit one wire frame
# (protocol/messages.py MAX_WIRE_ENTRY): 4 GiB is 16,384 chunks, about 640 KB of chunk list.
MAX_FILE_SIZE = 4 * 1024**3
MAX_CHUNKS = MAX_FILE_SIZE // CHUNK_SIZE  # exact: MAX_FILE_SIZE is a multiple of CHUNK_SIZE
TAG_SIZE = 16  # AES-GCM authentication tag
MAX_CHUNK_CIPHERTEXT = CHUNK_SIZE + TAG_SIZE
FILE_KEY_SIZE = 32  # AES-256
CHUNK_ID_SIZE = 32  # SHA-256

Plaintext = bytes | bytearray | memoryview

_AAD_LABEL = b"albumsync/chunk/v1"
_NONCE_PAD = bytes(4)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One encrypted chunk of a file version: its ID (SHA-256 of the ciphertext) and plaintext size."""

    chunk_id: bytes
    size: int


def chunk_count(size: int) -> int:
    """How many chunks a file of `size` bytes has (0 for an empty file)."""
    _check_file_size(size)
    return -(-size // CHUNK_SIZE)


def chunk_sizes(size: int) -> Iterator[int]:
    """The plaintext size of each chunk of a file of `size` bytes, in order, lazily."""
    count = chunk_count(size)
    for _ in range(count - 1):
        yield CHUNK_SIZE
    if count:
        yield size - CHUNK_SIZE * (count - 1)


def chunk_bounds(size: int, index: int) -> tuple[int, int]:
    """(offset, length) of chunk `index` in a file of `size` bytes."""
    count = chunk_count(size)
    if not 0 <= index < count:
        raise VerificationError(
            Reason.OUT_OF_BOUNDS,
            f"chunk {index} does not exist: a file of {size} bytes has chunks 0..{count - 1}"
            if count
            else f"chunk {index} does not exist: an empty file has no chunks",
        )
    offset = index * CHUNK_SIZE
    return offset, min(CHUNK_SIZE, size - offset)


def new_file_key(rng: Callable[[int], bytes]) -> bytes:
    """A fresh random key for one file version."""
    key = rng(FILE_KEY_SIZE)
    if len(key) != FILE_KEY_SIZE:
        raise LocalProtocolError(
            f"the random source returned {len(key)} bytes, not {FILE_KEY_SIZE}"
        )
    return key


def encrypt_chunk(file_key: bytes, index: int, plaintext: Plaintext) -> bytes:
    """The ciphertext (with tag) of chunk `index`; identical for identical key, index and plaintext."""
    _check_key(file_key)
    if not 0 <= index < MAX_CHUNKS:
        raise LocalProtocolError(f"chunk index {index} is outside 0..{MAX_CHUNKS - 1}")
    if not 1 <= len(plaintext) <= CHUNK_SIZE:
        raise LocalProtocolError(
            f"a chunk holds 1..{CHUNK_SIZE} bytes, not {len(plaintext)} (an empty file has no chunks)"
        )
    return AESGCM(file_key).encrypt(_nonce(index), plaintext, _aad(index))


def chunk_id(ciphertext: Plaintext) -> bytes:
    """A chunk's address: the SHA-256 of its ciphertext."""
    return hashlib.sha256(ciphertext).digest()


def verify_chunk(ciphertext: Plaintext, expected_id: bytes) -> None:
    """Check a chunk's size and that it hashes to `expected_id`, without a key (blind replicas)."""
    if len(expected_id) != CHUNK_ID_SIZE:
        raise LocalProtocolError(f"a chunk ID has {CHUNK_ID_SIZE} bytes, not {len(expected_id)}")
    if not TAG_SIZE < len(ciphertext) <= MAX_CHUNK_CIPHERTEXT:
        raise VerificationError(
            Reason.OUT_OF_BOUNDS,
            f"a chunk of {len(ciphertext)} bytes is impossible: an encrypted chunk has "
            f"{TAG_SIZE + 1}..{MAX_CHUNK_CIPHERTEXT} bytes",
        )
    if chunk_id(ciphertext) != expected_id:
        raise VerificationError(
            Reason.DECRYPT_FAILED,
            f"chunk {expected_id.hex()[:16]}… does not match its ID: damaged or tampered with; "
            "fetch it from another peer",
        )


def decrypt_chunk(file_key: bytes, index: int, ciphertext: Plaintext, expected_id: bytes) -> bytes:
    """The plaintext of chunk `index`, after checking its ID and then its authentication tag."""
    _check_key(file_key)
    verify_chunk(ciphertext, expected_id)
    if not 0 <= index < MAX_CHUNKS:
        raise VerificationError(
            Reason.OUT_OF_BOUNDS, f"chunk index {index} is outside 0..{MAX_CHUNKS - 1}"
        )
    try:
        return AESGCM(file_key).decrypt(_nonce(index), ciphertext, _aad(index))
    except InvalidTag:
        raise VerificationError(
            Reason.DECRYPT_FAILED,
            f"chunk {index} ({expected_id.hex()[:16]}…) matches its ID but does not decrypt: the "
            "file entry names the wrong key or position for it",
        ) from None


def _check_file_size(size: int) -> None:
    if not 0 <= size <= MAX_FILE_SIZE:
        raise VerificationError(
            Reason.OUT_OF_BOUNDS,
            f"a file of {size} bytes is outside the limit of 0..{MAX_FILE_SIZE} bytes (4 GiB)",
        )


def _check_key(file_key: bytes) -> None:
    if len(file_key) != FILE_KEY_SIZE:
        raise LocalProtocolError(f"a file key has {FILE_KEY_SIZE} bytes, not {len(file_key)}")


def _nonce(index: int) -> bytes:
    return _NONCE_PAD + index.to_bytes(8, "big")


def _aad(index: int) -> bytes:
    return _AAD_LABEL + index.to_bytes(8, "big")
