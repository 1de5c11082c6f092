"""Device keys: one Ed25519 seed per device, and what derives from it.

Signatures are domain-separated: the signed bytes are `b"albumsync/v1/" + domain + b"\\0" + message`,
so a signature made for one kind of object (say, a manifest entry) can never be replayed as another
(say, a membership statement) even when the encoded bytes happen to coincide.

The X25519 key for sealed boxes and the Noise handshake is the birational map of the Ed25519 key
(libsodium's `crypto_sign_ed25519_*_to_curve25519`), so one seed is the whole identity.
Sealed boxes draw their ephemeral key from libsodium's own generator; that is the one place
protocol/ consumes randomness it was not handed, and the output is never compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.bindings as sodium
import nacl.exceptions

from protocol.errors import LocalProtocolError, Reason, VerificationError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEAL_OVERHEAD = 48  # ephemeral public key (32) + Poly1305 tag (16)
_DOMAIN_PREFIX = b"albumsync/v1/"

Rng = Callable[[int], bytes]


def signed_bytes(domain: bytes, message: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers for `domain` and `message`."""
    if b"\0" in domain:
        raise LocalProtocolError("a signature domain may not contain a NUL byte")
    return _DOMAIN_PREFIX + domain + b"\0" + message


@dataclass(frozen=True)
class DeviceKey:
    """A device's secret identity; `public` is its Ed25519 public key."""

    seed: bytes = field(repr=False)
    public: bytes = field(init=False)
    _secret: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_SIZE:
            raise LocalProtocolError(f"a device seed is {SEED_SIZE} bytes, not {len(self.seed)}")
        public, secret = sodium.crypto_sign_seed_keypair(self.seed)
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "_secret", secret)

    @classmethod
    def generate(cls, rng: Rng) -> DeviceKey:
        return cls(rng(SEED_SIZE))

    def sign(self, domain: bytes, message: bytes) -> bytes:
        signed = sodium.crypto_sign(signed_bytes(domain, message), self._secret)
        return bytes(signed[:SIGNATURE_SIZE])

    @property
    def x25519_private(self) -> bytes:
        return bytes(sodium.crypto_sign_ed25519_sk_to_curve25519(self._secret))

    @property
    def x25519_public(self) -> bytes:
        return x25519_public_from_ed25519(self.public)

    def open_sealed(self, box: bytes) -> bytes:
        """Open a sealed box addressed to this device; VerificationError if it is not ours."""
        try:
            return bytes(sodium.crypto_box_seal_open(box, self.x25519_public, self.x25519_private))
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise VerificationError(
                Reason.DECRYPT_FAILED, "a sealed key box does not open with this device's key"
            ) from None


def verify_signature(public: bytes, domain: bytes, message: bytes, signature: bytes) -> None:
    """Raise VerificationError(BAD_SIGNATURE) unless `signature` is `public`'s over the message."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise VerificationError(Reason.BAD_SIGNATURE, "signature or public key has the wrong size")
    try:
        sodium.crypto_sign_open(signature + signed_bytes(domain, message), public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        raise VerificationError(Reason.BAD_SIGNATURE, "signature does not verify") from None


def x25519_public_from_ed25519(public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key; VerificationError for a non-point."""
    if len(public) != PUBLIC_KEY_SIZE:
        raise VerificationError(Reason.MALFORMED, "an Ed25519 public key is 32 bytes")
    try:
        return bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(public))
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError):
        raise VerificationError(Reason.MALFORMED, "not a valid Ed25519 public key") from None


def seal(recipient_public: bytes, plaintext: bytes) -> bytes:
    """Anonymous sealed box to the device whose Ed25519 public key is `recipient_public`."""
    return bytes(sodium.crypto_box_seal(plaintext, x25519_public_from_ed25519(recipient_public)))
