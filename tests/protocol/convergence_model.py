"""The C8 model: simulated peers, a lossy reordering network, and what each peer should see.

`Peer` is what one daemon holds for one album (its MembershipLog, ManifestState, device key and
author chain) and acts only on that. `Network` carries envelopes between peers: it can deliver any
message in flight, duplicate or drop it, and cut a peer off; `sync` is the anti-entropy a daemon
runs when two peers (re)connect (each sends what the other lacks); `quiesce` heals everything and
syncs until nothing changes.

`Truth` is the model's own record of what the owner wrote and who wrote which photo entry, kept
without asking protocol/ for any verdict. From it `Truth.known_epochs` says which epoch keys a peer
must hold at its log prefix, and `expected_view` which entries and files it must show given that
prefix, its unrecorded statements and the entries it holds: an independent oracle (a second
implementation of the rules in rights.py and manifest_state.py) compared with every peer.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from protocol.album_view import AlbumView, evaluate
from protocol.certificate import make_certificate
from protocol.errors import VerificationError
from protocol.keys import DeviceKey
from protocol.manifest import EntryKind, SignedEntry
from protocol.manifest_builders import AuthorChain
from protocol.manifest_state import Arrival, FileKey, ManifestState
from protocol.membership import MembershipState, Status
from protocol.membership_entries import Genesis, Invite, Record, Remove, Rotate, decode_entry
from protocol.membership_log import AddStatus, MembershipLog
from protocol.rights import Role
from protocol.statements import Statement, StatementKind

NOW = 1_780_000_000
DEVICES = tuple(DeviceKey(bytes([0x40 + index]) * 32) for index in range(5))  # [0]: the owner
OWNER = 0
READING = frozenset({Status.INVITED, Status.ACTIVE})


@functools.cache
def cert(device: DeviceKey) -> bytes:
    return make_certificate(device)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Channel(enum.Enum):
    """What a message carries."""

    MEMBERSHIP = "membership"
    STATEMENT = "statement"
    MANIFEST = "manifest"


@dataclass(frozen=True)
class Message:
    channel: Channel
    envelope: bytes
    source: int
    dest: int


class Peer:
    """One device's copy of the album, changed only by what it writes and receives."""

    def __init__(self, index: int, key: DeviceKey, genesis: bytes) -> None:
        self.index = index
        self.key = key
        self.log = MembershipLog(genesis)
        album = self.log.state.album_id
        self.manifest = ManifestState(album)
        self.chain = AuthorChain(key, album)
        self.own_files: dict[bytes, str] = {}  # files it added and has not removed itself
        self.membership: set[bytes] = {sha256(genesis)}  # entry hashes applied or held
        self.statements: dict[bytes, bytes] = {}  # hash -> envelope, applied or held
        self.entries: dict[bytes, bytes] = {}  # manifest hash -> envelope
        self.refused_statements = 0
        self._keys: tuple[bytes, dict[int, bytes]] | None = None
        self._view: tuple[tuple[object, ...], AlbumView] | None = None

    @property
    def public(self) -> bytes:
        return self.key.public

    @property
    def state(self) -> MembershipState:
        return self.log.state

    def status(self) -> Status | None:
        """Its own status as it sees it (its statements count at once)."""
        return self.state.status(self.public)

    def epoch_keys(self) -> dict[int, bytes]:
        """Epoch -> album key, for every box its log seals to it."""
        head = self.state.head_hash
        if self._keys is None or self._keys[0] != head:
            self._keys = (head, self.state.epoch_keys(self.key))
        return self._keys[1]

    def view(self) -> AlbumView:
        state = self.state
        stamp = (state.head_hash, _unrecorded(state), len(self.manifest))
        if self._view is None or self._view[0] != stamp:
            self._view = (stamp, evaluate(self.manifest, state.rights(), self.epoch_keys()))
        return self._view[1]

    def may_write(self) -> bool:
        """Whether its own state says it may add photos (it acts on nothing else)."""
        if self.index == OWNER:
            return True
        role = self.state.rights().current_role(self.public)
        return self.status() is Status.ACTIVE and role is not None and role >= Role.EDITOR

    def store(self, signed: SignedEntry) -> None:
        """Keep an entry it wrote itself."""
        assert self.manifest.add(signed.envelope) is Arrival.LINKED
        self.entries[signed.hash] = signed.envelope

    def receive(self, channel: Channel, envelope: bytes) -> bool:
        """Take one envelope as a daemon would; True if it was new here (so it is forwarded)."""
        if channel is Channel.MEMBERSHIP:
            added = self.log.add(envelope)
            # The owner is honest: its entries never fork and never turn out invalid.
            assert added.status is not AddStatus.FORKED, self.log.fork
            assert not added.dropped, added.dropped
            if added.status is AddStatus.DUPLICATE:
                return False
            self.membership.add(sha256(envelope))
            return True
        if channel is Channel.STATEMENT:
            try:
                status = self.log.add_statement(envelope)
            except VerificationError:
                self.refused_statements += 1  # stale or early; anti-entropy may bring it again
                return False
            if status is AddStatus.DUPLICATE:
                return False
            self.statements[sha256(envelope)] = envelope
            return True
        if self.manifest.add(envelope) is Arrival.DUPLICATE:
            return False
        self.entries[sha256(envelope)] = envelope
        return True


class Network:
    """Messages in flight between peers; a partitioned peer receives nothing until healed."""

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers
        self.in_flight: list[Message] = []
        self.partitioned: set[int] = set()
        self.delivered = 0

    def known(self, peer: Peer) -> list[int]:
        """The peers `peer` knows from its own log: the owner and every device ever invited."""
        keys = {peer.state.owner, *peer.state.log_members}
        return [p.index for p in self.peers if p.public in keys and p is not peer]

    def gossip(self, source: Peer, channel: Channel, envelope: bytes, *, skip: int = -1) -> None:
        for dest in self.known(source):
            if dest != skip:
                self.in_flight.append(Message(channel, envelope, source.index, dest))

    def deliverable(self) -> list[int]:
        return [i for i, m in enumerate(self.in_flight) if m.dest not in self.partitioned]

    def deliver(self, position: int) -> None:
        message = self.in_flight.pop(position)
        self._hand(self.peers[message.dest], message.channel, message.envelope, message.source)

    def sync(self, source: Peer, dest: Peer) -> None:
        """`source` sends `dest` every envelope `dest` lacks (their have-lists, exchanged)."""
        if {source.index, dest.index} & self.partitioned:
            return
        for envelope in source.log.envelopes():
            if sha256(envelope) not in dest.membership:
                self._hand(dest, Channel.MEMBERSHIP, envelope, source.index)
        for statement_hash, envelope in list(source.statements.items()):
            if statement_hash not in dest.statements:
                self._hand(dest, Channel.STATEMENT, envelope, source.index)
        for entry_hash, envelope in list(source.entries.items()):
            if entry_hash not in dest.entries:
                self._hand(dest, Channel.MANIFEST, envelope, source.index)

    def reconnect(self, peer: Peer) -> None:
        """What a daemon does when a peer comes back: sync both ways with every peer it knows."""
        for other in self.known(peer):
            self.sync(peer, self.peers[other])
            self.sync(self.peers[other], peer)

    def drain(self) -> None:
        while self.in_flight:
            self.deliver(0)

    def quiesce(self, max_rounds: int = 40) -> None:
        """Heal every partition, deliver everything, and sync all known pairs until nothing changes."""
        self.partitioned.clear()
        for _ in range(max_rounds):
            self.drain()
            before = self.fingerprint()
            for peer in self.peers:
                for other in self.known(peer):
                    self.sync(peer, self.peers[other])
            self.drain()
            if self.fingerprint() == before:
                return
        raise AssertionError(f"delivery did not quiesce within {max_rounds} rounds")

    def fingerprint(self) -> tuple[object, ...]:
        return tuple(
            (p.state.head_hash, _unrecorded(p.state), len(p.statements), len(p.entries))
            for p in self.peers
        )

    def _hand(self, peer: Peer, channel: Channel, envelope: bytes, source: int) -> None:
        self.delivered += 1
        if peer.receive(channel, envelope):
            self.gossip(peer, channel, envelope, skip=source)


# ---------------------------------------------------------------------------------------------
# The model's own record, and the oracle built on it


@dataclass(frozen=True)
class GrantRecord:
    """A grant the owner wrote at log position `log_seq` (the model's copy, not the protocol's)."""

    log_seq: int
    member: bytes
    after_seq: int
    role: Role | None
    keep_photos: bool = False


@dataclass(frozen=True)
class Written:
    """One manifest entry some peer wrote; `sound`: sealed under the key of the epoch it names."""

    hash: bytes
    author: bytes
    seq: int
    kind: EntryKind
    file: FileKey
    epoch: int
    sound: bool = True


@dataclass
class Truth:
    """What the owner wrote and what every author wrote, as the model saw it happen."""

    owner: bytes
    chain: list[bytes] = field(default_factory=list)  # owner's entry envelopes, seq order
    grants: list[GrantRecord] = field(default_factory=list)
    status: dict[bytes, Status] = field(default_factory=dict)  # as recorded in the log
    epoch: int = 0
    deliveries: list[tuple[int, bytes, range]] = field(default_factory=list)
    lost: dict[bytes, int] = field(default_factory=dict)  # member -> first epoch it may not read
    written: dict[bytes, list[Written]] = field(default_factory=dict)
    ever_editor: set[bytes] = field(default_factory=set)
    _known: dict[tuple[bytes, int, int], frozenset[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, genesis: bytes) -> Truth:
        body = decode_entry(genesis).entry.body
        assert isinstance(body, Genesis)
        truth = cls(owner=body.owner, chain=[genesis])
        truth.deliveries.append((0, body.owner, range(1)))
        return truth

    @property
    def head(self) -> int:
        return len(self.chain) - 1

    def readers(self) -> set[bytes]:
        return {self.owner, *(m for m, s in self.status.items() if s in READING)}

    def last_after_seq(self, member: bytes) -> int:
        grants = [g for g in self.grants if g.member == member]
        return grants[-1].after_seq if grants else 0

    def note_entry(self, envelope: bytes) -> None:
        self.chain.append(envelope)

    def grant(self, member: bytes, after_seq: int, role: Role | None, keep: bool = False) -> None:
        self.grants.append(GrantRecord(self.head, member, after_seq, role, keep))
        if role is not None and role >= Role.EDITOR:
            self.ever_editor.add(member)

    def invited(self, member: bytes, role: Role, after_seq: int) -> None:
        self.grant(member, after_seq, role)
        self.status[member] = Status.INVITED
        self.deliveries.append((self.head, member, range(self.epoch + 1)))
        self.lost.pop(member, None)

    def lost_access(self, member: bytes, status: Status, grant: GrantRecord | None) -> None:
        if grant is not None:
            self.grant(grant.member, grant.after_seq, None, grant.keep_photos)
        self.status[member] = status
        self.new_epoch()
        self.lost[member] = self.epoch

    def recorded(self, said: Statement, keep_photos: bool) -> None:
        if said.kind is StatementKind.ACCEPT:
            self.status[said.member] = Status.ACTIVE
            return
        after = self.last_after_seq(said.member)
        if said.kind is StatementKind.LEAVE:
            after, status = max(after, said.last_seq), Status.LEFT
        else:
            status = Status.DECLINED
        self.lost_access(said.member, status, GrantRecord(0, said.member, after, None, keep_photos))

    def new_epoch(self) -> None:
        self.epoch += 1
        for reader in self.readers():
            self.deliveries.append((self.head, reader, range(self.epoch, self.epoch + 1)))

    def wrote(self, signed: SignedEntry, *, sound: bool = True) -> None:
        entry = signed.entry
        written = Written(
            signed.hash, entry.author, entry.seq, entry.kind, entry.file, entry.epoch, sound
        )
        self.written.setdefault(entry.author, []).append(written)

    def entry(self, entry_hash: bytes) -> Written:
        """What the model knows of a manifest entry some peer wrote."""
        return next(w for chain in self.written.values() for w in chain if w.hash == entry_hash)

    def known_epochs(self, device: bytes, head: int) -> frozenset[int]:
        """The epochs whose key the log prefix up to `head` seals to `device`."""
        stamp = (device, head, len(self.deliveries))
        known = self._known.get(stamp)
        if known is None:
            known = frozenset(
                epoch
                for seq, recipient, epochs in self.deliveries
                if recipient == device and seq <= head
                for epoch in epochs
            )
            self._known[stamp] = known
        return known

    def could_read(self, device: bytes, epoch: int) -> bool:
        """Whether the owner ever sealed `epoch`'s key to `device`."""
        return epoch in self.known_epochs(device, self.head)

    def boxes(self, position: int) -> Iterator[tuple[int, bytes]]:
        """(epoch, sealed box) for every epoch key in the owner's entry at `position`."""
        signed = decode_entry(self.chain[position])
        body = signed.entry.body
        if isinstance(body, Invite):
            yield from enumerate(body.epoch_keys)
        elif isinstance(body, (Genesis, Remove, Record, Rotate)):
            for _, box in body.keys:
                yield signed.entry.epoch, box


Grants = dict[bytes, list[GrantRecord]]


def grants_seen(truth: Truth, state: MembershipState) -> Grants:
    """The grants a peer whose log is at `state` acts on: its prefix, then its unrecorded losses."""
    seen: Grants = {}
    for grant in truth.grants:
        if grant.log_seq <= state.head_seq:
            seen.setdefault(grant.member, []).append(grant)
    for member, held in state.unrecorded.items():
        for signed in held:
            said = signed.statement
            if said.kind is StatementKind.ACCEPT:
                continue
            history = seen.get(member, [])
            after = history[-1].after_seq if history else 0
            if said.kind is StatementKind.LEAVE:
                after = max(after, said.last_seq)
            seen.setdefault(member, []).append(GrantRecord(state.head_seq, member, after, None))
    return seen


def role_for(truth: Truth, grants: Grants, author: bytes, seq: int) -> Role | None:
    """The role of the last grant of `author` made for entries after a seq below `seq`."""
    if author == truth.owner:
        return Role.OWNER
    governing = [g for g in grants.get(author, []) if g.after_seq < seq]
    return governing[-1].role if governing else None


def photos_stay(truth: Truth, grants: Grants, author: bytes) -> bool:
    if author == truth.owner:
        return True
    history = grants.get(author, [])
    return bool(history) and (history[-1].role is not None or history[-1].keep_photos)


@dataclass(frozen=True)
class Expected:
    """What one peer must show: accepted entry hashes and live files as (file, version hash)."""

    accepted: frozenset[bytes]
    live: frozenset[tuple[FileKey, bytes]]


def expected_view(truth: Truth, peer: Peer) -> Expected:
    """The entries and files `peer` must show, from its log prefix, statements and held entries."""
    grants = grants_seen(truth, peer.state)
    known = truth.known_epochs(peer.public, peer.state.head_seq)
    accepted = [
        written
        for author, chain in truth.written.items()
        for written in _judged(truth, grants, _linked(chain, peer.entries), known, author)
        if written.sound
    ]
    versions: dict[FileKey, Written] = {}
    for written in accepted:
        if written.kind is not EntryKind.REMOVE:
            versions[written.file] = written
    removed = {w.file for w in accepted if w.kind is EntryKind.REMOVE}
    live = frozenset(
        (key, written.hash)
        for key, written in versions.items()
        if key not in removed and photos_stay(truth, grants, key[0])
    )
    return Expected(frozenset(w.hash for w in accepted), live)


def _linked(chain: list[Written], held: Iterable[bytes]) -> list[Written]:
    """The author's entries from seq 1 on, up to the first one the peer does not hold."""
    have = set(held)
    prefix: list[Written] = []
    for written in chain:
        if written.hash not in have:
            break
        prefix.append(written)
    return prefix


def _judged(
    truth: Truth, grants: Grants, linked: list[Written], known: frozenset[int], author: bytes
) -> Iterator[Written]:
    """The entries of one author's linked chain that its roles and its earlier entries allow."""
    files: dict[bytes, bool] = {}  # file ID -> removed
    removed_others: set[FileKey] = set()
    for written in linked:
        if written.epoch not in known:
            return  # it and everything after it wait for the key
        role = role_for(truth, grants, author, written.seq)
        own = written.file[0] == author
        if role is None or role < (Role.EDITOR if own else Role.OWNER):
            continue
        file_id = written.file[1]
        if written.kind is EntryKind.ADD:
            if file_id in files:
                continue
            files[file_id] = False
        elif own:
            if files.get(file_id) is not False:
                continue
            files[file_id] = written.kind is EntryKind.REMOVE
        else:
            if written.file in removed_others:
                continue
            removed_others.add(written.file)
        yield written


def _unrecorded(state: MembershipState) -> tuple[bytes, ...]:
    return tuple(sorted(s.hash for held in state.unrecorded.values() for s in held))
