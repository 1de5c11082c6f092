"""The OpenAPI 3.1 description of /api/v1, as data; served at GET /api/v1/openapi.json.

Schemas name exactly the fields of the daemon.model dataclasses (a test compares them), and every
route webui/api.py registers has an entry here (a test compares those too).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OPT_STR: Schema = {"type": ["string", "null"]}
OPT_INT: Schema = {"type": ["integer", "null"]}
OPT_NUM: Schema = {"type": ["number", "null"]}
ALBUM_ID: Schema = {"type": "string", "description": "album ID, 52 characters of lowercase base32"}
DEVICE_ID: Schema = {"type": "string", "description": "device ID in Syncthing's printed form"}
INVITE_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
ROLE_IN: Schema = {"type": "string", "enum": ["viewer", "editor"]}
FILE_ID: Schema = {
    "type": "string",
    "maxLength": 96,
    "description": "a file's ID from the files listing: 96 hex digits, or local- and 32 for a "
    "file that is not published",
}
FOLDER: Schema = {"type": "string", "maxLength": 4096, "description": "absolute folder path"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(name: str) -> Schema:
    return {"type": "array", "items": _ref(name)}


def _object(properties: Schema, required: list[str] | None = None) -> Schema:
    """A closed object: every property listed, none other allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": STR, "message": STR, "field": STR}, required=["error", "message"]),
    "Progress": _object(
        {
            "files_to_go": INT,
            "bytes_to_go": INT,
            "rate": NUM,
            "eta": OPT_NUM,
            "waiting_for_peers": BOOL,
        }
    ),
    "AlbumSummary": _object(
        {
            "album_id": ALBUM_ID,
            "name": STR,
            "path": OPT_STR,
            "role": {"type": "string", "enum": ["owner", "editor", "viewer", ""]},
            "state": {
                "type": "string",
                "enum": ["active", "invited", "joining", "left", "removed", "declined", "deleted"],
            },
            "folder_state": {
                "type": "string",
                "enum": ["ok", "folder_missing", "marker_missing", "wrong_album", "none"],
            },
            "owner_device": DEVICE_ID,
            "owner_name": STR,
            "members": INT,
            "files": INT,
            "bytes": INT,
            "local_only": INT,
            "progress": _ref("Progress"),
            "fork": BOOL,
            "fork_hashes": {
                "type": "array",
                "items": STR,
                "description": "hex hashes of the two entries the owner signed for one position",
            },
            "problems": {"type": "array", "items": STR},
            "cover": {**OPT_STR, "description": "file ID of the cover, as in the files listing"},
        }
    ),
    "MemberInfo": _object(
        {
            "device_id": DEVICE_ID,
            "name": STR,
            "role": {"type": "string", "enum": ["owner", "editor", "viewer"]},
            "status": {
                "type": "string",
                "enum": ["owner", "invited", "active", "declined", "left", "removed"],
            },
            "connected": BOOL,
            "is_me": BOOL,
        }
    ),
    "FileInfo": _object(
        {
            "id": FILE_ID,
            "path": STR,
            "size": INT,
            "added_by_device": DEVICE_ID,
            "added_by_name": STR,
            "captured_at": OPT_INT,
            "captured": {
                **OPT_INT,
                "description": "capture time (unix s): as published, else from EXIF; orders the list",
            },
            "mtime_ns": INT,
            "local": {
                "type": "string",
                "enum": ["synced", "downloading", "missing", "local_only"],
            },
        }
    ),
    "TrashEntry": _object({"path": STR, "trashed_at": NUM, "trash_path": STR}),
    "InviteOut": _object(
        {
            "invite_id": INVITE_ID,
            "album_id": ALBUM_ID,
            "album_name": STR,
            "role": STR,
            "message": STR,
            "to_device": OPT_STR,
            "expires_at": INT,
            "state": {"type": "string", "enum": ["open", "redeemed", "cancelled", "expired"]},
        }
    ),
    "InviteIn": _object(
        {
            "album_id": ALBUM_ID,
            "album_name": STR,
            "owner_device": DEVICE_ID,
            "owner_name": STR,
            "role": STR,
            "message": STR,
            "state": {"type": "string", "enum": ["pending", "accepted", "declined"]},
        }
    ),
    "Invites": _object({"outgoing": _list("InviteOut"), "incoming": _list("InviteIn")}),
    "InviteCreated": _object({"invite_id": INVITE_ID, "code": OPT_STR}),
    "Joining": _object({"album_id": ALBUM_ID, "state": {"const": "joining"}}),
    "Declined": _object({"album_id": ALBUM_ID, "state": {"const": "declined"}}),
    "Cancelled": _object({"invite_id": INVITE_ID, "state": {"const": "cancelled"}}),
    "SharingStopped": _object({"album_id": ALBUM_ID, "removed": INT}),
    "PeerStatus": _object(
        {
            "device_id": DEVICE_ID,
            "name": STR,
            "connected": BOOL,
            "via": {
                "type": "string",
                "description": "lan, static, relay, invite or incoming; empty if not connected",
            },
            "address": STR,
            "addresses": {"type": "array", "items": STR},
            "bytes_in": INT,
            "bytes_out": INT,
            "last_error": STR,
            "albums": {"type": "array", "items": ALBUM_ID},
        }
    ),
    "Activity": _object({"at": INT, "album_id": OPT_STR, "kind": STR, "text": STR}),
    "HistoryEntry": _object(
        {
            "seq": INT,
            "at": INT,
            "kind": {
                "type": "string",
                "enum": [
                    "created",
                    "invited",
                    "role",
                    "removed",
                    "accepted",
                    "declined",
                    "left",
                    "renamed",
                    "cover",
                    "deleted",
                    "rotated",
                ],
            },
            "actor": STR,
            "subject": STR,
            "text": STR,
        }
    ),
    "NearbyInfo": _object(
        {
            "device_id": DEVICE_ID,
            "name": STR,
            "addresses": {"type": "array", "items": STR},
            "last_seen": OPT_NUM,
            "connected": BOOL,
        }
    ),
    "Restored": _object({"album_id": ALBUM_ID, "restored": STR}),
    "RelayInfo": _object(
        {
            "uri": {**STR, "description": "relay://HOST:PORT/?id=RELAY-ID (never its token)"},
            "source": {"enum": ["setting", "flag"]},
            "state": {"enum": ["stopped", "connecting", "joined", "failed"]},
            "last_error": STR,
            "since": NUM,
            "joins": INT,
            "invitations_dropped": INT,
        }
    ),
    "StatusReport": _object(
        {
            "device_id": DEVICE_ID,
            "device_name": STR,
            "version": STR,
            "uptime": NUM,
            "listen": STR,
            "albums": _list("AlbumSummary"),
            "peers": _list("PeerStatus"),
            "relays": _list("RelayInfo"),
            "errors": {"type": "object", "additionalProperties": INT},
        }
    ),
}

ERRORS: Schema = {
    str(status): {
        "description": text,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    for status, text in [
        (400, "a field is missing, unknown, of the wrong type or out of bounds (`field` names it)"),
        (401, "missing or wrong API key"),
        (403, "the album role does not allow this"),
        (404, "no such album, member or invite"),
        (409, "the album or its folder is in a state that does not allow this"),
        (413, "the body is larger than 1 MiB"),
    ]
}


def _ok(schema: Schema, status: int = 200, text: str = "done") -> Schema:
    return {
        str(status): {"description": text, "content": {"application/json": {"schema": schema}}},
        **ERRORS,
    }


def _body(properties: Schema, required: list[str]) -> Schema:
    return {
        "required": True,
        "content": {"application/json": {"schema": _object(properties, required)}},
    }


EMPTY_BODY: Schema = {
    "required": False,
    "content": {"application/json": {"schema": _object({}, [])}},
}


def _param(name: str, schema: Schema, where: str = "path") -> Schema:
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


ALBUM_PARAM = _param("album", ALBUM_ID)
FILE_PARAM = _param("file", FILE_ID)
BINARY = "application/octet-stream"


def _bytes(*types: str) -> Schema:
    """A response of file bytes in one of `types`, or a JSON error."""
    content = {kind: {"schema": {"type": "string", "contentMediaType": kind}} for kind in types}
    return {"200": {"description": "the bytes", "content": content}, **ERRORS}


DEVICE_PARAM = _param("device", DEVICE_ID)
ALBUM_SUMMARY = _ref("AlbumSummary")
MEMBERS = _list("MemberInfo")

PATHS: dict[str, Schema] = {
    "/api/v1/status": {
        "get": {
            "summary": "this device, its albums and peers",
            "responses": _ok(_ref("StatusReport")),
        }
    },
    "/api/v1/openapi.json": {
        "get": {"summary": "this document", "responses": _ok({"type": "object"})}
    },
    "/api/v1/albums": {
        "get": {"summary": "every album on this device", "responses": _ok(_list("AlbumSummary"))},
        "post": {
            "summary": "make a folder an album (name defaults to the folder's name)",
            "requestBody": _body({"path": FOLDER, "name": {**STR, "maxLength": 200}}, ["path"]),
            "responses": _ok(ALBUM_SUMMARY, 201, "album created"),
        },
    },
    "/api/v1/albums/{album}": {
        "parameters": [ALBUM_PARAM],
        "get": {"summary": "one album", "responses": _ok(ALBUM_SUMMARY)},
    },
    "/api/v1/albums/{album}/rename": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "rename the album for everyone (owner)",
            "requestBody": _body({"name": {**STR, "maxLength": 200}}, ["name"]),
            "responses": _ok(ALBUM_SUMMARY),
        },
    },
    "/api/v1/albums/{album}/folder": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "point the album at the folder it was moved to (its marker must name it)",
            "requestBody": _body({"path": {**STR, "maxLength": 4096}}, ["path"]),
            "responses": _ok(ALBUM_SUMMARY),
        },
    },
    "/api/v1/albums/{album}/leave": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "leave the album (member); the files stay in the folder",
            "requestBody": EMPTY_BODY,
            "responses": _ok(ALBUM_SUMMARY),
        },
    },
    "/api/v1/albums/{album}/delete": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "delete the album for everyone (owner); members keep their files",
            "requestBody": EMPTY_BODY,
            "responses": _ok(ALBUM_SUMMARY),
        },
    },
    "/api/v1/albums/{album}/stop-sharing": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "remove every member, keeping their photos (owner)",
            "requestBody": EMPTY_BODY,
            "responses": _ok(_ref("SharingStopped")),
        },
    },
    "/api/v1/albums/{album}/members": {
        "parameters": [ALBUM_PARAM],
        "get": {"summary": "the owner and every invited device", "responses": _ok(MEMBERS)},
    },
    "/api/v1/albums/{album}/members/{device}/role": {
        "parameters": [ALBUM_PARAM, DEVICE_PARAM],
        "post": {
            "summary": "change a member's role (owner)",
            "requestBody": _body({"role": ROLE_IN}, ["role"]),
            "responses": _ok(MEMBERS),
        },
    },
    "/api/v1/albums/{album}/members/{device}/remove": {
        "parameters": [ALBUM_PARAM, DEVICE_PARAM],
        "post": {
            "summary": "remove a member (owner): new key epoch; its photos leave unless kept",
            "requestBody": _body({"keep_photos": BOOL}, []),
            "responses": _ok(MEMBERS),
        },
    },
    "/api/v1/albums/{album}/files": {
        "parameters": [
            ALBUM_PARAM,
            _param("offset", {"type": "integer", "minimum": 0, "default": 0}, "query"),
            _param(
                "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}, "query"
            ),
        ],
        "get": {"summary": "one page of the album's files", "responses": _ok(_list("FileInfo"))},
    },
    "/api/v1/albums/{album}/trash": {
        "parameters": [ALBUM_PARAM],
        "get": {"summary": "the album trash (30 days)", "responses": _ok(_list("TrashEntry"))},
    },
    "/api/v1/invites": {
        "get": {"summary": "invites made and received", "responses": _ok(_ref("Invites"))},
        "post": {
            "summary": "invite by code (code returned) or directly to a device (code null)",
            "requestBody": _body(
                {
                    "album": ALBUM_ID,
                    "role": ROLE_IN,
                    "to_device": DEVICE_ID,
                    "message": {**STR, "maxLength": 1000},
                },
                ["album", "role"],
            ),
            "responses": _ok(_ref("InviteCreated"), 201, "invite created"),
        },
    },
    "/api/v1/invites/accept": {
        "post": {
            "summary": "redeem a code (202, joining in the background) or accept a pending invite",
            "requestBody": _body(
                {"code": {**STR, "pattern": "^albumsync:"}, "album": ALBUM_ID, "path": FOLDER},
                ["path"],
            ),
            "responses": {
                **_ok(ALBUM_SUMMARY, 200, "accepted: the album syncs into path"),
                "202": {
                    "description": "code accepted: the album arrives when its owner answers",
                    "content": {"application/json": {"schema": _ref("Joining")}},
                },
            },
        }
    },
    "/api/v1/invites/{album}/decline": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "decline a pending invite",
            "requestBody": EMPTY_BODY,
            "responses": _ok(_ref("Declined")),
        },
    },
    "/api/v1/invites/{invite_id}/cancel": {
        "parameters": [_param("invite_id", INVITE_ID)],
        "post": {
            "summary": "cancel an invite this device made",
            "requestBody": EMPTY_BODY,
            "responses": _ok(_ref("Cancelled")),
        },
    },
    "/api/v1/peers": {
        "get": {"summary": "known devices and connections", "responses": _ok(_list("PeerStatus"))},
        "post": {
            "summary": "dial a device at a static address",
            "requestBody": _body(
                {"device_id": DEVICE_ID, "address": {**STR, "pattern": "^tcp://"}},
                ["device_id", "address"],
            ),
            "responses": _ok(_ref("PeerStatus")),
        },
    },
    "/api/v1/api-key/rotate": {
        "post": {
            "summary": "replace the API key in the key file; the old key stops working at once",
            "requestBody": EMPTY_BODY,
            "responses": _ok(_object({"rotated": BOOL, "path": STR})),
        },
    },
    "/api/v1/relays": {
        "get": {"summary": "the relays this device joins", "responses": _ok(_list("RelayInfo"))},
        "post": {
            "summary": "save a relay and join it (its URI goes into new invite codes)",
            "requestBody": _body({"uri": {**STR, "pattern": "^relay://"}}, ["uri"]),
            "responses": _ok(_ref("RelayInfo")),
        },
    },
    "/api/v1/relays/remove": {
        "post": {
            "summary": "forget a saved relay and leave it",
            "requestBody": _body({"uri": {**STR, "pattern": "^relay://"}}, ["uri"]),
            "responses": _ok(_list("RelayInfo")),
        },
    },
    "/api/v1/albums/{album}/files/{file}/thumbnail": {
        "parameters": [ALBUM_PARAM, FILE_PARAM],
        "get": {
            "summary": "a JPEG thumbnail (320 px), or a generic SVG tile for a file that is not "
            "an image (header X-Albumsync-Tile: generic)",
            "responses": _bytes("image/jpeg", "image/svg+xml"),
        },
    },
    "/api/v1/albums/{album}/files/{file}/original": {
        "parameters": [ALBUM_PARAM, FILE_PARAM],
        "get": {
            "summary": "the file: inline with its sniffed type if a browser can show it as an "
            "image, otherwise application/octet-stream as an attachment; always CSP sandbox",
            "responses": _bytes("image/jpeg", "image/png", "image/gif", "image/webp", BINARY),
        },
    },
    "/api/v1/albums/{album}/cover": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "set the album cover to a published photo, or clear it with null (owner)",
            "requestBody": _body({"file": {**FILE_ID, "type": ["string", "null"]}}, []),
            "responses": _ok(ALBUM_SUMMARY),
        },
    },
    "/api/v1/albums/{album}/history": {
        "parameters": [ALBUM_PARAM],
        "get": {
            "summary": "the verified membership log in words, oldest first",
            "responses": _ok(_list("HistoryEntry")),
        },
    },
    "/api/v1/albums/{album}/trash/restore": {
        "parameters": [ALBUM_PARAM],
        "post": {
            "summary": "move a file from the album trash back into the folder",
            "requestBody": _body({"trash_path": {**STR, "maxLength": 4096}}, ["trash_path"]),
            "responses": _ok(_ref("Restored")),
        },
    },
    "/api/v1/nearby": {
        "get": {
            "summary": "devices announced on the LAN (unverified until they connect)",
            "responses": _ok(_list("NearbyInfo")),
        }
    },
    "/api/v1/activity": {
        "parameters": [
            _param(
                "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 200}, "query"
            )
        ],
        "get": {"summary": "recent activity, newest first", "responses": _ok(_list("Activity"))},
    },
}

OPENAPI: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "albumsync local API",
        "version": "1",
        "description": "The API the albumsync CLI and web UI use; it listens on localhost only.",
    },
    "servers": [{"url": "/"}],
    "security": [{"apiKey": []}],
    "components": {
        "securitySchemes": {
            "apiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "the contents of the api-key file in the data directory",
            }
        },
        "schemas": SCHEMAS,
    },
    "paths": PATHS,
}
