"""Relay protocol v1 codec and relay URIs: byte vectors, strictness, N4 at codec level, A2 fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from protocol.ids import DeviceId
from protocol.relay import (
    HEADER_SIZE,
    MAGIC,
    MAX_MESSAGE_LENGTH,
    MAX_TOKEN_SIZE,
    MAX_URI_LENGTH,
    RESPONSE_ALREADY_CONNECTED,
    RESPONSE_NOT_FOUND,
    RESPONSE_SUCCESS,
    ConnectRequest,
    Header,
    JoinRelayRequest,
    JoinSessionRequest,
    MessageType,
    Ping,
    Pong,
    RelayDecoder,
    RelayFull,
    RelayMessage,
    RelayUri,
    Response,
    SessionInvitation,
    decode_body,
    decode_message,
    encode_message,
    parse_header,
)

A2 = settings(max_examples=5000, deadline=None)  # TESTPLAN A2: 5k examples per decoder in PR
SOME = settings(max_examples=300, deadline=None)
DEVICE = DeviceId(hashlib.sha256(b"relay test device").digest())
OTHER = DeviceId(hashlib.sha256(b"relay test other").digest())
KEY = bytes(range(32))
# The URI line strelaysrv 1.19.2 printed on this machine (its device ID, loopback address).
STRELAYSRV_URI = (
    "relay://127.0.0.1:22999/?id=DZE2GCQ-JFPEI5R-F7CAZHE-P6QOHRF-DH76KGA-FEQBWSO-OGYWOW2-HVBAOAL"
    "&pingInterval=2s&networkTimeout=5s&sessionLimitBps=0&globalLimitBps=0&statusAddr=&providedBy="
)


def _header(message_type: int, length: int, magic: int = MAGIC) -> bytes:
    return struct.pack(">Iii", magic, message_type, length)


def _opaque(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data + b"\0" * (-len(data) % 4)


def _invitation_body(
    *,
    key: bytes = KEY,
    address: bytes = b"\x7f\0\0\1",
    port: bytes = b"\0\0\x56\xce",
    flag: int = 1,
) -> bytes:
    return _opaque(DEVICE.raw) + _opaque(key) + _opaque(address) + port + struct.pack(">I", flag)


# --- byte vectors (research/relay-discovery.md §1.2, checked against strelaysrv) ----------------


def test_known_answers() -> None:
    assert encode_message(Ping()).hex() == "9e79bc400000000000000000"
    assert encode_message(Pong()).hex() == "9e79bc400000000100000000"
    assert encode_message(JoinRelayRequest()).hex() == "9e79bc40000000020000000400000000"
    assert encode_message(RESPONSE_SUCCESS).hex() == (
        "9e79bc40000000040000001000000000000000077375636365737300"
    )
    assert encode_message(RelayFull()).hex() == "9e79bc400000000700000000"


def test_connect_request_and_invitation_layout() -> None:
    assert encode_message(ConnectRequest(device_id=DEVICE)) == _header(5, 36) + _opaque(DEVICE.raw)
    body = _invitation_body()
    invitation = SessionInvitation(
        from_device=DEVICE, key=KEY, address=b"\x7f\0\0\1", port=22222, server_socket=True
    )
    assert encode_message(invitation) == _header(6, len(body)) + body
    assert decode_message(_header(6, len(body)) + body) == invitation
    assert encode_message(JoinSessionRequest(key=KEY)) == _header(3, 36) + _opaque(KEY)


def test_token_and_legacy_empty_join() -> None:
    assert encode_message(JoinRelayRequest(token="abc")) == _header(2, 8) + _opaque(b"abc")
    assert decode_message(_header(2, 0)) == JoinRelayRequest()  # clients before v1.22.1


def test_response_codes_are_signed() -> None:
    response = Response(code=-5, message="odd")
    assert decode_message(encode_message(response)) == response
    assert RESPONSE_NOT_FOUND.code == 1
    assert not RESPONSE_NOT_FOUND.ok
    assert RESPONSE_ALREADY_CONNECTED.code == 2
    assert RESPONSE_SUCCESS.ok


# --- N4 at codec level: the header is judged before the body is buffered -----------------------


@pytest.mark.parametrize(
    ("length", "accepted"),
    [(-1, False), (-(2**31), False), (MAX_MESSAGE_LENGTH + 1, False), (2**31 - 1, False),
     (MAX_MESSAGE_LENGTH, True), (0, True)],
)  # fmt: skip
def test_N4_codec_length_bounds(length: int, accepted: bool) -> None:
    decoder = RelayDecoder()
    if accepted:
        decoder.receive_data(_header(MessageType.RESPONSE, length))
        assert decoder.buffered == HEADER_SIZE
        return
    with pytest.raises(RemoteProtocolError, match=f"claiming {length} body bytes"):
        decoder.receive_data(_header(MessageType.RESPONSE, length))
    assert decoder.buffered == 0
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.next_message()


def test_N4_codec_header_rejected_when_its_last_byte_arrives() -> None:
    decoder = RelayDecoder()
    header = _header(MessageType.PING, -1)
    decoder.receive_data(header[:-1])  # not judged yet: the length is incomplete
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(header[-1:] + b"x" * 100_000)
    assert decoder.buffered == 0


def test_N4_codec_bad_magic_and_unknown_type() -> None:
    with pytest.raises(RemoteProtocolError, match="magic"):
        parse_header(_header(0, 0, magic=0x16030100))  # a TLS record where a message belongs
    with pytest.raises(RemoteProtocolError, match="unknown type 8"):
        parse_header(_header(8, 0))
    with pytest.raises(RemoteProtocolError, match="unknown type"):
        parse_header(_header(-1, 0))
    assert parse_header(_header(6, 1024)) == Header(MessageType.SESSION_INVITATION, 1024)


def test_a_later_bad_header_fails_before_earlier_messages_are_read() -> None:
    decoder = RelayDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(encode_message(Ping()) + _header(1, 5000))


# --- canonical bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "body", "why"),
    [
        (6, _invitation_body(flag=2), "a bool is 0 or 1"),
        (6, _invitation_body(port=b"\0\1\0\0"), "does not fit 16 bits"),
        (6, _invitation_body(key=KEY[:31]), "session key is 32 bytes, not 31"),
        (6, _invitation_body(address=b"\1\2\3\4\5"), "empty, 4 or 16 bytes"),
        (6, _invitation_body()[:-4], "ends before its server socket"),
        (6, _invitation_body() + b"\0\0\0\0", "4 bytes follow its last field"),
        (3, _opaque(b"k" * 33), "33 bytes, more than the 32"),
        (3, struct.pack(">I", 2**32 - 1), "more than the 32"),
        (3, _opaque(b"k" * 30)[:-3], "ends inside its key"),
        (3, _opaque(b"k" * 30)[:-2] + b"\0\1", "padding after its key is not zero"),
        (5, _opaque(b"i" * 16), "device ID is 32 bytes, not 16"),
        (4, b"\0\0\0\0" + _opaque(b"\xff\xfe"), "not UTF-8"),
        (2, _opaque(b"a\nb"), "control characters"),
        (0, b"\0\0\0\0", "4 bytes follow"),
        (7, b"x", "1 bytes follow"),
    ],
)
def test_non_canonical_bodies_are_refused(message_type: int, body: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_message(_header(message_type, len(body)) + body)


def test_length_must_match_the_data() -> None:
    whole = encode_message(RESPONSE_SUCCESS)
    with pytest.raises(RemoteProtocolError, match="header says"):
        decode_message(whole + b"\0")
    with pytest.raises(RemoteProtocolError, match="header says"):
        decode_message(whole[:-1])
    with pytest.raises(RemoteProtocolError, match="inside its 12-byte header"):
        decode_message(whole[:5])


def test_local_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        JoinSessionRequest(key=b"short")
    with pytest.raises(LocalProtocolError):
        JoinRelayRequest(token="t" * (MAX_TOKEN_SIZE + 1))
    with pytest.raises(LocalProtocolError):
        SessionInvitation(from_device=DEVICE, key=KEY, address=b"", port=70000, server_socket=False)
    with pytest.raises(LocalProtocolError):
        Response(code=2**31, message="")
    with pytest.raises(LocalProtocolError):
        decode_body(Header(MessageType.PING, 0), b"x")


# --- where to open the session -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        (b"\0" * 10 + b"\xff\xff\x7f\0\0\1", 22067, ("127.0.0.1", 22067)),  # what strelaysrv sends
        (b"\xc0\0\2\7", 443, ("192.0.2.7", 443)),
        (bytes.fromhex("20010db8000000000000000000000001"), 1, ("2001:db8::1", 1)),
        (b"", 22067, ("relay.example", 22067)),  # -ext-address without a host
        (b"\0\0\0\0", 5, ("relay.example", 5)),
        (b"\0" * 16, 5, ("relay.example", 5)),
        (b"\xc0\0\2\7", 0, ("192.0.2.7", 9999)),  # -listen=…:0 advertises port 0
    ],
)
def test_session_address(address: bytes, port: int, expected: tuple[str, int]) -> None:
    invitation = SessionInvitation(
        from_device=DEVICE, key=KEY, address=address, port=port, server_socket=False
    )
    assert invitation.session_address("relay.example", 9999) == expected


def test_keys_stay_out_of_reprs() -> None:
    invitation = SessionInvitation(
        from_device=DEVICE, key=b"\xaa" * 32, address=b"", port=1, server_socket=False
    )
    assert "xaa" not in repr(invitation)
    assert "secret" not in repr(JoinRelayRequest(token="secret"))


# --- A2: fuzzing and round trips ----------------------------------------------------------------

device_ids = st.binary(min_size=32, max_size=32).map(DeviceId)
texts = st.text(st.characters(codec="utf-8"), max_size=40)
messages: st.SearchStrategy[RelayMessage] = st.one_of(
    st.just(Ping()),
    st.just(Pong()),
    st.just(RelayFull()),
    st.builds(JoinRelayRequest, token=st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=40)),
    st.builds(JoinSessionRequest, key=st.binary(min_size=32, max_size=32)),
    st.builds(Response, code=st.integers(-(2**31), 2**31 - 1), message=texts),
    st.builds(ConnectRequest, device_id=device_ids),
    st.builds(
        SessionInvitation,
        from_device=device_ids,
        key=st.binary(min_size=32, max_size=32),
        address=st.sampled_from([0, 4, 16]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        port=st.integers(0, 65535),
        server_socket=st.booleans(),
    ),
)  # fmt: skip


@settings(max_examples=2000, deadline=None)  # valid values: generation dominates the cost
@given(messages)
def test_A2_round_trip(message: RelayMessage) -> None:
    data = encode_message(message)
    assert len(data) <= HEADER_SIZE + MAX_MESSAGE_LENGTH
    assert decode_message(data) == message
    assert encode_message(decode_message(data)) == data


@A2
@given(st.binary(max_size=200))
def test_A2_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        message = decode_message(data)
    except RemoteProtocolError:
        return
    assert encode_message(message) == data or data[4:12] == bytes.fromhex("0000000200000000")


@A2
@given(st.sampled_from(list(MessageType)), st.binary(max_size=120))
def test_A2_random_bodies_raise_only_decode_errors(message_type: MessageType, body: bytes) -> None:
    data = _header(message_type, len(body)) + body
    try:
        message = decode_message(data)
    except DecodeError:
        return
    assert encode_message(message) == data or (message_type == 2 and body == b"")


@SOME
@given(st.lists(messages, max_size=6), st.data())
def test_stream_decoding_any_split(batch: list[RelayMessage], data: st.DataObject) -> None:
    stream = b"".join(encode_message(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder, received = RelayDecoder(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.receive_data(stream[start:end])
        while (message := decoder.next_message()) is not None:
            received.append(message)
    assert received == batch
    assert decoder.buffered == 0


@SOME
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_stream_of_garbage_raises_only_protocol_errors(chunks: list[bytes]) -> None:
    decoder = RelayDecoder()
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            while decoder.next_message() is not None:
                pass
    except RemoteProtocolError:
        pass
    assert decoder.buffered <= HEADER_SIZE + MAX_MESSAGE_LENGTH + sum(map(len, chunks))


# --- relay URIs ---------------------------------------------------------------------------------


def test_uri_as_strelaysrv_prints_it() -> None:
    uri = RelayUri.parse(STRELAYSRV_URI)
    assert (uri.host, uri.port, uri.token) == ("127.0.0.1", 22999, "")
    assert str(uri.device_id) == "DZE2GCQ-JFPEI5R-F7CAZHE-P6QOHRF-DH76KGA-FEQBWSO-OGYWOW2-HVBAOAL"
    assert (
        str(uri) == STRELAYSRV_URI.split("&", maxsplit=1)[0]
    )  # the other keys are tolerated and dropped


def test_uri_token_ipv6_and_lenient_id() -> None:
    plain = str(DEVICE).replace("-", "").lower()
    uri = RelayUri.parse(f"RELAY://[2001:DB8::1]:443?token=p%26ss+w&id={plain}")
    assert (uri.host, uri.port, uri.device_id, uri.token) == ("2001:db8::1", 443, DEVICE, "p&ss w")
    assert uri.address == "[2001:db8::1]:443"
    assert uri.public == f"relay://[2001:db8::1]:443/?id={DEVICE}"
    assert str(uri) == f"relay://[2001:db8::1]:443/?id={DEVICE}&token=p%26ss%20w"
    assert RelayUri.parse(str(uri)) == uri
    assert "p&ss" not in repr(uri)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("relay://:22067/?id=" + str(DEVICE), "no host"),
        ("relay://relay.example/?id=" + str(DEVICE), "needs a port"),
        ("relay://relay.example:0/?id=" + str(DEVICE), "needs a port"),
        ("relay://relay.example:70000/?id=" + str(DEVICE), "cannot be read"),
        ("relay://relay.example:22067/", "no \\?id="),
        ("relay://relay.example:22067/?id=", "no \\?id="),
        ("relay://relay.example:22067/?id=ABC", "not a device ID"),
        (f"relay://relay.example:22067/?id={DEVICE}&id={OTHER}", "twice"),
        (f"relay://relay.example:22067/?id={DEVICE}&token=a&token=b", "twice"),
        (f"tcp://relay.example:22067/?id={DEVICE}", "starts with relay://"),
        (f"relay://relay.example:22067/x?id={DEVICE}", "no path"),
        (f"relay://u:p@relay.example:22067/?id={DEVICE}", "no user name"),
        (f"relay://relay.example:22067/?id={DEVICE}#x", "fragment"),
        (f"relay://relay.exämple:22067/?id={DEVICE}", "ASCII"),
        (f"relay://relay.example:22067/?id=\n{DEVICE}", "without spaces"),
        (f"relay://re lay:22067/?id={DEVICE}", "without spaces"),
        (f"relay://bad_host-.x:22067/?id={DEVICE}", "neither an IP address nor a host name"),
        (f"relay://[::1:22067/?id={DEVICE}", "cannot be read"),
        ("relay://h:1/?id=" + "A" * MAX_URI_LENGTH, "at most"),
        (f"relay://h:1/?id={DEVICE}&token=%00", "unusable"),
    ],
)  # fmt: skip
def test_bad_uris_say_why(text: str, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        RelayUri.parse(text)


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.ip_addresses().map(str),
)
uris = st.builds(
    RelayUri,
    host=hosts,
    port=st.integers(1, 65535),
    device_id=device_ids,
    token=st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=20),
)


@SOME
@given(uris)
def test_uri_round_trip(uri: RelayUri) -> None:
    assert RelayUri.parse(str(uri)) == uri
    assert RelayUri.parse(uri.public) == RelayUri(
        host=uri.host, port=uri.port, device_id=uri.device_id
    )


@A2
@given(st.one_of(st.text(max_size=120), st.text(max_size=80).map(lambda t: "relay://" + t)))
def test_A2_uri_parse_raises_only_decode_errors(text: str) -> None:
    with contextlib.suppress(DecodeError):
        RelayUri.parse(text)
