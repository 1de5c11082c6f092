"""Writing photo-manifest entries: one-shot builders, and `AuthorChain`, which numbers them.

Every builder checks what a verifier would check (entry shape, payload bounds, safe name) and raises
LocalProtocolError instead of signing something other peers would refuse. See protocol/manifest.py
for the wire form.
"""

from __future__ import annotations

from dataclasses import replace

from protocol.errors import LocalProtocolError
from protocol.keys import DeviceKey, Rng
from protocol.manifest import (
    FILE_ID_SIZE,
    Entry,
    EntryKind,
    Payload,
    SignedEntry,
    seal_payload,
    sign_entry,
)


def make_add(
    author_key: DeviceKey,
    album_id: bytes,
    *,
    seq: int,
    prev: bytes | None,
    epoch: int,
    epoch_key: bytes,
    payload: Payload,
    rng: Rng,
    file_id: bytes | None = None,
) -> SignedEntry:
    """A signed add of a new file (a fresh random file ID unless one is given)."""
    entry = Entry(
        album=album_id,
        author=author_key.public,
        seq=seq,
        prev=prev,
        epoch=epoch,
        kind=EntryKind.ADD,
        file_id=rng(FILE_ID_SIZE) if file_id is None else file_id,
        file_author=author_key.public,
    )
    return _sealed_and_signed(author_key, entry, epoch_key, payload, rng)


def make_update(
    author_key: DeviceKey,
    album_id: bytes,
    *,
    seq: int,
    prev: bytes | None,
    epoch: int,
    epoch_key: bytes,
    file_id: bytes,
    payload: Payload,
    rng: Rng,
) -> SignedEntry:
    """A signed new version of one of the author's own files."""
    entry = Entry(
        album=album_id,
        author=author_key.public,
        seq=seq,
        prev=prev,
        epoch=epoch,
        kind=EntryKind.UPDATE,
        file_id=file_id,
        file_author=author_key.public,
    )
    return _sealed_and_signed(author_key, entry, epoch_key, payload, rng)


def make_remove(
    author_key: DeviceKey,
    album_id: bytes,
    *,
    seq: int,
    prev: bytes | None,
    epoch: int,
    file_author: bytes,
    file_id: bytes,
) -> SignedEntry:
    """A signed removal of the file (file_author, file_id); no payload."""
    entry = Entry(
        album=album_id,
        author=author_key.public,
        seq=seq,
        prev=prev,
        epoch=epoch,
        kind=EntryKind.REMOVE,
        file_id=file_id,
        file_author=file_author,
    )
    return sign_entry(author_key, entry)


class AuthorChain:
    """Writes one author's entries in one album, tracking its own seq and prev hash."""

    def __init__(
        self, key: DeviceKey, album_id: bytes, *, seq: int = 0, head: bytes | None = None
    ) -> None:
        if (seq == 0) != (head is None):
            raise LocalProtocolError("an author chain resumes from both its last seq and hash")
        self.key = key
        self.album_id = album_id
        self.seq = seq
        self.head = head

    def add(
        self,
        epoch: int,
        epoch_key: bytes,
        payload: Payload,
        rng: Rng,
        *,
        file_id: bytes | None = None,
    ) -> SignedEntry:
        signed = make_add(
            self.key,
            self.album_id,
            seq=self.seq + 1,
            prev=self.head,
            epoch=epoch,
            epoch_key=epoch_key,
            payload=payload,
            rng=rng,
            file_id=file_id,
        )
        return self._advance(signed)

    def update(
        self, epoch: int, epoch_key: bytes, file_id: bytes, payload: Payload, rng: Rng
    ) -> SignedEntry:
        signed = make_update(
            self.key,
            self.album_id,
            seq=self.seq + 1,
            prev=self.head,
            epoch=epoch,
            epoch_key=epoch_key,
            file_id=file_id,
            payload=payload,
            rng=rng,
        )
        return self._advance(signed)

    def remove(self, epoch: int, file_author: bytes, file_id: bytes) -> SignedEntry:
        signed = make_remove(
            self.key,
            self.album_id,
            seq=self.seq + 1,
            prev=self.head,
            epoch=epoch,
            file_author=file_author,
            file_id=file_id,
        )
        return self._advance(signed)

    def _advance(self, signed: SignedEntry) -> SignedEntry:
        self.seq, self.head = signed.entry.seq, signed.hash
        return signed


def _sealed_and_signed(
    author_key: DeviceKey, entry: Entry, epoch_key: bytes, payload: Payload, rng: Rng
) -> SignedEntry:
    sealed = replace(entry, sealed=seal_payload(entry, epoch_key, payload, rng))
    return sign_entry(author_key, sealed)
