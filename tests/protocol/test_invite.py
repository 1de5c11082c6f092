"""Invite codes: round trip, typo and truncation detection, expiry, validation, redeem proofs."""

from __future__ import annotations

import base64
import hashlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import encode
from protocol.errors import InviteCodeError, LocalProtocolError, Reason, VerificationError
from protocol.ids import DeviceId
from protocol.invite import (
    MAX_ADDRESSES,
    MAX_CODE_BYTES,
    MAX_EXPIRES_AT,
    MAX_RELAY_CHARS,
    MAX_RELAYS,
    PREFIX,
    InviteCode,
    encode_invite,
    new_invite_code,
    parse_invite,
    redeem_proof,
    verify_redeem_proof,
)
from protocol.rights import Role

RELAY_ID = str(DeviceId(bytes(range(32))))
RELAY = f"relay://relay.home.example:22067/?id={RELAY_ID}&pingInterval=1m0s&providedBy="
EXPIRES = 1_800_000_000  # 2027-01-15
NOW = EXPIRES - 3600


def _code(**changes: object) -> InviteCode:
    fields: dict[str, object] = {
        "album_id": b"\x01" * 32,
        "owner_id": b"\x02" * 32,
        "role": Role.EDITOR,
        "expires_at": EXPIRES,
        "addresses": [
            "tcp://192.168.1.10:22000",
            "tcp://[fe80::1%eth0]:22000",
            "tcp://nas.local:1",
        ],
        "relays": [RELAY],
        "rng": lambda n: bytes([n]) * n,
    }
    fields.update(changes)
    return new_invite_code(**fields)  # type: ignore[arg-type]


def test_round_trip_and_shape() -> None:
    code = _code()
    text = encode_invite(code)
    assert text.startswith(PREFIX)
    body = text[len(PREFIX) :]
    assert body == body.lower()
    assert "=" not in body
    assert parse_invite(text, NOW) == code
    assert code.invite_id == b"\x10" * 16  # from the given rng
    assert code.secret == b"\x10" * 16


def test_the_secret_stays_out_of_logs() -> None:
    draws = iter([b"I" * 16, b"S" * 16])
    code = _code(rng=lambda n: next(draws))
    assert code.secret == b"S" * 16
    assert "SSSS" not in repr(code)
    assert "SSSS" not in str(code)


def test_paste_is_tolerant_of_whitespace_line_breaks_and_case() -> None:
    text = encode_invite(_code())
    wrapped = "\n".join(text[i : i + 60] for i in range(0, len(text), 60))
    for pasted in (f"  {text}\n", wrapped, "\t" + wrapped.upper() + " \r\n", text.upper()):
        assert parse_invite(pasted, NOW) == _code()


_SIZE32 = st.binary(min_size=32, max_size=32)
_HOSTS = st.sampled_from(["example.org", "10.0.0.1", "[::1]", "a-b.local", "[2001:db8::7]"])
_ADDRESSES = st.builds(lambda h, p: f"tcp://{h}:{p}", _HOSTS, st.integers(1, 65535))
_RELAYS = st.builds(lambda h, p: f"relay://{h}:{p}/?id={RELAY_ID}", _HOSTS, st.integers(1, 65535))


@given(
    album=_SIZE32,
    owner=_SIZE32,
    random_bytes=st.binary(min_size=32, max_size=32),
    role=st.sampled_from([Role.VIEWER, Role.EDITOR]),
    expires=st.integers(1, MAX_EXPIRES_AT),
    addresses=st.lists(_ADDRESSES, max_size=MAX_ADDRESSES),
    relays=st.lists(_RELAYS, max_size=MAX_RELAYS),
)
@settings(max_examples=150)
def test_round_trip_any_code(  # noqa: PLR0917 - hypothesis passes the drawn values
    album: bytes,
    owner: bytes,
    random_bytes: bytes,
    role: Role,
    expires: int,
    addresses: list[str],
    relays: list[str],
) -> None:
    code = InviteCode(
        album_id=album,
        owner_id=owner,
        invite_id=random_bytes[:16],
        secret=random_bytes[16:],
        role=role,
        expires_at=expires,
        addresses=tuple(addresses),
        relays=tuple(relays),
    )
    assert parse_invite(encode_invite(code), expires - 1) == code


def test_largest_code_fits_the_bound() -> None:
    host = ".".join(["h" * 60] * 4)  # tcp:// + 243 + :65535 = 255 characters
    relay = f"relay://r:1/?id={RELAY_ID}&x="
    code = _code(
        addresses=[f"tcp://{host}:65535"] * MAX_ADDRESSES,
        relays=[relay + "y" * (MAX_RELAY_CHARS - len(relay))] * MAX_RELAYS,
        expires_at=MAX_EXPIRES_AT,
    )
    text = encode_invite(code)
    assert len(text) * 5 // 8 < MAX_CODE_BYTES
    assert parse_invite(text, NOW) == code


def test_every_single_character_change_is_refused() -> None:
    text = encode_invite(_code())
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    pick = random.Random(7)  # sampling test cases, not secrets
    for position in range(len(text)):
        original = text[position].lower()
        others = [c for c in alphabet + ":0189-" if c != original]
        for replacement in pick.sample(others, 6):
            damaged = text[:position] + replacement + text[position + 1 :]
            with pytest.raises(InviteCodeError):
                parse_invite(damaged, NOW)
        with pytest.raises(InviteCodeError):
            parse_invite(text[:position] + text[position + 1 :], NOW)


def test_truncation_is_refused_with_an_actionable_message() -> None:
    text = encode_invite(_code())
    for cut in (len(PREFIX), len(PREFIX) + 1, len(text) // 2, len(text) - 1):
        with pytest.raises(InviteCodeError, match="copy the whole code again"):
            parse_invite(text[:cut], NOW)


def test_not_an_invite_code() -> None:
    for text in (
        "",
        "hello",
        RELAY_ID,
        "https://example.org/",
        "albumsynk:aaaa",
        "\uff41lbumsync:aa",
    ):
        with pytest.raises(InviteCodeError, match="not an albumsync invite code"):
            parse_invite(text, NOW)
    with pytest.raises(InviteCodeError, match="far too long"):
        parse_invite("albumsync:" + "a" * 100_000, NOW)
    with pytest.raises(InviteCodeError, match="'1', which never appears"):
        parse_invite("albumsync:abc1", NOW)


def test_expiry_against_now() -> None:
    text = encode_invite(_code())
    assert parse_invite(text, EXPIRES - 1).expires_at == EXPIRES
    for now in (EXPIRES, EXPIRES + 86_400):
        with pytest.raises(
            InviteCodeError, match="expired on 2027-01-15 08:00 UTC; ask for a new one"
        ):
            parse_invite(text, now)


def _forge(fields: dict[str, object], version: int = 1) -> str:
    """A well-checksummed code around arbitrary fields, as a buggy or hostile encoder would make."""
    body = bytes([version]) + encode(fields)
    data = body + hashlib.sha256(body).digest()[:4]
    return PREFIX + base64.b32encode(data).decode().rstrip("=").lower()


def _fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "a": b"\x01" * 32,
        "o": b"\x02" * 32,
        "i": b"\x03" * 16,
        "s": b"\x04" * 16,
        "r": 2,
        "x": EXPIRES,
        "t": ["tcp://example.org:22000"],
        "y": [],
    }
    fields.update(changes)
    return fields


def test_forged_fields_parse_as_a_sanity_check() -> None:
    assert parse_invite(_forge(_fields()), NOW).role is Role.EDITOR


def test_unsupported_version() -> None:
    with pytest.raises(InviteCodeError, match=r"format 2.*update albumsync"):
        parse_invite(_forge(_fields(), version=2), NOW)


@pytest.mark.parametrize(
    ("role", "problem"), [(3, "role 'owner'"), (0, "does not know \\(0\\)"), (9, "\\(9\\)")]
)
def test_bad_role(role: int, problem: str) -> None:
    with pytest.raises(InviteCodeError, match=problem):
        parse_invite(_forge(_fields(r=role)), NOW)


@pytest.mark.parametrize(
    "address",
    [
        "udp://example.org:1",
        "tcp://example.org",
        "tcp://example.org:0",
        "tcp://example.org:65536",
        "tcp://example.org:022000",
        "tcp://:22000",
        "tcp://exa mple.org:1",
        "tcp://-bad.org:1",
        "tcp://user@example.org:1",
        "tcp://example.org:1/path",
        "tcp://999.1.1.1:1",
        "tcp://[not-ipv6]:1",
        "tcp://[]:1",
        "tcp://::1:22000",
        "tcp://exämple.org:1",
        "tcp://" + "a" * 250 + ":1",
        "tcp://host:1\n",
    ],
)
def test_bad_address(address: str) -> None:
    with pytest.raises(InviteCodeError, match="bad address"):
        parse_invite(_forge(_fields(t=[address])), NOW)
    with pytest.raises(LocalProtocolError):
        _code(addresses=[address])


@pytest.mark.parametrize(
    "relay",
    [
        f"tcp://relay.example:22067/?id={RELAY_ID}",
        "relay://relay.example:22067/",
        "relay://relay.example:22067/?pingInterval=1m",
        "relay://relay.example:22067/?id=NOT-A-DEVICE-ID",
        f"relay://relay.example:22067/?id={RELAY_ID}&id={RELAY_ID}",
        f"relay://relay.example:0/?id={RELAY_ID}",
        f"relay://relay.example:22067/?id={RELAY_ID}&x=" + "y" * 512,
    ],
)
def test_bad_relay(relay: str) -> None:
    with pytest.raises(InviteCodeError, match=r"relay|address|damaged"):
        parse_invite(_forge(_fields(y=[relay])), NOW)


def test_too_many_or_wrongly_sized_fields_are_damage() -> None:
    cases = [
        _fields(t=["tcp://a.org:1"] * (MAX_ADDRESSES + 1)),
        _fields(y=[f"relay://r:1/?id={RELAY_ID}"] * (MAX_RELAYS + 1)),
        _fields(a=b"\x01" * 31),
        _fields(s=b"\x04" * 32),
        _fields(x=MAX_EXPIRES_AT + 1),
        _fields(t=[b"tcp://a.org:1"]),
        _fields(extra=1),
        {k: v for k, v in _fields().items() if k != "y"},
    ]
    for fields in cases:
        with pytest.raises(InviteCodeError, match="damaged"):
            parse_invite(_forge(fields), NOW)


def test_accepted_addresses() -> None:
    addresses = [
        "tcp://192.168.1.10:22000",
        "tcp://[2001:db8::1]:65535",
        "tcp://[fe80::1%eth0]:22000",
        "tcp://localhost:1",
        "tcp://nas.home.arpa.:22000",
        "tcp://NAS.Local:22000",
    ]
    assert parse_invite(encode_invite(_code(addresses=addresses)), NOW).addresses == tuple(
        addresses
    )


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_random_text_raises_only_invite_code_errors(text: str) -> None:
    with pytest.raises(InviteCodeError):
        parse_invite(text, NOW)


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_random_checksummed_bodies_raise_only_invite_code_errors(body: bytes) -> None:
    body = b"\x01" + body
    data = body + hashlib.sha256(body).digest()[:4]
    text = PREFIX + base64.b32encode(data).decode().rstrip("=").lower()
    with pytest.raises(InviteCodeError):
        parse_invite(text, NOW)


def test_redeem_proof_binds_secret_device_and_album() -> None:
    secret, device, album = os.urandom(16), os.urandom(32), os.urandom(32)
    proof = redeem_proof(secret, device, album)
    assert len(proof) == 32
    verify_redeem_proof(secret, device, album, proof)
    assert secret not in proof
    wrong = [
        (os.urandom(16), device, album, proof),
        (secret, os.urandom(32), album, proof),  # another device replays the proof
        (secret, device, os.urandom(32), proof),  # the proof offered for another album
        (secret, device, album, proof[:-1]),
        (secret, device, album, b""),
    ]
    for args in wrong:
        with pytest.raises(VerificationError) as info:
            verify_redeem_proof(*args)
        assert info.value.reason is Reason.NOT_AUTHORIZED


def test_we_never_encode_a_bad_code() -> None:
    with pytest.raises(LocalProtocolError, match="viewer or an editor"):
        _code(role=Role.OWNER)
    with pytest.raises(LocalProtocolError):
        _code(album_id=b"short")
    with pytest.raises(LocalProtocolError):
        _code(rng=lambda n: b"")
    with pytest.raises(LocalProtocolError):
        _code(expires_at=-1)
    with pytest.raises(LocalProtocolError):
        _code(addresses=["tcp://a.org:1"] * (MAX_ADDRESSES + 1))
    with pytest.raises(LocalProtocolError):
        redeem_proof(b"short", b"\x00" * 32, b"\x00" * 32)
