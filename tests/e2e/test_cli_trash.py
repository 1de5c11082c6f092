"""The CLI's trash and cover commands against real `albumsync run` processes (TESTPLAN D2's
"restorable from the CLI"): a photo removed on one device lands in the other's album trash,
`albumsync trash list` shows it, `albumsync trash restore` puts it back in the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Daemon, albumsync
from tests.e2e.test_cli import one_sentence_error

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
MakeDaemon = Callable[..., Daemon]
WAIT = 60.0


def cli(daemon: Daemon, *args: str) -> str:
    return albumsync(daemon.home, *args).stdout.strip()


def cli_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(albumsync(daemon.home, *args, "--json").stdout)


def until(check: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.1)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def album_of(daemon: Daemon, album_id: str) -> dict[str, Any]:
    albums = cli_json(daemon, "album", "list")
    return next(a for a in albums if a["album_id"] == album_id)


def test_D2_remote_delete_goes_to_the_trash_and_the_cli_restores_it(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    ana, bob = make_daemon("Ana's laptop"), make_daemon("Bob's desktop")
    for daemon in (ana, bob):
        daemon.init()
        daemon.start()
    photos = tmp_path / "Summer"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i:04}.jpg").write_bytes(os.urandom(50_000 + i))
    album_id = cli(ana, "album", "create", str(photos), "--name", "Summer 2026")
    code = cli(ana, "invite", "create", album_id, "--role", "editor")
    bob_dir = tmp_path / "bob" / "Summer"
    cli(bob, "invite", "accept", code, "--path", str(bob_dir))
    albumsync(bob.home, "status", "--wait-synced", str(WAIT))
    kept = bob_dir / "IMG_0001.jpg"
    until(kept.exists, "the photos to reach Bob")
    original = digest(kept)
    assert cli(bob, "trash", "list", "Summer 2026") == "the trash of Summer 2026 is empty"
    assert cli_json(bob, "trash", "list", album_id) == []

    # Ana removes a photo: Bob's copy goes to his album trash, not away.
    (photos / "IMG_0001.jpg").unlink()
    until(lambda: not kept.exists(), "Bob's copy to leave the folder")
    trashed = cli_json(bob, "trash", "list", album_id)
    assert [t["path"] for t in trashed] == ["IMG_0001.jpg"]
    [entry] = trashed
    assert entry["trash_path"].endswith("IMG_0001.jpg")
    assert abs(entry["trashed_at"] - time.time()) < 120
    table = cli(bob, "trash", "list", "Summer 2026")
    assert "IMG_0001.jpg" in table
    assert entry["trash_path"] in table
    assert cli_json(ana, "trash", "list", album_id) == []  # a local delete is not trashed

    # Restoring by an unknown path is one sentence, and changes nothing.
    err = one_sentence_error(
        albumsync(bob.home, "trash", "restore", album_id, "nope.jpg", check=False)
    )
    assert "'nope.jpg' is not in the trash of Summer 2026" in err
    assert cli_json(bob, "trash", "list", album_id) == trashed

    # Bob restores it: back in his folder with its bytes, the trash empty again; as an editor's
    # file it is published again and reaches Ana.
    out = cli(bob, "trash", "restore", album_id, entry["trash_path"])
    assert out == f"restored IMG_0001.jpg into {bob_dir.resolve()}"
    assert kept.exists()
    assert digest(kept) == original
    assert cli_json(bob, "trash", "list", album_id) == []
    until((photos / "IMG_0001.jpg").exists, "the restored photo to reach Ana again")
    assert digest(photos / "IMG_0001.jpg") == original

    # The restore by the old path works when the trash holds one copy of it.
    (photos / "IMG_0002.jpg").unlink()
    until(lambda: not (bob_dir / "IMG_0002.jpg").exists(), "the second removal to reach Bob")
    assert "restored IMG_0002.jpg" in cli(bob, "trash", "restore", "Summer 2026", "IMG_0002.jpg")
    assert (bob_dir / "IMG_0002.jpg").exists()
    assert ana.stop() == 0
    assert bob.stop() == 0


def test_album_cover_by_path_or_id_and_clear(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    ana = make_daemon("Ana's laptop")
    ana.init()
    ana.start()
    photos = tmp_path / "Lake"
    photos.mkdir()
    for i in range(2):
        (photos / f"IMG_{i:04}.jpg").write_bytes(os.urandom(10_000 + i))
    album_id = cli(ana, "album", "create", str(photos))
    until(lambda: album_of(ana, album_id)["files"] == 2, "the photos to be published")
    status, listing, _ = ana.request("GET", f"/api/v1/albums/{album_id}/files")
    assert status == 200
    ids = {f["path"]: f["id"] for f in listing}
    assert album_of(ana, album_id)["cover"] is None

    out = cli(ana, "album", "cover", "Lake", "IMG_0001.jpg")
    assert out == "the cover of Lake is now IMG_0001.jpg"
    assert album_of(ana, album_id)["cover"] == ids["IMG_0001.jpg"]
    cli(ana, "album", "cover", album_id, ids["IMG_0000.jpg"])
    assert album_of(ana, album_id)["cover"] == ids["IMG_0000.jpg"]
    cli(ana, "album", "cover", album_id, str(photos / "IMG_0001.jpg"))  # the folder in front
    assert album_of(ana, album_id)["cover"] == ids["IMG_0001.jpg"]
    out = cli(ana, "album", "cover", "Lake", "--clear")
    assert out == "cleared the cover of Lake; its first photo shows instead"
    assert album_of(ana, album_id)["cover"] is None

    for args in [("Lake",), ("Lake", "IMG_0000.jpg", "--clear")]:
        err = one_sentence_error(albumsync(ana.home, "album", "cover", *args, check=False))
        assert "either the photo" in err
    err = one_sentence_error(albumsync(ana.home, "album", "cover", "Lake", "nope.jpg", check=False))
    assert "no file 'nope.jpg' in Lake" in err
    assert album_of(ana, album_id)["cover"] is None
    assert ana.stop() == 0
