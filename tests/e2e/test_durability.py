"""TESTPLAN E2, E4, E6: the daemon killed, stopped or starved of its disk at awkward moments."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from daemon.store import Store
from protocol.keys import DeviceKey
from protocol.membership import MembershipState, Status
from protocol.membership_log import MembershipLog
from tests.e2e.harness import Daemon, albumsync, free_port
from tests.e2e.test_run import NotifyListener
from tests.e2e.test_sync import cli, tree, wait

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def read_only_db(home: Path) -> sqlite3.Connection:
    """The daemon's state database opened read-only, as an outside observer would."""
    return sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)


def integrity(home: Path) -> str:
    with read_only_db(home) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def count(home: Path, sql: str) -> int:
    db = read_only_db(home)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def kill9(daemon: Daemon) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()


# --- E4 -------------------------------------------------------------------------------------------

E4_FILES = 6000
E4_KILLS = 50


def test_E4_sqlite_kill_loop(make_daemon, tmp_path: Path) -> None:
    """50 x SIGKILL while the owner publishes a big album (group commits of up to 512 files),
    restart each time: the database passes integrity_check after every kill and the album ends
    complete. 6,000 files: with group commits 2,500 were published after 20 of the 50 kills."""
    owner = make_daemon("Owner")
    owner.init()
    owner.start()
    photos = tmp_path / "big"
    photos.mkdir()
    for i in range(E4_FILES):
        (photos / f"IMG_{i:05}.jpg").write_bytes(os.urandom(700 + i % 1500))
    cli(owner, "album", "create", str(photos), "--name", "Kill loop")
    published = "SELECT count(*) FROM local_files WHERE entry_hash IS NOT NULL"
    rng = random.Random(20261124)
    during_writes = 0
    started = time.monotonic()
    for _ in range(E4_KILLS):
        time.sleep(rng.uniform(0.02, 0.3))
        kill9(owner)
        assert integrity(owner.home) == "ok"
        if count(owner.home, published) < E4_FILES:
            during_writes += 1
        owner.start()
    loop_seconds = time.monotonic() - started
    print(f"\nE4: {E4_KILLS} kills in {loop_seconds:.1f} s, {during_writes} during publishing")
    # Kills that all land after publishing finished would test nothing.
    assert during_writes >= E4_KILLS // 2, f"only {during_writes} kills hit the publishing"
    wait(
        lambda: count(owner.home, published) == E4_FILES,
        limit=60,
        what="every file published after the kills",
    )
    # Complete and not duplicated: one manifest entry per file (a file published twice after a
    # kill would add a second), and the index holds each file's true content hash.
    albumsync(owner.home, "status", "--wait-synced", "60")
    assert owner.stop() == 0
    assert integrity(owner.home) == "ok"
    assert count(owner.home, "SELECT count(*) FROM manifest_entries") == E4_FILES
    db = read_only_db(owner.home)
    try:
        indexed = {
            path: bytes(digest).hex()
            for path, digest in db.execute("SELECT path, content_hash FROM local_files")
        }
    finally:
        db.close()
    assert indexed == tree(photos)
    assert "Traceback" not in owner.log()


async def test_E4_log_and_manifest_tables_are_written_with_synchronous_full(
    tmp_path: Path,
) -> None:
    """synchronous is per connection: ask the store's own connection, the one every table uses."""
    store = await Store.open(tmp_path / "state.db")
    try:
        synchronous = await store.fetchone("PRAGMA synchronous")
        journal = await store.fetchone("PRAGMA journal_mode")
        tables = {
            r[0] for r in await store.fetchall("SELECT name FROM sqlite_master WHERE type='table'")
        }
    finally:
        await store.close()
    assert synchronous is not None
    assert synchronous[0] == 2
    assert journal is not None
    assert journal[0] == "wal"
    assert {"membership_entries", "manifest_entries", "epoch_keys"} <= tables


@pytest.mark.parametrize("keep", ["nothing", "50 bytes", "half"])
def test_E4_truncated_database_is_refused_with_a_clear_message(
    make_daemon, tmp_path: Path, keep: str
) -> None:
    daemon = make_daemon("laptop")
    daemon.init()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(os.urandom(5000))
    daemon.start()
    cli(daemon, "album", "create", str(photos), "--name", "Truncated")
    albumsync(daemon.home, "status", "--wait-synced", "30")
    assert daemon.stop() == 0
    db = daemon.home / "state.db"
    size = {"nothing": 0, "50 bytes": 50, "half": db.stat().st_size // 2}[keep]
    os.truncate(db, size)
    result = albumsync(
        daemon.home, "run", "--ui", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--no-mdns",
        check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert db.stat().st_size == size, "the damaged file must be left as it was, for recovery"
    assert (photos / "a.jpg").exists()


# --- E2 -------------------------------------------------------------------------------------------

INVITE_POINTS = (
    "invite.created",  # code drawn, nothing stored
    "invite.stored",  # invite row stored, the code never reached the person
    "invite.redeemed",  # a device redeemed it: row marked, no log entry yet
    "invite.entry_stored",  # the invite entry is signed and stored, the offer not sent
    "invite.offer_sent",  # the offer went out, the log not yet
)
ROTATION_POINTS = (
    "rotation.key_made",  # the new epoch key exists, nothing signed
    "own_entry.in_memory",  # the remove entry is signed and applied in memory only
    "own_entry.stored",  # the entry is stored, the new epoch key not yet
    "owner_change.keys_stored",  # entry and key stored, nothing sent
    "owner_change.broadcast",  # sent to the members, the activity line not written
)


def device_key(home: Path) -> bytes:
    with read_only_db(home) as db:
        seed = db.execute("SELECT seed FROM identity WHERE id = 1").fetchone()[0]
    return DeviceKey(bytes(seed)).public


def stored_log(home: Path) -> tuple[MembershipState, set[int]]:
    """The owner's membership state rebuilt from its database, and the epochs it holds keys for."""
    db = read_only_db(home)
    try:
        (album_id,) = db.execute("SELECT album_id FROM albums").fetchone()
        rows = db.execute(
            "SELECT envelope FROM membership_entries WHERE album_id = ? ORDER BY seq", (album_id,)
        ).fetchall()
        keys = {int(e) for (e,) in db.execute("SELECT epoch FROM epoch_keys")}
    finally:
        db.close()
    mlog = MembershipLog(bytes(rows[0][0]), album_id=bytes(album_id))
    for (envelope,) in rows[1:]:
        mlog.add(bytes(envelope))
    return mlog.state, keys


def key_epochs(home: Path) -> set[int]:
    with read_only_db(home) as db:
        return {int(e) for (e,) in db.execute("SELECT epoch FROM epoch_keys")}


def crash_at(owner: Daemon, point: str) -> None:
    owner.env["ALBUMSYNC_CRASH_AT"] = point
    owner.start()
    owner.env.pop("ALBUMSYNC_CRASH_AT")


def assert_crashed_at(owner: Daemon, point: str) -> None:
    assert owner.proc is not None
    try:
        code = owner.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the owner never reached crash point {point}") from None
    assert code == -signal.SIGKILL, f"owner exited with {code} instead of dying at {point}"
    assert f"crash point {point} reached" in owner.log()
    assert integrity(owner.home) == "ok"


def is_active_member(owner: Daemon, member: Daemon) -> bool:
    state, _ = stored_log(owner.home)
    return state.status(device_key(member.home)) is Status.ACTIVE


def test_E2_kill9_during_rotation_and_invite(make_daemon, tmp_path: Path) -> None:
    owner = make_daemon("Owner", extra_args=["--listen", f"127.0.0.1:{free_port()}"])
    stays = make_daemon("Stays")
    for daemon in (owner, stays):
        daemon.init()
        daemon.start()
    photos = tmp_path / "album"
    photos.mkdir()
    (photos / "first.jpg").write_bytes(os.urandom(3000))
    album = cli(owner, "album", "create", str(photos), "--name", "Rotations")
    cli(
        stays,
        "invite",
        "accept",
        cli(owner, "invite", "create", album, "--role", "viewer"),
        "--path",
        str(tmp_path / "stays"),
    )
    wait(lambda: is_active_member(owner, stays), limit=60, what="the first member joins")

    # Invites: crash at each step, restart, and the invite (retried if it never reached anyone)
    # still ends with the device in the album, in the log exactly once.
    victims: list[Daemon] = []
    for i, point in enumerate(INVITE_POINTS):
        victim = make_daemon(f"Victim {i}")
        victim.init()
        victim.start()
        victims.append(victim)
        kill9(owner)  # E2 is about kill -9; a clean stop is E6's
        crash_at(owner, point)
        before, _ = stored_log(owner.home)
        target = str(tmp_path / f"victim{i}")
        made = albumsync(owner.home, "invite", "create", album, "--role", "viewer", check=False)
        if made.returncode != 0:  # the owner died while making the code: nobody has it, retry
            assert point in ("invite.created", "invite.stored")
            assert_crashed_at(owner, point)
            owner.start()
            cli(
                victim,
                "invite",
                "accept",
                cli(owner, "invite", "create", album, "--role", "viewer"),
                "--path",
                target,
            )
        else:  # the device redeems; the owner dies answering, and the device's retry must work
            cli(victim, "invite", "accept", made.stdout.strip(), "--path", target)
            assert_crashed_at(owner, point)
            after, _ = stored_log(owner.home)
            assert after.epoch == before.epoch  # an invite never starts an epoch
            owner.start()
        wait(lambda v=victim: is_active_member(owner, v), limit=60, what=f"join after {point}")
        state, keys = stored_log(owner.home)
        assert keys == set(range(state.epoch + 1)), f"owner keys {keys} vs epoch {state.epoch}"
    assert "Traceback" not in owner.log()

    # Rotations: remove one victim per crash point.
    for victim, point in zip(victims, ROTATION_POINTS, strict=True):
        before, _ = stored_log(owner.home)
        gone = device_key(victim.home)
        kill9(owner)  # E2 is about kill -9; a clean stop is E6's
        crash_at(owner, point)
        albumsync(owner.home, "member", "remove", album, victim.name, check=False)
        assert_crashed_at(owner, point)
        crashed, keys = stored_log(owner.home)
        # Old epoch (victim still in) or new epoch (victim out), never a mix of the two.
        if crashed.status(gone) is Status.REMOVED:
            assert crashed.epoch == before.epoch + 1, point
        else:
            assert crashed.status(gone) is Status.ACTIVE, point
            assert crashed.epoch == before.epoch, point
        assert keys <= set(range(crashed.epoch + 1)), f"{point}: a key for an epoch not in the log"
        owner.start()
        retry = albumsync(owner.home, "member", "remove", album, victim.name, check=False)
        state, keys = stored_log(owner.home)
        assert state.status(gone) is Status.REMOVED, f"{point}: {retry.stderr}"
        assert state.epoch == before.epoch + 1, f"{point}: the retry rotated twice"
        assert keys == set(range(state.epoch + 1)), f"{point}: owner keys {keys}"
        if retry.returncode != 0:  # the first attempt had already done it
            assert crashed.status(gone) is Status.REMOVED, retry.stderr
            assert "Traceback" not in retry.stderr
        for member in (stays, *victims):
            held = key_epochs(member.home)
            assert held <= set(range(state.epoch + 1)), f"{member.name} holds {held} after {point}"
        wait(
            lambda epoch=state.epoch: max(key_epochs(stays.home)) == epoch,
            limit=60,
            what=f"the remaining member gets the epoch made at {point}",
        )
        assert state.epoch not in key_epochs(victim.home), f"removed device got the key ({point})"

    # The album still syncs with whoever remains, and the removed devices get nothing new.
    (photos / "after.jpg").write_bytes(os.urandom(4000))
    wait(
        lambda: (
            (tmp_path / "stays" / "after.jpg").exists() and tree(tmp_path / "stays") == tree(photos)
        ),
        limit=60,
        what="the remaining member receives a new photo",
    )
    for i in range(len(victims)):
        assert not (tmp_path / f"victim{i}" / "after.jpg").exists()
    for daemon in (owner, stays, *victims):
        assert "Traceback" not in daemon.log()


# --- E6 -------------------------------------------------------------------------------------------


def album_status(daemon: Daemon, name: str) -> dict[str, object]:
    status = json.loads(cli(daemon, "status", "--json"))
    return next(a for a in status["albums"] if a["name"] == name)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: tmpfs mount, remount read-only")
def test_E6_sigterm_and_read_only(make_daemon, tmp_path: Path) -> None:
    sender, receiver = make_daemon("Sender"), make_daemon("Receiver")
    for daemon in (sender, receiver):
        daemon.init()
    notify_path = tmp_path / "notify.sock"
    listener = NotifyListener(notify_path)
    receiver.env["NOTIFY_SOCKET"] = str(notify_path)
    sender.start()
    receiver.start()
    big, small = tmp_path / "big", tmp_path / "small"
    for folder in (big, small):
        folder.mkdir()
    for i in range(30):
        (big / f"IMG_{i:03}.jpg").write_bytes(os.urandom(1_500_000 + i))
    (small / "one.jpg").write_bytes(os.urandom(10_000))
    big_id = cli(sender, "album", "create", str(big), "--name", "Big")
    small_id = cli(sender, "album", "create", str(small), "--name", "Small")
    albumsync(sender.home, "status", "--wait-synced", "60")
    # The receiving copy of Big lives on its own tmpfs, to be remounted read-only later.
    big_copy, small_copy = tmp_path / "big-copy", tmp_path / "small-copy"
    big_copy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(big_copy)], check=True)
    try:
        small_copy.mkdir()
        receiver.give(big_copy)  # a new file system's root: tmp_path's ACL does not reach it
        code = cli(sender, "invite", "create", big_id, "--role", "editor")
        cli(receiver, "invite", "accept", code, "--path", str(big_copy))

        # SIGTERM while Big is half received: STOPPING=1, exit 0 within 10 s, then a restart
        # finishes the job with nothing lost.
        wait(lambda: 3 <= len(tree(big_copy)) < 30, limit=60, what="Big half received")
        started = time.monotonic()
        assert receiver.stop(signal.SIGTERM, timeout=10) == 0
        stop_seconds = time.monotonic() - started
        assert any("STOPPING=1" in m for m in listener.messages)
        receiver.env.pop("NOTIFY_SOCKET")
        receiver.start()
        wait(lambda: tree(big_copy) == tree(big), limit=90, what="Big complete after restart")
        code = cli(sender, "invite", "create", small_id, "--role", "editor")
        cli(receiver, "invite", "accept", code, "--path", str(small_copy))
        wait(lambda: tree(small_copy) == tree(small), limit=60, what="Small received")
        print(f"\nE6: SIGTERM mid-transfer stopped the receiver in {stop_seconds:.2f} s")

        # chmod 000 on one source file: that file is reported, the others sync.
        (small / "locked.jpg").write_bytes(os.urandom(5000))
        (small / "readable.jpg").write_bytes(os.urandom(5000))
        (small / "locked.jpg").chmod(0)
        wait((small_copy / "readable.jpg").exists, limit=30, what="readable file synced")
        wait(
            lambda: any("locked.jpg" in p for p in album_status(sender, "Small")["problems"]),
            limit=30,
            what="the unreadable file reported",
        )
        assert not (small_copy / "locked.jpg").exists()

        # Big's copy goes read-only: the new file fails with a per-file error, nothing the
        # receiver holds is published as deleted, and Small keeps syncing.
        subprocess.run(["mount", "-o", "remount,ro", str(big_copy)], check=True)
        (big / "NEW_ro.jpg").write_bytes(os.urandom(300_000))
        wait(
            lambda: any("NEW_ro.jpg" in p for p in album_status(receiver, "Big")["problems"]),
            limit=30,
            what="the read-only failure reported per file",
        )
        (small / "later.jpg").write_bytes(os.urandom(5000))
        wait((small_copy / "later.jpg").exists, limit=30, what="Small still syncing")
        assert all((big / name).exists() for name in tree(big_copy))
        listed = sorted(
            f["path"] for f in sender.request("GET", f"/api/v1/albums/{big_id}/files")[1]
        )
        assert len(listed) == 31, f"the album should hold the 31 files written, not {listed}"
        subprocess.run(["mount", "-o", "remount,rw", str(big_copy)], check=True)
        wait(lambda: tree(big_copy) == tree(big), limit=60, what="Big heals once writable")
        for daemon in (sender, receiver):
            assert daemon.stop() == 0
            assert "Traceback" not in daemon.log()
    finally:
        listener.close()
        for daemon in (sender, receiver):
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
        subprocess.run(["umount", "-l", str(big_copy)], check=False)
