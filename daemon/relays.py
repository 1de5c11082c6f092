"""The household relays this device joins: saved in settings, plus any `--relay` of this run.

A joined relay lets members outside the LAN reach us, and its URI goes into our invite codes. The
saved list survives restarts; `--relay` flags are for this run only, so they cannot be removed
through the API (the message says to restart without the flag). A relay URI always carries the
relay's device ID: the TLS certificate must match it, so a look-alike relay is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from daemon.errors import ConfigError
from daemon.relay_client import RelayClient, RelayStatus
from daemon.store import Store
from protocol.errors import ProtocolError
from protocol.invite import MAX_RELAY_CHARS
from protocol.keys import DeviceKey
from protocol.relay import RelayUri, SessionInvitation

log = logging.getLogger("albumsync.relays")

SETTING = "relays"
MAX_RELAYS = 8  # each joined relay is a connection kept open; invite codes carry the first 4

InvitationHandler = Callable[[RelayClient, SessionInvitation], Awaitable[None]]


@dataclass(frozen=True)
class RelayEntry:
    """One relay as `relay list` shows it: where it is, where it came from, how it is doing."""

    uri: str  # without the token
    source: str  # "setting" (saved, removable) or "flag" (this run's --relay)
    status: RelayStatus


def check_relay_uri(text: str) -> RelayUri:
    """A relay URI with its pinned ID, or a ConfigError saying what is wrong with it."""
    if len(text) > MAX_RELAY_CHARS:
        raise ConfigError(f"a relay URI is at most {MAX_RELAY_CHARS} characters")
    try:
        return RelayUri.parse(text.strip())
    except ProtocolError as exc:
        raise ConfigError(f"relay URI {text!r}: {exc}") from None


class Relays:
    """Joined relay clients by URI, and the saved list they come from."""

    def __init__(
        self,
        store: Store,
        key: DeviceKey,
        tls_dir: Path,
        flags: tuple[str, ...],
        on_invitation: InvitationHandler,
    ) -> None:
        self._store = store
        self._key = key
        self._tls_dir = tls_dir
        self._flags = tuple(str(check_relay_uri(uri)) for uri in flags)
        self._saved: list[str] = []
        self._on_invitation = on_invitation
        self._clients: dict[str, RelayClient] = {}

    async def start(self) -> None:
        """Read the saved list and join every relay in it and in the flags."""
        self._tls_dir.mkdir(mode=0o700, exist_ok=True)
        self._saved = await self._load()
        for uri in self.uris():
            self._join(uri)

    def uris(self) -> tuple[str, ...]:
        """Every relay joined, flags first (invite codes carry the first few)."""
        return tuple(dict.fromkeys((*self._flags, *self._saved)))

    def entries(self) -> list[RelayEntry]:
        return [
            RelayEntry(
                uri=client.uri.public,
                source="flag" if uri in self._flags else "setting",
                status=client.status,
            )
            for uri, client in self._clients.items()
        ]

    async def add(self, text: str) -> RelayEntry:
        """Save a relay and join it now; adding one already there changes nothing."""
        uri = str(check_relay_uri(text))
        if uri not in self.uris():
            if len(self.uris()) >= MAX_RELAYS:
                raise ConfigError(f"at most {MAX_RELAYS} relays; remove one first")
            await self._save([*self._saved, uri])
            self._join(uri)
        return next(e for e in self.entries() if e.uri == RelayUri.parse(uri).public)

    async def remove(self, text: str) -> None:
        """Forget a saved relay and leave it; invite codes made before still name it."""
        uri = self._find(text)
        if uri in self._flags:
            raise ConfigError(
                "this relay was given with --relay when the daemon started; "
                "restart the daemon without that flag to stop using it"
            )
        await self._save([u for u in self._saved if u != uri])
        client = self._clients.pop(uri, None)
        if client is not None:
            await client.close()

    def dialer(self, uri: str) -> RelayClient:
        """A joined client for this URI, or a dial-only one (a relay from someone's invite code)."""
        joined = self._clients.get(uri)
        if joined is None:
            public = RelayUri.parse(uri).public
            joined = next((c for c in self._clients.values() if c.uri.public == public), None)
        return joined or RelayClient(self._key, self._tls_dir, uri, _ignore_invitation)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def _join(self, uri: str) -> None:
        client = RelayClient(self._key, self._tls_dir, uri, partial(self._invited, uri))
        client.start()
        self._clients[uri] = client

    async def _invited(self, uri: str, invitation: SessionInvitation) -> None:
        client = self._clients.get(uri)
        if client is not None:  # else it was removed while the invitation was on its way
            await self._on_invitation(client, invitation)

    def _find(self, text: str) -> str:
        """The joined URI a person means: given with or without its token."""
        public = check_relay_uri(text).public
        for uri in self.uris():
            if RelayUri.parse(uri).public == public:
                return uri
        raise ConfigError(f"no relay {public} is configured (see `albumsync relay list`)")

    async def _load(self) -> list[str]:
        raw = await self._store.setting(SETTING)
        if raw is None:
            return []
        uris: list[str] = []
        for text in json.loads(raw):
            try:
                uris.append(str(check_relay_uri(str(text))))
            except ConfigError as exc:
                log.warning("ignoring a saved relay: %s", exc.message)
        return uris[:MAX_RELAYS]

    async def _save(self, uris: list[str]) -> None:
        await self._store.set_setting(SETTING, json.dumps(uris))
        self._saved = uris


def _ignore_invitation(invitation: SessionInvitation) -> None:
    """Dial-only relay clients (a relay from someone's invite code) are never joined."""
