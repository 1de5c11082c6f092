"""Known answers and rejection paths of the canonical encoding (fuzzing lives in test_frames.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.encoding import Limits, Reader, decode, encode
from protocol.errors import DecodeError


def test_known_answers() -> None:
    assert encode(None) == b"\x02"
    assert encode(True) == b"\x01"
    assert encode(0) == b"\x03\x00"
    assert encode(300) == b"\x03\xac\x02"
    assert encode(-1) == b"\x04\x00"
    assert encode(b"ab") == b"\x05\x02ab"
    assert encode("é") == b"\x06\x02\xc3\xa9"
    assert encode([1, "a"]) == b"\x07\x02\x03\x01\x06\x01a"
    # keys are sorted by their UTF-8 bytes whatever the dict order
    assert (
        encode({"b": 1, "a": 2})
        == encode({"a": 2, "b": 1})
        == b"\x08\x02\x06\x01a\x03\x02\x06\x01b\x03\x01"
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "ends early"),
        (b"\x03\x80\x00", "minimally"),
        (b"\x03" + b"\xff" * 10 + b"\x01", "longer than 10"),
        (b"\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "64 bits"),
        (b"\x08\x02\x06\x01b\x03\x01\x06\x01a\x03\x02", "increasing"),
        (b"\x08\x02\x06\x01a\x03\x01\x06\x01a\x03\x02", "increasing"),
        (b"\x08\x01\x03\x01\x03\x01", "keys must be text"),
        (b"\x06\x01\xff", "UTF-8"),
        (b"\x06\x03\xed\xa0\x80", "UTF-8"),
        (b"\x07\xff\xff\x03", "count"),
        (b"\x05\x05ab", "ends early"),
        (b"\x03\x01\x00", "trailing"),
        (b"\x09", "unknown value tag"),
    ],
)
def test_rejects_non_canonical(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode(data)


def test_limits_checked_before_allocation() -> None:
    small = Limits(max_bytes=4, max_items=3, max_depth=2, max_text=3, max_total=64)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(encode(b"12345"), small)
    with pytest.raises(DecodeError, match="exceed the limit"):
        decode(encode([1, 2, 3, 4]), small)
    with pytest.raises(DecodeError, match="nests deeper"):
        decode(encode([[[[1]]]]), small)
    with pytest.raises(DecodeError, match="exceeds 64"):
        decode(encode(b"x" * 70), small)


def test_reader_refuses_unknown_missing_and_mistyped_fields() -> None:
    reader = Reader(decode(encode({"a": 1, "b": b"xx", "z": "t"})), "thing")
    assert reader.int("a", lo=0, hi=5) == 1
    with pytest.raises(DecodeError, match="'b' must be 3 bytes"):
        reader.bytes("b", size=3)
    with pytest.raises(DecodeError, match="'c' is missing"):
        reader.raw("c")
    with pytest.raises(DecodeError, match="unknown field"):
        reader.finish()
    with pytest.raises(DecodeError, match="null"):
        Reader({"n": None}, "thing").optional("n")
    with pytest.raises(DecodeError, match="must be an integer"):
        Reader({"t": True}, "thing").int("t")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip_is_canonical(value: object) -> None:
    data = encode(value)
    assert encode(decode(data)) == data
    assert decode(data) == value
