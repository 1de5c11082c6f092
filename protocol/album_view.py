"""What an album holds for a member: the live files, decrypted, placed at conflict-free paths.

`evaluate(state, rights, epoch_keys)` is a pure function of the stored manifest entries, the rights
and the epoch keys: every peer holding the same three computes the same `AlbumView`, whatever order
the entries and the membership changes arrived in. On top of the key-free verdicts of
`ManifestState.judge`, it opens each accepted add/update (a payload that does not open or breaks a
bound refuses that entry only) and then:

- a file (author, file ID) shows its author's latest accepted add/update, unless a remove of it was
  accepted (its author's own, or the owner's) or its author's photos leave the album with it
  (`rights.photos_stay`);
- live files whose paths are equal, or equal once case-folded (some filesystems ignore case), are
  all kept: the one whose add entry hash sorts lowest keeps the path, the others get
  `names.conflict_name(path, tag)` with a tag from the author key and file ID; a file whose path is a
  directory of another file's path gives way the same way. Identical on every peer.

`diff_views(before, after)` is what the daemon acts on: files that appeared, changed or went (to
the trash), and entries accepted before and refused now ("retracted", e.g. after a late removal).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property

from protocol.chunks import ChunkRef
from protocol.errors import LocalProtocolError, VerificationError
from protocol.manifest import EntryKind, Payload, SignedEntry
from protocol.manifest_state import FileKey, Fork, ManifestState, Verdict, short_key
from protocol.names import collision_key, conflict_name
from protocol.rights import Rights


@dataclass(frozen=True, kw_only=True, slots=True)
class LiveFile:
    """A file in the album: where it goes, who added it, and its current version."""

    path: str  # where it lives in the album folder: `name`, or a conflict name
    name: str  # the (normalised) name its author gave it
    author: bytes  # who added it, and signed every version
    file_id: bytes
    added: bytes  # hash of the add entry; orders conflicts
    entry_hash: bytes  # hash of the entry that wrote this version
    seq: int
    epoch: int
    payload: Payload

    @property
    def key(self) -> FileKey:
        return (self.author, self.file_id)

    @property
    def size(self) -> int:
        return self.payload.size

    @property
    def mtime_ns(self) -> int:
        return self.payload.mtime_ns

    @property
    def captured_at(self) -> int | None:
        return self.payload.captured_at

    @property
    def content_hash(self) -> bytes:
        return self.payload.content_hash

    @property
    def file_key(self) -> bytes:
        return self.payload.file_key

    @property
    def chunks(self) -> tuple[ChunkRef, ...]:
        return self.payload.chunks

    @property
    def conflicted(self) -> bool:
        return self.path != self.name


@dataclass(frozen=True, kw_only=True)
class AlbumView:
    """The album as a member sees it; equal inputs give equal views."""

    files: tuple[LiveFile, ...]  # sorted by path
    accepted: frozenset[bytes]  # entry hashes
    rejected: tuple[Verdict, ...]
    pending: tuple[Verdict, ...]
    forks: tuple[Fork, ...]

    def file_at(self, path: str) -> LiveFile | None:
        return self._by_path.get(path)

    def file(self, key: FileKey) -> LiveFile | None:
        return self._by_key.get(key)

    # Built on first use: the daemon looks files up once per received file or index row, and a
    # linear search made that quadratic in the album's size.
    @cached_property
    def _by_path(self) -> dict[str, LiveFile]:
        return {f.path: f for f in self.files}

    @cached_property
    def _by_key(self) -> dict[FileKey, LiveFile]:
        return {f.key: f for f in self.files}


@dataclass(frozen=True, kw_only=True)
class ViewChanges:
    """What changed between two views; `gone` files go to the trash, never straight to deletion."""

    appeared: tuple[LiveFile, ...]
    changed: tuple[tuple[LiveFile, LiveFile], ...]  # (before, after): new version or new path
    gone: tuple[LiveFile, ...]
    retracted: tuple[Verdict, ...]  # accepted before, refused or held now


def evaluate(state: ManifestState, rights: Rights, epoch_keys: Mapping[int, bytes]) -> AlbumView:
    """The album view of `state` under `rights`, decrypting with `epoch_keys` (epoch -> key)."""
    judgement = state.judge(rights, epoch_keys.keys())
    rejected = list(judgement.rejected)
    accepted: set[bytes] = set()
    adds: dict[FileKey, bytes] = {}
    versions: dict[FileKey, tuple[SignedEntry, Payload]] = {}
    removed: set[FileKey] = set()
    for signed in judgement.accepted:
        entry = signed.entry
        if entry.kind is EntryKind.ADD:
            adds[entry.file] = signed.hash
        if entry.kind is EntryKind.REMOVE:
            removed.add(entry.file)
        else:
            try:
                versions[entry.file] = (signed, state.payload(signed, epoch_keys[entry.epoch]))
            except VerificationError as err:
                rejected.append(Verdict.of(signed, err.reason, err.message))
                continue
        accepted.add(signed.hash)
    live = [
        _live_file(adds[key], signed, payload)
        for key, (signed, payload) in versions.items()
        if key not in removed and rights.photos_stay(key[0])
    ]
    return AlbumView(
        files=_place(live),
        accepted=frozenset(accepted),
        rejected=tuple(sorted(rejected, key=_verdict_order)),
        pending=judgement.pending,
        forks=judgement.forks,
    )


def diff_views(before: AlbumView | None, after: AlbumView) -> ViewChanges:
    """The changes from `before` (None: nothing yet) to `after`."""
    old = {f.key: f for f in before.files} if before is not None else {}
    new = {f.key: f for f in after.files}
    lost = before.accepted - after.accepted if before is not None else frozenset()
    return ViewChanges(
        appeared=tuple(f for key, f in new.items() if key not in old),
        changed=tuple((old[key], f) for key, f in new.items() if key in old and old[key] != f),
        gone=tuple(f for key, f in old.items() if key not in new),
        retracted=tuple(v for v in after.rejected + after.pending if v.hash in lost),
    )


def conflict_tag(author: bytes, file_id: bytes, *, long: bool = False) -> str:
    """The tag that names a file's conflict copy: its author's short key and its file ID."""
    file_part = base64.b32encode(file_id).decode("ascii").rstrip("=")
    if long:
        return base64.b32encode(author).decode("ascii").rstrip("=") + "-" + file_part
    return short_key(author) + "-" + file_part[:6]


def _live_file(added: bytes, signed: SignedEntry, payload: Payload) -> LiveFile:
    entry = signed.entry
    return LiveFile(
        path=payload.name,
        name=payload.name,
        author=entry.author,
        file_id=entry.file_id,
        added=added,
        entry_hash=signed.hash,
        seq=entry.seq,
        epoch=entry.epoch,
        payload=payload,
    )


def _place(files: list[LiveFile]) -> tuple[LiveFile, ...]:
    """Give every file its own path (see the module docstring); deterministic."""
    dirs = {collision_key(parent) for f in files for parent in _parents(f.name)}
    groups: dict[str, list[LiveFile]] = {}
    for f in files:
        groups.setdefault(collision_key(f.name), []).append(f)
    taken: set[str] = set()
    placed: list[LiveFile] = []
    losers: list[LiveFile] = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda f: f.added)
        if key in dirs:
            losers += group
            continue
        placed.append(group[0])
        taken.add(key)
        losers += group[1:]
    for f in sorted(losers, key=lambda f: f.added):
        path = _free_name(f, taken, dirs, limit=len(taken) + len(dirs) + 3)
        taken.add(collision_key(path))
        placed.append(replace(f, path=path))
    return tuple(sorted(placed, key=lambda f: f.path))


def _free_name(f: LiveFile, taken: set[str], dirs: set[str], *, limit: int) -> str:
    """The first conflict name for `f` that no placed file and no directory uses.

    Candidates: the short tag, the long tag, then the long tag numbered. `limit` exceeds the names
    in use, so among that many distinct candidates one is free.
    """
    long_tag = conflict_tag(f.author, f.file_id, long=True)
    tags = [conflict_tag(f.author, f.file_id), long_tag]
    tags += (f"{long_tag}-{number}" for number in range(2, limit))
    for tag in tags:
        path = conflict_name(f.name, tag)
        key = collision_key(path)
        if key not in taken and key not in dirs:
            return path
    raise LocalProtocolError(f"no free conflict name for {f.name!r} among {limit} candidates")


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])


def _verdict_order(verdict: Verdict) -> tuple[bytes, int, bytes]:
    return (verdict.author, verdict.seq, verdict.hash)
