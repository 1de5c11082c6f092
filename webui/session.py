"""Browser sessions for the pages: a cookie that names the session, and its CSRF token.

Trust model (Syncthing's localhost default): whoever can load a page from this UI on a localhost Host
name is the person at this machine. Loading any page gives the browser a session cookie
(`albumsync_session`: 32 random bytes from `secrets`, HttpOnly, SameSite=Strict, Path=/) and puts the
session's CSRF token in the page (`<meta name="csrf-token">`). Our JavaScript sends both to /api/v1:
the cookie alone proves nothing (a browser attaches it to requests other sites trigger, were it not
for SameSite), the token proves the request comes from a page we served, since no other origin can
read our pages (Host check, no CORS). The API takes either this pair or the API key (CLI, scripts).

Sessions live in memory only: a restarted daemon forgets them and pages reload to get a new one.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

from aiohttp import web

SESSION_COOKIE = "albumsync_session"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_BYTES = 32
MAX_SESSIONS = 256  # tabs and browsers of one person; the oldest is forgotten beyond this
MAX_COOKIE_CHARS = 128


class Sessions:
    """Session ID -> CSRF token, newest last; both compared in constant time."""

    def __init__(self) -> None:
        self._tokens: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def start(self, request: web.Request) -> tuple[str, str, bool]:
        """(session ID, CSRF token, is new) for a page request: its session, or a new one."""
        current = self.known(request)
        if current is not None:
            self._tokens.move_to_end(current)
            return current, self._tokens[current], False
        session = secrets.token_urlsafe(TOKEN_BYTES)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._tokens[session] = token
        while len(self._tokens) > MAX_SESSIONS:
            self._tokens.popitem(last=False)
        return session, token, True

    def known(self, request: web.Request) -> str | None:
        """The request's session ID if it names a live session."""
        given = request.cookies.get(SESSION_COOKIE)
        if not given or len(given) > MAX_COOKIE_CHARS:
            return None
        for session in self._tokens:
            if secrets.compare_digest(session.encode(), given.encode()):
                return session
        return None

    def token_matches(self, session: str, request: web.Request) -> bool:
        """Whether the request carries this session's CSRF token."""
        given = request.headers.get(CSRF_HEADER, "")
        if not given or len(given) > MAX_COOKIE_CHARS:
            return False
        return secrets.compare_digest(self._tokens[session].encode(), given.encode())


def set_cookie(response: web.StreamResponse, session: str) -> None:
    """The session cookie: no script can read it, no other site's request carries it."""
    response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="Strict", path="/")
