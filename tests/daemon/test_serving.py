"""Serving chunks: the per-file location cache never serves wrong bytes and follows moves."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon import transfers as transfers_module
from protocol.chunks import CHUNK_SIZE, chunk_id
from tests.daemon.test_engine_sync import make_core, running, until

pytestmark = pytest.mark.timeout(60)


async def test_served_chunks_follow_a_moved_file_and_refuse_changed_bytes(tmp_path: Path) -> None:
    core = await make_core(tmp_path / "home", "Server")
    folder = tmp_path / "album"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(os.urandom(CHUNK_SIZE + 1000))
    async with running(core):
        album = await core.engine.create_album(folder, "Serving")
        await until(lambda: album.view is not None and len(album.view.files) == 1, what="publish")
        assert album.view is not None
        assert album.folder is not None
        chunks = [c.chunk_id for c in album.view.files[0].chunks]
        transfers = core.engine.transfers
        served = [await transfers._read_served(album, c) for c in chunks]  # type: ignore[attr-defined]
        assert [chunk_id(d) for d in served if d is not None] == chunks
        assert len(transfers._located) == 2  # type: ignore[attr-defined]  # one lookup, whole file

        # Moved by this daemon (as a conflict rename would): the cached path is stale.
        await transfers._move(album, album.folder, "a.jpg", "b.jpg")  # type: ignore[attr-defined]
        again = await transfers._read_served(album, chunks[1])  # type: ignore[attr-defined]
        assert again is not None
        assert chunk_id(again) == chunks[1]
        assert transfers._located[(album.album_id, chunks[1])][0] == "b.jpg"  # type: ignore[attr-defined]

        # Changed on disk behind the index: nothing is served rather than other bytes.
        await asyncio.to_thread((folder / "b.jpg").write_bytes, os.urandom(CHUNK_SIZE + 1000))
        assert await transfers._read_served(album, chunks[0]) is None  # type: ignore[attr-defined]
        assert await transfers._read_served(album, os.urandom(32)) is None  # type: ignore[attr-defined]


async def test_the_location_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfers_module, "MAX_LOCATED", 3)
    core = await make_core(tmp_path / "home", "Server")
    folder = tmp_path / "album"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(os.urandom(CHUNK_SIZE + 1))
    async with running(core):
        album = await core.engine.create_album(folder, "Bounded")
        await until(lambda: album.view is not None and len(album.view.files) == 4, what="publish")
        assert album.view is not None
        for file in album.view.files:
            for c in file.chunks:
                assert await core.engine.transfers._read_served(album, c.chunk_id)  # type: ignore[attr-defined]
                assert len(core.engine.transfers._located) <= 3 + 2  # type: ignore[attr-defined]
