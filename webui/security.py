"""Middlewares that guard the local UI: Host check, API key, and security headers.

The Host check defeats DNS rebinding (a page on evil.test resolving to 127.0.0.1 would otherwise
be same-origin with us); it runs before any handler or database access (TESTPLAN W1).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from daemon.apikey import keys_match

log = logging.getLogger("albumsync.webui")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LOCAL_HOSTNAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})


def host_allowed(host_header: str | None, extra: frozenset[str] = frozenset()) -> bool:
    """True for localhost names (any port); everything else could be a rebinding attack."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name, rest = host[1:end], host[end + 1 :]
    else:
        name, _, port = host.partition(":")
        rest = ":" + port if port else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return False
    return name in LOCAL_HOSTNAMES or name in extra


def make_host_check(
    extra: frozenset[str] = frozenset(),
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # An absolute-form target (GET http://evil/ HTTP/1.1) names another host than Host does.
        absolute_form = not request.raw_path.startswith("/")
        if absolute_form or not host_allowed(request.headers.get("Host"), extra):
            return web.json_response(
                {"error": "forbidden_host", "message": "this UI answers only on localhost names"},
                status=403,
                headers=SECURITY_HEADERS,
            )
        return await handler(request)

    return host_check


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    except Exception:
        # aiohttp's own 500 would go out without these headers (TESTPLAN W5); the details go
        # to the log, never to the person.
        log.exception("%s %s failed", request.method, request.path)
        response = web.Response(
            status=500,
            text="albumsync hit an internal error; the details are in its log.",
            content_type="text/plain",
        )
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response


def api_key_from(request: web.Request) -> str | None:
    """The key from X-API-Key or 'Authorization: Bearer'; never from the query string (W4)."""
    if "X-API-Key" in request.headers:
        return request.headers["X-API-Key"]
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :]
    return None


def require_api_key(request: web.Request, expected: str) -> None:
    given = api_key_from(request)
    if given is None or not keys_match(given, expected):
        raise web.HTTPUnauthorized(
            text='{"error": "unauthorized", "message": "missing or wrong API key"}',
            content_type="application/json",
        )
