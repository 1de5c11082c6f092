"""The local UI's guards as fast in-process tests: Host check, CSRF on every state change, the API
key, CORS and security headers, the loopback default, and hostile names on every page.

Real Core, real SQLite, the aiohttp test client; no daemon processes. "No side effect" is checked
by diffing every table of the store (read through a second, read-only SQLite connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from daemon import reports
from daemon.cli import build_parser
from daemon.config import Config, parse_host_port
from daemon.core import Core
from daemon.peers import DialState
from protocol.ids import DeviceId
from protocol.rights import Role
from tests.webui.test_api import OTHER_DEVICE, ClientFactory, open_core
from tests.webui.test_pages import OWNER_KEY, add_local_file, member_album, page
from webui.app import SESSIONS, create_app
from webui.openapi import OPENAPI
from webui.security import Handler
from webui.session import CSRF_HEADER

pytestmark = pytest.mark.timeout(60)

PAGES = ("/", "/devices", "/activity")


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    home = tmp_path / "home"
    home.mkdir()
    core = await open_core(home)
    yield core
    await core.close()


Snapshot = dict[str, list[tuple[Any, ...]]]


# --- helpers ----------------------------------------------------------------------------------------


def snapshot(core: Core) -> Snapshot:
    """Every row of every table of the store, plus what the engine holds in memory."""
    db = sqlite3.connect(f"file:{core.config.home / 'state.db'}?mode=ro", uri=True)
    try:
        tables = [
            row[0]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        found: Snapshot = {
            t: sorted(map(tuple, db.execute(f'SELECT * FROM "{t}"'))) for t in tables
        }
    finally:
        db.close()
    found["engine"] = sorted(
        (str(a.album_id), a.state, a.name, str(a.path)) for a in core.engine.albums.values()
    )
    return found


def with_counter(app: web.Application) -> list[str]:
    """Record every request that gets past the guards to a handler (innermost middleware)."""
    reached: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        reached.append(f"{request.method} {request.path}")
        return await handler(request)

    app.middlewares.append(count)
    return reached


async def raw_status(client: TestClient[Any, Any], request: bytes) -> int:
    """Send bytes as they are (no client fixing up Host or the target) and read the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            first = await reader.readline()
            await reader.read()  # Connection: close - drain so the server finishes cleanly
    finally:
        writer.close()
        await writer.wait_closed()
    return int(first.split()[1])


def operations(method: str) -> list[str]:
    """Every documented /api/v1 path that takes `method` (the OpenAPI document is the list)."""
    return [
        path
        for path, item in OPENAPI["paths"].items()
        if method in item  # OpenAPI keys are lower-case methods
    ]


def filled(path: str, album: str) -> str:
    return (
        path.replace("{album}", album)
        .replace("{device}", OTHER_DEVICE)
        .replace("{invite_id}", "00" * 16)
        .replace("{file}", "local-" + "0" * 32)
    )


def body_for(path: str, folder: Path) -> dict[str, Any]:
    """A body the handler would act on, so a guard that let it through would leave a trace."""
    if path == "/api/v1/albums":
        return {"path": str(folder), "name": "Forged"}
    if path.endswith("/rename"):
        return {"name": "Forged"}
    if path.endswith("/role"):
        return {"role": "editor"}
    if path == "/api/v1/relays":
        return {"uri": "relay://127.0.0.1:1"}
    if path == "/api/v1/peers":
        return {"device_id": OTHER_DEVICE, "address": "127.0.0.1:1"}
    return {}


class Shape(HTMLParser):
    """The set of (tag, attribute names) a document has, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: set[tuple[str, tuple[str, ...]]] = set()
        self.attribute_values: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.add((tag, tuple(sorted(name for name, _ in attrs))))
        self.attribute_values += [value or "" for _, value in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def shape(html: str) -> Shape:
    parser = Shape()
    parser.feed(html)
    parser.close()
    return parser


# --- W1 -------------------------------------------------------------------------------------------


async def test_W1_host_header_check(core: Core, aiohttp_client: ClientFactory) -> None:
    app = create_app(core)
    reached = with_counter(app)
    client = await aiohttp_client(app)
    port = client.port
    sessions = app[SESSIONS]
    before = snapshot(core)

    def get(host: str | None, target: str = "/", version: str = "1.1") -> bytes:
        host_line = f"Host: {host}\r\n" if host is not None else ""
        return f"GET {target} HTTP/{version}\r\n{host_line}Connection: close\r\n\r\n".encode()

    refused = [
        get("evil.com"),
        get(f"evil.com:{port}"),
        get("localhost.evil.com"),
        get(f"127.0.0.1.nip.io:{port}"),
        get(None, version="1.0"),  # HTTP/1.0 may omit Host: our check refuses it
        get(f"127.0.0.1:{port}", target="http://evil.com/"),
        get(f"127.0.0.1:{port}", target=f"http://evil.com:{port}/api/v1/status"),
    ]
    for request in refused:
        assert await raw_status(client, request) in (403, 421), request
    # HTTP/1.1 without Host: aiohttp's parser refuses it (400) before any middleware.
    assert await raw_status(client, get(None)) in (400, 403)
    assert reached == []  # no handler ran
    assert len(sessions) == 0  # not even the page session was started
    assert snapshot(core) == before

    for host in (f"127.0.0.1:{port}", f"[::1]:{port}", "localhost", "localhost."):
        assert await raw_status(client, get(host)) == 200, host
    assert len(reached) == 4


# --- W3 -------------------------------------------------------------------------------------------


async def test_W3_csrf_every_state_change(
    core: Core, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    app = create_app(core)
    reached = with_counter(app)
    browser = await aiohttp_client(app)
    other = await aiohttp_client(app)
    key = {"X-API-Key": core.api_key}
    owned = tmp_path / "Owned"
    owned.mkdir()
    made = await browser.post("/api/v1/albums", json={"path": str(owned)}, headers=key)
    assert made.status == 201
    album = str((await made.json())["album_id"])
    target = tmp_path / "Target"
    target.mkdir()
    _, token = await page(browser, "/")
    _, other_token = await page(other, "/")
    assert token != other_token

    posts = operations("post")
    assert len(posts) >= 15  # the enumeration found the API, not an empty document
    before = snapshot(core)
    reached.clear()
    for path in posts:
        url = filled(path, album)
        body = body_for(path, target)
        attempts: list[tuple[str, dict[str, str], dict[str, Any]]] = [
            ("no token", {}, {"json": body}),
            ("other session's token", {CSRF_HEADER: other_token}, {"json": body}),
            ("foreign origin", {CSRF_HEADER: token, "Origin": "http://evil.test"}, {"json": body}),
            (
                "cross-site text/plain form",
                {"Content-Type": "text/plain", "Origin": "http://evil.test"},
                {"data": '{"name": "Forged", "ignored": "="}'},
            ),
            ("text/plain form, no Origin", {"Content-Type": "text/plain"}, {"data": "name=Forged"}),
            (
                "urlencoded form",
                {"Content-Type": "application/x-www-form-urlencoded"},
                {"data": "name=Forged"},
            ),
        ]
        for what, headers, payload in attempts:
            resp = await browser.post(url, headers=headers, **payload)
            assert resp.status == 403, (path, what, await resp.text())
            assert (await resp.json())["error"] in ("csrf", "forbidden_origin"), (path, what)
    assert reached == []  # refused before any handler
    assert snapshot(core) == before

    # GETs never change state, with the key or with the page session.
    gets = operations("get")
    assert len(gets) >= 10
    for path in gets:
        url = filled(path, album)
        for headers in (key, {CSRF_HEADER: token}):
            resp = await browser.get(url, headers=headers)
            assert resp.status < 500, (path, await resp.text())
    for path in (*PAGES, f"/albums/{album}"):
        await page(browser, path)
    assert snapshot(core) == before

    # The same session and token do work: the refusals above were the guard, not the bodies.
    ok = await browser.post(
        f"/api/v1/albums/{album}/rename", json={"name": "Renamed"}, headers={CSRF_HEADER: token}
    )
    assert ok.status == 200, await ok.text()
    assert snapshot(core) != before


# --- W4 -------------------------------------------------------------------------------------------


async def test_W4_api_key(
    core: Core,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # As daemon/runner.py serves the UI: without aiohttp's access log (it would record the URL
    # of a client that wrongly puts the key in a query string).
    server = TestServer(create_app(core))
    await server.start_server(access_log=None)
    # The factory takes a started server too (its type only names the Application form).
    client = await cast(Any, aiohttp_client)(server)
    secret = core.api_key
    key = {"X-API-Key": secret}
    key_file = core.config.api_key_path
    assert key_file.read_text().strip() == secret
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.stat().st_uid == os.getuid()

    for headers in (
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": secret[:-1]},
        {"Authorization": secret},
    ):
        for method, url in (("GET", "/api/v1/status"), ("POST", "/api/v1/albums")):
            resp = await client.request(method, url, headers=headers, json={})
            assert resp.status == 401, (method, url, headers)
    for params in ({"api_key": secret}, {"key": secret}, {"apikey": secret}):
        resp = await client.get("/api/v1/status", params=params)
        assert resp.status == 401, params

    # Something to show on every GET, and a 500 so an exception reaches the log.
    folder = tmp_path / "Album"
    folder.mkdir()
    made = await client.post("/api/v1/albums", json={"path": str(folder)}, headers=key)
    album = str((await made.json())["album_id"])

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"failed while holding {kwargs!r}")

    monkeypatch.setattr(core.engine, "create_album", broken)
    other = tmp_path / "Other"
    other.mkdir()
    failed = await client.post("/api/v1/albums", json={"path": str(other)}, headers=key)
    assert failed.status == 500
    assert secret not in await failed.text()

    bodies = []
    for path in operations("get"):
        resp = await client.get(filled(path, album), headers=key)
        bodies.append(await resp.text())
    for path in (*PAGES, f"/albums/{album}"):
        resp = await client.get(path)
        assert resp.status == 200
        bodies.append(await resp.text())
    assert len(bodies) >= 14
    for text in bodies:
        assert secret not in text
    assert caplog.records  # the log was captured (the 500 above logs its exception)
    assert secret not in caplog.text


# --- W5 -------------------------------------------------------------------------------------------


def assert_security_headers(resp: Any, what: str) -> None:
    for name in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"):
        assert name in resp.headers, (what, name)
    csp = resp.headers["Content-Security-Policy"]
    if "sandbox" not in csp:  # user bytes get their own stricter policy (W7)
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ):
            assert directive in csp, (what, directive)
    assert resp.headers["X-Frame-Options"] == "DENY", what
    assert resp.headers["X-Content-Type-Options"] == "nosniff", what
    assert resp.headers["Referrer-Policy"] == "no-referrer", what
    for name in resp.headers:
        assert not name.lower().startswith("access-control-allow"), (what, name)


async def test_W5_cors_and_security_headers(
    core: Core, aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await aiohttp_client(create_app(core))
    key = {"X-API-Key": core.api_key}
    evil = {"Origin": "http://evil.test"}
    for url in ("/api/v1/albums", "/api/v1/status", "/"):
        preflight = await client.options(
            url,
            headers={
                **evil,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert_security_headers(preflight, f"preflight {url}")
        simple = await client.get(url, headers={**evil, **key})
        assert_security_headers(simple, f"simple {url}")
    simple_post = await client.post(
        "/api/v1/albums", data="x", headers={**evil, "Content-Type": "text/plain"}
    )
    assert simple_post.status == 403
    assert_security_headers(simple_post, "simple POST")

    static = await client.get("/static/app.js")
    assert static.status == 200
    assert_security_headers(static, "static file")
    responses = {
        "page": await client.get("/"),
        "api": await client.get("/api/v1/status", headers=key),
        "api 401": await client.get("/api/v1/status"),
        "api 404": await client.get("/api/v1/nothing-here", headers=key),
        "page 404": await client.get("/nothing-here"),
        "album 404": await client.get("/albums/" + "a" * 52),
        "static 404": await client.get("/static/nothing.js"),
    }

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(core.engine, "create_album", broken)
    folder = tmp_path / "Album"
    folder.mkdir()
    responses["api 500"] = await client.post(
        "/api/v1/albums", json={"path": str(folder)}, headers=key
    )
    assert responses["api 500"].status == 500
    assert responses["page"].status == 200
    assert responses["page 404"].status == 404
    assert responses["static 404"].status == 404
    for what, resp in responses.items():
        assert_security_headers(resp, what)
        if what.startswith("api"):
            assert resp.headers["Cache-Control"] == "no-store", what


async def test_W5_security_headers_on_a_page_500(
    core: Core, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await aiohttp_client(create_app(core))

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(reports, "album_summaries", broken)
    resp = await client.get("/")
    assert resp.status == 500
    assert "Traceback" not in await resp.text()
    assert_security_headers(resp, "page 500")


# --- W8 -------------------------------------------------------------------------------------------


def test_W8_listener_separation(tmp_path: Path) -> None:
    # The admin UI/API listens on loopback unless the person asks otherwise.
    assert Config(home=tmp_path).ui_host == "127.0.0.1"
    args = build_parser().parse_args(["run"])
    host, _ = parse_host_port(args.ui, 8384, "--ui")
    assert host == "127.0.0.1"
    assert parse_host_port(":9000", 8384, "--ui") == ("127.0.0.1", 9000)  # no host: still loopback


# --- B5 -------------------------------------------------------------------------------------------

HOSTILE_NAMES = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "{{7*7}}",
    "javascript:alert(1)",
    "gpj.\u202eexe",
)


async def seed(core: Core, folder: Path, name: str) -> str:
    """An album shared with this device, a file, a named peer and a pending invite, all `name`."""
    album = member_album(core, Role.EDITOR, folder, name=name)
    add_local_file(album, f"{name}.jpg".replace("/", "_"), b"not really a photo")
    owner = DeviceId(OWNER_KEY.public)
    core.engine.peer_names[owner] = name
    core.engine.peers.wanted[owner] = DialState(addresses=[])  # listed on /devices
    await core.store.put_invite_in(
        {
            "album_id": b"\x05" * 32,
            "owner_device": str(DeviceId(OWNER_KEY.public)),
            "owner_name": name,
            "album_name": name,
            "role": "viewer",
            "message": name,
            "state": "pending",
            "received_at": int(time.time()),
        }
    )
    return album.printable_id


def new_home(path: Path) -> Path:
    path.mkdir()
    return path


async def render_all(client: TestClient[Any, Any], album: str) -> dict[str, str]:
    return {path: (await page(client, path))[0] for path in (*PAGES, f"/albums/{album}")}


async def test_B5_hostile_names_everywhere(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    plain_core = await open_core(new_home(tmp_path / "plain"))
    hostile_core = await open_core(new_home(tmp_path / "hostile"))
    try:
        plain_folder = tmp_path / "plain-folder"
        plain_folder.mkdir()
        plain_album = await seed(plain_core, plain_folder, "Lake")
        plain = await render_all(await aiohttp_client(create_app(plain_core)), plain_album)
        for name in HOSTILE_NAMES:
            folder = tmp_path / f"folder-{HOSTILE_NAMES.index(name)}"
            folder.mkdir()
            album = await seed(hostile_core, folder, name)
            client = await aiohttp_client(create_app(hostile_core))
            pages = await render_all(client, album)
            for (path, html), plain_html in zip(pages.items(), plain.values(), strict=True):
                found, expected = shape(html), shape(plain_html)
                assert found.elements <= expected.elements, (name, path)
                assert not any(
                    v.strip().lower().startswith("javascript:") for v in found.attribute_values
                ), (name, path)
            album_text = "".join(shape(pages[f"/albums/{album}"]).text)
            assert name in album_text, name  # shown literally, as text
            for path, html in pages.items():
                assert "<script>alert" not in html, (name, path)
                assert "<img src=x" not in html, (name, path)
            assert name in "".join(shape(pages["/"]).text), name  # album, invite, owner name
            assert name in "".join(shape(pages["/devices"]).text), name  # the peer's name
            hostile_core.engine.albums.clear()
            hostile_core.engine.peer_names.clear()
            hostile_core.engine.peers.wanted.clear()
    finally:
        await plain_core.close()
        await hostile_core.close()
