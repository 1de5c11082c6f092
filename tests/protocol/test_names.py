"""The file-name gate: hostile names (B1), Unicode normalisation (B7), reserved names (B8)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, Reason, VerificationError
from protocol.names import (
    MAX_COMPONENT_BYTES,
    MAX_COMPONENTS,
    MAX_FOLDER_BYTES,
    MAX_PATH_BYTES,
    collision_key,
    conflict_name,
    is_reserved_local,
    safe_relative_path,
)


def _folder(size: int) -> str:
    """A folder path of exactly `size` bytes made of components of at most 255 bytes."""
    parts: list[str] = []
    while size > MAX_COMPONENT_BYTES:
        parts.append("d" * 200)
        size -= 201
    parts.append("d" * size)
    folder = "/".join(parts)
    return folder


B1_HOSTILE = {
    "../x": "'..' part",
    "/etc/x": "absolute path",
    "a/../../x": "'..' part",
    "a//b": "empty part",
    "./a": "'.' part",
    "a/": "ends with '/'",
    "": "empty",
    ".": "'.' part",
    "..": "'..' part",
    "a\0b": "control character",
    "\x1b[31mred\x1b[0m.jpg": "control character",
    "x\x9b31m.jpg": "control character",
    "x\x7f.jpg": "control character",
    "line\nbreak.jpg": "control character",
    "..\\x": "backslash",
    "a\\b": "backslash",
    "\\x": "absolute path",
    "C:\\x": "Windows drive",
    "C:x": "Windows drive",
    "x" * 256: "256 UTF-8 bytes",
    "é" * 128: "256 UTF-8 bytes",
    "a/" * 2500: "4096",
    ("é" * 120 + "/") * 17 + "x": "4098 UTF-8 bytes, over the limit of 4096",
    "gpj.\u202eexe": "text-direction control",
    "a\u2066b": "text-direction control",
    "a\u2028b": "line separator",
    "a\ud800b": "surrogate",
    ".albumsync/marker": "reserved for albumsync",
    "sub/.albumsync-tmp": "reserved for albumsync",
    ".ALBUMSYNC": "reserved for albumsync",
}

B8_RESERVED = {
    "CON": "reserved device name",
    "aux.jpg": "reserved device name",
    "LPT1": "reserved device name",
    "photos/nul.tar.gz": "reserved device name",
    "Com9.png": "reserved device name",
    "COM¹": "reserved device name",
    "con .txt": "reserved device name",
    "name.": "dot or a space",
    "name ": "dot or a space",
    "dir./x": "dot or a space",
    "a:b": "Windows drive",
    "dir/a:b": "':'",
    "a?b": "'?'",
    "a*b": "'*'",
    "a<b": "'<'",
    "a>b": "'>'",
    'a"b': "'\"'",
    "a|b": "'|'",
}


@pytest.mark.parametrize(("name", "problem"), B1_HOSTILE.items())
def test_B1_hostile_names(name: str, problem: str) -> None:
    with pytest.raises(VerificationError, match=problem) as info:
        safe_relative_path(name)
    assert info.value.reason is Reason.UNSAFE_NAME
    assert len(info.value.message) < 300  # a 5,000-byte name does not flood the log


@pytest.mark.parametrize(("name", "problem"), B8_RESERVED.items())
def test_B8_reserved_and_special_names(name: str, problem: str) -> None:
    with pytest.raises(VerificationError, match=problem.replace("?", r"\?").replace("*", r"\*")):
        safe_relative_path(name)


@pytest.mark.parametrize(
    "name",
    [
        "IMG_0001.jpg",
        "Trip 2026/day 1/IMG_0001.JPG",
        ".hidden",
        "a.b.c",
        "console.jpg",
        "COM10",
        "auxiliary/x",
        "albumsync/x",
        "x.albumsync",
        "emoji 👨‍👩‍👧.png",
        "日本語/写真.jpg",
        "x" * MAX_COMPONENT_BYTES,
        "/".join(["d"] * (MAX_COMPONENTS - 1) + ["f"]),
        _folder(MAX_FOLDER_BYTES) + "/" + "f" * MAX_COMPONENT_BYTES,
    ],
)
def test_ordinary_names_pass_unchanged(name: str) -> None:
    assert safe_relative_path(name) == name


def test_bounds_are_exact() -> None:
    with pytest.raises(VerificationError, match="parts"):
        safe_relative_path("/".join(["d"] * MAX_COMPONENTS + ["f"]))
    with pytest.raises(VerificationError, match="folder part"):
        safe_relative_path(_folder(MAX_FOLDER_BYTES + 1) + "/f")
    assert MAX_FOLDER_BYTES + 1 + MAX_COMPONENT_BYTES == MAX_PATH_BYTES


def test_B7_nfd_name_comes_out_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "dir/é.jpg")
    assert len(nfd) == len("dir/é.jpg") + 1
    assert safe_relative_path(nfd) == unicodedata.normalize("NFC", "dir/é.jpg")
    assert collision_key(nfd) == collision_key("dir/é.jpg") == collision_key("DIR/É.JPG")
    assert collision_key("a.jpg") != collision_key("b.jpg")


def test_B6_case_variants_share_a_collision_key() -> None:
    assert collision_key("IMG_0001.JPG") == collision_key("img_0001.jpg")
    assert collision_key("Straße.jpg") == collision_key("STRASSE.JPG")


def test_is_reserved_local() -> None:
    assert is_reserved_local(".albumsync")
    assert is_reserved_local(".AlbumSync/tmp/x.part")
    assert is_reserved_local("a/.albumsync")
    assert not is_reserved_local("albumsync.txt")
    assert not is_reserved_local("a/b.jpg")


def test_conflict_name_examples() -> None:
    assert conflict_name("dir/IMG_0001.jpg", "abc1234") == "dir/IMG_0001 (conflict abc1234).jpg"
    assert conflict_name("notes", "t") == "notes (conflict t)"
    assert conflict_name(".hidden", "t") == ".hidden (conflict t)"
    assert conflict_name("a.tar.gz", "t") == "a.tar (conflict t).gz"
    assert conflict_name("e\u0301.jpg", "t") == "\u00e9 (conflict t).jpg"
    long_ext = "a." + "x" * 40
    assert conflict_name(long_ext, "t") == long_ext + " (conflict t)"


def test_conflict_name_stays_within_the_component_bound() -> None:
    tag = "T" * 128
    for name in ("x" * 255, "é" * 120 + ".jpg", _folder(MAX_FOLDER_BYTES) + "/" + "f" * 255):
        out = conflict_name(name, tag)
        assert len(out.rpartition("/")[2].encode()) <= MAX_COMPONENT_BYTES
        assert out.endswith(f" (conflict {tag})" + (".jpg" if name.endswith(".jpg") else ""))
        assert safe_relative_path(out) == out


def test_conflict_of_a_truncated_conflict_copy_is_still_new() -> None:
    first = conflict_name("x" * 255 + "", "t")
    assert conflict_name(first, "t") not in (first, "x" * 255)


def test_conflict_name_refuses_bad_tags_and_paths() -> None:
    for tag in ("", "a b", "a/b", "é", "-a", "x" * 129, "a)"):
        with pytest.raises(LocalProtocolError, match="conflict tag"):
            conflict_name("a.jpg", tag)
    with pytest.raises(VerificationError):
        conflict_name("../a.jpg", "t")


_NAME_CHARS = st.characters(codec="utf-8") | st.sampled_from("/.\\: \u0301\x00éÉ")


@given(st.text(_NAME_CHARS, max_size=60))
@example("é/x")
@example(unicodedata.normalize("NFD", "é.jpg"))
@example("\u226e")  # "not less than": NFD holds '<', NFC does not
@example("<\u0338")
@settings(max_examples=500)
def test_safe_relative_path_is_a_fixed_point_or_refuses(name: str) -> None:
    try:
        path = safe_relative_path(name)
    except VerificationError as exc:
        if exc.reason is not Reason.UNSAFE_NAME:
            raise
        return
    assert unicodedata.is_normalized("NFC", path)
    assert not path.startswith("/")
    assert ".." not in path.split("/")
    assert "\\" not in path
    assert len(path.encode()) <= MAX_PATH_BYTES
    assert safe_relative_path(path) == path


_TAGS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,40}", fullmatch=True)


@given(st.text(_NAME_CHARS, min_size=1, max_size=300), _TAGS)
@example("x" * 255, "t")
@example("x" * 242 + " (conflict t)", "t")
@example("é" * 127, "abc")
@settings(max_examples=300)
def test_conflict_name_is_safe_and_different(name: str, tag: str) -> None:
    try:
        path = safe_relative_path(name)
    except VerificationError:
        return
    out = conflict_name(path, tag)
    assert safe_relative_path(out) == out
    assert out != path
    assert collision_key(out) != collision_key(path)
    assert out.rpartition("/")[0] == path.rpartition("/")[0]
    assert conflict_name(path, tag) == out
