"""One `albumsync run` process for the benchmarks, driven through its local API on loopback.

The API is called with urllib (no proxy) instead of the CLI: a CLI process per poll would cost
more CPU on these 2 cores than the thing being measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import processes
from bench.procstats import BenchError

ROOT = Path(__file__).resolve().parent.parent
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
START_LIMIT = 30.0


class AlbumsyncNode:
    """A daemon with its own data directory; peers listen on 127.0.0.1 and mDNS is off."""

    def __init__(self, home: Path, name: str) -> None:
        self.home, self.name = home, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.key = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon is not running"
        return self.proc.pid

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "--home",
                str(self.home),
                "init",
                "--name",
                self.name,
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        runtime = self.home / "daemon.json"
        runtime.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "daemon.cli", "--home", str(self.home), "run"]
        argv += ["--ui", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--no-mdns"]
        self.proc = processes.spawn(argv, self.home / "daemon.log")
        deadline = time.monotonic() + START_LIMIT
        while not runtime.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"albumsync {self.name} did not start: {self.log_tail()}")
            time.sleep(0.05)
        self.url = json.loads(runtime.read_text())["ui"].rstrip("/")
        self.key = (self.home / "api-key").read_text().strip()

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.home / "daemon.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, method: str, path: str, body: object = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        url = self.url + "/api/v1" + path  # http://127.0.0.1:PORT from the daemon's daemon.json
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("X-API-Key", self.key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise BenchError(
                f"albumsync {self.name}: {method} {path} answered {err.code}: {err.read()[:300]!r}"
            ) from None

    # --- what the workloads do -----------------------------------------------------------------

    def create_album(self, folder: Path, name: str = "bench") -> str:
        return str(self.api("POST", "/albums", {"path": str(folder), "name": name})["album_id"])

    def invite_code(self, album: str, role: str = "viewer") -> str:
        return str(self.api("POST", "/invites", {"album": album, "role": role})["code"])

    def accept(self, code: str, folder: Path) -> str:
        return str(
            self.api("POST", "/invites/accept", {"code": code, "path": str(folder)})["album_id"]
        )

    def album(self, album_id: str) -> dict[str, Any] | None:
        for summary in self.api("GET", "/albums"):
            if summary["album_id"] == album_id:
                return dict(summary)
        return None

    def album_files(self, album_id: str) -> int:
        """How many files the album's view holds here (own and received manifest entries)."""
        summary = self.album(album_id)
        return int(summary["files"]) if summary else 0

    def joined(self, album_id: str) -> bool:
        """Active and has heard the album's state from a member (so it can pull right away)."""
        summary = self.album(album_id)
        return bool(
            summary
            and summary["state"] == "active"
            and not summary["progress"]["waiting_for_peers"]
        )
