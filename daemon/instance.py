"""One daemon per data directory: an exclusive lock on <home>/daemon.lock for its whole life.

Two daemons on one data directory would migrate one database at once and race each other's
renames in the same album folders; a systemd service plus a hand-started `albumsync run` is the
usual way to get there. flock is released by the kernel when the process dies, SIGKILL
included, so a crash never leaves a stale lock behind. The file holds the holder's PID only for
the messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from daemon.errors import ConfigError

LOCK_NAME = "daemon.lock"


class InstanceLock:
    """Held from `acquire` until `release` (or the process's end)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Path) -> InstanceLock:
        """Take the data directory; ConfigError naming the other daemon if one holds it."""
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f" (pid {pid})" if pid else ""
            raise ConfigError(
                f"another albumsync daemon{who} is already running on the data directory "
                f"{home}; stop it first, or give this one its own --home"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def running_pid(home: Path) -> int | None:
    """The PID of the daemon holding `home`, or None when no daemon runs on it."""
    try:
        fd = os.open(home / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)  # 0 when it has not written its PID yet
        except OSError:
            return None
        return None  # nobody held it (our shared lock goes with the descriptor)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip() or 0)
    return 0
