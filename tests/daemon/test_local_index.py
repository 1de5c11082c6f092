"""LocalIndex: the by-file lookup always agrees with a scan of every row."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.album import LocalFile, LocalIndex

PATHS = ["a.jpg", "b.jpg", "c/d.jpg", "e.jpg"]
FILES = [None, (b"A" * 32, b"1" * 16), (b"A" * 32, b"2" * 16), (b"B" * 32, b"1" * 16)]


def _row(path: str, file: tuple[bytes, bytes] | None) -> LocalFile:
    author, file_id = file if file is not None else (None, None)
    return LocalFile(path=path, size=1, mtime_ns=1, inode=1, file_author=author, file_id=file_id)


operations = st.lists(
    st.tuples(
        st.sampled_from(["set", "del", "pop", "pop_missing", "clear"]),
        st.sampled_from(PATHS),
        st.sampled_from(FILES),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_holding_matches_a_full_scan(
    ops: list[tuple[str, str, tuple[bytes, bytes] | None]],
) -> None:
    index = LocalIndex()
    for op, path, file in ops:
        if op == "set":
            index[path] = _row(path, file)
        elif op == "del" and path in index:
            del index[path]
        elif op == "pop":
            index.pop(path, None)
        elif op == "pop_missing":
            assert index.pop("nowhere.jpg", None) is None
        elif op == "clear":
            index.clear()
        for key in FILES[1:]:
            assert key is not None
            scanned = sorted((r for r in index.values() if r.file == key), key=lambda r: r.path)
            assert index.holding(key) == scanned


def test_rows_given_at_construction_are_indexed() -> None:
    key = FILES[1]
    assert key is not None
    index = LocalIndex([("a.jpg", _row("a.jpg", key)), ("b.jpg", _row("b.jpg", None))])
    assert [r.path for r in index.holding(key)] == ["a.jpg"]
    assert index.pop("a.jpg").path == "a.jpg"  # type: ignore[union-attr]
    assert index.holding(key) == []
