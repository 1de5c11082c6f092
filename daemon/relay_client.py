"""A client of a Syncthing relay (protocol v1, the stock strelaysrv): join it, be invited, open sessions.

Two kinds of connection go to the relay's one port (research/relay-discovery.md §1):
- protocol mode, TLS 1.3 with this device's certificate and ALPN "bep-relay": the *joined*
  connection (`RelayClient.start`) stays up, answers the relay's pings, sends its own, and receives
  a SessionInvitation whenever someone asks the relay for this device; a *temporary* one
  (`request_session`) sends one ConnectRequest and reads one invitation.
- session mode, plain TCP (`connect_session`): one JoinSessionRequest and Response, then a raw
  byte pipe to the other peer. Our own Noise channel runs end to end inside it, so the relay sees
  only ciphertext; nothing here trusts the pipe.

The relay is identified by pinning: after every TLS handshake, and before we send a byte, the
SHA-256 of its certificate must equal the device ID in its URI. Python's ssl does no CA check here
(the relay's certificate is self-signed); the pin replaces it. Anyone can ask the relay for a
session with us (ConnectRequest is unauthenticated), so invitations are rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import random
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from daemon.errors import ConfigError, DaemonError
from protocol.certificate import tls_credentials
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.ids import DeviceId
from protocol.keys import DeviceKey
from protocol.relay import (
    ALPN_PROTOCOL,
    HEADER_SIZE,
    ConnectRequest,
    JoinRelayRequest,
    JoinSessionRequest,
    Ping,
    Pong,
    RelayFull,
    RelayMessage,
    RelayUri,
    Response,
    ResponseCode,
    SessionInvitation,
    decode_body,
    encode_message,
    parse_header,
)

log = logging.getLogger("albumsync.relay")

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect plus TLS handshake
RESPONSE_TIMEOUT = 10.0  # seconds for the relay to answer a request
PING_INTERVAL = 30.0  # our pings on the joined connection; strelaysrv's network timeout is 2 min
BACKOFF_MIN = 1.0  # seconds before reconnecting after the first failure, doubling each time
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # joined at least this long: the next failure starts again at BACKOFF_MIN
INVITATION_LIMIT = 10  # invitations passed on per INVITATION_WINDOW; the rest are dropped
INVITATION_WINDOW = 10.0
REQUEST_ATTEMPTS = 6  # ConnectRequests per request_session before giving up
REQUEST_RETRY_MIN = 0.5  # seconds before the second attempt, doubling up to REQUEST_RETRY_MAX
REQUEST_RETRY_MAX = 8.0
SESSION_JOIN_ATTEMPTS = 3  # fresh invitations open_session asks for when a join is refused
RETRYABLE = frozenset({ResponseCode.NOT_FOUND, ResponseCode.ALREADY_CONNECTED})

InvitationHandler = Callable[[SessionInvitation], Awaitable[None] | None]


class RelayError(DaemonError):
    """The relay could not be used for this; the message says why and what to check."""


class SessionRefusedError(RelayError):
    """The relay answered a request with a Response other than success."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def retryable(self) -> bool:
        """True for "not found" and "already connected": a fresh request may succeed."""
        return self.code in RETRYABLE


class RelayState(enum.Enum):
    """Where the joined connection stands, for `albumsync status`."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    JOINED = "joined"
    FAILED = "failed"  # the last attempt failed; another follows after a backoff


@dataclass(frozen=True)
class RelayStatus:
    """What `albumsync status` shows for one relay."""

    uri: str  # without the token
    state: RelayState
    last_error: str | None
    since: float  # unix time of the last state change
    joins: int  # successful joins since start; more than one means the connection was lost
    invitations_dropped: int


def relay_tls_context(identity_key: DeviceKey, cert_dir: Path) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting this device's certificate, offering ALPN bep-relay.

    It verifies nothing: callers pin the relay's device ID after the handshake. The key is loaded
    from a 0600 file made in `cert_dir` and removed at once.
    """
    credentials = tls_credentials(identity_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed relay certificates: the pin replaces CAs
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN_PROTOCOL])
    try:
        fd, name = tempfile.mkstemp(dir=cert_dir, prefix=".relay-tls-", suffix=".pem")  # 0600
    except OSError as err:
        raise ConfigError(f"cannot write the relay TLS key in {cert_dir}: {err}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(credentials.certificate_pem + credentials.private_key_pem)
        context.load_cert_chain(name)
    finally:
        os.unlink(name)
    return context


class RelayClient:
    """One relay: stay joined to it, pass its invitations on, and open sessions through it."""

    def __init__(
        self,
        identity_key: DeviceKey,
        cert_dir: Path,
        uri: RelayUri | str,
        on_invitation: InvitationHandler,
        *,
        ping_interval: float = PING_INTERVAL,
        idle_timeout: float | None = None,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        invitation_limit: int = INVITATION_LIMIT,
        invitation_window: float = INVITATION_WINDOW,
        connect_timeout: float = CONNECT_TIMEOUT,
        response_timeout: float = RESPONSE_TIMEOUT,
    ) -> None:
        self.uri = uri if isinstance(uri, RelayUri) else _parse_uri(uri)
        self._context = relay_tls_context(identity_key, cert_dir)
        self._on_invitation = on_invitation
        self._ping_interval = ping_interval
        # Nothing at all from the relay (it answers each of our pings) for this long: it is gone.
        self._idle_timeout = idle_timeout if idle_timeout is not None else 3 * ping_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._invitation_limit = invitation_limit
        self._invitation_window = invitation_window
        self._connect_timeout = connect_timeout
        self._response_timeout = response_timeout
        self._state = RelayState.STOPPED
        self._last_error: str | None = None
        self._since = time.time()
        self._joined = asyncio.Event()
        self._joined_since: float | None = None  # loop time of the current join
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Future[None]] = set()
        self._invited_at: deque[float] = deque()
        self._dropped = 0
        self._joins = 0
        self._drop_logged_at = float("-inf")
        self._jitter = random.SystemRandom()

    @property
    def state(self) -> RelayState:
        return self._state

    @property
    def status(self) -> RelayStatus:
        return RelayStatus(
            uri=self.uri.public,
            state=self._state,
            last_error=self._last_error,
            since=self._since,
            joins=self._joins,
            invitations_dropped=self._dropped,
        )

    @property
    def running(self) -> bool:
        """True from `start` until `close` (also while failing and waiting to reconnect)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start joining the relay in the background (reconnecting until `close`)."""
        self._closing = False
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=f"relay {self.uri.address}")

    async def close(self) -> None:
        """Leave the relay and stop every task this client started."""
        self._closing = True
        tasks = [t for t in [self._task, *self._handlers] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # unlike `await task`, never swallows our own cancellation
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("relay %s: a task failed: %r", self.uri.address, task.exception())
        self._task = None
        self._set_state(RelayState.STOPPED, self._last_error)

    async def __aenter__(self) -> RelayClient:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_joined(self) -> None:
        """Return once joined (at once if joined now); on a timeout, `status` says what failed."""
        await self._joined.wait()

    async def request_session(
        self, device_id: DeviceId, *, attempts: int = REQUEST_ATTEMPTS
    ) -> SessionInvitation:
        """Ask the relay for a session with `device_id`; retries "not found"/"already connected"."""
        delay = REQUEST_RETRY_MIN
        for attempt in range(1, attempts + 1):
            try:
                return await self._request_once(device_id)
            except SessionRefusedError as err:
                if not err.retryable or attempt == attempts:
                    raise
                log.debug("relay %s: %s; retrying in %.1f s", self.uri.address, err, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, REQUEST_RETRY_MAX)
        raise RelayError(f"no attempts to reach {device_id.short} were allowed")

    async def connect_session(
        self, invitation: SessionInvitation
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Join the invitation's session; the streams are then a raw pipe to the other peer."""
        host, port = invitation.session_address(self.uri.host, self.uri.port)
        with _failures_as_relay_error(f"cannot open the relay session at {host}:{port}"):
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        try:
            with _failures_as_relay_error(f"relay session at {host}:{port}"):
                await _send(writer, JoinSessionRequest(key=invitation.key))
                # Exact reads: what the peer sends after the Response stays in `reader` for the caller.
                async with asyncio.timeout(self._response_timeout):
                    answer = await _read_message(reader)
                _check_response(answer, f"join the session with {invitation.from_device.short}")
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def open_session(
        self, device_id: DeviceId, *, attempts: int = REQUEST_ATTEMPTS
    ) -> tuple[SessionInvitation, asyncio.StreamReader, asyncio.StreamWriter]:
        """request_session then connect_session, starting over when the join is refused.

        "already connected" on a session join is a race inside strelaysrv when both peers join at
        the same instant (research/relay-discovery.md §1.9); a fresh invitation gets past it.
        """
        delay = REQUEST_RETRY_MIN
        for attempt in range(1, SESSION_JOIN_ATTEMPTS + 1):
            invitation = await self.request_session(device_id, attempts=attempts)
            try:
                reader, writer = await self.connect_session(invitation)
            except SessionRefusedError as err:
                if not err.retryable or attempt == SESSION_JOIN_ATTEMPTS:
                    raise
                log.debug("relay %s: %s; asking again in %.1f s", self.uri.address, err, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, REQUEST_RETRY_MAX)
                continue
            return invitation, reader, writer
        raise RelayError(f"no attempts to reach {device_id.short} were allowed")

    # --- the joined connection ------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff_min
        while not self._closing:
            self._set_state(RelayState.CONNECTING, self._last_error)
            attempt_started = loop.time()
            try:
                await self._join_and_serve()
                error = "the relay closed the connection"
            except Exception as err:
                if not _is_failure(err):
                    raise
                error = _describe(err)
            if self._joined_since is not None and loop.time() - self._joined_since >= STABLE_AFTER:
                backoff = self._backoff_min
            self._joined_since = None
            delay = min(self._backoff_max, backoff * (1 + 0.2 * self._jitter.random()))
            self._set_state(RelayState.FAILED, error)
            log.warning(
                "relay %s: %s (after %.1f s); reconnecting in %.1f s",
                self.uri.address,
                error,
                loop.time() - attempt_started,
                delay,
            )
            await asyncio.sleep(delay)
            backoff = min(self._backoff_max, 2 * backoff)

    async def _join_and_serve(self) -> None:
        reader, writer = await self._open_protocol_connection()
        try:
            await _send(writer, JoinRelayRequest(token=self.uri.token))
            answer = await self._await_answer(reader, writer)
            _check_response(answer, "join it")
            self._joined_since = asyncio.get_running_loop().time()
            self._joins += 1
            self._set_state(RelayState.JOINED, None)
            log.info("relay %s: joined", self.uri.address)
            await self._serve(reader, writer)
        finally:
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pinger = asyncio.create_task(self._ping_loop(writer))
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    message = await _read_message(reader)
                if isinstance(message, Ping):
                    await _send(writer, Pong())
                elif isinstance(message, SessionInvitation):
                    self._invited(message)
                elif isinstance(message, RelayFull):
                    raise RelayError(_RELAY_FULL)
                elif not isinstance(message, Pong):
                    raise _unexpected(message, "on the joined connection")
        finally:
            pinger.cancel()
            await asyncio.wait({pinger})

    async def _ping_loop(self, writer: asyncio.StreamWriter) -> None:
        # Our pings keep the connection alive even if the relay's ping interval is longer than
        # its network timeout, and the Pongs tell us the relay is alive (see _idle_timeout).
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                await _send(writer, Ping())
            except (OSError, RuntimeError):
                return  # the reading side notices the broken connection

    def _invited(self, invitation: SessionInvitation) -> None:
        now = asyncio.get_running_loop().time()
        while self._invited_at and now - self._invited_at[0] >= self._invitation_window:
            self._invited_at.popleft()
        if len(self._invited_at) >= self._invitation_limit:
            self._dropped += 1
            if now - self._drop_logged_at >= self._invitation_window:
                self._drop_logged_at = now
                log.warning(
                    "relay %s: more than %d session invitations in %g s; dropping the rest "
                    "(%d dropped so far)",
                    self.uri.address,
                    self._invitation_limit,
                    self._invitation_window,
                    self._dropped,
                )
            return
        self._invited_at.append(now)
        log.debug("relay %s: invited to a session by %s", self.uri.address, invitation.from_device)
        try:
            result = self._on_invitation(invitation)
        except Exception:
            log.exception("relay %s: the invitation handler failed", self.uri.address)
            return
        if inspect.isawaitable(result):
            handler = asyncio.ensure_future(result)
            self._handlers.add(handler)
            handler.add_done_callback(self._handler_done)

    def _handler_done(self, handler: asyncio.Future[None]) -> None:
        self._handlers.discard(handler)
        if not handler.cancelled() and handler.exception() is not None:
            log.error(
                "relay %s: the invitation handler failed: %r", self.uri.address, handler.exception()
            )

    # --- temporary connections ------------------------------------------------------------------

    async def _request_once(self, device_id: DeviceId) -> SessionInvitation:
        what = f"connect us to {device_id.short}"
        with _failures_as_relay_error(f"cannot ask the relay to {what}"):
            reader, writer = await self._open_protocol_connection()
            try:
                await _send(writer, ConnectRequest(device_id=device_id))
                answer = await self._await_answer(reader, writer)
            finally:
                await _close(writer)
        if not isinstance(answer, SessionInvitation):
            _check_response(answer, what)
            raise RelayError(f"the relay answered success but sent no invitation to {what}")
        if answer.from_device != device_id:
            raise RelayError(
                f"the relay offered a session with {answer.from_device} when asked for "
                f"{device_id}: it is misbehaving; no session was opened"
            )
        return answer

    async def _open_protocol_connection(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TLS connection to the relay whose device ID and ALPN have been checked."""
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                self.uri.host, self.uri.port, ssl=self._context
            )
        try:
            self._check_peer(writer)
        except RelayError:
            await _close(writer)
            raise
        return reader, writer

    def _check_peer(self, writer: asyncio.StreamWriter) -> None:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise RelayError(f"the relay at {self.uri.address} presented no certificate")
        found = DeviceId.from_certificate(der)
        if found != self.uri.device_id:
            raise RelayError(
                f"the relay at {self.uri.address} has device ID {found}, but its URI pins "
                f"{self.uri.device_id}: another server is answering at that address, or the "
                "relay's keys changed. Check the relay URI; nothing was sent"
            )
        if tls.selected_alpn_protocol() != ALPN_PROTOCOL:
            raise RelayError(
                f"the server at {self.uri.address} did not agree to ALPN {ALPN_PROTOCOL!r}: "
                "it is not a Syncthing relay (strelaysrv); check the relay URI's port"
            )

    async def _await_answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Response | SessionInvitation:
        """The relay's Response or SessionInvitation to our request, answering pings meanwhile."""
        async with asyncio.timeout(self._response_timeout):
            return await self._answer(reader, writer)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Response | SessionInvitation:
        while True:
            message = await _read_message(reader)
            if isinstance(message, Response | SessionInvitation):
                return message
            if isinstance(message, Ping):
                await _send(writer, Pong())
            elif not isinstance(message, Pong):
                raise _unexpected(message, "instead of an answer")

    def _set_state(self, state: RelayState, error: str | None) -> None:
        if state is not self._state or error != self._last_error:
            self._since = time.time()
        self._state, self._last_error = state, error
        if state is RelayState.JOINED:
            self._joined.set()
        else:
            self._joined.clear()


def _parse_uri(text: str) -> RelayUri:
    try:
        return RelayUri.parse(text)
    except ProtocolError as err:
        raise ConfigError(err.message) from None


async def _read_message(reader: asyncio.StreamReader) -> RelayMessage:
    """One message, read exactly: the header is judged before any of the body is read."""
    header = parse_header(await reader.readexactly(HEADER_SIZE))
    return decode_body(header, await reader.readexactly(header.length))


async def _send(writer: asyncio.StreamWriter, message: RelayMessage) -> None:
    writer.write(encode_message(message))
    await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


@contextlib.contextmanager
def _failures_as_relay_error(what: str) -> Iterator[None]:
    """Turn what a relay or the network can cause into one RelayError starting with `what`."""
    try:
        yield
    except RelayError:
        raise
    except Exception as err:
        if not _is_failure(err):
            raise
        raise RelayError(f"{what}: {_describe(err)}") from None


def _check_response(answer: RelayMessage, what: str) -> None:
    if isinstance(answer, RelayFull):
        raise RelayError(_RELAY_FULL)
    if not isinstance(answer, Response):
        raise _unexpected(answer, "instead of a response")
    if answer.ok:
        return
    hint: dict[int, str] = {
        ResponseCode.NOT_FOUND: "the device is not joined to this relay, or just reconnected",
        ResponseCode.ALREADY_CONNECTED: "a connection with this device ID is already there",
        ResponseCode.WRONG_TOKEN: "the relay URI's token is wrong or missing (&token=…)",
        ResponseCode.UNEXPECTED_MESSAGE: "the relay did not expect our message",
    }
    why = hint.get(answer.code)
    raise SessionRefusedError(
        f"the relay refused to {what}: {answer.code} {answer.message!r}"
        + (f" ({why})" if why else ""),
        answer.code,
    )


_RELAY_FULL = "the relay is full (over its connection limit) and closed the connection"


def _unexpected(message: RelayMessage, where: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"the relay sent a {type(message).__name__} {where}")


def _is_failure(err: Exception) -> bool:
    """Errors a relay, its network or its bytes can cause: reported and retried, never a crash."""
    return isinstance(err, OSError | EOFError | ProtocolError | RelayError)


def _describe(err: BaseException) -> str:
    if isinstance(err, RelayError):
        return err.message
    if isinstance(err, ProtocolError):
        return f"the relay broke the relay protocol: {err.message}"
    if isinstance(err, asyncio.IncompleteReadError):
        return "the relay closed the connection" + (" mid-message" if err.partial else "")
    if isinstance(err, TimeoutError):
        return "the relay did not answer in time"
    if isinstance(err, ssl.SSLError):
        return f"TLS with the relay failed: {err.reason or err}"
    if isinstance(err, OSError):
        return f"cannot reach the relay: {err.strerror or err}"
    return str(err) or type(err).__name__
