"""An editor's photo added the moment it joins reaches the album (it once went to its own trash).

The photo is published before the view that includes it is computed; a reconcile with the older
view took the freshly indexed row for a removed file. tests/daemon/test_planner.py pins the rule
deterministically; this is the user-level story, a few times over because it was a race.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.test_sync import cli, wait

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_editor_photo_right_after_accepting_is_published_not_trashed(
    make_daemon, tmp_path: Path
) -> None:
    owner, editor = make_daemon("Owner"), make_daemon("Editor")
    for daemon in (owner, editor):
        daemon.init()
        daemon.start()
    for round_ in range(3):
        photos = tmp_path / f"photos{round_}"
        photos.mkdir()
        (photos / "a.jpg").write_bytes(os.urandom(5000))
        album = cli(owner, "album", "create", str(photos), "--name", f"Round {round_}")
        code = cli(owner, "invite", "create", album, "--role", "editor")
        target = tmp_path / f"copy{round_}"
        cli(editor, "invite", "accept", code, "--path", str(target))
        wait(lambda t=target: t.exists(), limit=20, what="the editor's folder")
        (target / "early.jpg").write_bytes(os.urandom(7000))
        wait(lambda p=photos: (p / "early.jpg").exists(), limit=20, what="early.jpg at the owner")
        assert (target / "early.jpg").exists()
        trash = target / ".albumsync" / "trash"
        assert not trash.exists() or not any(p.is_file() for p in trash.rglob("*"))
    assert "moved to the trash" not in editor.log()
