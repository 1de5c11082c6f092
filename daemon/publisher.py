"""Local changes -> signed manifest entries: scan album folders, hash off the loop, publish.

A viewer's (or a removed member's) local files are indexed as `local_only` and never published.
A local deletion publishes a remove only for files this device may remove (its own, or any as
owner); other members' files that vanish locally are fetched again, since they are still in the
album. A scan of a folder whose marker is missing or wrong publishes nothing (TESTPLAN D1).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.album import Album, LocalFile, indexed_row
from daemon.files import FileChangedError, FolderError, FolderState
from daemon.scanner import HashedFile, KnownFile, ScannedFile, hash_file_blocking, scan_blocking
from daemon.watcher import watch
from protocol.chunks import new_file_key
from protocol.errors import ProtocolError
from protocol.manifest import Payload
from protocol.rights import Role

if TYPE_CHECKING:
    from daemon.engine import Engine

log = logging.getLogger("albumsync.publisher")
MAX_FILE_PROBLEMS = 100  # per album: a folder of unreadable files must not grow the list forever


def note_problem(album: Album, path: str, text: str) -> None:
    """Show `path: text` among the album's problems (once; replacing an older note on path)."""
    clear_problem(album, path)
    if len(album.problems) < MAX_FILE_PROBLEMS:
        album.problems.append(f"{path}: {text}")


def clear_problem(album: Album, path: str) -> None:
    album.problems = [p for p in album.problems if not p.startswith(f"{path}: ")]


HASH_WORKERS = 2  # hashing and AES-GCM release the GIL: one per core
WATCH_SETTLE = 0.5  # seconds after a watcher (re)start when a second full scan covers its set-up
RESCAN_CHANGED = 1.0  # seconds until a file that changed while it was hashed is scanned again
MAX_PUBLISH_BATCH = 512  # files signed and committed in one transaction
EDIT_TAG = "edited"  # conflict tag of a local edit of another member's photo (names.conflict_name)


@dataclass
class Publisher:
    engine: Engine
    _scheduled: dict[bytes, set[str] | None] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # scans vs finishing downloads
    _roots_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def schedule(self, album: Album, paths: Collection[str] | None = None) -> None:
        """Ask for a scan of the album (of `paths` only, or all of it when None)."""
        current = self._scheduled.get(album.album_id, set())
        if paths is None or current is None:
            self._scheduled[album.album_id] = None
        else:
            self._scheduled[album.album_id] = current | set(paths)
        self._wake.set()

    async def run(self) -> None:
        """Scan whatever was scheduled, one album at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._scheduled:
                album_id, paths = self._scheduled.popitem()
                album = self.engine.albums.get(album_id)
                if album is not None and album.state == "active":
                    try:
                        await self.scan(album, paths)
                    except Exception:
                        log.exception("album %s: scan failed", album.printable_id)

    def albums_changed(self) -> None:
        """An album was created, joined or left: the watcher restarts on the new set of folders."""
        self._roots_changed.set()

    async def watch_loop(self, debounce_ms: int) -> None:
        """Feed the watcher's change batches into scans; restart when the set of albums changes."""
        while True:
            self._roots_changed.clear()
            roots = {
                a.path: a for a in self.engine.albums.values() if a.state == "active" and a.path
            }
            if not roots:
                await self._roots_changed.wait()
                continue
            # Whatever changed while no watcher ran is found by full scans of each folder: now, and
            # once more when the watcher has surely set up its watches (it gives no ready signal).
            for album in roots.values():
                self.schedule(album)
            asyncio.get_running_loop().call_later(
                WATCH_SETTLE, self._rescan_all, list(roots.values())
            )
            stop = asyncio.Event()
            relay = asyncio.ensure_future(self._stop_on_change(stop))
            watcher = watch(list(roots), debounce_ms, stop_event=stop)
            try:
                async for batch in watcher:
                    for root, paths in batch.items():
                        changed = roots.get(root)
                        if changed is not None:
                            self.schedule(changed, paths or None)
            finally:
                relay.cancel()
                stop.set()
                await watcher.aclose()

    def _rescan_all(self, albums: list[Album]) -> None:
        for album in albums:
            self.schedule(album)

    async def _stop_on_change(self, stop: asyncio.Event) -> None:
        await self._roots_changed.wait()
        stop.set()

    async def periodic(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for album in list(self.engine.albums.values()):
                if album.state == "active":
                    self.schedule(album)

    async def scan(self, album: Album, paths: set[str] | None) -> None:
        folder = album.folder
        if folder is None:
            return
        state = await asyncio.to_thread(folder.check)
        if state is not FolderState.OK:
            message = (
                f"folder {album.path} is {state.value.replace('_', ' ')}: nothing is synced from it"
            )
            if message not in album.problems:
                album.problems.append(message)
                await self.engine.activity(album, "error", message)
            return
        had_folder_problem = any(p.startswith("folder ") for p in album.problems)
        album.problems = [p for p in album.problems if not p.startswith("folder ")]
        async with self.lock:
            known = {p: KnownFile(r.size, r.mtime_ns, r.inode) for p, r in album.local.items()}
            try:
                result = await asyncio.to_thread(scan_blocking, folder, known, paths)
            except FolderError as exc:
                log.warning("album %s: scan refused: %s", album.printable_id, exc)
                return
            await self._publish_changed(album, result.changed)  # broadcast batch by batch
            removed = await self._publish_vanished(album, result.vanished)
        if removed:
            await self.engine.broadcast_manifest(album, removed)
        # A scan that found nothing new (the usual case: the watcher reporting a file a download
        # just put in place) leaves the view and the folder as they were.
        if result.changed or result.vanished or had_folder_problem:
            self.engine.refresher.soon(album)

    async def _publish_changed(self, album: Album, changed: list[ScannedFile]) -> list[bytes]:
        """Hash and publish new and modified files; every committed batch goes out at once.

        Hashing runs in HASH_WORKERS threads; a single committer signs whatever hashes are ready
        and writes them in one transaction (one fsync for many files instead of one each), so a
        100,000-file folder is not 100,000 commits, and peers hear of the first files while the
        rest are still being hashed.
        """
        to_hash = await self._sort_changed(album, changed)
        if not to_hash:
            return []
        ready: asyncio.Queue[_Hashed | None] = asyncio.Queue()
        pending = iter(to_hash)

        async def hash_worker() -> None:
            for scanned, row in pending:  # a shared iterator: each file goes to one worker
                hashed = await self._hash(album, scanned)
                if hashed is not None:
                    ready.put_nowait(_Hashed(scanned.path, hashed[0], hashed[1], row))

        async def hash_all() -> None:
            try:
                await asyncio.gather(*(hash_worker() for _ in range(HASH_WORKERS)))
            finally:
                ready.put_nowait(None)

        hashing = asyncio.ensure_future(hash_all())
        try:
            return await self._commit_as_ready(album, ready)
        finally:
            hashing.cancel()
            await asyncio.gather(hashing, return_exceptions=True)

    async def _sort_changed(
        self, album: Album, changed: list[ScannedFile]
    ) -> list[tuple[ScannedFile, LocalFile | None]]:
        """Deal with what needs no hash (edits of others' photos, a viewer's files); the rest,
        with the row each replaces, is to be hashed and published."""
        role = album.my_role
        may_add = role is not None and role >= Role.EDITOR
        to_hash: list[tuple[ScannedFile, LocalFile | None]] = []
        local_only: list[LocalFile] = []
        for scanned in changed:
            row = album.local.get(scanned.path)
            if row is not None and (row.size, row.mtime_ns, row.inode) == (
                scanned.size,
                scanned.mtime_ns,
                scanned.inode,
            ):
                continue  # indexed meanwhile (a download finished during the walk)
            if row is not None and row.file is not None and row.file_author != album.me.public:
                await self._set_aside_edit(album, scanned)
            elif not may_add:
                local_only.append(_local_only_row(scanned))
            else:
                to_hash.append((scanned, row))
        if local_only:
            await self._record_local_only(album, local_only)
        return to_hash

    async def _commit_as_ready(
        self, album: Album, ready: asyncio.Queue[_Hashed | None]
    ) -> list[bytes]:
        """Publish what `ready` yields, as many as are waiting per transaction, until None."""
        envelopes: list[bytes] = []
        done = False
        while not done:
            batch: list[_Hashed] = []
            item = await ready.get()
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                if len(batch) >= MAX_PUBLISH_BATCH or ready.empty():
                    break
                item = ready.get_nowait()
            published = await self._publish_batch(album, batch) if batch else []
            if published:
                envelopes += published
                await self.engine.broadcast_manifest(album, published)
        return envelopes

    async def _hash(self, album: Album, scanned: ScannedFile) -> tuple[HashedFile, bytes] | None:
        """Hash and encrypt one file off the loop; None (and a retry or a problem) if it failed."""
        folder = album.folder
        assert folder is not None  # scan() checked it
        file_key = new_file_key(os.urandom)
        try:
            hashed = await asyncio.to_thread(hash_file_blocking, folder, scanned.path, file_key)
        except FileChangedError as exc:
            # Never publish bytes that changed under the hash; try again once the writer had
            # time to finish (the watcher may have reported its last write before this scan
            # read it).
            log.info("album %s: %s not published yet: %s", album.printable_id, scanned.path, exc)
            asyncio.get_running_loop().call_later(
                RESCAN_CHANGED, self.schedule, album, [scanned.path]
            )
            return None
        except FolderError as exc:
            # Unreadable (mode 000, I/O error): the person must see which file and why.
            log.warning("album %s: %s", album.printable_id, exc)
            note_problem(album, scanned.path, f"not synced: {exc.message}")
            return None
        return hashed, file_key

    async def _publish_batch(self, album: Album, batch: list[_Hashed]) -> list[bytes]:
        """Sign the batch's entries and store them with their index rows in one transaction."""
        signed: list[tuple[bytes, LocalFile, list[bytes]]] = []
        adopted: list[tuple[LocalFile, list[bytes]]] = []
        for item in batch:
            if (taken := _adoption(album, item)) is not None:
                adopted.append(taken)
                album.local[item.path] = taken[0]
                clear_problem(album, item.path)
                continue
            try:
                made = self._sign(album, item)
            except Exception:
                # One file's failure must not abort the others (nor leave them half published).
                log.exception("album %s: publishing %s failed", album.printable_id, item.path)
                album.problems.append(f"{item.path}: could not be published; see the log")
                continue
            if made is not None:
                signed.append(made)
                # In memory first: whatever happens to the write below, a rescan must not
                # publish the file a second time.
                album.local[item.path] = made[1]
                clear_problem(album, item.path)
        if not signed and not adopted:
            return []
        store = self.engine.store
        # On disk, entries and index rows commit together or not at all.
        async with store.transaction():
            await self.engine.add_manifest_entries(album, [envelope for envelope, _, _ in signed])
            await store.put_indexed_files(
                album.album_id,
                [(row.row(), chunk_ids) for _, row, chunk_ids in signed]
                + [(row.row(), chunk_ids) for row, chunk_ids in adopted],
            )
        return [envelope for envelope, _, _ in signed]

    def _sign(self, album: Album, item: _Hashed) -> tuple[bytes, LocalFile, list[bytes]] | None:
        """The signed entry of one hashed file, its index row and its chunk IDs."""
        current = album.current_epoch_key()
        if current is None:
            return None
        epoch, epoch_key = current
        hashed, row = item.hashed, item.row
        payload = Payload(
            name=item.path,
            size=hashed.size,
            mtime_ns=hashed.mtime_ns,
            content_hash=hashed.content_hash,
            file_key=item.file_key,
            chunks=tuple(hashed.chunks),
        )
        chain = album.ensure_chain()
        try:
            if row is not None and row.file is not None:
                signed = chain.update(epoch, epoch_key, row.file_id or b"", payload, os.urandom)
            else:
                signed = chain.add(epoch, epoch_key, payload, os.urandom)
        except ProtocolError as exc:
            log.warning("album %s: cannot publish %s: %s", album.printable_id, item.path, exc)
            album.chain = None
            return None
        new_row = LocalFile(
            path=item.path,
            size=hashed.size,
            mtime_ns=hashed.mtime_ns,
            inode=hashed.inode,
            content_hash=hashed.content_hash,
            file_author=album.me.public,
            file_id=signed.entry.file_id,
            entry_hash=signed.hash,
            file_key=item.file_key,
            state="synced",
        )
        return signed.envelope, new_row, [c.chunk_id for c in hashed.chunks]

    async def _record_local_only(self, album: Album, rows: list[LocalFile]) -> None:
        for row in rows:
            album.local[row.path] = row
        async with self.engine.store.transaction():
            for row in rows:
                await self.engine.store.put_local_file(album.album_id, row.row())

    async def _set_aside_edit(self, album: Album, scanned: ScannedFile) -> None:
        """Another member's photo was edited here: keep the edit as our own file, restore theirs."""
        folder = album.folder
        assert folder is not None
        try:
            target = await asyncio.to_thread(folder.set_aside, scanned.path, EDIT_TAG)
        except FolderError as exc:
            log.warning("album %s: cannot set aside %s: %s", album.printable_id, scanned.path, exc)
            note_problem(album, scanned.path, f"edited here and not synced: {exc.message}")
            return
        await self.forget_set_aside(album, scanned.path, target)

    async def forget_set_aside(self, album: Album, path: str, target: str) -> None:
        """The bytes at `path` were moved to `target`: unindex them, and index them anew as a file
        of this device (published if it may add photos), so no other author's identity sticks."""
        log.info(
            "album %s: %s was changed on this device; the change is kept as %s",
            album.printable_id,
            path,
            target,
        )
        clear_problem(album, path)
        album.local.pop(path, None)
        await self.engine.store.delete_local_file(album.album_id, path)
        self.schedule(album, [target])

    async def _publish_vanished(self, album: Album, vanished: list[str]) -> list[bytes]:
        envelopes: list[bytes] = []
        role = album.my_role
        current = album.current_epoch_key()
        for path in vanished:
            row = album.local.pop(path, None)
            await self.engine.store.delete_local_file(album.album_id, path)
            if row is None or row.file is None or role is None or current is None:
                continue
            mine = row.file_author == album.me.public and role >= Role.EDITOR
            if not (mine or role is Role.OWNER):
                continue  # not ours to remove: reconcile fetches it again
            try:
                signed = album.ensure_chain().remove(
                    current[0], row.file_author or b"", row.file_id or b""
                )
            except ProtocolError as exc:
                log.warning(
                    "album %s: cannot publish the removal of %s: %s", album.printable_id, path, exc
                )
                album.chain = None
                continue
            await self.engine.add_manifest_entries(album, [signed.envelope])
            envelopes.append(signed.envelope)
        return envelopes


@dataclass(frozen=True)
class _Hashed:
    """A file hashed for publishing, and the index row it replaces (None for a new file)."""

    path: str
    hashed: HashedFile
    file_key: bytes
    row: LocalFile | None


def _adoption(album: Album, item: _Hashed) -> tuple[LocalFile, list[bytes]] | None:
    """The index row of another member's album file when an unindexed file at its path holds
    exactly its bytes: a download renamed into place by a daemon killed before it wrote the
    index row (TESTPLAN E1). Publishing it would make a second, conflicting copy of the photo."""
    if item.row is not None and item.row.file is not None:
        return None
    live = album.view.file_at(item.path) if album.view is not None else None
    if (
        live is None
        or live.author == album.me.public
        or live.content_hash != item.hashed.content_hash
        or live.size != item.hashed.size
    ):
        return None
    log.info(
        "album %s: %s already holds the album's photo; taken as is", album.printable_id, item.path
    )
    hashed = item.hashed
    row = indexed_row(live, item.path, hashed.size, hashed.mtime_ns, hashed.inode)
    return row, [c.chunk_id for c in live.chunks]


def _local_only_row(scanned: ScannedFile) -> LocalFile:
    return LocalFile(
        path=scanned.path,
        size=scanned.size,
        mtime_ns=scanned.mtime_ns,
        inode=scanned.inode,
        state="local_only",
    )
