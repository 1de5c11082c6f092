"""What to do to make an album folder match the album view: a pure function, no I/O, no await.

Input: the view (live files at their conflict-free paths) and the local index. Output: moves,
downloads and trash moves. Kept apart from the engine so the rules can be read (and tested) alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from daemon.album import LocalFile
from protocol.album_view import AlbumView, LiveFile


@dataclass(frozen=True)
class Move:
    source: str
    target: str


@dataclass(frozen=True)
class Download:
    file: LiveFile
    replaces: LocalFile | None  # an older version of the same file at the same path


@dataclass(frozen=True)
class Adopt:
    """A local file already holds this content: record it as that manifest file, no transfer."""

    file: LiveFile
    local: LocalFile


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    adopt: list[Adopt] = field(default_factory=list)
    trash: list[LocalFile] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.moves or self.downloads or self.adopt or self.trash)


def plan(view: AlbumView, local: Mapping[str, LocalFile]) -> Plan:
    """The steps that bring the folder from `local` to `view`; never deletes, only trashes."""
    result = Plan()
    by_file = {row.file: row for row in local.values() if row.file is not None}
    live_keys = {f.key for f in view.files}
    for f in view.files:
        row = by_file.get(f.key)
        if row is not None and row.entry_hash == f.entry_hash:
            if row.path != f.path:
                result.moves.append(Move(row.path, f.path))
            continue
        at_path = local.get(f.path)
        if at_path is not None and at_path.file is None and at_path.content_hash == f.content_hash:
            result.adopt.append(Adopt(f, at_path))
            continue
        replaces = row if row is not None and row.path == f.path else None
        result.downloads.append(Download(f, replaces))
    judged = view.accepted | {v.hash for v in view.rejected}
    for row in local.values():
        # Only a view that has judged the row's entry may send it to the trash: a row this device
        # has just published is indexed before the view that includes its entry is computed.
        if row.file is not None and row.file not in live_keys and row.entry_hash in judged:
            result.trash.append(row)
    return result
