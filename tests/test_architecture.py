"""The layering rules of ARCHITECTURE.md, checked on the source so a violation fails CI.

webui -> daemon -> protocol, never back; protocol/ is sans-I/O. Each banned import says why.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROTOCOL_BANNED = {
    "asyncio": "protocol/ is sans-I/O: the daemon owns the event loop",
    "socket": "protocol/ is sans-I/O: bytes in, bytes out",
    "ssl": "protocol/ is sans-I/O: TLS belongs to the daemon's connections",
    "os": "protocol/ touches no disk and no environment",
    "pathlib": "protocol/ touches no disk",
    "shutil": "protocol/ touches no disk",
    "tempfile": "protocol/ touches no disk",
    "io": "protocol/ touches no files (bytes objects suffice)",
    "time": "time is passed in as an argument",
    "random": "randomness is passed in as rng",
    "secrets": "randomness is passed in as rng",
    "threading": "protocol/ has no concurrency of its own",
    "subprocess": "protocol/ starts no processes",
    "logging": "protocol/ returns events and raises errors; the daemon logs",
    "sqlite3": "only daemon/store.py runs SQL",
    "aiosqlite": "only daemon/store.py runs SQL",
    "aiohttp": "HTTP belongs to webui/ and the daemon's link server",
    "jinja2": "HTML belongs to webui/",
    "watchfiles": "the folder watcher is the daemon's",
    "zeroconf": "mDNS I/O is the daemon's",
    "daemon": "dependencies point webui -> daemon -> protocol",
    "webui": "dependencies point webui -> daemon -> protocol",
}
DAEMON_BANNED = {"webui": "dependencies point webui -> daemon -> protocol"}
# The composition root builds the web app: the one sanctioned upward import (ARCHITECTURE.md).
DAEMON_ALLOWED_UPWARD = {"daemon/cli.py"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str, banned: dict[str, str], allowed: set[str]) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        for lineno, name in _imports(path):
            top = name.split(".")[0]
            if top in banned:
                problems.append(f"{rel}:{lineno} imports {name}: {banned[top]}")
    return problems


def test_protocol_is_sans_io() -> None:
    assert _violations("protocol", PROTOCOL_BANNED, set()) == []


def test_daemon_does_not_import_webui_except_composition_root() -> None:
    assert _violations("daemon", DAEMON_BANNED, DAEMON_ALLOWED_UPWARD) == []


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom time import monotonic\nfrom protocol.keys import DeviceKey\n")
    names = [name for _, name in _imports(bad)]
    assert [n for n in names if n.split(".")[0] in PROTOCOL_BANNED] == ["os", "time"]


@pytest.mark.parametrize(
    "module",
    sorted(
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for p in (ROOT / "protocol").glob("*.py")
    ),
)
def test_each_protocol_module_imports_alone(module: str) -> None:
    code = (
        f"import {module}; import sys; "
        "print(sorted(m for m in ('asyncio', 'socket', 'sqlite3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} pulled in I/O modules: {out.stdout}"
