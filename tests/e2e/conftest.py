from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[object]:
    started: list[Daemon] = []

    def make(name: str, **kwargs: object) -> Daemon:
        daemon = Daemon(
            home=tmp_path / name.replace(" ", "_").replace("'", ""), name=name, **kwargs
        )  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
