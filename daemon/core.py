"""The running daemon: owns the store, the identity and every service's lifetime.

`Core` is the façade the web application calls; it knows nothing of HTTP. Services started here are
owned by one TaskGroup, so a failing service stops the daemon instead of dying silently.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from dataclasses import dataclass

from daemon.apikey import load_or_create_api_key
from daemon.config import Config
from daemon.discovery import Discovery
from daemon.engine import Engine
from daemon.errors import DaemonError
from daemon.identity import Identity, load_identity
from daemon.peers import tcp_address
from daemon.publisher import Publisher
from daemon.relay_client import RelayClient
from daemon.relays import Relays
from daemon.store import Store
from daemon.thumbnails import Thumbnails
from daemon.transfers import Transfers
from protocol.ids import DeviceId
from protocol.relay import SessionInvitation

VERSION = "0.1.0"
log = logging.getLogger("albumsync")


@dataclass(frozen=True)
class Status:
    device_id: str
    device_name: str
    version: str
    started_at: float
    uptime: float
    schema_version: int


class Core:
    """One albumsync device: opened with `await Core.open(config)`, closed with `close()`."""

    def __init__(self, config: Config, store: Store, identity: Identity, api_key: str) -> None:
        self.config = config
        self.store = store
        self.identity = identity
        self.api_key = api_key
        self.started_at = time.time()
        self.engine = Engine(config=config, store=store, identity=identity)
        self.transfers = Transfers(self.engine)
        self.publisher = Publisher(self.engine)
        self.engine.transfers = self.transfers
        self.engine.publisher = self.publisher
        self.discovery: Discovery | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.relays = Relays(
            store, identity.key, config.tls_dir, config.relays, self._relay_invitation
        )

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """Load albums, listen for peers, announce on the LAN, and start the background services."""
        engine = self.engine
        await engine.load()
        engine.refresher.start()
        await engine.refresh_open_invites()
        engine.peers.wants_nearby = self._wants_nearby
        await engine.peers.start()
        await self._start_relays()
        if self.config.mdns:
            self.discovery = Discovery(
                str(self.identity.device_id), engine.peers.bound_port, self._seen_nearby
            )
            try:
                await self.discovery.start()
            except DaemonError as exc:
                log.warning("LAN discovery is off: %s", exc.message)
                self.discovery = None
        self.tasks += [
            tasks.create_task(self.publisher.run()),
            tasks.create_task(self.publisher.watch_loop(self.config.watch_debounce_ms)),
            tasks.create_task(self.publisher.periodic(self.config.rescan_interval)),
        ]
        for album in list(engine.albums.values()):
            if album.state == "active":
                await engine.refresh_album(album)
                self.publisher.schedule(album)

    async def _start_relays(self) -> None:
        """Join the saved and flagged relays, and let the peer manager dial through any relay URI."""
        self.engine.peers.relay_dialer = self.relays.dialer
        self.engine.relay_uris = self.relays.uris
        await self.relays.start()

    async def _relay_invitation(self, client: RelayClient, invitation: SessionInvitation) -> None:
        """Someone asked the relay for a session with us: join it and answer the handshake."""
        try:
            reader, writer = await client.connect_session(invitation)
        except DaemonError as exc:
            log.info("relay session from %s failed: %s", invitation.from_device.short, exc)
            return
        address = f"{client.uri.public}"
        await self.engine.peers.accept_stream(reader, writer, address, "relay")

    async def stop(self) -> None:
        """Stop the services this core started (the TaskGroup then finishes)."""
        await self.relays.close()
        for task in self.tasks:
            task.cancel()
        if self.discovery is not None:
            await self.discovery.stop()
        await self.engine.peers.stop()
        await self.engine.refresher.stop()
        await self.engine.transfers.stop()  # type: ignore[attr-defined]
        await self.engine.flush_notices()

    def _seen_nearby(self, device_id: str, addresses: list[tuple[str, int]]) -> None:
        """A LAN announcement: candidate addresses, dialed when _wants_nearby (the handshake proves who it is)."""
        device = DeviceId.parse(device_id)
        self.engine.nearby.add(device)
        self.engine.peers.seen_on_lan(device, [tcp_address(h, p) for h, p in addresses])

    def _wants_nearby(self, device: DeviceId) -> bool:
        """Dial a device seen on the LAN if it shares an album with us, owns a code we are
        redeeming, or has a direct invite from us waiting (issue 3: mDNS alone is enough)."""
        engine = self.engine
        return (
            any(r.owner == device for r in engine.redemptions.values())
            or str(device) in engine._open_invite_targets
            or any(
                album.device_of(key) == device
                for album in engine.albums.values()
                for key in album.member_keys()
            )
        )

    @classmethod
    async def open(cls, config: Config) -> Core:
        store = await Store.open(config.db_path)
        try:
            identity = await load_identity(store)
        except BaseException:
            await store.close()
            raise
        api_key = load_or_create_api_key(config.api_key_path)
        return cls(config, store, identity, api_key)

    async def close(self) -> None:
        await self.store.close()

    async def status(self) -> Status:
        return Status(
            device_id=str(self.identity.device_id),
            device_name=self.identity.name,
            version=VERSION,
            started_at=self.started_at,
            uptime=time.time() - self.started_at,
            schema_version=await self.store.schema_version(),
        )

    def write_runtime_file(self, ui_url: str, peer_port: int) -> None:
        """Tell CLI commands where this daemon's API listens (the port may have been chosen by the OS)."""
        path = self.config.runtime_path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"ui": ui_url, "pid": os.getpid(), "peer_port": peer_port}))
        os.replace(tmp, path)

    def remove_runtime_file(self) -> None:
        self.config.runtime_path.unlink(missing_ok=True)

    @functools.cached_property
    def thumbnails(self) -> Thumbnails:
        """The thumbnail cache under the data directory (made on first use: the CLI never needs it)."""
        return Thumbnails(self.config.home / "thumbs")
