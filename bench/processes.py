"""Every process the benchmark starts, so each is stopped by its PID, also on errors and Ctrl-C."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.procstats import alive

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_EXTRA: dict[int, int] = {}  # started process -> a child we also stop (Syncthing's inner process)
PIDFILE: Path | None = None  # where the PIDs are listed while they run (for a person cleaning up)


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process with its output in `log`; it is registered until stop() ends it."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    _LIVE[proc.pid] = proc
    _write_pidfile()
    return proc


def track_child(parent: int, child: int) -> None:
    _EXTRA[parent] = child
    _write_pidfile()


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM (the tracked child first, then the process), SIGKILL after `grace` seconds."""
    child = _EXTRA.pop(proc.pid, None)
    if child is not None and alive(child):
        os.kill(child, signal.SIGTERM)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"[bench] pid {proc.pid} ignored SIGTERM; SIGKILL", file=sys.stderr)
        proc.kill()
        proc.wait(10)
    if child is not None and alive(child):
        os.kill(child, signal.SIGKILL)
    _LIVE.pop(proc.pid, None)
    _write_pidfile()


def stop_all() -> None:
    for proc in list(_LIVE.values()):
        stop(proc)


def _write_pidfile() -> None:
    if PIDFILE is not None and PIDFILE.parent.exists():
        PIDFILE.write_text("".join(f"{pid}\n" for pid in [*_LIVE, *_EXTRA.values()]))


def _on_signal(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)  # runs the finally blocks and atexit, which stop everything


atexit.register(stop_all)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)
