"""The one exception hierarchy of `daemon/`; each docstring is the sentence a person reads.

DaemonError
├── ConfigError          bad command-line value, setting or data directory
├── StoreError           the state database cannot be opened or is damaged
├── NotInitialisedError  no device identity yet (`albumsync init` first)
├── AlbumNotFoundError   no album with that ID or name
├── NotPermittedError    the album role does not allow the action
└── ApiError             the running daemon refused or could not be reached (CLI side)
"""

from __future__ import annotations


class DaemonError(Exception):
    """Something albumsync cannot do; the message says what to do about it."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(DaemonError):
    """A setting, option or directory is unusable."""

    exit_code = 2


class StoreError(DaemonError):
    """The state database cannot be used; albumsync refuses to guess."""

    exit_code = 3


class NotInitialisedError(DaemonError):
    """This data directory holds no device identity yet."""

    exit_code = 4


class AlbumNotFoundError(DaemonError):
    """No album matches."""


class NotPermittedError(DaemonError):
    """The device's role in the album does not allow this."""


class ApiError(DaemonError):
    """The running daemon answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
