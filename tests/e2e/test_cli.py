"""The command-line contract, run as a person or a script would: real `albumsync` processes.

One daemon only; the multi-device stories are in test_sync.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import ACL_ACCESS, ACL_DEFAULT, Daemon, albumsync, is_root

pytestmark = pytest.mark.e2e
ALBUM_ID = re.compile(r"^[a-z2-7]{52}$")
NOT_RUNNING = "the daemon is not running (start it with `albumsync run`)"
MakeDaemon = Callable[..., Daemon]


def one_sentence_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: one line, no traceback; returns it."""
    assert result.returncode != 0
    assert result.stdout == ""
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("albumsync: ")
    return err


def test_album_create_list_and_invite_through_the_daemon(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon("Ana's laptop")
    device_id = daemon.init()
    daemon.start()
    photos = tmp_path / "Summer 2026"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(b"\xff\xd8" + b"x" * 5000)

    album_id = albumsync(daemon.home, "album", "create", str(photos)).stdout.strip()
    assert ALBUM_ID.match(album_id), album_id
    listed = json.loads(albumsync(daemon.home, "album", "list", "--json").stdout)
    assert [(a["album_id"], a["name"], a["role"]) for a in listed] == [
        (album_id, "Summer 2026", "owner")
    ]
    table = albumsync(daemon.home, "album", "list").stdout
    assert "Summer 2026" in table
    assert album_id in table

    # ALBUM arguments take the exact name as well as the ID
    code = albumsync(
        daemon.home, "invite", "create", "Summer 2026", "--role", "viewer", "--message", "hi"
    ).stdout.strip()
    assert code.startswith("albumsync:")
    assert len(code.splitlines()) == 1
    invites = json.loads(albumsync(daemon.home, "invite", "list", "--json").stdout)
    [out] = invites["outgoing"]
    assert (out["album_id"], out["role"], out["message"], out["state"]) == (
        album_id,
        "viewer",
        "hi",
        "open",
    )
    cancelled = albumsync(daemon.home, "invite", "cancel", out["invite_id"][:8])
    assert out["invite_id"] in cancelled.stdout

    members = json.loads(albumsync(daemon.home, "member", "list", album_id, "--json").stdout)
    assert [(m["device_id"], m["role"], m["is_me"]) for m in members] == [
        (device_id, "owner", True)
    ]
    albumsync(daemon.home, "album", "rename", album_id, "Lake")
    status = json.loads(albumsync(daemon.home, "status", "--json", "--wait-synced", "10").stdout)
    assert status["device_id"] == device_id
    assert [a["name"] for a in status["albums"]] == ["Lake"]
    assert "Lake" in albumsync(daemon.home, "status").stdout
    assert daemon.stop() == 0


def test_cli_errors_are_one_sentence(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon("Ana's laptop")
    daemon.init()
    daemon.start()
    photos = tmp_path / "photos"
    photos.mkdir()
    albumsync(daemon.home, "album", "create", str(photos), "--name", "Twice")
    other = tmp_path / "other"
    other.mkdir()
    albumsync(daemon.home, "album", "create", str(other), "--name", "Twice")

    err = one_sentence_error(albumsync(daemon.home, "album", "leave", "Twice", check=False))
    assert "2 albums are named 'Twice'" in err
    err = one_sentence_error(albumsync(daemon.home, "album", "leave", "Nope", check=False))
    assert "no album named 'Nope'" in err
    result = albumsync(daemon.home, "album", "create", str(tmp_path / "missing"), check=False)
    assert "not a folder" in one_sentence_error(result)
    album_id = json.loads(albumsync(daemon.home, "album", "list", "--json").stdout)[0]["album_id"]
    result = albumsync(daemon.home, "album", "leave", album_id, check=False)
    assert "owner cannot leave" in one_sentence_error(result)
    result = albumsync(daemon.home, "member", "role", album_id, "AAAA", "viewer", check=False)
    assert "not a member's name" in one_sentence_error(result)
    result = albumsync(daemon.home, "peer", "add", "B" + "A" * 55, "tcp://127.0.0.1:9", check=False)
    assert "check character" in one_sentence_error(result)
    result = albumsync(daemon.home, "invite", "accept", "albumsync:abc", check=False)
    assert one_sentence_error(result)
    assert daemon.stop() == 0


def test_commands_without_a_running_daemon_say_so(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon("Ana's laptop")
    daemon.init()
    for args in [
        ("status",),
        ("status", "--json"),
        ("album", "list"),
        ("album", "create", str(tmp_path)),
        ("invite", "list", "--json"),
        ("peer", "list"),
        ("member", "list", "Summer"),
    ]:
        err = one_sentence_error(albumsync(daemon.home, *args, check=False))
        assert err == f"albumsync: {NOT_RUNNING}", args
    # a daemon that died without cleaning up: its runtime file points at a closed port
    daemon.start()
    url = daemon.ui_url
    assert daemon.stop() == 0
    (daemon.home / "daemon.json").write_text(json.dumps({"ui": url, "pid": 1, "peer_port": 1}))
    err = one_sentence_error(albumsync(daemon.home, "album", "list", check=False))
    assert err == f"albumsync: {NOT_RUNNING}"


def test_W4_cli_rotates_the_api_key(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon("Rotating")
    daemon.init()
    daemon.start()
    old = daemon.api_key
    out = albumsync(daemon.home, "api-key", "rotate").stdout
    assert "no longer works" in out
    assert daemon.api_key != old
    assert old not in out
    assert daemon.api_key not in out
    status, _, _ = daemon.request("GET", "/api/v1/status", key=old)
    assert status == 401
    assert (
        json.loads(albumsync(daemon.home, "status", "--json").stdout)["device_name"] == "Rotating"
    )
    daemon.stop()
    assert old not in daemon.log()
    assert daemon.api_key not in daemon.log()


def _root_only_folder(path: Path) -> Path:
    """A folder the daemon (the unprivileged test user) may read but not write: root's, 0755,
    without the shared folder's ACLs."""
    path.mkdir()
    for name in (ACL_ACCESS, ACL_DEFAULT):
        with contextlib.suppress(OSError):
            os.removexattr(path, name)
    path.chmod(0o755)
    return path


@pytest.mark.skipif(
    not is_root(), reason="needs root: only then does the daemon run as another user"
)
def test_folders_the_daemon_cannot_write_are_refused_with_a_sentence(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A service user meets folders it may not write: create, join by code and accept all say so
    (they gave 500 with a traceback, or a join that silently never happened)."""
    owner, member = make_daemon("Owner"), make_daemon("Member")
    for daemon in (owner, member):
        daemon.init()
        daemon.start()
    locked = _root_only_folder(tmp_path / "locked")
    (locked / "IMG_1.jpg").write_bytes(b"photo")
    result = albumsync(owner.home, "album", "create", str(locked), check=False)
    assert "cannot write to" in one_sentence_error(result)
    assert json.loads(albumsync(owner.home, "album", "list", "--json").stdout) == []

    photos = tmp_path / "photos"
    photos.mkdir()
    album = albumsync(owner.home, "album", "create", str(photos)).stdout.strip()
    code = albumsync(owner.home, "invite", "create", album, "--role", "viewer").stdout.strip()
    result = albumsync(
        member.home, "invite", "accept", code, "--path", str(locked / "Summer"), check=False
    )
    err = one_sentence_error(result)
    assert "cannot write to" in err
    assert str(locked) in err
    albumsync(member.home, "invite", "accept", code, "--path", str(tmp_path / "ok" / "Summer"))
    assert owner.stop() == 0
    assert member.stop() == 0
    log = owner.log() + member.log()
    assert "Traceback" not in log
