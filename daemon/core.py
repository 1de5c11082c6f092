"""The running daemon: owns the store, the identity and every service's lifetime.

`Core` is the façade the web application calls; it knows nothing of HTTP. Services started here are
owned by one TaskGroup, so a failing service stops the daemon instead of dying silently.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from daemon.apikey import load_or_create_api_key
from daemon.config import Config
from daemon.identity import Identity, load_identity
from daemon.store import Store

VERSION = "0.1.0"


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

    def write_runtime_file(self, ui_url: str) -> None:
        """Tell CLI commands where this daemon's API listens (the port may have been chosen by the OS)."""
        path = self.config.runtime_path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"ui": ui_url, "pid": os.getpid()}))
        os.replace(tmp, path)

    def remove_runtime_file(self) -> None:
        self.config.runtime_path.unlink(missing_ok=True)
