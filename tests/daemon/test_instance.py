"""One daemon per data directory, and what the CLI says while one is starting or stopping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.api_client import NOT_RUNNING, ApiClient
from daemon.errors import ApiError, ConfigError
from daemon.instance import InstanceLock, running_pid


def test_a_held_data_directory_refuses_a_second_daemon_until_released(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert running_pid(home) is None
    lock = InstanceLock.acquire(home)
    try:
        assert running_pid(home) == os.getpid()
        with pytest.raises(ConfigError, match=rf"\(pid {os.getpid()}\) is already running"):
            InstanceLock.acquire(home)
    finally:
        lock.release()
    assert running_pid(home) is None
    InstanceLock.acquire(home).release()


def test_the_cli_tells_starting_from_not_running(tmp_path: Path) -> None:
    """Before the daemon writes daemon.json (its UI may already answer), the lock says it runs."""
    home = tmp_path / "home"
    client = ApiClient(home)
    with pytest.raises(ApiError) as stopped:
        client._endpoint()
    assert stopped.value.message == NOT_RUNNING
    lock = InstanceLock.acquire(home)
    try:
        with pytest.raises(ApiError, match="is starting or stopping; try again in a moment"):
            client._endpoint()
    finally:
        lock.release()
