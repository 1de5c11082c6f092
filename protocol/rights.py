"""Who may write which photo-manifest entry: the contract between the membership log and manifests.

The membership log (one writer, the owner, totally ordered) is folded into `Rights`. Every log entry
that changes what a member may do (invite, role change, remove, leave recorded) carries `after_seq`:
the member's last manifest sequence number that the owner had accepted at that moment. The change
governs the member's entries numbered *after* it. So an entry numbered `s` by author `a` is judged by
the last grant of `a` whose `after_seq < s`, whatever order the entries arrive in: that is what makes
backdating impossible (a removed editor cannot write "seq 8" and claim it predates the removal at 7)
and what makes every peer reach the same verdict.

Grants of one member must have non-decreasing `after_seq` in log order; the membership log refuses an
entry that would break this, so `role_for_entry` can rely on it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Role(enum.IntEnum):
    """A member's role; ordered so that `role >= Role.EDITOR` means "may add photos"."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use viewer or editor") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Grant:
    """From the member's manifest entry `after_seq + 1` on, it has `role` (None: no access)."""

    after_seq: int
    role: Role | None
    keep_photos: bool = False


@dataclass(frozen=True)
class Rights:
    """The owner and, per member public key, its grants in log order."""

    owner: bytes
    grants: Mapping[bytes, tuple[Grant, ...]] = field(default_factory=dict)

    def role_for_entry(self, author: bytes, seq: int) -> Role | None:
        """The role that governs `author`'s manifest entry number `seq` (1-based)."""
        if author == self.owner:
            return Role.OWNER
        governing: Grant | None = None
        for grant in self.grants.get(author, ()):
            if grant.after_seq < seq:
                governing = grant
            else:
                break
        return governing.role if governing is not None else None

    def current_role(self, author: bytes) -> Role | None:
        """The member's role now (None if never a member, removed, or gone)."""
        if author == self.owner:
            return Role.OWNER
        history = self.grants.get(author, ())
        return history[-1].role if history else None

    def photos_stay(self, author: bytes) -> bool:
        """Whether the author's accepted photos remain in the album.

        They stay while the author has any role, and after it lost access only if the owner chose
        "keep their photos" when recording the loss (Ente's rule otherwise: they leave with it).
        """
        if self.current_role(author) is not None:
            return True
        history = self.grants.get(author, ())
        return bool(history) and history[-1].keep_photos
