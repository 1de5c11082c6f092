"""The daemon's state database: SQLite through aiosqlite, WAL, versioned migrations.

This is the only module that runs SQL. Every table that holds signed history (logs, manifests) relies
on `synchronous=FULL` so that a committed entry survives a power cut; WAL keeps readers off the
writer's back. A damaged database is refused with a clear message and never read as "no files",
which would look like mass deletion to the sync engine.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from daemon.errors import StoreError

MIGRATION_PACKAGE = "daemon.migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered migrations shipped in daemon/migrations, in order, with no gaps."""
    found = []
    for entry in resources.files(MIGRATION_PACKAGE).iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StoreError(f"migration {expected} is missing (found {migration.version})")
    return found


class Store:
    """One open state database; use `await Store.open(path)` and `await store.close()`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if new) and migrate; StoreError if the file is damaged or too new."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        is_new = not path.exists()  # noqa: ASYNC240 - one stat at start-up
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state database {path}: {exc}") from None
        if is_new:
            os.chmod(path, 0o600)
        store = cls(db, path)
        try:
            await store._configure()
            await store._check_integrity()
            await store._migrate(load_migrations())
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(_damaged_message(path, exc)) from None
        except StoreError:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self.db.close()

    async def _configure(self) -> None:
        self.db.row_factory = aiosqlite.Row
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=FULL")
        await self.db.execute("PRAGMA foreign_keys=ON")
        await self.db.execute("PRAGMA busy_timeout=5000")

    async def _check_integrity(self) -> None:
        rows = await self.fetchall("PRAGMA quick_check")
        if not rows or rows[0][0] != "ok":
            detail = rows[0][0] if rows else "no answer"
            raise StoreError(_damaged_message(self.path, detail))

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def _migrate(self, migrations: list[Migration]) -> None:
        current = await self.schema_version()
        latest = migrations[-1].version if migrations else 0
        if current > latest:
            raise StoreError(
                f"the state database {self.path} is from a newer albumsync (schema {current}, "
                f"this version knows {latest}); upgrade albumsync instead of downgrading"
            )
        for migration in migrations[current:]:
            # executescript commits first, so run the migration statements inside our own BEGIN.
            await self.db.executescript(
                f"BEGIN IMMEDIATE;\n{migration.sql}\nPRAGMA user_version={migration.version};\nCOMMIT;"
            )

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        await self.db.execute(sql, tuple(params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        await self.db.execute("COMMIT")

    # --- identity -------------------------------------------------------------------------

    async def load_identity(self) -> tuple[bytes, str] | None:
        row = await self.fetchone("SELECT seed, name FROM identity WHERE id = 1")
        return (bytes(row["seed"]), str(row["name"])) if row else None

    async def save_identity(self, seed: bytes, name: str, created_at: int) -> None:
        await self.execute(
            "INSERT INTO identity (id, seed, name, created_at) VALUES (1, ?, ?, ?)",
            (seed, name, created_at),
        )

    async def set_device_name(self, name: str) -> None:
        await self.execute("UPDATE identity SET name = ? WHERE id = 1", (name,))


def _damaged_message(path: Path, detail: object) -> str:
    return (
        f"the state database {path} is damaged ({detail}). albumsync will not start on it, so that "
        "a lost index can never look like deleted photos. Move the file aside and restore it from a "
        "backup, or move it aside and run `albumsync init` to start this device afresh (albums are "
        "then re-joined from their other members)."
    )
