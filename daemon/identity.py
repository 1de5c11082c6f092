"""This device's identity: the Ed25519 seed in the store, its certificate and device ID."""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass

from daemon.errors import ConfigError, NotInitialisedError
from daemon.store import Store
from protocol.certificate import make_certificate
from protocol.ids import DeviceId
from protocol.keys import DeviceKey

MAX_DEVICE_NAME = 64


@dataclass(frozen=True)
class Identity:
    key: DeviceKey
    certificate: bytes
    device_id: DeviceId
    name: str

    @classmethod
    def from_seed(cls, seed: bytes, name: str) -> Identity:
        key = DeviceKey(seed)
        cert = make_certificate(key)
        return cls(key=key, certificate=cert, device_id=DeviceId.from_certificate(cert), name=name)


def check_device_name(name: str) -> str:
    """A device name people see on other devices: 1-64 printable characters, in NFC (as sealed)."""
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned or len(cleaned) > MAX_DEVICE_NAME or not cleaned.isprintable():
        raise ConfigError(f"a device name is 1 to {MAX_DEVICE_NAME} printable characters")
    return cleaned


async def create_identity(store: Store, name: str) -> Identity:
    """Make and store a new identity; the store must not have one yet."""
    seed = os.urandom(32)
    name = check_device_name(name)
    await store.save_identity(seed, name, int(time.time()))
    return Identity.from_seed(seed, name)


async def load_identity(store: Store) -> Identity:
    found = await store.load_identity()
    if found is None:
        raise NotInitialisedError(
            f"no device identity in {store.path.parent}: run `albumsync init --name NAME` first"
        )
    seed, name = found
    return Identity.from_seed(seed, name)
