"""File names from peers: the one gate that turns an untrusted name into a safe relative path.

`safe_relative_path` accepts only a relative POSIX path in NFC that every filesystem we meet can
hold as one file inside the album folder, and refuses everything else with a sentence naming the
problem: no absolute or drive paths, no `.`/`..`/empty components, no control characters (C0, C1,
DEL, so no escape sequences), no bidi overrides or line separators (they disguise names in the UI
and logs), none of `\\ < > : " | ? *`, no Windows device names (also with an extension), no
component ending in `.` or space, and nothing under the album's reserved `.albumsync` prefix.

Bounds: a component has at most 255 UTF-8 bytes, a path at most 4096 and 64 components, and the
folder part at most 4096 - 256 bytes, so the file's own name can always be replaced by any name of
up to 255 bytes: `conflict_name` never fails on a safe path.
"""

from __future__ import annotations

import re
import unicodedata

from protocol.errors import LocalProtocolError, Reason, VerificationError

RESERVED_PREFIX = ".albumsync"  # marker, trash and temporary files of an album folder live here
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_FOLDER_BYTES = MAX_PATH_BYTES - MAX_COMPONENT_BYTES - 1  # room for any file name in any folder
MAX_COMPONENTS = 64
MAX_TAG_CHARS = 128
MAX_EXTENSION_BYTES = 16  # a longer ".suffix" is part of the name, not an extension to keep

_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]}
)
_FORBIDDEN = re.compile(
    '[\x00-\x1f\x7f-\x9f\\\\<>:"|?*\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069'
    "\ud800-\udfff]"
)
_DRIVE = re.compile("[A-Za-z]:")
_TAG = re.compile(f"[A-Za-z0-9][A-Za-z0-9-]{{0,{MAX_TAG_CHARS - 1}}}")
_FORBIDDEN_WHY = {
    "\\": "a backslash (paths use '/')",
    "<": "the character '<' (not allowed on Windows)",
    ">": "the character '>' (not allowed on Windows)",
    ":": "the character ':' (not allowed on Windows or macOS)",
    '"': "the character '\"' (not allowed on Windows)",
    "|": "the character '|' (not allowed on Windows)",
    "?": "the character '?' (not allowed on Windows)",
    "*": "the character '*' (not allowed on Windows)",
}


def safe_relative_path(name: str) -> str:
    """The NFC, '/'-separated relative form of a peer's file name; VerificationError if unsafe."""
    if not isinstance(name, str) or not name:
        raise _unsafe("a file name is empty")
    if len(name) > MAX_PATH_BYTES:  # one char is at least one byte: refuse before normalising
        raise _unsafe(f"a file name of {len(name)} characters is over {MAX_PATH_BYTES} bytes")
    _check_not_absolute(name)
    path = unicodedata.normalize("NFC", name)
    _check_characters(path)
    size = len(path.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise _unsafe(f"the path is {size} UTF-8 bytes, over the limit of {MAX_PATH_BYTES}")
    components = path.split("/")
    if len(components) > MAX_COMPONENTS:
        raise _unsafe(
            f"{_show(path)} has {len(components)} parts, over the limit of {MAX_COMPONENTS}"
        )
    if components[-1] == "":
        raise _unsafe(f"{_show(path)} ends with '/': it names a folder, not a file")
    folder = size - len(components[-1].encode("utf-8")) - 1
    if folder > MAX_FOLDER_BYTES:
        raise _unsafe(f"the folder part of the path is {folder} bytes, over {MAX_FOLDER_BYTES}")
    for component in components:
        _check_component(path, component)
    return path


def is_reserved_local(name: str) -> bool:
    """Whether a name (one component or a path) is under the album's own `.albumsync` files."""
    prefix = RESERVED_PREFIX.casefold()
    return any(part.casefold().startswith(prefix) for part in name.split("/"))


def conflict_name(path: str, tag: str) -> str:
    """The conflict copy's name: `path` with " (conflict TAG)" before its last extension."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise LocalProtocolError(
            f"a conflict tag is 1..{MAX_TAG_CHARS} ASCII letters, digits and '-', not {tag!r}"
        )
    safe = safe_relative_path(path)
    folder, slash, last = safe.rpartition("/")
    stem, ext = _split_extension(last)
    marker = f" (conflict {tag})"
    budget = MAX_COMPONENT_BYTES - len(marker) - len(ext.encode("utf-8"))
    short = _truncate(stem, budget)
    result = f"{folder}{slash}{short}{marker}{ext}"
    if result == safe:  # `path` was itself a truncated conflict copy with this tag
        short = _truncate(short, len(short.encode("utf-8")) - 1)
        result = f"{folder}{slash}{short}{marker}{ext}"
    try:
        return safe_relative_path(result)
    except VerificationError as exc:  # unreachable by the bounds in the module docstring
        raise LocalProtocolError(f"conflict name for {path!r} is unsafe: {exc.message}") from None


def collision_key(path: str) -> str:
    """The form two paths share if a case- or normalisation-insensitive filesystem sees one file."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def _check_not_absolute(name: str) -> None:
    if name[0] in "/\\":
        raise _unsafe(f"{_show(name)} is an absolute path; only paths inside the album are allowed")
    if _DRIVE.match(name):
        raise _unsafe(f"{_show(name)} starts with a Windows drive ({name[:2]})")


def _check_characters(path: str) -> None:
    bad = _FORBIDDEN.search(path)
    if bad is None:
        return
    char = bad.group()
    why = _FORBIDDEN_WHY.get(char) or f"{_kind(char)} (U+{ord(char):04X})"
    raise _unsafe(f"{_show(path)} contains {why} at position {bad.start()}")


def _check_component(path: str, component: str) -> None:
    if component == "":
        raise _unsafe(f"{_show(path)} has an empty part ('//')")
    if component in (".", ".."):
        raise _unsafe(f"{_show(path)} has a '{component}' part; only plain names are allowed")
    size = len(component.encode("utf-8"))
    if size > MAX_COMPONENT_BYTES:
        raise _unsafe(f"a part of the path is {size} UTF-8 bytes, over {MAX_COMPONENT_BYTES}")
    if component[-1] in ". ":
        raise _unsafe(f"{_show(component)} ends with a dot or a space (Windows drops them)")
    if component.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise _unsafe(f"{_show(component)} is a reserved device name on Windows")
    if is_reserved_local(component):
        raise _unsafe(
            f"{_show(component)} uses the prefix {RESERVED_PREFIX!r} reserved for albumsync"
        )


def _split_extension(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0 or len(name[dot:].encode("utf-8")) > MAX_EXTENSION_BYTES:
        return name, ""
    return name[:dot], name[dot:]


def _truncate(text: str, max_bytes: int) -> str:
    """The longest prefix of NFC `text` that stays NFC within `max_bytes` UTF-8 bytes."""
    cut = len(text)
    while cut > 0:
        short = unicodedata.normalize("NFC", text[:cut])
        if len(short.encode("utf-8")) <= max_bytes:
            return short
        cut -= 1
    return ""


def _kind(char: str) -> str:
    if ord(char) <= 0x9F:
        return "a control character"
    if char in "\u2028\u2029":
        return "a line separator"
    if "\ud800" <= char <= "\udfff":
        return "an unpaired surrogate (not valid Unicode text)"
    return "an invisible text-direction control"


def _unsafe(message: str) -> VerificationError:
    return VerificationError(Reason.UNSAFE_NAME, f"unsafe file name: {message}")


def _show(text: str) -> str:
    """A name quoted for a message, cut short so a hostile 4 KB name cannot flood the log."""
    return repr(text if len(text) <= 80 else text[:77] + "...")
