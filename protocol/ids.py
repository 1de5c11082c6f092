"""Device and album identifiers, and the text forms people read, paste and compare.

A device ID is SHA-256 of the device's certificate DER, printed exactly as Syncthing prints its
device IDs, so the same ID works with Syncthing's relay and discovery servers. Printed form:
RFC 4648 base32 of the 32 bytes without padding (52 characters), cut into 4 groups of 13, each
followed by one check character (56), shown as 8 blocks of 7 joined by "-".

The check character is Syncthing's "luhn32", which is not textbook Luhn mod N: factors alternate
1, 2, 1, 2... from the left, and each product adds its two base-32 digits. Doubling is a bijection
modulo 32 (even code points below 16, odd ones above), so any single substitution of one base32
character by another changes the group's sum and is always caught.

Parsing is as lenient as Syncthing's (case, "-", spaces, the typo fixes 0->O, 1->I, 8->B, the
legacy 52-character form without check characters) and stricter in three ways: the empty string
(Syncthing's "no device") is refused; non-ASCII text is refused before upper-casing, so the dotless
i (U+0131) or long s (U+017F) cannot pass for I or S; and the last base32 character must have its
4 unused bits at zero, so one ID has one text.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from protocol.errors import DecodeError, LocalProtocolError

ID_SIZE = 32
BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_ID_TEXT = 200  # longest pasted text we look at; a spaced-out device ID is about 70
DEVICE_ID_LENGTH = 56  # base32 characters with check characters, as printed
LEGACY_DEVICE_ID_LENGTH = 52  # base32 characters without check characters (Syncthing < 0.9)
ALBUM_ID_LENGTH = 52
BLOCK = 7
SHORT_ID_LENGTH = BLOCK

_GROUP = 13  # base32 characters covered by one check character
_GROUPS = 4
_TYPO_FIXES = str.maketrans({"0": "O", "1": "I", "8": "B"})
_SEPARATORS = str.maketrans({"-": None, " ": None, "\t": None, "\r": None, "\n": None})
_CODEPOINT = {ch: i for i, ch in enumerate(BASE32_ALPHABET)}


@dataclass(frozen=True, order=True)
class DeviceId:
    """A device's identity: SHA-256 of its certificate DER, printed Syncthing-style."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_raw("device ID", self.raw)

    @classmethod
    def from_certificate(cls, der: bytes) -> DeviceId:
        """The ID named by a certificate; does not check the certificate (see certificate.py)."""
        return cls(hashlib.sha256(der).digest())

    @classmethod
    def parse(cls, text: str) -> DeviceId:
        """Read a device ID a person typed or pasted; DecodeError says what is wrong with it."""
        chars = _normalise(text).translate(_TYPO_FIXES)
        _check_alphabet(chars, "device ID")
        if len(chars) == DEVICE_ID_LENGTH:
            chars = _strip_check_characters(chars)
        elif len(chars) != LEGACY_DEVICE_ID_LENGTH:
            raise DecodeError(
                f"a device ID has {DEVICE_ID_LENGTH} letters and digits (not counting dashes), "
                f"but this has {len(chars)}: check that all of it was copied"
            )
        return cls(_decode_base32(chars, "device ID"))

    @property
    def short(self) -> str:
        """The first block of the printed ID, for display where space is short."""
        return str(self)[:SHORT_ID_LENGTH]

    def __str__(self) -> str:
        plain = _encode_base32(self.raw)
        groups = [plain[i : i + _GROUP] for i in range(0, len(plain), _GROUP)]
        checked = "".join(group + luhn32(group) for group in groups)
        return "-".join(checked[i : i + BLOCK] for i in range(0, len(checked), BLOCK))

    def __repr__(self) -> str:
        return f"DeviceId({str(self)!r})"


@dataclass(frozen=True, order=True)
class AlbumId:
    """An album's identity: SHA-256 of its genesis entry, printed as lowercase base32."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_raw("album ID", self.raw)

    @classmethod
    def from_genesis(cls, genesis: bytes) -> AlbumId:
        """The ID of the album whose genesis entry has the encoded bytes `genesis`."""
        return cls(hashlib.sha256(genesis).digest())

    @classmethod
    def parse(cls, text: str) -> AlbumId:
        """Read an album ID (any case, surrounding whitespace ignored); DecodeError if malformed."""
        if len(text) > MAX_ID_TEXT:
            raise DecodeError(f"an album ID has {ALBUM_ID_LENGTH} characters, not {len(text)}")
        chars = text.strip()
        if not chars.isascii():
            raise DecodeError("an album ID contains only the letters a-z and digits 2-7")
        chars = chars.upper()
        _check_alphabet(chars, "album ID")
        if len(chars) != ALBUM_ID_LENGTH:
            raise DecodeError(f"an album ID has {ALBUM_ID_LENGTH} characters, not {len(chars)}")
        return cls(_decode_base32(chars, "album ID"))

    def __str__(self) -> str:
        return _encode_base32(self.raw).lower()

    def __repr__(self) -> str:
        return f"AlbumId({str(self)!r})"


def luhn32(text: str, alphabet: str = BASE32_ALPHABET) -> str:
    """Syncthing's check character for `text`, whose characters must all be in `alphabet`."""
    base = len(alphabet)
    total = 0
    for index, char in enumerate(text):
        codepoint = alphabet.find(char)
        if codepoint < 0:
            raise LocalProtocolError(f"{char!r} is not in the check character's alphabet")
        addend = (1 + index % 2) * codepoint
        total += addend // base + addend % base
    return alphabet[(base - total % base) % base]


def _check_raw(what: str, raw: bytes) -> None:
    if not isinstance(raw, bytes) or len(raw) != ID_SIZE:
        size = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise DecodeError(f"a raw {what} is {ID_SIZE} bytes, not {size}")


def _normalise(text: str) -> str:
    """Upper-case `text` and drop separators, refusing text too long or not ASCII to be an ID."""
    if len(text) > MAX_ID_TEXT:
        raise DecodeError(
            f"this device ID is {len(text)} characters long, but a device ID has "
            f"{DEVICE_ID_LENGTH} letters and digits: check that only the ID was copied"
        )
    if not text.isascii():
        raise DecodeError("a device ID contains only the letters A-Z, digits, dashes and spaces")
    chars = text.translate(_SEPARATORS).strip("=").upper()
    if not chars:
        raise DecodeError("the device ID is empty: paste the whole ID")
    return chars


def _check_alphabet(chars: str, what: str) -> None:
    for position, char in enumerate(chars, start=1):
        if char not in _CODEPOINT:
            raise DecodeError(
                f"the {what} contains {char!r} at character {position}, but IDs use only the "
                "letters A-Z and the digits 2-7"
            )


def _strip_check_characters(chars: str) -> str:
    """The 52 base32 characters of a 56-character device ID whose check characters all match."""
    plain = []
    for number in range(_GROUPS):
        start = number * (_GROUP + 1)
        group, check = chars[start : start + _GROUP], chars[start + _GROUP]
        if luhn32(group) != check:
            first_block = 2 * number + 1
            raise DecodeError(
                f"device ID has a wrong check character in group {number + 1} of {_GROUPS} "
                f"(blocks {first_block} and {first_block + 1}): check those for a typo"
            )
        plain.append(group)
    return "".join(plain)


def _encode_base32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def _decode_base32(chars: str, what: str) -> bytes:
    """32 bytes from 52 valid base32 characters whose 4 trailing padding bits are zero."""
    if _CODEPOINT[chars[-1]] & 0b1111:
        raise DecodeError(
            f"this {what} cannot end in {chars[-1]!r}: no ID does; check the last characters"
        )
    return base64.b32decode(chars + "====")
