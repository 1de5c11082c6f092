"""Chunk crypto: sizes and bounds, determinism, ID-before-tag verification, blind verification."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.chunks import (
    CHUNK_SIZE,
    MAX_CHUNK_CIPHERTEXT,
    MAX_CHUNKS,
    MAX_FILE_SIZE,
    TAG_SIZE,
    ChunkRef,
    chunk_bounds,
    chunk_count,
    chunk_id,
    chunk_sizes,
    decrypt_chunk,
    encrypt_chunk,
    new_file_key,
    verify_chunk,
)
from protocol.errors import LocalProtocolError, Reason, VerificationError

KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("size", "sizes"),
    [
        (0, []),
        (1, [1]),
        (CHUNK_SIZE - 1, [CHUNK_SIZE - 1]),
        (CHUNK_SIZE, [CHUNK_SIZE]),
        (CHUNK_SIZE + 1, [CHUNK_SIZE, 1]),
        (3 * CHUNK_SIZE, [CHUNK_SIZE] * 3),
    ],
)
def test_chunk_sizes_at_the_edges(size: int, sizes: list[int]) -> None:
    assert list(chunk_sizes(size)) == sizes
    assert chunk_count(size) == len(sizes)
    offsets = [chunk_bounds(size, i) for i in range(len(sizes))]
    assert offsets == [(i * CHUNK_SIZE, n) for i, n in enumerate(sizes)]


@given(st.integers(0, MAX_FILE_SIZE))
@settings(max_examples=200)
def test_chunk_bounds_tile_the_file(size: int) -> None:
    count = chunk_count(size)
    assert count * CHUNK_SIZE >= size > (count - 1) * CHUNK_SIZE or size == count == 0
    if count:
        last_offset, last_len = chunk_bounds(size, count - 1)
        assert last_offset + last_len == size
        assert 1 <= last_len <= CHUNK_SIZE


def test_chunk_sizes_is_lazy_for_the_largest_file() -> None:
    sizes = chunk_sizes(MAX_FILE_SIZE)
    assert next(sizes) == CHUNK_SIZE
    assert chunk_count(MAX_FILE_SIZE) == MAX_CHUNKS


def test_B4_chunk_level_bounds() -> None:
    for size in (-1, MAX_FILE_SIZE + 1, 10**30):
        with pytest.raises(VerificationError) as info:
            chunk_count(size)
        assert info.value.reason is Reason.OUT_OF_BOUNDS
    for size, index in ((0, 0), (CHUNK_SIZE, 1), (3 * CHUNK_SIZE, -1), (10, 10**7)):
        with pytest.raises(VerificationError, match="does not exist") as info:
            chunk_bounds(size, index)
        assert info.value.reason is Reason.OUT_OF_BOUNDS


def test_encrypt_refuses_impossible_chunks() -> None:
    with pytest.raises(LocalProtocolError, match="empty file has no chunks"):
        encrypt_chunk(KEY, 0, b"")
    with pytest.raises(LocalProtocolError, match="a chunk holds"):
        encrypt_chunk(KEY, 0, bytes(CHUNK_SIZE + 1))
    with pytest.raises(LocalProtocolError, match="index"):
        encrypt_chunk(KEY, MAX_CHUNKS, b"x")
    with pytest.raises(LocalProtocolError, match="index"):
        encrypt_chunk(KEY, -1, b"x")
    with pytest.raises(LocalProtocolError, match="file key"):
        encrypt_chunk(KEY[:16], 0, b"x")


def test_new_file_key_uses_the_given_randomness() -> None:
    assert new_file_key(lambda n: b"\x07" * n) == b"\x07" * 32
    assert len(new_file_key(os.urandom)) == 32
    with pytest.raises(LocalProtocolError):
        new_file_key(lambda n: b"short")


@given(st.binary(min_size=1, max_size=4096), st.integers(0, MAX_CHUNKS - 1))
@settings(max_examples=100)
def test_round_trip_and_determinism(plaintext: bytes, index: int) -> None:
    ciphertext = encrypt_chunk(KEY, index, plaintext)
    assert len(ciphertext) == len(plaintext) + TAG_SIZE
    # Another member re-encrypting its own copy (from a different buffer type) gets the same bytes.
    assert encrypt_chunk(bytes(KEY), index, memoryview(bytearray(plaintext))) == ciphertext
    assert decrypt_chunk(KEY, index, ciphertext, chunk_id(ciphertext)) == plaintext


def test_ciphertext_depends_on_key_index_and_content() -> None:
    base = encrypt_chunk(KEY, 5, b"photo bytes")
    assert encrypt_chunk(KEY, 6, b"photo bytes") != base
    assert encrypt_chunk(bytes(32), 5, b"photo bytes") != base
    assert encrypt_chunk(KEY, 5, b"photo bytez") != base
    assert b"photo" not in base


def test_B3_flipped_byte_is_refused_by_its_id_first() -> None:
    ciphertext = encrypt_chunk(KEY, 0, os.urandom(1000))
    cid = chunk_id(ciphertext)
    for position in (0, 500, len(ciphertext) - 1):
        bad = bytearray(ciphertext)
        bad[position] ^= 0x01
        with pytest.raises(VerificationError, match="does not match its ID") as info:
            decrypt_chunk(KEY, 0, bytes(bad), cid)
        assert info.value.reason is Reason.DECRYPT_FAILED
        with pytest.raises(VerificationError, match="does not match its ID"):
            verify_chunk(bytes(bad), cid)
    verify_chunk(ciphertext, cid)


def test_right_id_but_wrong_key_or_index_fails_the_tag() -> None:
    ciphertext = encrypt_chunk(KEY, 3, b"content")
    cid = chunk_id(ciphertext)
    for key, index in ((bytes(32), 3), (KEY, 4)):
        with pytest.raises(VerificationError, match="does not decrypt") as info:
            decrypt_chunk(key, index, ciphertext, cid)
        assert info.value.reason is Reason.DECRYPT_FAILED


def test_B4_ciphertext_sizes_are_bounded_before_hashing() -> None:
    for size in (0, TAG_SIZE, MAX_CHUNK_CIPHERTEXT + 1):
        blob = bytes(size)
        with pytest.raises(VerificationError, match="impossible") as info:
            verify_chunk(blob, chunk_id(blob))
        assert info.value.reason is Reason.OUT_OF_BOUNDS
    full = encrypt_chunk(KEY, 0, bytes(CHUNK_SIZE))
    assert len(full) == MAX_CHUNK_CIPHERTEXT
    assert decrypt_chunk(KEY, 0, full, chunk_id(full)) == bytes(CHUNK_SIZE)
    with pytest.raises(VerificationError) as info:
        decrypt_chunk(KEY, MAX_CHUNKS, full, chunk_id(full))
    assert info.value.reason is Reason.OUT_OF_BOUNDS


@given(st.binary(max_size=MAX_CHUNK_CIPHERTEXT // 64), st.binary(min_size=32, max_size=32))
@settings(max_examples=200)
def test_random_bytes_raise_only_verification_errors(blob: bytes, cid: bytes) -> None:
    for expected in (cid, chunk_id(blob)):
        try:
            decrypt_chunk(KEY, 0, blob, expected)
        except VerificationError:
            pass
        else:
            pytest.fail("random bytes decrypted")


def test_chunk_ref_is_a_frozen_value() -> None:
    ref = ChunkRef(b"\x01" * 32, 10)
    assert ref == ChunkRef(chunk_id=b"\x01" * 32, size=10)
    with pytest.raises(AttributeError):
        ref.size = 11  # type: ignore[misc]


def test_throughput_of_encrypt_and_hash(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints MB/s over 64 MiB as the scanner does it (one reused buffer); not an assertion."""
    total = 64 * 1024 * 1024
    buffer = memoryview(bytearray(os.urandom(CHUNK_SIZE)))
    start = time.perf_counter()
    for index in range(total // CHUNK_SIZE):
        chunk_id(encrypt_chunk(KEY, index, buffer))
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nencrypt_chunk + chunk_id: {total / elapsed / 1e6:.0f} MB/s over 64 MiB")
