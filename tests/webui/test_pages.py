"""The pages, the page session + CSRF, thumbnails and originals, against a real Core.

Albums where this device is an editor or a viewer are built from real signed membership logs
(another owner's key invites this device), so the pages see exactly what a synced album holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from daemon import model
from daemon.album import Album, LocalFile
from daemon.core import Core
from daemon.files import AlbumFolder
from daemon.thumbnails import PhotoMeta, Thumbnails
from protocol.keys import DeviceKey
from protocol.manifest_state import ManifestState
from protocol.membership_log import MembershipLog
from protocol.rights import Role
from tests.protocol.membership_helpers import Album as LogBuilder
from tests.webui.test_api import ClientFactory, open_core, started, until
from webui.app import create_app
from webui.openapi import SCHEMAS
from webui.session import CSRF_HEADER, SESSION_COOKIE

pytestmark = pytest.mark.timeout(60)

HOSTILE = '<script>alert("x")</script>'
HOSTILE_FILE = "<img src=x onerror=alert(1)>.png"
OWNER_KEY = DeviceKey(bytes([9]) * 32)


@pytest.fixture
async def core(tmp_path: Path) -> Any:
    home = tmp_path / "home"
    home.mkdir()
    core = await open_core(home)
    yield core
    await core.close()


@pytest.fixture
async def running_core(tmp_path: Path) -> AsyncIterator[Core]:
    home = tmp_path / "home"
    home.mkdir()
    async with started(home) as core:
        yield core


@pytest.fixture
async def client(core: Core, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(core))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "Summer 2026"
    path.mkdir()
    return path.resolve()


def jpeg(size: tuple[int, int] = (640, 480), taken: str | None = None) -> bytes:
    """A real JPEG; with EXIF DateTimeOriginal when `taken` is given ('YYYY:MM:DD HH:MM:SS')."""
    out = io.BytesIO()
    exif = Image.Exif()
    if taken is not None:
        exif.get_ifd(0x8769)[36867] = taken
    Image.new("RGB", size, (200, 80, 40)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def member_album(core: Core, role: Role, folder: Path, name: str = "Lake") -> Album:
    """An album owned by another device in which this device is an active `role`."""
    me = core.identity.key
    log = LogBuilder(owner=OWNER_KEY, name=name)
    log.join(me, role)
    membership = MembershipLog(log.genesis)
    for envelope in log.envelopes[1:]:
        membership.add(envelope)
    album_id = membership.state.album_id
    AlbumFolder(folder, album_id).create_marker()
    album = Album(
        album_id=album_id,
        state="active",
        log=membership,
        manifest=ManifestState(album_id),
        me=me,
        path=folder,
    )
    album.refresh_keys()
    album.refresh()
    core.engine.albums[album_id] = album
    return album


def add_local_file(album: Album, name: str, data: bytes) -> None:
    """A file in the folder that this device has not published (as a viewer's files are)."""
    assert album.path is not None
    path = album.path / name
    path.write_bytes(data)
    st = path.stat()
    album.local[name] = LocalFile(
        path=name, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, state="local_only"
    )


async def page(client: TestClient[Any, Any], path: str) -> tuple[str, str]:
    """(html, csrf token) of a page; the client keeps the session cookie."""
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    html = await resp.text()
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found is not None
    return html, found.group(1)


async def owner_album(client: TestClient[Any, Any], core: Core, folder: Path) -> str:
    resp = await client.post(
        "/api/v1/albums", json={"path": str(folder)}, headers={"X-API-Key": core.api_key}
    )
    assert resp.status == 201
    return str((await resp.json())["album_id"])


# --- pages and roles ------------------------------------------------------------------------------

OWNER_CONTROLS = ('id="invite-dialog"', 'id="rename-dialog"', 'id="delete-dialog"', "stop-sharing")


async def test_every_page_renders_for_the_owner_with_its_controls(
    client: TestClient[Any, Any], core: Core, folder: Path
) -> None:
    album_id = await owner_album(client, core, folder)
    albums, _ = await page(client, "/")
    assert f'href="/albums/{album_id}"' in albums
    assert "Summer 2026" in albums
    html, _ = await page(client, f"/albums/{album_id}")
    for control in OWNER_CONTROLS:
        assert control in html
    assert 'id="leave-dialog"' not in html  # the owner cannot leave its album
    assert "created the album" in html  # the history, from the signed log
    devices, _ = await page(client, "/devices")
    for group in str(core.identity.device_id).split("-"):
        assert f"<span>{group}</span>" in devices
    activity, _ = await page(client, "/activity")
    assert "Created Summer 2026" in activity
    missing = await client.get("/albums/" + "a" * 52)
    assert missing.status == 404


@pytest.mark.parametrize("role", [Role.EDITOR, Role.VIEWER])
async def test_members_see_no_owner_controls(
    client: TestClient[Any, Any], core: Core, folder: Path, role: Role
) -> None:
    album = member_album(core, role, folder)
    html, _ = await page(client, f"/albums/{album.printable_id}")
    for control in OWNER_CONTROLS:
        assert control not in html
    assert "/members/" not in html  # no role selects, no remove buttons
    assert 'id="viewer-cover"' not in html
    assert 'id="leave-dialog"' in html
    assert f"role-{role.label}" in html
    albums, _ = await page(client, "/")
    shared = albums.split('id="shared"')[1]
    assert album.printable_id in shared
    # The API refuses what the page does not show: 403 and no new log entry.
    before = len(album.log.envelopes())
    resp = await client.post(
        f"/api/v1/albums/{album.printable_id}/rename",
        json={"name": "Mine now"},
        headers={"X-API-Key": core.api_key},
    )
    assert resp.status == 403
    assert len(album.log.envelopes()) == before


# --- session and CSRF -----------------------------------------------------------------------------


async def test_W5_session_cookie_flags_and_one_session_per_browser(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert resp.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    value = resp.cookies[SESSION_COOKIE].value
    assert len(value) >= 43  # 32 random bytes, URL-safe base64
    _, token = await page(client, "/devices")
    again = await client.get("/activity")
    assert "Set-Cookie" not in again.headers  # the browser keeps its session
    assert token in await again.text()


async def test_W3_a_session_needs_its_own_csrf_token(
    core: Core, aiohttp_client: ClientFactory, folder: Path
) -> None:
    app = create_app(core)
    browser = await aiohttp_client(app)
    other = await aiohttp_client(app)
    _, token = await page(browser, "/")
    _, other_token = await page(other, "/")
    assert token != other_token
    body = {"path": str(folder)}
    for headers in ({}, {CSRF_HEADER: other_token}, {CSRF_HEADER: ""}, {CSRF_HEADER: "x" * 500}):
        resp = await browser.post("/api/v1/albums", json=body, headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["error"] == "csrf"
        resp = await browser.get("/api/v1/albums", headers=headers)
        assert resp.status == 403  # every method, reads too
    assert core.engine.albums == {}  # no side effect
    foreign = await browser.post(
        "/api/v1/albums", json=body, headers={CSRF_HEADER: token, "Origin": "http://evil.test"}
    )
    assert (foreign.status, (await foreign.json())["error"]) == (403, "forbidden_origin")
    assert core.engine.albums == {}
    made = await browser.post("/api/v1/albums", json=body, headers={CSRF_HEADER: token})
    assert made.status == 201
    assert len(core.engine.albums) == 1
    listed = await browser.get("/api/v1/albums", headers={CSRF_HEADER: token})
    assert listed.status == 200


async def test_W3_no_session_no_key_is_401_and_a_forged_cookie_is_not_a_session(
    client: TestClient[Any, Any], core: Core
) -> None:
    resp = await client.get("/api/v1/albums")
    assert resp.status == 401
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: "forged"})
    resp = await client.get("/api/v1/albums", headers={CSRF_HEADER: "forged"})
    assert resp.status == 401
    assert core.engine.albums == {}


# --- escaping -------------------------------------------------------------------------------------


async def test_hostile_album_and_file_names_are_escaped(
    client: TestClient[Any, Any], core: Core, folder: Path
) -> None:
    album = member_album(core, Role.VIEWER, folder, name=HOSTILE)
    add_local_file(album, HOSTILE_FILE, b"<html><script>alert(1)</script></html>")
    for path in ("/", f"/albums/{album.printable_id}", "/activity", "/devices"):
        html, _ = await page(client, path)
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
    html, _ = await page(client, f"/albums/{album.printable_id}")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html


# --- thumbnails and originals (W7) ----------------------------------------------------------------


async def test_W7_files_are_served_by_id_with_sniffed_types_and_a_sandbox(
    client: TestClient[Any, Any], core: Core, folder: Path
) -> None:
    album = member_album(core, Role.VIEWER, folder)
    add_local_file(album, "late.jpg", jpeg((900, 600), taken="2026:07:02 10:00:00"))
    add_local_file(album, "early.jpg", jpeg((600, 900), taken="2026:07:01 09:30:00"))
    add_local_file(album, "notes.jpg", b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>")
    add_local_file(album, HOSTILE_FILE, b"<html><script>alert(1)</script></html>")
    key = {"X-API-Key": core.api_key}
    base = f"/api/v1/albums/{album.printable_id}/files"
    listed = await (await client.get(base, headers=key)).json()
    ids = {f["path"]: f["id"] for f in listed}
    assert all(f["id"].startswith("local-") and f["path"] not in f["id"] for f in listed)

    # Capture times are read in the background, then order the listing (EXIF, UTC).
    async def ordered() -> bool:
        files = await (await client.get(base, headers=key)).json()
        return [f["path"] for f in files][:2] == ["early.jpg", "late.jpg"]

    await until(ordered)
    files = await (await client.get(base, headers=key)).json()
    assert files[0]["captured"] == 1782898200  # 2026-07-01 09:30:00 UTC

    thumb = await client.get(f"{base}/{ids['early.jpg']}/thumbnail", headers=key)
    assert thumb.headers["Content-Type"] == "image/jpeg"
    assert "sandbox" in thumb.headers["Content-Security-Policy"]
    with Image.open(io.BytesIO(await thumb.read())) as small:
        assert max(small.size) == 320
        assert small.size == (213, 320)
    assert any((core.config.home / "thumbs").glob("*.jpg"))

    original = await client.get(f"{base}/{ids['late.jpg']}/original", headers=key)
    assert original.headers["Content-Type"] == "image/jpeg"
    assert original.headers["Content-Disposition"].startswith("inline")
    assert await original.read() == (folder / "late.jpg").read_bytes()

    for name in ("notes.jpg", HOSTILE_FILE):
        served = await client.get(f"{base}/{ids[name]}/original", headers=key)
        assert served.headers["Content-Type"] == "application/octet-stream"
        assert served.headers["Content-Disposition"].startswith("attachment")
        assert "sandbox" in served.headers["Content-Security-Policy"]
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        tile = await client.get(f"{base}/{ids[name]}/thumbnail", headers=key)
        assert tile.headers["X-Albumsync-Tile"] == "generic"
        assert tile.headers["Content-Type"] == "image/svg+xml"

    outside = folder.parent / "secret.txt"
    outside.write_text("secret")
    for bad in (
        "..%2f..%2fetc%2fpasswd",
        "..%252f..%252fsecret.txt",
        "%00",
        "%2fetc%2fpasswd",
        "local-" + "0" * 32,
        "ab" * 48,
    ):
        resp = await client.get(f"{base}/{bad}/original", headers=key)
        assert resp.status in (400, 404), bad
        assert "secret" not in await resp.text()


# --- new operations: cover, history, trash restore, nearby ----------------------------------------


async def test_cover_history_and_trash_restore(
    running_core: Core, aiohttp_client: ClientFactory, folder: Path
) -> None:
    client = await aiohttp_client(create_app(running_core))
    key = {"X-API-Key": running_core.api_key}
    (folder / "IMG_0001.jpg").write_bytes(jpeg())
    (folder / "IMG_0002.jpg").write_bytes(jpeg())
    album_id = await owner_album(client, running_core, folder)
    base = f"/api/v1/albums/{album_id}"

    async def published() -> bool:
        files = await (await client.get(f"{base}/files", headers=key)).json()
        return len(files) == 2 and all(f["local"] == "synced" for f in files)

    await until(published)
    files = await (await client.get(f"{base}/files", headers=key)).json()
    cover = files[0]["id"]
    resp = await client.post(f"{base}/cover", json={"file": cover}, headers=key)
    assert resp.status == 200
    assert (await resp.json())["cover"] == cover
    bad = await client.post(f"{base}/cover", json={"file": "zz"}, headers=key)
    assert (bad.status, (await bad.json())["field"]) == (400, "file")
    history = await (await client.get(f"{base}/history", headers=key)).json()
    assert [h["kind"] for h in history] == ["created", "cover"]
    assert history[1]["text"] == "Ana's laptop set the album cover"

    album = next(iter(running_core.engine.albums.values()))
    assert album.folder is not None
    await asyncio.to_thread(album.folder.move_to_trash, "IMG_0002.jpg", 1_780_000_000.0)
    trash = await (await client.get(f"{base}/trash", headers=key)).json()
    assert [t["path"] for t in trash] == ["IMG_0002.jpg"]
    restored = await client.post(
        f"{base}/trash/restore", json={"trash_path": trash[0]["trash_path"]}, headers=key
    )
    assert restored.status == 200, await restored.text()
    assert (await restored.json())["restored"] == "IMG_0002.jpg"
    assert (folder / "IMG_0002.jpg").exists()
    again = await client.post(
        f"{base}/trash/restore", json={"trash_path": trash[0]["trash_path"]}, headers=key
    )
    assert again.status == 404
    nearby = await client.get("/api/v1/nearby", headers=key)
    assert await nearby.json() == []


@pytest.mark.parametrize("cls", [model.HistoryEntry, model.NearbyInfo, model.FileInfo])
def test_openapi_schemas_name_the_new_model_fields(cls: type) -> None:
    assert set(SCHEMAS[cls.__name__]["properties"]) == {f.name for f in dataclasses.fields(cls)}


def test_thumbnail_cache_survives_a_damaged_index(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text('{"ab": [1, "not a time"], "cd": [0, null]')
    assert Thumbnails(tmp_path).meta(bytes.fromhex("cd")) is None
    (tmp_path / "index.json").write_text('{"ab": [1, "not a time"], "cd": [0, null]}')
    thumbs = Thumbnails(tmp_path)
    assert thumbs.meta(bytes.fromhex("ab")) is None
    assert thumbs.meta(bytes.fromhex("cd")) == PhotoMeta(image=False, captured=None)


async def test_a_moved_folder_is_offered_a_new_location_that_must_carry_the_marker(
    client: TestClient[Any, Any], core: Core, folder: Path, tmp_path: Path
) -> None:
    album_id = await owner_album(client, core, folder)
    html, _ = await page(client, f"/albums/{album_id}")
    assert 'id="folder-dialog"' not in html  # nothing to choose while the folder is fine
    moved = tmp_path / "moved"
    folder.rename(moved)  # noqa: ASYNC240 - a test step, not a daemon path
    html, token = await page(client, f"/albums/{album_id}")
    assert 'id="folder-dialog"' in html
    assert f'data-api="POST /api/v1/albums/{album_id}/folder"' in html
    headers = {"X-CSRF-Token": token}
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = await client.post(
        f"/api/v1/albums/{album_id}/folder", json={"path": str(empty)}, headers=headers
    )
    assert refused.status == 409
    done = await client.post(
        f"/api/v1/albums/{album_id}/folder", json={"path": str(moved)}, headers=headers
    )
    assert done.status == 200, await done.text()
    assert (await done.json())["folder_state"] == "ok"


async def test_devices_page_lists_and_adds_relays(client: TestClient[Any, Any], core: Core) -> None:
    html, token = await page(client, "/devices")
    assert 'data-api="POST /api/v1/relays"' in html
    assert "No relay" in html
    bad = await client.post(
        "/api/v1/relays", json={"uri": "relay://x:1/?id=nope"}, headers={"X-CSRF-Token": token}
    )
    assert bad.status == 400
    assert "relay URI" in (await bad.json())["message"]
