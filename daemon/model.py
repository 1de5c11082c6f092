"""What the daemon reports about itself: plain frozen dataclasses the web UI and CLI render.

`webui/serialize.py` turns these into JSON explicitly; nothing here knows HTTP or JSON.
IDs are strings in their printed forms (device IDs in Syncthing's format, album IDs in base32).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Progress:
    """What is left to download, and how fast it is coming."""

    files_to_go: int = 0
    bytes_to_go: int = 0
    rate: float = 0.0  # bytes per second over the last few seconds
    eta: float | None = None  # seconds
    waiting_for_peers: bool = False  # joined, but no member has told us what the album holds yet


@dataclass(frozen=True, kw_only=True)
class AlbumSummary:
    album_id: str
    name: str
    path: str | None
    role: str  # owner | editor | viewer | "" (no longer a member)
    state: str  # active | invited | joining | left | removed | declined | deleted
    folder_state: str  # ok | folder_missing | marker_missing | wrong_album | none
    owner_device: str
    owner_name: str
    members: int
    files: int
    bytes: int
    local_only: int  # files in the folder that are not published (viewer, or refused names)
    progress: Progress = field(default_factory=Progress)
    fork: bool = False
    fork_hashes: tuple[str, ...] = ()  # hex hashes of the two entries the owner signed for one seq
    problems: tuple[str, ...] = ()
    cover: str | None = None  # the ID (as in the files listing) of the owner's chosen cover


@dataclass(frozen=True, kw_only=True)
class MemberInfo:
    device_id: str
    name: str
    role: str
    status: str  # owner | invited | active | declined | left | removed
    connected: bool
    is_me: bool


@dataclass(frozen=True, kw_only=True)
class FileInfo:
    id: str  # how the thumbnail and original endpoints name this file (never a path)
    path: str
    size: int
    added_by_device: str
    added_by_name: str
    captured_at: int | None  # as the author published it
    captured: int | None  # the capture time the grid orders by: published, else EXIF, else None
    mtime_ns: int
    local: str  # synced | downloading | missing | local_only


@dataclass(frozen=True, kw_only=True)
class InviteOut:
    invite_id: str
    album_id: str
    album_name: str
    role: str
    message: str
    to_device: str | None
    expires_at: int
    state: str  # open | redeemed | cancelled | expired


@dataclass(frozen=True, kw_only=True)
class InviteIn:
    album_id: str
    album_name: str
    owner_device: str
    owner_name: str
    role: str
    message: str
    state: str  # pending | accepted | declined


@dataclass(frozen=True, kw_only=True)
class PeerStatus:
    device_id: str
    name: str
    connected: bool
    via: str  # lan | static | relay | incoming | ""
    address: str
    addresses: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    last_error: str
    albums: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TrashEntry:
    path: str
    trashed_at: float
    trash_path: str


@dataclass(frozen=True, kw_only=True)
class Activity:
    at: int
    album_id: str | None
    kind: str
    text: str


@dataclass(frozen=True, kw_only=True)
class RelayInfo:
    uri: str  # relay://HOST:PORT/?id=RELAY-ID, never with its token
    source: str  # setting (saved, removable) | flag (this run's --relay)
    state: str  # stopped | connecting | joined | failed
    last_error: str
    since: float
    joins: int
    invitations_dropped: int


@dataclass(frozen=True, kw_only=True)
class StatusReport:
    device_id: str
    device_name: str
    version: str
    uptime: float
    listen: str
    albums: tuple[AlbumSummary, ...]
    peers: tuple[PeerStatus, ...]
    relays: tuple[RelayInfo, ...]
    errors: dict[str, int]


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    """One verified change of an album's membership log, in words: who did what to whom, when."""

    seq: int
    at: int  # the owner's clock when it signed the entry (informational)
    kind: str  # created | invited | role | removed | accepted | declined | left | renamed | cover
    #            | deleted | rotated
    actor: str  # device name of who made the change
    subject: str  # device name it concerns, or ""
    text: str


@dataclass(frozen=True, kw_only=True)
class NearbyInfo:
    """A device announced on the LAN (not yet verified: the handshake decides who it is)."""

    device_id: str
    name: str  # its name if it ever connected to us, else its short ID
    addresses: tuple[str, ...]
    last_seen: float | None
    connected: bool
