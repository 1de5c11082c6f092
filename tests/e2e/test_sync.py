"""Three real `albumsync run` processes on loopback, driven through the CLI as a person would."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon, albumsync

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def cli(daemon: Daemon, *args: str) -> str:
    return albumsync(daemon.home, *args).stdout.strip()


def cli_json(daemon: Daemon, *args: str) -> object:
    return json.loads(cli(daemon, *args, "--json"))


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".albumsync" not in p.relative_to(root).parts
    }


def wait(check, limit: float = 30.0, what: str = "condition") -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def peer_address(daemon: Daemon) -> str:
    port = json.loads((daemon.home / "daemon.json").read_text())["peer_port"]
    return f"tcp://127.0.0.1:{port}"


def test_household_shares_and_syncs_through_the_cli(make_daemon, tmp_path: Path) -> None:
    ana, bob, srv = (
        make_daemon("Ana's laptop"),
        make_daemon("Bob's desktop"),
        make_daemon("Home server"),
    )
    ids = {d.name: d.init() for d in (ana, bob, srv)}
    for d in (ana, bob, srv):
        d.start()
    photos = tmp_path / "Summer"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i:04}.jpg").write_bytes(os.urandom(200_000 + i))
    album = cli(ana, "album", "create", str(photos), "--name", "Summer 2026")

    # Bob joins by code (as editor); the home server by a direct invite (as viewer).
    code = cli(ana, "invite", "create", album, "--role", "editor", "--message", "for Bob")
    assert code.startswith("albumsync:")
    bob_dir = tmp_path / "bob" / "Summer"
    cli(bob, "invite", "accept", code, "--path", str(bob_dir))
    albumsync(bob.home, "status", "--wait-synced", "60")
    assert tree(bob_dir) == tree(photos)

    cli(ana, "peer", "add", ids["Home server"], peer_address(srv))
    cli(srv, "peer", "add", ids["Ana's laptop"], peer_address(ana))
    cli(
        ana,
        "invite",
        "create",
        album,
        "--role",
        "viewer",
        "--to",
        ids["Home server"],
        "--message",
        "backup",
    )
    wait(
        lambda: any(i["state"] == "pending" for i in cli_json(srv, "invite", "list")["incoming"]),
        what="invite at the server",
    )  # type: ignore[index]
    pending = cli_json(srv, "invite", "list")["incoming"][0]  # type: ignore[index]
    assert (pending["album_name"], pending["role"], pending["message"]) == (
        "Summer 2026",
        "viewer",
        "backup",
    )
    srv_dir = tmp_path / "srv" / "Summer"
    cli(srv, "invite", "accept", album, "--path", str(srv_dir))
    albumsync(srv.home, "status", "--wait-synced", "60")
    assert tree(srv_dir) == tree(photos)

    members = {m["name"]: (m["role"], m["status"]) for m in cli_json(ana, "member", "list", album)}  # type: ignore[union-attr]
    wait(
        lambda: (
            {m["status"] for m in cli_json(ana, "member", "list", album)} == {"owner", "active"}
        ),
        what="accepts recorded",
    )  # type: ignore[union-attr]
    assert members["Bob's desktop"][0] == "editor"
    assert members["Home server"][0] == "viewer"

    # A new 5 MiB photo on Bob's desktop reaches the others, watcher on (median of 5).
    latencies = []
    for i in range(5):
        name = f"bob_{i}.jpg"
        data = os.urandom(5 * 1024 * 1024)
        tmp = bob_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        start = time.monotonic()
        tmp.rename(bob_dir / name)
        want = hashlib.sha256(data).hexdigest()
        wait(
            lambda n=name, w=want: (
                (photos / n).exists() and hashlib.sha256((photos / n).read_bytes()).hexdigest() == w
            ),
            what=f"{name} at Ana",
        )
        latencies.append(time.monotonic() - start)
    median = statistics.median(latencies)
    print(
        f"\nnew 5 MiB photo complete at a LAN peer: median {median:.3f} s, all {[round(x, 3) for x in latencies]}"
    )
    assert median < 5.0
    albumsync(srv.home, "status", "--wait-synced", "60")
    assert tree(srv_dir) == tree(photos) == tree(bob_dir)

    # The viewer's own files stay on the viewer.
    (srv_dir / "tv_only.jpg").write_bytes(b"x" * 100)
    time.sleep(1.0)
    assert not (photos / "tv_only.jpg").exists()

    # Role change: Bob becomes a viewer, and his next photo stays on his desktop.
    cli(ana, "member", "role", album, ids["Bob's desktop"], "viewer")
    wait(
        lambda: cli_json(bob, "album", "list")[0]["role"] == "viewer", what="bob sees his new role"
    )  # type: ignore[index]
    (bob_dir / "as_viewer.jpg").write_bytes(os.urandom(1000))
    time.sleep(1.0)
    assert not (photos / "as_viewer.jpg").exists()

    # Removal: Bob is out; what Ana adds afterwards never reaches him.
    cli(ana, "member", "remove", album, ids["Bob's desktop"])
    wait(lambda: cli_json(bob, "album", "list")[0]["state"] == "removed", what="bob removed")  # type: ignore[index]
    (photos / "after_removal.jpg").write_bytes(os.urandom(50_000))
    wait((srv_dir / "after_removal.jpg").exists, what="server gets the new photo")
    time.sleep(1.0)
    assert not (bob_dir / "after_removal.jpg").exists()

    for d in (ana, bob, srv):
        assert d.stop() == 0
        assert "Traceback" not in d.log(), d.log()
