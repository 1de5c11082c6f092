"""TESTPLAN D1: an unmounted, replaced, moved or unmarked album folder never becomes mass deletion.

The owner's album lives on a bind mount (a stand-in for an external disk). Each case checks the
two things that matter: the member's copy never loses a file (no delete reached the wire: nothing
in its trash, nothing gone), and the owner's status says what is wrong. Moving the folder is
recovered by pointing the album at the new place, which works only where the marker names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Daemon, albumsync, free_port
from tests.e2e.test_sync import cli, tree, wait

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.timeout(240)]

RESCAN = "1"  # seconds: each "nothing was deleted" check below waits several full scans
SETTLE = 4.0


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True)


def _album(daemon: Daemon, album: str) -> dict[str, Any]:
    status, body, _ = daemon.request("GET", f"/api/v1/albums/{album}")
    assert status == 200, body
    return body


def _inodes(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


def _member_untouched(target: Path, expected: dict[str, str]) -> None:
    """No photo left the member's copy, and nothing went to its trash."""
    time.sleep(SETTLE)
    assert tree(target) == expected
    trash = target / ".albumsync" / "trash"
    assert not trash.exists() or not any(p.is_file() for p in trash.rglob("*"))


def _write_photos(folder: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        (folder / f"IMG_{i:04}.jpg").write_bytes(os.urandom(200_000 + i))


@pytest.fixture
def mountpoint(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("D1 needs root to mount and unmount the album's disk")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    while subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_D1_unmount_move_and_marker(make_daemon, tmp_path: Path, mountpoint: Path) -> None:
    # A fixed peer port: the member must find the owner again after each restart.
    port = str(free_port())
    owner = make_daemon("Owner", extra_args=["--rescan", RESCAN, "--listen", f"127.0.0.1:{port}"])
    member = make_daemon("Member", extra_args=["--rescan", RESCAN])
    for daemon in (owner, member):
        daemon.init()
        daemon.start()
    disk = tmp_path / "disk"
    disk.mkdir()
    _write_photos(disk, 0, 5)
    _mount("--bind", str(disk), str(mountpoint))
    album = cli(owner, "album", "create", str(mountpoint), "--name", "External disk")
    albumsync(owner.home, "status", "--wait-synced", "60")
    code = cli(owner, "invite", "create", album, "--role", "viewer")
    target = tmp_path / "copy"
    cli(member, "invite", "accept", code, "--path", str(target))
    wait(lambda: target.exists() and tree(target) == tree(disk), limit=60, what="first sync")
    synced = tree(target)
    member_files = _inodes(target)

    # (a) The disk is unmounted while the daemon runs: paused, nothing deleted anywhere.
    _umount(mountpoint)
    wait(lambda: _album(owner, album)["folder_state"] != "ok", limit=5, what="owner notices")
    assert _album(owner, album)["folder_state"] in ("marker_missing", "folder_missing")
    _member_untouched(target, synced)

    # ... and mounted again: sync resumes, nothing is downloaded again.
    _mount("--bind", str(disk), str(mountpoint))
    wait(lambda: _album(owner, album)["folder_state"] == "ok", limit=10, what="owner recovers")
    _write_photos(disk, 5, 1)
    wait(lambda: len(tree(target)) == 6, limit=30, what="a new photo after the remount")
    assert {k: v for k, v in _inodes(target).items() if k in member_files} == member_files

    # (b) Stopped, an empty disk is mounted in its place, started: still nothing deleted.
    owner.stop()
    _umount(mountpoint)
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint))
    owner.start()
    wait(lambda: _album(owner, album)["folder_state"] == "marker_missing", limit=10)
    _member_untouched(target, tree(disk))
    owner.stop()
    _umount(mountpoint)

    # (c) The folder was moved while the daemon was stopped: re-pointing finds it by its marker.
    moved = tmp_path / "moved"
    shutil.move(str(disk), str(moved))
    owner.start()
    assert _album(owner, album)["folder_state"] in ("marker_missing", "folder_missing")
    status, body, _ = owner.request("POST", f"/api/v1/albums/{album}/folder", {"path": str(moved)})
    assert status == 200, body
    assert body["folder_state"] == "ok"
    assert body["path"] == str(moved)
    _write_photos(moved, 6, 1)
    wait(lambda: len(tree(target)) == 7, limit=30, what="a new photo from the new place")

    # ... and while it runs.
    again = tmp_path / "moved-again"
    moved.rename(again)
    wait(lambda: _album(owner, album)["folder_state"] == "folder_missing", limit=5)
    _member_untouched(target, tree(again))
    # The same through the CLI, as a person would after moving the folder.
    assert "now syncs" in cli(owner, "album", "folder", album, str(again))

    # A folder that is not this album's is refused: no way to adopt an empty or foreign folder.
    empty = tmp_path / "empty"
    empty.mkdir()
    status, body, _ = owner.request("POST", f"/api/v1/albums/{album}/folder", {"path": str(empty)})
    assert status == 409, body
    assert "marker" in body["message"] or ".albumsync" in body["message"]
    assert _album(owner, album)["path"] == str(again)

    # (d) The marker is deleted but the photos are there: refused and explained, nothing deleted.
    (again / ".albumsync" / "marker").unlink()
    wait(lambda: _album(owner, album)["folder_state"] == "marker_missing", limit=5)
    summary = _album(owner, album)
    assert any("choose the album's folder again" in p or "marker" in p for p in summary["problems"])
    _member_untouched(target, tree(again))
    status, body, _ = owner.request("POST", f"/api/v1/albums/{album}/folder", {"path": str(again)})
    assert status == 409, body
    for daemon in (owner, member):
        daemon.stop()
        assert "Traceback" not in daemon.log()
