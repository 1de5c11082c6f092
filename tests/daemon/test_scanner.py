"""daemon/scanner.py on real folders: special files, odd names, change detection, hashing."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import scanner
from daemon.files import (
    RESERVED_DIR,
    AlbumFolder,
    FileChangedError,
    FolderState,
    FolderUnavailableError,
)
from daemon.scanner import (
    FileTooLargeError,
    KnownFile,
    ScanResult,
    hash_file_blocking,
    read_chunk_blocking,
    scan_blocking,
)
from protocol.chunks import CHUNK_SIZE, MAX_FILE_SIZE, chunk_id, encrypt_chunk
from protocol.names import MAX_COMPONENTS

ALBUM = bytes(range(16))
KEY = bytes(range(32))
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def album(tmp_path: Path) -> AlbumFolder:
    root = tmp_path / "album"
    root.mkdir()
    folder = AlbumFolder(root, ALBUM)
    folder.create_marker()
    return folder


def known_from(result: ScanResult) -> dict[str, KnownFile]:
    files = result.changed + result.unchanged
    return {f.path: KnownFile(f.size, f.mtime_ns, f.inode) for f in files}


def problem_paths(result: ScanResult) -> dict[str, str]:
    return {p.path: p.message for p in result.problems}


# -- B8: special files and names -------------------------------------------------------------


def test_B8_special_files_skipped_scan_never_blocks(album: AlbumFolder, tmp_path: Path) -> None:
    root = album.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"s")
    (root / "a.jpg").write_bytes(b"a")
    os.link(root / "a.jpg", root / "a-hardlink.jpg")
    os.mkfifo(root / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    (root / "link.jpg").symlink_to(root / "a.jpg")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "locked.jpg").write_bytes(b"locked")
    os.chmod(root / "locked.jpg", 0)
    bad = os.path.join(os.fsencode(root), b"\xff.jpg")
    with open(bad, "wb") as f:
        f.write(b"not utf-8")
    if IS_ROOT:
        os.mknod(root / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))

    start = time.monotonic()
    result = scan_blocking(album, {})
    elapsed = time.monotonic() - start
    sock.close()

    assert elapsed < 5
    # "locked.jpg" is listed as root and as a user (stat needs no read permission)
    assert [f.path for f in result.changed] == ["a-hardlink.jpg", "a.jpg", "locked.jpg"]
    problems = problem_paths(result)
    assert "FIFO" in problems["fifo.jpg"]
    assert "socket" in problems["sock.jpg"]
    assert "symbolic link" in problems["link.jpg"]
    assert "symbolic link" in problems["linkdir"]
    assert "UTF-8" in problems["\\xff.jpg"]
    if IS_ROOT:
        assert "device" in problems["null.jpg"]
    assert result.vanished == []
    assert not any("secret" in p for p in [f.path for f in result.changed] + list(problems))


def test_B8_unreadable_file_fails_hashing_for_a_user(album: AlbumFolder) -> None:
    (album.root / "locked.jpg").write_bytes(b"locked")
    os.chmod(album.root / "locked.jpg", 0)
    if IS_ROOT:
        pytest.skip("root ignores mode bits; E6 runs this as the unprivileged test user")
    from daemon.files import FolderIOError

    with pytest.raises(FolderIOError) as exc:
        hash_file_blocking(album, "locked.jpg", KEY)
    assert "Permission denied" in exc.value.message


def test_B8_reserved_names_reported_not_synced(album: AlbumFolder) -> None:
    for name in ("CON", "aux.jpg", "ok.jpg"):
        (album.root / name).write_bytes(b"x")
    result = scan_blocking(album, {})
    assert [f.path for f in result.changed] == ["ok.jpg"]
    problems = problem_paths(result)
    assert set(problems) == {"CON", "aux.jpg"}
    assert all(m.startswith("not synced") for m in problems.values())


def test_B7_nfd_name_maps_to_nfc_and_duplicates_are_reported(album: AlbumFolder) -> None:
    nfc, nfd = "\u00e9t\u00e9.jpg", "e\u0301te\u0301.jpg"
    (album.root / "mac").mkdir()
    (album.root / "mac" / nfd).write_bytes(b"from a Mac")
    result = scan_blocking(album, {})
    assert [f.path for f in result.changed] == [f"mac/{nfc}"]
    (album.root / "mac" / nfc).write_bytes(b"the NFC twin")
    result = scan_blocking(album, {})
    assert [f.path for f in result.changed] == [f"mac/{nfc}"]
    assert result.changed[0].size == len(b"the NFC twin")  # the NFC spelling wins
    assert "Unicode" in problem_paths(result)[f"mac/{nfd}"]


def test_file_over_the_protocol_limit_is_reported(album: AlbumFolder) -> None:
    with open(album.root / "huge.mkv", "wb") as f:
        f.truncate(MAX_FILE_SIZE + 1)  # sparse: no disk space used
    result = scan_blocking(album, {})
    assert result.changed == []
    assert "64 GiB" in problem_paths(result)["huge.mkv"]
    with pytest.raises(FileTooLargeError):
        hash_file_blocking(album, "huge.mkv", KEY)


def test_deep_nesting_stops_at_the_protocol_limit(album: AlbumFolder) -> None:
    deep = album.root.joinpath(*["d"] * 70)
    deep.mkdir(parents=True)
    (deep / "x.jpg").write_bytes(b"x")
    (album.root / "d" / "ok.jpg").write_bytes(b"ok")
    result = scan_blocking(album, {})
    assert [f.path for f in result.changed] == ["d/ok.jpg"]
    assert [p.path.count("/") + 1 for p in result.problems] == [MAX_COMPONENTS]


# -- D1/D2: the folder and the trash ---------------------------------------------------------


def test_D1_scan_refuses_an_unmarked_or_missing_folder(album: AlbumFolder) -> None:
    (album.root / "a.jpg").write_bytes(b"a")
    known = known_from(scan_blocking(album, {}))
    os.remove(album.root / RESERVED_DIR / "marker")
    with pytest.raises(FolderUnavailableError):
        scan_blocking(album, known)
    os.rename(album.root, album.root.with_name("elsewhere"))
    with pytest.raises(FolderUnavailableError):
        scan_blocking(album, known)


@pytest.mark.root
def test_D1_unmounted_tmpfs_is_never_read_as_deleted(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "album"
    root.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)]
    if subprocess.run(mount, check=False, capture_output=True).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    folder = AlbumFolder(root, ALBUM)
    try:
        folder.create_marker()
        (root / "a.jpg").write_bytes(b"a")
        known = known_from(scan_blocking(folder, {}))
        assert list(known) == ["a.jpg"]
    finally:
        umount = subprocess.run(["umount", str(root)], check=False, capture_output=True)
    assert umount.returncode == 0, umount.stderr  # albumsync holds no fd that blocks an unmount
    assert folder.check() is FolderState.MARKER_MISSING
    with pytest.raises(FolderUnavailableError):
        scan_blocking(folder, known)
    subprocess.run(mount, check=True)  # D1(b): an empty disk mounted in its place
    try:
        assert folder.check() is FolderState.MARKER_MISSING
        with pytest.raises(FolderUnavailableError):
            scan_blocking(folder, known)
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_D2_trash_and_temporary_files_never_scanned(album: AlbumFolder) -> None:
    (album.root / "a.jpg").write_bytes(b"a")
    album.move_to_trash("a.jpg", 1_790_000_000.0)
    partial = album.open_partial("beef")
    partial.write_at(0, b"incoming")
    partial.close()
    result = scan_blocking(album, {"a.jpg": KnownFile(1, 0, 0)})
    assert result.changed == []
    assert result.problems == []
    assert result.vanished == ["a.jpg"]


# -- change detection ------------------------------------------------------------------------


def test_new_changed_unchanged_vanished(album: AlbumFolder) -> None:
    root = album.root
    (root / "d").mkdir()
    for name in ("keep.jpg", "edit.jpg", "gone.jpg", "d/deep.jpg"):
        (root / name).write_bytes(name.encode())
    known = known_from(scan_blocking(album, {}))
    (root / "edit.jpg").write_bytes(b"edited, longer")
    os.remove(root / "gone.jpg")
    (root / "d" / "new.jpg").write_bytes(b"new")
    result = scan_blocking(album, known)
    assert [f.path for f in result.changed] == ["d/new.jpg", "edit.jpg"]
    assert [f.path for f in result.unchanged] == ["d/deep.jpg", "keep.jpg"]
    assert result.vanished == ["gone.jpg"]


def test_only_scans_the_given_paths(album: AlbumFolder) -> None:
    root = album.root
    (root / "sub").mkdir()
    (root / "sub" / "old.jpg").write_bytes(b"o")
    (root / "top.jpg").write_bytes(b"t")
    known = known_from(scan_blocking(album, {}))
    os.remove(root / "sub" / "old.jpg")
    (root / "sub" / "inner").mkdir()
    (root / "sub" / "inner" / "new.jpg").write_bytes(b"n")
    os.remove(root / "top.jpg")  # outside the scope: not looked at
    result = scan_blocking(album, known, only={"sub", "sub/inner/new.jpg"})
    assert [f.path for f in result.changed] == ["sub/inner/new.jpg"]
    assert result.vanished == ["sub/old.jpg"]
    gone = scan_blocking(album, known, only={"sub/old.jpg", "nothing/here.jpg"})
    assert gone.vanished == ["sub/old.jpg"]
    assert gone.changed == []


def test_folder_replaced_by_a_link_is_not_followed(album: AlbumFolder, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    (album.root / "sub").mkdir()
    (album.root / "sub" / "x.jpg").write_bytes(b"x")
    known = known_from(scan_blocking(album, {}))
    os.rename(album.root / "sub", tmp_path / "sub-moved")
    (album.root / "sub").symlink_to(outside, target_is_directory=True)
    for only in (None, {"sub/x.jpg"}):
        result = scan_blocking(album, known, only=only)
        assert result.changed == []
        assert result.vanished == ["sub/x.jpg"]


def test_unreadable_folder_is_unknown_not_vanished(album: AlbumFolder) -> None:
    if IS_ROOT:
        pytest.skip("root reads any folder; E6 runs this as the unprivileged test user")
    (album.root / "private").mkdir()
    (album.root / "private" / "x.jpg").write_bytes(b"x")
    known = known_from(scan_blocking(album, {}))
    os.chmod(album.root / "private", 0)
    try:
        result = scan_blocking(album, known)
    finally:
        os.chmod(album.root / "private", 0o755)
    assert result.vanished == []
    assert "private" in problem_paths(result)


# -- hashing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE])
def test_hash_chunks_match_the_bytes(album: AlbumFolder, size: int) -> None:
    data = os.urandom(size)
    (album.root / "f.bin").write_bytes(data)
    hashed = hash_file_blocking(album, "f.bin", KEY)
    assert hashed.content_hash == hashlib.sha256(data).digest()
    assert hashed.size == size
    assert [c.size for c in hashed.chunks] == [
        len(data[i : i + CHUNK_SIZE]) for i in range(0, size, CHUNK_SIZE)
    ]
    for i, ref in enumerate(hashed.chunks):
        block = data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        expected = encrypt_chunk(KEY, i, block)
        assert ref.chunk_id == chunk_id(expected)
        assert read_chunk_blocking(album, "f.bin", i, KEY, expected_id=ref.chunk_id) == expected


def test_read_chunk_detects_a_changed_file(album: AlbumFolder) -> None:
    (album.root / "f.bin").write_bytes(os.urandom(2 * CHUNK_SIZE))
    hashed = hash_file_blocking(album, "f.bin", KEY)
    (album.root / "f.bin").write_bytes(os.urandom(2 * CHUNK_SIZE))
    with pytest.raises(FileChangedError):
        read_chunk_blocking(album, "f.bin", 1, KEY, expected_id=hashed.chunks[1].chunk_id)
    (album.root / "f.bin").write_bytes(b"short")
    with pytest.raises(FileChangedError):
        read_chunk_blocking(album, "f.bin", 1, KEY)


def test_D5_file_growing_during_hashing_is_refused(album: AlbumFolder) -> None:
    path = album.root / "growing.bin"
    path.write_bytes(os.urandom(48 << 20))
    done = threading.Event()

    def append() -> None:
        with open(path, "ab") as f:
            while not done.is_set():
                f.write(b"+")
                f.flush()
                time.sleep(0.001)

    thread = threading.Thread(target=append)
    thread.start()
    try:
        time.sleep(0.01)
        with pytest.raises(FileChangedError):
            hash_file_blocking(album, "growing.bin", KEY)
    finally:
        done.set()
        thread.join()
    quiet = hash_file_blocking(album, "growing.bin", KEY)
    assert quiet.size == path.stat().st_size


def test_hash_throughput_256_mib(album: AlbumFolder) -> None:
    """Measured, not asserted: MB/s of SHA-256 + AES-256-GCM + chunk IDs on one core."""
    block = os.urandom(1 << 20)
    with open(album.root / "big.bin", "wb") as f:
        for _ in range(256):
            f.write(block)
    start = time.perf_counter()
    hashed = hash_file_blocking(album, "big.bin", KEY)
    elapsed = time.perf_counter() - start
    assert hashed.size == 256 << 20
    print(f"\nhash_file_blocking: {hashed.size / elapsed / 1e6:.0f} MB/s over 256 MiB")


_parts = st.sampled_from(["a", "b", "a b", "ab", "é"])
_paths = st.lists(_parts, min_size=1, max_size=3).map("/".join)


@settings(max_examples=300, deadline=None)
@given(path=_paths, prefixes=st.lists(st.one_of(_paths, st.just("")), max_size=4))
def test_under_means_equal_or_inside(path: str, prefixes: list[str]) -> None:
    """The parent walk agrees with the definition: equal to a prefix, inside one, or "" (all)."""
    expected = any(p in {"", path} or path.startswith(p + "/") for p in prefixes)
    assert scanner._under(path, set(prefixes)) is expected
    assert scanner._under(path, prefixes) is expected
