"""A device's self-signed X.509 certificate: a pure function of its seed, and its verification.

The device ID is SHA-256 of this certificate's DER, so the DER must never change for a given
seed: every field is fixed (subject and issuer CN=albumsync, validity 2020-01-01 to 9999-12-31,
a 20-octet serial derived from the public key) and Ed25519 signatures are deterministic. It is
what a Go TLS 1.3 stack (Syncthing's relay and discovery servers) accepts as a client or server
certificate; those servers verify nothing and identify the device by SHA-256 of the DER.

Why the DER is assembled here rather than by `cryptography.x509`: importing that module pulls in
`socket` (through `email.utils`), which protocol/ may not import, and a fixed layout cannot drift
with a library upgrade. Every certificate has the same 302-byte layout; only the serial, the key
and the signature differ. The tests check that the bytes equal what `cryptography.x509` builds
and that it parses them. Signing uses `cryptography`'s Ed25519, verifying libsodium's.

`verify_certificate` accepts exactly the certificates `make_certificate` produces: the DER must
equal, byte for byte, the certificate rebuilt for the key and signature it carries, and the
signature must verify. So one key has one certificate and one device ID, whereas a lenient X.509
parser also accepts an altered outer algorithm identifier or BIT STRING header (neither is
signed) and so gives the same key a second ID.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import Reason, VerificationError
from protocol.ids import DeviceId
from protocol.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, DeviceKey

CERTIFICATE_SIZE = 302  # every device certificate; the layout below fixes it
# Bound for message fields that carry a certificate; verify_certificate accepts only the exact size.
MAX_CERTIFICATE_SIZE = 4096
COMMON_NAME = "albumsync"
NOT_BEFORE = b"200101000000Z"  # UTCTime 2020-01-01 00:00:00
# GeneralizedTime; RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration date".
NOT_AFTER = b"99991231235959Z"
SERIAL_SIZE = 20
_SERIAL_DOMAIN = b"albumsync/v1/certificate-serial\0"


@dataclass(frozen=True, kw_only=True)
class CertifiedDevice:
    """What a verified certificate proves: this Ed25519 key is the device with this ID."""

    public_key: bytes
    device_id: DeviceId


@dataclass(frozen=True, kw_only=True)
class TlsCredentials:
    """PEM files for a TLS library (the relay client): the certificate and its PKCS#8 key."""

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)


def make_certificate(key: DeviceKey) -> bytes:
    """The device's certificate as DER; the same seed gives the same bytes, always."""
    tbs = _tbs_certificate(key.public)
    signature = Ed25519PrivateKey.from_private_bytes(key.seed).sign(tbs)
    return _certificate(tbs, signature)


def verify_certificate(der: bytes) -> CertifiedDevice:
    """The key and device ID a certificate proves; VerificationError(BAD_CERTIFICATE) if it lies."""
    if len(der) != CERTIFICATE_SIZE:
        raise _refuse(
            f"it is {len(der)} bytes, and albumsync device certificates are {CERTIFICATE_SIZE}"
        )
    public = bytes(der[_KEY_END - PUBLIC_KEY_SIZE : _KEY_END])
    signature = bytes(der[-SIGNATURE_SIZE:])
    tbs = _tbs_certificate(public)
    if der != _certificate(tbs, signature):
        raise _refuse("it is not an albumsync device certificate (an Ed25519 one, fields as ours)")
    # libsodium, not OpenSSL: OpenSSL accepts (R = identity, S = 0) for the small-order key
    # "identity", which would let anyone make a valid-looking certificate without a private key.
    try:
        sodium.crypto_sign_open(signature + tbs, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        raise _refuse("its self-signature does not verify") from None
    return CertifiedDevice(public_key=public, device_id=DeviceId.from_certificate(der))


def tls_credentials(key: DeviceKey) -> TlsCredentials:
    """The certificate and private key as PEM, for the daemon's TLS connections."""
    body = base64.encodebytes(make_certificate(key)).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    return TlsCredentials(
        certificate_pem=b"\n".join(
            [b"-----BEGIN CERTIFICATE-----", *lines, b"-----END CERTIFICATE-----", b""]
        ),
        private_key_pem=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _der(tag: int, *contents: bytes) -> bytes:
    """One DER TLV (definite, minimal length) holding the concatenated `contents`."""
    body = b"".join(contents)
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(content_hex: str) -> bytes:
    return _der(0x06, bytes.fromhex(content_hex))


_SEQUENCE, _SET, _INTEGER, _BIT_STRING, _OCTET_STRING, _BOOLEAN = 0x30, 0x31, 0x02, 0x03, 0x04, 0x01
_ED25519 = _der(_SEQUENCE, _oid("2b6570"))  # id-Ed25519 1.3.101.112, parameters absent (RFC 8410)
_VERSION_3 = _der(0xA0, _der(_INTEGER, b"\x02"))
_NAME = _der(
    _SEQUENCE,
    _der(_SET, _der(_SEQUENCE, _oid("550403"), _der(0x0C, COMMON_NAME.encode()))),  # CN, UTF8
)
_VALIDITY = _der(_SEQUENCE, _der(0x17, NOT_BEFORE), _der(0x18, NOT_AFTER))


def _extension(oid_hex: str, *, critical: bool, value: bytes) -> bytes:
    flag = _der(_BOOLEAN, b"\xff") if critical else b""
    return _der(_SEQUENCE, _oid(oid_hex), flag, _der(_OCTET_STRING, value))


_EXTENSIONS = _der(
    0xA3,
    _der(
        _SEQUENCE,
        # basicConstraints, cA absent = FALSE (DER omits the default)
        _extension("551d13", critical=True, value=_der(_SEQUENCE)),
        # keyUsage: digitalSignature only (bit 0; 7 unused bits)
        _extension("551d0f", critical=True, value=_der(_BIT_STRING, b"\x07\x80")),
        # extKeyUsage: serverAuth, clientAuth
        _extension(
            "551d25",
            critical=False,
            value=_der(_SEQUENCE, _oid("2b06010505070301"), _oid("2b06010505070302")),
        ),
    ),
)


def _tbs_certificate(public: bytes) -> bytes:
    """The signed part of the certificate for the Ed25519 key `public`."""
    spki = _der(_SEQUENCE, _ED25519, _der(_BIT_STRING, b"\x00" + public))
    serial = _der(_INTEGER, _serial(public))
    return _der(_SEQUENCE, _VERSION_3, serial, _ED25519, _NAME, _VALIDITY, _NAME, spki, _EXTENSIONS)


def _certificate(tbs: bytes, signature: bytes) -> bytes:
    return _der(_SEQUENCE, tbs, _ED25519, _der(_BIT_STRING, b"\x00" + signature))


def _serial(public: bytes) -> bytes:
    """20 octets in [2**158, 2**159), fixed by the key: positive, no leading zero, always 20."""
    digest = hashlib.sha256(_SERIAL_DOMAIN + public).digest()
    value = (int.from_bytes(digest[:SERIAL_SIZE], "big") >> 2) | (1 << 158)
    return value.to_bytes(SERIAL_SIZE, "big")


def _refuse(why: str) -> VerificationError:
    return VerificationError(Reason.BAD_CERTIFICATE, f"device certificate refused: {why}")


# The key is the last thing in the signed part; after it come the extensions, the outer
# algorithm identifier and the signature BIT STRING (tag, length, unused-bits byte, 64 bytes).
_KEY_END = CERTIFICATE_SIZE - len(_EXTENSIONS) - len(_ED25519) - (3 + SIGNATURE_SIZE)
