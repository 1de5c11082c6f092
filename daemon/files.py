"""Every create, rename and delete inside an album folder: symlink-safe, crash-safe, nothing lost.

This is the only module that changes anything under an album folder. Its rules:

- Paths are album-relative `str`s with `/` separators. They are resolved one component at a time with
  directory fds and `O_NOFOLLOW`, so a symbolic link anywhere inside the album is an error, never a
  way out of it (CVE-2017-1000420). The album root itself is the person's choice and may be a link.
- A component that is missing under its NFC spelling is looked up under any other Unicode spelling
  already on disk (macOS writes NFD), so callers always use the NFC paths of the manifest.
- Writing needs the folder marker `.albumsync/marker` naming this album: an unmounted or emptied
  folder is never written to, and never read as "everything was deleted" (the caller refuses to scan
  a folder whose `check()` is not OK).
- Incoming files are written under `.albumsync/tmp/`, fsynced, renamed into place, and the folder
  is fsynced (write -> fsync(file) -> rename -> fsync(dir)). A file already at the path is replaced
  only if it is the version the caller expected: it is hard-linked into the trash first, then
  replaced atomically, so a crash at any moment leaves the old or the new file there.
- Removed files go to `.albumsync/trash/<UTC stamp>/<path>` by rename, never copied, never deleted
  until purged after 30 days. Other renames never replace a name (Linux renameat2 RENAME_NOREPLACE,
  with check-then-rename where a file system lacks it), so concurrent operations need no lock.
"""

from __future__ import annotations

import calendar
import contextlib
import ctypes
import enum
import errno
import os
import re
import shutil
import stat
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn, TypeVar, cast

from daemon.errors import DaemonError
from protocol.names import RESERVED_PREFIX, conflict_name, is_reserved_local

RESERVED_DIR = RESERVED_PREFIX
MARKER_NAME = "marker"
MARKER_FORMAT = "albumsync-folder-marker 1"
TMP_DIR = "tmp"
TRASH_DIR = "trash"
PARTIAL_SUFFIX = ".part"
TRASH_MAX_AGE = 30 * 24 * 3600  # seconds a removed file stays restorable (DESIGN §2)
MAX_PARTIAL_KEY = 128  # hex characters in a PartialFile key
MAX_MARKER_BYTES = 4096
MAX_SET_ASIDE = 100  # conflict copies of one file with one tag: `tag`, `tag-2` ... `tag-100`
_MAX_TRASH_BATCHES_PER_SECOND = 10_000
_STAMP_FORMAT = "%Y%m%dT%H%M%S"
_TRASH = f"{RESERVED_DIR}/{TRASH_DIR}/"  # label prefix of trash paths in messages and the op log
_BATCH_RE = re.compile(r"^(\d{8}T\d{6})(?:-(\d+))?$")
_KEY_RE = re.compile(r"^[0-9a-f]+$")
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MARKER_HELP = (
    "# This folder is an albumsync album. Keep this directory: without it albumsync stops syncing\n"
    "# the folder rather than reading it as 'every photo was deleted'.\n"
)

_T = TypeVar("_T")
Expected = tuple[int, int]  # (size, mtime_ns) of a file as the caller last saw it


class FolderState(enum.Enum):
    """What `AlbumFolder.check()` found; only OK may be scanned or written."""

    OK = "ok"
    FOLDER_MISSING = "folder_missing"
    MARKER_MISSING = "marker_missing"
    WRONG_ALBUM = "wrong_album"


class FolderError(DaemonError):
    """Something albumsync cannot do in an album folder; the message says what and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class FolderUnavailableError(FolderError):
    """The album folder is missing, unmounted, unmarked or another album's; nothing is touched."""

    def __init__(self, state: FolderState, message: str) -> None:
        super().__init__(message)
        self.state = state


class UnsafePathError(FolderError):
    """A path is malformed, reserved, or has a symbolic link or a non-directory in the way."""


class NotInFolderError(FolderError):
    """No file exists at that path in the album folder."""


class LocalChangeError(FolderError):
    """The file on disk is not the one the caller expected (edited or created here meanwhile)."""


class FileChangedError(FolderError):
    """The file changed while albumsync was reading it; try again once it is quiet."""


class FolderIOError(FolderError):
    """The operating system refused an operation (permissions, disk full, I/O error); see `errno`."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_


class FsOp(NamedTuple):
    """One file-system step, reported to the op-log hook after it happened (TESTPLAN E3)."""

    op: str  # write | utime | fsync | mkdir | fsync_dir | rename | link | unlink | rmdir
    path: str  # album-relative
    target: str = ""  # rename or link destination


@dataclass(frozen=True)
class TrashItem:
    """A file in the album trash: `rel` is where it was, `batch` the trash folder it went into."""

    rel: str
    batch: str
    trashed_at: float

    @property
    def trash_rel(self) -> str:
        return f"{_TRASH}{self.batch}/{self.rel}"


@dataclass(frozen=True)
class FinishedFile:
    """A file renamed into place by `PartialFile.finish`; `replaced` is the old version's trash item."""

    rel: str
    size: int
    mtime_ns: int
    inode: int
    replaced: TrashItem | None


OpHook = Callable[[FsOp], None]


class AlbumFolder:
    """One album's folder on disk; every method is blocking (run it with asyncio.to_thread)."""

    def __init__(self, root: Path, album_id: bytes, *, on_op: OpHook | None = None) -> None:
        self.root = root
        self.album_id = album_id
        self._on_op = on_op

    # -- the marker ----------------------------------------------------------------------------

    def check(self) -> FolderState:
        """OK only if the folder exists and its marker names this album."""
        try:
            found = read_marker(self.root)
        except FolderUnavailableError as exc:
            return exc.state
        if found is None:
            return FolderState.MARKER_MISSING
        return FolderState.OK if found == self.album_id else FolderState.WRONG_ALBUM

    def require_ok(self) -> None:
        """Raise FolderUnavailableError with a message a person can act on unless check() is OK."""
        state = self.check()
        if state is not FolderState.OK:
            raise FolderUnavailableError(state, _state_message(state, self.root))

    def create_marker(self) -> None:
        """Mark an existing folder as this album's (idempotent); refuses another album's folder."""
        found = read_marker(self.root)
        if found == self.album_id:
            return
        if found is not None:
            raise FolderUnavailableError(
                FolderState.WRONG_ALBUM,
                f"{self.root} already belongs to another album ({found.hex()}); choose another folder",
            )
        with self._root_fd() as root_fd:
            _, res_fd = self._open_subdir(root_fd, RESERVED_DIR, RESERVED_DIR, create=True)
            with _opened(res_fd):
                self._write_marker(res_fd)
                for sub in (TMP_DIR, TRASH_DIR):
                    os.close(
                        self._open_subdir(res_fd, sub, f"{RESERVED_DIR}/{sub}", create=True)[1]
                    )

    # -- reading -------------------------------------------------------------------------------

    def open_read(self, rel: str) -> int:
        """A read-only fd of the regular file at rel (caller closes it); never follows a link."""
        parts = _split(rel)
        with self._io(f"open '{rel}'"), self._dirs(parts[:-1], create=False) as dirs:
            try:
                fd = _with_alias(
                    dirs.fd, parts[-1], lambda n: os.open(n, _READ_FLAGS, dir_fd=dirs.fd)
                )
            except OSError as exc:
                _raise_resolve_error(exc, rel)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UnsafePathError(f"'{rel}' is not a regular file; albumsync only syncs files")
            return fd

    def stat(self, rel: str) -> os.stat_result:
        """lstat of rel inside the album (a link is reported as a link, never followed)."""
        parts = _split(rel)
        with self._io(f"look at '{rel}'"), self._dirs(parts[:-1], create=False) as dirs:
            try:
                return _with_alias(dirs.fd, parts[-1], lambda n: _lstat_at(dirs.fd, n))
            except FileNotFoundError:
                raise NotInFolderError(f"'{rel}' does not exist in {self.root}") from None

    def open_dir(self, rel: str) -> int:
        """A directory fd for rel ("" = the album root), resolved without following links."""
        parts = _split(rel) if rel else []
        with self._io(f"open the folder '{rel or '.'}'"), self._dirs(parts, create=False) as dirs:
            return os.dup(dirs.fd)

    # -- incoming files ------------------------------------------------------------------------

    def open_partial(self, key: str) -> PartialFile:
        """Create, or reopen after a restart, the temporary file `.albumsync/tmp/<key>.part`."""
        _check_key(key)
        name = key + PARTIAL_SUFFIX
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._io(f"create a temporary file for '{key}'"), self._reserved(TMP_DIR) as tmp_fd:
            try:
                fd = os.open(name, flags, 0o666, dir_fd=tmp_fd)
            except OSError as exc:
                _raise_resolve_error(exc, f"{RESERVED_DIR}/{TMP_DIR}/{name}")
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UnsafePathError(f"{RESERVED_DIR}/{TMP_DIR}/{name} is not a regular file")
        return PartialFile(self, key, fd)

    def partial_keys(self) -> list[str]:
        """Keys of the temporary files present (to resume or discard after a restart)."""
        with self._io("list temporary files"), self._reserved(TMP_DIR) as tmp_fd:
            names = os.listdir(tmp_fd)
        keys = [n.removesuffix(PARTIAL_SUFFIX) for n in names if n.endswith(PARTIAL_SUFFIX)]
        return sorted(k for k in keys if _KEY_RE.match(k) and len(k) <= MAX_PARTIAL_KEY)

    # -- trash ---------------------------------------------------------------------------------

    def move_to_trash(self, rel: str, now: float, *, expected: Expected | None = None) -> TrashItem:
        """Rename the regular file at rel into the trash; LocalChangeError if it is not `expected`."""
        parts = _split(rel)
        with self._io(f"move '{rel}' to the trash"), self._dirs(parts[:-1], create=False) as dirs:
            try:
                name, st = _with_alias(dirs.fd, parts[-1], lambda n: (n, _lstat_at(dirs.fd, n)))
            except FileNotFoundError:
                raise NotInFolderError(f"'{rel}' does not exist in {self.root}") from None
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(
                    f"'{rel}' is not a regular file; albumsync only removes files"
                )
            if expected is not None and not _matches(st, expected):
                raise LocalChangeError(f"'{rel}' was changed on this device; it is kept")
            item = self._trash_entry(dirs.fd, name, rel, now)
            self._prune_empty(dirs, rel)
        return item

    def move(self, source: str, target: str) -> None:
        """Rename a regular file within the album (conflict placement); never replaces anything."""
        src_parts, dst_parts = _split(source), _split(target)
        with (
            self._io(f"move '{source}' to '{target}'"),
            self._dirs(src_parts[:-1], create=False) as src,
            self._dirs(dst_parts[:-1], create=True) as dst,
        ):
            try:
                name, st = _with_alias(src.fd, src_parts[-1], lambda n: (n, _lstat_at(src.fd, n)))
            except FileNotFoundError:
                raise NotInFolderError(f"'{source}' does not exist in {self.root}") from None
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(f"'{source}' is not a regular file")
            try:
                self._rename(src.fd, name, dst.fd, dst_parts[-1], log=(source, target))
            except FileExistsError:
                raise LocalChangeError(f"'{target}' already exists on this device") from None
            self._fsync_dir(dst.fd, _parent(target))
            self._fsync_dir(src.fd, _parent(source))
            self._prune_empty(src, source)

    def set_aside(self, rel: str, tag: str) -> str:
        """Move the file at rel to its first free conflict name (tag `tag`, then `tag-2`...).

        Returns the new path. The names depend only on rel, tag and what the folder holds, so the
        same situation gives the same name on every device. Never replaces anything;
        LocalChangeError if every one of the MAX_SET_ASIDE names is taken.
        """
        for number in range(1, MAX_SET_ASIDE + 1):
            target = conflict_name(rel, tag if number == 1 else f"{tag}-{number}")
            try:
                self.move(rel, target)
            except LocalChangeError:
                continue  # that name is taken: the next one
            return target
        raise LocalChangeError(
            f"'{rel}' cannot be set aside: {MAX_SET_ASIDE} conflict copies of it exist already; "
            "move or delete some of them"
        )

    def list_trash(self) -> list[TrashItem]:
        """Every file in the trash, oldest batch first."""
        items: list[TrashItem] = []
        with self._io("list the trash"), self._reserved(TRASH_DIR) as trash_fd:
            for batch in sorted(os.listdir(trash_fd), key=_batch_order):
                trashed_at = _batch_time(batch)
                if trashed_at is None:
                    continue
                with _opened(_open_dir_nofollow(trash_fd, batch, batch)) as batch_fd:
                    items += [TrashItem(r, batch, trashed_at) for r in _regular_files(batch_fd)]
        return items

    def restore(self, item: TrashItem) -> str:
        """Move a trashed file back; returns its path (a "(restored)" name if the old one is taken)."""
        parts = _split(item.rel)
        if _batch_time(item.batch) is None:
            raise UnsafePathError(f"{item.batch!r} is not a trash folder name")
        with (
            self._io(f"restore '{item.rel}'"),
            self._reserved(TRASH_DIR) as trash_fd,
            self._dirs_at(trash_fd, [item.batch, *parts[:-1]], create=False, label=_TRASH) as src,
            self._dirs(parts[:-1], create=True) as dst,
        ):
            for candidate in _restore_names(parts[-1]):
                if _lookup(dst.fd, candidate) is not None:
                    continue
                try:
                    self._rename(
                        src.fd, parts[-1], dst.fd, candidate, log=(item.trash_rel, item.rel)
                    )
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    raise NotInFolderError(f"'{item.rel}' is no longer in the trash") from None
                self._fsync_dir(dst.fd, _parent(item.rel))
                self._fsync_dir(src.fd, _parent(item.trash_rel))
                self._prune_empty(src, item.trash_rel)
                return "/".join([*parts[:-1], candidate])
        raise AssertionError("unreachable: _restore_names never ends")

    def purge_trash(self, now: float, max_age: float = TRASH_MAX_AGE) -> int:
        """Delete trash batches older than max_age seconds at `now`; returns how many files went."""
        removed = 0
        with self._io("empty the trash"), self._reserved(TRASH_DIR) as trash_fd:
            for batch in sorted(os.listdir(trash_fd)):
                trashed_at = _batch_time(batch)
                if trashed_at is None or now - trashed_at < max_age:
                    continue
                with _opened(_open_dir_nofollow(trash_fd, batch, batch)) as batch_fd:
                    removed += len(_regular_files(batch_fd))
                shutil.rmtree(batch, dir_fd=trash_fd)  # fd-based: never follows a link
                self._op("rmdir", f"{_TRASH}{batch}")
        return removed

    # -- private -------------------------------------------------------------------------------

    def _finish(
        self, partial: PartialFile, rel: str, mtime_ns: int, replace: Expected | None, now: float
    ) -> FinishedFile:
        parts = _split(rel)
        fd, tmp_name = partial.fd, partial.key + PARTIAL_SUFFIX
        tmp_rel = f"{RESERVED_DIR}/{TMP_DIR}/{tmp_name}"
        with self._io(f"put '{rel}' in place"):
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            self._op("utime", tmp_rel)
            os.fsync(fd)
            self._op("fsync", tmp_rel)
            st = os.fstat(fd)  # mtime as the file system stored it (FAT keeps 2 s steps)
            with self._reserved(TMP_DIR) as tmp_fd, self._dirs(parts[:-1], create=True) as dirs:
                existing = _lookup(dirs.fd, parts[-1])
                try:
                    if existing is None:
                        replaced = None
                        self._rename(tmp_fd, tmp_name, dirs.fd, parts[-1], log=(tmp_rel, rel))
                    else:
                        replaced = self._replace(
                            tmp_fd, tmp_name, dirs.fd, existing, rel=rel, replace=replace, now=now
                        )
                except FileExistsError:
                    raise LocalChangeError(
                        f"'{rel}' was created on this device meanwhile"
                    ) from None
                self._fsync_dir(dirs.fd, _parent(rel))
        return FinishedFile(rel, st.st_size, st.st_mtime_ns, st.st_ino, replaced)

    def _replace(
        self,
        tmp_fd: int,
        tmp: str,
        dir_fd: int,
        name: str,
        *,
        rel: str,
        replace: Expected | None,
        now: float,
    ) -> TrashItem:
        """Replace the file `name` (on-disk spelling of rel) if it is `replace`; trash the old one.

        The old file is hard-linked into the trash and then atomically replaced, so a crash at any
        moment leaves the old or the new file at rel. Without hard links (FAT, some FUSE file
        systems) it is moved to the trash first, and a crash in between leaves rel empty.
        """
        old = _lstat_at(dir_fd, name)
        if replace is None or not _matches(old, replace):
            raise LocalChangeError(
                f"'{rel}' exists on this device and differs from the expected one"
            )
        tmp_rel = f"{RESERVED_DIR}/{TMP_DIR}/{tmp}"
        try:
            item = self._trash_entry(dir_fd, name, rel, now, link_inode=old.st_ino)
        except _NoHardLinksError:
            item = self._trash_entry(dir_fd, name, rel, now)
            self._rename(tmp_fd, tmp, dir_fd, name, log=(tmp_rel, rel))
            return item
        os.rename(tmp, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd)
        self._op("rename", tmp_rel, rel)
        return item

    def _trash_entry(
        self, dir_fd: int, name: str, rel: str, now: float, *, link_inode: int | None = None
    ) -> TrashItem:
        """Move `name` (or, given link_inode, hard-link that inode) to the trash as rel."""
        parts = _split(rel)
        stamp = time.strftime(_STAMP_FORMAT, time.gmtime(now))
        trashed_at = float(calendar.timegm(time.gmtime(now)))
        with self._reserved(TRASH_DIR) as trash_fd:
            for n in range(1, _MAX_TRASH_BATCHES_PER_SECOND):
                item = TrashItem(rel, stamp if n == 1 else f"{stamp}-{n}", trashed_at)
                try:
                    trash_dirs = [item.batch, *parts[:-1]]
                    with self._dirs_at(trash_fd, trash_dirs, create=True, label=_TRASH) as dst:
                        if link_inode is None:
                            self._rename(dir_fd, name, dst.fd, parts[-1], log=(rel, item.trash_rel))
                        else:
                            self._link(dir_fd, name, dst.fd, parts[-1], item=item, inode=link_inode)
                        self._fsync_dir(dst.fd, _parent(item.trash_rel))
                except (FileExistsError, UnsafePathError):
                    continue  # that batch already holds this path (or a file where a folder goes)
                if link_inode is None:
                    self._fsync_dir(dir_fd, _parent(rel))
                return item
        raise FolderIOError(f"too many removals of '{rel}' within one second", None)

    def _link(
        self, dir_fd: int, name: str, dst_fd: int, dst: str, *, item: TrashItem, inode: int
    ) -> None:
        """Hard-link name into the trash; LocalChangeError if it is no longer the inode checked."""
        try:
            os.link(name, dst, src_dir_fd=dir_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:
                raise _NoHardLinksError from exc
            raise
        self._op("link", item.rel, item.trash_rel)
        if _lstat_at(dst_fd, dst).st_ino != inode:  # replaced on this device since the check
            os.unlink(dst, dir_fd=dst_fd)
            self._op("unlink", item.trash_rel)
            raise LocalChangeError(f"'{item.rel}' was changed on this device meanwhile")

    def _prune_empty(self, dirs: _Dirs, rel: str) -> None:
        """Remove now-empty parent folders, deepest first; rmdir refuses any that holds anything."""
        folders = rel.split("/")[:-1]  # the last len(dirs.names) of these are the ones in dirs
        skip = len(folders) - len(dirs.names)
        for i in range(len(dirs.names) - 1, -1, -1):
            try:
                os.rmdir(dirs.names[i], dir_fd=dirs.fds[i])
            except OSError:
                return  # not empty (an ignored or unknown file stays), busy, or gone
            self._op("rmdir", "/".join(folders[: skip + i + 1]))

    def _rename(
        self, src_fd: int, src: str, dst_fd: int, dst: str, *, log: tuple[str, str]
    ) -> None:
        _rename_noreplace(src_fd, src, dst_fd, dst)
        self._op("rename", *log)

    def _fsync_dir(self, dir_fd: int, rel: str) -> None:
        os.fsync(dir_fd)
        self._op("fsync_dir", rel)

    def _op(self, op: str, path: str, target: str = "") -> None:
        if self._on_op is not None:
            self._on_op(FsOp(op, path, target))

    def _write_marker(self, res_fd: int) -> None:
        text = f"{MARKER_FORMAT}\n{_MARKER_HELP}album {self.album_id.hex()}\n".encode()
        tmp = MARKER_NAME + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=res_fd)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, MARKER_NAME, src_dir_fd=res_fd, dst_dir_fd=res_fd)
        os.fsync(res_fd)

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            state = FolderState.FOLDER_MISSING
            raise FolderUnavailableError(state, _state_message(state, self.root)) from None
        with _opened(fd):
            yield fd

    @contextlib.contextmanager
    def _reserved(self, sub: str) -> Iterator[int]:
        """An fd of `.albumsync/<sub>` in a folder whose marker names this album; else refuse."""
        self.require_ok()
        where = f"{RESERVED_DIR}/{sub}"
        with (
            self._root_fd() as root_fd,
            _opened(_open_dir_nofollow(root_fd, RESERVED_DIR, RESERVED_DIR)) as res_fd,
            _opened(self._open_subdir(res_fd, sub, where, create=True)[1]) as fd,
        ):
            yield fd

    @contextlib.contextmanager
    def _dirs(self, parts: list[str], *, create: bool) -> Iterator[_Dirs]:
        with self._root_fd() as root_fd, self._dirs_at(root_fd, parts, create=create) as dirs:
            yield dirs

    @contextlib.contextmanager
    def _dirs_at(
        self, top_fd: int, parts: list[str], *, create: bool, label: str = ""
    ) -> Iterator[_Dirs]:
        dirs = _Dirs(top_fd)
        try:
            for i, name in enumerate(parts):
                where = label + "/".join(parts[: i + 1])
                dirs.push(*self._open_subdir(dirs.fd, name, where, create=create))
            yield dirs
        finally:
            dirs.close()

    def _open_subdir(
        self, parent_fd: int, name: str, where: str, *, create: bool
    ) -> tuple[str, int]:
        """(on-disk name, fd) of a folder, never through a link; made first if create."""
        try:
            return _with_alias(
                parent_fd, name, lambda n: (n, _open_dir_nofollow(parent_fd, n, where))
            )
        except FileNotFoundError:
            if not create:
                raise NotInFolderError(
                    f"the folder '{where}' does not exist in {self.root}"
                ) from None
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=parent_fd)
            self._op("mkdir", where)
            self._fsync_dir(parent_fd, where)
        return name, _open_dir_nofollow(parent_fd, name, where)

    @contextlib.contextmanager
    def _io(self, action: str) -> Iterator[None]:
        """Turn a bare OSError into FolderIOError naming the action (FolderErrors pass through)."""
        try:
            yield
        except FolderError:
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise FolderIOError(f"could not {action} in {self.root}: {reason}", exc.errno) from exc


class PartialFile:
    """An incoming file in `.albumsync/tmp/`; `finish` puts it in place, `discard` removes it."""

    def __init__(self, folder: AlbumFolder, key: str, fd: int) -> None:
        self.folder = folder
        self.key = key
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("this partial file is already finished, discarded or closed")
        return self._fd

    @property
    def size(self) -> int:
        """Bytes in the temporary file (the highest offset written, holes included)."""
        return os.fstat(self.fd).st_size

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of data at offset (a resumed transfer writes the chunks it still lacks)."""
        view = memoryview(data).cast("B")
        with self.folder._io(f"write the temporary file {self.key}"):
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        self.folder._op("write", self._rel)

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to length bytes at offset (to re-verify chunks of a resumed transfer)."""
        with self.folder._io(f"read the temporary file {self.key}"):
            return os.pread(self.fd, length, offset)

    def finish(
        self,
        rel: str,
        mtime_ns: int,
        replace_expected: Expected | None,
        *,
        now: float | None = None,
    ) -> FinishedFile:
        """fsync, then rename to rel; a file already there is trashed only if it is replace_expected.

        LocalChangeError (the temporary file is kept, so the caller can finish it under a
        conflict name) if rel exists and replace_expected is None or does not match it.
        """
        when = time.time() if now is None else now
        done = self.folder._finish(self, rel, mtime_ns, replace_expected, when)
        self.close()
        return done

    def discard(self) -> None:
        """Close and delete the temporary file."""
        self.close()
        with (
            self.folder._io(f"remove the temporary file {self.key}"),
            self.folder._reserved(TMP_DIR) as tmp_fd,
            contextlib.suppress(FileNotFoundError),
        ):
            os.unlink(self.key + PARTIAL_SUFFIX, dir_fd=tmp_fd)
        self.folder._op("unlink", self._rel)

    def close(self) -> None:
        """Close the fd; the temporary file stays for a later resume."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _rel(self) -> str:
        return f"{RESERVED_DIR}/{TMP_DIR}/{self.key}{PARTIAL_SUFFIX}"


def read_marker(root: Path) -> bytes | None:
    """The album ID in root's marker, None if there is none; FolderUnavailableError if unusable."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        state = FolderState.FOLDER_MISSING
        raise FolderUnavailableError(state, _state_message(state, root)) from None
    with _opened(root_fd):
        try:
            with _opened(_open_dir_nofollow(root_fd, RESERVED_DIR, RESERVED_DIR)) as res_fd:
                fd = os.open(MARKER_NAME, _READ_FLAGS, dir_fd=res_fd)
                with _opened(fd):
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise _bad_marker(root)
                    text = os.read(fd, MAX_MARKER_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnsafePathError):
            raise _bad_marker(root) from None
    return _parse_marker(text, root)


# -- private helpers ---------------------------------------------------------------------------


class _NoHardLinksError(Exception):
    """The file system cannot hard-link (internal: fall back to moving)."""


class _Dirs:
    """Directory fds from a top folder down: fds[i] is the parent of names[i]; fd is the deepest."""

    def __init__(self, top_fd: int) -> None:
        self.fds = [top_fd]
        self.names: list[str] = []

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def push(self, name: str, fd: int) -> None:
        self.names.append(name)
        self.fds.append(fd)

    def close(self) -> None:
        for fd in self.fds[1:]:
            os.close(fd)
        del self.fds[1:]


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0] or "."


def _split(rel: str) -> list[str]:
    """The components of an album-relative path; UnsafePathError for anything that could escape."""
    parts = rel.split("/")
    bad = not rel or "\x00" in rel or any(p in {"", ".", ".."} for p in parts)
    if bad:
        raise UnsafePathError(f"{rel!r} is not a safe path inside an album")
    if is_reserved_local(rel):
        raise UnsafePathError(f"{rel!r} is reserved for albumsync's own {RESERVED_DIR} files")
    return parts


def _open_dir_nofollow(parent_fd: int, name: str, where: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in {errno.ELOOP, errno.ENOTDIR}:
            raise UnsafePathError(
                f"'{where}' is a symbolic link or a file, not a folder; albumsync never goes through it"
            ) from exc
        raise


def _raise_resolve_error(exc: OSError, rel: str) -> NoReturn:
    if exc.errno == errno.ELOOP:
        raise UnsafePathError(
            f"'{rel}' is a symbolic link; albumsync does not follow links"
        ) from exc
    if exc.errno == errno.ENOENT:
        raise NotInFolderError(f"'{rel}' does not exist") from exc
    raise exc


def _with_alias(dir_fd: int, name: str, call: Callable[[str], _T]) -> _T:
    """call(name), retried with the on-disk name that differs from name only in Unicode form."""
    try:
        return call(name)
    except FileNotFoundError:
        alias = _nfc_alias(dir_fd, name)
        if alias is None:
            raise
        return call(alias)


def _lookup(dir_fd: int, name: str) -> str | None:
    """The on-disk spelling of name in dir_fd (itself or a Unicode-equivalent one), or None."""

    def exists(candidate: str) -> str:
        _lstat_at(dir_fd, candidate)
        return candidate

    try:
        return _with_alias(dir_fd, name, exists)
    except FileNotFoundError:
        return None


def _nfc_alias(dir_fd: int, name: str) -> str | None:
    if name.isascii():
        return None  # ASCII has one Unicode form: skip listing a possibly huge folder
    target = unicodedata.normalize("NFC", name)
    for entry in os.listdir(dir_fd):
        if entry != name and unicodedata.normalize("NFC", entry) == target:
            return entry
    return None


def _lstat_at(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _matches(st: os.stat_result, expected: Expected) -> bool:
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == expected


def _regular_files(top_fd: int, prefix: str = "") -> list[str]:
    """Relative paths of the regular files under top_fd, found without following links."""
    found: list[str] = []
    with os.scandir(top_fd) as entries:
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                with _opened(_open_dir_nofollow(top_fd, entry.name, rel)) as sub_fd:
                    found += _regular_files(sub_fd, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                found.append(rel)
    return sorted(found)


def _restore_names(name: str) -> Iterator[str]:
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension, or a dot-file such as ".hidden"
        stem, dot, ext = name, "", ""
    yield name
    yield f"{stem} (restored){dot}{ext}"
    n = 2
    while True:
        yield f"{stem} (restored {n}){dot}{ext}"
        n += 1


def _batch_order(batch: str) -> tuple[str, int]:
    match = _BATCH_RE.match(batch)
    return (match.group(1), int(match.group(2) or 1)) if match else (batch, 0)


def _batch_time(batch: str) -> float | None:
    match = _BATCH_RE.match(batch)
    if match is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(match.group(1), _STAMP_FORMAT)))
    except ValueError:
        return None


def _check_key(key: str) -> None:
    if not (0 < len(key) <= MAX_PARTIAL_KEY and _KEY_RE.match(key)):
        raise UnsafePathError(
            f"a temporary-file key must be 1-{MAX_PARTIAL_KEY} lowercase hex digits"
        )


def _parse_marker(text: bytes, root: Path) -> bytes:
    lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines or lines[0] != MARKER_FORMAT:
        raise _bad_marker(root)
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        if key == "album":
            try:
                return bytes.fromhex(value)
            except ValueError:
                raise _bad_marker(root) from None
    raise _bad_marker(root)


def _bad_marker(root: Path) -> FolderUnavailableError:
    return FolderUnavailableError(
        FolderState.WRONG_ALBUM,
        f"the album marker {root / RESERVED_DIR / MARKER_NAME} is damaged or not albumsync's; "
        "albumsync will not touch this folder",
    )


def folder_problem(state: FolderState, root: Path) -> str:
    """What a person reads about a folder that is not OK: what happened, and what to do."""
    return _state_message(state, root)


def _state_message(state: FolderState, root: Path) -> str:
    return {
        FolderState.OK: f"{root} is ready",
        FolderState.FOLDER_MISSING: (
            f"the album folder {root} is missing, unreadable or not mounted; albumsync pauses this album "
            "(nothing is deleted) until it is back or you choose its new location"
        ),
        FolderState.MARKER_MISSING: (
            f"{root} has no {RESERVED_DIR}/{MARKER_NAME}: it may be an unmounted or replaced disk; "
            "albumsync pauses this album instead of treating its photos as deleted. Reconnect the "
            "disk, or choose the album's folder again"
        ),
        FolderState.WRONG_ALBUM: (
            f"{root} is marked as the folder of a different album; albumsync will not sync it here"
        ),
    }[state]


@contextlib.contextmanager
def _opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, bytes, int], int], fn)


_RENAMEAT2 = _load_renameat2()
_RENAME_NOREPLACE = 1  # linux/fs.h


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename src to dst, FileExistsError if dst exists: an unexpected file is never replaced."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}:
            raise OSError(err, os.strerror(err), dst)
    # No RENAME_NOREPLACE on this file system (FUSE, old kernels): a microsecond window remains.
    if _lookup(dst_fd, dst) is not None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
