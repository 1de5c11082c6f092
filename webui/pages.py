"""The server-rendered pages: albums, one album, devices, activity.

Each page renders its first view from `daemon.reports` (so it shows without waiting for any
script), starts or continues the browser's session (webui/session.py) and carries its CSRF token;
webui/static/app.js then performs actions through /api/v1 and refreshes what changes. Controls a
role may not use are not rendered (the API refuses them anyway). Everything is escaped by jinja2's
autoescape; nothing a peer or a file name says reaches the page unescaped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from daemon import reports
from daemon.album import Album
from daemon.core import Core
from daemon.errors import DaemonError
from daemon.model import AlbumSummary
from protocol.errors import DecodeError
from protocol.ids import AlbumId
from webui.session import Sessions, set_cookie

CORE: web.AppKey[Core] = web.AppKey("core", Core)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
SESSIONS: web.AppKey[Sessions] = web.AppKey("sessions", Sessions)
FIRST_PAGE = 120  # tiles rendered with the page; the script loads the rest as the grid scrolls
PAST_STATES = ("left", "removed", "declined", "deleted")


@dataclass(frozen=True)
class Can:
    """Which controls this device's role shows on an album page."""

    manage: bool  # owner of a live album: rename, cover, invite, members, stop sharing, delete
    leave: bool  # a member of a live album
    answer: bool  # an invite waits for our answer
    restore: bool  # the album is live here and has a folder

    @classmethod
    def of(cls, summary: AlbumSummary) -> Can:
        live = summary.state == "active" and not summary.fork
        return cls(
            manage=live and summary.role == "owner",
            leave=summary.state == "active" and summary.role in ("editor", "viewer"),
            answer=summary.state == "invited",
            restore=summary.state == "active" and summary.path is not None,
        )


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/", albums_page, name="albums")
    app.router.add_get("/albums/{album}", album_page, name="album")
    app.router.add_get("/devices", devices_page, name="devices")
    app.router.add_get("/activity", activity_page, name="activity")


async def albums_page(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    summaries = await reports.album_summaries(core)
    incoming = [i for i in await reports.invites_in(core) if i.state == "pending"]
    return await render(
        request,
        "albums.html",
        "albums",
        mine=[a for a in summaries if a.role == "owner" and a.state == "active"],
        shared=[a for a in summaries if a.role in ("editor", "viewer") and a.state == "active"],
        joining=[a for a in summaries if a.state == "joining"],
        past=[a for a in summaries if a.state in PAST_STATES],
        incoming=incoming,
        covers={a.album_id: _cover(core, a) for a in summaries},
    )


def _cover(core: Core, summary: AlbumSummary) -> str | None:
    """The owner's chosen cover, else the album's first photo (in grid order)."""
    if summary.cover or summary.state not in ("active", "invited"):
        return summary.cover
    album = _album(core, summary.album_id)
    first = reports.files(core, album, 0, 1) if album is not None else []
    return first[0].id if first and first[0].local in ("synced", "local_only") else None


async def album_page(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    album = _album(core, request.match_info["album"])
    if album is None:
        return await render(request, "missing.html", "albums", http_status=404)
    summary = await reports.album_summary(core, album)
    can = Can.of(summary)
    try:
        trash = await reports.trash(album) if can.restore else []
    except DaemonError:
        trash = []  # the folder is unavailable; the page says so from folder_state
    invites = [
        i
        for i in await reports.invites_out(core)
        if i.album_id == summary.album_id and i.state == "open"
    ]
    incoming = next(
        (i for i in await reports.invites_in(core) if i.album_id == summary.album_id), None
    )
    return await render(
        request,
        "album.html",
        "albums",
        album=summary,
        can=can,
        files=reports.files(core, album, 0, FIRST_PAGE),
        page_size=FIRST_PAGE,
        members=reports.members(core, album),
        invites=invites,
        incoming=incoming,
        trash=trash,
        history=reports.history(core, album),
        nearby=reports.nearby(core) if can.manage else [],
    )


async def devices_page(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    status = await reports.status_report(core)
    return await render(
        request,
        "devices.html",
        "devices",
        status=status,
        id_groups=status.device_id.split("-"),
        nearby=reports.nearby(core),
        peers=reports.peers(core),
        relays=reports.relays(core),
    )


async def activity_page(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    summaries = await reports.album_summaries(core)
    attention = [a for a in summaries if needs_attention(a)]
    incoming = [i for i in await reports.invites_in(core) if i.state == "pending"]
    return await render(
        request,
        "activity.html",
        "activity",
        attention=attention,
        incoming=incoming,
        activity=await reports.activity(core, 200),
        names={a.album_id: a.name for a in summaries},
    )


def needs_attention(album: AlbumSummary) -> bool:
    """Problems only a person can solve: a forked history, a missing folder, a disk error."""
    live = album.state in ("active", "invited")
    return live and (album.fork or album.folder_state not in ("ok", "none") or bool(album.problems))


async def render(
    request: web.Request, template: str, section: str, http_status: int = 200, **values: Any
) -> web.StreamResponse:
    """Render a page with the nav, this device and the session's CSRF token; set the cookie."""
    app = request.app
    core = app[CORE]
    session, token, new = app[SESSIONS].start(request)
    html = (
        app[TEMPLATES]
        .get_template(template)
        .render(
            section=section,
            csrf_token=token,
            me_name=core.identity.name,
            me_id=str(core.identity.device_id),
            static=_static_url(app),
            when=when,
            day=day,
            size=human_size,
            **values,
        )
    )
    response = web.Response(text=html, content_type="text/html", status=http_status)
    response.headers["Cache-Control"] = "no-store"  # the page carries the session's token
    if new:
        set_cookie(response, session)
    return response


def _static_url(app: web.Application) -> Callable[[str], str]:
    resource = app.router.get("static", None)

    def url(name: str) -> str:
        if resource is None:
            return f"/static/{name}"
        return str(resource.url_for(filename=name))

    return url


def _album(core: Core, text: str) -> Album | None:
    try:
        album_id = AlbumId.parse(text)
    except DecodeError:
        return None
    return core.engine.albums.get(album_id.raw)


def when(at: float | None, now: float | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', else the date: what a person reads at a glance."""
    if at is None:
        return "never"
    ago = (now if now is not None else time.time()) - at
    if ago < 60:
        return "just now"
    if ago < 3600:
        return f"{int(ago // 60)} min ago"
    if ago < 86400:
        return f"{int(ago // 3600)} h ago"
    return time.strftime("%d %b %Y", time.localtime(at))


def day(at: float) -> str:
    return time.strftime("%d %b %Y", time.localtime(at))


def human_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
