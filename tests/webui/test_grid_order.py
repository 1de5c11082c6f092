"""The grid order (daemon/reports.py): cached per album, rebuilt exactly when what it reads changes.

The album page and the files listing of a 10,000-photo album read one page of the order; sorting
every file on each call dominated the page's server time. These tests pin down when the cached
order must be rebuilt: a capture time learned, a local-only file added or changed in place, a view
with other files; and when it must not: a new view object with the same files.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon import reports
from daemon.album import Album
from daemon.core import Core
from protocol.rights import Role
from tests.webui.test_api import open_core, started, until
from tests.webui.test_pages import add_local_file, jpeg, member_album

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def core(tmp_path: Path) -> Any:
    home = tmp_path / "home"
    home.mkdir()
    core = await open_core(home)
    yield core
    await core.close()


@pytest.fixture
async def running_core(tmp_path: Path) -> AsyncIterator[Core]:
    home = tmp_path / "running"
    home.mkdir()
    async with started(home) as core:
        yield core


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "Summer 2026"
    path.mkdir()
    return path.resolve()


def paths(core: Core, album: Album) -> list[str]:
    return [f.path for f in reports.files(core, album, 0, 1000)]


async def decode(core: Core, album: Album, name: str) -> None:
    """Make the file's thumbnail, as the page's first view does: its capture time is learned."""
    assert album.path is not None
    target = album.path / name
    await core.thumbnails.thumbnail(
        reports.local_cache_key(album.local[name]), lambda: os.open(target, os.O_RDONLY)
    )


async def test_grid_order_is_cached_and_follows_capture_times_and_local_files(
    core: Core, folder: Path
) -> None:
    album = member_album(core, Role.VIEWER, folder)
    add_local_file(album, "a.jpg", jpeg(taken="2026:07:03 10:00:00"))
    add_local_file(album, "b.jpg", jpeg(taken="2026:07:01 10:00:00"))
    add_local_file(album, "c.txt", b"notes")
    assert paths(core, album) == ["a.jpg", "b.jpg", "c.txt"]  # no capture time known: by path
    first = reports.grid_order(core, album)
    assert reports.grid_order(core, album) is first  # nothing changed: not sorted again

    await decode(core, album, "a.jpg")
    assert paths(core, album) == ["a.jpg", "b.jpg", "c.txt"]
    assert reports.grid_order(core, album) is not first
    await decode(core, album, "b.jpg")
    assert paths(core, album) == ["b.jpg", "a.jpg", "c.txt"]
    listed = reports.files(core, album, 0, 10)
    assert [f.captured for f in listed] == [1782900000, 1783072800, None]

    # A reconcile evaluates a new view object with the same files: the order is kept.
    cached = reports.grid_order(core, album)
    album.refresh()
    assert reports.grid_order(core, album) is cached

    # A new local file joins the files without a capture time, by path.
    add_local_file(album, "0.jpg", jpeg())
    assert paths(core, album) == ["b.jpg", "a.jpg", "0.jpg", "c.txt"]

    # A.jpg rewritten (no EXIF any more) and its row updated in place: its old capture time no
    # longer applies (its thumbnail key is its new size and time).
    (folder / "a.jpg").write_bytes(jpeg((320, 200)))
    st = (folder / "a.jpg").stat()
    row = album.local["a.jpg"]
    row.size, row.mtime_ns = st.st_size, st.st_mtime_ns + 1
    assert paths(core, album) == ["b.jpg", "0.jpg", "a.jpg", "c.txt"]

    # Pages are slices of one order.
    pages = [f for offset in range(4) for f in reports.files(core, album, offset, 1)]
    assert pages == reports.files(core, album, 0, 4)
    assert reports.files(core, album, 4, 10) == []


async def test_a_file_gone_from_the_folder_leaves_the_order(core: Core, folder: Path) -> None:
    album = member_album(core, Role.VIEWER, folder)
    add_local_file(album, "a.jpg", jpeg())
    add_local_file(album, "b.jpg", jpeg())
    assert paths(core, album) == ["a.jpg", "b.jpg"]
    del album.local["a.jpg"]
    assert paths(core, album) == ["b.jpg"]


async def test_published_files_follow_the_view(running_core: Core, folder: Path) -> None:
    """Published files are "synced" rows, so only the view tells the order they changed."""
    (folder / "b.jpg").write_bytes(jpeg())
    album = await running_core.engine.create_album(folder, "Summer 2026")

    async def published(count: int) -> bool:
        return album.view is not None and len(album.view.files) == count

    await until(lambda: published(1))
    assert paths(running_core, album) == ["b.jpg"]
    (folder / "a.jpg").write_bytes(jpeg())
    running_core.publisher.schedule(album)
    await until(lambda: published(2))
    assert paths(running_core, album) == ["a.jpg", "b.jpg"]
    assert all(f.local == "synced" for f in reports.files(running_core, album, 0, 10))
