"""Membership statements: signed by the member, bound to album and invite, one encoding."""

from __future__ import annotations

import hashlib

import pytest

from protocol.encoding import decode, encode
from protocol.errors import DecodeError, LocalProtocolError, Reason, VerificationError
from protocol.statements import Statement, StatementKind, decode_statement, sign_statement
from tests.protocol.membership_helpers import EDITOR, OWNER, inner_fields

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


@pytest.mark.parametrize(
    "statement", [ACCEPT, LEAVE, Statement(**{**ACCEPT.__dict__, "kind": StatementKind.DECLINE})]
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
