"""Length-prefixed messages from a byte stream fed in pieces, with bounded buffering.

One mechanism for our frames (protocol/frames.py) and the relay's messages (protocol/relay.py):
each message is a fixed-size header that announces its body's length, then the body. Every
header is checked the moment its bytes arrive, before the bytes behind it are kept, so what is
buffered is bounded by the lengths the checked headers were allowed to claim plus one partial
header. Any error kills the stream for good: every later call raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from protocol.errors import RemoteProtocolError

Bytes = bytes | bytearray | memoryview
T = TypeVar("T")


class HeaderedStream(Generic[T]):
    """Messages of type T from a stream; the two callables own the format's header and body."""

    def __init__(
        self,
        *,
        header_size: int,
        body_length: Callable[[bytes], int],
        decode: Callable[[bytes, bytes], T],
        failed: str,
    ) -> None:
        """`body_length(header)` checks a header (RemoteProtocolError if bad) and returns the
        length it announces; `decode(header, body)` makes the message; `failed` starts the error
        every call raises once the stream has failed."""
        self._header_size = header_size
        self._body_length = body_length
        self._decode = decode
        self._failed = failed
        self._buffer = bytearray()
        # Offset in _buffer of the first header not yet checked: every header before it is valid.
        self._unchecked = 0
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: Bytes) -> None:
        """Take the next bytes of the stream; a bad header raises before its body is kept."""
        self._check_alive()
        try:
            self._unchecked = self._scan(data)
        except RemoteProtocolError as err:
            self._die(err)
            raise
        self._buffer += data

    def next_message(self) -> T | None:
        """The next complete message, or None until more bytes arrive."""
        self._check_alive()
        size = self._header_size
        if len(self._buffer) < size:
            return None
        header = bytes(self._buffer[:size])
        end = size + self._body_length(header)  # checked already: cannot raise
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[size:end])
        del self._buffer[:end]
        self._unchecked -= end
        try:
            return self._decode(header, body)
        except RemoteProtocolError as err:
            self._die(err)
            raise

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as messages (non-zero at EOF: a cut message)."""
        return len(self._buffer)

    def _scan(self, data: Bytes) -> int:
        size = self._header_size
        pos, have = self._unchecked, len(self._buffer)
        while pos + size <= have + len(data):
            if pos >= have:
                header = bytes(data[pos - have : pos - have + size])
            else:  # a header split across calls: its start is the tail of the buffer
                header = bytes(self._buffer[pos:]) + bytes(data[: size - (have - pos)])
            pos += size + self._body_length(header)
        return pos

    def _check_alive(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"{self._failed}: {self._error.message}")

    def _die(self, err: RemoteProtocolError) -> None:
        self._error = err
        self._buffer = bytearray()
