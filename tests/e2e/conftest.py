from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon


def _traversable_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="albumsync-e2e-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder any user may traverse (pytest's own is 0700 under root): album folders
    of daemons that run as the unprivileged test user live here."""
    path = _traversable_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[object]:
    started: list[Daemon] = []
    open_dirs: list[Path] = []

    def make(name: str, **kwargs: object) -> Daemon:
        base = tmp_path
        if kwargs.get("user") is not None and os.geteuid() == 0:
            # The test user cannot enter pytest's 0700 tree: its data dir lives elsewhere.
            if not open_dirs:
                open_dirs.append(_traversable_dir())
            base = open_dirs[0]
        daemon = Daemon(home=base / name.replace(" ", "_").replace("'", ""), name=name, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    for path in open_dirs:
        shutil.rmtree(path, ignore_errors=True)
