"""Read-only reports on a running Core: builds the `daemon.model` dataclasses the API and CLI show.

Nothing here changes state. Reports read the engine's memory (albums, connections, queues) and the
store's invite and activity rows; folder checks run off the event loop (a hung mount must not stall
sync). IDs come out in their printed forms.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.album import Album, LocalFile, sealed_member_name
from daemon.engine import fork_text
from daemon.files import FolderState, folder_problem
from daemon.model import (
    Activity,
    AlbumSummary,
    FileInfo,
    HistoryEntry,
    InviteIn,
    InviteOut,
    MemberInfo,
    NearbyInfo,
    PeerStatus,
    Progress,
    RelayInfo,
    StatusReport,
    TrashEntry,
)
from daemon.peers import tcp_address
from protocol.album_view import AlbumView, LiveFile
from protocol.errors import VerificationError
from protocol.ids import AlbumId, DeviceId
from protocol.membership import Status
from protocol.membership_entries import (
    DeleteAlbum,
    Genesis,
    Invite,
    Record,
    Remove,
    Rename,
    RoleChange,
    SetCover,
    decode_entry,
)
from protocol.rights import Role

if TYPE_CHECKING:
    from daemon.core import Core
    from daemon.relays import RelayEntry
    from daemon.thumbnails import Thumbnails

LIVE_STATES = ("active", "invited")  # the album syncs, or its invite waits for an answer
MAX_ACTIVITY = 500


async def album_summary(core: Core, album: Album) -> AlbumSummary:
    """What a person sees of one album: role, state, folder health, counts and progress."""
    folder_state = await asyncio.to_thread(album.folder_state) if album.path else None
    files = album.view.files if album.view is not None else ()
    owner = album.device_of(album.membership.owner)
    fork = album.membership.fork
    return AlbumSummary(
        album_id=album.printable_id,
        name=album.name(),
        path=str(album.path) if album.path is not None else None,
        role=album.my_role.label if album.my_role is not None else "",
        state=album.state,
        folder_state=folder_state.value if folder_state is not None else "none",
        owner_device=str(owner) if owner is not None else "",
        owner_name=device_name(core, owner),
        members=1 + sum(1 for m in album.membership.members.values() if m.status is Status.ACTIVE),
        files=len(files),
        bytes=sum(f.size for f in files),
        local_only=sum(1 for row in album.local.values() if row.state == "local_only"),
        progress=progress(core, album),
        fork=album.membership.fork is not None or bool(album.view and album.view.forks),
        fork_hashes=tuple(h.hex() for h in fork.hashes) if fork else (),
        problems=tuple(album.problems)
        + ((fork_text(fork.seq, fork.hashes),) if fork else ())
        + _folder_problem(album, folder_state),
        cover=cover_id(album),
    )


async def album_summaries(core: Core) -> list[AlbumSummary]:
    """Every album this device knows, live ones first, then by name; then the ones it is joining."""
    albums = sorted(
        core.engine.albums.values(),
        key=lambda a: (a.state not in LIVE_STATES, a.name().casefold(), a.album_id),
    )
    found = [await album_summary(core, album) for album in albums]
    return found + joining(core)


def joining(core: Core) -> list[AlbumSummary]:
    """Albums whose invite code is being redeemed: state "joining" until the owner's device answers."""
    found = []
    for album_id, redemption in core.engine.redemptions.items():
        album = core.engine.albums.get(album_id)
        if album is not None and album.state in LIVE_STATES:
            continue
        found.append(
            AlbumSummary(
                album_id=str(AlbumId(album_id)),
                name="",
                path=str(redemption.path),
                role=redemption.code.role.label,
                state="joining",
                folder_state="none",
                owner_device=str(redemption.owner),
                owner_name=device_name(core, redemption.owner),
                members=0,
                files=0,
                bytes=0,
                local_only=0,
                problems=("waiting for the owner's device to answer the invite code",),
            )
        )
    return found


def progress(core: Core, album: Album) -> Progress:
    """Files and bytes still to download; the rate is the device's, shown on albums that wait."""
    files, left = core.transfers.to_go(album)
    rate = core.transfers.rate() if files else 0.0
    eta = left / rate if rate > 0 and left > 0 else None
    waiting = (
        album.state == "active" and not album.heard_from_peer and album.my_role is not Role.OWNER
    )
    return Progress(
        files_to_go=files, bytes_to_go=left, rate=rate, eta=eta, waiting_for_peers=waiting
    )


def members(core: Core, album: Album) -> list[MemberInfo]:
    """The owner first, then every device ever invited, in invitation order."""
    state = album.membership
    found = [_member(core, album, state.owner, "owner", "owner")]
    for key, member in sorted(state.members.items(), key=lambda kv: kv[1].invited_seq):
        found.append(_member(core, album, key, member.role.label, member.status.value))
    return found


def files(core: Core, album: Album, offset: int, limit: int) -> list[FileInfo]:
    """One page of the album's files in grid order: by capture time, files without one last, then
    by path; local files that are not published are listed with the others. Only the page is
    built: the order itself is cached (see grid_order)."""
    page = grid_order(core, album)[offset : offset + limit]
    downloading = (
        {p.download.file.entry_hash for p in core.transfers.queue.values() if p.active}
        if page
        else set()
    )
    printed: dict[bytes, tuple[DeviceId | None, str]] = {}
    return [_file_info(core, album, tile, downloading, printed) for tile in page]


@dataclass(frozen=True)
class Tile:
    """One place in the grid: a published file, or a local file that is not published."""

    captured: int | None  # the capture time the grid orders by
    path: str
    file: LiveFile | None  # published
    row: LocalFile | None  # local only

    @property
    def order(self) -> tuple[bool, int, str]:
        return (self.captured is None, self.captured or 0, self.path)


@dataclass
class _GridCache:
    view: AlbumView | None
    view_files: tuple[tuple[str, bytes], ...]  # (path, entry hash): what the order reads of it
    thumbs: Thumbnails
    generation: int  # of the thumbnails' capture times
    local_only: tuple[tuple[str, bytes | None, int, int, int], ...]
    tiles: list[Tile]


_grids: dict[bytes, _GridCache] = {}


def grid_order(core: Core, album: Album) -> list[Tile]:
    """Every file of the album in grid order. Sorting 10,000 files on every page and listing call
    cost more than the rest of the page, so the order is kept per album and rebuilt only when the
    view's files, the local-only files or the known capture times change."""
    thumbs = core.thumbnails
    generation = thumbs.generation
    local_only = _local_only_fingerprint(album)
    cached = _grids.get(album.album_id)
    if (
        cached is not None
        and cached.thumbs is thumbs
        and cached.generation == generation
        and cached.local_only == local_only
    ):
        if cached.view is album.view:
            return cached.tiles
        # Each reconcile evaluates a new view object, mostly with the same files.
        view_files = _view_fingerprint(album.view)
        if cached.view_files == view_files:
            cached.view = album.view
            return cached.tiles
    tiles = sorted(_tiles(thumbs, album), key=lambda t: t.order)
    _grids[album.album_id] = _GridCache(
        album.view, _view_fingerprint(album.view), thumbs, generation, local_only, tiles
    )
    return tiles


def _view_fingerprint(view: AlbumView | None) -> tuple[tuple[str, bytes], ...]:
    """A file's entry hash names its signed entry, so its author, ID, size and capture time."""
    return tuple((f.path, f.entry_hash) for f in view.files) if view is not None else ()


def _local_only_fingerprint(album: Album) -> tuple[tuple[str, bytes | None, int, int, int], ...]:
    """What of the local index the order depends on: the local-only rows and what names their
    thumbnails (values, not the rows: a row may be updated in place)."""
    return tuple(
        (path, row.content_hash, row.size, row.mtime_ns, row.inode)
        for path, row in album.local.items()
        if row.state == "local_only"
    )


def _tiles(thumbs: Thumbnails, album: Album) -> Iterable[Tile]:
    published = set()
    for file in album.view.files if album.view is not None else ():
        published.add(file.path)
        captured = file.captured_at
        if captured is None:
            meta = thumbs.meta(file.content_hash)
            captured = meta.captured if meta is not None else None
        yield Tile(captured=captured, path=file.path, file=file, row=None)
    for path, row in album.local.items():
        if row.state == "local_only" and path not in published:
            meta = thumbs.meta(local_cache_key(row))
            captured = meta.captured if meta is not None else None
            yield Tile(captured=captured, path=path, file=None, row=row)


def _file_info(
    core: Core,
    album: Album,
    tile: Tile,
    downloading: set[bytes],
    printed: dict[bytes, tuple[DeviceId | None, str]],
) -> FileInfo:
    """The listing's entry for one tile; what changes without a new view (download state, names)
    is read now."""
    file = tile.file
    if file is None:
        row = tile.row
        assert row is not None  # a tile is a published file or a local row
        return FileInfo(
            id=local_file_id(tile.path),
            path=tile.path,
            size=row.size,
            added_by_device=str(core.identity.device_id),
            added_by_name=core.identity.name,
            captured_at=None,
            captured=tile.captured,
            mtime_ns=row.mtime_ns,
            local="local_only",
        )
    if file.author not in printed:  # printing a device ID costs a checksum: once per author
        device = album.device_of(file.author)
        printed[file.author] = (device, str(device) if device is not None else "")
    device, device_text = printed[file.author]
    local_row = album.local.get(file.path)
    if local_row is not None and local_row.entry_hash == file.entry_hash:
        local = "synced"
    elif file.entry_hash in downloading:
        local = "downloading"
    else:
        local = "missing"
    return FileInfo(
        id=published_file_id(file.key),
        path=file.path,
        size=file.size,
        added_by_device=device_text,
        added_by_name=device_name(core, device),
        captured_at=file.captured_at,
        captured=tile.captured,
        mtime_ns=file.mtime_ns,
        local=local,
    )


async def trash(album: Album) -> list[TrashEntry]:
    """The album trash, oldest first; FolderError if the folder cannot be read safely."""
    folder = album.folder
    if folder is None:
        return []
    items = await asyncio.to_thread(folder.list_trash)
    return [TrashEntry(path=i.rel, trashed_at=i.trashed_at, trash_path=i.trash_rel) for i in items]


async def invites_out(core: Core) -> list[InviteOut]:
    """Invites this device made, newest first; open ones past their date show as expired."""
    now = int(time.time())
    found = []
    for row in reversed(await core.store.invites_out()):
        album_id = bytes(row["album_id"])
        album = core.engine.albums.get(album_id)
        state = str(row["state"])
        if state == "open" and int(row["expires_at"]) <= now:
            state = "expired"
        found.append(
            InviteOut(
                invite_id=bytes(row["invite_id"]).hex(),
                album_id=str(AlbumId(album_id)),
                album_name=album.name() if album is not None else "",
                role=str(row["role"]),
                message=str(row["message"]),
                to_device=row["to_device"],
                expires_at=int(row["expires_at"]),
                state=state,
            )
        )
    return found


async def invites_in(core: Core) -> list[InviteIn]:
    """Invites this device received, newest first."""
    return [
        InviteIn(
            album_id=str(AlbumId(bytes(row["album_id"]))),
            album_name=str(row["album_name"]),
            owner_device=str(row["owner_device"]),
            owner_name=str(row["owner_name"]),
            role=str(row["role"]),
            message=str(row["message"]),
            state=str(row["state"]),
        )
        for row in reversed(await core.store.invites_in())
    ]


def peers(core: Core) -> list[PeerStatus]:
    """Every device we are connected to, dial, or share a live album with, by name."""
    engine = core.engine
    shared = _shared_albums(core)
    devices = set(engine.peers.connections) | set(engine.peers.wanted) | set(shared)
    devices.discard(core.identity.device_id)
    found = [_peer(core, device, shared.get(device, ())) for device in devices]
    return sorted(found, key=lambda p: (p.name.casefold(), p.device_id))


async def activity(core: Core, limit: int = 200) -> list[Activity]:
    """The newest `limit` lines of the activity log, newest first."""
    rows = await core.store.activity(max(1, min(limit, MAX_ACTIVITY)))
    return [
        Activity(
            at=int(row["at"]),
            album_id=str(AlbumId(bytes(row["album_id"]))) if row["album_id"] else None,
            kind=str(row["kind"]),
            text=str(row["text"]),
        )
        for row in rows
    ]


async def status_report(core: Core) -> StatusReport:
    """The whole device at a glance: identity, albums with progress, peers, error counters."""
    status = await core.status()
    engine = core.engine
    port = engine.peers.bound_port or core.config.listen_port
    host = core.config.listen_host
    errors = dict(engine.errors)
    for name, count in engine.peers.errors.items():
        errors[name] = errors.get(name, 0) + count
    return StatusReport(
        device_id=status.device_id,
        device_name=status.device_name,
        version=status.version,
        uptime=status.uptime,
        listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        albums=tuple(await album_summaries(core)),
        peers=tuple(peers(core)),
        relays=tuple(relays(core)),
        errors=errors,
    )


def relays(core: Core) -> list[RelayInfo]:
    """The relays this device joins, and how each connection is doing."""
    return [relay_info(entry) for entry in core.relays.entries()]


def relay_info(entry: RelayEntry) -> RelayInfo:
    status = entry.status
    return RelayInfo(
        uri=entry.uri,
        source=entry.source,
        state=status.state.value,
        last_error=status.last_error or "",
        since=status.since,
        joins=status.joins,
        invitations_dropped=status.invitations_dropped,
    )


def _folder_problem(album: Album, state: FolderState | None) -> tuple[str, ...]:
    if album.path is None or state is None or state is FolderState.OK:
        return ()
    return (folder_problem(state, album.path),)


def device_name(core: Core, device: DeviceId | None) -> str:
    """The name a device gave itself: in its hello, else sealed in its accept; else its short ID."""
    if device is None:
        return ""
    if device == core.identity.device_id:
        return core.identity.name
    return (
        core.engine.peer_names.get(device)
        or sealed_member_name(core.engine.albums.values(), device)
        or device.short
    )


def _member(core: Core, album: Album, key: bytes, role: str, status: str) -> MemberInfo:
    device = album.device_of(key)
    is_me = key == album.me.public
    return MemberInfo(
        device_id=str(device) if device is not None else "",
        name=device_name(core, device),
        role=role,
        status=status,
        # This device counts as connected: it is the one answering.
        connected=is_me or (device is not None and device in core.engine.peers.connections),
        is_me=is_me,
    )


def _shared_albums(core: Core) -> dict[DeviceId, tuple[str, ...]]:
    """Device -> printed IDs of the live albums it is in (as owner, member or invitee)."""
    shared: dict[DeviceId, list[str]] = {}
    for album in core.engine.albums.values():
        if album.state not in LIVE_STATES:
            continue
        for key in album.member_keys():
            device = album.device_of(key)
            if device is not None:
                shared.setdefault(device, []).append(album.printable_id)
    return {device: tuple(sorted(ids)) for device, ids in shared.items()}


def _peer(core: Core, device: DeviceId, albums: tuple[str, ...]) -> PeerStatus:
    conn = core.engine.peers.connections.get(device)
    dial = core.engine.peers.wanted.get(device)
    return PeerStatus(
        device_id=str(device),
        name=device_name(core, device),
        connected=conn is not None,
        via=conn.peer.via if conn is not None else "",
        address=conn.peer.address if conn is not None else "",
        addresses=tuple(address for address, _ in dial.addresses) if dial is not None else (),
        bytes_in=conn.bytes_in if conn is not None else 0,
        bytes_out=conn.bytes_out if conn is not None else 0,
        last_error=dial.last_error if dial is not None else "",
        albums=albums,
    )


# --- the web UI's grid, history and nearby devices ------------------------------------------------

LOCAL_ID_PREFIX = "local-"
_FILE_KEY_HEX = 2 * (32 + 16)  # author key + file ID
_located: dict[bytes, tuple[object, int, dict[str, Located]]] = {}


@dataclass(frozen=True)
class Located:
    """A file of the album found by its listing ID: where it is, and what its bytes should be."""

    id: str
    path: str
    cache_key: bytes  # content hash (or a stat fingerprint) naming its thumbnail
    on_disk: bool  # the folder holds exactly this version
    size: int
    mtime_ns: int


def published_file_id(key: tuple[bytes, bytes]) -> str:
    """A published file's ID: its author key and file ID in hex (stable across renames)."""
    return (key[0] + key[1]).hex()


def local_file_id(path: str) -> str:
    """An unpublished local file's ID: a digest of its path (the path itself never travels)."""
    return LOCAL_ID_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:32]


def local_cache_key(row: LocalFile) -> bytes:
    """What names a local file's thumbnail: its content hash, else its size, time and inode."""
    if row.content_hash is not None:
        return row.content_hash
    return hashlib.sha256(f"{row.path}\0{row.size}\0{row.mtime_ns}\0{row.inode}".encode()).digest()


def cover_id(album: Album) -> str | None:
    """The owner's chosen cover as a file ID, or None (no cover, or its key is not here)."""
    try:
        cover = album.membership.cover(album.keys)
    except VerificationError:
        return None
    return cover.hex() if cover and len(cover) * 2 == _FILE_KEY_HEX else None


def locate(album: Album, file_id: str) -> Located | None:
    """The file the files listing calls `file_id`, or None. Indexed once per view (10,000-photo
    albums ask this for every thumbnail)."""
    if len(file_id) > 2 * _FILE_KEY_HEX:
        return None
    cached = _located.get(album.album_id)
    if cached is None or cached[0] is not album.view or cached[1] != len(album.local):
        cached = (album.view, len(album.local), _index_files(album))
        _located[album.album_id] = cached
    return cached[2].get(file_id)


def _index_files(album: Album) -> dict[str, Located]:
    found: dict[str, Located] = {}
    published = set()
    for file in album.view.files if album.view is not None else ():
        published.add(file.path)
        row = album.local.get(file.path)
        here = row is not None and row.entry_hash == file.entry_hash
        fid = published_file_id(file.key)
        found[fid] = Located(
            id=fid,
            path=file.path,
            cache_key=file.content_hash,
            on_disk=here,
            size=row.size if row is not None and here else file.size,
            mtime_ns=row.mtime_ns if row is not None and here else file.mtime_ns,
        )
    for path, row in album.local.items():
        if row.state == "local_only" and path not in published:
            fid = local_file_id(path)
            found[fid] = Located(
                id=fid,
                path=path,
                cache_key=local_cache_key(row),
                on_disk=True,
                size=row.size,
                mtime_ns=row.mtime_ns,
            )
    return found


def on_disk(album: Album) -> list[Located]:
    """Every file of the album whose listed version is in the folder (thumbnails can be made)."""
    if album.view is None and not album.local:
        return []
    locate(album, "")  # refresh the index
    return [f for f in _located[album.album_id][2].values() if f.on_disk]


def history(core: Core, album: Album) -> list[HistoryEntry]:
    """The album's verified membership log in words, oldest first."""
    found = []
    owner = device_name(core, album.device_of(album.membership.owner))
    for envelope in album.log.envelopes():
        entry = decode_entry(envelope).entry
        kind, actor, subject, text = _history_words(core, album, entry.body, owner)
        found.append(
            HistoryEntry(
                seq=entry.seq, at=entry.at, kind=kind, actor=actor, subject=subject, text=text
            )
        )
    return found


def _history_words(core: Core, album: Album, body: object, owner: str) -> tuple[str, str, str, str]:
    """(kind, actor, subject, sentence) for one membership entry."""

    def name(key: bytes) -> str:
        return device_name(core, album.device_of(key))

    if isinstance(body, Genesis):
        return "created", owner, "", f"{owner} created the album"
    if isinstance(body, Invite):
        who = name(body.member)
        return "invited", owner, who, f"{owner} invited {who} as {body.role.label}"
    if isinstance(body, RoleChange):
        who = name(body.member)
        return "role", owner, who, f"{owner} made {who} {body.role.label}"
    if isinstance(body, Remove):
        who = name(body.member)
        kept = " (keeping their photos)" if body.keep_photos else ""
        return "removed", owner, who, f"{owner} removed {who}{kept}"
    if isinstance(body, Record):
        statement = body.statement.statement
        who = name(statement.member)
        words = {"accept": "accepted the invite", "decline": "declined the invite"}
        words["leave"] = "left the album" + (
            " (the owner kept their photos)" if body.keep_photos else ""
        )
        kind = {"accept": "accepted", "decline": "declined", "leave": "left"}[statement.kind.value]
        return kind, who, who, f"{who} {words[statement.kind.value]}"
    if isinstance(body, Rename):
        return "renamed", owner, "", f"{owner} renamed the album"
    if isinstance(body, SetCover):
        return "cover", owner, "", f"{owner} set the album cover"
    if isinstance(body, DeleteAlbum):
        return "deleted", owner, "", f"{owner} deleted the album for everyone"
    return "rotated", owner, "", f"{owner} renewed the album key"


def nearby(core: Core) -> list[NearbyInfo]:
    """Devices announced on the LAN (unverified until a handshake), by name, then ID."""
    me = str(core.identity.device_id)
    seen = {d.device_id: d for d in core.discovery.nearby()} if core.discovery else {}
    ids = set(seen) | {str(d) for d in core.engine.nearby}
    ids.discard(me)
    found = []
    for text in ids:
        device = DeviceId.parse(text)
        announced = seen.get(text)
        found.append(
            NearbyInfo(
                device_id=text,
                name=device_name(core, device),
                addresses=tuple(
                    tcp_address(h, p) for h, p in (announced.addresses if announced else ())
                ),
                last_seen=announced.last_seen if announced else None,
                connected=device in core.engine.peers.connections,
            )
        )
    return sorted(found, key=lambda n: (n.name.casefold(), n.device_id))
