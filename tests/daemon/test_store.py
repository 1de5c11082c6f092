"""The state store under concurrent use from many tasks, as the engine uses it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon.store import Store


async def test_concurrent_writes_from_many_tasks(tmp_path: Path) -> None:
    """Regression: unclosed aiosqlite cursors made concurrent executemany fail with 'API misuse'."""
    store = await Store.open(tmp_path / "state.db")
    album = os.urandom(32)
    await store.put_album(album, "/x", "active", 0)

    async def one(i: int) -> None:
        await store.put_local_file(
            album, {"path": f"f{i}", "size": 1, "mtime_ns": 1, "inode": i, "state": "synced"}
        )
        await store.put_chunk_index(album, f"f{i}", [os.urandom(32) for _ in range(20)])
        await store.add_manifest_entries(album, [(os.urandom(32), i, os.urandom(32), b"e")])

    await asyncio.gather(*(one(i) for i in range(200)))
    assert len(await store.fetchall("SELECT * FROM chunk_index")) == 4000
    assert len(await store.local_files(album)) == 200
    await store.close()


async def test_a_rollback_never_takes_another_tasks_write_with_it(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db")
    inside = asyncio.Event()

    async def write_then_fail() -> None:
        async with store.transaction():
            await store.put_album(b"a" * 32, "/a", "active", 0)
            inside.set()
            await asyncio.sleep(0.1)  # another task writes meanwhile
            raise RuntimeError("boom")

    async def failing_transaction() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await write_then_fail()

    async def other_write() -> None:
        await inside.wait()
        await store.put_album(b"b" * 32, "/b", "active", 0)

    await asyncio.gather(failing_transaction(), other_write())
    assert [bytes(r["album_id"]) for r in await store.albums()] == [b"b" * 32]
    await store.close()
