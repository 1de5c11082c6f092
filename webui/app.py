"""create_app(core) -> the localhost aiohttp application (pages + /api/v1)."""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web

from daemon.core import Core
from webui.api import setup_api
from webui.security import make_host_check, security_headers

CORE: web.AppKey[Core] = web.AppKey("core", Core)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
HERE = Path(__file__).resolve().parent


def create_app(core: Core) -> web.Application:
    app = web.Application(
        middlewares=[make_host_check(), security_headers], client_max_size=1024 * 1024
    )
    app[CORE] = core
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_get("/", index_page)
    setup_api(app, core)
    app.router.add_static("/static/", HERE / "static", append_version=True)
    return app


async def index_page(request: web.Request) -> web.Response:
    status = await request.app[CORE].status()
    html = request.app[TEMPLATES].get_template("index.html").render(status=status)
    return web.Response(text=html, content_type="text/html")
