"""Moving file content: bringing folders in line with album views, pulling and serving chunks.

Downloads pull chunks from every connected member at once (a window per peer), verify each
chunk's ID and AES-GCM tag before it touches the disk, write into a resumable partial file, and
finish with files.PartialFile.finish (fsync, rename, fsync dir). Which chunks of a partial are
verified is kept in the store, so a restart re-downloads only the chunks in flight (TESTPLAN E1).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.album import Album, LocalFile, indexed_row
from daemon.connection import Connection, ConnectionClosedError
from daemon.files import AlbumFolder, FinishedFile, FolderError, LocalChangeError, PartialFile
from daemon.planner import Download, plan
from daemon.publisher import EDIT_TAG, clear_problem, note_problem
from daemon.scanner import holds_content_blocking, read_chunk_blocking
from protocol.album_view import LiveFile
from protocol.chunks import CHUNK_SIZE, TAG_SIZE, chunk_bounds, decrypt_chunk
from protocol.errors import VerificationError
from protocol.messages import ChunkData, ChunkMissing, ChunkRequest, ErrorCode

if TYPE_CHECKING:
    from daemon.engine import Engine

log = logging.getLogger("albumsync.transfers")

WINDOW_PER_PEER = 16  # chunk requests in flight per peer: 4 MiB at 256 KiB chunks
REQUEST_TIMEOUT = 30.0
# Files downloaded at once: many small ones keep the finish batches full, while a few large
# ones already fill the peers' windows (16 at once made 1 GiB in 5 MiB files 45% slower).
MAX_FILES_AT_ONCE = 16
MAX_BYTES_AT_ONCE = 16 * 1024 * 1024  # no new file starts while the active ones hold this much
MAX_FINISH_BATCH = 64  # files put in place under one hold of the scan lock, in one commit
SERVE_FOLDER_CHECK_AGE = 1.0  # seconds a folder check stays good for serving chunks
RATE_WINDOW = 5.0
MAX_LOCATED = 16_384  # cached chunk locations for serving (about 3 MiB); cleared when full
LOCAL_TAG = "local"  # conflict tag of a file of this device in the way of an incoming one
BAD_CHUNK_PENALTY = 5  # a peer that served a bad chunk is asked last for this many requests


@dataclass
class PeerSlot:
    conn: Connection
    in_flight: int = 0
    penalty: int = 0
    bad_chunks: int = 0


@dataclass
class Pending:
    """A download this device still needs; `done` counts verified chunks."""

    album: Album
    download: Download
    done: int = 0
    active: bool = False


@dataclass(slots=True)
class _Finishing:
    """A fetched file waiting to be put in place; `done` resolves once its index row is stored."""

    pending: Pending
    done: asyncio.Future[None]


@dataclass
class Transfers:
    engine: Engine
    queue: dict[bytes, Pending] = field(default_factory=dict)  # entry hash ->
    slots: dict[object, PeerSlot] = field(default_factory=dict)
    waiters: dict[int, asyncio.Future[ChunkData | ChunkMissing]] = field(default_factory=dict)
    sent_on: dict[int, Connection] = field(default_factory=dict)  # request id -> its connection
    received: deque[tuple[float, int]] = field(default_factory=deque)
    bad_chunks: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _workers: set[asyncio.Task[None]] = field(default_factory=set)
    _to_finish: list[_Finishing] = field(default_factory=list)
    _finisher: asyncio.Future[None] | None = None  # never cancelled by us: stop waits for it
    _slots_free: asyncio.Condition = field(default_factory=asyncio.Condition)
    _stopped: bool = False
    _active_bytes: int = 0
    _located: dict[tuple[bytes, bytes], tuple[str, int]] = field(default_factory=dict)

    # --- bringing a folder in line --------------------------------------------------------------

    async def reconcile(self, album: Album) -> None:
        """Recompute the album's view and act on it: trash, moves, adoptions, queued downloads."""
        view = album.refresh()
        if album.state != "active" or not self.engine.folder_ok(album):
            return
        folder = album.folder
        assert folder is not None
        steps = plan(view, album.local)
        for row in steps.trash:
            await self._trash(album, folder, row)
        for move in steps.moves:
            await self._move(album, folder, move.source, move.target)
        for adopt in steps.adopt:
            row = adopt.local
            await self._record(
                album, indexed_row(adopt.file, row.path, row.size, row.mtime_ns, row.inode)
            )
        wanted = {d.file.entry_hash for d in steps.downloads}
        for key in [
            k
            for k, p in self.queue.items()
            if p.album is album and k not in wanted and not p.active
        ]:
            del self.queue[key]
        for download in steps.downloads:
            self.queue.setdefault(download.file.entry_hash, Pending(album=album, download=download))
        if steps.downloads:
            self._kick()

    async def _trash(self, album: Album, folder: AlbumFolder, row: LocalFile) -> None:
        try:
            await asyncio.to_thread(
                folder.move_to_trash, row.path, time.time(), expected=(row.size, row.mtime_ns)
            )
        except FileNotFoundError:
            pass
        except FolderError as exc:
            log.warning(
                "album %s: cannot move %s to the trash: %s", album.printable_id, row.path, exc
            )
            return
        album.local.pop(row.path, None)
        await self.engine.store.delete_local_file(album.album_id, row.path)
        await self.engine.activity(
            album, "trash", f"{row.path} moved to the trash of {album.name()}"
        )

    async def _move(self, album: Album, folder: AlbumFolder, source: str, target: str) -> None:
        try:
            await asyncio.to_thread(folder.move, source, target)
        except FolderError as exc:
            log.warning(
                "album %s: cannot move %s to %s: %s", album.printable_id, source, target, exc
            )
            return
        row = album.local.pop(source)
        await self.engine.store.delete_local_file(album.album_id, source)
        row.path = target
        await self._record(album, row)

    async def _record(
        self, album: Album, row: LocalFile, chunk_ids: list[bytes] | None = None
    ) -> None:
        album.local[row.path] = row
        await self.engine.store.put_local_file(album.album_id, row.row())
        if chunk_ids is None and album.view is not None and row.file is not None:
            live = album.view.file(row.file)
            chunk_ids = [c.chunk_id for c in live.chunks] if live is not None else None
        if chunk_ids is not None:
            await self.engine.store.put_chunk_index(album.album_id, row.path, chunk_ids)

    # --- downloading ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel every download before the store closes, and wait for the files being put in
        place: a finish cut between its rename and its index row, or run after the store
        closed, would leave a file that comes back as this device's own "local" photo."""
        self._stopped = True
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if self._finisher is not None:  # it drains the queue: no worker is left to add to it
            await asyncio.gather(self._finisher, return_exceptions=True)

    def peer_connected(self) -> None:
        self._kick()

    def peer_gone(self, conn: Connection) -> None:
        self.slots.pop(conn, None)
        # Requests sent on a lost connection will never be answered: ask another peer now
        # instead of after REQUEST_TIMEOUT.
        for request_id, sent in list(self.sent_on.items()):
            future = self.waiters.get(request_id)
            if sent is conn and future is not None and not future.done():
                future.set_exception(ConnectionClosedError("the connection was lost"))

    def _kick(self) -> None:
        if self._stopped:
            return
        self._workers = {t for t in self._workers if not t.done()}
        idle = [p for p in self.queue.values() if not p.active]
        while (
            idle
            and len(self._workers) < MAX_FILES_AT_ONCE
            and (self._active_bytes < MAX_BYTES_AT_ONCE or not self._workers)
        ):
            pending = idle.pop(0)
            pending.active = True
            self._active_bytes += pending.download.file.size
            self._workers.add(asyncio.ensure_future(self._download(pending)))

    async def _download(self, pending: Pending) -> None:
        album, file = pending.album, pending.download.file
        finished = False
        try:
            if await self._fetch_file(pending):
                await self._finish(pending)
                self.queue.pop(file.entry_hash, None)
                finished = True
        except (FolderError, OSError) as exc:
            log.warning("album %s: download of %s failed: %s", album.printable_id, file.path, exc)
            # Retried every second: one line per file, not one per attempt.
            note_problem(album, file.path, f"not received: {_reason(exc)}")
        except Exception:
            log.exception("album %s: download of %s failed", album.printable_id, file.path)
        finally:
            pending.active = False
            self._active_bytes -= file.size
            if finished:  # the next file at once; a failed one is retried after a pause
                asyncio.get_running_loop().call_soon(self._kick)
            else:
                self._kick_later()

    def _kick_later(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, self._kick)

    async def _fetch_file(self, pending: Pending) -> bool:
        """Fetch every missing chunk into the partial file; False if some chunk has no source now."""
        album, file = pending.album, pending.download.file
        folder = album.folder
        if folder is None:
            return False
        store = self.engine.store
        key = file.entry_hash.hex()
        done_bits = bytearray(await store.partial_done(album.album_id, file.entry_hash) or b"")
        done_bits.extend(b"\0" * (-(-len(file.chunks) // 8) - len(done_bits)))
        partial = await asyncio.to_thread(folder.open_partial, key)
        try:
            missing = [i for i in range(len(file.chunks)) if not done_bits[i // 8] >> (i % 8) & 1]
            pending.done = len(file.chunks) - len(missing)
            results = await asyncio.gather(
                *(self._fetch_chunk(album, file, i, partial) for i in missing)
            )
            for index, ok in zip(missing, results, strict=True):
                if ok:
                    done_bits[index // 8] |= 1 << (index % 8)
            pending.done = sum(bin(b).count("1") for b in done_bits)
            complete = all(results)
            if not complete:
                # Progress is kept for a resume; a complete file is finished (and its partial row
                # dropped) right away, so writing it first would only cost a commit per file.
                await store.put_partial(album.album_id, file.entry_hash, bytes(done_bits))
            return complete
        finally:
            partial.close()

    async def _fetch_chunk(
        self, album: Album, file: LiveFile, index: int, partial: PartialFile
    ) -> bool:
        chunk = file.chunks[index]
        tried: set[object] = set()
        while True:
            slot = await self._pick_slot(album, tried)
            if slot is None:
                return False
            tried.add(slot.conn)
            reply = await self._request(slot, album, chunk.chunk_id, chunk.size + TAG_SIZE)
            if isinstance(reply, ChunkData):
                offset, _ = chunk_bounds(file.size, index)
                try:
                    await asyncio.to_thread(
                        _verify_and_write,
                        file_key=file.file_key,
                        index=index,
                        data=reply.data,
                        chunk_id=chunk.chunk_id,
                        partial=partial,
                        offset=offset,
                    )
                except VerificationError as exc:
                    # TESTPLAN B3: refused before any write; the peer is asked last from now on.
                    slot.bad_chunks += 1
                    slot.penalty = BAD_CHUNK_PENALTY
                    self.bad_chunks += 1
                    log.warning("bad chunk from %s: %s", slot.conn.peer.device_id.short, exc)
                    continue
                self._account(len(reply.data))
                return True

    async def _pick_slot(self, album: Album, tried: set[object]) -> PeerSlot | None:
        async with self._slots_free:
            while True:
                candidates = [
                    self.slots.setdefault(conn, PeerSlot(conn))
                    for conn in self.engine.peers.connections.values()
                    if conn not in tried
                    and album.is_reader(conn.peer.public_key)
                    and not conn.closed
                ]
                if not candidates:
                    return None
                free = [s for s in candidates if s.in_flight < WINDOW_PER_PEER]
                if free:
                    slot = min(free, key=lambda s: (s.penalty > 0, s.in_flight))
                    slot.in_flight += 1
                    slot.penalty = max(0, slot.penalty - 1)
                    return slot
                await self._slots_free.wait()

    async def _request(
        self, slot: PeerSlot, album: Album, chunk_id: bytes, size: int
    ) -> ChunkData | ChunkMissing | None:
        request_id = next(self._ids) % (2**32 - 1) or 1
        future: asyncio.Future[ChunkData | ChunkMissing] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiters[request_id] = future
        self.sent_on[request_id] = slot.conn
        try:
            await slot.conn.send(
                ChunkRequest(
                    request_id=request_id, album=album.album_id, chunk_id=chunk_id, size=size
                )
            )
            return await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except (ConnectionClosedError, TimeoutError):
            return None
        finally:
            self.waiters.pop(request_id, None)
            self.sent_on.pop(request_id, None)
            slot.in_flight -= 1
            async with self._slots_free:
                self._slots_free.notify_all()

    def reply(self, conn: Connection, message: ChunkData | ChunkMissing) -> None:
        future = self.waiters.get(message.request_id)
        if future is not None and not future.done():
            future.set_result(message)

    async def _finish(self, pending: Pending) -> None:
        """Put a fetched file in place and index it.

        A scan must not see the file at its final path before the index knows it (it would look
        like a local edit), so finishing holds the scan lock from rename to commit. Held once per
        file, that lock was the bottleneck of many small files (held 87% of a 2,000-file sync),
        so the files that finish while it is taken go in together: one hold, one thread hop for
        the renames, one commit.

        Once the file may be renamed into place its index row must follow, or after a restart
        the file looks like this device's own new photo and is published as a conflict copy.
        So the finish runs in the finisher task, which a cancelled download does not cancel
        (shield) and a stop waits for.
        """
        assert pending.album.folder is not None
        item = _Finishing(pending, asyncio.get_running_loop().create_future())
        self._to_finish.append(item)
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.ensure_future(self._finish_queued())
        await asyncio.shield(item.done)

    async def _finish_queued(self) -> None:
        batch: list[_Finishing] = []
        try:
            while self._to_finish:
                async with self.engine.publisher.lock:  # type: ignore[attr-defined]
                    # Taken only now: whatever finished while we waited joins this batch.
                    batch = self._to_finish[:MAX_FINISH_BATCH]
                    del self._to_finish[:MAX_FINISH_BATCH]
                    try:
                        await self._finish_batch(batch)
                    except Exception as exc:
                        for item in batch:
                            if not item.done.done():
                                item.done.set_exception(exc)
        except BaseException:  # cancelled with the loop: nobody may wait forever
            for item in batch + self._to_finish:
                item.done.cancel()
            self._to_finish.clear()
            raise

    async def _finish_batch(self, batch: list[_Finishing]) -> None:
        placed = await asyncio.to_thread(_put_in_place, [item.pending for item in batch])
        indexed: list[tuple[_Finishing, LocalFile]] = []
        for item, outcome in zip(batch, placed, strict=True):
            album, file = item.pending.album, item.pending.download.file
            try:
                finished = await self._after_placing(album, file, outcome)
            except Exception as exc:
                item.done.set_exception(exc)
                continue
            row = indexed_row(file, file.path, finished.size, finished.mtime_ns, finished.inode)
            indexed.append((item, row))
        store = self.engine.store
        async with store.transaction():  # one commit (one fsync) for the whole batch
            for item, row in indexed:
                album, file = item.pending.album, item.pending.download.file
                await self._record(album, row, [c.chunk_id for c in file.chunks])
                await store.delete_partial(album.album_id, file.entry_hash)
        for item, _ in indexed:
            album, file = item.pending.album, item.pending.download.file
            clear_problem(album, file.path)
            await self.engine.note_received(album, file)
            item.done.set_result(None)

    async def _after_placing(
        self, album: Album, file: LiveFile, outcome: FinishedFile | Exception
    ) -> FinishedFile:
        """The file in place (something in the way is set aside first); stale copies trashed."""
        folder = album.folder
        assert folder is not None
        if isinstance(outcome, LocalChangeError):
            outcome = await self._finish_in_the_way(album, folder, file)
        elif isinstance(outcome, Exception):
            raise outcome
        for stale in [r for r in album.local.holding(file.key) if r.path != file.path]:
            await self._trash(album, folder, stale)
        return outcome

    async def _finish_in_the_way(
        self, album: Album, folder: AlbumFolder, file: LiveFile
    ) -> FinishedFile:
        partial = await asyncio.to_thread(folder.open_partial, file.entry_hash.hex())
        try:
            same = await asyncio.to_thread(
                holds_content_blocking, folder, file.path, file.size, file.payload.content_hash
            )
            if same is not None:
                # These very bytes: our own finish, killed after its rename and before the index
                # knew (E1). Keep that file; a conflict copy of identical bytes helps nobody.
                await asyncio.to_thread(partial.discard)
                return FinishedFile(
                    rel=file.path,
                    size=same.st_size,
                    mtime_ns=same.st_mtime_ns,
                    inode=same.st_ino,
                    replaced=None,
                )
            # Something else sits at the path: keep it under a conflict name, then retry.
            await self._set_aside(album, folder, file.path)
            return await asyncio.to_thread(partial.finish, file.path, file.mtime_ns, None)
        finally:
            partial.close()

    async def _set_aside(self, album: Album, folder: AlbumFolder, path: str) -> None:
        """Keep what this device has at `path` under a conflict name before the incoming file
        takes the path. An edited copy of a member's photo gets the name a scan would give it
        (so the name does not depend on which came first, the scan or the download); anything
        else at the path was this device's own and gets the tag "local"."""
        row = album.local.get(path)
        tag = EDIT_TAG if row is not None and row.file is not None else LOCAL_TAG
        target = await asyncio.to_thread(folder.set_aside, path, tag)
        log.info(
            "album %s: a change made here to %s was in the way of the incoming version",
            album.printable_id,
            path,
        )
        # Whatever the index said about `path` described other bytes (it was changed here): the
        # publisher indexes the copy anew, as this device's file.
        await self.engine.publisher.forget_set_aside(album, path, target)  # type: ignore[attr-defined]

    # --- serving --------------------------------------------------------------------------------

    async def serve(self, conn: Connection, message: ChunkRequest) -> None:
        """Answer a chunk request from a member with the chunk re-encrypted from our own copy."""
        album = self.engine.albums.get(message.album)
        if (
            album is None
            or not album.is_reader(conn.peer.public_key)
            or not self.engine.folder_ok(album, max_age=SERVE_FOLDER_CHECK_AGE)
        ):
            await _send(
                conn, ChunkMissing(request_id=message.request_id, code=ErrorCode.NOT_ALLOWED)
            )
            return
        data = await self._read_served(album, message.chunk_id)
        if data is None:
            await _send(conn, ChunkMissing(request_id=message.request_id, code=ErrorCode.NOT_FOUND))
            return
        await _send(conn, ChunkData(request_id=message.request_id, data=data))

    async def _read_served(self, album: Album, chunk_id: bytes) -> bytes | None:
        """The chunk re-encrypted from this folder's copy, or None if it holds it no longer.

        A peer fetching a file asks for its chunks one after another, so a lookup loads the whole
        file's chunk list into `_located` and the rest are dict hits (one database round trip per
        file instead of per chunk). A stale cached location cannot serve wrong bytes (reading
        re-checks the chunk's ID) and is looked up afresh once when it fails.
        """
        cached = self._located.get((album.album_id, chunk_id))
        if cached is not None:
            data = await self._read_at(album, cached, chunk_id)
            if data is not None:
                return data
            self._located.pop((album.album_id, chunk_id), None)
        location = await self._look_up(album, chunk_id)
        return await self._read_at(album, location, chunk_id) if location is not None else None

    async def _read_at(
        self, album: Album, location: tuple[str, int], chunk_id: bytes
    ) -> bytes | None:
        row = album.local.get(location[0])
        folder = album.folder
        if row is None or row.file_key is None or folder is None:
            return None
        try:
            return await asyncio.to_thread(
                read_chunk_blocking, folder, *location, row.file_key, chunk_id
            )
        except (FolderError, OSError, VerificationError):
            return None

    async def _look_up(self, album: Album, chunk_id: bytes) -> tuple[str, int] | None:
        """Where the index says this folder holds a chunk: (path, index), with the rest of its
        file's chunks remembered in `_located` (cleared when it outgrows MAX_LOCATED)."""
        held = await self.engine.store.chunk_file(album.album_id, chunk_id)
        if held is None:
            return None
        path, chunk_ids = held
        if len(self._located) > MAX_LOCATED:
            self._located.clear()
        for index, other in enumerate(chunk_ids):
            self._located[(album.album_id, other)] = (path, index)
        return self._located.get((album.album_id, chunk_id))

    # --- progress -------------------------------------------------------------------------------

    def _account(self, size: int) -> None:
        now = time.monotonic()
        self.received.append((now, size))
        while self.received and self.received[0][0] < now - RATE_WINDOW:
            self.received.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        recent = sum(size for at, size in self.received if at >= now - RATE_WINDOW)
        return recent / RATE_WINDOW

    def to_go(self, album: Album) -> tuple[int, int]:
        """Files of the album view this folder does not hold yet, and their bytes still missing."""
        if album.view is None or album.state != "active":
            return 0, 0
        held = {row.entry_hash for row in album.local.values() if row.entry_hash is not None}
        missing = [f for f in album.view.files if f.entry_hash not in held]
        done = {key: p.done for key, p in self.queue.items() if p.album is album}
        left = sum(max(0, f.size - done.get(f.entry_hash, 0) * CHUNK_SIZE) for f in missing)
        return len(missing), left


def _reason(exc: Exception) -> str:
    if isinstance(exc, FolderError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _verify_and_write(
    *, file_key: bytes, index: int, data: bytes, chunk_id: bytes, partial: PartialFile, offset: int
) -> None:
    plaintext = decrypt_chunk(file_key, index, data, chunk_id)
    partial.write_at(offset, plaintext)


async def _send(conn: Connection, message: ChunkData | ChunkMissing) -> None:
    with contextlib.suppress(ConnectionClosedError):
        await conn.send(message)


def _put_in_place(pendings: list[Pending]) -> list[FinishedFile | Exception]:
    """Rename each fetched file into place (fsync, rename, fsync dir) in one thread hop. Each
    file's error is returned, not raised: one file in the way does not hold up the others."""
    placed: list[FinishedFile | Exception] = []
    for pending in pendings:
        file, replaces = pending.download.file, pending.download.replaces
        expected = (replaces.size, replaces.mtime_ns) if replaces is not None else None
        folder = pending.album.folder
        assert folder is not None
        try:
            with folder.open_partial(file.entry_hash.hex()) as partial:
                placed.append(partial.finish(file.path, file.mtime_ns, expected))
        except (FolderError, OSError) as exc:  # LocalChangeError is a FolderError
            placed.append(exc)
    return placed
