"""The local API key: a secret file in the data directory (mode 0600) that the CLI presents."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

API_KEY_BYTES = 32


def load_or_create_api_key(path: Path) -> str:
    """Read the key, creating it atomically with mode 0600 the first time."""
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(API_KEY_BYTES)
    write_secret_file(path, key + "\n")
    return key


def rotate_api_key(path: Path) -> str:
    key = secrets.token_urlsafe(API_KEY_BYTES)
    write_secret_file(path, key + "\n")
    return key


def write_secret_file(path: Path, text: str) -> None:
    """Write via a 0600 temp file, fsync and rename, so the secret is never world-readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def keys_match(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak the key (TESTPLAN W4)."""
    return hmac.compare_digest(given.encode(), expected.encode())
