"""The daemon as a process: init, run, status, systemd notify, clean stop, damaged database."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.e2e.harness import albumsync, ensure_test_user

pytestmark = pytest.mark.e2e
DEVICE_ID = re.compile(r"^([A-Z2-7]{7}-){7}[A-Z2-7]{7}$")


class NotifyListener:
    """A fake $NOTIFY_SOCKET that records every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # as systemd's is: the daemon under test runs as another user
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_init_prints_a_device_id_and_refuses_twice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = albumsync(home, "init", "--name", "Ana's laptop").stdout.strip()
    assert DEVICE_ID.match(out), out
    assert albumsync(home, "id").stdout.strip() == out
    again = albumsync(home, "init", "--name", "x", check=False)
    assert again.returncode != 0
    assert "already holds a device identity" in again.stderr
    assert "Traceback" not in again.stderr
    assert albumsync(home, "init", "--name", "x", "--if-missing").returncode == 0


def test_commands_without_identity_explain_what_to_do(tmp_path: Path) -> None:
    result = albumsync(tmp_path / "empty", "id", check=False)
    assert result.returncode == 4
    assert "albumsync init" in result.stderr
    assert "Traceback" not in result.stderr


def test_P4_run_notifies_ready_serves_status_and_stops_on_sigterm(
    make_daemon, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = NotifyListener(notify_path)
    try:
        daemon = make_daemon(
            "home server", env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        )
        device_id = daemon.init()
        daemon.start()
        status, body, headers = daemon.request("GET", "/api/v1/status")
        assert status == 200
        assert body["device_id"] == device_id
        assert headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert daemon.request("GET", "/api/v1/status", key=None)[0] == 401
        assert daemon.request("GET", "/api/v1/status", key="wrong")[0] == 401
        assert daemon.request("GET", "/api/v1/status", headers={"Host": "evil.test"})[0] == 403
        assert (daemon.home / "api-key").stat().st_mode & 0o777 == 0o600
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        listener.close()
    ready = [i for i, m in enumerate(listener.messages) if "READY=1" in m]
    stopping = [i for i, m in enumerate(listener.messages) if "STOPPING=1" in m]
    assert ready
    assert stopping
    assert ready[0] < stopping[0]
    assert any(m == "WATCHDOG=1" for m in listener.messages)
    assert not (daemon.home / "daemon.json").exists()


def test_E4_damaged_database_is_refused_with_a_clear_message(make_daemon) -> None:
    daemon = make_daemon("laptop")
    daemon.init()
    db = daemon.home / "state.db"
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the header's tail and the schema page
    db.write_bytes(bytes(data))
    result = albumsync(daemon.home, "run", "--ui", "127.0.0.1:0", "--no-mdns", check=False)
    assert result.returncode == 3, result.stderr
    assert "damaged" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_peer_port_in_use_is_one_sentence_not_a_traceback(make_daemon) -> None:
    """Two data directories on one machine (a system service and a desktop's daemon) both
    default to peer port 22055: the second must say what to change."""
    daemon = make_daemon("laptop")
    daemon.init()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = albumsync(
            daemon.home,
            *("run", "--ui", "127.0.0.1:0", "--listen", f"127.0.0.1:{port}", "--no-mdns"),
            check=False,
            timeout=30,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for peers on 127.0.0.1:{port}" in result.stderr
    assert "--listen HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_daemon_on_one_data_directory_is_refused(make_daemon) -> None:
    """Two daemons on one data directory would migrate one database and race each other's renames
    in the album folders (a systemd service plus a hand-started `albumsync run`)."""
    daemon = make_daemon("laptop")
    daemon.init()
    daemon.start()
    assert daemon.proc is not None
    second = albumsync(
        daemon.home,
        "run",
        "--ui",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        check=False,
        timeout=30,
    )
    assert second.returncode == 2, second.stderr
    assert f"already running on the data directory {daemon.home}" in second.stderr
    assert f"(pid {daemon.proc.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert json.loads(daemon.cli("status", "--json").stdout)["device_name"] == "laptop"
    assert daemon.stop() == 0
    # SIGKILL leaves no stale lock: the kernel drops it with the process.
    daemon.start()
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    daemon.start()
    assert daemon.stop() == 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: without it daemons run as the caller")
def test_daemons_under_test_run_as_the_unprivileged_test_user(make_daemon, tmp_path: Path) -> None:
    """TESTPLAN conventions: as root, the harness runs daemons (and their CLI) as the test user,
    so permissions mean something; its data dir and what it writes into an album are that user's."""
    daemon = make_daemon("unprivileged")
    daemon.init()
    daemon.start()
    assert daemon.proc is not None
    uid = ensure_test_user()[0]
    ps = ["ps", "-o", "uid=", "-p", str(daemon.proc.pid)]
    assert int(subprocess.run(ps, capture_output=True, text=True, check=True).stdout) == uid
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8" + os.urandom(2000))
    albumsync(daemon.home, "album", "create", str(photos), "--name", "Mine")
    albumsync(daemon.home, "status", "--wait-synced", "30")
    for path in [daemon.home / "state.db", daemon.home / "api-key", photos / ".albumsync"]:
        assert path.stat().st_uid == uid, path
    assert (daemon.home / "api-key").stat().st_mode & 0o777 == 0o600
    assert daemon.stop() == 0
