"""What each side says about itself inside the Noise handshake: certificate, device name, version.

The payload is encrypted by the handshake, so only the peer reads the device name. The certificate
proves the device ID (`handshake.verify_peer_identity`); the name is what people see and is never
trusted for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.certificate import MAX_CERTIFICATE_SIZE
from protocol.encoding import Limits, Reader, decode, encode
from protocol.errors import DecodeError
from protocol.handshake import MAX_PAYLOAD

PROTOCOL_VERSION = 1
MAX_DEVICE_NAME = 64
_LIMITS = Limits(
    max_total=MAX_PAYLOAD,
    max_bytes=MAX_CERTIFICATE_SIZE,
    max_text=4 * MAX_DEVICE_NAME,
    max_items=8,
    max_depth=2,
)


@dataclass(frozen=True, kw_only=True)
class Introduction:
    certificate: bytes
    name: str
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return encode({"cert": self.certificate, "name": self.name, "v": self.version})


def decode_introduction(payload: bytes) -> Introduction:
    """Decode a peer's handshake payload; DecodeError for anything malformed or unsupported."""
    reader = Reader(decode(payload, _LIMITS), "introduction")
    version = reader.int("v", lo=1, hi=2**16)
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            f"the peer speaks albumsync protocol {version}, this device {PROTOCOL_VERSION}: "
            "update the older one"
        )
    intro = Introduction(
        certificate=reader.bytes("cert", max_len=MAX_CERTIFICATE_SIZE),
        name=reader.text("name", max_len=MAX_DEVICE_NAME),
        version=version,
    )
    reader.finish()
    if not intro.name.isprintable():
        raise DecodeError("the peer's device name has control characters")
    return intro
