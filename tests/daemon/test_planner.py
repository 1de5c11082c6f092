"""daemon/planner.py: what a view may send to the trash."""

from __future__ import annotations

from daemon.album import LocalFile
from daemon.planner import plan
from protocol.album_view import AlbumView
from protocol.errors import Reason
from protocol.manifest import EntryKind
from protocol.manifest_state import Verdict

AUTHOR = b"a" * 32


def _row(path: str, entry: bytes) -> LocalFile:
    return LocalFile(
        path=path,
        size=1,
        mtime_ns=1,
        inode=1,
        content_hash=b"c" * 32,
        file_author=AUTHOR,
        file_id=path.encode().ljust(16, b"_")[:16],
        entry_hash=entry,
    )


def _view(accepted: set[bytes], rejected: frozenset[bytes] = frozenset()) -> AlbumView:
    verdicts = tuple(
        Verdict(
            hash=h,
            author=AUTHOR,
            seq=1,
            kind=EntryKind.ADD,
            reason=Reason.NOT_AUTHORIZED,
            message="",
        )
        for h in rejected
    )
    return AlbumView(
        files=(), accepted=frozenset(accepted), rejected=verdicts, pending=(), forks=()
    )


def test_a_row_whose_entry_the_view_has_not_judged_is_never_trashed() -> None:
    """A photo this device has just published is indexed before the view that includes it is
    computed; a reconcile with the older view must not trash it (seen: an editor's first photo
    right after joining went to its own trash)."""
    fresh = _row("early.jpg", b"new-entry".ljust(32, b"_"))
    assert plan(_view(accepted=set()), {"early.jpg": fresh}).trash == []


def test_a_removed_or_refused_file_goes_to_the_trash() -> None:
    removed = _row("gone.jpg", b"accepted-add".ljust(32, b"_"))
    refused = _row("forged.jpg", b"refused-add".ljust(32, b"_"))
    steps = plan(
        _view(
            accepted={removed.entry_hash or b""}, rejected=frozenset({refused.entry_hash or b""})
        ),
        {"gone.jpg": removed, "forged.jpg": refused},
    )
    assert sorted(r.path for r in steps.trash) == ["forged.jpg", "gone.jpg"]
