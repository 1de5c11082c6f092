"""Device keys: determinism, domain separation, X25519 derivation, sealed boxes."""

import os

import pytest

from protocol.errors import LocalProtocolError, Reason, VerificationError
from protocol.keys import DeviceKey, seal, verify_signature, x25519_public_from_ed25519

SEED = bytes(range(32))


def test_same_seed_same_keys_and_signatures() -> None:
    a, b = DeviceKey(SEED), DeviceKey(SEED)
    assert a.public == b.public
    assert a.sign(b"x", b"msg") == b.sign(b"x", b"msg")
    assert a.x25519_public == x25519_public_from_ed25519(a.public)


def test_signature_is_bound_to_its_domain() -> None:
    key = DeviceKey(SEED)
    sig = key.sign(b"manifest", b"payload")
    verify_signature(key.public, b"manifest", b"payload", sig)
    for domain, message in [(b"membership", b"payload"), (b"manifest", b"payloaD")]:
        with pytest.raises(VerificationError) as err:
            verify_signature(key.public, domain, message, sig)
        assert err.value.reason is Reason.BAD_SIGNATURE
    other = DeviceKey(os.urandom(32))
    with pytest.raises(VerificationError):
        verify_signature(other.public, b"manifest", b"payload", sig)


def test_sealed_box_opens_only_for_its_recipient() -> None:
    alice, bob = DeviceKey(os.urandom(32)), DeviceKey(os.urandom(32))
    box = seal(alice.public, b"epoch key")
    assert alice.open_sealed(box) == b"epoch key"
    with pytest.raises(VerificationError) as err:
        bob.open_sealed(box)
    assert err.value.reason is Reason.DECRYPT_FAILED


def test_bad_inputs_raise_protocol_errors() -> None:
    with pytest.raises(LocalProtocolError):
        DeviceKey(b"short")
    with pytest.raises(LocalProtocolError):
        DeviceKey(SEED).sign(b"a\0b", b"")
    with pytest.raises(VerificationError):
        verify_signature(b"\x00" * 31, b"d", b"m", b"\x00" * 64)
    with pytest.raises(VerificationError):
        x25519_public_from_ed25519(b"\x00" * 31)
