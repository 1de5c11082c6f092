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


async def test_put_indexed_files_equals_one_by_one(tmp_path: Path) -> None:
    """The batched index write leaves exactly what per-file writes leave, replacing old chunks."""
    rows = [
        ({"path": f"f{i}", "size": i, "mtime_ns": 1, "inode": i, "state": "synced"}, ids)
        for i, ids in enumerate([[os.urandom(32) for _ in range(n)] for n in (1, 3, 0, 2)])
    ]
    album = os.urandom(32)
    one = await Store.open(tmp_path / "one.db")
    batch = await Store.open(tmp_path / "batch.db")
    for store in (one, batch):
        await store.put_album(album, "/x", "active", 0)
        await store.put_chunk_index(album, "f1", [os.urandom(32)])  # an older version's chunks
    for row, ids in rows:
        await one.put_local_file(album, row)
        await one.put_chunk_index(album, str(row["path"]), ids)
    await batch.put_indexed_files(album, rows)
    query = "SELECT path, idx, chunk_id FROM chunk_index ORDER BY path, idx"
    assert [tuple(r) for r in await batch.fetchall(query)] == [
        tuple(r) for r in await one.fetchall(query)
    ]
    assert [dict(r) for r in await batch.local_files(album)] == [
        dict(r) for r in await one.local_files(album)
    ]
    assert len(await batch.fetchall(query)) == 6
    with pytest.raises(Exception, match="uneven"):
        await batch.put_indexed_files(album, [rows[0], ({"path": "g", "size": 1}, [])])
    await one.close()
    await batch.close()
