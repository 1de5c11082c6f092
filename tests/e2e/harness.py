"""Start real `albumsync` processes and talk to them as a person or a script would."""

from __future__ import annotations

import json
import os
import pwd
import shutil
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
TEST_USER = "albumsync-test"
REPO = Path(__file__).resolve().parents[2]


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_test_user(name: str = TEST_USER) -> tuple[int, int]:
    """(uid, gid) of the unprivileged system user daemons run as under root; created if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not is_root():
            raise AssertionError(f"user {name} is missing and only root can create it") from None
        created = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # 9 = the name exists: another test process created it meanwhile.
        if created.returncode not in (0, 9):
            raise AssertionError(f"useradd {name} failed: {created.stderr}") from None
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def give_to(path: Path, user: str = TEST_USER) -> None:
    """Hand a folder tree (album folders, data dirs) to the test user; a no-op unless root."""
    if not is_root():
        return
    uid, gid = ensure_test_user(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _interpreter_for(user: str) -> tuple[list[str], dict[str, str]]:
    """A Python the user may execute, with this environment's packages on its path.

    The venv's interpreter may live under a root-only home (pyenv in /root); a system Python of the
    same minor version loads the same site-packages (same ABI) and the repository's modules.
    """
    uid, gid = ensure_test_user(user)
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]
    candidates = [
        sys.executable,
        shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}"),
    ]
    packages = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), *packages]), "PYTHONDONTWRITEBYTECODE": "1"}
    for candidate in candidates:
        if candidate is None:
            continue
        probe = subprocess.run(
            [*drop, candidate, "-c", "import daemon.cli, aiosqlite, watchfiles"],
            capture_output=True,
            env={**os.environ, **env},
            check=False,
            timeout=30,
        )
        if probe.returncode == 0:
            return [*drop, candidate], env
    raise AssertionError(f"no Python interpreter that user {user} may run was found")


def albumsync(
    home: Path, *args: str, check: bool = True, timeout: float = 60, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command against a data directory (inside network namespace `netns` if given)."""
    result = subprocess.run(
        [*_netns_prefix(netns), sys.executable, "-m", "daemon.cli", "--home", str(home), *args],
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


def _netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


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
    # Run inside this network namespace (root tests): its UI is reachable only from there, so
    # talk to it with `cli()`, not `request()`.
    netns: str | None = None
    listen: str = "127.0.0.1:0"
    mdns: bool = False
    # Run as this unprivileged user (TESTPLAN conventions: as root, mode bits mean nothing). Only
    # when the tests run as root; otherwise the daemon runs as the current user, as before.
    user: str | None = None

    @property
    def drops_privileges(self) -> bool:
        return self.user is not None and is_root()

    def init(self) -> str:
        return albumsync(self.home, "init", "--name", self.name).stdout.strip()

    def give(self, path: Path) -> None:
        """Let this daemon's user own `path` (an album folder, or where it will create one)."""
        if self.drops_privileges:
            give_to(path, self.user or TEST_USER)

    def start(self) -> None:
        runtime = self.home / "daemon.json"
        runtime.unlink(missing_ok=True)
        self.log_path = self.home / "daemon.log"
        log = self.log_path.open("a")
        command, env = [sys.executable], {}
        if self.drops_privileges:
            command, env = _interpreter_for(self.user or TEST_USER)
            self.home.mkdir(parents=True, exist_ok=True)
            give_to(self.home, self.user or TEST_USER)
        self.proc = subprocess.Popen(
            [
                *_netns_prefix(self.netns),
                *command,
                "-m",
                "daemon.cli",
                "--home",
                str(self.home),
                "run",
                "--ui",
                "127.0.0.1:0",
                "--listen",
                self.listen,
                *([] if self.mdns else ["--no-mdns"]),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env, **self.env},
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

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a CLI command against this daemon, in its network namespace if it has one."""
        return albumsync(self.home, *args, check=check, timeout=timeout, netns=self.netns)

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
