"""Rights: the role that governs an author's numbered manifest entry."""

import pytest

from protocol.rights import Grant, Rights, Role

OWNER, EDITOR = b"o" * 32, b"e" * 32


def test_role_follows_the_grant_in_force_at_each_sequence_number() -> None:
    rights = Rights(
        owner=OWNER,
        grants={
            EDITOR: (
                Grant(after_seq=0, role=Role.EDITOR),
                Grant(after_seq=5, role=Role.VIEWER),
                Grant(after_seq=7, role=None),
            )
        },
    )
    assert [rights.role_for_entry(EDITOR, s) for s in (1, 5, 6, 7, 8, 100)] == [
        Role.EDITOR,
        Role.EDITOR,
        Role.VIEWER,
        Role.VIEWER,
        None,
        None,
    ]
    assert rights.role_for_entry(OWNER, 10**9) is Role.OWNER
    assert rights.role_for_entry(b"x" * 32, 1) is None
    assert rights.current_role(EDITOR) is None
    assert not rights.photos_stay(EDITOR)


def test_kept_photos_stay_after_removal() -> None:
    rights = Rights(
        owner=OWNER,
        grants={EDITOR: (Grant(0, Role.EDITOR), Grant(3, None, keep_photos=True))},
    )
    assert rights.photos_stay(EDITOR)
    assert rights.photos_stay(OWNER)
    assert not rights.photos_stay(b"x" * 32)


def test_role_parse() -> None:
    assert Role.parse("Editor") is Role.EDITOR
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse("admin")
