"""The one exception hierarchy of `protocol/`.

    ProtocolError                    abstract base: everything protocol/ raises on purpose
    ├── LocalProtocolError           we asked for something illegal (a bug on our side)
    ├── RemoteProtocolError          bytes from outside broke the wire rules; the session is dead
    │   ├── DecodeError              a value or frame could not be decoded canonically
    │   └── HandshakeError           the peer failed to prove who it is
    ├── VerificationError            a well-formed signed object is not valid (carries a Reason)
    └── InviteCodeError              an invite code a person pasted is unusable (says why)

Input from a peer makes protocol/ raise only RemoteProtocolError or VerificationError; anything else
escaping a decoder or a `verify_*`/`apply` function is a bug (h11's rule). Messages are sentences a
person can act on: the daemon logs and shows them as they are.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why a signed object was refused; stable names used in logs, the API and tests."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    BAD_CERTIFICATE = "bad_certificate"
    BROKEN_CHAIN = "broken_chain"
    FORK = "fork"
    NOT_AUTHORIZED = "not_authorized"
    WRONG_ALBUM = "wrong_album"
    WRONG_EPOCH = "wrong_epoch"
    BACKDATED = "backdated"
    REPLAYED = "replayed"
    UNSAFE_NAME = "unsafe_name"
    OUT_OF_BOUNDS = "out_of_bounds"
    DECRYPT_FAILED = "decrypt_failed"
    UNKNOWN_MEMBER = "unknown_member"
    ALBUM_DELETED = "album_deleted"
    TOO_MANY_PENDING = "too_many_pending"
    NOT_YET = "not_yet"  # valid only after something this device has not received yet


class ProtocolError(Exception):
    """Base of every error protocol/ raises on purpose; never raised itself."""

    def __init__(self, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise a subclass of ProtocolError, not ProtocolError itself")
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class LocalProtocolError(ProtocolError):
    """Our own side asked a state machine for something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """A peer (or a relay, or a file) sent bytes that break the wire rules."""


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode to a canonical value of the expected shape."""


class HandshakeError(RemoteProtocolError):
    """The channel handshake failed: wrong keys, tampered bytes, or a certificate that lies."""


class VerificationError(ProtocolError):
    """A decoded, signed object that must not be accepted; `reason` says which rule it broke."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InviteCodeError(ProtocolError):
    """An invite code that cannot be used; the message tells the person what to do instead."""
