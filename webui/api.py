"""The local JSON API under /api/v1: what the CLI, scripts and the web pages call.

Every /api/ request passes one middleware that checks the API key before any handler runs, and
turns every failure into `{"error": code, "message": sentence[, "field": name]}` through one table
(`ERROR_STATUS`): never a traceback. Bodies are JSON objects checked against a `Field` spec:
unknown fields, wrong types and values out of bounds are refused with the field named.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

from aiohttp import web

from daemon import reports
from daemon.album import Album
from daemon.apikey import rotate_api_key
from daemon.core import Core
from daemon.errors import (
    AlbumNotFoundError,
    ConfigError,
    DaemonError,
    NotInitialisedError,
    NotPermittedError,
    StoreError,
)
from daemon.files import FileChangedError, FolderError
from daemon.thumbnails import SNIFF_BYTES, sniff
from protocol.errors import DecodeError, InviteCodeError, ProtocolError
from protocol.ids import MAX_ID_TEXT, AlbumId, DeviceId
from protocol.invite import INVITE_ID_SIZE, MAX_ADDRESS_CHARS, MAX_CODE_TEXT, MAX_RELAY_CHARS
from protocol.keys import PUBLIC_KEY_SIZE
from protocol.manifest import FILE_ID_SIZE
from protocol.membership_sealing import MAX_MESSAGE_CHARS, MAX_NAME_CHARS, check_message, check_name
from protocol.rights import Role
from webui.openapi import OPENAPI
from webui.security import SECURITY_HEADERS, api_key_from, host_allowed, require_api_key
from webui.serialize import to_json
from webui.session import Sessions

log = logging.getLogger("albumsync.api")

API_PREFIX = "/api/"
V1 = "/api/v1"
MAX_PATH_CHARS = 4096
MAX_FILES_PAGE = 500
DEFAULT_FILES_PAGE = 100
ROLES = ("viewer", "editor")
FILE_KEY_BYTES = PUBLIC_KEY_SIZE + FILE_ID_SIZE
ORIGINAL_CHUNK = 256 * 1024
# User bytes never run as our page: no script, no plugin, no same-origin access (TESTPLAN W7).
USER_BYTES_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
GENERIC_TILE = (Path(__file__).resolve().parent / "static" / "tile.svg").read_bytes()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The one mapping from exceptions to HTTP: first match wins, so subclasses come before bases.
ERROR_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (AlbumNotFoundError, 404, "not_found"),
    (NotPermittedError, 403, "not_permitted"),
    (ConfigError, 400, "invalid"),
    (InviteCodeError, 400, "invite_code"),
    (DecodeError, 400, "invalid"),
    (FolderError, 409, "folder"),
    (StoreError, 500, "store"),
    (NotInitialisedError, 500, "not_initialised"),
    (DaemonError, 409, "conflict"),
    (ProtocolError, 409, "conflict"),
)
HTTP_ERRORS = {
    401: ("unauthorized", "missing or wrong API key (send it in the X-API-Key header)"),
    404: ("not_found", "no such API endpoint"),
    405: ("method_not_allowed", "this endpoint does not take that HTTP method"),
    413: ("too_large", "the request body is larger than the 1 MiB the API accepts"),
}
TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer"}
INTERNAL = "the daemon hit an internal error; the details are in its log"


class RequestError(Exception):
    """A request the API refuses before doing anything; names the field at fault."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Field:
    """What one body field may hold. Optional fields may be absent or null."""

    kind: type
    required: bool = False
    max_chars: int = 0  # for str: 0 means no bound beyond the body's
    choices: tuple[str, ...] = ()


def setup_api(app: web.Application, core: Core, sessions: Sessions | None = None) -> None:
    """Add the /api/v1 routes and the middleware that guards every /api/ path."""
    api = Api(core)
    app.middlewares.append(make_api_guard(core, sessions))
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/status", api.status),
        ("GET", "/openapi.json", api.openapi),
        ("GET", "/albums", api.list_albums),
        ("POST", "/albums", api.create_album),
        ("GET", "/albums/{album}", api.get_album),
        ("POST", "/albums/{album}/rename", api.rename_album),
        ("POST", "/albums/{album}/folder", api.relocate_album),
        ("POST", "/albums/{album}/leave", api.leave_album),
        ("POST", "/albums/{album}/delete", api.delete_album),
        ("POST", "/albums/{album}/stop-sharing", api.stop_sharing),
        ("GET", "/albums/{album}/members", api.list_members),
        ("POST", "/albums/{album}/members/{device}/role", api.set_role),
        ("POST", "/albums/{album}/members/{device}/remove", api.remove_member),
        ("GET", "/albums/{album}/files", api.list_files),
        ("GET", "/albums/{album}/trash", api.list_trash),
        ("POST", "/invites", api.create_invite),
        ("GET", "/invites", api.list_invites),
        ("POST", "/invites/accept", api.accept_invite),
        ("POST", "/invites/{album}/decline", api.decline_invite),
        ("POST", "/invites/{invite_id}/cancel", api.cancel_invite),
        ("GET", "/peers", api.list_peers),
        ("POST", "/peers", api.add_peer),
        ("GET", "/activity", api.list_activity),
        ("GET", "/albums/{album}/files/{file}/thumbnail", api.thumbnail),
        ("GET", "/albums/{album}/files/{file}/original", api.original),
        ("POST", "/albums/{album}/cover", api.set_cover),
        ("GET", "/albums/{album}/history", api.history),
        ("POST", "/albums/{album}/trash/restore", api.restore_from_trash),
        ("GET", "/nearby", api.list_nearby),
        ("POST", "/api-key/rotate", api.rotate_key),
        ("GET", "/relays", api.list_relays),
        ("POST", "/relays", api.add_relay),
        ("POST", "/relays/remove", api.remove_relay),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, V1 + path, handler)


def make_api_guard(
    core: Core, sessions: Sessions | None = None
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: API key or page session first, then the handler, with every failure as a
    JSON error."""

    @web.middleware
    async def api_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_api(request):
            return await handler(request)
        if not _origin_allowed(request.headers.get("Origin")):
            return error_response(
                403, "forbidden_origin", "the API answers only pages served by this UI"
            )
        try:
            if not _page_session(request, sessions):
                require_api_key(request, core.api_key)
            return await handler(request)
        except RequestError as exc:
            return error_response(400, exc.code, exc.message, exc.field)
        except CsrfError:
            return error_response(
                403, "csrf", "this page's security token is missing or stale; reload the page"
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code, message = HTTP_ERRORS.get(exc.status, ("http_error", exc.reason))
            return error_response(exc.status, code, message)
        except (DaemonError, ProtocolError) as exc:
            status, code = status_for(exc)
            return error_response(status, code, exc.message)
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            return error_response(500, "internal", INTERNAL)

    return api_guard


def _page_session(request: web.Request, sessions: Sessions | None) -> bool:
    """True for a request from one of our pages: a live session cookie and that session's CSRF
    token (webui/session.py). A session without its token is refused outright (403 csrf): the
    cookie alone is what a forged cross-site request would carry. With an API key, the key decides."""
    if sessions is None or api_key_from(request) is not None:
        return False
    session = sessions.known(request)
    if session is None:
        return False
    if not sessions.token_matches(session, request):
        raise CsrfError
    return True


class CsrfError(web.HTTPForbidden):
    """A page session without its CSRF token."""


def status_for(exc: Exception) -> tuple[int, str]:
    """The HTTP status and error code for an exception, from ERROR_STATUS."""
    for kind, status, code in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal"


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


class Api:
    """The handlers; each reads the request, calls the engine or a report, and answers JSON."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.engine = core.engine

    # --- device ---------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return _json(await reports.status_report(self.core))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def list_activity(self, request: web.Request) -> web.Response:
        limit = _query_int(request, "limit", 200, 1, reports.MAX_ACTIVITY)
        return _json(await reports.activity(self.core, limit))

    # --- albums ---------------------------------------------------------------------------------

    async def list_albums(self, request: web.Request) -> web.Response:
        return _json(await reports.album_summaries(self.core))

    async def create_album(self, request: web.Request) -> web.Response:
        body = await read_body(
            request,
            {
                "path": Field(str, required=True, max_chars=MAX_PATH_CHARS),
                "name": Field(str, max_chars=MAX_NAME_CHARS),
            },
        )
        path = _absolute_path(body["path"], "path")
        name = _album_name(body.get("name") or path.name or str(path))
        album = await self.engine.create_album(path, name)
        return _json(await reports.album_summary(self.core, album), status=201)

    async def get_album(self, request: web.Request) -> web.Response:
        return await self._summary(self._album(request))

    async def rename_album(self, request: web.Request) -> web.Response:
        body = await read_body(
            request, {"name": Field(str, required=True, max_chars=MAX_NAME_CHARS)}
        )
        album = self._album(request)
        await self.engine.rename_album(album.album_id, _album_name(body["name"]))
        return await self._summary(album)

    async def relocate_album(self, request: web.Request) -> web.Response:
        body = await read_body(
            request, {"path": Field(str, required=True, max_chars=MAX_PATH_CHARS)}
        )
        album = self._album(request)
        await self.engine.relocate_album(album.album_id, _absolute_path(body["path"], "path"))
        return await self._summary(album)

    async def leave_album(self, request: web.Request) -> web.Response:
        await read_body(request, {})
        album = self._album(request)
        await self.engine.leave_album(album.album_id)
        return await self._summary(album)

    async def delete_album(self, request: web.Request) -> web.Response:
        await read_body(request, {})
        album = self._album(request)
        await self.engine.delete_album(album.album_id)
        return await self._summary(album)

    async def stop_sharing(self, request: web.Request) -> web.Response:
        await read_body(request, {})
        album = self._album(request)
        removed = await self.engine.stop_sharing(album.album_id)
        return _json({"album_id": album.printable_id, "removed": removed})

    async def list_members(self, request: web.Request) -> web.Response:
        return _json(reports.members(self.core, self._album(request)))

    async def set_role(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"role": Field(str, required=True, choices=ROLES)})
        album, device = self._album(request), _device(request.match_info["device"], "device")
        await self.engine.set_role(album.album_id, device, Role.parse(body["role"]))
        return _json(reports.members(self.core, album))

    async def remove_member(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"keep_photos": Field(bool)})
        album, device = self._album(request), _device(request.match_info["device"], "device")
        keep = bool(body.get("keep_photos", False))
        await self.engine.remove_member(album.album_id, device, keep_photos=keep)
        return _json(reports.members(self.core, album))

    async def list_files(self, request: web.Request) -> web.Response:
        album = self._album(request)
        offset = _query_int(request, "offset", 0, 0, 2**31)
        limit = _query_int(request, "limit", DEFAULT_FILES_PAGE, 1, MAX_FILES_PAGE)
        page = reports.files(self.core, album, offset, limit)
        # Capture times order the grid: read the ones not known yet, in the background.
        thumbs = self.core.thumbnails
        thumbs.index_later(
            (f.cache_key, _opener(album, f))
            for f in reports.on_disk(album)
            if thumbs.meta(f.cache_key) is None
        )
        return _json(page)

    async def list_trash(self, request: web.Request) -> web.Response:
        return _json(await reports.trash(self._album(request)))

    # --- invites --------------------------------------------------------------------------------

    async def create_invite(self, request: web.Request) -> web.Response:
        body = await read_body(
            request,
            {
                "album": Field(str, required=True, max_chars=MAX_ID_TEXT),
                "role": Field(str, required=True, choices=ROLES),
                "to_device": Field(str, max_chars=MAX_ID_TEXT),
                "message": Field(str, max_chars=MAX_MESSAGE_CHARS),
            },
        )
        album = self._album_by_text(body["album"], "album")
        to = _device(body["to_device"], "to_device") if body.get("to_device") else None
        message = _checked(check_message, body.get("message") or "", "message")
        invite_id, code = await self.engine.create_invite(
            album.album_id, role=Role.parse(body["role"]), message=message, to_device=to
        )
        return _json({"invite_id": invite_id.hex(), "code": code}, status=201)

    async def list_invites(self, request: web.Request) -> web.Response:
        return _json(
            {
                "outgoing": await reports.invites_out(self.core),
                "incoming": await reports.invites_in(self.core),
            }
        )

    async def accept_invite(self, request: web.Request) -> web.Response:
        body = await read_body(
            request,
            {
                "code": Field(str, max_chars=MAX_CODE_TEXT),
                "album": Field(str, max_chars=MAX_ID_TEXT),
                "path": Field(str, required=True, max_chars=MAX_PATH_CHARS),
            },
        )
        path = _absolute_path(body["path"], "path")
        if bool(body.get("code")) == bool(body.get("album")):
            raise RequestError("invalid", "give either an invite code or an album ID", "code")
        if body.get("code"):
            album_id = await self.engine.redeem_code(body["code"], path)
            return _json({"album_id": str(AlbumId(album_id)), "state": "joining"}, status=202)
        album = self._album_by_text(body["album"], "album")
        joined = await self.engine.accept_invite(album.album_id, path)
        return await self._summary(joined)

    async def decline_invite(self, request: web.Request) -> web.Response:
        await read_body(request, {})
        album = self._album(request)
        await self.engine.decline_invite(album.album_id)
        return _json({"album_id": album.printable_id, "state": "declined"})

    async def cancel_invite(self, request: web.Request) -> web.Response:
        await read_body(request, {})
        invite_id = _invite_id(request.match_info["invite_id"])
        await self.engine.cancel_invite(invite_id)
        return _json({"invite_id": invite_id.hex(), "state": "cancelled"})

    # --- peers ----------------------------------------------------------------------------------

    async def list_peers(self, request: web.Request) -> web.Response:
        return _json(reports.peers(self.core))

    async def add_peer(self, request: web.Request) -> web.Response:
        body = await read_body(
            request,
            {
                "device_id": Field(str, required=True, max_chars=MAX_ID_TEXT),
                "address": Field(str, required=True, max_chars=MAX_ADDRESS_CHARS),
            },
        )
        device = _device(body["device_id"], "device_id")
        if device == self.core.identity.device_id:
            raise RequestError("invalid", "that is this device's own ID", "device_id")
        await self.engine.add_peer(device, _peer_address(body["address"]))
        found = next(p for p in reports.peers(self.core) if p.device_id == str(device))
        return _json(found)

    async def rotate_key(self, request: web.Request) -> web.Response:
        """A new key in the key file; the old one is refused from the next request on. The new
        key is never sent back: the CLI (and scripts) read it from the file."""
        await read_body(request, {})
        self.core.api_key = await asyncio.to_thread(rotate_api_key, self.core.config.api_key_path)
        return web.json_response({"rotated": True, "path": str(self.core.config.api_key_path)})

    async def list_relays(self, request: web.Request) -> web.Response:
        return _json(reports.relays(self.core))

    async def add_relay(self, request: web.Request) -> web.Response:
        body = await read_body(
            request, {"uri": Field(str, required=True, max_chars=MAX_RELAY_CHARS)}
        )
        return _json(reports.relay_info(await self.core.relays.add(body["uri"])))

    async def remove_relay(self, request: web.Request) -> web.Response:
        body = await read_body(
            request, {"uri": Field(str, required=True, max_chars=MAX_RELAY_CHARS)}
        )
        await self.core.relays.remove(body["uri"])
        return _json(reports.relays(self.core))

    # --- photos, cover, history, trash, nearby (the pages' needs) ------------------------------

    async def thumbnail(self, request: web.Request) -> web.Response:
        album, found = self._file(request)
        thumb = await self.core.thumbnails.thumbnail(found.cache_key, _opener(album, found))
        if thumb is None:
            return web.Response(
                body=GENERIC_TILE,
                content_type="image/svg+xml",
                headers={"Content-Security-Policy": USER_BYTES_CSP, "X-Albumsync-Tile": "generic"},
            )
        return web.Response(
            body=thumb,
            content_type="image/jpeg",
            headers={"Content-Security-Policy": USER_BYTES_CSP},
        )

    async def original(self, request: web.Request) -> web.StreamResponse:
        album, found = self._file(request)
        fd = await asyncio.to_thread(_opener(album, found))
        try:
            head = await asyncio.to_thread(os.pread, fd, SNIFF_BYTES, 0)
            response = web.StreamResponse(headers=_original_headers(found.path, sniff(head)))
            response.content_length = found.size
            await response.prepare(request)
            offset = 0
            while offset < found.size:
                want = min(ORIGINAL_CHUNK, found.size - offset)
                data = await asyncio.to_thread(os.pread, fd, want, offset)
                if not data:
                    break
                await response.write(data)
                offset += len(data)
            await response.write_eof()
            return response
        finally:
            os.close(fd)

    async def set_cover(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"file": Field(str, max_chars=2 * FILE_KEY_BYTES)})
        album = self._album(request)
        key = _file_key(body["file"]) if body.get("file") else None
        await self.engine.set_cover(album.album_id, key)
        return await self._summary(album)

    async def history(self, request: web.Request) -> web.Response:
        return _json(reports.history(self.core, self._album(request)))

    async def restore_from_trash(self, request: web.Request) -> web.Response:
        body = await read_body(
            request, {"trash_path": Field(str, required=True, max_chars=MAX_PATH_CHARS)}
        )
        album = self._album(request)
        restored = await self.engine.restore_from_trash(album.album_id, body["trash_path"])
        return _json({"album_id": album.printable_id, "restored": restored})

    async def list_nearby(self, request: web.Request) -> web.Response:
        return _json(reports.nearby(self.core))

    # --- helpers --------------------------------------------------------------------------------

    def _file(self, request: web.Request) -> tuple[Album, reports.Located]:
        """The album and the file its listing calls {file}; 404 if there is none, 409 if this
        device does not hold that version yet."""
        album = self._album(request)
        found = reports.locate(album, request.match_info["file"])
        if found is None:
            raise AlbumNotFoundError("no file with that ID in this album (see its files listing)")
        if not found.on_disk:
            raise FileChangedError("this photo is not on this device yet; it is being synced")
        return album, found

    def _album(self, request: web.Request) -> Album:
        return self._album_by_text(request.match_info["album"], "album")

    def _album_by_text(self, text: str, field: str) -> Album:
        try:
            album_id = AlbumId.parse(text)
        except DecodeError as exc:
            raise RequestError("invalid", f"{field}: {exc.message}", field) from None
        return self.engine.album(album_id.raw)

    async def _summary(self, album: Album) -> web.Response:
        return _json(await reports.album_summary(self.core, album))


async def read_body(request: web.Request, spec: Mapping[str, Field]) -> dict[str, Any]:
    """The request's JSON object, checked against `spec`; RequestError names the field at fault."""
    raw = await request.read()  # aiohttp refuses more than client_max_size (413)
    if not raw.strip():
        data: object = {}
    else:
        try:
            data = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise RequestError("bad_json", f"the body is not valid JSON ({_why(exc)})") from None
    if not isinstance(data, dict):
        raise RequestError("bad_json", "the body must be a JSON object")
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise RequestError("unknown_field", f"unknown field '{unknown[0]}'", unknown[0])
    for name, field in spec.items():
        _check_field(name, field, data.get(name))
    return {k: v for k, v in data.items() if v is not None}


def _check_field(name: str, field: Field, value: object) -> None:
    if value is None:
        if field.required:
            raise RequestError("missing_field", f"the field '{name}' is required", name)
        return
    kind_ok = isinstance(value, field.kind) and not (field.kind is int and isinstance(value, bool))
    if not kind_ok:
        raise RequestError(
            "wrong_type",
            f"'{name}' must be {TYPE_NAMES[field.kind]}, not {_json_type(value)}",
            name,
        )
    if isinstance(value, str):
        if not _is_utf8(value):
            raise RequestError("invalid", f"'{name}' is not valid Unicode text", name)
        if field.required and not value.strip():
            raise RequestError("missing_field", f"the field '{name}' is empty", name)
        if field.max_chars and len(value) > field.max_chars:
            raise RequestError(
                "too_long", f"'{name}' is longer than {field.max_chars} characters", name
            )
        if field.choices and value not in field.choices:
            raise RequestError(
                "invalid", f"'{name}' must be one of {', '.join(field.choices)}", name
            )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object"})
    return names.get(type(value), "something else")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the field '{key}' appears twice")
        result[key] = value
    return result


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _why(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise RequestError("wrong_type", f"'{name}' must be a whole number", name)
    value = int(text)
    if not low <= value <= high:
        raise RequestError("invalid", f"'{name}' must be between {low} and {high}", name)
    return value


def _device(text: str, field: str) -> DeviceId:
    try:
        return DeviceId.parse(text)
    except DecodeError as exc:
        raise RequestError("invalid", f"{field}: {exc.message}", field) from None


def _invite_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text) if len(text) == 2 * INVITE_ID_SIZE else b""
    except ValueError:
        raw = b""
    if not raw:
        raise RequestError(
            "invalid",
            f"an invite ID is {2 * INVITE_ID_SIZE} hexadecimal digits (see `albumsync invite list`)",
            "invite_id",
        )
    return raw


def _absolute_path(text: str, field: str) -> Path:
    if "\0" in text or not PurePosixPath(text).is_absolute():
        raise RequestError("invalid", f"'{field}' must be an absolute folder path", field)
    return Path(text)


def _album_name(text: str) -> str:
    return _checked(check_name, text.strip(), "name")


def _checked(check: Callable[[str], str], text: str, field: str) -> str:
    try:
        return check(text)
    except ProtocolError as exc:
        raise RequestError("invalid", f"{field}: {exc.message}", field) from None


def _peer_address(text: str) -> str:
    """A tcp://HOST:PORT address with nothing else in it."""
    problem = "a peer address looks like tcp://HOST:PORT, e.g. tcp://192.168.1.20:22055"
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise RequestError("invalid", problem, "address") from None
    if any(c.isspace() or not c.isprintable() for c in text):
        raise RequestError("invalid", problem, "address")
    plain = not (parts.path or parts.query or parts.fragment or parts.username or parts.password)
    if parts.scheme != "tcp" or not parts.hostname or not port or not plain:
        raise RequestError("invalid", problem, "address")
    return text


def _opener(album: Album, found: reports.Located) -> Callable[[], int]:
    """Opens the file in the album folder (symlink-safe) and checks it is the listed version."""
    folder = album.folder
    if folder is None:
        raise FileChangedError("the album has no folder on this device")

    def open_fd() -> int:
        fd = folder.open_read(found.path)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (found.size, found.mtime_ns):
            os.close(fd)
            raise FileChangedError("the file changed since it was scanned; try again in a moment")
        return fd

    return open_fd


def _original_headers(path: str, image_type: str | None) -> dict[str, str]:
    """Images the browser can show are served inline with the type sniffed here; anything else is
    a download. Either way, the bytes run sandboxed should a browser ever render them (W7)."""
    name = PurePosixPath(path).name
    fallback = "".join(c if (c.isascii() and c.isalnum()) or c in "._- " else "_" for c in name)
    disposition = "inline" if image_type else "attachment"
    return {
        # Streamed: sent before the security_headers middleware sees the response.
        **SECURITY_HEADERS,
        "Cache-Control": "no-store",
        "Content-Type": image_type or "application/octet-stream",
        "Content-Disposition": f'{disposition}; filename="{fallback}"; '
        f"filename*=UTF-8''{quote(name, safe='')}",
        "Content-Security-Policy": USER_BYTES_CSP,
    }


def _file_key(text: str) -> tuple[bytes, bytes]:
    """A published file's ID (author key + file ID, in hex) as its manifest key."""
    try:
        raw = bytes.fromhex(text) if len(text) == 2 * FILE_KEY_BYTES else b""
    except ValueError:
        raw = b""
    if not raw:
        raise RequestError(
            "invalid", "'file' must be the ID of a published photo from the files listing", "file"
        )
    return raw[:PUBLIC_KEY_SIZE], raw[PUBLIC_KEY_SIZE:]


def _origin_allowed(origin: str | None) -> bool:
    """No Origin (CLI, scripts) or a localhost one (our pages); a foreign site is refused (W3)."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and host_allowed(parts.netloc)


def _is_api(request: web.Request) -> bool:
    """Whether the key is required: by path, and by the matched route (however the path was spelt)."""
    if request.path == API_PREFIX.rstrip("/") or request.path.startswith(API_PREFIX):
        return True
    route = request.match_info.route
    resource = route.resource
    return resource is not None and resource.canonical.startswith(API_PREFIX)


def _json(value: object, status: int = 200) -> web.Response:
    return web.json_response(to_json(value), status=status)
