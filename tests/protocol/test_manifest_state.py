"""ManifestState: per-author chains in any arrival order, bounds, forks, key-free verdicts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import manifest_state
from protocol.errors import DecodeError, Reason, VerificationError
from protocol.keys import DeviceKey
from protocol.manifest import SignedEntry
from protocol.manifest_builders import AuthorChain, make_remove
from protocol.manifest_state import MAX_SEQ_AHEAD, Arrival, ManifestState
from protocol.rights import Grant, Rights, Role
from tests.protocol.manifest_helpers import (
    ALBUM,
    EDITOR,
    KEY0,
    OTHER_ALBUM,
    OWNER,
    RIGHTS,
    STRANGER,
    counter_rng,
    editor_add,
    payload,
)


def _chain(n: int, author: DeviceKey = EDITOR, label: bytes = b"") -> list[SignedEntry]:
    chain = AuthorChain(author, ALBUM)
    rng = counter_rng(label)
    return [chain.add(0, KEY0, payload(f"{label.decode()}{i}.jpg"), rng) for i in range(n)]


def test_out_of_order_entries_link_when_their_predecessors_arrive() -> None:
    entries = _chain(5)
    state = ManifestState(ALBUM)
    assert state.add(entries[3].envelope) is Arrival.HELD
    assert state.add(entries[1].envelope) is Arrival.HELD
    assert state.add(entries[0].envelope) is Arrival.LINKED
    assert state.head(EDITOR.public) == (2, entries[1].hash)
    assert state.add(entries[2].envelope) is Arrival.LINKED
    assert state.head(EDITOR.public) == (4, entries[3].hash)
    assert state.add(entries[2].envelope) is Arrival.DUPLICATE
    judgement = state.judge(RIGHTS, {0})
    assert [s.entry.seq for s in judgement.accepted] == [1, 2, 3, 4]
    assert judgement.rejected == judgement.pending == ()
    state.add(entries[4].envelope)
    assert len(state) == 5
    assert state.entries(EDITOR.public) == tuple(entries)
    assert state.entry(entries[4].hash) == entries[4]
    assert state.authors() == (EDITOR.public,)


def test_a_gap_holds_later_entries_as_pending() -> None:
    entries = _chain(4)
    state = ManifestState(ALBUM)
    for signed in (entries[0], entries[2], entries[3]):
        state.add(signed.envelope)
    judgement = state.judge(RIGHTS, {0})
    assert [s.entry.seq for s in judgement.accepted] == [1]
    assert [(v.seq, v.reason) for v in judgement.pending] == [
        (3, Reason.BROKEN_CHAIN),
        (4, Reason.BROKEN_CHAIN),
    ]
    assert "waits for the author's entry 2" in judgement.pending[0].message


def test_C1_state_refuses_forgeries_and_stays_unchanged() -> None:
    entries = _chain(2)
    state = ManifestState(ALBUM)
    state.add(entries[0].envelope)
    before = (len(state), state.judge(RIGHTS, {0}))
    tampered = entries[1].envelope[:-1] + bytes([entries[1].envelope[-1] ^ 1])
    with pytest.raises(VerificationError) as err:
        state.add(tampered)
    assert err.value.reason is Reason.BAD_SIGNATURE
    foreign = ManifestState(OTHER_ALBUM)
    with pytest.raises(VerificationError) as err:
        foreign.add(entries[0].envelope)
    assert err.value.reason is Reason.WRONG_ALBUM
    with pytest.raises(DecodeError):
        state.add(b"\x08\x00")
    assert (len(state), state.judge(RIGHTS, {0})) == before
    assert len(foreign) == 0


def test_C1_wrong_prev_is_rejected_and_blocks_the_rest() -> None:
    entries = _chain(2)
    rng = counter_rng(b"x")
    wrong = editor_add(2, b"\x42" * 32, "w.jpg", rng=rng)
    after = editor_add(3, wrong.hash, "v.jpg", rng=rng)
    state = ManifestState(ALBUM)
    for signed in (after, wrong, entries[0]):
        state.add(signed.envelope)
    judgement = state.judge(RIGHTS, {0})
    assert [s.hash for s in judgement.accepted] == [entries[0].hash]
    assert [(v.seq, v.reason) for v in judgement.rejected] == [
        (2, Reason.BROKEN_CHAIN),
        (3, Reason.BROKEN_CHAIN),
    ]
    # The real entry 2 turns this into a fork at 2: both refused, with evidence.
    state.add(entries[1].envelope)
    judgement = state.judge(RIGHTS, {0})
    assert {v.reason for v in judgement.rejected} == {Reason.FORK}
    (fork,) = judgement.forks
    assert (fork.author, fork.seq) == (EDITOR.public, 2)
    assert set(fork.hashes) == {wrong.hash, entries[1].hash}


def test_fork_truncates_the_linked_chain_and_keeps_two_copies_only() -> None:
    entries = _chain(6)
    state = ManifestState(ALBUM)
    for signed in entries:
        state.add(signed.envelope)
    rng = counter_rng(b"fork")
    branch = [editor_add(3, entries[1].hash, f"f{i}.jpg", rng=rng) for i in range(2)]
    assert state.add(branch[0].envelope) is Arrival.HELD
    assert state.head(EDITOR.public) == (2, entries[1].hash)
    with pytest.raises(VerificationError) as err:
        state.add(branch[1].envelope)
    assert err.value.reason is Reason.FORK
    judgement = state.judge(RIGHTS, {0})
    assert len(judgement.accepted) == 2
    assert sorted(v.seq for v in judgement.rejected) == [3, 3, 4, 5, 6]


def test_fork_is_recorded_even_when_many_entries_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_state, "MAX_PENDING_PER_AUTHOR", 2)
    entries = _chain(8)
    state = ManifestState(ALBUM)
    for signed in entries:
        state.add(signed.envelope)
    rival = editor_add(2, entries[0].hash, "r.jpg")
    state.add(rival.envelope)
    assert state.forks()[0].seq == 2


def test_pending_entries_are_bounded_per_author(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_state, "MAX_PENDING_PER_AUTHOR", 3)
    entries = _chain(7)
    state = ManifestState(ALBUM)
    for signed in entries[2:5]:
        assert state.add(signed.envelope) is Arrival.HELD
    with pytest.raises(VerificationError) as err:
        state.add(entries[5].envelope)
    assert err.value.reason is Reason.TOO_MANY_PENDING
    assert "send that one first" in err.value.message
    # The entry that fills the gap is always taken, and what waited then links.
    assert state.add(entries[0].envelope) is Arrival.LINKED
    assert state.add(entries[1].envelope) is Arrival.LINKED
    assert state.head(EDITOR.public) == (5, entries[4].hash)
    assert state.add(entries[5].envelope) is Arrival.LINKED
    # Another author has its own budget.
    other = _chain(3, author=OWNER, label=b"o")
    assert state.add(other[2].envelope) is Arrival.HELD


def test_B9_far_future_sequence_numbers_are_refused() -> None:
    rng = counter_rng()
    state = ManifestState(ALBUM)
    for seq in (MAX_SEQ_AHEAD + 1, 2**62):
        far = editor_add(seq, b"\x01" * 32, "a.jpg", rng=rng)
        with pytest.raises(VerificationError) as err:
            state.add(far.envelope)
        assert err.value.reason is Reason.OUT_OF_BOUNDS
    near = editor_add(MAX_SEQ_AHEAD, b"\x01" * 32, "a.jpg", rng=rng)
    assert state.add(near.envelope) is Arrival.HELD
    assert len(state) == 1


def test_unknown_authors_are_refused_when_rights_are_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stranger = _chain(1, author=STRANGER)[0]
    state = ManifestState(ALBUM)
    with pytest.raises(VerificationError) as err:
        state.add(stranger.envelope, rights=RIGHTS)
    assert err.value.reason is Reason.UNKNOWN_MEMBER
    assert state.add(stranger.envelope) is Arrival.LINKED  # without rights: stored, judged later
    (verdict,) = state.judge(RIGHTS, {0}).rejected
    assert verdict.reason is Reason.NOT_AUTHORIZED
    monkeypatch.setattr(manifest_state, "MAX_AUTHORS", 1)
    with pytest.raises(VerificationError) as err:
        state.add(_chain(1)[0].envelope)
    assert err.value.reason is Reason.OUT_OF_BOUNDS


def test_unknown_epoch_waits_and_holds_the_rest_of_the_chain() -> None:
    chain = AuthorChain(EDITOR, ALBUM)
    rng = counter_rng()
    first = chain.add(0, KEY0, payload("a.jpg"), rng)
    second = chain.add(1, KEY0, payload("b.jpg"), rng)
    third = chain.remove(0, EDITOR.public, first.entry.file_id)
    state = ManifestState(ALBUM)
    for signed in (first, second, third):
        state.add(signed.envelope)
    judgement = state.judge(RIGHTS, {0})
    assert [s.hash for s in judgement.accepted] == [first.hash]
    assert [(v.seq, v.reason) for v in judgement.pending] == [
        (2, Reason.WRONG_EPOCH),
        (3, Reason.WRONG_EPOCH),
    ]
    assert len(state.judge(RIGHTS, {0, 1}).accepted) == 3


def test_role_rules_without_keys() -> None:
    rng = counter_rng()
    editor = AuthorChain(EDITOR, ALBUM)
    mine = editor.add(0, KEY0, payload("a.jpg"), rng)
    owner = AuthorChain(OWNER, ALBUM)
    owner_file = owner.add(0, KEY0, payload("o.jpg"), rng)
    attempts = [
        editor.remove(0, OWNER.public, owner_file.entry.file_id),  # another's file: refused
        editor.update(0, KEY0, b"\x00" * 16, payload("x.jpg"), rng),  # never added
        editor.add(0, KEY0, payload("b.jpg"), rng, file_id=mine.entry.file_id),  # ID reused
        editor.remove(0, EDITOR.public, mine.entry.file_id),  # own: fine
        editor.remove(0, EDITOR.public, mine.entry.file_id),  # twice
    ]
    owner_removes = owner.remove(0, EDITOR.public, mine.entry.file_id)  # owner may, any file
    owner_again = owner.remove(0, EDITOR.public, mine.entry.file_id)
    state = ManifestState(ALBUM)
    for signed in [mine, owner_file, *attempts, owner_removes, owner_again]:
        state.add(signed.envelope)
    judgement = state.judge(RIGHTS, {0})
    reasons = {v.hash: v.reason for v in judgement.rejected}
    assert reasons == {
        attempts[0].hash: Reason.NOT_AUTHORIZED,
        attempts[1].hash: Reason.MALFORMED,
        attempts[2].hash: Reason.REPLAYED,
        attempts[4].hash: Reason.MALFORMED,
        owner_again.hash: Reason.REPLAYED,
    }
    assert {s.hash for s in judgement.accepted} == {
        mine.hash,
        owner_file.hash,
        attempts[3].hash,
        owner_removes.hash,
    }


def test_viewer_may_write_after_promotion_only() -> None:
    viewer_key = EDITOR  # plays a viewer promoted to editor after its entry 1
    rights = Rights(
        owner=OWNER.public,
        grants={viewer_key.public: (Grant(0, Role.VIEWER), Grant(1, Role.EDITOR))},
    )
    entries = _chain(2, author=viewer_key)
    state = ManifestState(ALBUM)
    for signed in entries:
        state.add(signed.envelope)
    judgement = state.judge(rights, {0})
    assert [v.seq for v in judgement.rejected] == [1]
    assert "viewer" in judgement.rejected[0].message
    assert [s.entry.seq for s in judgement.accepted] == [2]


def test_remove_of_anothers_file_needs_the_owner_even_for_a_stranger_file() -> None:
    removal = make_remove(
        EDITOR, ALBUM, seq=1, prev=None, epoch=0, file_author=STRANGER.public, file_id=b"\x01" * 16
    )
    state = ManifestState(ALBUM)
    state.add(removal.envelope)
    (verdict,) = state.judge(RIGHTS, {0}).rejected
    assert verdict.reason is Reason.NOT_AUTHORIZED
    assert "others added" in verdict.message


_MAIN = _chain(10)
_FORK = _chain(6, label=b"fork")  # the same author from seq 1 again: a fork at every seq


@settings(max_examples=150, deadline=None)
@given(
    main=st.sets(st.integers(0, len(_MAIN) - 1)),
    fork=st.sets(st.integers(0, len(_FORK) - 1)),
    after=st.integers(-1, 12),
    limit=st.integers(0, 25),
)
def test_entries_after_is_a_page_of_entries(
    main: set[int], fork: set[int], after: int, limit: int
) -> None:
    """A page served to a catching-up peer is exactly the slice of the full listing, with gaps,
    held entries and forked siblings."""
    state = ManifestState(ALBUM)
    for signed in [_MAIN[i] for i in sorted(main)] + [_FORK[i] for i in sorted(fork)]:
        state.add(signed.envelope)
    expected = tuple(s for s in state.entries(EDITOR.public) if s.entry.seq > after)[:limit]
    assert state.entries_after(EDITOR.public, after, limit) == expected
    assert state.entries_after(STRANGER.public, after, limit) == ()


def test_a_byte_identical_copy_is_a_duplicate_without_decoding_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gossip and paging deliver entries more than once; a copy costs a hash, not a decode and
    a signature check. A different envelope (even of the same entry) is still decoded."""
    entries = _chain(2)
    state = ManifestState(ALBUM)
    calls: list[bytes] = []
    real = manifest_state.decode_entry

    def counting(envelope: bytes, *, album: bytes | None = None) -> SignedEntry:
        calls.append(envelope)
        return real(envelope, album=album)

    monkeypatch.setattr(manifest_state, "decode_entry", counting)
    assert state.add(entries[0].envelope) is Arrival.LINKED
    for _ in range(3):
        assert state.add(entries[0].envelope) is Arrival.DUPLICATE
    assert len(calls) == 1
    with pytest.raises((DecodeError, VerificationError)):
        state.add(entries[0].envelope[:-1] + bytes([entries[0].envelope[-1] ^ 1]))
    assert len(calls) == 2
    assert len(state) == 1
