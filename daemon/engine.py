"""The sync engine: albums, their logs and manifests, gossip with peers, and the folder.

The engine owns every `Album` and is the `Policy` of the connection layer. Message handlers verify
through protocol/ before anything is stored; the store is written before anything is sent on, so
a crash never forwards what this device has not kept. Folder changes go through `daemon/files.py`
only (via `daemon/transfers.py` and `daemon/publisher.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.album import Album, LocalFile, sealed_member_name
from daemon.config import Config
from daemon.connection import Connection, ConnectionClosedError, PeerInfo
from daemon.crashpoints import crashpoint
from daemon.errors import AlbumNotFoundError, ConfigError, DaemonError, NotPermittedError
from daemon.files import AlbumFolder, FolderState
from daemon.identity import Identity
from daemon.peers import PeerManager, tcp_address
from daemon.refresher import Refresher
from daemon.store import Store
from protocol import membership_entries, statements
from protocol.album_view import LiveFile
from protocol.errors import DecodeError, InviteCodeError, ProtocolError, VerificationError
from protocol.frames import MAX_BATCH_PAYLOAD
from protocol.ids import AlbumId, DeviceId
from protocol.invite import MAX_RELAYS as MAX_INVITE_RELAYS
from protocol.invite import (
    InviteCode,
    encode_invite,
    new_invite_code,
    parse_invite,
    redeem_proof,
    verify_redeem_proof,
)
from protocol.manifest import SignedEntry, entry_hash
from protocol.manifest_state import Arrival, ManifestState
from protocol.membership import Status
from protocol.membership_builders import (
    build_accept,
    build_cover,
    build_decline,
    build_delete,
    build_genesis,
    build_invite,
    build_leave,
    build_record,
    build_remove,
    build_rename,
    build_role,
)
from protocol.membership_log import AddStatus, MembershipLog
from protocol.messages import (
    MAX_BATCH_ITEMS,
    ChunkData,
    ChunkMissing,
    ChunkRequest,
    Close,
    ErrorCode,
    Head,
    Hello,
    InviteOffer,
    InviteRedeem,
    LogEntries,
    LogRequest,
    ManifestEntries,
    ManifestHeads,
    ManifestRequest,
    Message,
    Statements,
)
from protocol.rights import Role

log = logging.getLogger("albumsync.engine")

INVITE_LIFETIME = 7 * 24 * 3600
UNRELATED_GRACE = 10.0  # seconds a known but unrelated device may stay connected
MAX_ALBUMS = 1000


@dataclass
class Redemption:
    """An invite code this device is redeeming: where to put the album once the owner answers."""

    code: InviteCode
    path: Path
    owner: DeviceId


@dataclass
class Offer:
    """An invite entry received from an owner, waiting for the log that goes with it."""

    owner: DeviceId
    entry: bytes


@dataclass
class Engine:
    config: Config
    store: Store
    identity: Identity
    albums: dict[bytes, Album] = field(default_factory=dict)
    redemptions: dict[bytes, Redemption] = field(default_factory=dict)  # album_id ->
    offers: dict[bytes, Offer] = field(default_factory=dict)  # album_id ->
    peer_names: dict[DeviceId, str] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    _received: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    _flushing: dict[tuple[bytes, bytes], asyncio.TimerHandle] = field(default_factory=dict)
    _flush_tasks: set[asyncio.Future[None]] = field(default_factory=set)
    _open_invite_targets: set[str | None] = field(default_factory=set)
    nearby: set[DeviceId] = field(default_factory=set)
    relay_uris: Callable[[], tuple[str, ...]] = field(default=lambda: ())  # set by Core
    _grace_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    peers: PeerManager = field(init=False)
    transfers: object = field(init=False)  # daemon.transfers.Transfers, set in start()
    publisher: object = field(init=False)  # daemon.publisher.Publisher
    refresher: Refresher = field(init=False)

    def __post_init__(self) -> None:
        self.refresher = Refresher(self.refresh_album)
        self.peers = PeerManager(
            identity=self.identity,
            policy=self,
            listen_host=self.config.listen_host,
            listen_port=self.config.listen_port,
        )

    # --- life cycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild every album from the store, re-verifying what it holds."""
        for row in await self.store.albums():
            album = await self._load_album(bytes(row["album_id"]), row["path"], str(row["state"]))
            if album is not None:
                self.albums[album.album_id] = album
        for row in await self.store.peers():
            self.peer_names[DeviceId.parse(row["device_id"])] = str(row["name"] or "")
        for row in await self.store.addresses():
            self.peers.want(DeviceId.parse(row["device_id"]), row["address"], row["source"])
        await self._load_redemptions()

    async def _load_redemptions(self) -> None:
        """Codes pasted before a restart keep waiting for their owner; expired ones are dropped."""
        for row in await self.store.redemptions():
            album_id = bytes(row["album_id"])
            try:
                code = parse_invite(str(row["code"]), _now())
            except InviteCodeError as exc:
                await self.store.delete_redemption(album_id)
                await self.activity(
                    None,
                    "invite",
                    f"An invite code expired before its owner's device answered ({exc.message}); "
                    "ask the owner for a new one",
                )
                continue
            if album_id in self.albums and self.albums[album_id].state == "active":
                await self.store.delete_redemption(album_id)
                continue
            owner = DeviceId(code.owner_id)
            self.redemptions[album_id] = Redemption(code=code, path=Path(row["path"]), owner=owner)

    async def _load_album(self, album_id: bytes, path: str | None, state: str) -> Album | None:
        envelopes = await self.store.membership_envelopes(album_id)
        if not envelopes:
            return None
        mlog = MembershipLog(envelopes[0], album_id=album_id)
        for envelope in envelopes[1:]:
            try:
                mlog.add(envelope)
            except ProtocolError as exc:
                log.warning("album %s: stored log entry refused: %s", AlbumId(album_id), exc)
        for envelope in await self.store.statement_envelopes(album_id):
            try:
                mlog.add_statement(envelope)
            except ProtocolError:
                continue
        manifest = ManifestState(album_id)
        for envelope in await self.store.manifest_envelopes(album_id):
            try:
                manifest.add(envelope)
            except ProtocolError as exc:
                log.warning("album %s: stored manifest entry refused: %s", AlbumId(album_id), exc)
        album = Album(
            album_id=album_id,
            state=state,
            log=mlog,
            manifest=manifest,
            me=self.identity.key,
            path=Path(path) if path else None,
        )
        album.keys.update(await self.store.epoch_keys(album_id))
        await self._store_new_keys(album)
        for row in await self.store.local_files(album_id):
            album.local[row["path"]] = _local_from_row(row)
        album.refresh()
        return album

    # --- Policy for the connection layer --------------------------------------------------------

    def accepts(self, peer: PeerInfo) -> bool:
        """Keep a connection only with album members, invitees, and owners we redeem codes with."""
        if any(album.is_reader(peer.public_key) for album in self._live_albums()):
            return True
        if any(r.owner == peer.device_id for r in self.redemptions.values()):
            return True
        if self._has_open_invites(peer.device_id):
            return True
        # A device this person added, or one seen on the LAN, may be about to offer an invite;
        # connected() drops it after a grace period if it shares nothing and offers nothing.
        return peer.device_id in self.peers.wanted or peer.device_id in self.nearby

    def _shares_something(self, conn: Connection) -> bool:
        peer = conn.peer
        return (
            any(album.is_reader(peer.public_key) for album in self._live_albums())
            or any(r.owner == peer.device_id for r in self.redemptions.values())
            or self._has_open_invites(peer.device_id)
            or any(o.owner == peer.device_id for o in self.offers.values())
        )

    async def _drop_if_unrelated(self, conn: Connection) -> None:
        await asyncio.sleep(UNRELATED_GRACE)
        if not conn.closed and not self._shares_something(conn):
            log.info("closing %s: no shared album and no invite", conn.peer.device_id.short)
            with contextlib.suppress(ConnectionClosedError):
                await conn.send(Close(code=ErrorCode.NO_SHARED_ALBUM, message="no shared album"))
            conn.close()

    async def connected(self, conn: Connection) -> None:
        peer = conn.peer
        self.peer_names[peer.device_id] = peer.name
        now = int(time.time())
        await self.store.put_peer(
            str(peer.device_id), peer.public_key, peer.certificate, peer.name, now
        )
        shared = [a for a in self._live_albums() if a.is_reader(peer.public_key)]
        await conn.send(
            Hello(
                version=1, device_name=self.identity.name, albums=tuple(a.album_id for a in shared)
            )
        )
        for redemption in list(self.redemptions.values()):
            if redemption.owner == peer.device_id:
                proof = redeem_proof(
                    redemption.code.secret, self.identity.device_id.raw, redemption.code.album_id
                )
                await conn.send(InviteRedeem(invite_id=redemption.code.invite_id, proof=proof))
        await self._offer_direct_invites(conn)
        for album in shared:
            await self._start_sync(conn, album)
        if not self._shares_something(conn):
            self._grace_tasks.add(asyncio.ensure_future(self._drop_if_unrelated(conn)))
        self.transfers.peer_connected()  # type: ignore[attr-defined]

    async def disconnected(self, conn: Connection) -> None:
        self.transfers.peer_gone(conn)  # type: ignore[attr-defined]

    async def message(self, conn: Connection, message: Message) -> None:
        handler = _HANDLERS.get(type(message))
        if handler is None:
            return
        try:
            await handler(self, conn, message)
        except (ProtocolError, DaemonError) as exc:
            self._count("refused_input")
            log.info(
                "refused %s from %s: %s", type(message).__name__, conn.peer.device_id.short, exc
            )

    # --- sync with one peer -----------------------------------------------------------------------

    async def _start_sync(self, conn: Connection, album: Album) -> None:
        state = album.membership
        # From one entry back: two devices at the same height with different heads see the fork.
        await conn.send(LogRequest(album=album.album_id, after_seq=max(0, state.head_seq - 1)))
        unrecorded = [s.envelope for held in state.unrecorded.values() for s in held]
        if unrecorded:
            await conn.send(
                Statements(album=album.album_id, statements=tuple(unrecorded[:MAX_BATCH_ITEMS]))
            )
        await self._send_heads(conn, album)

    async def _send_heads(self, conn: Connection, album: Album) -> None:
        heads = tuple(
            Head(author=author, seq=album.manifest.head(author)[0])
            for author in album.manifest.authors()
            if album.manifest.head(author)[0] > 0
        )
        for start in range(0, max(len(heads), 1), MAX_BATCH_ITEMS):
            await conn.send(
                ManifestHeads(album=album.album_id, heads=heads[start : start + MAX_BATCH_ITEMS])
            )

    async def on_hello(self, conn: Connection, message: Hello) -> None:
        self.peer_names[conn.peer.device_id] = message.device_name

    async def on_log_request(self, conn: Connection, message: LogRequest) -> None:
        album = self._album_for_peer(message.album, conn)
        envelopes = album.log.envelopes(message.after_seq + 1)
        for batch in _batches(envelopes):
            await conn.send(LogEntries(album=album.album_id, entries=batch))

    async def on_log_entries(self, conn: Connection, message: LogEntries) -> None:
        album = self.albums.get(message.album)
        if album is None:
            await self._bootstrap_from_offer(conn, message)
            return
        if (
            not album.is_reader(conn.peer.public_key)
            and conn.peer.public_key != album.membership.owner
        ):
            return
        applied = await self._add_log_entries(album, message.entries)
        if applied:
            await self._after_membership_change(album, applied, source=conn)

    async def _add_log_entries(self, album: Album, envelopes: Iterable[bytes]) -> list[bytes]:
        applied: list[bytes] = []
        for envelope in envelopes:
            try:
                added = album.log.add(envelope)
            except (VerificationError, DecodeError) as exc:
                self._count("log_entry_refused")
                log.info("album %s: log entry refused: %s", album.printable_id, exc)
                continue
            if added.status is AddStatus.FORKED:
                await self._store_log_entry(album, envelope)
                await self._fork_alarm(album)
            for entry in added.applied:
                await self._store_log_entry(album, entry)
                applied.append(entry)
        return applied

    async def _fork_alarm(self, album: Album) -> None:
        """Tell the person, and hand both signed entries to every reader: they are the proof."""
        fork = album.membership.fork
        if fork is None:
            return
        log.error("album %s: FORK in the membership log at seq %d", album.printable_id, fork.seq)
        await self.activity(album, "alarm", fork_text(fork.seq, fork.hashes))
        await self._forward(album, LogEntries, list(fork.envelopes), exclude=None)

    async def _store_log_entry(self, album: Album, envelope: bytes) -> None:
        signed = membership_entries.decode_entry(envelope)
        await self.store.add_membership_entry(
            album.album_id, signed.entry.seq, signed.hash, envelope
        )

    async def _after_membership_change(
        self, album: Album, applied: list[bytes], source: Connection | None
    ) -> None:
        await self._store_new_keys(album)
        await self._update_album_state(album)
        await self._forward(album, LogEntries, applied, exclude=source)
        if album.membership.owner == self.identity.key.public:
            await self._record_statements(album)
        await self.refresh_album(album)

    async def _update_album_state(self, album: Album) -> None:
        state = album.membership
        status = state.status(self.identity.key.public)
        new = album.state
        if state.deleted:
            new = "deleted"
        elif status is Status.REMOVED:
            new = "removed"
        elif status is Status.LEFT:
            new = "left"
        elif status is Status.DECLINED:
            new = "declined"
        if new != album.state:
            album.state = new
            await self.store.set_album_state(album.album_id, new)
            self.publisher.albums_changed()  # type: ignore[attr-defined]
            await self.activity(album, "membership", f"This device is now {new} in {album.name()}")

    async def on_statements(self, conn: Connection, message: Statements) -> None:
        album = self._album_for_peer(message.album, conn)
        fresh: list[bytes] = []
        for envelope in message.statements:
            try:
                status = album.log.add_statement(envelope)
            except (VerificationError, DecodeError) as exc:
                self._count("statement_refused")
                log.info("album %s: statement refused: %s", album.printable_id, exc)
                continue
            if status in (AddStatus.APPLIED, AddStatus.BUFFERED):
                signed = statements.decode_statement(envelope)
                await self.store.add_statement(album.album_id, signed.hash, envelope)
                fresh.append(envelope)
        if fresh:
            await self._forward(album, Statements, fresh, exclude=conn)
            if album.membership.owner == self.identity.key.public:
                await self._record_statements(album)
            await self.refresh_album(album)

    async def _record_statements(self, album: Album) -> None:
        """The owner writes members' accept/decline/leave into the log (with new epochs for losses)."""
        written: list[bytes] = []
        for envelope in album.membership.to_record():
            try:
                entry, _ = build_record(
                    album.membership,
                    self.identity.key,
                    statement=envelope,
                    now=_now(),
                    rng=os.urandom,
                )
            except ProtocolError as exc:
                log.warning("album %s: cannot record a statement: %s", album.printable_id, exc)
                continue
            written += await self._append_own_entry(album, entry)
        if written:
            await self._store_new_keys(album)
            await self._forward(album, LogEntries, written, exclude=None)

    async def _append_own_entry(self, album: Album, envelope: bytes) -> list[bytes]:
        added = album.log.add(envelope)
        crashpoint("own_entry.in_memory")
        for entry in added.applied:
            await self._store_log_entry(album, entry)
        crashpoint("own_entry.stored")
        return list(added.applied)

    async def on_manifest_heads(self, conn: Connection, message: ManifestHeads) -> None:
        album = self._album_for_peer(message.album, conn)
        album.heard_from_peer = True
        for head in message.heads:
            have = album.manifest.head(head.author)[0]
            if head.seq > have:
                await conn.send(
                    ManifestRequest(
                        album=album.album_id,
                        author=head.author,
                        after_seq=have,
                        limit=MAX_BATCH_ITEMS,
                    )
                )

    async def on_manifest_request(self, conn: Connection, message: ManifestRequest) -> None:
        album = self._album_for_peer(message.album, conn)
        wanted = album.manifest.entries_after(message.author, message.after_seq, message.limit)
        for batch in _batches(s.envelope for s in wanted):
            await conn.send(ManifestEntries(album=album.album_id, entries=batch))

    async def on_manifest_entries(self, conn: Connection, message: ManifestEntries) -> None:
        album = self._album_for_peer(message.album, conn)
        fresh = await self.add_manifest_entries(album, message.entries)
        if fresh:
            await self._forward(album, ManifestEntries, [s.envelope for s in fresh], exclude=conn)
            self.refresher.soon(album)
        # A long history arrives one page per request: ask for the next page of each author this
        # message advanced (an up-to-date peer answers nothing). Sending our own heads instead
        # left a new member at the first 1,000 entries of an author until the next reconnect.
        for author in {s.entry.author for s in fresh}:
            after = album.manifest.head(author)[0]
            request = ManifestRequest(
                album=album.album_id, author=author, after_seq=after, limit=MAX_BATCH_ITEMS
            )
            await conn.send(request)

    async def add_manifest_entries(
        self, album: Album, envelopes: Iterable[bytes]
    ) -> list[SignedEntry]:
        """Verify and store manifest envelopes; returns the entries that were new."""
        rights = album.membership.rights()
        fresh: list[SignedEntry] = []
        rows: list[tuple[bytes, int, bytes, bytes]] = []
        for envelope in envelopes:
            try:
                arrival = album.manifest.add(envelope, rights=rights)
            except (VerificationError, DecodeError) as exc:
                self._count("manifest_entry_refused")
                log.info("album %s: manifest entry refused: %s", album.printable_id, exc)
                continue
            if arrival is Arrival.DUPLICATE:
                continue
            signed = album.manifest.entry(entry_hash(envelope))  # verified once, by add()
            assert signed is not None
            rows.append((signed.entry.author, signed.entry.seq, signed.hash, envelope))
            fresh.append(signed)
        if rows:
            await self.store.add_manifest_entries(album.album_id, rows)
        return fresh

    async def on_chunk_request(self, conn: Connection, message: ChunkRequest) -> None:
        await self.transfers.serve(conn, message)  # type: ignore[attr-defined]

    async def on_chunk_reply(self, conn: Connection, message: ChunkData | ChunkMissing) -> None:
        self.transfers.reply(conn, message)  # type: ignore[attr-defined]

    async def _forward(
        self, album: Album, kind: type[Message], envelopes: list[bytes], exclude: Connection | None
    ) -> None:
        """Gossip new entries or statements to every other connected reader of the album."""
        if not envelopes:
            return
        for conn in list(self.peers.connections.values()):
            if conn is exclude or (
                not album.is_reader(conn.peer.public_key)
                and not self._is_removed_member(album, conn)
            ):
                continue
            for batch in _batches(envelopes):
                try:
                    if kind is Statements:
                        await conn.send(Statements(album=album.album_id, statements=batch))
                    elif kind is LogEntries:
                        await conn.send(LogEntries(album=album.album_id, entries=batch))
                    else:
                        if not album.is_reader(conn.peer.public_key):
                            break
                        await conn.send(ManifestEntries(album=album.album_id, entries=batch))
                except ConnectionClosedError:
                    break

    def _is_removed_member(self, album: Album, conn: Connection) -> bool:
        """A device that just lost access still gets the log entry that tells it so."""
        return album.membership.status(conn.peer.public_key) in (
            Status.REMOVED,
            Status.LEFT,
            Status.DECLINED,
        )

    async def broadcast_manifest(self, album: Album, envelopes: list[bytes]) -> None:
        await self._forward(album, ManifestEntries, envelopes, exclude=None)

    # --- invites --------------------------------------------------------------------------------

    def _has_open_invites(self, device_id: DeviceId) -> bool:
        return bool(self._open_invites) and (
            None in self._open_invites or str(device_id) in self._open_invites
        )

    @property
    def _open_invites(self) -> set[str | None]:
        return self._open_invite_targets

    async def refresh_open_invites(self) -> None:
        now = _now()
        targets: set[str | None] = set()
        for row in await self.store.invites_out():
            if row["state"] == "open" and row["expires_at"] > now:
                targets.add(row["to_device"])
        self._open_invite_targets = targets

    async def create_invite(
        self,
        album_id: bytes,
        *,
        role: Role,
        message: str,
        to_device: DeviceId | None,
        lifetime: int = INVITE_LIFETIME,
    ) -> tuple[bytes, str | None]:
        """An invite by code (returns the code) or directly to a device (returns None as the code)."""
        album = self.owned_album(album_id)
        if role not in (Role.VIEWER, Role.EDITOR):
            raise ConfigError("an invite's role is viewer or editor")
        code = new_invite_code(
            album_id=album_id,
            owner_id=self.identity.device_id.raw,
            role=role,
            expires_at=_now() + lifetime,
            addresses=tuple(self.advertised_addresses()),
            relays=self.relay_uris()[:MAX_INVITE_RELAYS],
            rng=os.urandom,
        )
        crashpoint("invite.created")
        await self.store.put_invite_out(
            {
                "invite_id": code.invite_id,
                "album_id": album_id,
                "secret": code.secret,
                "role": role.label,
                "message": message,
                "to_device": str(to_device) if to_device else None,
                "expires_at": code.expires_at,
                "state": "open",
                "redeemed_by": None,
                "created_at": _now(),
            }
        )
        crashpoint("invite.stored")
        await self.refresh_open_invites()
        await self.activity(
            album,
            "invite",
            f"Invited {'a device by code' if to_device is None else self._name(to_device)} as {role.label}",
        )
        if to_device is not None:
            conn = self.peers.connections.get(to_device)
            if conn is not None:
                await self._offer_direct_invites(conn)
            else:
                self.peers.dial_now()
            return code.invite_id, None
        return code.invite_id, encode_invite(code)

    def advertised_addresses(self) -> list[str]:
        port = self.peers.bound_port or self.config.listen_port
        host = self.config.listen_host
        if host not in ("0.0.0.0", "::", ""):  # noqa: S104
            return [tcp_address(host, port)]
        from zeroconf import InterfaceChoice, IPVersion  # noqa: PLC0415

        from daemon.discovery import local_addresses  # noqa: PLC0415

        found = [
            tcp_address(a, port) for a in local_addresses(InterfaceChoice.All, IPVersion.V4Only)
        ]
        return [*found[:7], f"tcp://127.0.0.1:{port}"]

    async def _offer_direct_invites(self, conn: Connection) -> None:
        peer = conn.peer
        for row in await self.store.invites_out():
            if (
                row["state"] != "open"
                or row["to_device"] != str(peer.device_id)
                or row["expires_at"] <= _now()
            ):
                continue
            album = self.albums.get(bytes(row["album_id"]))
            if album is None:
                continue
            await self._send_invite(conn, album, Role.parse(row["role"]), row["message"])
            await self.store.set_invite_out_state(
                bytes(row["invite_id"]), "redeemed", str(peer.device_id)
            )
        await self.refresh_open_invites()

    async def on_invite_redeem(self, conn: Connection, message: InviteRedeem) -> None:
        row = next(
            (
                r
                for r in await self.store.invites_out()
                if bytes(r["invite_id"]) == message.invite_id
            ),
            None,
        )
        again = (
            row is not None
            and row["state"] == "redeemed"
            and row["redeemed_by"] == str(conn.peer.device_id)
        )
        if again and row is not None:
            # The same device redeeming twice (a reconnect, or a retry): answer with the offer again.
            album = self.owned_album(bytes(row["album_id"]))
            verify_redeem_proof(
                bytes(row["secret"]), conn.peer.device_id.raw, album.album_id, message.proof
            )
            await self._send_invite(conn, album, Role.parse(row["role"]), row["message"])
            return
        if row is None or row["state"] != "open" or row["expires_at"] <= _now():
            await conn.send(
                Close(
                    code=ErrorCode.INVITE_INVALID,
                    message="this invite is unknown, used, cancelled or expired",
                )
            )
            conn.close()
            return
        album = self.owned_album(bytes(row["album_id"]))
        verify_redeem_proof(
            bytes(row["secret"]), conn.peer.device_id.raw, album.album_id, message.proof
        )
        await self.store.set_invite_out_state(
            message.invite_id, "redeemed", str(conn.peer.device_id)
        )
        crashpoint("invite.redeemed")
        await self.refresh_open_invites()
        await self._send_invite(conn, album, Role.parse(row["role"]), row["message"])

    async def _send_invite(self, conn: Connection, album: Album, role: Role, message: str) -> None:
        peer = conn.peer
        status = album.membership.status(peer.public_key)
        if status not in (Status.INVITED, Status.ACTIVE):
            entry, _ = build_invite(
                album.membership,
                self.identity.key,
                member=peer.public_key,
                member_cert=peer.certificate,
                role=role,
                message=message,
                now=_now(),
                rng=os.urandom,
            )
            written = await self._append_own_entry(album, entry)
            await self._forward(album, LogEntries, written, exclude=conn)
            crashpoint("invite.entry_stored")
            await self.activity(
                album, "invite", f"{peer.name} was invited to {album.name()} as {role.label}"
            )
        invite = album.membership.members[peer.public_key].invite
        envelope = next(
            e for e in album.log.envelopes() if membership_entries.decode_entry(e).hash == invite
        )
        await conn.send(InviteOffer(album=album.album_id, entry=envelope))
        crashpoint("invite.offer_sent")
        for batch in _batches(album.log.envelopes()):
            await conn.send(LogEntries(album=album.album_id, entries=batch))
        await self._send_heads(conn, album)

    async def on_invite_offer(self, conn: Connection, message: InviteOffer) -> None:
        if message.album in self.albums and self.albums[message.album].state not in (
            "left",
            "removed",
            "declined",
        ):
            return
        self.offers[message.album] = Offer(owner=conn.peer.device_id, entry=message.entry)

    async def _bootstrap_from_offer(self, conn: Connection, message: LogEntries) -> None:
        """The first log batch of an album we were invited to: verify from genesis, then keep it."""
        offer = self.offers.get(message.album)
        if offer is None or offer.owner != conn.peer.device_id or not message.entries:
            return
        mlog = MembershipLog(message.entries[0], album_id=message.album)
        for envelope in message.entries[1:]:
            mlog.add(envelope)
        if mlog.state.status(self.identity.key.public) is not Status.INVITED:
            return
        album = Album(
            album_id=message.album,
            state="invited",
            log=mlog,
            manifest=ManifestState(message.album),
            me=self.identity.key,
        )
        async with self.store.transaction():
            await self.store.put_album(album.album_id, None, "invited", _now())
            for envelope in mlog.envelopes():
                await self._store_log_entry(album, envelope)
        await self._store_new_keys(album)
        self.albums[album.album_id] = album
        del self.offers[message.album]
        member = mlog.state.members[self.identity.key.public]
        text = mlog.state.invite_message(self.identity.key.public, self.identity.key) or ""
        await self.store.put_invite_in(
            {
                "album_id": album.album_id,
                "owner_device": str(conn.peer.device_id),
                "owner_name": conn.peer.name,
                "album_name": album.name(),
                "role": member.role.label,
                "message": text,
                "state": "pending",
                "received_at": _now(),
            }
        )
        redemption = self.redemptions.pop(album.album_id, None)
        if redemption is not None:
            await self.store.delete_redemption(album.album_id)
            await self.accept_invite(album.album_id, redemption.path)
        else:
            await self.activity(
                album,
                "invite",
                f"{conn.peer.name} invites this device to {album.name()} as {member.role.label}",
            )

    async def redeem_code(self, text: str, path: Path) -> bytes:
        """Start redeeming an invite code: connect to its owner; the album arrives when it answers."""
        code = parse_invite(text, _now())
        if code.album_id in self.albums and self.albums[code.album_id].state in ("active",):
            raise ConfigError("this device is already a member of that album")
        target = _check_writable(_check_album_path(path, self.albums))
        owner = DeviceId(code.owner_id)
        self.redemptions[code.album_id] = Redemption(code=code, path=target, owner=owner)
        await self.store.put_redemption(code.album_id, encode_invite(code), str(target), _now())
        for address in code.addresses:
            self.peers.want(owner, address, "invite")
            await self.store.put_address(str(owner), address, "invite", _now())
        for relay in code.relays:
            self.peers.want(owner, relay, "relay")
            await self.store.put_address(str(owner), relay, "relay", _now())
        conn = self.peers.connections.get(owner)
        if conn is not None:
            proof = redeem_proof(code.secret, self.identity.device_id.raw, code.album_id)
            await conn.send(InviteRedeem(invite_id=code.invite_id, proof=proof))
        self.peers.dial_now()
        return code.album_id

    async def accept_invite(self, album_id: bytes, path: Path) -> Album:
        album = self.albums.get(album_id)
        if album is None or album.state != "invited":
            raise AlbumNotFoundError("no pending invite for that album")
        target = _check_album_path(path, self.albums)
        _prepare_folder(target, album_id)
        envelope = build_accept(
            album.membership, self.identity.key, now=_now(), name=self.identity.name, rng=os.urandom
        )
        album.log.add_statement(envelope)
        await self.store.add_statement(
            album_id, statements.decode_statement(envelope).hash, envelope
        )
        album.path = target
        album.state = "active"
        await self.store.set_album_state(album_id, "active", str(target))
        await self.store.put_invite_in({**await self._invite_in_row(album_id), "state": "accepted"})
        await self._forward(album, Statements, [envelope], exclude=None)
        await self.activity(album, "membership", f"Joined {album.name()} in {target}")
        for conn in list(self.peers.connections.values()):
            if album.is_reader(conn.peer.public_key):
                await self._send_heads(conn, album)
        await self.refresh_album(album)
        self.publisher.schedule(album)  # type: ignore[attr-defined]
        self.publisher.albums_changed()  # type: ignore[attr-defined]
        return album

    async def decline_invite(self, album_id: bytes) -> None:
        album = self.albums.get(album_id)
        if album is None or album.state != "invited":
            raise AlbumNotFoundError("no pending invite for that album")
        envelope = build_decline(album.membership, self.identity.key, now=_now())
        album.log.add_statement(envelope)
        await self.store.add_statement(
            album_id, statements.decode_statement(envelope).hash, envelope
        )
        album.state = "declined"
        await self.store.set_album_state(album_id, "declined")
        await self.store.put_invite_in({**await self._invite_in_row(album_id), "state": "declined"})
        await self._forward(album, Statements, [envelope], exclude=None)

    async def _invite_in_row(self, album_id: bytes) -> dict[str, object]:
        row = next(
            (r for r in await self.store.invites_in() if bytes(r["album_id"]) == album_id), None
        )
        return dict(row) if row is not None else {}

    async def cancel_invite(self, invite_id: bytes) -> None:
        row = next(
            (r for r in await self.store.invites_out() if bytes(r["invite_id"]) == invite_id), None
        )
        if row is None:
            raise AlbumNotFoundError("no such invite")
        album = self.owned_album(bytes(row["album_id"]))
        if row["state"] == "open":
            await self.store.set_invite_out_state(invite_id, "cancelled")
            await self.refresh_open_invites()
            return
        # A redeemed direct invite is a pending member: cancelling it removes the member.
        device = row["redeemed_by"]
        key = next((k for k in album.membership.members if str(album.device_of(k)) == device), None)
        if key is not None and album.membership.status(key) is Status.INVITED:
            await self.remove_member(album.album_id, DeviceId.parse(device), keep_photos=False)
        await self.store.set_invite_out_state(invite_id, "cancelled")

    # --- owner and member actions ---------------------------------------------------------------

    def album(self, album_id: bytes) -> Album:
        album = self.albums.get(album_id)
        if album is None:
            raise AlbumNotFoundError(f"no album {AlbumId(album_id)} on this device")
        return album

    def owned_album(self, album_id: bytes) -> Album:
        album = self.album(album_id)
        if album.membership.owner != self.identity.key.public:
            raise NotPermittedError("only the album's owner can do this")
        if album.state != "active":
            raise NotPermittedError(f"the album is {album.state}")
        if album.membership.fork is not None:
            raise NotPermittedError("the album's history is forked; changes are frozen")
        return album

    def member_key(self, album: Album, device: DeviceId) -> bytes:
        for key in album.membership.members:
            if album.device_of(key) == device:
                return key
        raise AlbumNotFoundError(f"{device.short} is not a member of this album")

    async def create_album(self, path: Path, name: str) -> Album:
        if len(self.albums) >= MAX_ALBUMS:
            raise ConfigError(f"this device already has {MAX_ALBUMS} albums")
        target = _check_album_path(path, self.albums)
        if not target.is_dir():
            raise ConfigError(f"{target} is not a folder")
        envelope, state = build_genesis(
            self.identity.key,
            owner_cert=self.identity.certificate,
            name=name.strip(),
            now=_now(),
            rng=os.urandom,
        )
        album = Album(
            album_id=state.album_id,
            state="active",
            log=MembershipLog(envelope),
            manifest=ManifestState(state.album_id),
            me=self.identity.key,
            path=target,
        )
        _prepare_folder(target, album.album_id)
        async with self.store.transaction():
            await self.store.put_album(album.album_id, str(target), "active", _now())
            await self._store_log_entry(album, envelope)
        await self._store_new_keys(album)
        self.albums[album.album_id] = album
        await self.activity(album, "album", f"Created {album.name()} from {target}")
        album.refresh()
        self.publisher.schedule(album)  # type: ignore[attr-defined]
        self.publisher.albums_changed()  # type: ignore[attr-defined]
        return album

    async def set_role(self, album_id: bytes, device: DeviceId, role: Role) -> None:
        album = self.owned_album(album_id)
        key = self.member_key(album, device)
        if role not in (Role.VIEWER, Role.EDITOR):
            raise ConfigError("a member's role is viewer or editor")
        entry, _ = build_role(
            album.membership,
            self.identity.key,
            member=key,
            role=role,
            after_seq=album.manifest.head(key)[0],
            now=_now(),
        )
        await self._owner_change(
            album, entry, f"{self._name(device)} is now {role.label} in {album.name()}"
        )

    async def remove_member(self, album_id: bytes, device: DeviceId, *, keep_photos: bool) -> None:
        album = self.owned_album(album_id)
        key = self.member_key(album, device)
        entry, _ = build_remove(
            album.membership,
            self.identity.key,
            member=key,
            after_seq=album.manifest.head(key)[0],
            keep_photos=keep_photos,
            now=_now(),
            rng=os.urandom,
        )
        crashpoint("rotation.key_made")
        await self._owner_change(
            album, entry, f"{self._name(device)} was removed from {album.name()}"
        )
        conn = self.peers.connections.get(device)
        if conn is not None and not any(
            a.is_reader(conn.peer.public_key) for a in self._live_albums()
        ):
            conn.close()

    async def stop_sharing(self, album_id: bytes) -> int:
        album = self.owned_album(album_id)
        removed = 0
        for key in list(album.member_keys()):
            device = album.device_of(key)
            if device is not None:
                await self.remove_member(album_id, device, keep_photos=True)
                removed += 1
        return removed

    async def rename_album(self, album_id: bytes, name: str) -> None:
        album = self.owned_album(album_id)
        entry, _ = build_rename(
            album.membership, self.identity.key, name=name.strip(), now=_now(), rng=os.urandom
        )
        await self._owner_change(album, entry, f"Album renamed to {name.strip()}")

    async def delete_album(self, album_id: bytes) -> None:
        album = self.owned_album(album_id)
        entry, _ = build_delete(album.membership, self.identity.key, now=_now())
        await self._owner_change(
            album, entry, f"{album.name()} was deleted for everyone (files stay in the folders)"
        )

    async def leave_album(self, album_id: bytes) -> None:
        album = self.album(album_id)
        if album.membership.owner == self.identity.key.public:
            raise NotPermittedError(
                "the owner cannot leave its album; delete it or stop sharing instead"
            )
        if album.state != "active":
            raise NotPermittedError(f"the album is already {album.state}")
        envelope = build_leave(
            album.membership,
            self.identity.key,
            last_seq=album.manifest.head(self.identity.key.public)[0],
            now=_now(),
        )
        album.log.add_statement(envelope)
        await self.store.add_statement(
            album_id, statements.decode_statement(envelope).hash, envelope
        )
        await self._forward(album, Statements, [envelope], exclude=None)
        album.state = "left"
        await self.store.set_album_state(album_id, "left")
        self.publisher.albums_changed()  # type: ignore[attr-defined]
        await self.activity(
            album, "membership", f"Left {album.name()}; the files stay in {album.path}"
        )

    async def _owner_change(self, album: Album, envelope: bytes, text: str) -> None:
        written = await self._append_own_entry(album, envelope)
        await self._store_new_keys(album)
        crashpoint("owner_change.keys_stored")
        await self._update_album_state(album)
        await self._forward(album, LogEntries, written, exclude=None)
        crashpoint("owner_change.broadcast")
        await self.activity(album, "membership", text)
        await self.refresh_album(album)

    async def add_peer(self, device: DeviceId, address: str) -> None:
        if not address.startswith("tcp://"):
            raise ConfigError("a peer address looks like tcp://HOST:PORT")
        self.peers.want(device, address, "static")
        await self.store.put_address(str(device), address, "static", _now())

    # --- shared helpers ---------------------------------------------------------------------------

    async def refresh_album(self, album: Album) -> None:
        """Recompute the view and bring the folder in line (downloads, moves, trash)."""
        await self.transfers.reconcile(album)  # type: ignore[attr-defined]

    async def _store_new_keys(self, album: Album) -> None:
        new = album.refresh_keys()
        if new:
            await self.store.put_epoch_keys(album.album_id, new)

    def _live_albums(self) -> list[Album]:
        return [a for a in self.albums.values() if a.state in ("active", "invited")]

    def _album_for_peer(self, album_id: bytes, conn: Connection) -> Album:
        album = self.albums.get(album_id)
        if album is None or album.state not in ("active", "invited"):
            raise AlbumNotFoundError("unknown album")
        if not album.is_reader(conn.peer.public_key):
            raise NotPermittedError(f"{conn.peer.device_id.short} is not a member of this album")
        return album

    def _name(self, device: DeviceId) -> str:
        return (
            self.peer_names.get(device)
            or sealed_member_name(self.albums.values(), device)
            or device.short
        )

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def note_received(self, album: Album, file: LiveFile) -> None:
        """Batch "X added N photos to Y" notices: one line per author and album per few seconds."""
        key = (album.album_id, file.author)
        self._received[key] = self._received.get(key, 0) + 1
        if key not in self._flushing:
            self._flushing[key] = asyncio.get_running_loop().call_later(2.0, self._start_flush, key)

    def _start_flush(self, key: tuple[bytes, bytes]) -> None:
        task = asyncio.ensure_future(self._flush_received(key))
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)

    async def flush_notices(self) -> None:
        """Write the notices still being batched (at stop, while the store is open).

        A timer that already fired has a write in flight: wait for it too, or it would meet a
        closed store.
        """
        for key, handle in list(self._flushing.items()):
            handle.cancel()
            await self._flush_received(key)
        if self._flush_tasks:
            await asyncio.gather(*self._flush_tasks, return_exceptions=True)

    async def _flush_received(self, key: tuple[bytes, bytes]) -> None:
        self._flushing.pop(key, None)
        count = self._received.pop(key, 0)
        album = self.albums.get(key[0])
        if album is None or count == 0:
            return
        device = album.device_of(key[1])
        who = self._name(device) if device is not None else "someone"
        noun = "photo" if count == 1 else "photos"
        await self.activity(album, "photos", f"{who} added {count} {noun} to {album.name()}")

    async def activity(self, album: Album | None, kind: str, text: str) -> None:
        log.info("%s", text)
        await self.store.add_activity(
            at=_now(),
            album_id=album.album_id if album else None,
            kind=kind,
            actor=None,
            count=1,
            text=text,
        )

    def folder_ok(self, album: Album, max_age: float = 0.0) -> bool:
        """Whether the folder holds this album's marker; `max_age` > 0 accepts a check that
        recent (serving chunks: a read from a folder gone since then just fails, and the marker
        check was 12 % of a sender's CPU when done per chunk). Writers always check afresh."""
        now = time.monotonic()
        checked_at, ok = album.folder_checked
        if max_age > 0 and now - checked_at < max_age:
            return ok
        ok = album.path is not None and album.folder_state() is FolderState.OK
        album.folder_checked = (now, ok)
        return ok

    # --- web UI operations: cover, trash ------------------------------------------------------

    async def set_cover(self, album_id: bytes, file_key: tuple[bytes, bytes] | None) -> None:
        """Make a live file the album's cover (owner); None clears it. Sealed like the name."""
        album = self.owned_album(album_id)
        if file_key is not None and (album.view is None or album.view.file(file_key) is None):
            raise AlbumNotFoundError("that photo is not in the album (any more)")
        entry, _ = build_cover(
            album.membership,
            self.identity.key,
            cover=file_key[0] + file_key[1] if file_key is not None else b"",
            now=_now(),
            rng=os.urandom,
        )
        await self._owner_change(album, entry, f"{album.name()} has a new cover")

    async def restore_from_trash(self, album_id: bytes, trash_path: str) -> str:
        """Move a file from the album trash back into the folder; returns where it went. It is
        then published as this device's (if its role lets it add photos)."""
        album = self.album(album_id)
        folder = album.folder
        if album.state != "active" or folder is None:
            raise NotPermittedError(f"the album is {album.state}; nothing can be restored into it")
        items = await asyncio.to_thread(folder.list_trash)
        item = next((i for i in items if i.trash_rel == trash_path), None)
        if item is None:
            raise AlbumNotFoundError(f"'{trash_path}' is not in the album's trash")
        restored = await asyncio.to_thread(folder.restore, item)
        await self.activity(album, "files", f"Restored {restored} from the trash of {album.name()}")
        self.publisher.schedule(album)  # type: ignore[attr-defined]
        return restored

    async def relocate_album(self, album_id: bytes, path: Path) -> Album:
        """Point an album at the folder it was moved to: the folder's marker must name it.

        Nothing else re-associates a folder: a folder without the marker could be an empty disk
        mounted in its place, and adopting it would read as "every photo was deleted".
        """
        album = self.album(album_id)
        if album.state != "active":
            raise NotPermittedError(
                f"the album is {album.state}; only an active album has a folder"
            )
        others = {k: a for k, a in self.albums.items() if k != album_id}
        target = _check_album_path(path, others)
        await asyncio.to_thread(AlbumFolder(target, album_id).require_ok)
        if album.path == target:
            return album
        old = album.path
        album.path = target
        await self.store.set_album_state(album_id, album.state, str(target))
        await self.activity(album, "folder", f"{album.name()} now lives in {target} (was {old})")
        self.publisher.albums_changed()  # type: ignore[attr-defined]
        self.publisher.schedule(album)  # type: ignore[attr-defined]
        await self.refresh_album(album)
        return album


_HANDLERS: dict[type[Message], Callable[[Engine, Connection, Any], Awaitable[None]]] = {
    Hello: Engine.on_hello,
    LogRequest: Engine.on_log_request,
    LogEntries: Engine.on_log_entries,
    Statements: Engine.on_statements,
    ManifestHeads: Engine.on_manifest_heads,
    ManifestRequest: Engine.on_manifest_request,
    ManifestEntries: Engine.on_manifest_entries,
    ChunkRequest: Engine.on_chunk_request,
    ChunkData: Engine.on_chunk_reply,
    ChunkMissing: Engine.on_chunk_reply,
    InviteRedeem: Engine.on_invite_redeem,
    InviteOffer: Engine.on_invite_offer,
}


def _batches(envelopes: Iterable[bytes]) -> Iterable[tuple[bytes, ...]]:
    """Split envelopes into messages of at most MAX_BATCH_ITEMS items and ~MAX_BATCH_PAYLOAD bytes."""
    batch: list[bytes] = []
    size = 0
    for envelope in envelopes:
        if batch and (
            len(batch) >= MAX_BATCH_ITEMS or size + len(envelope) > MAX_BATCH_PAYLOAD - 4096
        ):
            yield tuple(batch)
            batch, size = [], 0
        batch.append(envelope)
        size += len(envelope) + 8
    if batch:
        yield tuple(batch)


def _local_from_row(row: object) -> LocalFile:
    r = dict(row)  # type: ignore[call-overload]
    return LocalFile(
        path=r["path"],
        size=r["size"],
        mtime_ns=r["mtime_ns"],
        inode=r["inode"],
        content_hash=_b(r["content_hash"]),
        file_author=_b(r["file_author"]),
        file_id=_b(r["file_id"]),
        entry_hash=_b(r["entry_hash"]),
        file_key=_b(r["file_key"]),
        state=r["state"],
    )


def _b(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


def _check_album_path(path: Path, albums: dict[bytes, Album]) -> Path:
    """An absolute folder that is neither inside nor around another album's folder."""
    target = path.expanduser().resolve()
    for album in albums.values():
        if album.path is None or album.state not in ("active", "invited"):
            continue
        other = album.path.resolve()
        if target == other or target.is_relative_to(other) or other.is_relative_to(target):
            raise ConfigError(f"{target} overlaps the folder of album {album.name()} ({other})")
    return target


def _check_writable(target: Path) -> Path:
    """`target` if this process may create it or write in it (the daemon often runs as its own
    user, who may not own the folder a person names); ConfigError saying what to do otherwise."""
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == target else f"{existing}, where it would be created"
        raise _cannot_write(target, where)
    return target


def _cannot_write(target: Path, where: str, why: str = "") -> ConfigError:
    because = f" ({why})" if why else ""
    return ConfigError(
        f"albumsync cannot write to {target}{because}: give the user it runs as write access to "
        f"{where}, or choose another folder"
    )


def _prepare_folder(target: Path, album_id: bytes) -> AlbumFolder:
    """Create the album folder if needed and mark it as this album's."""
    _check_writable(target)
    folder = AlbumFolder(target, album_id)
    try:
        target.mkdir(parents=True, exist_ok=True)
        folder.create_marker()
    except PermissionError as exc:
        raise _cannot_write(target, "it", exc.strerror or "") from None
    except FileExistsError:
        raise ConfigError(f"{target} is a file, not a folder; choose a folder") from None
    return folder


def _now() -> int:
    return int(time.time())


def fork_text(seq: int, hashes: tuple[bytes, bytes]) -> str:
    """The fork alarm in words, naming both entries so anyone can check the proof."""
    first, second = (h.hex()[:12] for h in hashes)
    return (
        f"fork alarm: the owner signed two different histories at position {seq} "
        f"(entries {first}… and {second}…); membership changes are frozen until the owner "
        "starts a new album"
    )
