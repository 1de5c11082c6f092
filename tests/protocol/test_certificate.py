"""Device certificates: determinism, exact verification, and real TLS 1.3 use with client auth."""

import datetime
import hashlib
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.certificate import (
    CERTIFICATE_SIZE,
    MAX_CERTIFICATE_SIZE,
    CertifiedDevice,
    make_certificate,
    tls_credentials,
    verify_certificate,
)
from protocol.errors import Reason, VerificationError
from protocol.ids import DeviceId
from protocol.keys import DeviceKey

SEED = bytes(range(32))
A2 = settings(max_examples=5000, deadline=None)  # TESTPLAN A2: 5k examples per decoder in PR
# Pinned: if one byte of the layout changed, every existing device ID would change.
GOLDEN_ID = "FKV2NCI-S47C5RW-ZCKCFSZ-DP5Z5NB-HTHKXHD-3IQBKYC-DKLTQDP-6O7K7QP"


def _refused(der: bytes, match: str | None = None) -> None:
    with pytest.raises(VerificationError, match=match) as err:
        verify_certificate(der)
    assert err.value.reason is Reason.BAD_CERTIFICATE


def test_same_seed_same_der_always() -> None:
    der = make_certificate(DeviceKey(SEED))
    assert make_certificate(DeviceKey(SEED)) == der
    assert make_certificate(DeviceKey(bytes(SEED))) == der
    assert make_certificate(DeviceKey(os.urandom(32))) != der
    assert str(DeviceId.from_certificate(der)) == GOLDEN_ID


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_der_is_what_cryptography_x509_builds(seed: bytes) -> None:
    # protocol/ assembles the DER itself (cryptography.x509 imports socket); it must be exactly
    # what cryptography's CertificateBuilder makes from the same fields.
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes_raw()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "albumsync")])
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    expected = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(_serial_for(public))
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .sign(private, algorithm=None)
        .public_bytes(serialization.Encoding.DER)
    )
    der = make_certificate(DeviceKey(seed))
    assert der == expected
    assert len(der) == CERTIFICATE_SIZE
    assert verify_certificate(der).public_key == public


def test_tls_credentials_are_the_certificate_and_key() -> None:
    key = DeviceKey(os.urandom(32))
    creds = tls_credentials(key)
    cert = x509.load_pem_x509_certificate(creds.certificate_pem)
    assert cert.public_bytes(serialization.Encoding.DER) == make_certificate(key)
    private = serialization.load_pem_private_key(creds.private_key_pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert private.public_key().public_bytes_raw() == key.public
    assert "private_key_pem" not in repr(creds)


def test_verify_returns_the_key_and_sha256_of_the_der() -> None:
    key = DeviceKey(os.urandom(32))
    der = make_certificate(key)
    assert verify_certificate(der) == CertifiedDevice(
        public_key=key.public, device_id=DeviceId(hashlib.sha256(der).digest())
    )


def test_certificate_fields() -> None:
    key = DeviceKey(SEED)
    cert = x509.load_der_x509_certificate(make_certificate(key))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "albumsync")])
    assert cert.subject == name
    assert cert.issuer == name
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    assert cert.not_valid_before_utc == datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    assert cert.not_valid_after_utc.year == 9999
    assert 2**158 <= cert.serial_number < 2**159  # positive, 20 octets, never a leading zero
    public = cert.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == key.public  # PyNaCl and cryptography agree on the key from one seed
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(cert)


def test_serial_differs_per_key() -> None:
    serials = {
        x509.load_der_x509_certificate(make_certificate(DeviceKey(os.urandom(32)))).serial_number
        for _ in range(5)
    }
    assert len(serials) == 5


def test_every_byte_tampered_is_refused() -> None:
    der = make_certificate(DeviceKey(SEED))
    for position in range(len(der)):
        for flip in (0x01, 0x80, 0xFF):
            tampered = bytearray(der)
            tampered[position] ^= flip
            _refused(bytes(tampered))


def test_truncated_or_extended_is_refused() -> None:
    der = make_certificate(DeviceKey(SEED))
    for cut in (1, 2, 64, 65, len(der) - 1):
        _refused(der[:-cut])
    _refused(der + b"\x00")
    _refused(b"")


def test_oversized_input_is_refused() -> None:
    _refused(bytes(MAX_CERTIFICATE_SIZE + 1), match="4097 bytes")


def test_signature_by_another_key_is_refused() -> None:
    # Every field as albumsync makes them for `victim`, but signed by `forger`.
    victim, forger = (ed25519.Ed25519PrivateKey.generate() for _ in range(2))
    genuine = x509.load_der_x509_certificate(
        make_certificate(DeviceKey(victim.private_bytes_raw()))
    )
    forged = _copy_of(genuine, victim.public_key()).sign(forger, algorithm=None)
    forged_der = forged.public_bytes(serialization.Encoding.DER)
    assert len(forged_der) == len(genuine.public_bytes(serialization.Encoding.DER))
    _refused(forged_der, match="self-signature does not verify")


def test_small_order_key_with_trivial_signature_is_refused() -> None:
    # Key = the identity point, signature R = identity, S = 0: satisfies the cofactorless
    # equation for every message; OpenSSL's Ed25519 verify (cryptography 50) accepts it.
    identity = b"\x01" + bytes(31)
    trivial = identity + bytes(32)
    dummy = ed25519.Ed25519PrivateKey.generate()
    genuine = x509.load_der_x509_certificate(make_certificate(DeviceKey(dummy.private_bytes_raw())))
    identity_key = ed25519.Ed25519PublicKey.from_public_bytes(identity)
    template = x509.load_der_x509_certificate(
        _copy_of(genuine, identity_key, serial=_serial_for(identity))
        .sign(dummy, algorithm=None)
        .public_bytes(serialization.Encoding.DER)
    )
    forged = template.public_bytes(serialization.Encoding.DER)[:-64] + trivial
    _refused(forged, match="self-signature does not verify")


def test_ed25519_certificate_with_other_fields_is_refused() -> None:
    # A perfectly valid self-signed Ed25519 certificate, but not one albumsync makes.
    key = ed25519.Ed25519PrivateKey.generate()
    genuine = x509.load_der_x509_certificate(make_certificate(DeviceKey(key.private_bytes_raw())))
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "albumsynd")])
    builder = _copy_of(genuine, key.public_key(), name=other)
    der = builder.sign(key, algorithm=None).public_bytes(serialization.Encoding.DER)
    _refused(der, match="not an albumsync device certificate")


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_rsa_and_ecdsa_certificates_are_refused(kind: str) -> None:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "albumsync")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))
        .sign(private, hashes.SHA256())
    )
    cert.verify_directly_issued_by(cert)  # a valid self-signed certificate, just not Ed25519
    _refused(cert.public_bytes(serialization.Encoding.DER), match="device certificate refused")


@A2
@given(st.binary(max_size=MAX_CERTIFICATE_SIZE + 10))
def test_A2_random_bytes_raise_only_verification_error(data: bytes) -> None:
    _refused(data)


_VALID = make_certificate(DeviceKey(SEED))


@settings(max_examples=1000, deadline=None)  # with the exhaustive test above; A2 is 5k random
@given(
    st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ),
    st.integers(0, 8),
)
def test_A2_mutated_certificates_raise_only_verification_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    tampered = bytearray(_VALID)
    for position, value in edits:
        tampered[position] = value
    candidate = bytes(tampered[: len(tampered) - cut])
    if candidate == _VALID:
        assert verify_certificate(candidate).public_key == DeviceKey(SEED).public
    else:
        _refused(candidate)


def test_tls13_handshake_with_client_certificates(tmp_path: Path) -> None:
    # As on the relay leg: the client does not verify (it pins the peer by device ID afterwards);
    # the server demands a client certificate, which Python can only do by trusting it (pinning).
    server_key, client_key = DeviceKey(os.urandom(32)), DeviceKey(os.urandom(32))
    server_ctx = _context(tmp_path, server_key, server_side=True, trust=client_key)
    client_ctx = _context(tmp_path, client_key, server_side=False, trust=None)
    seen = _handshake(server_ctx, client_ctx)
    assert seen.errors == []
    assert seen.version == "TLSv1.3"
    assert seen.reply == b"ok"
    assert seen.server_saw is not None
    assert seen.client_saw is not None
    assert DeviceId.from_certificate(seen.server_saw) == _id_of(client_key)
    assert DeviceId.from_certificate(seen.client_saw) == _id_of(server_key)
    assert verify_certificate(seen.server_saw).public_key == client_key.public
    assert verify_certificate(seen.client_saw).public_key == server_key.public


def test_tls_server_refuses_a_client_certificate_it_did_not_pin(tmp_path: Path) -> None:
    server_key, client_key = DeviceKey(os.urandom(32)), DeviceKey(os.urandom(32))
    stranger = DeviceKey(os.urandom(32))
    server_ctx = _context(tmp_path, server_key, server_side=True, trust=stranger)
    client_ctx = _context(tmp_path, client_key, server_side=False, trust=None)
    seen = _handshake(server_ctx, client_ctx)
    assert any(isinstance(e, ssl.SSLError) and "certificate" in str(e) for e in seen.errors)
    assert seen.server_saw is None
    assert seen.reply is None


# --- helpers -------------------------------------------------------------------------------


def _id_of(key: DeviceKey) -> DeviceId:
    return DeviceId.from_certificate(make_certificate(key))


def _serial_for(public: bytes) -> int:
    digest = hashlib.sha256(b"albumsync/v1/certificate-serial\0" + public).digest()
    return (int.from_bytes(digest[:20], "big") >> 2) | (1 << 158)


def _copy_of(
    cert: x509.Certificate,
    public: ed25519.Ed25519PublicKey,
    *,
    name: x509.Name | None = None,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """A builder with every field of `cert` (or another name or serial) for `public`."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(name or cert.subject)
        .issuer_name(name or cert.issuer)
        .public_key(public)
        .serial_number(serial or cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder


def _context(
    tmp_path: Path, key: DeviceKey, *, server_side: bool, trust: DeviceKey | None
) -> ssl.SSLContext:
    creds = tls_credentials(key)
    name = "server" if server_side else "client"
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(creds.certificate_pem)
    key_file.write_bytes(creds.private_key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_file, key_file)
    if server_side:
        assert trust is not None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=tls_credentials(trust).certificate_pem.decode())
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class _Seen:
    version: str | None = None
    server_saw: bytes | None = None
    client_saw: bytes | None = None
    reply: bytes | None = None
    errors: list[Exception] = field(default_factory=list)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> _Seen:
    """Run both ends of a TLS handshake over a socketpair; record what each end saw."""
    seen = _Seen()
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                seen.server_saw = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen.errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock) as tls:
            seen.version = tls.version()
            seen.client_saw = tls.getpeercert(binary_form=True)
            seen.reply = tls.recv(2) or None
    except (ssl.SSLError, OSError) as error:
        seen.errors.append(error)
    finally:
        thread.join(timeout=20)
        server_sock.close()
        client_sock.close()
    return seen
