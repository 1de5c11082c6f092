"""Device and album IDs: Syncthing's published vectors, round trips, and typo detection.

The literal vectors come from syncthing/syncthing lib/protocol/deviceid_test.go (formatCases,
validateCases, TestShortIDString) and lib/protocol/luhn_test.go (TestLuhn32, TestGenerate,
TestValidate, TestInvalidString).
"""

import base64
import contextlib
import hashlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import DecodeError, LocalProtocolError
from protocol.ids import (
    BASE32_ALPHABET,
    MAX_ID_TEXT,
    AlbumId,
    DeviceId,
    luhn32,
)

# deviceid_test.go: `formatted` and every entry of `formatCases` parse to it.
FORMATTED = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"
FORMAT_CASES = [
    "P56IOI-7MZJNU-2IQGDR-EYDM2M-GTMGL3-BXNPQ6-W5BTBB-Z4TJXZ-WICQ",
    "P56IOI-7MZJNU2Y-IQGDR-EYDM2M-GTI-MGL3-BXNPQ6-W5BM-TBB-Z4TJXZ-WICQ2",
    "P56IOI7 MZJNU2I QGDREYD M2MGTMGL 3BXNPQ6W 5BTB BZ4T JXZWICQ",
    "P56IOI7 MZJNU2Y IQGDREY DM2MGTI MGL3BXN PQ6W5BM TBBZ4TJ XZWICQ2",
    "P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ",
    "p56ioi7mzjnu2iqgdreydm2mgtmgl3bxnpq6w5btbbz4tjxzwicq",
    "P56IOI7MZJNU2YIQGDREYDM2MGTIMGL3BXNPQ6W5BMTBBZ4TJXZWICQ2",
    "P561017MZJNU2YIQGDREYDM2MGTIMGL3BXNPQ6W5BMT88Z4TJXZWICQ2",
    "p56ioi7mzjnu2yiqgdreydm2mgtimgl3bxnpq6w5bmtbbz4tjxzwicq2",
    "p561017mzjnu2yiqgdreydm2mgtimgl3bxnpq6w5bmt88z4tjxzwicq2",
]
# deviceid_test.go `validateCases`, minus {"", true}: Syncthing reads "" as its all-zero
# "no device" ID; we refuse it (tested below) because a person who pasted nothing made a mistake.
VALIDATE_CASES = [
    ("a", False),
    ("P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2", True),
    ("P56IOI7-MZJNU2-IQGDREY-DM2MGT-MGL3BXN-PQ6W5B-TBBZ4TJ-XZWICQ", True),
    ("P56IOI7 MZJNU2I QGDREYD M2MGTMGL 3BXNPQ6W 5BTB BZ4T JXZWICQ", True),
    ("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ", True),
    ("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQCCCC", False),
    ("p56ioi7mzjnu2iqgdreydm2mgtmgl3bxnpq6w5btbbz4tjxzwicq", True),
    ("p56ioi7mzjnu2iqgdreydm2mgtmgl3bxnpq6w5btbbz4tjxzwicqCCCC", False),
]
# The 32 bytes behind FORMATTED (base32 of the legacy form), and Syncthing's TestMarshallingDeviceID
# bytes; the latter's printed form is computed independently in _reference_format below.
FORMATTED_RAW = base64.b32decode("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ====")
MARSHALLING_RAW = bytes([*range(1, 20), 10, *range(21, 33)])

raw_ids = st.binary(min_size=32, max_size=32)
FAST = settings(max_examples=300, deadline=None)
A2 = settings(max_examples=5000, deadline=None)  # TESTPLAN A2: 5k examples per decoder in PR


def _reference_format(raw: bytes) -> str:
    """An independent, textbook-style re-derivation of Syncthing's printed form (test oracle)."""
    plain = base64.b32encode(raw).decode().rstrip("=")
    out = ""
    for g in range(4):
        group = plain[13 * g : 13 * g + 13]
        total = 0
        for i, ch in enumerate(group):
            v = BASE32_ALPHABET.index(ch) * (2 if i % 2 else 1)
            total += sum(divmod(v, 32))
        out += group + BASE32_ALPHABET[-total % 32]
    return "-".join(out[i : i + 7] for i in range(0, 56, 7))


# --- Syncthing's vectors -------------------------------------------------------------------


@pytest.mark.parametrize("text", FORMAT_CASES)
def test_syncthing_format_cases_parse_to_the_formatted_id(text: str) -> None:
    device = DeviceId.parse(text)
    assert str(device) == FORMATTED
    assert device.raw == FORMATTED_RAW


@pytest.mark.parametrize(("text", "ok"), VALIDATE_CASES)
def test_syncthing_validate_cases(text: str, ok: bool) -> None:
    if ok:
        assert str(DeviceId.parse(text)) == FORMATTED
    else:
        with pytest.raises(DecodeError):
            DeviceId.parse(text)


def test_syncthing_short_id_is_the_first_block() -> None:
    # TestShortIDString: the short ID is base32 of the first 8 bytes, cut to 7 characters.
    device = DeviceId.parse(FORMATTED)
    assert device.short == "P56IOI7"
    assert device.short == base64.b32encode(device.raw[:8]).decode()[:7]


def test_syncthing_marshalling_round_trip() -> None:
    device = DeviceId(MARSHALLING_RAW)
    text = str(device)
    assert text == _reference_format(MARSHALLING_RAW)
    assert DeviceId.parse(text) == device
    assert DeviceId.parse(str(DeviceId.parse(text))) == device


def test_syncthing_luhn32_vectors() -> None:
    # luhn_test.go TestLuhn32, TestGenerate (base 6 and base 10) and TestValidate.
    assert luhn32("AB725E4GHIQPL3ZFGT") == "G"
    assert luhn32("abcdef", alphabet="abcdef") == "e"
    assert luhn32("7992739871", alphabet="0123456789") == "3"
    assert luhn32("abcdef", alphabet="abcdef") != "d"


def test_syncthing_luhn32_refuses_characters_outside_the_alphabet() -> None:
    # TestLuhn32's "3734EJEKMRHWPZQTWYQ1" and TestInvalidString: a caller bug, said as such.
    with pytest.raises(LocalProtocolError, match="'1'"):
        luhn32("3734EJEKMRHWPZQTWYQ1")
    with pytest.raises(LocalProtocolError):
        luhn32("7992739871", alphabet="ABC")


# --- our own contract ----------------------------------------------------------------------


def test_printed_form_shape() -> None:
    text = str(DeviceId(MARSHALLING_RAW))
    blocks = text.split("-")
    assert [len(b) for b in blocks] == [7] * 8
    assert set(text.replace("-", "")) <= set(BASE32_ALPHABET)
    assert repr(DeviceId(MARSHALLING_RAW)) == f"DeviceId({text!r})"


def test_device_id_from_certificate_is_sha256() -> None:
    der = b"\x30\x03\x02\x01\x01"
    assert DeviceId.from_certificate(der).raw == hashlib.sha256(der).digest()


def test_raw_must_be_32_bytes() -> None:
    for size in (0, 31, 33):
        with pytest.raises(DecodeError, match=f"not {size}"):
            DeviceId(bytes(size))
        with pytest.raises(DecodeError, match=f"not {size}"):
            AlbumId(bytes(size))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  - -  ", "empty"),
        (FORMATTED[:-1], "56 letters and digits.*has 55"),
        (FORMATTED + "A", "has 57"),
        (FORMATTED.replace("P56", "P5!"), r"'!' at character 3"),
        (FORMATTED.replace("P56", "P59"), r"'9' at character 3"),
        (FORMATTED.replace("DM2MGTI", "DM2MGTJ"), "group 2 of 4 .blocks 3 and 4."),
        (FORMATTED.replace("TBBZ4TJ", "TBBZ5TJ"), "group 4 of 4 .blocks 7 and 8."),
        ("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICR", "cannot end in 'R'"),
        ("P56\u0131OI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ", "only the letters"),
        ("x" * (MAX_ID_TEXT + 1), "201 characters long"),
    ],
)
def test_bad_device_ids_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        DeviceId.parse(text)


def test_parse_tolerates_pasting_noise() -> None:
    pasted = f"  {FORMATTED.lower()}\n"
    assert str(DeviceId.parse(pasted)) == FORMATTED
    assert str(DeviceId.parse(FORMATTED.replace("-", " "))) == FORMATTED


@FAST
@given(raw_ids)
def test_device_id_round_trips(raw: bytes) -> None:
    device = DeviceId(raw)
    text = str(device)
    assert text == _reference_format(raw)
    assert DeviceId.parse(text) == device
    assert DeviceId.parse(text.lower().replace("-", "")) == device
    # The legacy form: the same ID without its 4 check characters.
    plain = "".join(c for i, c in enumerate(text.replace("-", "")) if i % 14 != 13)
    assert DeviceId.parse(plain) == device


@A2
@given(st.text(max_size=MAX_ID_TEXT + 20))
def test_A2_random_text_raises_only_decode_error(text: str) -> None:
    with contextlib.suppress(DecodeError):
        DeviceId.parse(text)
    with contextlib.suppress(DecodeError):
        AlbumId.parse(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "- =", min_size=50, max_size=70))
def test_A2_id_like_text_is_refused_or_canonical(text: str) -> None:
    try:
        device = DeviceId.parse(text)
    except DecodeError:
        return
    assert DeviceId.parse(str(device)) == device


_NORMALISED = {"0": "O", "1": "I", "8": "B", " ": "-"}
_SUBSTITUTES = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_ .=/"


@settings(max_examples=10, deadline=None)
@given(raw_ids)
def test_every_single_character_substitution_is_caught(raw: bytes) -> None:
    # Luhn32 doubling is a bijection mod 32, so each substitution between base32 characters
    # changes its group's sum. Substitutions that are not caught are exactly those normalisation
    # maps back to the same character (case, 0->O, 1->I, 8->B, space for dash): those parse to the
    # same ID. Other separators change the length and are refused. None yields another ID.
    device = DeviceId(raw)
    text = str(device)
    for position, original in enumerate(text):
        for new in _SUBSTITUTES:
            if new == original:
                continue
            typed = text[:position] + new + text[position + 1 :]
            same = _NORMALISED.get(new.upper(), new.upper()) == original
            if same:
                assert DeviceId.parse(typed) == device
            else:
                with pytest.raises(DecodeError):
                    DeviceId.parse(typed)


def test_adjacent_transpositions_caught_except_a_and_7() -> None:
    # What luhn32 does NOT guarantee: swapping neighbours x, y in a group goes unseen when
    # f(x) - x == f(y) - y (mod 32) with f the doubled digit sum; in base 32 that holds only for
    # the pair A (0) and 7 (31). All other adjacent swaps within a group are caught.
    undetected = set()
    for i, x in enumerate(BASE32_ALPHABET):
        for y in BASE32_ALPHABET[i + 1 :]:
            for start in (0, 1):
                group = "B" * start + x + y + "C" * (11 - start)
                swapped = "B" * start + y + x + "C" * (11 - start)
                if luhn32(group) == luhn32(swapped):
                    undetected.add(x + y)
    assert undetected == {"A7"}


# --- album IDs ------------------------------------------------------------------------------


@FAST
@given(raw_ids)
def test_album_id_round_trips(raw: bytes) -> None:
    album = AlbumId(raw)
    text = str(album)
    assert len(text) == 52
    assert text == base64.b32encode(raw).decode().rstrip("=").lower()
    assert AlbumId.parse(text) == album
    assert AlbumId.parse(text.upper()) == album


def test_album_id_from_genesis_is_sha256() -> None:
    assert AlbumId.from_genesis(b"genesis").raw == hashlib.sha256(b"genesis").digest()
    assert str(AlbumId(bytes(32))) == "a" * 52


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "52 characters, not 0"),
        ("a" * 51, "not 51"),
        ("a" * 53, "not 53"),
        ("a" * 51 + "b", "cannot end in 'B'"),
        ("a" * 51 + "1", "'1' at character 52"),
        ("a" * 26 + "-" + "a" * 25, "'-' at character 27"),
        ("\u0131" + "a" * 51, "only the letters"),
        ("a" * 500, "not 500"),
    ],
)
def test_bad_album_ids_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        AlbumId.parse(text)
