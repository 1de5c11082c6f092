"""Files fetched while the scan lock is taken are put in place together, in one commit, and a
file in the way of one of them does not hold up the others."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from daemon.transfers import Transfers
from tests.daemon.test_engine_sync import running, share_by_code, tree, two_devices, until

pytestmark = pytest.mark.timeout(60)
PHOTOS = 10


async def test_finishes_queued_behind_the_scan_lock_go_in_one_batch(tmp_path: Path) -> None:
    owner, member, photos, target = await two_devices(tmp_path, PHOTOS)
    transfers: Transfers = member.engine.transfers  # type: ignore[assignment]
    batches: list[int] = []
    finish_batch = transfers._finish_batch

    async def counted(batch: list[Any]) -> None:
        batches.append(len(batch))
        await finish_batch(batch)

    transfers._finish_batch = counted  # type: ignore[method-assign]
    async with running(owner, member):
        # Taken before the member joins, as a long scan would hold it: no fetched file can be
        # put in place, however fast the fetches are.
        async with member.engine.publisher.lock:
            await share_by_code(owner, member, photos, target, PHOTOS, name="Batches")
            await until(lambda: len(transfers._to_finish) == PHOTOS, what="all files fetched")
            assert not any((target / f"IMG_{i}.jpg").exists() for i in range(PHOTOS))
            in_the_way = os.urandom(1_000)
            (target / "IMG_3.jpg").write_bytes(in_the_way)  # made here meanwhile
        await until(lambda: len(tree(target)) == PHOTOS + 1, limit=30, what="all files placed")
    assert batches[0] == PHOTOS
    copies = [p for p in target.iterdir() if p.name.startswith("IMG_3") and p.name != "IMG_3.jpg"]
    assert [p.read_bytes() for p in copies] == [in_the_way]
    assert (target / "IMG_3.jpg").read_bytes() == (photos / "IMG_3.jpg").read_bytes()
    originals = tree(photos)
    assert {k: v for k, v in tree(target).items() if k in originals} == originals
