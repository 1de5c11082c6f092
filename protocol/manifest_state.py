"""One album's photo manifest on one device: every verified entry, and the verdict on each.

`ManifestState.add` checks what needs no key and no membership (encoding, signature, album) and
stores the entry in its author's chain. Acceptance is decided later, by `judge(rights, epochs)`, as a
pure function of the stored entries and the rights of the moment: the membership log may learn of a
removal (say after_seq = 7) after entries 8 and 9 arrived, and every peer must still reach the same
verdict whatever the order. Nothing is accepted "at arrival" and kept; `judge` is simply re-run.

Per author, the *linked* prefix is seq 1, 2, ... k where each seq holds exactly one stored entry and
its prev is the hash of the one before. Past it, by what sits at k + 1:
  nothing          the rest waits for entry k + 1                               (pending)
  two entries      the author signed two entries for one seq: a fork, evidence
                   kept, every entry from k + 1 on refused                     (rejected, FORK)
  one, wrong prev  it cannot ever link (its real predecessor would be a fork)  (rejected, BROKEN_CHAIN)
Within the linked prefix each entry is judged on its own, in seq order: its epoch must be known
(else it and everything after it wait, WRONG_EPOCH), its author's role for that seq must allow it
(add/update: editor or owner; remove of one's own file: editor or owner; of another's: owner), and
it must make sense after the author's earlier accepted entries (no file ID added twice, no update or
remove of a file the author never added or already removed). A refused entry does not stop the
chain: the author's later entries are judged on their own.

Bounds: per author at most MAX_PENDING_PER_AUTHOR entries beyond the contiguous range 1..n, none
more than MAX_SEQ_AHEAD past it, at most MAX_ENTRIES_PER_SEQ entries for one seq (two prove a
fork), at most MAX_AUTHORS authors.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Container
from dataclasses import dataclass, field

from protocol.errors import Reason, VerificationError
from protocol.manifest import (
    EntryKind,
    Payload,
    SignedEntry,
    decode_entry,
    entry_hash,
    open_payload,
)
from protocol.rights import Rights, Role

MAX_PENDING_PER_AUTHOR = 10_000
MAX_SEQ_AHEAD = 2**32
MAX_ENTRIES_PER_SEQ = 2
MAX_AUTHORS = 1_000  # devices that ever wrote to one album (100 at a time, DESIGN §2)

FileKey = tuple[bytes, bytes]
"""(file author, file ID): a file's identity in an album."""


class Arrival(enum.Enum):
    """What `ManifestState.add` did with an envelope."""

    LINKED = "linked"  # now part of its author's linked chain
    HELD = "held"  # stored; waits for a predecessor, or lies past a fork or a broken link
    DUPLICATE = "duplicate"  # already stored: nothing changed


@dataclass(frozen=True)
class Fork:
    """An author signed several entries for one seq; `hashes` (sorted) are the evidence."""

    author: bytes
    seq: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Why one entry is not accepted (or not yet)."""

    hash: bytes
    author: bytes
    seq: int
    kind: EntryKind
    reason: Reason
    message: str

    @classmethod
    def of(cls, signed: SignedEntry, reason: Reason, why: str) -> Verdict:
        """The verdict on `signed`, its message prefixed with which entry it is."""
        entry = signed.entry
        return cls(
            hash=signed.hash,
            author=entry.author,
            seq=entry.seq,
            kind=entry.kind,
            reason=reason,
            message=f"manifest entry {entry.seq} ({entry.kind.value}) by "
            f"{short_key(entry.author)}: {why}",
        )


@dataclass(frozen=True, kw_only=True)
class Judgement:
    """The verdict on every stored entry under given rights and known epochs (no keys needed)."""

    accepted: tuple[SignedEntry, ...]  # by author, then seq
    rejected: tuple[Verdict, ...]
    pending: tuple[Verdict, ...]
    forks: tuple[Fork, ...]


class ManifestState:
    """The verified manifest entries of one album, in per-author chains."""

    def __init__(self, album_id: bytes) -> None:
        self.album_id = album_id
        self._chains: dict[bytes, _Chain] = {}
        self._by_hash: dict[bytes, SignedEntry] = {}
        self._payloads: dict[bytes, tuple[bytes, Payload | tuple[Reason, str]]] = {}

    def add(self, envelope: bytes, *, rights: Rights | None = None) -> Arrival:
        """Verify and store an envelope; with `rights`, refuse authors the log does not know."""
        # Byte-identical to a stored (so verified) entry: nothing to decode. Gossip and paging
        # deliver the same entries more than once, and decoding first made each copy cost a
        # full decode and signature check.
        if entry_hash(envelope) in self._by_hash:
            return Arrival.DUPLICATE
        signed = decode_entry(envelope, album=self.album_id)
        author = signed.entry.author
        if rights is not None and author != rights.owner and author not in rights.grants:
            raise VerificationError(
                Reason.UNKNOWN_MEMBER,
                f"manifest entry by {short_key(author)}, who is not in this album's membership log",
            )
        chain = self._chains.get(author)
        if chain is None:
            if len(self._chains) >= MAX_AUTHORS:
                raise VerificationError(
                    Reason.OUT_OF_BOUNDS, f"this album already has {MAX_AUTHORS} manifest authors"
                )
            chain = _Chain()
        linked = chain.insert(signed)
        self._chains[author] = chain
        self._by_hash[signed.hash] = signed
        return Arrival.LINKED if linked else Arrival.HELD

    def entry(self, entry_hash: bytes) -> SignedEntry | None:
        return self._by_hash.get(entry_hash)

    def authors(self) -> tuple[bytes, ...]:
        return tuple(sorted(self._chains))

    def head(self, author: bytes) -> tuple[int, bytes | None]:
        """The author's last linked seq and entry hash ((0, None) before any)."""
        chain = self._chains.get(author)
        if chain is None or not chain.linked:
            return (0, None)
        return (len(chain.linked), chain.linked[-1].hash)

    def entries(self, author: bytes) -> tuple[SignedEntry, ...]:
        """Every stored entry of the author (linked or not), by seq then hash."""
        chain = self._chains.get(author)
        if chain is None:
            return ()
        by_seq = chain.by_seq
        return tuple(by_seq[seq][h] for seq in sorted(by_seq) for h in sorted(by_seq[seq]))

    def entries_after(self, author: bytes, after_seq: int, limit: int) -> tuple[SignedEntry, ...]:
        """The first `limit` of `entries(author)` with a seq above `after_seq`.

        A page of a long history: walking only the seqs asked for keeps serving a 100,000-entry
        catch-up linear instead of sorting the whole chain for every page.
        """
        chain = self._chains.get(author)
        if chain is None or limit <= 0:
            return ()
        found: list[SignedEntry] = []
        seq = max(after_seq, 0) + 1
        while seq <= chain.reach and len(found) < limit:
            bucket = chain.by_seq[seq]
            found.extend(bucket[h] for h in sorted(bucket))
            seq += 1
        if len(found) < limit and chain.beyond:
            for later in sorted(s for s in chain.by_seq if s >= seq):
                bucket = chain.by_seq[later]
                found.extend(bucket[h] for h in sorted(bucket))
        return tuple(found[:limit])

    def __len__(self) -> int:
        return len(self._by_hash)

    def forks(self) -> tuple[Fork, ...]:
        return tuple(
            fork for a in sorted(self._chains) if (fork := self._chains[a].fork(a)) is not None
        )

    def judge(self, rights: Rights, known_epochs: Container[int]) -> Judgement:
        """Accept, refuse or hold every stored entry; the same inputs give the same verdicts."""
        out = _Verdicts()
        for author in sorted(self._chains):
            chain = self._chains[author]
            _judge_linked(chain.linked, rights, known_epochs, out)
            _judge_unlinked(chain, out)
        return Judgement(
            accepted=tuple(out.accepted),
            rejected=tuple(out.rejected),
            pending=tuple(out.pending),
            forks=self.forks(),
        )

    def payload(self, signed: SignedEntry, epoch_key: bytes) -> Payload:
        """`open_payload`, remembered per entry (decrypting an album again on every verdict is slow)."""
        cached = self._payloads.get(signed.hash)
        if cached is None or cached[0] != epoch_key:
            try:
                result: Payload | tuple[Reason, str] = open_payload(signed.entry, epoch_key)
            except VerificationError as err:
                result = (err.reason, err.message)
            cached = (epoch_key, result)
            self._payloads[signed.hash] = cached
        if isinstance(cached[1], Payload):
            return cached[1]
        raise VerificationError(*cached[1])


def short_key(key: bytes) -> str:
    """The first 7 base32 characters of a public key, for messages and conflict tags."""
    return base64.b32encode(key).decode("ascii")[:7]


@dataclass
class _Chain:
    """One author's stored entries; `linked` is the prefix that chains from seq 1."""

    by_seq: dict[int, dict[bytes, SignedEntry]] = field(default_factory=dict)
    linked: list[SignedEntry] = field(default_factory=list)
    reach: int = 0  # every seq in 1..reach has at least one stored entry
    beyond: int = 0  # stored entries with seq > reach

    def insert(self, signed: SignedEntry) -> bool:
        """Store `signed` (VerificationError if a bound forbids it); True if it is linked."""
        seq = signed.entry.seq
        self._check_room(seq)
        self.by_seq.setdefault(seq, {})[signed.hash] = signed
        self.beyond += 1
        while self.reach + 1 in self.by_seq:
            self.reach += 1
            self.beyond -= len(self.by_seq[self.reach])
        if seq <= len(self.linked):
            del self.linked[seq - 1 :]  # a second entry for a linked seq: a fork from here on
        self._extend()
        return len(self.linked) >= seq and self.linked[seq - 1] is signed

    def fork(self, author: bytes) -> Fork | None:
        bucket = self.by_seq.get(len(self.linked) + 1, {})
        if len(bucket) < 2:
            return None
        return Fork(author=author, seq=len(self.linked) + 1, hashes=tuple(sorted(bucket)))

    def _check_room(self, seq: int) -> None:
        if seq > self.reach + MAX_SEQ_AHEAD:
            raise VerificationError(
                Reason.OUT_OF_BOUNDS,
                f"manifest entry {seq} is more than {MAX_SEQ_AHEAD} past the author's entry "
                f"{self.reach}: refused",
            )
        if seq > self.reach + 1 and self.beyond >= MAX_PENDING_PER_AUTHOR:
            raise VerificationError(
                Reason.TOO_MANY_PENDING,
                f"{MAX_PENDING_PER_AUTHOR} entries of this author already wait for entry "
                f"{self.reach + 1}; send that one first",
            )
        if len(self.by_seq.get(seq, ())) >= MAX_ENTRIES_PER_SEQ:
            raise VerificationError(
                Reason.FORK, f"the author's entry {seq} is already forked; no more copies are kept"
            )

    def _extend(self) -> None:
        while len(bucket := self.by_seq.get(len(self.linked) + 1, {})) == 1:
            (candidate,) = bucket.values()
            prev = self.linked[-1].hash if self.linked else None
            if candidate.entry.prev != prev:
                return
            self.linked.append(candidate)


@dataclass
class _Verdicts:
    accepted: list[SignedEntry] = field(default_factory=list)
    rejected: list[Verdict] = field(default_factory=list)
    pending: list[Verdict] = field(default_factory=list)


@dataclass
class _Book:
    """What one author's accepted entries did so far: its files (True once removed)."""

    files: dict[bytes, bool] = field(default_factory=dict)
    removed_others: set[FileKey] = field(default_factory=set)


def _judge_linked(
    linked: list[SignedEntry], rights: Rights, known_epochs: Container[int], out: _Verdicts
) -> None:
    book = _Book()
    waiting: SignedEntry | None = None
    for signed in linked:
        entry = signed.entry
        if waiting is not None:
            why = f"waits for the key of epoch {waiting.entry.epoch} (entry {waiting.entry.seq})"
            out.pending.append(Verdict.of(signed, Reason.WRONG_EPOCH, why))
        elif entry.epoch not in known_epochs:
            waiting = signed
            why = f"names key epoch {entry.epoch}, which this device does not know yet"
            out.pending.append(Verdict.of(signed, Reason.WRONG_EPOCH, why))
        elif refusal := _refusal(signed, rights.role_for_entry(entry.author, entry.seq), book):
            out.rejected.append(Verdict.of(signed, *refusal))
        else:
            _record(signed, book)
            out.accepted.append(signed)


def _judge_unlinked(chain: _Chain, out: _Verdicts) -> None:
    stop = len(chain.linked) + 1
    bucket = chain.by_seq.get(stop, {})
    if not bucket:
        reason, why, into = Reason.BROKEN_CHAIN, f"waits for the author's entry {stop}", out.pending
    elif len(bucket) > 1:
        reason, why, into = Reason.FORK, f"the author signed two entries {stop}", out.rejected
    else:
        reason, why, into = Reason.BROKEN_CHAIN, f"entry {stop} does not chain", out.rejected
    for seq in sorted(s for s in chain.by_seq if s >= stop):
        for held in sorted(chain.by_seq[seq]):
            into.append(Verdict.of(chain.by_seq[seq][held], reason, why))


def _refusal(signed: SignedEntry, role: Role | None, book: _Book) -> tuple[Reason, str] | None:
    """Why the author may not write this entry after its earlier accepted ones (None: it may)."""
    entry = signed.entry
    own = entry.file_author == entry.author
    needed = Role.EDITOR if own else Role.OWNER
    if role is None or role < needed:
        held = "no role" if role is None else f"the role {role.label}"
        verb = "remove photos others added" if not own else f"{entry.kind.value} photos"
        return (Reason.NOT_AUTHORIZED, f"with {held} for this entry, the author may not {verb}")
    removed = book.files.get(entry.file_id)
    if entry.kind is EntryKind.ADD and removed is not None:
        return (Reason.REPLAYED, "adds a file ID the author already used")
    if own and entry.kind is not EntryKind.ADD and removed is not False:
        state = "never added" if removed is None else "already removed"
        return (Reason.MALFORMED, f"{entry.kind.value}s a file the author {state}")
    if not own and entry.file in book.removed_others:
        return (Reason.REPLAYED, "removes a file the owner already removed")
    return None


def _record(signed: SignedEntry, book: _Book) -> None:
    entry = signed.entry
    if entry.file_author != entry.author:
        book.removed_others.add(entry.file)
    elif entry.kind is not EntryKind.UPDATE:
        book.files[entry.file_id] = entry.kind is EntryKind.REMOVE
