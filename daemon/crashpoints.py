"""Crash points for tests (TESTPLAN E2): `crashpoint("name")` kills this process at that step.

A test starts the daemon with ALBUMSYNC_CRASH_AT=name; when the step is reached the process writes
one line to stderr (so the test knows the point was really reached) and SIGKILLs itself: no
finally blocks, no flush, no atexit, exactly like a power cut of the process. Without the variable
every call is one comparison with None.
"""

from __future__ import annotations

import os
import signal

ENV = "ALBUMSYNC_CRASH_AT"
_TARGET = os.environ.get(ENV) or None


def crashpoint(name: str) -> None:
    """Die here, at once, if the test asked for a crash at `name`."""
    if _TARGET is not None and name == _TARGET:
        os.write(2, f"albumsync: crash point {name} reached, killing this process\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
