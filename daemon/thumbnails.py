"""Photo thumbnails and capture times, made with Pillow off the event loop and cached on disk.

A thumbnail is a JPEG of at most THUMB_SIZE px on its long side with the EXIF orientation applied,
kept as `<data dir>/thumbs/<content-hash-hex>.jpg` (written to a temporary file, fsynced, renamed):
the same bytes give the same thumbnail whatever their name or album. While a photo is decoded for its
thumbnail, its EXIF DateTimeOriginal is read too and kept in `thumbs/index.json` (content hash ->
image or not, capture time), so the grid's order costs no file access once a photo has been seen.
A sidecar index rather than a table: it is a cache that can be deleted at any time, and it stays out
of the state database that holds signed history.

Files come in as open file descriptors from `AlbumFolder.open_read` (never a path from a request).
Every decode is bounded: the source's pixel count (MAX_PIXELS, checked from the header before any
pixel is decoded) and its size (MAX_SOURCE_BYTES). Anything Pillow cannot read is "not an image" and
gets the UI's generic tile.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, ImageOps

from daemon.errors import DaemonError

log = logging.getLogger("albumsync.thumbnails")

THUMB_SIZE = 320
JPEG_QUALITY = 82
MAX_PIXELS = 80_000_000  # 80 megapixels: above any camera a household owns, far below a bomb
MAX_SOURCE_BYTES = 256 * 1024 * 1024
MAX_INDEX_ENTRIES = 500_000
WORKERS = 2
SNIFF_BYTES = 32
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 36867
OFFSET_TIME_ORIGINAL = 36881
DATETIME = 306

# Pillow's own guard (raises for more than twice this); ours below refuses above it.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

OpenFd = Callable[[], int]


@dataclass(frozen=True)
class PhotoMeta:
    """What decoding a file told us: whether it is an image, and when it was taken (unix s)."""

    image: bool
    captured: int | None


def sniff(head: bytes) -> str | None:
    """The image type of a file from its first bytes, for the types browsers show inline."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class Thumbnails:
    """The thumbnail cache of one data directory; thumbnails are made on a small thread pool."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="albumsync-thumbs")
        self._meta: dict[str, PhotoMeta] | None = None
        self._working: dict[str, asyncio.Future[bytes | None]] = {}
        self._unsaved = 0
        self._indexing: asyncio.Task[None] | None = None
        self._queue: dict[str, OpenFd] = {}
        # Bumped whenever a capture time is learned or forgotten: the grid order depends on them.
        self.generation = 0

    # --- what the UI asks --------------------------------------------------------------------

    def meta(self, content_hash: bytes) -> PhotoMeta | None:
        """What is known about these bytes, or None if they were never decoded."""
        return self._index().get(content_hash.hex())

    async def thumbnail(self, content_hash: bytes, open_fd: OpenFd) -> bytes | None:
        """The JPEG thumbnail of the file `open_fd` opens (its bytes hash to content_hash), or
        None if it is not an image. Concurrent requests for one file share one decode."""
        key = content_hash.hex()
        known = self._index().get(key)
        if known is not None and not known.image:
            return None
        cached = await asyncio.get_running_loop().run_in_executor(self._pool, self._read, key)
        if cached is not None:
            return cached
        running = self._working.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._working[key] = future
        try:
            result = await self._make(key, open_fd)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # a waiter may never come; do not warn about it
            raise
        finally:
            del self._working[key]
        future.set_result(result)
        return result

    def index_later(self, files: Iterable[tuple[bytes, OpenFd]]) -> None:
        """Decode, in the background, the files whose capture time is not known yet."""
        known = self._index()
        for content_hash, open_fd in files:
            key = content_hash.hex()
            if key not in known and key not in self._queue:
                self._queue[key] = open_fd
        if self._queue and (self._indexing is None or self._indexing.done()):
            self._indexing = asyncio.get_running_loop().create_task(self._index_queue())

    @property
    def indexing(self) -> int:
        """Files waiting to be decoded in the background."""
        return len(self._queue)

    def close(self) -> None:
        if self._indexing is not None:
            self._indexing.cancel()
        self._save()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the work ----------------------------------------------------------------------------

    async def _index_queue(self) -> None:
        while self._queue:
            key, open_fd = next(iter(self._queue.items()))
            try:
                if key not in self._index():
                    await self._make(key, open_fd)
            except (OSError, DaemonError) as exc:  # gone, changed or unreadable: next listing
                log.debug("could not read a photo for its thumbnail: %s", exc)
            except Exception:
                log.exception("thumbnail failed")
            finally:
                self._queue.pop(key, None)
        await asyncio.get_running_loop().run_in_executor(self._pool, self._save)

    async def _make(self, key: str, open_fd: OpenFd) -> bytes | None:
        loop = asyncio.get_running_loop()
        thumb, meta = await loop.run_in_executor(self._pool, self._render_file, key, open_fd)
        self._remember(key, meta)
        return thumb

    def _render_file(self, key: str, open_fd: OpenFd) -> tuple[bytes | None, PhotoMeta]:
        fd = open_fd()
        with os.fdopen(fd, "rb") as source:
            thumb, meta = render(source, os.fstat(source.fileno()).st_size)
        if thumb is not None:
            self._write(key, thumb)
        return thumb, meta

    def _remember(self, key: str, meta: PhotoMeta) -> None:
        index = self._index()
        if len(index) >= MAX_INDEX_ENTRIES:
            index.clear()  # a cache: starting over is cheaper than tracking what is oldest
            self.generation += 1
        known = index.get(key)
        if (known.captured if known is not None else None) != meta.captured:
            self.generation += 1
        index[key] = meta
        self._unsaved += 1
        if self._unsaved >= 500:
            self._save()

    # --- the cache on disk -------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.jpg"

    def _read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, key: str, data: bytes) -> None:
        self._atomic_write(self._path(key), data)

    def _atomic_write(self, target: Path, data: bytes) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _index(self) -> dict[str, PhotoMeta]:
        if self._meta is None:
            self._meta = _load_index(self.dir / "index.json")
        return self._meta

    def _save(self) -> None:
        if self._meta is None or self._unsaved == 0:
            return
        self._unsaved = 0
        data = {k: [int(m.image), m.captured] for k, m in list(self._meta.items())}
        try:
            self._atomic_write(self.dir / "index.json", json.dumps(data).encode())
        except OSError as exc:
            log.warning("could not save the thumbnail index in %s: %s", self.dir, exc)


def render(
    source: io.BufferedIOBase | io.BufferedReader, size: int
) -> tuple[bytes | None, PhotoMeta]:
    """(JPEG thumbnail, meta) of an open file; (None, not an image) for anything else."""
    not_image = (None, PhotoMeta(image=False, captured=None))
    head = source.read(SNIFF_BYTES)
    source.seek(0)
    if size > MAX_SOURCE_BYTES or not _looks_like_image(head):
        return not_image
    try:
        with Image.open(source) as img:
            if img.width * img.height > MAX_PIXELS:
                return not_image
            captured = exif_captured(img)
            img.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a smaller scale
            upright = ImageOps.exif_transpose(img)
            upright.thumbnail((THUMB_SIZE, THUMB_SIZE))
            out = io.BytesIO()
            upright.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        return not_image
    return out.getvalue(), PhotoMeta(image=True, captured=captured)


def _looks_like_image(head: bytes) -> bool:
    """Image formats worth decoding: the browser ones, plus TIFF and BMP that cameras and scanners
    write (their thumbnails are JPEG, so the browser never sees the original format)."""
    return sniff(head) is not None or head.startswith((b"II*\x00", b"MM\x00*", b"BM"))


def exif_captured(img: Image.Image) -> int | None:
    """EXIF DateTimeOriginal (else DateTime) as unix seconds; UTC unless an offset is recorded,
    so every device orders the same photos the same way."""
    try:
        exif = img.getexif()
        detail = exif.get_ifd(EXIF_IFD)
        text = detail.get(DATETIME_ORIGINAL) or exif.get(DATETIME)
        offset = detail.get(OFFSET_TIME_ORIGINAL)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return None
    if not isinstance(text, str):
        return None
    try:
        taken = datetime.strptime(text.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return int(taken.replace(tzinfo=_zone(offset)).timestamp())


def _zone(offset: object) -> timezone:
    """'+02:00' -> that zone; anything else -> UTC."""
    if isinstance(offset, str) and len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
        try:
            minutes = int(offset[1:3]) * 60 + int(offset[4:6])
        except ValueError:
            return UTC
        if minutes <= 14 * 60:
            return timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    return UTC


def _load_index(path: Path) -> dict[str, PhotoMeta]:
    """The saved index; a damaged or missing one is an empty cache (photos are decoded again)."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    found: dict[str, PhotoMeta] = {}
    if not isinstance(raw, dict):
        return found
    for key, value in list(raw.items())[:MAX_INDEX_ENTRIES]:
        if (
            isinstance(key, str)
            and isinstance(value, list)
            and len(value) == 2
            and value[0] in (0, 1)
            and (value[1] is None or isinstance(value[1], int))
        ):
            found[key] = PhotoMeta(image=bool(value[0]), captured=value[1])
    return found
