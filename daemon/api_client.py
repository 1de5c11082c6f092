"""The CLI's side of the local API: find the running daemon, send the key, turn errors into ApiError.

Uses the standard library only (urllib), so CLI commands start fast; each call runs in a thread so
the CLI's coroutines stay free to wait and poll. The daemon's address comes from <home>/daemon.json
(written while it runs); the key from <home>/api-key.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from daemon.errors import ApiError
from daemon.instance import running_pid

NOT_RUNNING = "the daemon is not running (start it with `albumsync run`)"
TIMEOUT = 60.0
MAX_RESPONSE = 64 * 1024 * 1024  # a status of 1000 albums is a few MiB; more is not our daemon


class ApiClient:
    """Calls /api/v1 of the daemon that owns `home`."""

    def __init__(self, home: Path, timeout: float = TIMEOUT) -> None:
        self.home = home
        self.timeout = timeout

    async def get(self, path: str, **query: str | int) -> Any:
        """GET /api/v1<path>; the decoded JSON answer."""
        if query:
            path += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
        return await asyncio.to_thread(self._call, "GET", path, None)

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST a JSON object to /api/v1<path>; the decoded JSON answer."""
        return await asyncio.to_thread(self._call, "POST", path, body or {})

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url, key = self._endpoint()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + "/api/v1" + path, data=data, method=method)  # noqa: S310 - an http:// URL checked in _endpoint
        request.add_header("X-API-Key", key)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http:// checked in _endpoint
                return _decode(response.read(MAX_RESPONSE + 1), response.status)
        except urllib.error.HTTPError as err:
            raise _api_error(err) from None
        except urllib.error.URLError as err:
            raise _unreachable(err.reason) from None
        except (TimeoutError, ConnectionError) as err:
            raise _unreachable(err) from None

    def _endpoint(self) -> tuple[str, str]:
        """The daemon's base URL and the API key, or NOT_RUNNING if it has not written them."""
        runtime = self.home / "daemon.json"
        try:
            info = json.loads(runtime.read_text())
            url = str(info["ui"]).rstrip("/")
        except FileNotFoundError:
            pid = running_pid(self.home)
            if pid is not None:
                who = f" (pid {pid})" if pid else ""
                raise ApiError(
                    f"the daemon{who} is starting or stopping; try again in a moment"
                ) from None
            raise ApiError(NOT_RUNNING) from None
        except (OSError, ValueError, KeyError, TypeError):
            raise ApiError(
                f"{runtime} is unreadable; restart the daemon (`albumsync run`)"
            ) from None
        if not url.startswith("http://"):
            raise ApiError(f"{runtime} names no local address; restart the daemon")
        try:
            key = (self.home / "api-key").read_text().strip()
        except OSError as exc:
            raise ApiError(
                f"cannot read the API key in {self.home / 'api-key'} ({exc.strerror}); "
                "run the command as the user the daemon runs as"
            ) from None
        return url, key


def _decode(raw: bytes, status: int) -> Any:
    if len(raw) > MAX_RESPONSE:
        raise ApiError("the daemon's answer is too large to be one", status)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError("the daemon answered with something that is not JSON", status) from None


def _api_error(err: urllib.error.HTTPError) -> ApiError:
    """The server's own sentence when it sent one, else a plain description of the status."""
    try:
        body = json.loads(err.read(MAX_RESPONSE))
        message = str(body["message"])
    except (ValueError, KeyError, TypeError, OSError):
        message = f"the daemon refused the request (HTTP {err.code} {err.reason})"
    return ApiError(message, err.code)


def _unreachable(reason: object) -> ApiError:
    if isinstance(reason, ConnectionRefusedError | FileNotFoundError):
        return ApiError(NOT_RUNNING)
    if isinstance(reason, TimeoutError):
        return ApiError("the daemon did not answer in time; it may be busy or stuck")
    return ApiError(f"cannot reach the daemon ({reason}); is it running (`albumsync run`)?")
