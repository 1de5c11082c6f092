"""The encrypted transport after the Noise handshake: framing, fragmentation and nonce order.

Wire format, after the handshake: a stream of transport frames, each a 2-byte big-endian length
and one Noise transport message (AES-256-GCM, nonce = 4 zero bytes + 8-byte big-endian counter,
empty associated data). The plaintext of every Noise message is one flag byte and a fragment of
an application message: `MORE` (0x00) on every fragment but the last, `FINAL` (0x01) on the last.
Non-final fragments carry exactly `MAX_FRAGMENT` bytes and a final fragment after them is never
empty, so each message has one encoding and a peer cannot make us reassemble from slivers. The
counter makes order part of authentication: a replayed, reordered, dropped or altered frame fails
to decrypt, and the channel is then dead for good.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.errors import LocalProtocolError, RemoteProtocolError

KEY_SIZE = 32
TAG_SIZE = 16
MAX_NOISE_MESSAGE = 65535  # Noise spec section 3: every Noise message fits in 65535 bytes
MAX_FRAGMENT = MAX_NOISE_MESSAGE - TAG_SIZE - 1  # one flag byte precedes each fragment
MAX_MESSAGE = 1024 * 1024 + 4096  # one application message: a 1 MiB chunk plus its framing
MAX_NONCE = 2**64 - 1  # reserved by the Noise spec; a CipherState never uses it
MORE = 0x00
FINAL = 0x01

Bytes = bytes | bytearray | memoryview

_LENGTH = struct.Struct(">H")
_NONCE = struct.Struct(">4xQ")
_MIN_FRAME = TAG_SIZE + 1
_COMPACT_AT = 256 * 1024  # consumed bytes kept before the receive buffer is compacted
_MORE = bytes([MORE])
_FINAL = bytes([FINAL])


class CipherState:
    """One direction of a Noise CipherState: AES-256-GCM under a key with a counting nonce."""

    __slots__ = ("_aead", "_nonce")

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"a CipherState key is {KEY_SIZE} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._nonce = nonce

    def __repr__(self) -> str:
        return f"CipherState(nonce={self._nonce})"

    @property
    def nonce(self) -> int:
        return self._nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: Bytes) -> bytes:
        """ENCRYPT(k, n++, ad, plaintext) as the Noise spec defines it."""
        if self._nonce >= MAX_NONCE:
            raise LocalProtocolError("this channel has used all its nonces; open a new one")
        ciphertext = self._aead.encrypt(_NONCE.pack(self._nonce), plaintext, ad)
        self._nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: Bytes) -> bytes:
        """DECRYPT(k, n++, ad, ciphertext); RemoteProtocolError if it does not authenticate."""
        if self._nonce >= MAX_NONCE:
            raise RemoteProtocolError("the peer sent more messages than a channel may carry")
        try:
            plaintext = self._aead.decrypt(_NONCE.pack(self._nonce), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError(
                "an encrypted message failed authentication: it was altered, replayed, "
                "reordered or made with other keys"
            ) from None
        self._nonce += 1
        return plaintext


class SecureChannel:
    """Sans-I/O encrypted transport: `send` returns wire bytes; feed received bytes, take messages."""

    def __init__(
        self,
        *,
        send_cipher: CipherState,
        receive_cipher: CipherState,
        peer_confirmed: bool = True,
    ) -> None:
        self._send = send_cipher
        self._receive = receive_cipher
        self._peer_confirmed = peer_confirmed
        self._buffer = bytearray()
        self._offset = 0
        self._fragments: list[memoryview] = []
        self._pending = 0
        self._error: RemoteProtocolError | None = None

    @property
    def peer_confirmed(self) -> bool:
        """True once the peer has proven it holds the session keys (see Handshake docs, IK)."""
        return self._peer_confirmed

    @property
    def failed(self) -> bool:
        return self._error is not None

    def send(self, message: Bytes) -> bytes:
        """The wire bytes that carry `message` (one or more transport frames)."""
        self._check_alive()
        view = memoryview(message)
        if len(view) > MAX_MESSAGE:
            raise LocalProtocolError(
                f"a channel message is at most {MAX_MESSAGE} bytes; this one is {len(view)}"
            )
        parts: list[bytes] = []
        start = 0
        while True:
            end = start + MAX_FRAGMENT
            flag = _FINAL if end >= len(view) else _MORE
            ciphertext = self._send.encrypt_with_ad(b"", flag + view[start:end])
            parts += (_LENGTH.pack(len(ciphertext)), ciphertext)
            if flag is _FINAL:
                return b"".join(parts)
            start = end

    def receive_data(self, data: Bytes) -> None:
        """Buffer bytes from the wire, split anywhere; nothing is decrypted until next_message."""
        self._check_alive()
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes arrive; RemoteProtocolError is final."""
        self._check_alive()
        try:
            return self._next_message()
        except RemoteProtocolError as error:
            self._error = error
            self._buffer = bytearray()
            self._fragments.clear()
            raise

    def _next_message(self) -> bytes | None:
        while (plaintext := self._next_plaintext()) is not None:
            self._peer_confirmed = True
            flag, body = plaintext[0], memoryview(plaintext)[1:]
            if flag == FINAL and not self._fragments:
                return plaintext[1:]
            self._pending += len(body)
            if self._pending > MAX_MESSAGE:
                raise RemoteProtocolError(
                    f"the peer sent a message over {MAX_MESSAGE} bytes, the most a channel carries"
                )
            self._fragments.append(body)
            if flag == FINAL and body:
                message = b"".join(self._fragments)
                self._fragments.clear()
                self._pending = 0
                return message
            if flag != MORE or len(body) != MAX_FRAGMENT:
                raise RemoteProtocolError(
                    "the peer framed a channel message wrongly "
                    "(unknown flag, short fragment or empty last fragment)"
                )
        return None

    def _next_plaintext(self) -> bytes | None:
        buffer, start = self._buffer, self._offset
        if len(buffer) - start < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(buffer, start)
        if size < _MIN_FRAME:
            raise RemoteProtocolError(
                f"the peer sent a {size}-byte transport frame; the smallest is {_MIN_FRAME}"
            )
        end = start + _LENGTH.size + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view, view[start + _LENGTH.size : end] as frame:
            plaintext = self._receive.decrypt_with_ad(b"", frame)
        self._consume(end)
        return plaintext

    def _consume(self, end: int) -> None:
        # Dropping consumed bytes only once they are many keeps buffer handling linear.
        if end == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif end >= _COMPACT_AT and end * 2 >= len(self._buffer):
            del self._buffer[:end]
            self._offset = 0
        else:
            self._offset = end

    def _check_alive(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"this channel failed earlier: {self._error.message}")
