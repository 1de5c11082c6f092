"""AlbumView: live files, retractions, conflicts, and convergence whatever the delivery order (C4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.album_view import AlbumView, conflict_tag, diff_views, evaluate
from protocol.errors import Reason
from protocol.keys import DeviceKey
from protocol.manifest import SignedEntry
from protocol.manifest_builders import AuthorChain
from protocol.manifest_state import ManifestState
from protocol.names import conflict_name
from protocol.rights import Grant, Rights, Role
from tests.protocol.manifest_helpers import (
    ALBUM,
    EDITOR,
    EDITOR2,
    KEY0,
    KEY1,
    KEYS,
    OWNER,
    RIGHTS,
    VIEWER,
    counter_rng,
    editor_add,
    payload,
)

RIGHTS_CHANGE = -1  # stands for "the owner's removal reaches this peer" in a delivery order


def _view(
    entries: Sequence[SignedEntry], rights: Rights = RIGHTS, keys: Mapping[int, bytes] = KEYS
) -> AlbumView:
    state = ManifestState(ALBUM)
    for signed in entries:
        state.add(signed.envelope)
    return evaluate(state, rights, keys)


# --- C4 -------------------------------------------------------------------------------------------


def _removed(after_seq: int) -> Rights:
    return Rights(
        owner=OWNER.public,
        grants={EDITOR.public: (Grant(0, Role.EDITOR), Grant(after_seq, None, keep_photos=True))},
    )


BEFORE_REMOVAL = Rights(owner=OWNER.public, grants={EDITOR.public: (Grant(0, Role.EDITOR),)})
AFTER_REMOVAL = _removed(7)  # keep_photos, so entries 1..7 stay live and can be checked


@cache
def _c4_entries() -> tuple[tuple[SignedEntry, ...], tuple[SignedEntry, ...], SignedEntry]:
    """E's honest 1..10, E's post-removal 8', 9' and 11, and one owner entry."""
    rng = counter_rng(b"c4")
    chain = AuthorChain(EDITOR, ALBUM)
    honest = tuple(chain.add(0, KEY0, payload(f"e{s}.jpg"), rng) for s in range(1, 11))
    second = AuthorChain(EDITOR, ALBUM, seq=7, head=honest[6].hash)
    rewritten = second.add(0, KEY0, payload("e8-again.jpg"), rng)
    backdated = second.add(0, KEY0, payload("e9-again.jpg"), rng)
    after = AuthorChain(EDITOR, ALBUM, seq=10, head=honest[9].hash)
    eleventh = after.add(0, KEY0, payload("e11.jpg"), rng)
    owners = AuthorChain(OWNER, ALBUM).add(0, KEY0, payload("owner.jpg"), rng)
    return honest, (rewritten, backdated, eleventh), owners


def _c4_items() -> list[SignedEntry]:
    honest, late, owners = _c4_entries()
    return [*honest, *late, owners]


@cache
def _c4_reference() -> AlbumView:
    return _view(_c4_items(), AFTER_REMOVAL)


@st.composite
def _deliveries(draw: st.DrawFn) -> list[int]:
    items = len(_c4_items())
    order = draw(st.permutations([*range(items), RIGHTS_CHANGE]))
    for _ in range(draw(st.integers(0, 3))):  # duplicates, anywhere
        order.insert(draw(st.integers(0, len(order))), draw(st.integers(0, items - 1)))
    return order


def _deliver(
    order: Sequence[int], items: Sequence[SignedEntry]
) -> tuple[AlbumView, set[bytes], set[bytes]]:
    """Feed a peer in `order`, checking invariants at each step: (view, ever accepted, retracted)."""
    state, rights = ManifestState(ALBUM), BEFORE_REMOVAL
    view: AlbumView | None = None
    accepted: set[bytes] = set()
    retracted: set[bytes] = set()
    gone: set[tuple[bytes, bytes]] = set()
    ever_live: set[tuple[bytes, bytes]] = set()
    for item in order:
        if item == RIGHTS_CHANGE:
            rights = AFTER_REMOVAL
        else:
            state.add(items[item].envelope)
        new = evaluate(state, rights, KEYS)
        changes = diff_views(view, new)
        retracted |= {v.hash for v in changes.retracted}
        gone |= {f.key for f in changes.gone}
        ever_live |= {f.key for f in new.files}
        accepted |= new.accepted
        if rights is AFTER_REMOVAL:
            assert all(f.author != EDITOR.public or f.seq <= 7 for f in new.files)
        view = new
    assert view is not None
    assert ever_live - {f.key for f in view.files} <= gone  # every file that left went to trash
    return view, accepted, retracted


@settings(max_examples=500, deadline=None)
@given(_deliveries())
def test_C4_removed_member_backdating(order: list[int]) -> None:
    honest, late, owners = _c4_entries()
    view, accepted, retracted = _deliver(order, _c4_items())
    assert view == _c4_reference()
    good = {s.hash for s in honest[:7]} | {owners.hash}
    bad = {s.hash for s in honest[7:]} | {s.hash for s in late}
    assert view.accepted == good
    assert {v.hash for v in view.rejected} == bad
    assert view.pending == ()
    assert {f.entry_hash for f in view.files} == good
    # Whatever was accepted for a while and then refused was reported as retracted.
    assert accepted & bad == retracted


@settings(max_examples=100, deadline=None)
@given(st.permutations([*range(10), RIGHTS_CHANGE]))
def test_C4_removal_alone_retracts_entries_after_after_seq(order: list[int]) -> None:
    honest = _c4_entries()[0]
    view, accepted, retracted = _deliver(order, honest)
    assert view.accepted == {s.hash for s in honest[:7]}
    assert {v.hash: v.reason for v in view.rejected} == {
        s.hash: Reason.NOT_AUTHORIZED for s in honest[7:]
    }
    assert retracted == accepted - view.accepted
    if order.index(RIGHTS_CHANGE) == len(order) - 1:  # all 10 were live before the removal came
        assert retracted == {s.hash for s in honest[7:]}


def test_C4_late_removal_moves_the_files_to_the_trash() -> None:
    honest = _c4_entries()[0]
    state = ManifestState(ALBUM)
    for signed in honest:
        state.add(signed.envelope)
    before = evaluate(state, BEFORE_REMOVAL, KEYS)
    assert len(before.files) == 10
    after = evaluate(state, AFTER_REMOVAL, KEYS)
    changes = diff_views(before, after)
    assert sorted(f.name for f in changes.gone) == ["e10.jpg", "e8.jpg", "e9.jpg"]
    assert {v.hash for v in changes.retracted} == {s.hash for s in honest[7:]}
    assert all(v.reason is Reason.NOT_AUTHORIZED for v in changes.retracted)
    assert changes.appeared == ()
    assert changes.changed == ()


# --- live files and roles --------------------------------------------------------------------------


def test_live_file_carries_its_latest_version_and_author() -> None:
    rng = counter_rng()
    chain = AuthorChain(EDITOR, ALBUM)
    added = chain.add(0, KEY0, payload("a.jpg"), rng)
    updated = chain.update(0, KEY0, added.entry.file_id, payload("a.jpg", 70_000, mark=b"2"), rng)
    view = _view([updated, added])
    (live,) = view.files
    assert (live.path, live.author, live.added, live.entry_hash) == (
        "a.jpg",
        EDITOR.public,
        added.hash,
        updated.hash,
    )
    assert live.size == 70_000
    assert len(live.chunks) == 1
    assert live.content_hash == payload("a.jpg", mark=b"2").content_hash
    assert live.file_key == payload("a.jpg", mark=b"2").file_key
    assert view.file_at("a.jpg") == live == view.file(live.key)
    assert not live.conflicted
    first = _view([added])
    (changed,) = diff_views(first, view).changed
    assert changed == (first.files[0], live)


def test_viewer_add_is_refused() -> None:
    signed = AuthorChain(VIEWER, ALBUM).add(0, KEY0, payload("v.jpg"), counter_rng())
    view = _view([signed])
    assert view.files == ()
    assert [v.reason for v in view.rejected] == [Reason.NOT_AUTHORIZED]


def test_editor_cannot_remove_anothers_file_but_the_owner_can() -> None:
    rng = counter_rng()
    editor2 = AuthorChain(EDITOR2, ALBUM)
    theirs = editor2.add(0, KEY0, payload("theirs.jpg"), rng)
    attempt = AuthorChain(EDITOR, ALBUM).remove(0, EDITOR2.public, theirs.entry.file_id)
    view = _view([theirs, attempt])
    assert [f.name for f in view.files] == ["theirs.jpg"]
    assert [(v.hash, v.reason) for v in view.rejected] == [(attempt.hash, Reason.NOT_AUTHORIZED)]
    by_owner = AuthorChain(OWNER, ALBUM).remove(0, EDITOR2.public, theirs.entry.file_id)
    assert _view([by_owner, theirs]).files == ()  # a removal that arrives first still applies
    own = editor2.remove(0, EDITOR2.public, theirs.entry.file_id)
    assert _view([theirs, own]).files == ()


def test_photos_leave_with_their_author_unless_kept() -> None:
    signed = AuthorChain(EDITOR, ALBUM).add(0, KEY0, payload("a.jpg"), counter_rng())
    removed = Rights(
        owner=OWNER.public, grants={EDITOR.public: (Grant(0, Role.EDITOR), Grant(1, None))}
    )
    view = _view([signed], removed)
    assert view.files == ()
    assert view.accepted == {signed.hash}
    assert len(_view([signed], _removed(1)).files) == 1


def test_C1_undecryptable_and_out_of_bounds_payloads_only_refuse_their_entry() -> None:
    rng = counter_rng()
    chain = AuthorChain(EDITOR, ALBUM)
    wrong_key = chain.add(1, KEY0, payload("a.jpg"), rng)  # says epoch 1, sealed with epoch 0's key
    fine = chain.add(1, KEY1, payload("b.jpg"), rng)
    view = _view([wrong_key, fine], keys={0: KEY0, 1: KEY1})
    assert [f.name for f in view.files] == ["b.jpg"]
    assert [(v.hash, v.reason) for v in view.rejected] == [(wrong_key.hash, Reason.DECRYPT_FAILED)]
    pending = _view([wrong_key, fine], keys={0: KEY0})
    assert pending.files == ()
    assert {v.reason for v in pending.pending} == {Reason.WRONG_EPOCH}


def test_update_after_a_bad_add_still_shows_the_file() -> None:
    from dataclasses import replace

    from tests.protocol.manifest_helpers import seal_raw

    rng = counter_rng()
    bad = editor_add(1, None, "a.jpg", rng=rng)
    bad = seal_raw(EDITOR, replace(bad.entry, sealed=b""), KEY0, b"garbage")
    chain = AuthorChain(EDITOR, ALBUM, seq=1, head=bad.hash)
    good = chain.update(0, KEY0, bad.entry.file_id, payload("a.jpg"), rng)
    view = _view([bad, good])
    (live,) = view.files
    assert (live.added, live.entry_hash) == (bad.hash, good.hash)
    assert [v.reason for v in view.rejected] == [Reason.MALFORMED]


# --- conflicts ---------------------------------------------------------------------------------


def _adds(*specs: tuple[DeviceKey, str]) -> list[SignedEntry]:
    rng = counter_rng(b"conflicts")
    chains: dict[bytes, AuthorChain] = {}
    out = []
    for key, name in specs:
        chain = chains.setdefault(key.public, AuthorChain(key, ALBUM))
        out.append(chain.add(0, KEY0, payload(name), rng))
    return out


def test_case_only_conflict_keeps_both_with_the_same_names_everywhere() -> None:
    a, b = _adds((EDITOR, "IMG_0001.JPG"), (EDITOR2, "img_0001.jpg"))
    view = _view([a, b])
    assert view == _view([b, a])
    winner, loser = sorted([a, b], key=lambda s: s.hash)
    paths = {f.entry_hash: f.path for f in view.files}
    assert paths[winner.hash] == ("IMG_0001.JPG" if winner is a else "img_0001.jpg")
    loser_name = "img_0001.jpg" if loser is b else "IMG_0001.JPG"
    tag = conflict_tag(loser.entry.author, loser.entry.file_id)
    assert paths[loser.hash] == conflict_name(loser_name, tag)
    assert sum(f.conflicted for f in view.files) == 1


def test_nfd_and_nfc_names_conflict_instead_of_overwriting() -> None:
    a, b = _adds((EDITOR, "e\u0301.jpg"), (EDITOR, "\u00e9.jpg"))
    view = _view([b, a])
    assert len(view.files) == 2
    assert len({f.path for f in view.files}) == 2
    assert {f.name for f in view.files} == {"\u00e9.jpg"}


def test_a_file_named_like_a_directory_gives_way() -> None:
    a, b = _adds((EDITOR, "Trip"), (EDITOR2, "trip/beach.jpg"))
    view = _view([a, b])
    paths = {f.entry_hash: f.path for f in view.files}
    assert paths[b.hash] == "trip/beach.jpg"
    assert paths[a.hash] != "Trip"
    assert paths[a.hash].lower() != "trip"


def test_a_conflict_name_already_in_use_falls_back_to_a_longer_tag() -> None:
    a, b = _adds((EDITOR, "a.jpg"), (EDITOR2, "a.jpg"))
    loser = max(a, b, key=lambda s: s.hash)
    squatted = conflict_name("a.jpg", conflict_tag(loser.entry.author, loser.entry.file_id))
    (squatter,) = _adds((OWNER, squatted))
    view = _view([a, b, squatter])
    paths = sorted(f.path for f in view.files)
    assert len(set(paths)) == 3
    assert squatted in paths
    assert "a.jpg" in paths
    long_tag = conflict_tag(loser.entry.author, loser.entry.file_id, long=True)
    assert conflict_name("a.jpg", long_tag) in paths


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(6)), st.permutations(range(6)))
def test_any_two_delivery_orders_give_the_same_view(first: list[int], second: list[int]) -> None:
    entries = _mixed_entries()
    assert _view([entries[i] for i in first]) == _view([entries[i] for i in second])


@cache
def _mixed_entries() -> tuple[SignedEntry, ...]:
    rng = counter_rng(b"mixed")
    editor, editor2, owner = (AuthorChain(k, ALBUM) for k in (EDITOR, EDITOR2, OWNER))
    one = editor.add(0, KEY0, payload("x/a.jpg"), rng)
    two = editor2.add(0, KEY0, payload("X/A.jpg"), rng)
    three = editor2.add(0, KEY0, payload("x"), rng)
    update = editor.update(0, KEY0, one.entry.file_id, payload("x/a.jpg", 9, mark=b"u"), rng)
    removal = owner.remove(0, EDITOR2.public, two.entry.file_id)
    four = owner.add(0, KEY0, payload("x/a.jpg"), rng)
    return (one, two, three, update, removal, four)


def test_mixed_view_content() -> None:
    view = _view(_mixed_entries())
    assert len(view.files) == 3
    assert len({f.path.casefold() for f in view.files}) == 3
    assert view.rejected == view.pending == ()
