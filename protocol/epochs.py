"""Key epochs: the album keys the owner seals to devices, and the record of who received which.

Epoch n's key is 32 random bytes drawn by the owner. It reaches a device only inside a sealed
box (crypto_box_seal to the device's X25519 key) written into a membership-log entry: the genesis
and each epoch-starting entry seal the new key to every device that may still read; an invite seals
every epoch key so far to the invitee, so history stays readable (removal secrecy, not forward
secrecy for newcomers). Anyone can check *to whom* a key was sealed; only the recipient can open
its box.

`KeyLedger` is the append-only list of deliveries in log order, shared between successive
membership states (each new state adds a link and never changes an old one), so a 10,000-entry log
does not copy its key history 10,000 times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from protocol.encoding import Value
from protocol.errors import DecodeError, Reason, VerificationError
from protocol.keys import PUBLIC_KEY_SIZE, SEAL_OVERHEAD, DeviceKey, seal

EPOCH_KEY_SIZE = 32
SEALED_KEY_SIZE = EPOCH_KEY_SIZE + SEAL_OVERHEAD
MAX_EPOCHS = 10_000  # an invite carries one box per epoch; this keeps it under 1 MiB

SealedKeys = tuple[tuple[bytes, bytes], ...]
"""(recipient Ed25519 key, sealed box) pairs, strictly increasing by recipient: one encoding."""


@dataclass(frozen=True)
class Delivery:
    """Boxes for `recipient` holding the keys of epochs first_epoch, first_epoch + 1, ..."""

    recipient: bytes
    first_epoch: int
    boxes: tuple[bytes, ...]


@dataclass(frozen=True, eq=False, repr=False)
class KeyLedger:
    """One link of the delivery list, newest first; `rest` is the ledger before it."""

    delivery: Delivery
    rest: KeyLedger | None

    def __iter__(self) -> Iterator[Delivery]:
        """Deliveries newest first (iterative: the list may be long)."""
        link: KeyLedger | None = self
        while link is not None:
            yield link.delivery
            link = link.rest


def seal_epoch_key(key: bytes, recipients: Iterable[bytes]) -> SealedKeys:
    """Seal one epoch key to each recipient, in canonical order."""
    return tuple((recipient, seal(recipient, key)) for recipient in sorted(set(recipients)))


def encode_sealed_keys(keys: SealedKeys) -> list[list[bytes]]:
    return [[recipient, box] for recipient, box in keys]


def decode_sealed_keys(items: Sequence[Value], what: str) -> SealedKeys:
    """(recipient, box) pairs from a decoded list; DecodeError unless canonical and well-sized."""
    pairs: list[tuple[bytes, bytes]] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2):
            raise DecodeError(f"{what}: each sealed key is a [recipient, box] pair")
        recipient, box = item
        if not (isinstance(recipient, bytes) and len(recipient) == PUBLIC_KEY_SIZE):
            raise DecodeError(f"{what}: a recipient is a {PUBLIC_KEY_SIZE}-byte device key")
        if pairs and recipient <= pairs[-1][0]:
            raise DecodeError(f"{what}: recipients must be sorted and unique")
        pairs.append((recipient, check_box(box, what)))
    return tuple(pairs)


def check_box(box: Value, what: str) -> bytes:
    """A sealed epoch key of the right size, or DecodeError."""
    if not (isinstance(box, bytes) and len(box) == SEALED_KEY_SIZE):
        raise DecodeError(f"{what}: a sealed epoch key is {SEALED_KEY_SIZE} bytes")
    return box


def record(ledger: KeyLedger | None, deliveries: Iterable[Delivery]) -> KeyLedger | None:
    """The ledger with `deliveries` appended; `ledger` itself is unchanged."""
    for delivery in deliveries:
        ledger = KeyLedger(delivery, ledger)
    return ledger


def boxes_of_epoch(ledger: KeyLedger | None, epoch: int) -> dict[bytes, bytes]:
    """Recipient -> box for one epoch, over every delivery so far (the newest box wins)."""
    found: dict[bytes, bytes] = {}
    for delivery in ledger or ():
        index = epoch - delivery.first_epoch
        if 0 <= index < len(delivery.boxes):
            found.setdefault(delivery.recipient, delivery.boxes[index])
    return found


def open_epoch_keys(ledger: KeyLedger | None, device: DeviceKey) -> dict[int, bytes]:
    """Epoch -> key for every box addressed to `device`; DECRYPT_FAILED if one will not open."""
    keys: dict[int, bytes] = {}
    for delivery in ledger or ():
        if delivery.recipient != device.public:
            continue
        for index, box in enumerate(delivery.boxes):
            epoch = delivery.first_epoch + index
            if epoch not in keys:
                keys[epoch] = _open(device, box, epoch)
    return dict(sorted(keys.items()))


def open_epoch_key(ledger: KeyLedger | None, device: DeviceKey, epoch: int) -> bytes | None:
    """One epoch's key if a box of it is addressed to `device` (the newest box), else None."""
    box = boxes_of_epoch(ledger, epoch).get(device.public)
    return None if box is None else _open(device, box, epoch)


def _open(device: DeviceKey, box: bytes, epoch: int) -> bytes:
    key = device.open_sealed(box)
    if len(key) != EPOCH_KEY_SIZE:
        raise VerificationError(
            Reason.DECRYPT_FAILED, f"the sealed key of epoch {epoch} is not {EPOCH_KEY_SIZE} bytes"
        )
    return key
