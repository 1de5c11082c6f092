"""One album in memory: its verified logs, the keys this device holds, its folder and local index.

Everything here is derived from what the store holds (logs, keys, index); `Album.refresh` recomputes
the view after any change. Deciding what to do about a change is `daemon/planner.py`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.files import AlbumFolder, FolderState
from protocol.album_view import AlbumView, LiveFile, evaluate
from protocol.errors import VerificationError
from protocol.ids import AlbumId, DeviceId
from protocol.keys import DeviceKey
from protocol.manifest_builders import AuthorChain
from protocol.manifest_state import ManifestState
from protocol.membership import MembershipState, Status, member_name
from protocol.membership_log import MembershipLog
from protocol.rights import Role


@dataclass(slots=True)
class LocalFile:
    """A row of the local index: what is on disk at `path`, and which manifest file it holds."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    content_hash: bytes | None = None
    file_author: bytes | None = None
    file_id: bytes | None = None
    entry_hash: bytes | None = None
    file_key: bytes | None = None
    state: str = "synced"  # synced | local_only | unpublished

    @property
    def file(self) -> tuple[bytes, bytes] | None:
        if self.file_author is None or self.file_id is None:
            return None
        return (self.file_author, self.file_id)

    def row(self) -> dict[str, object]:
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
            "content_hash": self.content_hash,
            "file_author": self.file_author,
            "file_id": self.file_id,
            "entry_hash": self.entry_hash,
            "file_key": self.file_key,
            "chunks": None,
            "state": self.state,
        }


def indexed_row(file: LiveFile, path: str, size: int, mtime_ns: int, inode: int) -> LocalFile:
    """The index row of `path` holding the album's file `file` (as stat saw it)."""
    return LocalFile(
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        inode=inode,
        content_hash=file.content_hash,
        file_author=file.author,
        file_id=file.file_id,
        entry_hash=file.entry_hash,
        file_key=file.file_key,
        state="synced",
    )


class LocalIndex(dict[str, LocalFile]):
    """The local index by path, which also finds the rows holding a given manifest file.

    Finishing a download asks "which other paths hold this file?"; scanning every row for that
    made receiving N files quadratic. Rows are replaced, never edited in place, while indexed.
    A file is almost always held at one path, so that path is kept as a plain string (a set per
    file cost 200 bytes for each of an album's 100,000 files).
    """

    def __init__(self, rows: Iterable[tuple[str, LocalFile]] = ()) -> None:
        super().__init__()
        self._by_file: dict[tuple[bytes, bytes], str | set[str]] = {}
        for path, row in rows:
            self[path] = row

    def __setitem__(self, path: str, row: LocalFile) -> None:
        self._unlink(path)
        super().__setitem__(path, row)
        if (key := row.file) is not None:
            held = self._by_file.get(key)
            if held is None:
                self._by_file[key] = path
            elif isinstance(held, str):
                self._by_file[key] = {held, path}
            else:
                held.add(path)

    def __delitem__(self, path: str) -> None:
        self._unlink(path)
        super().__delitem__(path)

    def pop(self, path: str, *default: LocalFile | None) -> LocalFile | None:  # type: ignore[override]
        self._unlink(path)
        return super().pop(path, *default)

    def clear(self) -> None:
        super().clear()
        self._by_file.clear()

    def holding(self, key: tuple[bytes, bytes]) -> list[LocalFile]:
        """The rows that hold manifest file `key`, by path."""
        held = self._by_file.get(key)
        if held is None:
            return []
        return [self[held]] if isinstance(held, str) else [self[p] for p in sorted(held)]

    def _unlink(self, path: str) -> None:
        old = self.get(path)
        if old is None or (key := old.file) is None:
            return
        held = self._by_file.get(key)
        if held == path:
            del self._by_file[key]
        elif isinstance(held, set):
            held.discard(path)
            if len(held) == 1:
                self._by_file[key] = held.pop()


@dataclass
class Album:
    album_id: bytes
    state: str  # active | invited | left | removed | declined | deleted
    log: MembershipLog
    manifest: ManifestState
    me: DeviceKey
    path: Path | None = None
    keys: dict[int, bytes] = field(default_factory=dict)
    view: AlbumView | None = None
    local: LocalIndex = field(default_factory=LocalIndex)
    chain: AuthorChain | None = None
    problems: list[str] = field(default_factory=list)
    rejected_count: int = 0
    heard_from_peer: bool = False  # a member told us its manifest heads since this daemon started
    folder_checked: tuple[float, bool] = (float("-inf"), False)  # (monotonic time, marker OK)
    # (membership state, key count) -> names: rebuilt only when either changes (see member_names).
    _names: tuple[MembershipState, int, dict[DeviceId, str]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def membership(self) -> MembershipState:
        return self.log.state

    @property
    def printable_id(self) -> str:
        return str(AlbumId(self.album_id))

    @property
    def folder(self) -> AlbumFolder | None:
        return AlbumFolder(self.path, self.album_id) if self.path is not None else None

    def folder_state(self) -> FolderState | None:
        folder = self.folder
        return folder.check() if folder is not None else None

    def role_of(self, key: bytes) -> Role | None:
        state = self.membership
        if key == state.owner:
            return Role.OWNER
        status = state.status(key)
        if status not in (Status.ACTIVE, Status.INVITED):
            return None
        return state.members[key].role

    @property
    def my_role(self) -> Role | None:
        return self.role_of(self.me.public)

    def is_reader(self, key: bytes) -> bool:
        """May `key` receive this album's entries and chunks (owner, invited or active member)?"""
        return key in self.membership.readers() and not self._has_left(key)

    def _has_left(self, key: bytes) -> bool:
        return self.membership.status(key) in (Status.LEFT, Status.DECLINED, Status.REMOVED)

    def member_keys(self) -> set[bytes]:
        """Every device this album involves that is still a reader, besides this one."""
        return {k for k in self.membership.readers() if k != self.me.public and self.is_reader(k)}

    def device_of(self, key: bytes) -> DeviceId | None:
        state = self.membership
        if key == state.owner:
            return DeviceId.from_certificate(state.owner_cert)
        member = state.log_members.get(key)
        return DeviceId.from_certificate(member.cert) if member is not None else None

    def name(self) -> str:
        try:
            return self.membership.album_name(self.keys) or "(name unreadable)"
        except VerificationError:
            return "(name unreadable)"

    def member_names(self) -> dict[DeviceId, str]:
        """Device -> the name each member sealed into its accept, for the ones this device reads.

        Cached: reports ask for a name per file, and the membership state is a new object
        whenever the log or a statement changes it.
        """
        state = self.membership
        cached = self._names
        if cached is not None and cached[0] is state and cached[1] == len(self.keys):
            return cached[2]
        names: dict[DeviceId, str] = {}
        for key, member in state.log_members.items():
            name = member_name(state, key, self.keys)
            if name is not None:
                names[DeviceId.from_certificate(member.cert)] = name
        self._names = (state, len(self.keys), names)
        return names

    def refresh_keys(self) -> dict[int, bytes]:
        """Open every epoch key sealed to this device; returns the ones that are new."""
        try:
            keys = self.membership.epoch_keys(self.me)
        except VerificationError:
            keys = {}
        new = {e: k for e, k in keys.items() if e not in self.keys}
        self.keys.update(keys)
        return new

    def refresh(self) -> AlbumView:
        """Recompute the view from the stored entries, the rights and the keys."""
        self.view = evaluate(self.manifest, self.membership.rights(), self.keys)
        return self.view

    def ensure_chain(self) -> AuthorChain:
        """This device's own manifest chain, resumed from what the manifest already holds."""
        if self.chain is None:
            seq, head = self.manifest.head(self.me.public)
            self.chain = AuthorChain(self.me, self.album_id, seq=seq, head=head)
        return self.chain

    def current_epoch_key(self) -> tuple[int, bytes] | None:
        epoch = self.membership.epoch
        key = self.keys.get(epoch)
        return (epoch, key) if key is not None else None


def sealed_member_name(albums: Iterable[Album], device: DeviceId) -> str | None:
    """The name `device` sealed into its accept in one of `albums` (for devices never met)."""
    for album in albums:
        name = album.member_names().get(device)
        if name is not None:
            return name
    return None
