"""create_app(core) -> the localhost aiohttp application (pages + /api/v1)."""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web

from daemon.core import Core
from webui.api import setup_api
from webui.pages import CORE, SESSIONS, TEMPLATES, setup_pages
from webui.security import make_host_check, security_headers
from webui.session import Sessions

HERE = Path(__file__).resolve().parent
__all__ = ["CORE", "SESSIONS", "TEMPLATES", "create_app"]


def create_app(core: Core) -> web.Application:
    app = web.Application(
        middlewares=[make_host_check(), security_headers], client_max_size=1024 * 1024
    )
    sessions = Sessions()
    app[CORE] = core
    app[SESSIONS] = sessions
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    setup_pages(app)
    setup_api(app, core, sessions)
    app.router.add_static("/static/", HERE / "static", append_version=True, name="static")
    app.on_cleanup.append(_close_thumbnails)
    return app


async def _close_thumbnails(app: web.Application) -> None:
    if "thumbnails" in vars(app[CORE]):  # only if a page or call ever made it
        app[CORE].thumbnails.close()
