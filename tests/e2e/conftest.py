from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon, is_root, shared_folder


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """pytest's tmp_path, except as root: then a `shared_folder`, because the daemons run as the
    unprivileged test user, who can neither enter pytest's 0700 tree nor write what root creates.
    Album folders, invite targets and photos made here are the daemons' to use, unchanged tests."""
    if not is_root():
        yield tmp_path
        return
    with shared_folder() as path:
        yield path


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[object]:
    started: list[Daemon] = []

    def make(name: str, **kwargs: object) -> Daemon:
        home = tmp_path / name.replace(" ", "_").replace("'", "")
        daemon = Daemon(home=home, name=name, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
