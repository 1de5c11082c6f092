"""Membership statements: signed by the member, bound to album and invite, one encoding."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import introduction, messages
from protocol.encoding import decode, encode
from protocol.errors import (
    DecodeError,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    VerificationError,
)
from protocol.membership_entries import MAX_ENTRY_BYTES, Record, decode_entry
from protocol.membership_sealing import (
    MAX_DEVICE_NAME_CHARS,
    MAX_SEALED_DEVICE_NAME_BYTES,
    MIN_SEALED_DEVICE_NAME_BYTES,
    PAD_BLOCK,
)
from protocol.statements import (
    MAX_SEQ,
    MAX_STATEMENT_BYTES,
    Statement,
    StatementKind,
    decode_statement,
    sign_statement,
)
from tests.protocol.membership_helpers import EDITOR, OWNER, Album, inner_fields, next_entry

ACCEPT = Statement(
    album=b"a" * 32,
    kind=StatementKind.ACCEPT,
    member=EDITOR.public,
    invite=b"i" * 32,
    nonce=b"n" * 16,
    at=5,
)
LEAVE = Statement(
    album=b"a" * 32,
    kind=StatementKind.LEAVE,
    member=EDITOR.public,
    invite=b"i" * 32,
    epoch=3,
    last_seq=41,
    at=6,
)
NAMED = Statement(**{**ACCEPT.__dict__, "sealed_name": os.urandom(MIN_SEALED_DEVICE_NAME_BYTES)})
# ACCEPT's envelope as the code before device names signed it (Ed25519 signs deterministically).
OLD_ACCEPT = bytes.fromhex(
    "0802060373696705408029f6d0e870ce46b7be3ff6ac5cc07a1e0da04fe92a6922e709207a558a2a59d432ff"
    "24c08f6451afddda0c5e07978da4b4413e87f1dbe1775552dfc3fca507060973746174656d656e7405ac0108"
    "060605616c62756d05206161616161616161616161616161616161616161616161616161616161616161060261"
    "7403050606696e76697465052069696969696969696969696969696969696969696969696969696969696969"
    "6906046b696e64060661636365707406066d656d62657205208139770ea87d175f56a35466c34c7ecccb8d8a"
    "91b4ee37a25df60f5b8fc9b39406056e6f6e636505106e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e"
)


@pytest.mark.parametrize(
    "statement",
    [ACCEPT, NAMED, LEAVE, Statement(**{**ACCEPT.__dict__, "kind": StatementKind.DECLINE})],
)
def test_statements_round_trip(statement: Statement) -> None:
    envelope = sign_statement(EDITOR, statement)
    signed = decode_statement(envelope)
    assert signed.statement == statement
    assert signed.hash == hashlib.sha256(envelope).digest()
    assert encode(decode(envelope)) == envelope


def test_a_statement_is_signed_by_its_member_only() -> None:
    with pytest.raises(LocalProtocolError):
        sign_statement(OWNER, ACCEPT)
    outer = decode(sign_statement(EDITOR, ACCEPT))
    assert isinstance(outer, dict)
    raw = outer["statement"]
    assert isinstance(raw, bytes)
    for forged in (
        encode({"statement": raw, "sig": OWNER.sign(b"statement", raw)}),
        # The member's signature made for another domain (a manifest entry, say) does not count.
        encode({"statement": raw, "sig": EDITOR.sign(b"membership", raw)}),
    ):
        with pytest.raises(VerificationError) as err:
            decode_statement(forged)
        assert err.value.reason is Reason.BAD_SIGNATURE


def test_fields_belong_to_their_kind() -> None:
    with pytest.raises(LocalProtocolError):
        sign_statement(EDITOR, Statement(**{**LEAVE.__dict__, "nonce": b"n" * 16}))
    with pytest.raises(LocalProtocolError):
        sign_statement(EDITOR, Statement(**{**ACCEPT.__dict__, "last_seq": 1}))
    fields = inner_fields(sign_statement(EDITOR, LEAVE), "statement")
    for change in ({"nonce": b"n" * 16}, {"kind": "join"}, {"epoch": 10_000}, {"invite": b"i"}):
        raw = encode({**fields, **change})
        with pytest.raises(DecodeError):
            decode_statement(encode({"statement": raw, "sig": EDITOR.sign(b"statement", raw)}))


def _signed_raw(fields: dict[str, object]) -> bytes:
    raw = encode(fields)
    return encode({"statement": raw, "sig": EDITOR.sign(b"statement", raw)})


def test_an_accept_without_a_name_keeps_the_bytes_it_had_before_names() -> None:
    assert sign_statement(EDITOR, ACCEPT) == OLD_ACCEPT
    signed = decode_statement(OLD_ACCEPT)
    assert signed.statement == ACCEPT
    assert signed.statement.sealed_name == b""
    assert "sealed_name" not in inner_fields(OLD_ACCEPT, "statement")
    assert "sealed_name" in inner_fields(sign_statement(EDITOR, NAMED), "statement")


def test_only_an_accept_carries_a_sealed_name() -> None:
    sealed = NAMED.sealed_name
    for other in (LEAVE, Statement(**{**ACCEPT.__dict__, "kind": StatementKind.DECLINE})):
        with pytest.raises(LocalProtocolError, match="only an accept"):
            sign_statement(EDITOR, Statement(**{**other.__dict__, "sealed_name": sealed}))
        fields = inner_fields(sign_statement(EDITOR, other), "statement")
        with pytest.raises(DecodeError, match="unknown field"):
            decode_statement(_signed_raw({**fields, "sealed_name": sealed}))


@pytest.mark.parametrize(
    ("size", "why"),
    [
        (0, "0 bytes is not the size"),  # present but empty: omit it instead (one encoding)
        (MIN_SEALED_DEVICE_NAME_BYTES - PAD_BLOCK, "is not the size"),
        (MIN_SEALED_DEVICE_NAME_BYTES + 1, "is not the size"),
        (MAX_SEALED_DEVICE_NAME_BYTES + PAD_BLOCK, "longer than"),
    ],
)
def test_a_sealed_name_of_no_possible_size_is_refused(size: int, why: str) -> None:
    fields = inner_fields(sign_statement(EDITOR, ACCEPT), "statement")
    with pytest.raises(DecodeError, match=why):
        decode_statement(_signed_raw({**fields, "sealed_name": bytes(size)}))
    with pytest.raises(DecodeError, match="must be bytes"):
        decode_statement(_signed_raw({**fields, "sealed_name": "Ana's phone"}))
    if size:
        with pytest.raises(LocalProtocolError):
            sign_statement(EDITOR, Statement(**{**ACCEPT.__dict__, "sealed_name": bytes(size)}))


def test_the_largest_accept_fits_a_statement_and_its_record_an_entry() -> None:
    assert MAX_DEVICE_NAME_CHARS == messages.MAX_DEVICE_NAME_CHARS == introduction.MAX_DEVICE_NAME
    largest = Statement(
        **{**ACCEPT.__dict__, "at": MAX_SEQ, "sealed_name": bytes(MAX_SEALED_DEVICE_NAME_BYTES)}
    )
    envelope = sign_statement(EDITOR, largest)
    assert len(envelope) <= MAX_STATEMENT_BYTES
    # The bound has room to spare, so the decoder's limits never cut a valid accept.
    assert len(envelope) < MAX_STATEMENT_BYTES - 256
    album = Album()
    template = album.invite(EDITOR)
    record = next_entry(
        album.state, template, OWNER, body=Record(statement=decode_statement(envelope))
    )
    signed = decode_entry(record)
    assert len(signed.raw) <= MAX_ENTRY_BYTES
    assert isinstance(signed.entry.body, Record)
    assert signed.entry.body.statement.statement == largest


_FIELD_VALUES = st.one_of(
    st.binary(max_size=MAX_SEALED_DEVICE_NAME_BYTES + 40),
    st.integers(min_value=-1, max_value=2**64),
    st.text(max_size=20),
    st.sampled_from(["accept", "decline", "leave"]),
    st.none(),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(
            ["album", "kind", "member", "invite", "at", "nonce", "epoch", "last_seq", "sealed_name"]
        ),
        _FIELD_VALUES,
        max_size=4,
    ),
    drop=st.sets(st.sampled_from(["album", "kind", "nonce", "sealed_name"]), max_size=2),
    signed_by_member=st.booleans(),
)
def test_A2_statement_decoding_raises_only_protocol_errors(
    changes: dict[str, object], drop: set[str], signed_by_member: bool
) -> None:
    fields: dict[str, object] = {**inner_fields(sign_statement(EDITOR, NAMED), "statement")}
    fields.update(changes)
    for key in drop:
        fields.pop(key, None)
    try:
        raw = encode(fields)
    except LocalProtocolError:
        return  # not encodable at all (None, a bool where no value can be): nothing to decode
    signer = EDITOR if signed_by_member else OWNER
    envelope = encode({"statement": raw, "sig": signer.sign(b"statement", raw)})
    try:
        signed = decode_statement(envelope)
    except (RemoteProtocolError, VerificationError):
        return
    # What decodes re-encodes to the same bytes: one statement, one encoding.
    assert sign_statement(EDITOR, signed.statement) == envelope
