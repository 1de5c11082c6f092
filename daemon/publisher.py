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

from daemon.album import Album, LocalFile
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
        album.problems = [p for p in album.problems if not p.startswith("folder ")]
        async with self.lock:
            known = {p: KnownFile(r.size, r.mtime_ns, r.inode) for p, r in album.local.items()}
            try:
                result = await asyncio.to_thread(scan_blocking, folder, known, paths)
            except FolderError as exc:
                log.warning("album %s: scan refused: %s", album.printable_id, exc)
                return
            published = await self._publish_changed(album, result.changed)
            published += await self._publish_vanished(album, result.vanished)
        if published:
            await self.engine.broadcast_manifest(album, published)
        await self.engine.refresh_album(album)

    async def _publish_changed(self, album: Album, changed: list[ScannedFile]) -> list[bytes]:
        role = album.my_role
        may_add = role is not None and role >= Role.EDITOR
        envelopes: list[bytes] = []
        semaphore = asyncio.Semaphore(HASH_WORKERS)

        async def one(scanned: ScannedFile) -> None:
            row = album.local.get(scanned.path)
            if row is not None and (row.size, row.mtime_ns, row.inode) == (
                scanned.size,
                scanned.mtime_ns,
                scanned.inode,
            ):
                return  # indexed meanwhile (a download finished during the walk)
            if row is not None and row.file is not None and row.file_author != album.me.public:
                await self._set_aside_edit(album, scanned)
                return
            if not may_add:
                await self._record_local_only(album, scanned)
                return
            folder = album.folder
            assert folder is not None  # scan() checked it
            async with semaphore:
                file_key = new_file_key(os.urandom)
                try:
                    hashed = await asyncio.to_thread(
                        hash_file_blocking, folder, scanned.path, file_key
                    )
                except FileChangedError as exc:
                    # Never publish bytes that changed under the hash; try again once the
                    # writer had time to finish (the watcher may have reported its last write
                    # before this scan read it).
                    log.info(
                        "album %s: %s not published yet: %s", album.printable_id, scanned.path, exc
                    )
                    asyncio.get_running_loop().call_later(
                        RESCAN_CHANGED, self.schedule, album, [scanned.path]
                    )
                    return
                except FolderError as exc:
                    # Unreadable (mode 000, I/O error): the person must see which file and why.
                    log.warning("album %s: %s", album.printable_id, exc)
                    note_problem(album, scanned.path, f"not synced: {exc.message}")
                    return
            try:
                envelope = await self._publish_file(album, scanned.path, hashed, file_key, row)
            except Exception:
                # One file's failure must not abort the others (nor leave them half published).
                log.exception("album %s: publishing %s failed", album.printable_id, scanned.path)
                album.problems.append(f"{scanned.path}: could not be published; see the log")
                return
            if envelope is not None:
                envelopes.append(envelope)

        await asyncio.gather(*(one(s) for s in changed))
        return envelopes

    async def _publish_file(
        self, album: Album, path: str, hashed: HashedFile, file_key: bytes, row: LocalFile | None
    ) -> bytes | None:
        current = album.current_epoch_key()
        if current is None:
            return None
        epoch, epoch_key = current
        payload = Payload(
            name=path,
            size=hashed.size,
            mtime_ns=hashed.mtime_ns,
            content_hash=hashed.content_hash,
            file_key=file_key,
            chunks=tuple(hashed.chunks),
        )
        chain = album.ensure_chain()
        try:
            if row is not None and row.file is not None:
                signed = chain.update(epoch, epoch_key, row.file_id or b"", payload, os.urandom)
            else:
                signed = chain.add(epoch, epoch_key, payload, os.urandom)
        except ProtocolError as exc:
            log.warning("album %s: cannot publish %s: %s", album.printable_id, path, exc)
            album.chain = None
            return None
        new_row = LocalFile(
            path=path,
            size=hashed.size,
            mtime_ns=hashed.mtime_ns,
            inode=hashed.inode,
            content_hash=hashed.content_hash,
            file_author=album.me.public,
            file_id=signed.entry.file_id,
            entry_hash=signed.hash,
            file_key=file_key,
            state="synced",
        )
        clear_problem(album, path)
        # In memory first: whatever happens to the write below, a rescan must not publish the
        # file a second time. On disk, entry and index rows commit together or not at all.
        album.local[path] = new_row
        store = self.engine.store
        async with store.transaction():
            await self.engine.add_manifest_entries(album, [signed.envelope])
            await store.put_local_file(album.album_id, new_row.row())
            await store.put_chunk_index(album.album_id, path, [c.chunk_id for c in hashed.chunks])
        return signed.envelope

    async def _record_local_only(self, album: Album, scanned: ScannedFile) -> None:
        row = LocalFile(
            path=scanned.path,
            size=scanned.size,
            mtime_ns=scanned.mtime_ns,
            inode=scanned.inode,
            state="local_only",
        )
        album.local[scanned.path] = row
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
