"""daemon/files.py on real folders: marker states, symlink safety, trash, crash-safe finish."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from daemon.files import (
    RESERVED_DIR,
    TRASH_MAX_AGE,
    AlbumFolder,
    FolderError,
    FolderState,
    FolderUnavailableError,
    FsOp,
    LocalChangeError,
    NotInFolderError,
    TrashItem,
    UnsafePathError,
    read_marker,
)

ALBUM = bytes(range(16))
OTHER = bytes(range(1, 17))
T0 = 1_790_000_000.0  # 2026-09-21, an injected "now"


@pytest.fixture
def album(tmp_path: Path) -> AlbumFolder:
    root = tmp_path / "album"
    root.mkdir()
    folder = AlbumFolder(root, ALBUM)
    folder.create_marker()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    (out / "bar").mkdir(parents=True)
    (out / "bar" / "keep.jpg").write_bytes(b"precious")
    (out / "top.jpg").write_bytes(b"also precious")
    return out


def tree_hash(top: Path) -> str:
    """Names, types, link targets and contents of everything under top, without following links."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            digest.update(str(path.relative_to(top)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"L" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(b"F" + path.read_bytes())
    return digest.hexdigest()


def incoming(folder: AlbumFolder, key: str, data: bytes):
    partial = folder.open_partial(key)
    partial.write_at(0, data)
    return partial


# -- D1: the marker --------------------------------------------------------------------------


def test_D1_marker_states(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    folder = AlbumFolder(root, ALBUM)
    assert folder.check() is FolderState.FOLDER_MISSING
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    assert folder.check() is FolderState.MARKER_MISSING
    folder.create_marker()
    assert folder.check() is FolderState.OK
    assert read_marker(root) == ALBUM
    folder.create_marker()  # idempotent
    assert AlbumFolder(root, OTHER).check() is FolderState.WRONG_ALBUM
    with pytest.raises(FolderUnavailableError) as refused:
        AlbumFolder(root, OTHER).create_marker()
    assert refused.value.state is FolderState.WRONG_ALBUM
    assert read_marker(root) == ALBUM


def test_D1_damaged_or_linked_marker_is_wrong_album(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    folder = AlbumFolder(root, ALBUM)
    folder.create_marker()
    (root / RESERVED_DIR / "marker").write_text("something else\n")
    assert folder.check() is FolderState.WRONG_ALBUM
    # a .albumsync that is a link to a folder holding a valid marker is not followed
    other = tmp_path / "other"
    other.mkdir()
    AlbumFolder(other, ALBUM).create_marker()
    os.rename(root / RESERVED_DIR, tmp_path / "old-reserved")
    (root / RESERVED_DIR).symlink_to(other / RESERVED_DIR)
    assert folder.check() is FolderState.WRONG_ALBUM
    with pytest.raises(FolderUnavailableError):
        folder.open_partial("aa")


def test_D1_marker_missing_refuses_every_write(album: AlbumFolder) -> None:
    (album.root / "a.jpg").write_bytes(b"photo")
    partial = incoming(album, "ab", b"new")
    os.remove(album.root / RESERVED_DIR / "marker")
    assert album.check() is FolderState.MARKER_MISSING
    with pytest.raises(FolderUnavailableError) as exc:
        album.require_ok()
    assert exc.value.state is FolderState.MARKER_MISSING
    assert "pauses this album" in exc.value.message
    with pytest.raises(FolderUnavailableError):
        album.move_to_trash("a.jpg", T0)
    with pytest.raises(FolderUnavailableError):
        partial.finish("b.jpg", 0, None)
    with pytest.raises(FolderUnavailableError):
        album.open_partial("cd")
    assert sorted(os.listdir(album.root)) == [RESERVED_DIR, "a.jpg"]


def test_D1_unmounted_folder_is_missing_and_untouched(album: AlbumFolder) -> None:
    os.rename(album.root, album.root.with_name("moved"))
    assert album.check() is FolderState.FOLDER_MISSING
    with pytest.raises(FolderUnavailableError):
        album.open_partial("ab")
    assert not album.root.exists()
    assert read_marker(album.root.with_name("moved")) == ALBUM  # re-associate by the marker


# -- B2: symbolic links ----------------------------------------------------------------------


def test_B2_symlink_trash_does_not_follow(album: AlbumFolder, outside: Path) -> None:
    """CVE-2017-1000420: local foo -> /outside, then a remote removal of foo/bar."""
    before = tree_hash(outside)
    (album.root / "foo").symlink_to(outside, target_is_directory=True)
    (album.root / "link.jpg").symlink_to(outside / "top.jpg")
    for rel in ("foo/bar", "foo/bar/keep.jpg", "foo/top.jpg"):
        with pytest.raises(UnsafePathError):
            album.move_to_trash(rel, T0)
        with pytest.raises(UnsafePathError):
            album.open_read(rel)
    with pytest.raises(UnsafePathError):
        album.move_to_trash("link.jpg", T0)  # the link itself is not a photo
    with pytest.raises(UnsafePathError):
        album.open_read("link.jpg")
    assert album.list_trash() == []
    assert tree_hash(outside) == before
    assert (album.root / "foo").is_symlink()


def test_B2_write_through_symlinked_parent_refused(album: AlbumFolder, outside: Path) -> None:
    before = tree_hash(outside)
    (album.root / "foo").symlink_to(outside, target_is_directory=True)
    (album.root / "link.jpg").symlink_to(outside / "top.jpg")
    partial = incoming(album, "0a", b"payload")
    for rel in ("foo/new.jpg", "foo/bar/new.jpg", "foo/top.jpg"):
        with pytest.raises(UnsafePathError):
            partial.finish(rel, 1_000, None)
    with pytest.raises(LocalChangeError):  # a link where the file goes: not ours to replace
        partial.finish("link.jpg", 1_000, (13, 0))
    assert tree_hash(outside) == before
    done = partial.finish("ok/new.jpg", 1_000, None)
    assert (album.root / "ok" / "new.jpg").read_bytes() == b"payload"
    assert done.size == 7
    assert tree_hash(outside) == before


def test_B2_hostile_relative_paths_refused(album: AlbumFolder) -> None:
    partial = incoming(album, "0b", b"x")
    for rel in (
        "../x",
        "/etc/x",
        "a/../../x",
        "a//b",
        "./a",
        "a/",
        "",
        ".",
        "a\0b",
        ".albumsync/m",
    ):
        with pytest.raises(UnsafePathError):
            partial.finish(rel, 0, None)
    assert sorted(os.listdir(album.root)) == [RESERVED_DIR]
    with pytest.raises(UnsafePathError):
        album.open_partial("../x")


def test_B2_race_swapping_subdir_for_symlink(album: AlbumFolder, outside: Path) -> None:
    """B2(b), 100 iterations (1,000 nightly): `sub` swapped for a link while files are finished."""
    before = tree_hash(outside)
    sub, aside = album.root / "sub", album.root / "sub-aside"
    sub.mkdir()
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            swaps += 1
            with contextlib.suppress(OSError):
                os.rename(sub, aside)
            with contextlib.suppress(OSError):
                os.symlink(outside, sub)
            time.sleep(0.0002)  # hold the link in place for a while
            with contextlib.suppress(OSError):
                os.unlink(sub)  # only succeeds on the link
            with contextlib.suppress(OSError):
                os.rename(aside, sub)
            time.sleep(0.0002)  # let some finishes through as well

    thread = threading.Thread(target=swapper)
    thread.start()
    finished = refused = 0
    try:
        for i in range(100):
            partial = incoming(album, f"{i:04x}", f"photo {i}".encode())
            try:
                partial.finish(f"sub/{i}.jpg", 1_000, None)
                finished += 1
            except FolderError:  # refused (a link in the way) or raced away: never written outside
                partial.discard()
                refused += 1
            if i % 2:  # removals under the same race
                with contextlib.suppress(FolderError):
                    album.move_to_trash(f"sub/{i - 1}.jpg", T0)
    finally:
        stop.set()
        thread.join()
    assert tree_hash(outside) == before
    print(f"\nB2(b): {finished} finished, {refused} refused, during {swaps} swaps of sub")
    found = [p for p in album.root.rglob("*.jpg") if not p.is_symlink()]
    assert all(outside not in p.parents for p in found)


# -- D2: trash -------------------------------------------------------------------------------


def test_D2_trash_move_restore_purge(album: AlbumFolder) -> None:
    trip = album.root / "2024" / "trip"
    trip.mkdir(parents=True)
    (trip / "a.jpg").write_bytes(b"A")
    (trip / "notes.txt").write_bytes(b"someone's unsynced notes")
    (album.root / "2024" / "solo").mkdir()
    (album.root / "2024" / "solo" / "b.jpg").write_bytes(b"B")
    inode = (trip / "a.jpg").stat().st_ino

    item = album.move_to_trash("2024/trip/a.jpg", T0)
    assert not (trip / "a.jpg").exists()
    assert (trip / "notes.txt").exists()  # the folder holding an unknown file stays
    trashed = album.root / item.trash_rel
    assert trashed.read_bytes() == b"A"
    assert trashed.stat().st_ino == inode  # renamed, never copied
    album.move_to_trash("2024/solo/b.jpg", T0 + 5)
    assert not (album.root / "2024" / "solo").exists()  # emptied folder pruned
    assert (album.root / "2024").is_dir()

    items = album.list_trash()
    assert [(i.rel, i.trashed_at) for i in items] == [
        ("2024/trip/a.jpg", T0),
        ("2024/solo/b.jpg", T0 + 5),
    ]
    assert album.restore(items[0]) == "2024/trip/a.jpg"
    assert (trip / "a.jpg").read_bytes() == b"A"
    (album.root / "2024" / "solo").mkdir()
    (album.root / "2024" / "solo" / "b.jpg").write_bytes(b"newer B")
    assert album.restore(items[1]) == "2024/solo/b (restored).jpg"
    assert (album.root / "2024" / "solo" / "b.jpg").read_bytes() == b"newer B"
    assert album.list_trash() == []
    assert os.listdir(album.root / RESERVED_DIR / "trash") == []


def test_D2_same_path_twice_in_one_second_gets_its_own_batch(album: AlbumFolder) -> None:
    for content in (b"v1", b"v2", b"v3"):
        (album.root / "a.jpg").write_bytes(content)
        album.move_to_trash("a.jpg", T0 + 0.5)
    items = album.list_trash()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(T0))
    assert [i.batch for i in items] == [stamp, f"{stamp}-2", f"{stamp}-3"]
    assert [(album.root / i.trash_rel).read_bytes() for i in items] == [b"v1", b"v2", b"v3"]


def test_D2_purge_only_after_max_age(album: AlbumFolder) -> None:
    for i, age_days in enumerate((31, 30, 29, 1)):
        (album.root / f"{i}.jpg").write_bytes(b"x")
        album.move_to_trash(f"{i}.jpg", T0 - age_days * 86400)
    junk = album.root / RESERVED_DIR / "trash" / "not-a-batch"
    junk.mkdir()
    assert album.purge_trash(T0 - 1, max_age=TRASH_MAX_AGE * 2) == 0
    assert album.purge_trash(T0) == 2  # 31 and exactly 30 days old
    assert sorted(i.rel for i in album.list_trash()) == ["2.jpg", "3.jpg"]
    assert junk.is_dir()  # only albumsync's own batches are purged


def test_D2_trash_refuses_a_locally_changed_file(album: AlbumFolder) -> None:
    (album.root / "a.jpg").write_bytes(b"edited here")
    with pytest.raises(LocalChangeError):
        album.move_to_trash("a.jpg", T0, expected=(3, 0))
    assert (album.root / "a.jpg").read_bytes() == b"edited here"
    with pytest.raises(NotInFolderError):
        album.move_to_trash("missing.jpg", T0)


def test_D2_trash_purge_does_not_follow_links(album: AlbumFolder, outside: Path) -> None:
    before = tree_hash(outside)
    (album.root / "a.jpg").write_bytes(b"x")
    item = album.move_to_trash("a.jpg", T0)
    (album.root / item.trash_rel).parent.joinpath("evil").symlink_to(outside)
    assert album.purge_trash(T0 + TRASH_MAX_AGE) == 1
    assert tree_hash(outside) == before


def test_D2_trash_refuses_linked_trash_and_crafted_items(album: AlbumFolder, outside: Path) -> None:
    before = tree_hash(outside)
    (album.root / "a.jpg").write_bytes(b"a")
    for rel in ("../a.jpg", "a.jpg/../../x", ".albumsync/marker"):
        with pytest.raises(UnsafePathError):
            album.restore(TrashItem(rel, "20260101T000000", 0.0))
    with pytest.raises(UnsafePathError):
        album.restore(TrashItem("a.jpg", "../../outside", 0.0))
    trash = album.root / RESERVED_DIR / "trash"
    os.rmdir(trash)
    trash.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        album.move_to_trash("a.jpg", T0)
    with pytest.raises(UnsafePathError):
        album.purge_trash(T0 + TRASH_MAX_AGE * 10)
    assert (album.root / "a.jpg").read_bytes() == b"a"
    assert tree_hash(outside) == before


# -- E3: write ordering ----------------------------------------------------------------------


def test_E3_finish_op_order_and_every_state_old_or_new(tmp_path: Path) -> None:
    root = tmp_path / "album"
    root.mkdir()
    ops: list[FsOp] = []
    seen: list[bytes | None] = []
    final = root / "d" / "a.jpg"

    def record(op: FsOp) -> None:
        ops.append(op)
        seen.append(final.read_bytes() if final.exists() else None)

    folder = AlbumFolder(root, ALBUM, on_op=record)
    folder.create_marker()
    final.parent.mkdir()
    final.write_bytes(b"old version")
    old = final.stat()
    ops.clear()
    seen.clear()
    partial = folder.open_partial("e3")
    partial.write_at(0, b"new ")
    partial.write_at(4, b"version!")
    done = partial.finish("d/a.jpg", 1_700_000_000_123_456_789, (old.st_size, old.st_mtime_ns))

    names = [(op.op, op.path) for op in ops]
    tmp = f"{RESERVED_DIR}/tmp/e3.part"
    last_write = max(i for i, n in enumerate(names) if n == ("write", tmp))
    fsync = names.index(("fsync", tmp))
    rename = next(i for i, op in enumerate(ops) if op == FsOp("rename", tmp, "d/a.jpg"))
    fsync_dir = names.index(("fsync_dir", "d"), rename)
    assert last_write < fsync < rename < fsync_dir
    assert all(s in (b"old version", b"new version!") for s in seen)  # crash at any op: old or new
    assert final.read_bytes() == b"new version!"
    assert final.stat().st_mtime_ns == 1_700_000_000_123_456_789 == done.mtime_ns
    assert done.replaced is not None
    assert (root / done.replaced.trash_rel).read_bytes() == b"old version"
    assert os.listdir(root / RESERVED_DIR / "tmp") == []


def test_finish_refuses_an_unexpected_file_and_keeps_the_partial(album: AlbumFolder) -> None:
    (album.root / "a.jpg").write_bytes(b"made here")
    partial = incoming(album, "c1", b"from a peer")
    with pytest.raises(LocalChangeError):
        partial.finish("a.jpg", 1_000, None)
    with pytest.raises(LocalChangeError):
        partial.finish("a.jpg", 1_000, (9, 12345))
    assert (album.root / "a.jpg").read_bytes() == b"made here"
    done = partial.finish("a (conflict).jpg", 1_000, None)  # the caller's conflict copy
    assert (album.root / done.rel).read_bytes() == b"from a peer"
    assert album.list_trash() == []


def test_resume_partial_after_restart(album: AlbumFolder) -> None:
    data = os.urandom(300_000)
    first = album.open_partial("feed")
    first.write_at(0, data[:150_000])
    first.close()  # the daemon stops here
    assert album.partial_keys() == ["feed"]
    again = AlbumFolder(album.root, ALBUM).open_partial("feed")
    assert again.size == 150_000
    assert again.read_at(0, 150_000) == data[:150_000]
    again.write_at(150_000, data[150_000:])
    done = again.finish("big.bin", 5_000_000_000, None)
    assert (album.root / "big.bin").read_bytes() == data
    assert done.size == len(data)
    assert album.partial_keys() == []
    gone = album.open_partial("dead")
    gone.discard()
    assert album.partial_keys() == []


def test_nfd_name_on_disk_is_found_by_its_nfc_path(album: AlbumFolder) -> None:
    nfd, nfc = "e\u0301t\u00e9", "\u00e9t\u00e9"  # "été" as macOS writes it vs. the manifest
    (album.root / nfd).mkdir()
    (album.root / nfd / "caf\u0065\u0301.jpg").write_bytes(b"old")
    fd = album.open_read(f"{nfc}/caf\u00e9.jpg")
    os.close(fd)
    old = album.stat(f"{nfc}/caf\u00e9.jpg")
    partial = incoming(album, "cafe", b"new")
    partial.finish(f"{nfc}/caf\u00e9.jpg", 1_000, (old.st_size, old.st_mtime_ns))
    assert os.listdir(album.root / nfd) == ["caf\u0065\u0301.jpg"]  # no duplicate appears
    assert (album.root / nfd / "caf\u0065\u0301.jpg").read_bytes() == b"new"


def test_open_read_never_blocks_on_a_fifo(album: AlbumFolder) -> None:
    os.mkfifo(album.root / "pipe.jpg")
    start = time.monotonic()
    with pytest.raises(UnsafePathError):
        album.open_read("pipe.jpg")
    assert time.monotonic() - start < 1
