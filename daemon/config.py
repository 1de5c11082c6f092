"""Where albumsync keeps its state and which addresses it uses; no I/O beyond reading env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import ConfigError

DEFAULT_UI_PORT = 8855
DEFAULT_PEER_PORT = 22055
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def default_home(environ: dict[str, str] | None = None) -> Path:
    """The data directory: $ALBUMSYNC_HOME, systemd's $STATE_DIRECTORY, or the XDG data dir."""
    env = dict(os.environ) if environ is None else environ
    if env.get("ALBUMSYNC_HOME"):
        return Path(env["ALBUMSYNC_HOME"]).expanduser()
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "albumsync"


def parse_host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    """Split 'HOST:PORT', '[v6]:PORT', 'HOST' or ':PORT' into a pair, with a clear error."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{what}: '{text}' has '[' without ']'")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not port_text:
        port = default_port
    elif port_text.isdigit() and 0 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ConfigError(f"{what}: '{port_text}' is not a port number (0-65535)")
    return (host or "127.0.0.1"), port


@dataclass(frozen=True)
class Config:
    """Settings of one daemon run; tests shorten timers here instead of sleeping."""

    home: Path
    ui_host: str = "127.0.0.1"
    ui_port: int = DEFAULT_UI_PORT
    listen_host: str = "0.0.0.0"  # noqa: S104 - peers on the LAN must reach us
    listen_port: int = DEFAULT_PEER_PORT
    mdns: bool = True
    rescan_interval: float = 60.0
    watch_debounce_ms: int = 50
    watchdog_fraction: float = 0.5
    relays: tuple[str, ...] = ()  # relay://host:port/?id=DEVICE-ID, joined and put in invite codes

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def api_key_path(self) -> Path:
        return self.home / "api-key"

    @property
    def tls_dir(self) -> Path:
        """Where the relay client briefly writes its TLS key pair (0600, deleted after loading)."""
        return self.home / "tls"

    @property
    def runtime_path(self) -> Path:
        """Where a running daemon writes the address of its API, for the CLI to find."""
        return self.home / "daemon.json"
