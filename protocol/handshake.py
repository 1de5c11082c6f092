"""The Noise handshake that opens every peer channel, as a sans-I/O state machine.

Protocols: Noise_XX_25519_AESGCM_SHA256 (first contact) and Noise_IK_25519_AESGCM_SHA256 (the
initiator already knows the responder's static key), exactly as the Noise spec revision 34 defines
them, with prologue `PROLOGUE`; `noiseprotocol` interoperates (tests). Static keys are the
devices' X25519 keys, derived from their Ed25519 identity keys.

Wire format: the initiator's first byte is a pattern marker (`X` for XX, `I` for IK), outside the
Noise messages; then every handshake message is a 2-byte big-endian length and the Noise message.
The marker needs no authentication of its own: it selects the protocol name, which Noise hashes
into every key, so a changed marker makes the handshake fail. The initiator chooses the pattern;
a responder can refuse IK (`accept_ik=False`), and an IK first message it cannot decrypt (the
initiator holds a stale key for it) fails with HandshakeError, after which the daemon retries XX.

Payloads are opaque bytes of at most `MAX_PAYLOAD`, each sent once, in the first message its
sender encrypts (XX: responder in message 2, initiator in message 3; IK: initiator in message 1,
responder in message 2); every other message must carry an empty payload. The peer's payload and
static key arrive as `PeerAuthenticated`; the caller decides whether to trust them, with
`verify_peer_identity` for the certificate it carries.

An IK responder cannot tell a live initiator from a replayed first message until the initiator
sends a transport frame: its `HandshakeComplete` says `peer_confirmed=False`, and so does the
channel until its first frame from the peer decrypts. Send nothing the peer must earn before that.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from protocol.certificate import CertifiedDevice, verify_certificate
from protocol.channel import MAX_NOISE_MESSAGE, TAG_SIZE, CipherState, SecureChannel
from protocol.errors import (
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
    VerificationError,
)
from protocol.keys import DeviceKey, x25519_public_from_ed25519

Rng = Callable[[int], bytes]

PROLOGUE = b"albumsync/1"
HANDSHAKE_TIMEOUT = 10.0  # seconds the daemon allows a whole handshake (TESTPLAN A4)
MAX_PAYLOAD = 4096  # a handshake payload: the certificate DER and a little more
DH_SIZE = 32
HASH_SIZE = 32
# The largest message either pattern sends: e, encrypted s, and the encrypted payload.
MAX_HANDSHAKE_MESSAGE = DH_SIZE + (DH_SIZE + TAG_SIZE) + MAX_PAYLOAD + TAG_SIZE

_LENGTH = struct.Struct(">H")
_DH_TOKENS = frozenset({"ee", "es", "se", "ss"})


class Pattern(enum.Enum):
    """A Noise handshake pattern this protocol speaks; the value is its wire marker."""

    XX = b"X"
    IK = b"I"

    @property
    def protocol_name(self) -> bytes:
        return b"Noise_" + self.name.encode() + b"_25519_AESGCM_SHA256"


@dataclass(frozen=True, kw_only=True)
class PeerAuthenticated:
    """The peer proved it holds `remote_static` and sent `payload`; the caller checks who it is."""

    remote_static: bytes
    payload: bytes


@dataclass(frozen=True, kw_only=True)
class HandshakeComplete:
    """Both sides hold transport keys; `Handshake.into_channel()` is now available."""

    pattern: Pattern
    handshake_hash: bytes
    peer_confirmed: bool


Event = PeerAuthenticated | HandshakeComplete


def verify_peer_identity(remote_static: bytes, certificate_der: bytes) -> CertifiedDevice:
    """The device a handshake's peer proved to be; HandshakeError unless the certificate is its."""
    try:
        device = verify_certificate(certificate_der)
        expected = x25519_public_from_ed25519(device.public_key)
    except VerificationError as error:
        raise HandshakeError(f"the peer's certificate is not valid: {error.message}") from None
    if not hmac.compare_digest(expected, remote_static):
        raise HandshakeError(
            "the peer's certificate belongs to another key than the one it used in the handshake"
        )
    return device


class Handshake:
    """One side of a Noise XX or IK handshake: feed wire bytes, send what it returns, read events."""

    def __init__(
        self,
        *,
        key: DeviceKey,
        payload: bytes,
        rng: Rng,
        initiator: bool,
        remote_static: bytes | None = None,
        accept_ik: bool = True,
    ) -> None:
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(
                f"a handshake payload is at most {MAX_PAYLOAD} bytes; this one is {len(payload)}"
            )
        if remote_static is not None and len(remote_static) != DH_SIZE:
            raise LocalProtocolError(f"a remote static key is {DH_SIZE} bytes")
        self._key = key
        self._payload = bytes(payload)
        self._rng = rng
        self._initiator = initiator
        self._remote_static = remote_static
        self._accept_ik = accept_ik
        self._state: _HandshakeState | None = None
        self._index = 0
        self._inbound = bytearray()
        self._outbound = bytearray()
        self._events: deque[Event] = deque()
        self._ciphers: tuple[CipherState, CipherState] | None = None
        self._complete: HandshakeComplete | None = None
        self._error: HandshakeError | None = None
        self._channel_taken = False

    @classmethod
    def initiator(
        cls, key: DeviceKey, payload: bytes, rng: Rng, remote_static: bytes | None = None
    ) -> Handshake:
        """Start a handshake: IK to a peer whose X25519 `remote_static` we know, else XX."""
        handshake = cls(
            key=key, payload=payload, rng=rng, initiator=True, remote_static=remote_static
        )
        pattern = Pattern.XX if remote_static is None else Pattern.IK
        handshake._outbound += pattern.value
        handshake._start(pattern)
        handshake._write()
        return handshake

    @classmethod
    def responder(
        cls, key: DeviceKey, payload: bytes, rng: Rng, accept_ik: bool = True
    ) -> Handshake:
        """Answer a handshake; the initiator's first byte says XX or IK."""
        return cls(key=key, payload=payload, rng=rng, initiator=False, accept_ik=accept_ik)

    @property
    def pattern(self) -> Pattern | None:
        """The pattern in use; None for a responder until the first byte arrives."""
        return None if self._state is None else self._state.pattern

    @property
    def complete(self) -> bool:
        return self._complete is not None

    @property
    def handshake_hash(self) -> bytes:
        return self._result().handshake_hash

    @property
    def send_cipher(self) -> CipherState:
        self._result()
        assert self._ciphers is not None
        return self._ciphers[0]

    @property
    def receive_cipher(self) -> CipherState:
        self._result()
        assert self._ciphers is not None
        return self._ciphers[1]

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the wire, split anywhere; bytes after the handshake go to the channel."""
        self._check_alive()
        self._inbound += data

    def data_to_send(self) -> bytes:
        """Bytes to write to the wire now (possibly empty)."""
        self._check_alive()
        data = bytes(self._outbound)
        self._outbound.clear()
        return data

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive; HandshakeError is final."""
        self._check_alive()
        try:
            while not self._events and self._complete is None:
                message = self._next_message()
                if message is None:
                    break
                self._read(message)
        except HandshakeError as error:
            self._fail(error)
            raise
        return self._events.popleft() if self._events else None

    def into_channel(self) -> SecureChannel:
        """The transport channel, holding any bytes that arrived after the last handshake message."""
        complete = self._result()
        if self._channel_taken:
            raise LocalProtocolError("this handshake's channel was already taken")
        self._channel_taken = True
        send, receive = self.send_cipher, self.receive_cipher
        channel = SecureChannel(
            send_cipher=send, receive_cipher=receive, peer_confirmed=complete.peer_confirmed
        )
        channel.receive_data(self._inbound)
        self._inbound = bytearray()
        return channel

    def _start(self, pattern: Pattern) -> None:
        if self._initiator:
            remote_static = self._remote_static
        else:
            remote_static = None
            if pattern is Pattern.IK and not self._accept_ik:
                raise HandshakeError("this device does not accept IK handshakes now; retry with XX")
        self._state = _HandshakeState(
            pattern=pattern,
            initiator=self._initiator,
            static_private=self._key.x25519_private,
            remote_static=remote_static,
            rng=self._rng,
        )

    def _next_message(self) -> bytes | None:
        inbound = self._inbound
        if self._state is None:
            if not inbound:
                return None
            self._start(_pattern_for_marker(inbound[0]))
            del inbound[:1]
        if len(inbound) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(inbound)
        if size > MAX_HANDSHAKE_MESSAGE:
            raise HandshakeError(
                f"the peer sent a {size}-byte handshake message; the most is {MAX_HANDSHAKE_MESSAGE}"
            )
        end = _LENGTH.size + size
        if len(inbound) < end:
            return None
        message = bytes(inbound[_LENGTH.size : end])
        del inbound[:end]
        return message

    def _read(self, message: bytes) -> None:
        state = self._live_state()
        index = self._index
        try:
            payload = state.read_message(message)
        except HandshakeError as error:
            if index == 0 and state.pattern is Pattern.IK:
                raise HandshakeError(
                    "the initiator's IK message does not decrypt with this device's key (it may "
                    f"hold an old key for us; it should retry with XX): {error.message}"
                ) from None
            raise
        self._index += 1
        if index == _payload_index(state.pattern, initiator=not self._initiator):
            if len(payload) > MAX_PAYLOAD:
                raise HandshakeError(f"the peer's handshake payload is over {MAX_PAYLOAD} bytes")
            assert state.remote_static is not None
            self._events.append(
                PeerAuthenticated(remote_static=state.remote_static, payload=payload)
            )
        elif payload:
            raise HandshakeError(f"handshake message {index + 1} must carry no payload")
        if not self._finish_if_done():
            self._write()

    def _write(self) -> None:
        state = self._live_state()
        own = self._index == _payload_index(state.pattern, initiator=self._initiator)
        message = state.write_message(self._payload if own else b"")
        self._index += 1
        if len(message) > MAX_NOISE_MESSAGE:
            raise LocalProtocolError("a handshake message would exceed the Noise size limit")
        self._outbound += _LENGTH.pack(len(message)) + message
        self._finish_if_done()

    def _finish_if_done(self) -> bool:
        state = self._live_state()
        if self._index < len(_MESSAGES[state.pattern]):
            return False
        first, second = state.split()
        self._ciphers = (first, second) if self._initiator else (second, first)
        # Only an IK responder has not yet seen proof of the peer's fresh ephemeral key.
        confirmed = state.pattern is Pattern.XX or self._initiator
        self._complete = HandshakeComplete(
            pattern=state.pattern, handshake_hash=state.handshake_hash, peer_confirmed=confirmed
        )
        self._events.append(self._complete)
        return True

    def _live_state(self) -> _HandshakeState:
        if self._state is None:
            raise LocalProtocolError("the handshake has not started")
        return self._state

    def _result(self) -> HandshakeComplete:
        self._check_alive()
        if self._complete is None:
            raise LocalProtocolError("the handshake is not complete yet")
        return self._complete

    def _fail(self, error: HandshakeError) -> None:
        self._error = error
        self._inbound.clear()
        self._outbound.clear()

    def _check_alive(self) -> None:
        if self._error is not None:
            raise HandshakeError(f"this handshake failed earlier: {self._error.message}")


_MESSAGES: dict[Pattern, tuple[tuple[str, ...], ...]] = {
    Pattern.XX: (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    Pattern.IK: (("e", "es", "s", "ss"), ("e", "ee", "se")),
}


def _payload_index(pattern: Pattern, *, initiator: bool) -> int:
    """Which message carries a side's payload: the first that side sends encrypted."""
    if pattern is Pattern.XX:
        return 2 if initiator else 1
    return 0 if initiator else 1


def _pattern_for_marker(marker: int) -> Pattern:
    for pattern in Pattern:
        if pattern.value[0] == marker:
            return pattern
    raise HandshakeError(
        f"the peer opened with byte {marker:#04x}, not an albumsync handshake (X or I)"
    )


class _SymmetricState:
    """Noise spec section 5.2: the chaining key, the handshake hash and the handshake cipher."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_SIZE:
            self.h = protocol_name.ljust(HASH_SIZE, b"\0")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher: CipherState | None = None

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, key = _hkdf(self.ck, input_key_material)
        self.cipher = CipherState(key)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = (
            plaintext if self.cipher is None else self.cipher.encrypt_with_ad(self.h, plaintext)
        )
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.cipher is None:
            plaintext = ciphertext
        elif len(ciphertext) < TAG_SIZE:
            raise HandshakeError("a handshake message is too short for its authentication tag")
        else:
            try:
                plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
            except RemoteProtocolError:
                raise HandshakeError(
                    "a handshake message failed authentication: it was altered, or made for "
                    "other keys"
                ) from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = _hkdf(self.ck, b"")
        return CipherState(first), CipherState(second)


class _HandshakeState:
    """Noise spec section 5.3 for the XX and IK patterns, with X25519 from libsodium."""

    def __init__(
        self,
        *,
        pattern: Pattern,
        initiator: bool,
        static_private: bytes,
        remote_static: bytes | None,
        rng: Rng,
    ) -> None:
        self.pattern = pattern
        self.initiator = initiator
        self.remote_static = remote_static
        # Equals DeviceKey.x25519_public (the birational map), at a third of the cost.
        static_public = bytes(sodium.crypto_scalarmult_base(static_private))
        self._s = (static_private, static_public)
        self._e: tuple[bytes, bytes] | None = None
        self._re: bytes | None = None
        self._rng = rng
        self._message = 0
        self._symmetric = _SymmetricState(pattern.protocol_name)
        self._symmetric.mix_hash(PROLOGUE)
        if pattern is Pattern.IK:  # pre-message "<- s": the responder's static key
            responder_static = remote_static if initiator else static_public
            assert responder_static is not None
            self._symmetric.mix_hash(responder_static)

    @property
    def handshake_hash(self) -> bytes:
        return self._symmetric.h

    def write_message(self, payload: bytes) -> bytes:
        tokens = _MESSAGES[self.pattern][self._message]
        out = bytearray()
        for op in tokens:
            if op == "e":
                self._e = _generate_keypair(self._rng)
                out += self._e[1]
                self._symmetric.mix_hash(self._e[1])
            elif op == "s":
                out += self._symmetric.encrypt_and_hash(self._s[1])
            else:
                self._mix_dh(op)
        out += self._symmetric.encrypt_and_hash(payload)
        self._message += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        tokens = _MESSAGES[self.pattern][self._message]
        offset = 0
        for op in tokens:
            if op == "e":
                self._re = _take(message, offset, DH_SIZE)
                offset += DH_SIZE
                self._symmetric.mix_hash(self._re)
            elif op == "s":
                size = DH_SIZE if self._symmetric.cipher is None else DH_SIZE + TAG_SIZE
                self.remote_static = self._symmetric.decrypt_and_hash(_take(message, offset, size))
                offset += size
            else:
                self._mix_dh(op)
        payload = self._symmetric.decrypt_and_hash(message[offset:])
        self._message += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        return self._symmetric.split()

    def _mix_dh(self, token: str) -> None:
        assert token in _DH_TOKENS
        local_ephemeral = token[0 if self.initiator else 1] == "e"
        remote_ephemeral = token[1 if self.initiator else 0] == "e"
        local = self._e if local_ephemeral else self._s
        remote = self._re if remote_ephemeral else self.remote_static
        assert local is not None
        assert remote is not None
        self._symmetric.mix_key(_dh(local[0], remote))


def _generate_keypair(rng: Rng) -> tuple[bytes, bytes]:
    private = rng(DH_SIZE)
    if len(private) != DH_SIZE:
        raise LocalProtocolError(f"rng returned {len(private)} bytes, not {DH_SIZE}")
    return private, bytes(sodium.crypto_scalarmult_base(private))


def _dh(private: bytes, public: bytes) -> bytes:
    # libsodium refuses a public key whose product is all zeros (a low-order point).
    try:
        return bytes(sodium.crypto_scalarmult(private, public))
    except nacl.exceptions.CryptoError:
        raise HandshakeError("the peer sent a low-order (weak) X25519 public key") from None


def _take(message: bytes, offset: int, size: int) -> bytes:
    if len(message) < offset + size:
        raise HandshakeError(f"a handshake message of {len(message)} bytes is too short")
    return message[offset : offset + size]


def _hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """HKDF(ck, ikm, 2) exactly as Noise spec section 4.3 defines it (HMAC-SHA256)."""
    temp_key = hmac.digest(chaining_key, input_key_material, "sha256")
    first = hmac.digest(temp_key, b"\x01", "sha256")
    second = hmac.digest(temp_key, first + b"\x02", "sha256")
    return first, second
