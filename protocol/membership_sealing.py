"""The membership log's confidential fields: album name, cover, invite message and device names.

The log is stored and relayed by parties that must not read it (a blind replica, a relay, the
network), yet every one of them verifies it. So what names people or things is sealed and what
verification needs (keys, certificates, roles, seqs, epochs, nonces, hashes, times) stays clear:

- The album name (genesis, rename) and the cover (cover) are encrypted with XChaCha20-Poly1305
  under the key of the epoch the entry names (the genesis: epoch 0, which the owner holds and every
  invite seals to its invitee). The associated data is the entry's header (protocol/
  membership_entries.py `associated_data`: kind, seq, epoch, at, album or owner, prev), so a
  ciphertext moved into another entry or album does not open. Wire form: 24-byte nonce from `rng`,
  then ciphertext and 16-byte tag.
- The invite message is sealed (crypto_box_seal) to the invitee, and a second copy to the owner
  (its UI lists pending invites with their message); members never read it. A sealed box has no
  associated data, so its plaintext starts with the album ID and the invite's nonce, checked when
  it is opened.
- A member's device name travels in its accept statement (protocol/statements.py), sealed like the
  album name under the key of the epoch its invite reached, so every reader of the album (and no
  one else) learns who the member is without ever connecting to it. The member signs the statement,
  so the name is its own claim about itself, as in its handshake. The associated data binds the
  album, the member and the invite (`device_name_binding`): a name does not open in another album,
  for another member or for another membership of the same device.

Plaintexts are padded (0x80, then zeros) to a multiple of PAD_BLOCK bytes, the cover to one fixed
size, so a ciphertext's length tells a range of lengths, not a length. A name or message that opens
but breaks the plaintext rules (empty name, control characters, too long, bad padding) is
VerificationError(MALFORMED); one that does not open with the key is DECRYPT_FAILED. The
`check_sealed_*` functions bound the ciphertext sizes a keyless verifier sees (DecodeError).
"""

from __future__ import annotations

import re
import unicodedata

import nacl.bindings as sodium
import nacl.exceptions

from protocol.epochs import EPOCH_KEY_SIZE
from protocol.errors import DecodeError, LocalProtocolError, Reason, VerificationError
from protocol.keys import SEAL_OVERHEAD, DeviceKey, Rng, seal

MAX_NAME_CHARS = 200
MAX_MESSAGE_CHARS = 1000
MAX_COVER_BYTES = 64
# The handshake's limit (protocol.messages.MAX_DEVICE_NAME_CHARS, which imports this package's
# statements and so cannot be imported here; a test checks they agree).
MAX_DEVICE_NAME_CHARS = 64
ALBUM_ID_SIZE = 32
INVITE_HASH_SIZE = 32
DEVICE_KEY_SIZE = 32
INVITE_NONCE_SIZE = 16
NONCE_SIZE = 24
TAG_SIZE = 16
PAD_BLOCK = 32
COVER_PADDED_SIZE = 80  # every cover, even none, pads to this (> MAX_COVER_BYTES)
_AEAD_OVERHEAD = NONCE_SIZE + TAG_SIZE
_MESSAGE_BINDING_SIZE = ALBUM_ID_SIZE + INVITE_NONCE_SIZE
_MESSAGE_OVERHEAD = SEAL_OVERHEAD + _MESSAGE_BINDING_SIZE
_UTF8_MAX = 4  # bytes per character


def _padded_size(size: int) -> int:
    """The padded length of `size` plaintext bytes: room for the 0x80 marker, whole blocks."""
    return (size // PAD_BLOCK + 1) * PAD_BLOCK


MIN_SEALED_NAME_BYTES = _AEAD_OVERHEAD + PAD_BLOCK
MAX_SEALED_NAME_BYTES = _AEAD_OVERHEAD + _padded_size(_UTF8_MAX * MAX_NAME_CHARS)
SEALED_COVER_BYTES = _AEAD_OVERHEAD + COVER_PADDED_SIZE
MIN_SEALED_DEVICE_NAME_BYTES = _AEAD_OVERHEAD + PAD_BLOCK
MAX_SEALED_DEVICE_NAME_BYTES = _AEAD_OVERHEAD + _padded_size(_UTF8_MAX * MAX_DEVICE_NAME_CHARS)
MIN_MESSAGE_BOX_BYTES = _MESSAGE_OVERHEAD + PAD_BLOCK
MAX_MESSAGE_BOX_BYTES = _MESSAGE_OVERHEAD + _padded_size(_UTF8_MAX * MAX_MESSAGE_CHARS)

_NAME_AD = b"albumsync/v1/membership-name\0"
_COVER_AD = b"albumsync/v1/membership-cover\0"
_DEVICE_NAME_AD = b"albumsync/v1/device-name\0"
# Unicode category Cc: names and messages reach terminals (`albumsync status`) and logs.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_EXCEPT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def seal_name(name: str, *, key: bytes, associated_data: bytes, rng: Rng) -> bytes:
    """An album name, checked, padded and encrypted under an epoch key."""
    plaintext = _pad(check_name(name).encode("utf-8"), PAD_BLOCK)
    return _encrypt(plaintext, key, _NAME_AD + associated_data, rng)


def open_name(sealed: bytes, *, key: bytes, associated_data: bytes) -> str:
    """The album name in `sealed`; DECRYPT_FAILED for the wrong key or entry, MALFORMED if bad."""
    plaintext = _decrypt(sealed, key, _NAME_AD + associated_data, "album name")
    return check_name(_utf8(_unpad(plaintext, PAD_BLOCK, "album name"), "album name"))


def seal_cover(cover: bytes, *, key: bytes, associated_data: bytes, rng: Rng) -> bytes:
    """A cover reference (empty: no cover), padded to one size and encrypted under an epoch key."""
    plaintext = _pad(check_cover(cover), COVER_PADDED_SIZE)
    return _encrypt(plaintext, key, _COVER_AD + associated_data, rng)


def open_cover(sealed: bytes, *, key: bytes, associated_data: bytes) -> bytes:
    """The cover reference in `sealed` (b"" = none); DECRYPT_FAILED or MALFORMED as open_name."""
    plaintext = _decrypt(sealed, key, _COVER_AD + associated_data, "album cover")
    return check_cover(_unpad(plaintext, COVER_PADDED_SIZE, "album cover"))


def seal_message(message: str, *, recipient: bytes, album: bytes, nonce: bytes) -> bytes:
    """An invite message sealed to `recipient`, bound to the album and the invite's nonce."""
    if len(album) != ALBUM_ID_SIZE or len(nonce) != INVITE_NONCE_SIZE:
        raise LocalProtocolError("an invite message binds a 32-byte album ID and a 16-byte nonce")
    padded = _pad(check_message(message).encode("utf-8"), PAD_BLOCK)
    return seal(recipient, album + nonce + padded)


def open_message(box: bytes, *, device: DeviceKey, album: bytes, nonce: bytes) -> str:
    """The invite message in a box sealed to `device`; DECRYPT_FAILED if not ours or not this invite."""
    plaintext = device.open_sealed(box)
    if plaintext[:_MESSAGE_BINDING_SIZE] != album + nonce:
        raise VerificationError(
            Reason.DECRYPT_FAILED, "this invite message was sealed for another invite or album"
        )
    padded = plaintext[_MESSAGE_BINDING_SIZE:]
    return check_message(_utf8(_unpad(padded, PAD_BLOCK, "invite message"), "invite message"))


def device_name_binding(album: bytes, member: bytes, invite: bytes) -> bytes:
    """The associated data of a member's sealed device name: album ID, member key, invite hash."""
    sizes = (len(album), len(member), len(invite))
    if sizes != (ALBUM_ID_SIZE, DEVICE_KEY_SIZE, INVITE_HASH_SIZE):
        raise LocalProtocolError(
            "a device name binds a 32-byte album ID, a 32-byte device key and a 32-byte invite hash"
        )
    return album + member + invite


def seal_device_name(name: str, *, key: bytes, associated_data: bytes, rng: Rng) -> bytes:
    """A device name, in NFC, checked, padded and encrypted under an epoch key."""
    if not isinstance(name, str):
        raise LocalProtocolError("the device name must be text")
    plaintext = _pad(
        check_device_name(unicodedata.normalize("NFC", name)).encode("utf-8"), PAD_BLOCK
    )
    return _encrypt(plaintext, key, _DEVICE_NAME_AD + associated_data, rng)


def open_device_name(sealed: bytes, *, key: bytes, associated_data: bytes) -> str:
    """The device name in `sealed`; DECRYPT_FAILED for another key or binding, MALFORMED if bad."""
    plaintext = _decrypt(sealed, key, _DEVICE_NAME_AD + associated_data, "device name")
    return check_device_name(_utf8(_unpad(plaintext, PAD_BLOCK, "device name"), "device name"))


def check_device_name(name: str) -> str:
    """The name if it is a valid device name: 1-64 printable characters in NFC.

    Printable (str.isprintable) also excludes format characters, so bidi overrides and isolates
    cannot disguise a name, and line separators cannot break a log line.
    """
    what = "device name"
    _check_text(name, what, MAX_DEVICE_NAME_CHARS, allow_empty=False, control=_CONTROL)
    if not name.isprintable():
        bad = next(c for c in name if not c.isprintable())
        raise VerificationError(
            Reason.MALFORMED, f"the {what} contains the unprintable character U+{ord(bad):04X}"
        )
    if not unicodedata.is_normalized("NFC", name):
        raise VerificationError(Reason.MALFORMED, f"the {what} is not in Unicode NFC")
    return name


def check_name(name: str) -> str:
    """The name if it is a valid album name; VerificationError(MALFORMED) saying why not."""
    return _check_text(name, "album name", MAX_NAME_CHARS, allow_empty=False, control=_CONTROL)


def check_message(message: str) -> str:
    """The message if it is a valid invite message (may be empty, may hold newlines)."""
    return _check_text(
        message,
        "invite message",
        MAX_MESSAGE_CHARS,
        allow_empty=True,
        control=_CONTROL_EXCEPT_NEWLINE,
    )


def check_cover(cover: bytes) -> bytes:
    """The cover reference if it fits MAX_COVER_BYTES; VerificationError(MALFORMED) otherwise."""
    if len(cover) > MAX_COVER_BYTES:
        raise VerificationError(
            Reason.MALFORMED, f"a cover reference is at most {MAX_COVER_BYTES} bytes"
        )
    return bytes(cover)


def check_sealed_name(sealed: bytes, what: str) -> bytes:
    """A sealed album name of a size some valid name encrypts to; DecodeError otherwise."""
    return _check_size(sealed, _AEAD_OVERHEAD, MIN_SEALED_NAME_BYTES, MAX_SEALED_NAME_BYTES, what)


def check_sealed_device_name(sealed: bytes, what: str) -> bytes:
    """A sealed device name of a size some valid name encrypts to; DecodeError otherwise."""
    return _check_size(
        sealed, _AEAD_OVERHEAD, MIN_SEALED_DEVICE_NAME_BYTES, MAX_SEALED_DEVICE_NAME_BYTES, what
    )


def check_sealed_cover(sealed: bytes, what: str) -> bytes:
    """A sealed cover of the one size every cover encrypts to; DecodeError otherwise."""
    if len(sealed) != SEALED_COVER_BYTES:
        raise DecodeError(
            f"{what}: a sealed cover is {SEALED_COVER_BYTES} bytes, not {len(sealed)}"
        )
    return sealed


def check_message_box(box: bytes, what: str) -> bytes:
    """A sealed invite message of a size some valid message seals to; DecodeError otherwise."""
    return _check_size(box, _MESSAGE_OVERHEAD, MIN_MESSAGE_BOX_BYTES, MAX_MESSAGE_BOX_BYTES, what)


# ---------------------------------------------------------------------------------------------
# Private helpers


def _encrypt(plaintext: bytes, key: bytes, associated_data: bytes, rng: Rng) -> bytes:
    _check_key(key)
    nonce = rng(NONCE_SIZE)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"rng must return {NONCE_SIZE} bytes")
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, associated_data, nonce, key
    )
    return nonce + bytes(ciphertext)


def _decrypt(sealed: bytes, key: bytes, associated_data: bytes, what: str) -> bytes:
    _check_key(key)
    failed = VerificationError(
        Reason.DECRYPT_FAILED,
        f"the {what} does not open with its epoch's key (sealed under another key, or moved "
        "from another entry)",
    )
    if len(sealed) < _AEAD_OVERHEAD:
        raise failed
    nonce, ciphertext = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:]
    try:
        plaintext = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, associated_data, nonce, key
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise failed from None
    return bytes(plaintext)


def _check_key(key: bytes) -> None:
    if len(key) != EPOCH_KEY_SIZE:
        raise LocalProtocolError(f"an epoch key is {EPOCH_KEY_SIZE} bytes, not {len(key)}")


def _pad(data: bytes, block: int) -> bytes:
    marked = data + b"\x80"
    return marked + bytes(-len(marked) % block)


def _unpad(padded: bytes, block: int, what: str) -> bytes:
    """The data `_pad` padded; MALFORMED unless `padded` is exactly what `_pad` makes of it."""
    data = padded.rstrip(b"\0")[:-1]
    if not padded or _pad(data, block) != padded:
        raise VerificationError(Reason.MALFORMED, f"the {what} is not padded canonically")
    return data


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise VerificationError(Reason.MALFORMED, f"the {what} is not valid UTF-8") from None


def _check_text(
    text: str, what: str, max_chars: int, *, allow_empty: bool, control: re.Pattern[str]
) -> str:
    if not isinstance(text, str):
        raise LocalProtocolError(f"the {what} must be text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationError(Reason.MALFORMED, f"the {what} is not valid Unicode") from None
    if len(text) > max_chars:
        raise VerificationError(
            Reason.MALFORMED, f"the {what} is longer than {max_chars} characters"
        )
    if not allow_empty and not text.strip():
        raise VerificationError(Reason.MALFORMED, f"the {what} is empty")
    bad = control.search(text)
    if bad is not None:
        raise VerificationError(
            Reason.MALFORMED, f"the {what} contains control character U+{ord(bad.group()):04X}"
        )
    return text


def _check_size(value: bytes, overhead: int, lo: int, hi: int, what: str) -> bytes:
    size = len(value)
    if not lo <= size <= hi or (size - overhead) % PAD_BLOCK:
        raise DecodeError(
            f"{what}: {size} bytes is not the size of a sealed value "
            f"({lo} to {hi} bytes: {overhead} plus whole {PAD_BLOCK}-byte blocks)"
        )
    return value
