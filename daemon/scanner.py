"""Scanner and hasher: an album folder walked into index candidates, files hashed into chunk lists.

Every function here blocks (run it with asyncio.to_thread). The walk never follows a symbolic link,
never opens anything but directories (a FIFO cannot block it), and reports what it cannot sync as
problems instead of guessing: links, FIFOs, sockets, devices, names that are not UTF-8, names the
protocol refuses, and two names that differ only in Unicode form. Names are reported in NFC (macOS
writes NFD). A folder that cannot be read stays "unknown": its files are never reported as vanished,
and a folder whose marker is missing is not scanned at all (FolderUnavailableError).
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from daemon.files import (
    RESERVED_DIR,
    AlbumFolder,
    FileChangedError,
    FolderError,
    FolderIOError,
    NotInFolderError,
)
from protocol.chunks import CHUNK_SIZE, MAX_FILE_SIZE, ChunkRef, chunk_id, encrypt_chunk
from protocol.errors import VerificationError
from protocol.names import MAX_COMPONENTS, is_reserved_local, safe_relative_path


class FileTooLargeError(FolderError):
    """The file is larger than the protocol's limit (64 GiB); it is not synced."""


class KnownFile(NamedTuple):
    """What the index holds about a file: a differing size, mtime or inode means "changed"."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class ScannedFile:
    """A regular file found by the scan, under its NFC album-relative path."""

    path: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class ScanProblem:
    """A file or folder that is not synced, and why (shown per file in the UI)."""

    path: str
    message: str


@dataclass(frozen=True)
class ScanResult:
    """What a scan found compared with the index: `changed` holds new and modified files."""

    changed: list[ScannedFile]
    unchanged: list[ScannedFile]
    vanished: list[str]
    problems: list[ScanProblem]


@dataclass(frozen=True)
class HashedFile:
    """A file's plaintext SHA-256 and its encrypted chunks, with the stat it was read under."""

    content_hash: bytes
    chunks: list[ChunkRef]
    size: int
    mtime_ns: int
    inode: int


def scan_blocking(
    folder: AlbumFolder, known: Mapping[str, KnownFile], only: Collection[str] | None = None
) -> ScanResult:
    """Walk the album (or just the paths in `only`, e.g. from the watcher) and compare with known.

    FolderUnavailableError if the folder is missing, unmarked or another album's, checked before
    and after the walk, so an unmount during the scan never looks like mass deletion.
    """
    folder.require_ok()
    walk = _Walk(folder)
    if only is None or "" in only:
        walk.all()
        scope: list[str] | None = None
    else:
        scope = _outermost(unicodedata.normalize("NFC", p) for p in only)
        walk.some(_outermost(only))
    folder.require_ok()
    return walk.result(known, scope)


def hash_file_blocking(folder: AlbumFolder, rel: str, file_key: bytes) -> HashedFile:
    """Hash and chunk the file at rel; FileChangedError if it changed while being read."""
    fd = folder.open_read(rel)
    try:
        before = os.fstat(fd)
        if before.st_size > MAX_FILE_SIZE:
            raise FileTooLargeError(_too_large(rel, before.st_size))
        content = hashlib.sha256()
        chunks: list[ChunkRef] = []
        view = memoryview(bytearray(CHUNK_SIZE))
        size = 0
        while True:
            n = _read_full(fd, view, size, rel)
            if n == 0:
                break
            block = view[:n]
            content.update(block)
            chunks.append(ChunkRef(chunk_id(encrypt_chunk(file_key, len(chunks), block)), n))
            size += n
            if n < CHUNK_SIZE:
                break
        after = os.fstat(fd)
    finally:
        os.close(fd)
    _check_unchanged(folder, rel, before, after, size)
    return HashedFile(content.digest(), chunks, size, after.st_mtime_ns, after.st_ino)


def holds_content_blocking(
    folder: AlbumFolder, rel: str, size: int, content_hash: bytes
) -> os.stat_result | None:
    """The file's stat if `rel` holds exactly these bytes (size and plaintext SHA-256), else None."""
    try:
        fd = folder.open_read(rel)
    except (FolderError, OSError):
        return None
    try:
        st = os.fstat(fd)
        if st.st_size != size:
            return None
        digest = hashlib.sha256()
        while block := os.read(fd, CHUNK_SIZE):
            digest.update(block)
        return st if digest.digest() == content_hash else None
    finally:
        os.close(fd)


def read_chunk_blocking(
    folder: AlbumFolder, rel: str, index: int, file_key: bytes, expected_id: bytes | None = None
) -> bytes:
    """Chunk `index` of the local file, encrypted again (deterministic, so any member can serve it).

    FileChangedError if the file no longer holds that chunk (or, given expected_id, not that one).
    """
    fd = folder.open_read(rel)
    try:
        view = memoryview(bytearray(CHUNK_SIZE))
        n = _read_full(fd, view, index * CHUNK_SIZE, rel)
    finally:
        os.close(fd)
    if n == 0:  # no chunk is empty: the file shrank (or was emptied) since it was indexed
        raise FileChangedError(f"'{rel}' is shorter than it was; chunk {index} is gone")
    ciphertext = encrypt_chunk(file_key, index, view[:n])
    if expected_id is not None and chunk_id(ciphertext) != expected_id:
        raise FileChangedError(f"'{rel}' changed since it was indexed; chunk {index} differs")
    return ciphertext


def is_ignored_path(rel: str) -> bool:
    """True for paths the album skips without a word: albumsync's own `.albumsync*` files."""
    return is_reserved_local(rel)


# -- private helpers ---------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass
class _Walk:
    """One scan's state: files found by NFC path, problems, and folders whose content is unknown."""

    folder: AlbumFolder
    found: dict[str, ScannedFile] = field(default_factory=dict)
    problems: list[ScanProblem] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # NFC prefixes that could not be read

    def all(self) -> None:
        fd = self._open_dir("")
        if fd is not None:
            self._walk_dir(fd, "")

    def some(self, paths: list[str]) -> None:
        for disk_rel in paths:
            if is_ignored_path(disk_rel) or {"", ".", ".."} & set(disk_rel.split("/")):
                continue
            parent, _, name = disk_rel.rpartition("/")
            fd = self._open_dir(parent)
            if fd is not None:
                try:
                    self._visit(fd, name, disk_rel)
                finally:
                    os.close(fd)

    def result(self, known: Mapping[str, KnownFile], scope: list[str] | None) -> ScanResult:
        changed: list[ScannedFile] = []
        unchanged: list[ScannedFile] = []
        for path in sorted(self.found):
            f = self.found[path]
            same = known.get(path) == KnownFile(f.size, f.mtime_ns, f.inode)
            (unchanged if same else changed).append(f)
        # Sets, and a walk up each path's parents: testing every known path against every
        # scoped path made a watcher batch cost |index| x |batch|.
        unknown = set(self.unknown)
        scoped = set(scope or ())
        candidates = known if scope is None else [k for k in known if _under(k, scoped)]
        vanished = sorted(k for k in candidates if k not in self.found and not _under(k, unknown))
        return ScanResult(changed, unchanged, vanished, self.problems)

    def _open_dir(self, disk_rel: str) -> int | None:
        try:
            return self.folder.open_dir(disk_rel)
        except NotInFolderError:
            return None  # gone: what the index had there has vanished
        except FolderIOError as exc:
            self._unknown(disk_rel, f"not scanned: {exc.message}")
            return None
        except FolderError:
            return None  # a link or a file where a folder was: not part of the album any more

    def _walk_dir(self, dir_fd: int, disk_prefix: str) -> None:
        """Visit every entry of dir_fd (closed here), folders depth first, NFC spellings first."""
        try:
            with os.scandir(dir_fd) as it:
                names = [entry.name for entry in it]
        except OSError as exc:
            os.close(dir_fd)
            self._unknown(disk_prefix.rstrip("/"), f"not scanned: {exc.strerror}")
            return
        try:
            for name in sorted(names, key=_nfc_first):
                if not disk_prefix and name == RESERVED_DIR:
                    continue
                self._visit(dir_fd, name, disk_prefix + name)
        finally:
            os.close(dir_fd)

    def _visit(self, dir_fd: int, name: str, disk_rel: str) -> None:
        if not _is_utf8(disk_rel):
            self._problem(disk_rel, "not synced: the name is not valid UTF-8; rename it to sync it")
            return
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # removed while scanning
        except OSError as exc:
            self._unknown(disk_rel, f"not scanned: {exc.strerror}")
            return
        if stat.S_ISDIR(st.st_mode):
            self._enter(dir_fd, name, disk_rel, st)
        elif stat.S_ISREG(st.st_mode) and st.st_size > MAX_FILE_SIZE:
            self._problem(disk_rel, f"not synced: {_too_large(disk_rel, st.st_size)}")
        elif stat.S_ISREG(st.st_mode):
            self._file(disk_rel, st)
        elif stat.S_ISLNK(st.st_mode):
            self._problem(disk_rel, "skipped: a symbolic link (albumsync never follows links)")
        else:
            kind = _SPECIAL_KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            self._problem(disk_rel, f"skipped: {kind}, not a regular file")

    def _enter(self, dir_fd: int, name: str, disk_rel: str, st: os.stat_result) -> None:
        if is_ignored_path(disk_rel):
            return
        if disk_rel.count("/") + 1 >= MAX_COMPONENTS:  # no file in it could have a valid path
            self._problem(disk_rel, f"not synced: nested deeper than {MAX_COMPONENTS} folders")
            return
        try:
            sub_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:  # replaced by a link (ELOOP), or not readable
            self._unknown(disk_rel, f"not scanned: {exc.strerror}")
            return
        now = os.fstat(sub_fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(sub_fd)  # swapped between listing and opening: look again next scan
            self._unknown(disk_rel, "not scanned: the folder changed during the scan")
            return
        self._walk_dir(sub_fd, disk_rel + "/")

    def _file(self, disk_rel: str, st: os.stat_result) -> None:
        if is_ignored_path(disk_rel):
            return
        try:
            path = safe_relative_path(disk_rel)
        except VerificationError as exc:
            self._problem(disk_rel, f"not synced: {exc.message}")
            return
        if path in self.found:
            self._problem(disk_rel, f"not synced: same name as '{path}' in another Unicode form")
            return
        self.found[path] = ScannedFile(path, st.st_size, st.st_mtime_ns, st.st_ino)

    def _problem(self, disk_rel: str, message: str) -> None:
        self.problems.append(ScanProblem(_printable(disk_rel), message))

    def _unknown(self, disk_rel: str, message: str) -> None:
        self.unknown.append(unicodedata.normalize("NFC", disk_rel))
        self._problem(disk_rel or ".", message)


def _too_large(rel: str, size: int) -> str:
    return f"'{_printable(rel)}' has {size} bytes, over the limit of {MAX_FILE_SIZE} (64 GiB)"


def _read_full(fd: int, view: memoryview, offset: int, rel: str) -> int:
    """Fill view from offset (short only at end of file); the byte count read."""
    got = 0
    try:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
    except OSError as exc:
        raise FolderIOError(f"could not read '{rel}': {exc.strerror}", exc.errno) from exc
    return got


def _check_unchanged(
    folder: AlbumFolder, rel: str, before: os.stat_result, after: os.stat_result, size: int
) -> None:
    try:
        now = folder.stat(rel)
    except NotInFolderError:
        raise FileChangedError(f"'{rel}' was removed while albumsync read it") from None
    same = (
        (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        and after.st_size == size
        and (now.st_dev, now.st_ino) == (after.st_dev, after.st_ino)
    )
    if not same:
        raise FileChangedError(f"'{rel}' changed while albumsync read it; it is read again later")


def _outermost(paths: Iterable[str]) -> list[str]:
    """The given paths minus those inside another one (scanning "a" covers "a/b")."""
    ordered = sorted(set(paths), key=lambda p: p.split("/"))  # a folder just before its content
    kept: list[str] = []
    for p in ordered:
        if not kept or not _under(p, [kept[-1]]):
            kept.append(p)
    return kept


def _under(path: str, prefixes: Collection[str]) -> bool:
    """Whether `path` is one of `prefixes` or inside one ("" is the whole folder)."""
    if not prefixes:
        return False
    if "" in prefixes or path in prefixes:
        return True
    slash = path.find("/")
    while slash != -1:
        if path[:slash] in prefixes:
            return True
        slash = path.find("/", slash + 1)
    return False


def _nfc_first(name: str) -> tuple[bool, str]:
    """Sort key: a name already in NFC wins over an equivalent spelling, deterministically."""
    return (not (name.isascii() or unicodedata.is_normalized("NFC", name)), name)


def _is_utf8(disk_rel: str) -> bool:
    try:
        disk_rel.encode("utf-8")
    except UnicodeEncodeError:  # os functions return undecodable bytes as lone surrogates
        return False
    return True


def _printable(disk_rel: str) -> str:
    return os.fsencode(disk_rel).decode("utf-8", "backslashreplace")
