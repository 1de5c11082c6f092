"""One album's membership log on one device: entries in any order, buffering, fork detection.

`MembershipLog` takes entry envelopes from anywhere (peers, a blind replica, its own store), checks
the owner's signature and the album before anything else, applies the next entry at once and holds
later ones (at most MAX_PENDING, at most MAX_PENDING ahead) until their predecessors arrive.

Forks. Two different owner-signed entries of this album for one seq are equivocation, whatever
else they say. The log then keeps the verified prefix before that seq, puts both entry hashes (and
envelopes, as evidence any other peer can check) in `state.fork`, and refuses every later entry and
statement with Reason.FORK. Peers fed the two branches report the same `Fork` once they meet.
Nothing resolves a fork silently; the owner has to start over (a new album).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from protocol.errors import Reason, VerificationError
from protocol.membership import (
    Fork,
    MembershipState,
    apply_signed,
    apply_signed_statement,
    verify_genesis,
    verify_origin,
)
from protocol.membership_entries import Genesis, Record, SignedEntry, decode_entry
from protocol.statements import SignedStatement, decode_statement

MAX_PENDING = 10_000  # out-of-order entries a log holds, and how far ahead of its head they may be
MAX_PENDING_STATEMENTS = 1_000  # statements naming an invite or epoch this device has not seen yet


class AddStatus(enum.Enum):
    """What `MembershipLog.add` / `add_statement` did with its input."""

    APPLIED = "applied"  # joined the chain (with any buffered successors) or the statements
    DUPLICATE = "duplicate"  # already known: nothing changed
    BUFFERED = "buffered"  # signature checked; waits for what comes before it
    FORKED = "forked"  # proved an owner fork: see `state.fork`


@dataclass(frozen=True)
class Added:
    """Result of `MembershipLog.add`; `applied` lists the envelopes that joined the chain, in order.

    `dropped` holds the errors of buffered entries that turned out invalid when their turn came.
    """

    status: AddStatus
    applied: tuple[bytes, ...] = ()
    dropped: tuple[VerificationError, ...] = ()


class MembershipLog:
    """One album's log on one device: verifies entries in any order, holds the state and forks.

    Every rejected input leaves the log exactly as it was.
    """

    def __init__(self, genesis: bytes, *, album_id: bytes | None = None) -> None:
        self._state = verify_genesis(genesis, album_id=album_id)
        self._chain: list[SignedEntry] = [decode_entry(genesis)]
        self._pending: dict[int, SignedEntry] = {}
        self._waiting: dict[bytes, SignedStatement] = {}
        self._seen: set[bytes] = set()

    @property
    def state(self) -> MembershipState:
        return self._state

    @property
    def fork(self) -> Fork | None:
        return self._state.fork

    @property
    def pending(self) -> int:
        """Entries held until their predecessors arrive."""
        return len(self._pending)

    def envelopes(self, start: int = 0) -> tuple[bytes, ...]:
        """The verified chain from seq `start` on (after a fork: the prefix before it)."""
        return tuple(signed.envelope for signed in self._chain[start:])

    def add(self, envelope: bytes) -> Added:
        """Take one entry envelope from anywhere; raise VerificationError/DecodeError if invalid."""
        signed = decode_entry(envelope)
        state, seq = self._state, signed.entry.seq
        if isinstance(signed.entry.body, Genesis) and signed.hash == state.album_id:
            return Added(AddStatus.DUPLICATE)
        if state.fork is None and seq == state.head_seq + 1:
            return self._extend(signed)
        verify_origin(state, signed)
        if state.fork is not None:
            return self._after_fork(signed, state.fork)
        if seq <= state.head_seq:
            return self._at_known_position(signed)
        return self._buffer(signed)

    def add_statement(self, envelope: bytes) -> AddStatus:
        """Take one statement; one naming an invite or epoch not seen yet waits for the log."""
        signed = decode_statement(envelope)
        if signed.hash in self._seen or signed.hash in self._waiting:
            return AddStatus.DUPLICATE
        try:
            self._state = apply_signed_statement(self._state, signed)
        except VerificationError as err:
            if err.reason not in _NOT_YET:
                raise
            if len(self._waiting) >= MAX_PENDING_STATEMENTS:
                raise VerificationError(
                    Reason.TOO_MANY_PENDING,
                    f"{MAX_PENDING_STATEMENTS} statements already wait for log entries this "
                    "device has not received; sync the membership log first",
                ) from None
            self._waiting[signed.hash] = signed
            return AddStatus.BUFFERED
        self._seen.add(signed.hash)
        self._retry_waiting()  # an accept can make a waiting leave valid
        return AddStatus.APPLIED

    def _extend(self, signed: SignedEntry) -> Added:
        state = apply_signed(self._state, signed)
        chain = [signed]
        dropped: list[VerificationError] = []
        while (following := self._pending.pop(state.head_seq + 1, None)) is not None:
            try:
                state = apply_signed(state, following)
            except VerificationError as err:
                dropped.append(err)
                break
            chain.append(following)
        self._state = state
        self._chain += chain
        for added in chain:
            if isinstance(added.entry.body, Record):
                recorded = added.entry.body.statement.hash
                self._seen.add(recorded)
                self._waiting.pop(recorded, None)
        self._retry_waiting()
        applied = tuple(added.envelope for added in chain)
        return Added(AddStatus.APPLIED, applied, tuple(dropped))

    def _at_known_position(self, signed: SignedEntry) -> Added:
        ours = self._chain[signed.entry.seq]
        if ours.hash == signed.hash:
            return Added(AddStatus.DUPLICATE)
        prefix = self._chain[: signed.entry.seq]
        state = self._replay(prefix)
        # Statements seen so far still count where they bind to the prefix.
        for held in self._state.unrecorded.values():
            for statement in held:
                try:
                    state = apply_signed_statement(state, statement)
                except VerificationError:
                    continue
        self._chain = prefix
        self._state = replace(state, fork=Fork.between(ours, signed))
        self._pending.clear()
        return Added(AddStatus.FORKED)

    def _buffer(self, signed: SignedEntry) -> Added:
        seq = signed.entry.seq
        if seq - self._state.head_seq > MAX_PENDING:
            raise VerificationError(
                Reason.TOO_MANY_PENDING,
                f"entry {seq} is more than {MAX_PENDING} entries ahead of this device's log "
                f"(at {self._state.head_seq}); sync the entries in between first",
            )
        held = self._pending.get(seq)
        if held is None:
            self._pending[seq] = signed
            return Added(AddStatus.BUFFERED)
        if held.hash == signed.hash:
            return Added(AddStatus.DUPLICATE)
        self._state = replace(self._state, fork=Fork.between(held, signed))
        self._pending.clear()
        return Added(AddStatus.FORKED)

    def _after_fork(self, signed: SignedEntry, fork: Fork) -> Added:
        seq = signed.entry.seq
        if signed.hash in fork.hashes or (
            seq < len(self._chain) and self._chain[seq].hash == signed.hash
        ):
            return Added(AddStatus.DUPLICATE)
        raise VerificationError(
            Reason.FORK,
            f"the owner signed two different entries for seq {fork.seq}; this album accepts "
            "no membership change until the owner resolves it",
        )

    def _replay(self, chain: list[SignedEntry]) -> MembershipState:
        state = verify_genesis(chain[0].envelope, album_id=self._state.album_id)
        for signed in chain[1:]:
            state = apply_signed(state, signed)
        return state

    def _retry_waiting(self) -> None:
        """Apply every waiting statement that has become valid, until none changes any more.

        One applied statement can make another valid (an accept, then a leave), so a single pass
        in arrival order is not enough; forgetting one would split the peers (TESTPLAN C8).
        """
        progress = True
        while progress and self._waiting:
            progress = False
            for key, signed in list(self._waiting.items()):
                try:
                    self._state = apply_signed_statement(self._state, signed)
                except VerificationError as err:
                    if err.reason in _NOT_YET:
                        continue
                del self._waiting[key]
                self._seen.add(key)
                progress = True


# A statement naming an invite or a key epoch this device has not seen yet may become valid.
_NOT_YET = frozenset({Reason.UNKNOWN_MEMBER, Reason.WRONG_EPOCH, Reason.NOT_YET})
