"""The /api/v1 JSON API against a real Core: real SQLite, real folders, the aiohttp test client.

One device only (the two-device stories are e2e tests). Every error body is checked for the
documented shape and for the absence of traceback text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon import model
from daemon.config import Config
from daemon.core import Core
from daemon.identity import create_identity
from daemon.store import Store
from protocol.ids import AlbumId, DeviceId
from webui.api import ERROR_STATUS, status_for
from webui.app import create_app
from webui.openapi import OPENAPI, SCHEMAS

pytestmark = pytest.mark.timeout(60)

OTHER_DEVICE = str(DeviceId(bytes(range(32))))
UNKNOWN_ALBUM = str(AlbumId(b"\x07" * 32))
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def open_core(home: Path) -> Core:
    store = await Store.open(home / "state.db")
    await create_identity(store, "Ana's laptop")
    await store.close()
    config = Config(
        home=home,
        ui_port=0,
        listen_host="127.0.0.1",
        listen_port=0,
        mdns=False,
        watch_debounce_ms=20,
    )
    return await Core.open(config)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
async def core(home: Path) -> AsyncIterator[Core]:
    """A Core that is not started: enough for every call that needs no scan and no peer."""
    core = await open_core(home)
    yield core
    await core.close()


@asynccontextmanager
async def started(home: Path) -> AsyncIterator[Core]:
    """A started Core (listening on loopback, publisher scanning), stopped and closed at the end."""
    core = await open_core(home)
    ready, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with asyncio.TaskGroup() as tasks:
            await core.start(tasks)
            ready.set()
            await stop.wait()
            await core.stop()

    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 20)
    try:
        yield core
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await core.close()


@pytest.fixture
async def running_core(home: Path) -> AsyncIterator[Core]:
    async with started(home) as core:
        yield core


class Api:
    """The test client with the key, and a check of every error body it gets."""

    def __init__(self, client: TestClient[Any, Any], key: str) -> None:
        self.client = client
        self.key = key

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        resp = await self.client.request(method, "/api/v1" + path, data=data, headers=headers)
        text = await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"  # W5, errors included
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Traceback" not in text
        assert 'File "' not in text
        assert self.key not in text  # W4: the key is never echoed
        parsed = json.loads(text) if text else None
        if resp.status >= 400:
            assert_error_shape(parsed)
        return resp.status, parsed

    async def get(self, path: str) -> Any:
        status, body = await self.call("GET", path)
        assert status == 200, body
        return body

    async def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = await self.call("POST", path, body if body is not None else {})
        assert got == status, answer
        return answer

    async def refused(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, dict[str, str]]:
        status, answer = await self.call(method, path, body, raw=raw)
        assert status >= 400, answer
        return status, answer


def assert_error_shape(body: Any) -> None:
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "message", "field"}, body
    assert body["error"]
    assert body["message"]


async def make_api(core: Core, aiohttp_client: ClientFactory) -> Api:
    return Api(await aiohttp_client(create_app(core)), core.api_key)


@pytest.fixture
async def api(core: Core, aiohttp_client: ClientFactory) -> Api:
    return await make_api(core, aiohttp_client)


@pytest.fixture
async def live_api(running_core: Core, aiohttp_client: ClientFactory) -> Api:
    """The API of a started Core: invite codes need the port it listens on."""
    return await make_api(running_core, aiohttp_client)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "Summer 2026"
    path.mkdir()
    return path.resolve()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(15):
        while not await check():  # noqa: ASYNC110 - polling the API as a client would
            await asyncio.sleep(0.05)


def bad_check_character(device_id: str) -> str:
    """The device ID with the check character of its first group changed."""
    check_at = 14  # printed: 7 characters, "-", 6 more, then group 1's check character
    replacement = "A" if device_id[check_at] != "A" else "B"
    return device_id[:check_at] + replacement + device_id[check_at + 1 :]


# --- the device ---------------------------------------------------------------------------------


async def test_status_reports_the_device(api: Api, core: Core) -> None:
    status = await api.get("/status")
    assert status["device_id"] == str(core.identity.device_id)
    assert status["device_name"] == "Ana's laptop"
    assert status["albums"] == []
    assert status["peers"] == []
    assert set(status) == {f.name for f in dataclasses.fields(model.StatusReport)}


async def test_W4_every_call_needs_the_key(api: Api) -> None:
    for method, path in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/albums"),
        ("POST", "/api/v1/albums"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/no-such-endpoint"),
        ("GET", "/api/v2/anything"),
    ]:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            resp = await api.client.request(method, path, headers=headers, data=b"{}")
            assert resp.status == 401, (method, path, headers)
            body = await resp.json()
            assert body["error"] == "unauthorized"
    resp = await api.client.get("/api/v1/status", params={"api_key": api.key})
    assert resp.status == 401  # never from the query string (W4)
    resp = await api.client.get("/api/v1/status", headers={"Authorization": f"Bearer {api.key}"})
    assert resp.status == 200


async def test_W3_a_foreign_origin_is_refused_even_with_the_key(api: Api, folder: Path) -> None:
    body = json.dumps({"path": str(folder)})
    for origin in ["http://evil.test", "http://localhost.evil.test:8855", "null"]:
        headers = {"X-API-Key": api.key, "Origin": origin}
        resp = await api.client.post("/api/v1/albums", data=body, headers=headers)
        assert resp.status == 403, origin
        assert (await resp.json())["error"] == "forbidden_origin"
    assert await api.get("/albums") == []  # nothing was created
    port = api.client.port
    headers = {"X-API-Key": api.key, "Origin": f"http://127.0.0.1:{port}"}
    resp = await api.client.post("/api/v1/albums", data=body, headers=headers)
    assert resp.status == 201


async def test_unknown_endpoint_and_method_are_json_errors(api: Api) -> None:
    status, body = await api.refused("GET", "/no-such-endpoint")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await api.refused("DELETE", "/albums")
    assert (status, body["error"]) == (405, "method_not_allowed")


async def test_openapi_document_describes_every_route(api: Api) -> None:
    doc = await api.get("/openapi.json")
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
    }
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in api.client.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/api/")
    }
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    assert routes == documented
    # The enumeration itself works: operations the CLI depends on are in both.
    assert {("/api/v1/status", "get"), ("/api/v1/relays", "post")} <= routes
    for path, item in doc["paths"].items():
        for method in ("get", "post"):
            if method in item:
                assert "200" in item[method]["responses"] or "201" in item[method]["responses"]
                assert "401" in item[method]["responses"], path
    for ref in _refs(doc):
        name = ref.removeprefix("#/components/schemas/")
        assert name in doc["components"]["schemas"], ref


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [r for item in value.values() for r in _refs(item)]
    if isinstance(value, list):
        return [r for item in value for r in _refs(item)]
    return []


@pytest.mark.parametrize(
    "cls",
    [
        model.Progress,
        model.AlbumSummary,
        model.MemberInfo,
        model.FileInfo,
        model.InviteOut,
        model.InviteIn,
        model.PeerStatus,
        model.TrashEntry,
        model.Activity,
        model.StatusReport,
    ],
)
def test_openapi_schemas_name_the_model_fields(cls: type) -> None:
    schema = SCHEMAS[cls.__name__]
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(cls)}
    assert OPENAPI["components"]["schemas"][cls.__name__] is schema


# --- albums -------------------------------------------------------------------------------------


async def test_album_create_list_get_rename_members(api: Api, core: Core, folder: Path) -> None:
    created = await api.post("/albums", {"path": str(folder)}, status=201)
    assert created["name"] == "Summer 2026"  # the folder's name
    assert created["role"] == "owner"
    assert created["state"] == "active"
    assert created["folder_state"] == "ok"
    assert created["path"] == str(folder)
    assert created["owner_device"] == str(core.identity.device_id)
    assert created["members"] == 1
    album_id = created["album_id"]
    assert str(AlbumId.parse(album_id)) == album_id

    listed = await api.get("/albums")
    assert [a["album_id"] for a in listed] == [album_id]
    assert await api.get(f"/albums/{album_id}") == created
    assert await api.get(f"/albums/{album_id.upper()}") == created  # IDs parse in any case

    renamed = await api.post(f"/albums/{album_id}/rename", {"name": "  Summer at the lake "})
    assert renamed["name"] == "Summer at the lake"
    members = await api.get(f"/albums/{album_id}/members")
    assert members == [
        {
            "device_id": str(core.identity.device_id),
            "name": "Ana's laptop",
            "role": "owner",
            "status": "owner",
            "connected": True,
            "is_me": True,
        }
    ]
    assert await api.get(f"/albums/{album_id}/trash") == []
    assert await api.post(f"/albums/{album_id}/stop-sharing") == {
        "album_id": album_id,
        "removed": 0,
    }


async def test_album_create_takes_a_name_and_refuses_overlaps(api: Api, folder: Path) -> None:
    created = await api.post("/albums", {"path": str(folder), "name": "Lake"}, status=201)
    assert created["name"] == "Lake"
    status, body = await api.refused("POST", "/albums", {"path": str(folder / "inner")})
    assert status == 400
    assert "overlaps" in body["message"]
    status, body = await api.refused("POST", "/albums", {"path": str(folder.parent / "missing")})
    assert status == 400
    assert "not a folder" in body["message"]


async def test_owner_cannot_leave_and_delete_is_for_everyone(api: Api, folder: Path) -> None:
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    status, body = await api.refused("POST", f"/albums/{album_id}/leave")
    assert (status, body["error"]) == (403, "not_permitted")
    deleted = await api.post(f"/albums/{album_id}/delete")
    assert deleted["state"] == "deleted"
    status, body = await api.refused("POST", f"/albums/{album_id}/rename", {"name": "x"})
    assert status == 403


async def test_files_lists_published_photos_in_pages(
    live_api: Api, running_core: Core, folder: Path
) -> None:
    api = live_api
    for index in range(5):
        (folder / f"IMG_{index:04d}.jpg").write_bytes(os.urandom(1000 + index))
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]

    async def published() -> bool:
        return len(await api.get(f"/albums/{album_id}/files?limit=500")) == 5

    await until(published)
    files = await api.get(f"/albums/{album_id}/files")
    assert [f["path"] for f in files] == [f"IMG_{i:04d}.jpg" for i in range(5)]
    first = files[0]
    assert first["size"] == 1000
    assert first["added_by_device"] == str(running_core.identity.device_id)
    assert first["added_by_name"] == "Ana's laptop"
    assert first["local"] == "synced"
    page = await api.get(f"/albums/{album_id}/files?offset=3&limit=10")
    assert [f["path"] for f in page] == ["IMG_0003.jpg", "IMG_0004.jpg"]
    assert await api.get(f"/albums/{album_id}/files?offset=10") == []
    summary = await api.get(f"/albums/{album_id}")
    assert (summary["files"], summary["bytes"]) == (5, sum(1000 + i for i in range(5)))
    for query, field in [("limit=501", "limit"), ("limit=0", "limit"), ("offset=-1", "offset")]:
        status, body = await api.refused("GET", f"/albums/{album_id}/files?{query}")
        assert (status, body["field"]) == (400, field)
    status = await api.get("/status")
    assert status["albums"][0]["progress"]["files_to_go"] == 0
    assert status["listen"] == f"127.0.0.1:{running_core.engine.peers.bound_port}"


# --- invites ------------------------------------------------------------------------------------


async def test_invite_by_code_list_and_cancel(live_api: Api, folder: Path) -> None:
    api = live_api
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    made = await api.post(
        "/invites", {"album": album_id, "role": "editor", "message": "hi Bob"}, status=201
    )
    assert made["code"].startswith("albumsync:")
    assert len(made["invite_id"]) == 32
    invites = await api.get("/invites")
    assert invites["incoming"] == []
    [out] = invites["outgoing"]
    assert out["invite_id"] == made["invite_id"]
    assert out["album_id"] == album_id
    assert out["album_name"] == "Summer 2026"
    assert (out["role"], out["message"], out["to_device"], out["state"]) == (
        "editor",
        "hi Bob",
        None,
        "open",
    )
    cancelled = await api.post(f"/invites/{made['invite_id']}/cancel")
    assert cancelled == {"invite_id": made["invite_id"], "state": "cancelled"}
    assert (await api.get("/invites"))["outgoing"][0]["state"] == "cancelled"
    status, body = await api.refused("POST", f"/invites/{'ab' * 16}/cancel")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await api.refused("POST", "/invites/xyz/cancel")
    assert (status, body["field"]) == (400, "invite_id")


async def test_direct_invite_has_no_code(live_api: Api, folder: Path) -> None:
    api = live_api
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    made = await api.post(
        "/invites", {"album": album_id, "role": "viewer", "to_device": OTHER_DEVICE}, status=201
    )
    assert made["code"] is None
    [out] = (await api.get("/invites"))["outgoing"]
    assert out["to_device"] == OTHER_DEVICE


async def test_accept_by_code_answers_202_and_the_album_shows_joining(
    live_api: Api, folder: Path, tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    album_id = (await live_api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    made = await live_api.post("/invites", {"album": album_id, "role": "viewer"}, status=201)
    home = tmp_path / "bob"
    home.mkdir()
    bob = await open_core(home)  # not started: it never reaches the owner, so it stays joining
    try:
        api = await make_api(bob, aiohttp_client)
        target = str(tmp_path / "Bob" / "Summer")
        joining = await api.post(
            "/invites/accept", {"code": made["code"], "path": target}, status=202
        )
        assert joining == {"album_id": album_id, "state": "joining"}
        [album] = await api.get("/albums")
        assert (album["album_id"], album["state"], album["path"], album["role"]) == (
            album_id,
            "joining",
            target,
            "viewer",
        )
        assert album["owner_device"] == (await live_api.get("/status"))["device_id"]
        assert (await api.refused("GET", f"/albums/{album_id}"))[0] == 404
    finally:
        await bob.close()


async def test_accept_and_decline_refusals(api: Api, folder: Path, tmp_path: Path) -> None:
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    target = str(tmp_path / "joined")
    status, body = await api.refused(
        "POST", "/invites/accept", {"code": "albumsync:zzzz", "path": target}
    )
    assert (status, body["error"]) == (400, "invite_code")
    status, body = await api.refused("POST", "/invites/accept", {"code": "hello", "path": target})
    assert status == 400
    assert "albumsync:" in body["message"]
    status, body = await api.refused(
        "POST", "/invites/accept", {"code": "albumsync:x", "album": album_id, "path": target}
    )
    assert (status, body["field"]) == (400, "code")
    status, body = await api.refused("POST", "/invites/accept", {"album": album_id, "path": "rel"})
    assert (status, body["field"]) == (400, "path")
    status, body = await api.refused("POST", "/invites/accept", {"album": album_id, "path": target})
    assert status == 404  # no pending invite for an album this device owns
    status, body = await api.refused("POST", f"/invites/{album_id}/decline")
    assert status == 404


# --- peers and activity -------------------------------------------------------------------------


async def test_peers_add_and_list(api: Api, core: Core) -> None:
    peer = await api.post("/peers", {"device_id": OTHER_DEVICE, "address": "tcp://127.0.0.1:9"})
    assert peer["device_id"] == OTHER_DEVICE
    assert peer["connected"] is False
    assert peer["addresses"] == ["tcp://127.0.0.1:9"]
    assert await api.get("/peers") == [peer]
    lower = OTHER_DEVICE.lower().replace("-", "")  # any spelling of the ID is the same device
    again = await api.post("/peers", {"device_id": lower, "address": "tcp://[::1]:22055"})
    assert again["addresses"] == ["tcp://127.0.0.1:9", "tcp://[::1]:22055"]
    for address in [
        "127.0.0.1:9",
        "tcp://host",
        "tcp://h:99999",
        "http://h:1",
        "tcp://h:1/x",
        "tcp://a b:1",
    ]:
        status, body = await api.refused(
            "POST", "/peers", {"device_id": OTHER_DEVICE, "address": address}
        )
        assert (status, body["field"]) == (400, "address"), address
    status, body = await api.refused(
        "POST", "/peers", {"device_id": str(core.identity.device_id), "address": "tcp://h:1"}
    )
    assert (status, body["field"]) == (400, "device_id")


async def test_activity_lists_what_happened(live_api: Api, folder: Path) -> None:
    api = live_api
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    await api.post("/invites", {"album": album_id, "role": "viewer"}, status=201)
    lines = await api.get("/activity")
    assert [line["kind"] for line in lines] == ["invite", "album"]  # newest first
    assert lines[1]["album_id"] == album_id
    assert "Created Summer 2026" in lines[1]["text"]
    assert len(await api.get("/activity?limit=1")) == 1


# --- refusals -----------------------------------------------------------------------------------


async def test_W6_field_errors_name_the_field(api: Api, folder: Path) -> None:
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    device = OTHER_DEVICE
    cases: list[tuple[str, str, Any, str, str]] = [
        ("POST", "/albums", {"path": str(folder), "colour": "red"}, "colour", "unknown_field"),
        ("POST", "/albums", {"path": 5}, "path", "wrong_type"),
        ("POST", "/albums", {"path": ["/x"]}, "path", "wrong_type"),
        ("POST", "/albums", {}, "path", "missing_field"),
        ("POST", "/albums", {"path": "relative/folder"}, "path", "invalid"),
        ("POST", "/albums", {"path": "/tmp/\ud800"}, "path", "invalid"),
        ("POST", f"/albums/{album_id}/rename", {"name": ""}, "name", "missing_field"),
        ("POST", f"/albums/{album_id}/rename", {"name": "a\x07b"}, "name", "invalid"),
        ("POST", f"/albums/{album_id}/rename", {"name": "x" * 201}, "name", "too_long"),
        ("POST", f"/albums/{album_id}/leave", {"now": True}, "now", "unknown_field"),
        ("POST", "/invites", {"album": album_id, "role": "admin"}, "role", "invalid"),
        ("POST", "/invites", {"album": album_id, "role": "owner"}, "role", "invalid"),
        ("POST", "/invites", {"album": album_id, "role": 2}, "role", "wrong_type"),
        ("POST", "/invites", {"album": "not-an-id", "role": "viewer"}, "album", "invalid"),
        (
            "POST",
            "/invites",
            {"album": album_id, "role": "viewer", "to_device": bad_check_character(device)},
            "to_device",
            "invalid",
        ),
        (
            "POST",
            "/invites",
            {"album": album_id, "role": "viewer", "message": "m" * 1001},
            "message",
            "too_long",
        ),
        (
            "POST",
            f"/albums/{album_id}/members/{device}/remove",
            {"keep_photos": "yes"},
            "keep_photos",
            "wrong_type",
        ),
        (
            "POST",
            f"/albums/{album_id}/members/{bad_check_character(device)}/role",
            {"role": "viewer"},
            "device",
            "invalid",
        ),
        ("GET", "/albums/not-an-album-id", None, "album", "invalid"),
        ("GET", f"/albums/{album_id[:-1]}", None, "album", "invalid"),
    ]
    for method, path, body, field, code in cases:
        status, answer = await api.refused(method, path, body)
        assert (status, answer.get("field"), answer["error"]) == (400, field, code), (path, body)
    status, answer = await api.refused(
        "POST", "/invites", {"album": album_id, "role": "viewer", "to_device": "AB"}
    )
    assert "56 letters and digits" in answer["message"]
    status, answer = await api.refused(
        "POST",
        "/invites",
        {"album": album_id, "role": "viewer", "to_device": bad_check_character(device)},
    )
    assert "check character" in answer["message"]


async def test_W6_malformed_bodies_are_refused(api: Api) -> None:
    for raw, words in [
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"path"', "JSON object"),
        (b'{"path": "/a", "path": "/b"}', "appears twice"),
        (b'{"path": NaN}', "not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ]:
        status, body = await api.refused("POST", "/albums", raw=raw)
        assert (status, body["error"]) == (400, "bad_json"), raw[:20]
        assert words in body["message"], body


async def test_W6_a_body_over_one_mebibyte_is_refused(api: Api, folder: Path) -> None:
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    big = {"album": album_id, "role": "viewer", "message": "m" * (1024 * 1024)}
    status, body = await api.refused("POST", "/invites", big)
    assert (status, body["error"]) == (413, "too_large")
    assert (await api.get("/invites"))["outgoing"] == []


async def test_unknown_album_is_404(api: Api) -> None:
    for method, path, body in [
        ("GET", f"/albums/{UNKNOWN_ALBUM}", None),
        ("GET", f"/albums/{UNKNOWN_ALBUM}/members", None),
        ("GET", f"/albums/{UNKNOWN_ALBUM}/files", None),
        ("GET", f"/albums/{UNKNOWN_ALBUM}/trash", None),
        ("POST", f"/albums/{UNKNOWN_ALBUM}/rename", {"name": "x"}),
        ("POST", f"/albums/{UNKNOWN_ALBUM}/delete", {}),
        ("POST", "/invites", {"album": UNKNOWN_ALBUM, "role": "viewer"}),
        ("POST", f"/invites/{UNKNOWN_ALBUM}/decline", {}),
    ]:
        status, answer = await api.refused(method, path, body)
        assert (status, answer["error"]) == (404, "not_found"), path
        assert UNKNOWN_ALBUM in answer["message"] or "no pending invite" in answer["message"]


async def test_member_not_in_album_is_404(api: Api, folder: Path) -> None:
    album_id = (await api.post("/albums", {"path": str(folder)}, status=201))["album_id"]
    status, body = await api.refused(
        "POST", f"/albums/{album_id}/members/{OTHER_DEVICE}/role", {"role": "viewer"}
    )
    assert status == 404
    assert "not a member" in body["message"]


async def test_W6_an_unexpected_failure_is_500_without_details(
    api: Api, core: Core, monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail at /home/ana")

    monkeypatch.setattr(core.engine, "create_album", broken)
    status, body = await api.refused("POST", "/albums", {"path": str(folder)})
    assert (status, body["error"]) == (500, "internal")
    assert "secret" not in body["message"]


def test_the_error_table_maps_daemon_errors() -> None:
    from daemon.errors import (
        AlbumNotFoundError,
        ConfigError,
        DaemonError,
        NotPermittedError,
        StoreError,
    )
    from daemon.files import LocalChangeError
    from protocol.errors import InviteCodeError, Reason, VerificationError

    assert status_for(AlbumNotFoundError("x")) == (404, "not_found")
    assert status_for(NotPermittedError("x")) == (403, "not_permitted")
    assert status_for(ConfigError("x")) == (400, "invalid")
    assert status_for(InviteCodeError("x")) == (400, "invite_code")
    assert status_for(LocalChangeError("x"))[0] == 409
    assert status_for(StoreError("x"))[0] == 500
    assert status_for(DaemonError("x"))[0] == 409
    assert status_for(VerificationError(Reason.FORK, "x"))[0] == 409
    assert status_for(ValueError("x")) == (500, "internal")
    # subclasses come before their bases, or they could never match
    for index, (kind, _, _) in enumerate(ERROR_STATUS):
        for later, _, _ in ERROR_STATUS[index + 1 :]:
            assert not issubclass(later, kind), (kind, later)


async def test_W4_rotating_the_key_refuses_the_old_one_at_once(api: Api, core: Core) -> None:
    old = api.key
    done = await api.post("/api-key/rotate")
    assert done["rotated"] is True
    new = core.config.api_key_path.read_text().strip()
    assert new != old
    assert new not in json.dumps(done)  # never sent back: read from the 0600 file
    assert core.config.api_key_path.stat().st_mode & 0o777 == 0o600
    resp = await api.client.get("/api/v1/status", headers={"X-API-Key": old})
    assert resp.status == 401
    resp = await api.client.get("/api/v1/status", headers={"X-API-Key": new})
    assert resp.status == 200
