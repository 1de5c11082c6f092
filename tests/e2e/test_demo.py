"""`albumsync demo`: three devices in one process share an album a person can try at once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import _python_of, albumsync, give_to, is_root

pytestmark = pytest.mark.e2e
DEVICE_LINE = re.compile(r"^  (.+?)\s+(owner|editor|viewer)\s+(http://\S+)\s+data: (.+)$")


class Demo:
    """The demo process, its output collected line by line on a thread."""

    def __init__(self, root: Path) -> None:
        command, env = _python_of(root)
        self.proc = subprocess.Popen(
            [*command, "-m", "daemon.cli", "demo", "--dir", str(root), "--ui-port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, limit: float = 90) -> None:
        deadline = time.monotonic() + limit
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"demo never printed {text!r}:\n" + "\n".join(self.lines))
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def _photos(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.jpg")}


def test_demo_shares_an_album_between_three_devices_and_stops_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    if is_root():
        give_to(root)  # the demo runs as the unprivileged test user, as every daemon under test
    demo = Demo(root)
    try:
        demo.wait_for("Stop with Ctrl-C.")
        devices = [m.groups() for m in map(DEVICE_LINE.match, demo.lines) if m]
        assert [(name, role) for name, role, _, _ in devices] == [
            ("Ana's laptop", "owner"),
            ("Family desktop", "editor"),
            ("Home server", "viewer"),
        ], demo.lines
        for _, _, url, _ in devices:
            with urllib.request.urlopen(url + "/", timeout=10) as page:
                assert page.status == 200
                assert "albumsync" in page.read().decode()
        again = albumsync(root, "demo", "--dir", str(root), "--ui-port", "0", check=False)
        assert again.returncode == 2, again.stderr
        assert "already running" in again.stderr

        originals = _photos(root / "photos" / "ana" / "Summer 2026")
        assert len(originals) == 12
        for _, role, _, home in devices:
            albums = json.loads(albumsync(Path(home), "album", "list", "--json").stdout)
            assert [a["name"] for a in albums] == ["Summer 2026"], (role, albums)
            albumsync(Path(home), "status", "--wait-synced", "60")
        for who in ("desktop", "server"):
            assert _photos(root / "photos" / who / "Summer 2026") == originals, who
    finally:
        code = demo.stop()
    assert code == 0, "\n".join(demo.lines)
    assert "Traceback" not in "\n".join(demo.lines)
