"""Shared fixtures for the manifest tests: devices, rights, payloads, deterministic randomness."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import replace

import nacl.bindings as sodium

from protocol.chunks import CHUNK_SIZE, ChunkRef
from protocol.encoding import decode, encode
from protocol.keys import DeviceKey
from protocol.manifest import (
    DOMAIN,
    Entry,
    Payload,
    SignedEntry,
    payload_associated_data,
    sign_entry,
)
from protocol.manifest_builders import make_add
from protocol.rights import Grant, Rights, Role

ALBUM = hashlib.sha256(b"album X").digest()
OTHER_ALBUM = hashlib.sha256(b"album Y").digest()
KEY0 = hashlib.sha256(b"epoch 0").digest()
KEY1 = hashlib.sha256(b"epoch 1").digest()
KEYS = {0: KEY0}

OWNER = DeviceKey(b"\x01" * 32)
EDITOR = DeviceKey(b"\x02" * 32)
EDITOR2 = DeviceKey(b"\x03" * 32)
VIEWER = DeviceKey(b"\x04" * 32)
STRANGER = DeviceKey(b"\x05" * 32)

RIGHTS = Rights(
    owner=OWNER.public,
    grants={
        EDITOR.public: (Grant(0, Role.EDITOR),),
        EDITOR2.public: (Grant(0, Role.EDITOR),),
        VIEWER.public: (Grant(0, Role.VIEWER),),
    },
)


def counter_rng(label: bytes = b"rng") -> Callable[[int], bytes]:
    """Deterministic randomness: a fresh stream of SHA-256 blocks per call site."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(label + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


def payload(name: str, size: int = 1000, *, mark: bytes = b"") -> Payload:
    """A valid payload for a file of `size` bytes (chunk IDs made up)."""
    count = -(-size // CHUNK_SIZE)
    chunks = tuple(
        ChunkRef(
            hashlib.sha256(mark + name.encode() + i.to_bytes(8, "big")).digest(),
            CHUNK_SIZE if i < count - 1 else size - CHUNK_SIZE * (count - 1),
        )
        for i in range(count)
    )
    return Payload(
        name=name,
        size=size,
        mtime_ns=1_700_000_000_000_000_000,
        content_hash=hashlib.sha256(mark + name.encode()).digest(),
        file_key=hashlib.sha256(b"key" + mark + name.encode()).digest(),
        chunks=chunks,
    )


def editor_add(
    seq: int, prev: bytes | None, name: str = "a.jpg", *, rng: Callable[[int], bytes] | None = None
) -> SignedEntry:
    """EDITOR's add of `name` at `seq` under epoch 0."""
    return make_add(
        EDITOR,
        ALBUM,
        seq=seq,
        prev=prev,
        epoch=0,
        epoch_key=KEY0,
        payload=payload(name),
        rng=rng or counter_rng(),
    )


def seal_raw(author: DeviceKey, entry: Entry, key: bytes, raw: bytes) -> SignedEntry:
    """Sign `entry` with arbitrary plaintext sealed as its payload (bypassing the builders' checks)."""
    nonce = b"\x07" * 24
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        raw, payload_associated_data(entry), nonce, key
    )
    return sign_entry(author, replace(entry, sealed=nonce + bytes(ct)))


def resign(signer: DeviceKey, envelope: bytes, **changes: object) -> bytes:
    """The envelope's entry with fields replaced (raw wire names), signed by `signer`."""
    outer = decode(envelope)
    assert isinstance(outer, dict)
    raw = outer["entry"]
    assert isinstance(raw, bytes)
    fields = decode(raw)
    assert isinstance(fields, dict)
    fields.update(changes)  # type: ignore[arg-type]
    new_raw = encode(fields)
    return encode({"entry": new_raw, "sig": signer.sign(DOMAIN, new_raw)})
