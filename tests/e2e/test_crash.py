"""TESTPLAN E1 (small set) and E4 (kill part): SIGKILL a receiving daemon mid-transfer, restart it."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.e2e.harness import albumsync
from tests.e2e.test_sync import cli, tree, wait

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_E1_kill9_during_transfer_loses_nothing(make_daemon, tmp_path: Path) -> None:
    owner, member = make_daemon("Owner"), make_daemon("Receiver")
    owner.init()
    member.init()
    owner.start()
    member.start()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        (photos / f"IMG_{i:04}.jpg").write_bytes(os.urandom(1_500_000 + i))
    album = cli(owner, "album", "create", str(photos), "--name", "Crash test")
    albumsync(owner.home, "status", "--wait-synced", "60")
    wait(lambda: len(tree(photos)) == 40, what="owner folder ready")
    code = cli(owner, "invite", "create", album, "--role", "viewer")
    target = tmp_path / "copy"
    cli(member, "invite", "accept", code, "--path", str(target))
    rng = random.Random(20261123)
    kills = 0
    for _ in range(4):
        time.sleep(rng.uniform(0.1, 0.6))
        if target.exists() and tree(target) == tree(photos):
            break
        assert member.proc is not None
        member.proc.send_signal(signal.SIGKILL)
        member.proc.wait()
        kills += 1
        _assert_no_partial_under_a_final_name(target, photos)
        member.start()
    wait(
        lambda: target.exists() and tree(target) == tree(photos),
        limit=90,
        what="resumed sync completes",
    )
    print(f"\nreceiver killed {kills} times mid-transfer; final tree identical")
    member.stop()
    owner.stop()
    for daemon in (owner, member):
        with sqlite3.connect(daemon.home / "state.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert "Traceback" not in daemon.log()


def _assert_no_partial_under_a_final_name(target: Path, photos: Path) -> None:
    """Every file under a final name is complete and correct (partials live in .albumsync/tmp)."""
    if not target.exists():
        return
    originals = tree(photos)
    for name, digest in tree(target).items():
        assert originals.get(name) == digest, f"{name} under its final name is not the original"
