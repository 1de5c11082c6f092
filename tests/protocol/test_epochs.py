"""Key epochs: canonical sealed-key sets and the shared, append-only delivery ledger."""

from __future__ import annotations

import os

import pytest

from protocol.epochs import (
    Delivery,
    boxes_of_epoch,
    decode_sealed_keys,
    open_epoch_key,
    open_epoch_keys,
    record,
    seal_epoch_key,
)
from protocol.errors import DecodeError, Reason, VerificationError
from protocol.keys import seal
from tests.protocol.membership_helpers import EDITOR, OWNER, VIEWER


def test_sealed_keys_are_sorted_unique_and_open_for_their_recipient() -> None:
    key = os.urandom(32)
    sealed = seal_epoch_key(key, [VIEWER.public, OWNER.public, VIEWER.public])
    assert [r for r, _ in sealed] == sorted({VIEWER.public, OWNER.public})
    for recipient, box in sealed:
        device = OWNER if recipient == OWNER.public else VIEWER
        assert device.open_sealed(box) == key
    assert decode_sealed_keys([[r, b] for r, b in sealed], "keys") == sealed
    for bad in (
        [[r, b] for r, b in reversed(sealed)],
        [[OWNER.public, b"x" * 79]],
        [[b"k", sealed[0][1]]],
        [b"x"],
    ):
        with pytest.raises(DecodeError):
            decode_sealed_keys(bad, "keys")  # type: ignore[arg-type]


def test_the_ledger_is_shared_and_the_newest_box_wins() -> None:
    old, new = os.urandom(32), os.urandom(32)
    first = record(None, [Delivery(EDITOR.public, 0, (seal(EDITOR.public, old),))])
    second = record(
        first, [Delivery(EDITOR.public, 0, (seal(EDITOR.public, new), seal(EDITOR.public, new)))]
    )
    assert open_epoch_keys(first, EDITOR) == {0: old}
    assert open_epoch_keys(second, EDITOR) == {0: new, 1: new}
    assert set(boxes_of_epoch(second, 1)) == {EDITOR.public}
    assert boxes_of_epoch(second, 2) == {}
    assert open_epoch_keys(second, OWNER) == {}
    assert open_epoch_key(second, EDITOR, 0) == new
    assert open_epoch_key(first, EDITOR, 0) == old
    assert open_epoch_key(second, EDITOR, 2) is None
    assert open_epoch_key(second, OWNER, 0) is None


def test_a_box_that_does_not_hold_a_key_is_reported() -> None:
    ledger = record(None, [Delivery(EDITOR.public, 0, (seal(EDITOR.public, b"short"),))])
    with pytest.raises(VerificationError) as err:
        open_epoch_keys(ledger, EDITOR)
    assert err.value.reason is Reason.DECRYPT_FAILED


def test_a_long_ledger_is_walked_without_recursion() -> None:
    box = seal(EDITOR.public, os.urandom(32))
    ledger = record(None, (Delivery(OWNER.public, n, (box,)) for n in range(50_000)))
    assert ledger is not None
    assert sum(1 for _ in ledger) == 50_000
    assert set(boxes_of_epoch(ledger, 5)) == {OWNER.public}
