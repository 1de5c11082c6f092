"""Coalesced album refreshes: recompute a view once for a burst of changes, not once per change.

A refresh (evaluate the whole view, plan, act) costs time linear in the album's size. Receiving a
page of a 100,000-entry history, or a scan after each of 5,000 arriving files, asked for one each,
which made catching up quadratic. `soon(album)` instead marks the album; one task refreshes marked
albums in turn, and whatever is marked while a refresh runs is covered by one more refresh after
it. While history streams in, refreshes of one album are also paced: the next starts no sooner
than PACE times the last one's duration after it ended, so a 100,000-entry view (about a second
to evaluate) is not recomputed back to back while the pages it is waiting for queue up, and a
small album (a millisecond) is refreshed as fast as before. Callers that must see the result at once (an owner's own action, accepting an invite) still
await `Engine.refresh_album` directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from daemon.album import Album

log = logging.getLogger("albumsync.refresher")
PACE = 2.0  # at most 1 / (1 + PACE) of the loop's time goes to refreshing one busy album


@dataclass
class Refresher:
    refresh: Callable[[Album], Awaitable[None]]
    _marked: dict[bytes, Album] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stopped: bool = False
    _refreshing: bool = False
    _not_before: dict[bytes, float] = field(default_factory=dict)  # album_id -> loop time

    def soon(self, album: Album) -> None:
        """Refresh `album` after the refresh running now (if any); repeated calls merge."""
        if self._stopped:
            return
        self._marked[album.album_id] = album
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._marked and not self._stopped:
            album_id = min(self._marked, key=lambda a: self._not_before.get(a, 0.0))
            wait = self._not_before.get(album_id, 0.0) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # more changes gather meanwhile
            album = self._marked.pop(album_id)
            started = loop.time()
            self._refreshing = True
            try:
                await self.refresh(album)
            except Exception:
                log.exception("album %s: refresh failed", album.printable_id)
            finally:
                self._refreshing = False
            ended = loop.time()
            self._not_before[album_id] = ended + PACE * (ended - started)

    async def stop(self) -> None:
        """Let a refresh in progress finish (it may be writing the index); start no other."""
        self._stopped = True
        self._marked.clear()
        if self._task is not None:
            if not self._refreshing:
                self._task.cancel()  # only ever cancelled while it waits, never mid-refresh
            await asyncio.gather(self._task, return_exceptions=True)

    def start(self) -> None:
        self._stopped = False
