"""Start real `albumsync` processes and talk to them as a person or a script would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 20.0


def albumsync(
    home: Path, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command against a data directory and return its result."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"albumsync {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        )
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    """One `albumsync run` process with its own data directory."""

    home: Path
    name: str
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    ui_url: str = ""
    log_path: Path | None = None

    def init(self) -> str:
        return albumsync(self.home, "init", "--name", self.name).stdout.strip()

    def start(self) -> None:
        runtime = self.home / "daemon.json"
        runtime.unlink(missing_ok=True)
        self.log_path = self.home / "daemon.log"
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "--home",
                str(self.home),
                "run",
                "--ui",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early ({self.proc.returncode}): {self.log()}")
            if runtime.exists():
                self.ui_url = json.loads(runtime.read_text())["ui"]
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start in {START_TIMEOUT} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    @property
    def api_key(self) -> str:
        return (self.home / "api-key").read_text().strip()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.ui_url + path, data=data, method=method)
        if key == "default":
            key = self.api_key
        if key is not None:
            req.add_header("X-API-Key", key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as err:
            raw, status, hdrs = err.read(), err.code, dict(err.headers)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return status, parsed, hdrs

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"daemon did not stop within {timeout} s after signal {sig}"
            ) from None
