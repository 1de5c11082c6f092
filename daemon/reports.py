"""Read-only reports on a running Core: builds the `daemon.model` dataclasses the API and CLI show.

Nothing here changes state. Reports read the engine's memory (albums, connections, queues) and the
store's invite and activity rows; folder checks run off the event loop (a hung mount must not stall
sync). IDs come out in their printed forms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from daemon.album import Album
from daemon.engine import fork_text
from daemon.model import (
    Activity,
    AlbumSummary,
    FileInfo,
    InviteIn,
    InviteOut,
    MemberInfo,
    PeerStatus,
    Progress,
    RelayInfo,
    StatusReport,
    TrashEntry,
)
from protocol.ids import AlbumId, DeviceId
from protocol.membership import Status
from protocol.rights import Role

if TYPE_CHECKING:
    from daemon.core import Core

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
        problems=tuple(album.problems) + ((fork_text(fork.seq, fork.hashes),) if fork else ()),
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
    """One page of the album's files (by path), then the local files that are not published."""
    return list(_all_files(core, album))[offset : offset + limit]


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
    return [
        RelayInfo(
            uri=entry.uri,
            source=entry.source,
            state=entry.status.state.value,
            last_error=entry.status.last_error or "",
            since=entry.status.since,
            joins=entry.status.joins,
            invitations_dropped=entry.status.invitations_dropped,
        )
        for entry in core.relays.entries()
    ]


def device_name(core: Core, device: DeviceId | None) -> str:
    """The name a device gave itself (this device's own name for itself), else its short ID."""
    if device is None:
        return ""
    if device == core.identity.device_id:
        return core.identity.name
    return core.engine.peer_names.get(device) or device.short


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


def _all_files(core: Core, album: Album) -> Iterable[FileInfo]:
    view_files = album.view.files if album.view is not None else ()
    downloading = {p.download.file.entry_hash for p in core.transfers.queue.values() if p.active}
    published = set()
    for file in view_files:
        published.add(file.path)
        device = album.device_of(file.author)
        row = album.local.get(file.path)
        if row is not None and row.entry_hash == file.entry_hash:
            local = "synced"
        elif file.entry_hash in downloading:
            local = "downloading"
        else:
            local = "missing"
        yield FileInfo(
            path=file.path,
            size=file.size,
            added_by_device=str(device) if device is not None else "",
            added_by_name=device_name(core, device),
            captured_at=file.captured_at,
            mtime_ns=file.mtime_ns,
            local=local,
        )
    me = core.identity.device_id
    for path in sorted(album.local):
        row = album.local[path]
        if row.state == "local_only" and path not in published:
            yield FileInfo(
                path=path,
                size=row.size,
                added_by_device=str(me),
                added_by_name=core.identity.name,
                captured_at=None,
                mtime_ns=row.mtime_ns,
                local="local_only",
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
