"""The daemon's state database: SQLite through aiosqlite, WAL, versioned migrations.

This is the only module that runs SQL. Every table that holds signed history (logs, manifests) relies
on `synchronous=FULL` so that a committed entry survives a power cut; WAL keeps readers off the
writer's back. A damaged database is refused with a clear message and never read as "no files",
which would look like mass deletion to the sync engine.
"""

from __future__ import annotations

import asyncio
import os
import re
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
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


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
        self._tx_lock = asyncio.Lock()
        self._tx_owner: asyncio.Task[Any] | None = None

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if new) and migrate; StoreError if the file is damaged or too new."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        is_new = not path.exists()  # noqa: ASYNC240 - one stat at start-up
        if not is_new and path.stat().st_size == 0:  # noqa: ASYNC240 - one stat at start-up
            # SQLite would take an empty file for a new database and build an empty schema in it:
            # a truncated state file would then read as "no albums, no files" (TESTPLAN E4).
            raise StoreError(_damaged_message(path, "the file is empty: it was truncated"))
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
        await self.execute("PRAGMA journal_mode=WAL")
        await self.execute("PRAGMA synchronous=FULL")
        await self.execute("PRAGMA foreign_keys=ON")
        await self.execute("PRAGMA busy_timeout=5000")

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
            async with self.db.executescript(
                f"BEGIN IMMEDIATE;\n{migration.sql}\nPRAGMA user_version={migration.version};\nCOMMIT;"
            ):
                pass

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        # Close the cursor here: one left to the garbage collector is finalised on the event-loop
        # thread while aiosqlite's worker thread uses the connection ("API misuse").
        async with self._writing(), self.db.execute(sql, tuple(params)):
            pass

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        async with self._writing(), self.db.executemany(sql, [tuple(r) for r in rows]):
            pass

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """One connection serves every task: a write waits while another task's transaction is open,
        so it can never be committed, or rolled back, as part of someone else's transaction."""
        if self._tx_owner is not None and self._tx_owner is asyncio.current_task():
            yield
            return
        async with self._tx_lock:
            yield

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; other tasks' writes wait."""
        async with self._tx_lock:
            self._tx_owner = asyncio.current_task()
            try:
                await self.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                except BaseException:
                    await self.execute("ROLLBACK")
                    raise
                await self.execute("COMMIT")
            finally:
                self._tx_owner = None

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

    # --- settings --------------------------------------------------------------------------

    async def setting(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return str(row["value"]) if row else None

    async def set_setting(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- invite codes being redeemed --------------------------------------------------------

    async def put_redemption(self, album_id: bytes, code: str, path: str, now: int) -> None:
        await self.execute(
            "INSERT OR REPLACE INTO redemptions (album_id, code, path, started_at) "
            "VALUES (?, ?, ?, ?)",
            (album_id, code, path, now),
        )

    async def redemptions(self) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT album_id, code, path FROM redemptions")

    async def delete_redemption(self, album_id: bytes) -> None:
        await self.execute("DELETE FROM redemptions WHERE album_id = ?", (album_id,))

    # --- albums ----------------------------------------------------------------------------

    async def albums(self) -> list[aiosqlite.Row]:
        return await self.fetchall(
            "SELECT album_id, path, state, joined_at FROM albums ORDER BY joined_at"
        )

    async def put_album(
        self, album_id: bytes, path: str | None, state: str, joined_at: int
    ) -> None:
        await self.execute(
            "INSERT INTO albums (album_id, path, state, joined_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (album_id) DO UPDATE SET path = excluded.path, state = excluded.state",
            (album_id, path, state, joined_at),
        )

    async def set_album_state(self, album_id: bytes, state: str, path: str | None = None) -> None:
        if path is None:
            await self.execute("UPDATE albums SET state = ? WHERE album_id = ?", (state, album_id))
        else:
            await self.execute(
                "UPDATE albums SET state = ?, path = ? WHERE album_id = ?", (state, path, album_id)
            )

    async def membership_envelopes(self, album_id: bytes) -> list[bytes]:
        rows = await self.fetchall(
            "SELECT envelope FROM membership_entries WHERE album_id = ? ORDER BY seq, hash",
            (album_id,),
        )
        return [bytes(r[0]) for r in rows]

    async def add_membership_entry(
        self, album_id: bytes, seq: int, entry_hash: bytes, envelope: bytes
    ) -> None:
        await self.execute(
            "INSERT OR IGNORE INTO membership_entries (album_id, seq, hash, envelope) VALUES (?, ?, ?, ?)",
            (album_id, seq, entry_hash, envelope),
        )

    async def statement_envelopes(self, album_id: bytes) -> list[bytes]:
        rows = await self.fetchall(
            "SELECT envelope FROM statements WHERE album_id = ?", (album_id,)
        )
        return [bytes(r[0]) for r in rows]

    async def add_statement(self, album_id: bytes, statement_hash: bytes, envelope: bytes) -> None:
        await self.execute(
            "INSERT OR IGNORE INTO statements (album_id, hash, envelope) VALUES (?, ?, ?)",
            (album_id, statement_hash, envelope),
        )

    async def manifest_envelopes(self, album_id: bytes) -> list[bytes]:
        rows = await self.fetchall(
            "SELECT envelope FROM manifest_entries WHERE album_id = ? ORDER BY author, seq",
            (album_id,),
        )
        return [bytes(r[0]) for r in rows]

    async def add_manifest_entries(
        self, album_id: bytes, entries: list[tuple[bytes, int, bytes, bytes]]
    ) -> None:
        """Insert (author, seq, hash, envelope) rows; duplicates are ignored."""
        await self.executemany(
            "INSERT OR IGNORE INTO manifest_entries (album_id, author, seq, hash, envelope) VALUES (?, ?, ?, ?, ?)",
            [(album_id, a, s, h, e) for a, s, h, e in entries],
        )

    async def epoch_keys(self, album_id: bytes) -> dict[int, bytes]:
        rows = await self.fetchall(
            "SELECT epoch, key FROM epoch_keys WHERE album_id = ?", (album_id,)
        )
        return {int(r[0]): bytes(r[1]) for r in rows}

    async def put_epoch_keys(self, album_id: bytes, keys: dict[int, bytes]) -> None:
        await self.executemany(
            "INSERT OR IGNORE INTO epoch_keys (album_id, epoch, key) VALUES (?, ?, ?)",
            [(album_id, e, k) for e, k in keys.items()],
        )

    # --- local files -------------------------------------------------------------------------

    async def local_files(self, album_id: bytes) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM local_files WHERE album_id = ?", (album_id,))

    async def put_local_file(self, album_id: bytes, row: dict[str, Any]) -> None:
        await self._replace_row("local_files", {"album_id": album_id, **row})

    async def put_indexed_files(
        self, album_id: bytes, files: list[tuple[dict[str, Any], list[bytes]]]
    ) -> None:
        """Index rows with their chunk IDs, as three statements for the whole batch (a publish of
        many files was three round trips to the database thread per file)."""
        await self._replace_rows("local_files", [{"album_id": album_id, **row} for row, _ in files])
        await self._replace_chunks(album_id, [(row["path"], chunk_ids) for row, chunk_ids in files])

    async def delete_local_file(self, album_id: bytes, path: str) -> None:
        await self.execute(
            "DELETE FROM local_files WHERE album_id = ? AND path = ?", (album_id, path)
        )
        await self.execute(
            "DELETE FROM chunk_index WHERE album_id = ? AND path = ?", (album_id, path)
        )

    async def put_chunk_index(self, album_id: bytes, path: str, chunk_ids: list[bytes]) -> None:
        await self._replace_chunks(album_id, [(path, chunk_ids)])

    async def _replace_chunks(self, album_id: bytes, files: list[tuple[str, list[bytes]]]) -> None:
        """Each path's chunk IDs, in order, replacing what was indexed for it."""
        await self.executemany(
            "DELETE FROM chunk_index WHERE album_id = ? AND path = ?",
            [(album_id, path) for path, _ in files],
        )
        await self.executemany(
            "INSERT OR REPLACE INTO chunk_index (album_id, chunk_id, path, idx) VALUES (?, ?, ?, ?)",
            [
                (album_id, cid, path, i)
                for path, chunk_ids in files
                for i, cid in enumerate(chunk_ids)
            ],
        )

    async def chunk_file(self, album_id: bytes, chunk_id: bytes) -> tuple[str, list[bytes]] | None:
        """The path that holds a chunk and every chunk ID indexed for that path, in order, in one
        round trip (serving looks a file up once, then answers its other chunks from memory)."""
        rows = await self.fetchall(
            "SELECT path, chunk_id FROM chunk_index WHERE album_id = ?1 AND path = "
            "(SELECT path FROM chunk_index WHERE album_id = ?1 AND chunk_id = ?2 LIMIT 1) "
            "ORDER BY idx",
            (album_id, chunk_id),
        )
        return (str(rows[0][0]), [bytes(r[1]) for r in rows]) if rows else None

    async def partial_done(self, album_id: bytes, entry_hash: bytes) -> bytes | None:
        row = await self.fetchone(
            "SELECT done FROM partials WHERE album_id = ? AND entry_hash = ?",
            (album_id, entry_hash),
        )
        return bytes(row[0]) if row else None

    async def put_partial(self, album_id: bytes, entry_hash: bytes, done: bytes) -> None:
        await self.execute(
            "INSERT OR REPLACE INTO partials (album_id, entry_hash, done) VALUES (?, ?, ?)",
            (album_id, entry_hash, done),
        )

    async def delete_partial(self, album_id: bytes, entry_hash: bytes) -> None:
        await self.execute(
            "DELETE FROM partials WHERE album_id = ? AND entry_hash = ?", (album_id, entry_hash)
        )

    # --- peers, invites, activity ---------------------------------------------------------------

    async def put_peer(
        self, device_id: str, public_key: bytes, certificate: bytes, name: str, seen: int
    ) -> None:
        await self.execute(
            "INSERT INTO peers (device_id, public_key, certificate, name, last_seen) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key, "
            "certificate = excluded.certificate, name = excluded.name, last_seen = excluded.last_seen",
            (device_id, public_key, certificate, name, seen),
        )

    async def peers(self) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM peers ORDER BY device_id")

    async def put_address(self, device_id: str, address: str, source: str, now: int) -> None:
        await self.execute(
            "INSERT INTO addresses (device_id, address, source, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device_id, address) DO UPDATE SET updated_at = excluded.updated_at",
            (device_id, address, source, now),
        )

    async def addresses(self) -> list[aiosqlite.Row]:
        return await self.fetchall(
            "SELECT device_id, address, source FROM addresses ORDER BY device_id"
        )

    async def put_invite_out(self, row: dict[str, Any]) -> None:
        await self._replace_row("invites_out", row)

    async def invites_out(self) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM invites_out ORDER BY created_at")

    async def set_invite_out_state(
        self, invite_id: bytes, state: str, redeemed_by: str | None = None
    ) -> None:
        await self.execute(
            "UPDATE invites_out SET state = ?, redeemed_by = COALESCE(?, redeemed_by) WHERE invite_id = ?",
            (state, redeemed_by, invite_id),
        )

    async def put_invite_in(self, row: dict[str, Any]) -> None:
        await self._replace_row("invites_in", row)

    async def _replace_row(self, table: str, row: dict[str, Any]) -> None:
        await self._replace_rows(table, [row])

    async def _replace_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """INSERT OR REPLACE rows given as {column: value}, all with the same columns in the same
        order, in one statement; names are checked, values bound."""
        if not rows:
            return
        names = [table, *rows[0]]
        if not all(_IDENTIFIER.fullmatch(name) for name in names):
            raise StoreError(f"refusing an unexpected table or column name in {names}")
        if any(list(row) != names[1:] for row in rows):
            raise StoreError(f"refusing uneven column names in rows for {table}")
        await self.executemany(
            f"INSERT OR REPLACE INTO {table} ({', '.join(rows[0])}) "  # noqa: S608 - names checked above
            f"VALUES ({', '.join('?' for _ in rows[0])})",
            [tuple(row.values()) for row in rows],
        )

    async def invites_in(self) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM invites_in ORDER BY received_at")

    async def add_activity(
        self,
        *,
        at: int,
        album_id: bytes | None,
        kind: str,
        actor: str | None,
        count: int,
        text: str,
    ) -> None:
        await self.execute(
            "INSERT INTO activity (at, album_id, kind, actor, count, text) VALUES (?, ?, ?, ?, ?, ?)",
            (at, album_id, kind, actor, count, text),
        )

    async def activity(self, limit: int = 200) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM activity ORDER BY id DESC LIMIT ?", (limit,))


def _damaged_message(path: Path, detail: object) -> str:
    return (
        f"the state database {path} is damaged ({detail}). albumsync will not start on it, so that "
        "a lost index can never look like deleted photos. Move the file aside and restore it from a "
        "backup, or move it aside and run `albumsync init` to start this device afresh (albums are "
        "then re-joined from their other members)."
    )
