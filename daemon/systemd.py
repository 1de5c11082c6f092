"""sd_notify for Type=notify units: READY, STOPPING, WATCHDOG and STATUS, without libsystemd.

The watchdog ping comes from a task on the event loop, so a stalled loop stops the pings and
systemd restarts the service: that is the point of pinging from the loop, not from a thread.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send one datagram to $NOTIFY_SOCKET; False when not running under systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval(environ: dict[str, str] | None = None, fraction: float = 0.5) -> float | None:
    """Seconds between WATCHDOG=1 pings (a fraction of WatchdogSec), or None when not asked."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 * fraction


async def watchdog_loop(interval: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
