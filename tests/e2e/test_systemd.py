"""TESTPLAN P4: the units verify, the system unit is hardened, and the watchdog follows the loop."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_run import NotifyListener

pytestmark = pytest.mark.e2e
UNITS = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)


def _unit_with_real_binary(name: str, tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's albumsync (which exists)."""
    binary = Path(sys.executable).parent / "albumsync"
    text = (UNITS / name).read_text()
    text = re.sub(r"(Exec\w+=)\S*albumsync", rf"\g<1>{binary}", text)
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_analyze
@pytest.mark.parametrize("name", ["albumsync.service", "albumsync-user.service"])
def test_P4_units_verify_clean(name: str, tmp_path: Path) -> None:
    unit = _unit_with_real_binary(name, tmp_path)
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False
    )  # type: ignore[list-item]
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "albumsync" in line
    ]
    assert result.returncode == 0, result.stderr
    assert problems == []


@needs_analyze
def test_P4_system_unit_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    unit = _unit_with_real_binary("albumsync.service", tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,  # type: ignore[list-item]
    )
    found = re.search(r"Overall exposure level for albumsync\.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    score = float(found.group(1))
    print(f"\nsystemd-analyze security exposure of albumsync.service: {score}")
    assert score <= 2.5


def test_P4_no_watchdog_ping_while_the_loop_is_stalled(make_daemon, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        daemon = make_daemon(
            "server",
            env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"},
        )
        daemon.init()
        daemon.start()
        time.sleep(0.5)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # pings already in flight arrive
        before = len(listener.messages)
        time.sleep(1.0)
        during = len(listener.messages) - before
        daemon.proc.send_signal(signal.SIGCONT)
        time.sleep(0.6)
        after = listener.messages[before + during :]
        assert daemon.stop() == 0
    finally:
        listener.close()
    assert during == 0, "the daemon pinged the watchdog while stopped"
    assert "WATCHDOG=1" in after, "the watchdog pings did not resume"
