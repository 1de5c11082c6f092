"""Start real `albumsync` processes and talk to them as a person or a script would."""

from __future__ import annotations

import errno
import functools
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 20.0
TEST_USER = "albumsync-test"
REPO = Path(__file__).resolve().parents[2]
ACL_ACCESS, ACL_DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
# What `albumsync run` imports, compiled extensions included: the interpreter found for the test
# user must load all of it from this environment's site-packages.
PROBE = "import daemon.cli, daemon.runner, webui.app, aiosqlite, watchfiles, zeroconf, PIL.Image"


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
    """Hand a folder tree (a data dir, a freshly mounted disk) to the test user as its owner would
    hold it: chowned, and without the ACLs of `shared_folder` (so modes such as the API key's
    0600 mean what they say). A no-op unless root."""
    if not is_root():
        return
    uid, gid = ensure_test_user(user)
    for root, dirs, files in os.walk(path):
        _own(root, uid, gid)
        for name in dirs + files:
            _own(os.path.join(root, name), uid, gid)


def _own(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    if os.path.islink(path):
        return
    for name in (ACL_ACCESS, ACL_DEFAULT):
        try:
            os.removexattr(path, name)
        except OSError as err:
            if err.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise


def _acl(uid: int) -> bytes:
    """The kernel's POSIX ACL xattr (version 2; tag, permissions, id): rwx for the owner and for
    user `uid`, r-x for group and others (setfacl is not installed everywhere)."""
    undefined = 0xFFFFFFFF
    user_obj, user, group_obj, mask, other = 0x01, 0x02, 0x04, 0x10, 0x20
    entries = [(user_obj, 7, undefined), (user, 7, uid), (group_obj, 5, undefined)]
    entries += [(mask, 7, undefined), (other, 5, undefined)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@contextmanager
def shared_folder(prefix: str = "albumsync-e2e-", user: str = TEST_USER) -> Iterator[Path]:
    """A temporary folder the daemons' user may use as its own (removed afterwards).

    As root it is traversable and carries a default ACL giving `user` rwx on everything created
    beneath it: album folders, the folders invites are accepted into, and the photos the (root)
    test process writes there are then the daemon's to read, move and trash, as its owner's
    would be, without a chown after every write. (Not Unix sockets: bind applies the umask, so
    a listener the daemon must reach is chmodded.) Without root it is a plain private folder.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if is_root():
            uid, _ = ensure_test_user(user)
            path.chmod(0o755)
            acl = _acl(uid)
            try:
                os.setxattr(path, ACL_ACCESS, acl)
                os.setxattr(path, ACL_DEFAULT, acl)
            except OSError as err:
                raise AssertionError(
                    f"cannot set a POSIX ACL on {path} ({err.strerror}): point TMPDIR at a file "
                    "system with ACLs (ext4, tmpfs) so daemons can run as the unprivileged test user"
                ) from None
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
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
            [*drop, candidate, "-c", PROBE],
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
    """Run one CLI command against a data directory (inside network namespace `netns` if given),
    as the data directory's owner: the person whose daemon it is runs its commands."""
    command, env = _python_of(home)
    result = subprocess.run(
        [*_netns_prefix(netns), *command, "-m", "daemon.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"albumsync {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        )
    return result


def _python_of(home: Path) -> tuple[list[str], dict[str, str]]:
    """The interpreter command (and environment) that runs as the owner of `home`: this process's
    own unless we are root and the folder belongs to another user."""
    try:
        uid = home.stat().st_uid
    except FileNotFoundError:
        uid = os.geteuid()
    if not is_root() or uid == os.geteuid():
        return [sys.executable], {}
    return _interpreter_for(pwd.getpwuid(uid).pw_name)


def _uid_of(pid: int) -> int:
    """The effective uid of a running process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise AssertionError(f"/proc/{pid}/status has no Uid line")


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
    # When the tests run as root, the daemon (and the CLI against its data dir) runs as this
    # unprivileged user (TESTPLAN conventions: as root, mode bits mean nothing and the service's
    # User= goes untested). Without root it runs as the current user. `user=None` keeps a root
    # daemon: a test that needs one says why.
    user: str | None = TEST_USER

    @property
    def drops_privileges(self) -> bool:
        return self.user is not None and is_root()

    def init(self) -> str:
        self._hand_over_home()
        return albumsync(self.home, "init", "--name", self.name).stdout.strip()

    def give(self, path: Path) -> None:
        """Let this daemon's user own `path` (a folder outside `shared_folder`, such as a newly
        mounted file system's root)."""
        if self.drops_privileges:
            give_to(path, self.user or TEST_USER)

    def _hand_over_home(self) -> None:
        # Again before every start: the test may have written into the data dir as root, and the
        # log file is created here, by root.
        if self.drops_privileges:
            self.home.mkdir(parents=True, exist_ok=True)
            (self.home / "daemon.log").touch()
            give_to(self.home, self.user or TEST_USER)

    def start(self) -> None:
        runtime = self.home / "daemon.json"
        runtime.unlink(missing_ok=True)
        self.log_path = self.home / "daemon.log"
        self._hand_over_home()
        python, python_env = self._python()
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [*_netns_prefix(self.netns), *python, "-m", "daemon.cli"]
                + ["--home", str(self.home), "run", "--ui", "127.0.0.1:0", "--listen", self.listen]
                + ([] if self.mdns else ["--no-mdns"])
                + self.extra_args,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **python_env, **self.env},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early ({self.proc.returncode}): {self.log()}")
            if runtime.exists():
                info = json.loads(runtime.read_text())
                self.ui_url = info["ui"]
                self._check_user(int(info["pid"]))
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start in {START_TIMEOUT} s: {self.log()}")

    def _python(self) -> tuple[list[str], dict[str, str]]:
        if self.drops_privileges:
            return _interpreter_for(self.user or TEST_USER)
        return [sys.executable], {}

    def _check_user(self, pid: int) -> None:
        """The daemon really runs as the user it was meant to (a silent root daemon would make every
        permission in the test vacuous)."""
        want = (
            ensure_test_user(self.user or TEST_USER)[0] if self.drops_privileges else os.geteuid()
        )
        got = _uid_of(pid)
        if got != want:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon {self.name} runs as uid {got}, expected uid {want}")

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
