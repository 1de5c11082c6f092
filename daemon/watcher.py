"""The folder watcher: batches of changed album-relative paths per album root (watchfiles/inotify).

The watcher only says where to look; the scanner decides what changed (scan_blocking(only=...)), and
it must walk a reported folder: inotify misses files made in a new folder before its watch exists,
and a folder moved into the album reports only itself. An empty set for a root means
"re-check the whole folder": the root appeared, disappeared, was replaced or unmounted (its device and
inode changed), its marker changed, or the watcher had to restart. A root that does not exist is
checked every `check_interval_ms` and watched again once it is back. If the kernel refuses more
inotify watches (fs.inotify.max_user_watches), the watcher says so and falls back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

from daemon.files import MARKER_NAME, RESERVED_DIR
from daemon.scanner import is_ignored_path

Changes = dict[Path, set[str]]
Identity = tuple[int, int] | None  # (st_dev, st_ino) of a root, None while it is missing

_log = logging.getLogger(__name__)
_RETRY_AFTER_ERROR_MS = 10_000
_WATCH_LIMIT_HINT = (
    "the system limit on watched folders (fs.inotify.max_user_watches) is reached; albumsync "
    "falls back to checking album folders every {seconds:g} s. Raise the limit, for example "
    "`sysctl fs.inotify.max_user_watches=524288`, for instant updates"
)


async def watch(
    roots: list[Path],
    debounce_ms: int,
    *,
    step_ms: int = 50,
    check_interval_ms: int = 1_000,
    poll_delay_ms: int = 10_000,
    force_polling: bool = False,
    stop_event: asyncio.Event | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> AsyncGenerator[Changes, None]:
    """Yield {root: changed relative paths} per batch; an empty set means "re-check that folder".

    Changes are grouped for at most debounce_ms, and yielded once step_ms pass without a new one.
    Stops when stop_event is set, or when the consumer stops iterating or is cancelled.
    """
    opts = _Options(debounce_ms, step_ms, check_interval_ms, poll_delay_ms, force_polling)
    ids = {root: _identity(root) for root in dict.fromkeys(roots)}
    while not _stopped(stop_event):
        live = [root for root, identity in ids.items() if identity is not None]
        if not live:
            await _wait(check_interval_ms, stop_event)
            if moved := _refresh(ids):
                yield _rescan(moved)
            continue
        try:
            async with contextlib.aclosing(_watch_live(live, ids, opts, stop_event)) as batches:
                async for batch in batches:
                    yield batch
        except FileNotFoundError as exc:
            if "limit" in str(exc) and not opts.polling:
                opts.polling = True
                _warn(on_warning, _WATCH_LIMIT_HINT.format(seconds=poll_delay_ms / 1000))
                yield _rescan(live)
            else:  # a root vanished between the check and the watcher's start
                yield _rescan(_refresh(ids) or live)
                await _wait(check_interval_ms, stop_event)
        except (OSError, RuntimeError) as exc:
            _warn(on_warning, f"the folder watcher failed ({exc}); albumsync retries and rescans")
            yield _rescan(live)
            await _wait(_RETRY_AFTER_ERROR_MS, stop_event)


@dataclass
class _Options:
    debounce_ms: int
    step_ms: int
    check_interval_ms: int
    poll_delay_ms: int
    polling: bool  # becomes True once the kernel refuses more inotify watches


async def _watch_live(
    live: list[Path], ids: dict[Path, Identity], opts: _Options, stop_event: asyncio.Event | None
) -> AsyncGenerator[Changes, None]:
    """Batches from one watchfiles watcher over `live`; ends when any root appears or vanishes."""
    events = awatch(
        *live,
        watch_filter=None,
        debounce=opts.debounce_ms,
        step=opts.step_ms,
        stop_event=stop_event,
        rust_timeout=opts.check_interval_ms,
        yield_on_timeout=True,  # wake up to check the roots even when nothing happens
        force_polling=opts.polling,
        poll_delay_ms=opts.poll_delay_ms,
        recursive=True,
        ignore_permission_denied=True,
    )
    bases = _bases(live)
    async with contextlib.aclosing(events):
        async for raw in events:
            batch = _group(raw, bases)
            moved = _refresh(ids)
            if moved:  # the caller restarts on the roots as they are now: re-check the gap too
                batch.update(_rescan([*live, *moved]))
            if batch:
                yield batch
            if moved:
                return


def _identity(root: Path) -> Identity:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(root) else None


def _refresh(ids: dict[Path, Identity]) -> list[Path]:
    """Update ids in place; the roots whose identity changed (appeared, vanished, replaced)."""
    moved = []
    for root, old in ids.items():
        new = _identity(root)
        if new != old:
            ids[root] = new
            moved.append(root)
    return moved


def _rescan(roots: Iterable[Path]) -> Changes:
    return {root: set() for root in roots}


def _bases(roots: list[Path]) -> list[tuple[str, Path]]:
    """(path prefix, root) pairs, longest first: notify reports resolved paths, callers may not."""
    pairs = {(str(root), root) for root in roots}
    pairs |= {(os.path.realpath(root), root) for root in roots}
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def _group(raw: Iterable[tuple[object, str]], bases: list[tuple[str, Path]]) -> Changes:
    """Sort raw (change, absolute path) events into {root: relative paths}, dropping our own files."""
    batch: Changes = {}
    rescan: set[Path] = set()
    for _change, path in raw:
        located = _locate(path, bases)
        if located is None:
            continue
        root, rel = located
        first, _, rest = rel.partition("/")
        if not rel or (first == RESERVED_DIR and rest in {"", MARKER_NAME}):
            rescan.add(root)  # the root itself or its marker: the scanner re-checks the folder
        elif first != RESERVED_DIR and not is_ignored_path(rel):
            batch.setdefault(root, set()).add(rel)
    batch.update(_rescan(rescan))
    return batch


def _locate(path: str, bases: list[tuple[str, Path]]) -> tuple[Path, str] | None:
    for prefix, root in bases:
        if path == prefix:
            return root, ""
        if path.startswith(prefix + "/"):
            return root, path[len(prefix) + 1 :]
    return None


def _stopped(stop_event: asyncio.Event | None) -> bool:
    return stop_event is not None and stop_event.is_set()


async def _wait(ms: int, stop_event: asyncio.Event | None) -> None:
    if stop_event is None:
        await asyncio.sleep(ms / 1000)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_event.wait(), ms / 1000)


def _warn(on_warning: Callable[[str], None] | None, message: str) -> None:
    _log.warning("%s", message)
    if on_warning is not None:
        on_warning(message)
