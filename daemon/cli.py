"""The `albumsync` command line. `run` is the composition root: the one place that imports webui.

Every command except init, id and demo talks to the running daemon through its local API, so the
CLI, the web pages and scripts all go through the same checks. Errors print one sentence to stderr
and exit non-zero: never a traceback at a person.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from daemon.api_client import ApiClient
from daemon.config import DEFAULT_PEER_PORT, DEFAULT_UI_PORT, Config, default_home, parse_host_port
from daemon.errors import AlbumNotFoundError, ConfigError, DaemonError
from daemon.identity import create_identity, load_identity
from daemon.store import Store
from protocol.errors import DecodeError, ProtocolError
from protocol.ids import AlbumId, DeviceId
from protocol.invite import PREFIX as INVITE_PREFIX
from protocol.invite import parse_invite

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(asyncio.run(args.func(args)))
    except DaemonError as exc:
        print(f"albumsync: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except BaseExceptionGroup as group:
        # A service failing to start inside the daemon's TaskGroup arrives wrapped.
        errors, rest = group.split(DaemonError)
        if errors is None or rest is not None:
            raise
        first = _leaves(errors)[0]
        print(f"albumsync: {first.message}", file=sys.stderr)
        return first.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `albumsync status --json | head`: the reader left; say nothing more, on no stream.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _leaves(group: BaseExceptionGroup[DaemonError]) -> list[DaemonError]:
    found: list[DaemonError] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="albumsync", description="Peer-to-peer, end-to-end encrypted photo albums."
    )
    parser.add_argument(
        "--home", type=Path, help="data directory (default: $ALBUMSYNC_HOME or XDG)"
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("init", help="create this device's identity; prints its device ID")
    p.add_argument("--name", required=True, help='device name others see, e.g. "Ana\'s laptop"')
    p.add_argument("--if-missing", action="store_true", help="do nothing if already initialised")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("id", help="print this device's ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("run", help="run the daemon and its web UI")
    p.add_argument("--ui", default=f"127.0.0.1:{DEFAULT_UI_PORT}", help="web UI address HOST:PORT")
    p.add_argument(
        "--listen", default=f"0.0.0.0:{DEFAULT_PEER_PORT}", help="peer address HOST:PORT"
    )
    p.add_argument("--no-mdns", action="store_true", help="do not announce or browse on the LAN")
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="URI",
        help="household relay relay://HOST:PORT/?id=RELAY-ID (repeatable); joined, and put in invite codes",
    )
    p.add_argument(
        "--rescan",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="full scan of every album folder this often, besides watching it (default 60)",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="start a three-device household on this machine")
    p.add_argument(
        "--dir", type=Path, default=None, help="where the demo keeps its devices and photos"
    )
    p.add_argument(
        "--ui-port",
        type=int,
        default=8861,
        help="first of three web UI ports (0: any free ports, printed at start)",
    )
    p.set_defaults(func=cmd_demo)
    add_api_commands(sub)
    return parser


def config_from(args: argparse.Namespace) -> Config:
    home = args.home.expanduser() if args.home else default_home()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"the data directory {home} exists and is not a directory")
    return Config(home=home)


async def cmd_demo(args: argparse.Namespace) -> int:
    # Composition root too: the demo serves three web UIs.
    from daemon.demo import run_demo  # noqa: PLC0415
    from webui.app import create_app  # noqa: PLC0415

    if args.ui_port != 0 and not 1 <= args.ui_port <= 65533:
        raise ConfigError("--ui-port is 0 (any free ports) or a port from 1 to 65533")
    root = (args.dir or Path(tempfile.gettempdir()) / "albumsync-demo").expanduser().resolve()
    print(f"albumsync demo in {root} (run again to resume it; delete the folder to start over)")
    return await run_demo(root, create_app, ui_base_port=args.ui_port)


def check_relay_uri(text: str) -> str:
    """A --relay URI with its pinned ID, or a ConfigError saying what is wrong with it."""
    from daemon.relays import check_relay_uri as check  # noqa: PLC0415 - keeps startup fast

    return str(check(text))


async def cmd_init(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = await Store.open(config.db_path)
    try:
        if await store.load_identity() is not None:
            if args.if_missing:
                return 0
            raise ConfigError(f"{config.home} already holds a device identity; see `albumsync id`")
        identity = await create_identity(store, args.name)
    finally:
        await store.close()
    print(identity.device_id)
    return 0


async def cmd_id(args: argparse.Namespace) -> int:
    config = config_from(args)
    store = await Store.open(config.db_path)
    try:
        identity = await load_identity(store)
    finally:
        await store.close()
    if args.json:
        print(json.dumps({"device_id": str(identity.device_id), "name": identity.name}))
    else:
        print(identity.device_id)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    # The composition root: the one upward import (ARCHITECTURE.md), kept lazy so that the other
    # commands start fast and never load the web stack.
    from daemon.runner import run_daemon  # noqa: PLC0415
    from webui.app import create_app  # noqa: PLC0415

    base = config_from(args)
    ui_host, ui_port = parse_host_port(args.ui, DEFAULT_UI_PORT, "--ui")
    listen_host, listen_port = parse_host_port(args.listen, DEFAULT_PEER_PORT, "--listen")
    config = Config(
        home=base.home,
        ui_host=ui_host,
        ui_port=ui_port,
        listen_host=listen_host,
        listen_port=listen_port,
        mdns=not args.no_mdns,
        relays=tuple(check_relay_uri(uri) for uri in args.relay),
        rescan_interval=_rescan(args.rescan),
    )
    return await run_daemon(config, create_app)


def _rescan(seconds: float) -> float:
    if not 1.0 <= seconds <= 86_400.0:
        raise ConfigError("--rescan is between 1 and 86400 seconds")
    return seconds


# --- commands that talk to the running daemon -------------------------------------------------

ROLES = ("viewer", "editor")
LIVE_STATES = ("active", "invited", "joining")
POLL_INTERVAL = 0.25
DEFAULT_JOIN_DIR = Path("~/Pictures/albumsync")
FILES_PAGE = 500  # the API's largest page of the files listing


def add_api_commands(sub: SubParsers) -> None:
    """album, invite, member, peer and status: each one call (or a few) to the local API."""
    _add_album_commands(_group(sub, "album", "make, list, rename, leave or delete albums"))
    _add_invite_commands(_group(sub, "invite", "invite devices to albums, answer invites"))
    _add_member_commands(_group(sub, "member", "list members, change roles, remove members"))
    _add_peer_commands(_group(sub, "peer", "devices this one talks to"))
    _add_relay_commands(_group(sub, "relay", "household relays for members outside the LAN"))
    key = _group(sub, "api-key", "the secret the CLI and scripts present to the local API")
    p = key.add_parser("rotate", help="replace it; the old key stops working at once")
    p.set_defaults(func=cmd_api_key_rotate)
    _add_trash_commands(_group(sub, "trash", "files the album moved aside: list and restore them"))
    p = sub.add_parser("status", help="albums and peers: what is left to sync, how fast")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--wait-synced",
        type=float,
        metavar="SECONDS",
        help="wait until no album is joining and none has files to download; exit 1 on timeout",
    )
    p.set_defaults(func=cmd_status)


def _add_album_commands(album: SubParsers) -> None:
    p = album.add_parser("create", help="make a folder an album; prints the album ID")
    p.add_argument("path", type=Path, help="the folder")
    p.add_argument("--name", help="album name (default: the folder's name)")
    p.set_defaults(func=cmd_album_create)
    p = album.add_parser("list", help="every album on this device")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_album_list)
    p = album.add_parser("leave", help="leave an album someone shared; the files stay")
    p.add_argument("album", help="album ID or exact name")
    p.set_defaults(func=cmd_album_leave)
    p = album.add_parser("rename", help="rename an album you own, for everyone")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("name", help="the new name")
    p.set_defaults(func=cmd_album_rename)
    p = album.add_parser("delete", help="delete an album you own for everyone; files stay")
    p.add_argument("album", help="album ID or exact name")
    p.set_defaults(func=cmd_album_delete)
    p = album.add_parser("cover", help="set the cover of an album you own, or clear it")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="a published photo: its ID from the files listing, or its path in the album",
    )
    p.add_argument("--clear", action="store_true", help="no chosen cover (the first photo shows)")
    p.set_defaults(func=cmd_album_cover)
    p = album.add_parser(
        "folder", help="point an album at the folder it was moved to (its marker must name it)"
    )
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("path", type=Path, help="where the album's folder is now")
    p.set_defaults(func=cmd_album_folder)


def _add_trash_commands(trash: SubParsers) -> None:
    p = trash.add_parser("list", help="the album trash: removed or replaced files (30 days)")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_trash_list)
    p = trash.add_parser("restore", help="move a file from the trash back into the album folder")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument(
        "trash_path",
        metavar="TRASH_PATH",
        help="its TRASH PATH from `trash list` (or its old path, if only one copy is trashed)",
    )
    p.set_defaults(func=cmd_trash_restore)


def _add_invite_commands(invite: SubParsers) -> None:
    p = invite.add_parser("create", help="invite by code (printed) or directly to a device")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--to", metavar="DEVICE_ID", help="invite this device directly (no code)")
    p.add_argument("--message", default="", help="a note the invited person sees")
    p.set_defaults(func=cmd_invite_create)
    p = invite.add_parser("list", help="invites made and received")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_invite_list)
    p = invite.add_parser("accept", help="redeem an invite code, or accept a pending invite")
    p.add_argument("invite", metavar="CODE_OR_ALBUM", help='an "albumsync:..." code or an album')
    p.add_argument(
        "--path", type=Path, help=f"folder for the album (default: {DEFAULT_JOIN_DIR}/NAME)"
    )
    p.set_defaults(func=cmd_invite_accept)
    p = invite.add_parser("decline", help="decline a pending invite")
    p.add_argument("album", metavar="ID", help="album ID or exact name of the invite")
    p.set_defaults(func=cmd_invite_decline)
    p = invite.add_parser("cancel", help="cancel an invite you made")
    p.add_argument(
        "invite_id", metavar="ID", help="invite ID from `invite list` (a unique prefix will do)"
    )
    p.set_defaults(func=cmd_invite_cancel)


def _add_member_commands(member: SubParsers) -> None:
    p = member.add_parser("list", help="the owner and every invited device")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_member_list)
    p = member.add_parser("role", help="change a member's role")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("device", metavar="DEVICE_ID", help="device ID (or exact device name)")
    p.add_argument("role", choices=ROLES)
    p.set_defaults(func=cmd_member_role)
    p = member.add_parser("remove", help="remove a member (its photos leave unless kept)")
    p.add_argument("album", help="album ID or exact name")
    p.add_argument("device", metavar="DEVICE_ID", help="device ID (or exact device name)")
    p.add_argument("--keep-photos", action="store_true", help="keep the photos it added")
    p.set_defaults(func=cmd_member_remove)


def _add_peer_commands(peer: SubParsers) -> None:
    p = peer.add_parser("add", help="connect to a device at a fixed address")
    p.add_argument("device", metavar="DEVICE_ID")
    p.add_argument("address", metavar="tcp://HOST:PORT")
    p.set_defaults(func=cmd_peer_add)
    p = peer.add_parser("list", help="known devices and their connections")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_peer_list)


def _add_relay_commands(relay: SubParsers) -> None:
    p = relay.add_parser("add", help="save a relay, join it, and put it in new invite codes")
    p.add_argument("uri", metavar="relay://HOST:PORT/?id=RELAY-ID")
    p.set_defaults(func=cmd_relay_add)
    p = relay.add_parser("remove", help="forget a saved relay")
    p.add_argument("uri", metavar="relay://HOST:PORT/?id=RELAY-ID")
    p.set_defaults(func=cmd_relay_remove)
    p = relay.add_parser("list", help="the relays this device joins, and their state")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_relay_list)


async def cmd_album_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"path": str(args.path.expanduser().resolve())}
    if args.name is not None:
        body["name"] = args.name
    album = await _client(args).post("/albums", body)
    print(album["album_id"])
    return 0


async def cmd_album_list(args: argparse.Namespace) -> int:
    albums = await _client(args).get("/albums")
    if args.json:
        return _print_json(albums)
    if not albums:
        print("no albums yet; make one with `albumsync album create PATH`")
        return 0
    _print_table(
        ["NAME", "ROLE", "STATE", "FILES", "SIZE", "TO GO", "FOLDER", "ID"],
        [
            [
                a["name"] or "(joining)",
                a["role"] or "-",
                a["state"],
                str(a["files"]),
                _size(a["bytes"]),
                _to_go(a["progress"]),
                a["path"] or "-",
                a["album_id"],
            ]
            for a in albums
        ],
    )
    return 0


async def cmd_album_leave(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    done = await client.post(f"/albums/{album['album_id']}/leave")
    print(f"left {done['name']}; its files stay in {done['path']}")
    return 0


async def cmd_album_rename(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    done = await client.post(f"/albums/{album['album_id']}/rename", {"name": args.name})
    print(f"renamed {album['name']} to {done['name']}")
    return 0


async def cmd_album_folder(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    path = str(args.path.expanduser().resolve())
    done = await client.post(f"/albums/{album['album_id']}/folder", {"path": path})
    print(f"{done['name']} now syncs {done['path']}")
    return 0


async def cmd_album_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    await client.post(f"/albums/{album['album_id']}/delete")
    print(f"deleted {album['name']} for everyone; the files stay in the folders")
    return 0


async def cmd_album_cover(args: argparse.Namespace) -> int:
    if args.clear == (args.file is not None):
        raise ConfigError("give either the photo (its file ID or path) or --clear, not both")
    client = _client(args)
    album = await resolve_album(client, args.album)
    file = None if args.clear else await _resolve_file(client, album, args.file)
    path = f"/albums/{album['album_id']}/cover"
    await client.post(path, {"file": file["id"] if file is not None else None})
    if file is None:
        print(f"cleared the cover of {album['name']}; its first photo shows instead")
    else:
        print(f"the cover of {album['name']} is now {file['path']}")
    return 0


async def cmd_trash_list(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    items = await client.get(f"/albums/{album['album_id']}/trash")
    if args.json:
        return _print_json(items)
    if not items:
        print(f"the trash of {album['name']} is empty")
        return 0
    _print_table(
        ["PATH", "TRASHED", "TRASH PATH"],
        [[i["path"], _when(int(i["trashed_at"])), i["trash_path"]] for i in items],
    )
    return 0


async def cmd_trash_restore(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    items = await client.get(f"/albums/{album['album_id']}/trash")
    trash_path = _trash_path(items, args.trash_path, album)
    path = f"/albums/{album['album_id']}/trash/restore"
    done = await client.post(path, {"trash_path": trash_path})
    print(f"restored {done['restored']} into {album['path']}")
    return 0


async def cmd_invite_create(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    body: dict[str, Any] = {"album": album["album_id"], "role": args.role}
    if args.to:
        body["to_device"] = _device_text(args.to)
    if args.message:
        body["message"] = args.message
    made = await client.post("/invites", body)
    print(made["code"] if made["code"] else f"invited {body['to_device']}")
    return 0


async def cmd_invite_list(args: argparse.Namespace) -> int:
    invites = await _client(args).get("/invites")
    if args.json:
        return _print_json(invites)
    out, incoming = invites["outgoing"], invites["incoming"]
    if not out and not incoming:
        print("no invites")
        return 0
    if out:
        print("Invites from this device:")
        _print_table(
            ["ID", "ALBUM", "ROLE", "TO", "STATE", "EXPIRES"],
            [
                [
                    i["invite_id"],
                    i["album_name"] or i["album_id"],
                    i["role"],
                    i["to_device"] or "(code)",
                    i["state"],
                    _when(i["expires_at"]),
                ]
                for i in out
            ],
        )
    if incoming:
        print("Invites to this device:" if not out else "\nInvites to this device:")
        _print_table(
            ["ALBUM", "FROM", "ROLE", "STATE", "MESSAGE", "ID"],
            [
                [
                    i["album_name"],
                    i["owner_name"],
                    i["role"],
                    i["state"],
                    _one_line(i["message"]),
                    i["album_id"],
                ]
                for i in incoming
            ],
        )
    return 0


async def cmd_invite_accept(args: argparse.Namespace) -> int:
    client = _client(args)
    text = args.invite.strip()
    if text.lower().startswith(INVITE_PREFIX):
        path = args.path or DEFAULT_JOIN_DIR / _album_id_of_code(text)
        body = {"code": text, "path": str(path.expanduser().resolve())}
        joining = await client.post("/invites/accept", body)
        print(
            f"joining album {joining['album_id']} in {body['path']}: it appears once the owner's "
            "device answers (see `albumsync status`)"
        )
        return 0
    album = await resolve_album(client, text, states=("invited",))
    path = args.path or DEFAULT_JOIN_DIR / _folder_name(album)
    body = {"album": album["album_id"], "path": str(path.expanduser().resolve())}
    joined = await client.post("/invites/accept", body)
    print(f"joined {joined['name']} in {joined['path']}")
    return 0


async def cmd_invite_decline(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album, states=("invited",))
    await client.post(f"/invites/{album['album_id']}/decline")
    print(f"declined the invite to {album['name']}")
    return 0


async def cmd_invite_cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    invite_id = args.invite_id.strip().lower()
    if len(invite_id) != 32:
        invite_id = await _resolve_invite(client, invite_id)
    await client.post(f"/invites/{invite_id}/cancel")
    print(f"cancelled invite {invite_id}")
    return 0


async def cmd_member_list(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    members = await client.get(f"/albums/{album['album_id']}/members")
    if args.json:
        return _print_json(members)
    _print_table(
        ["NAME", "ROLE", "STATUS", "CONNECTED", "DEVICE ID"],
        [
            [
                m["name"],
                m["role"],
                m["status"],
                "this device" if m["is_me"] else ("yes" if m["connected"] else "no"),
                m["device_id"],
            ]
            for m in members
        ],
    )
    return 0


async def cmd_member_role(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    device = await _resolve_member(client, album, args.device)
    path = f"/albums/{album['album_id']}/members/{device}/role"
    await client.post(path, {"role": args.role})
    print(f"{args.device} is now {args.role} in {album['name']}")
    return 0


async def cmd_member_remove(args: argparse.Namespace) -> int:
    client = _client(args)
    album = await resolve_album(client, args.album)
    device = await _resolve_member(client, album, args.device)
    path = f"/albums/{album['album_id']}/members/{device}/remove"
    await client.post(path, {"keep_photos": bool(args.keep_photos)})
    kept = "; the photos it added stay" if args.keep_photos else ""
    print(f"removed {args.device} from {album['name']}{kept}")
    return 0


async def cmd_peer_add(args: argparse.Namespace) -> int:
    body = {"device_id": _device_text(args.device), "address": args.address}
    peer = await _client(args).post("/peers", body)
    print(f"will connect to {peer['device_id']} at {args.address}")
    return 0


async def cmd_peer_list(args: argparse.Namespace) -> int:
    peers = await _client(args).get("/peers")
    if args.json:
        return _print_json(peers)
    if not peers:
        print("no known devices yet: invite one, or `albumsync peer add DEVICE_ID tcp://HOST:PORT`")
        return 0
    _print_table(
        ["NAME", "CONNECTION", "ADDRESS", "IN", "OUT", "LAST ERROR", "DEVICE ID"],
        [_peer_row(p) for p in peers],
    )
    return 0


async def cmd_api_key_rotate(args: argparse.Namespace) -> int:
    done = await _client(args).post("/api-key/rotate")
    print(f"new API key written to {done['path']}; the old one no longer works")
    return 0


async def cmd_relay_add(args: argparse.Namespace) -> int:
    relay = await _client(args).post("/relays", {"uri": args.uri})
    print(f"joining {relay['uri']} (saved; new invite codes carry it)")
    return 0


async def cmd_relay_remove(args: argparse.Namespace) -> int:
    await _client(args).post("/relays/remove", {"uri": args.uri})
    print("removed; invite codes made before still name it")
    return 0


async def cmd_relay_list(args: argparse.Namespace) -> int:
    relays = await _client(args).get("/relays")
    if args.json:
        return _print_json(relays)
    if not relays:
        print("no relays: `albumsync relay add relay://HOST:PORT/?id=RELAY-ID` (see docs/relay.md)")
        return 0
    _print_table(
        ["STATE", "SOURCE", "JOINS", "LAST ERROR", "RELAY"], [_relay_row(r) for r in relays]
    )
    return 0


def _relay_row(r: dict[str, Any]) -> list[str]:
    return [r["state"], r["source"], str(r["joins"]), r["last_error"] or "-", r["uri"]]


async def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    status = await client.get("/status")
    if args.wait_synced is not None:
        deadline = time.monotonic() + max(0.0, args.wait_synced)
        while _unsynced(status) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            status = await client.get("/status")
        waiting = _unsynced(status)
        if waiting:
            print(
                f"albumsync: not synced after {args.wait_synced:g} s: " + "; ".join(waiting),
                file=sys.stderr,
            )
            return 1
    if args.json:
        return _print_json(status)
    _print_status(status)
    return 0


async def resolve_album(
    client: ApiClient, text: str, states: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The album whose ID is `text`, else the one album with exactly that name."""
    albums: list[dict[str, Any]] = await client.get("/albums")
    try:
        wanted: str | None = str(AlbumId.parse(text))
    except DecodeError:
        wanted = None
    by_id = [a for a in albums if a["album_id"] == wanted]
    if by_id:
        return by_id[0]
    named = [a for a in albums if a["name"] == text and (states is None or a["state"] in states)]
    if len(named) > 1:
        # A name reused after leaving an album: the live one is meant.
        named = [a for a in named if a["state"] in LIVE_STATES] or named
    if len(named) == 1:
        return named[0]
    what = "pending invite" if states == ("invited",) else "album"
    if named:
        raise ConfigError(
            f"{len(named)} albums are named '{text}': use the album ID instead "
            "(see `albumsync album list`)"
        )
    if wanted is not None:
        raise AlbumNotFoundError(f"no {what} with the ID {wanted} on this device")
    raise AlbumNotFoundError(
        f"no {what} named '{text}' on this device (see `albumsync album list`)"
    )


def _group(sub: SubParsers, name: str, text: str) -> SubParsers:
    parser = sub.add_parser(name, help=text)
    parser.set_defaults(func=_usage(parser))
    group: SubParsers = parser.add_subparsers(metavar="COMMAND")
    return group


def _usage(parser: argparse.ArgumentParser) -> Command:
    async def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(config_from(args).home)


async def _resolve_member(client: ApiClient, album: dict[str, Any], text: str) -> str:
    """A member's device ID from its ID (any spelling) or its exact device name."""
    try:
        return str(DeviceId.parse(text))
    except DecodeError as exc:
        problem = exc.message
    members = await client.get(f"/albums/{album['album_id']}/members")
    named = [m for m in members if m["name"] == text]
    if len(named) == 1:
        return str(named[0]["device_id"])
    if named:
        raise ConfigError(f"{len(named)} members are named '{text}': use the device ID")
    raise ConfigError(f"'{text}' is not a member's name, and not a device ID: {problem}")


async def _resolve_file(client: ApiClient, album: dict[str, Any], text: str) -> dict[str, Any]:
    """The published file whose listing ID or path in the album is `text`."""
    wanted = _in_album(text.strip(), album)
    found: dict[str, Any] | None = None
    offset = 0
    while found is None and offset < album["files"] + album["local_only"]:
        page = await client.get(
            f"/albums/{album['album_id']}/files", offset=offset, limit=FILES_PAGE
        )
        if not page:
            break
        found = next((f for f in page if wanted in (f["id"], f["path"])), None)
        offset += len(page)
    if found is None:
        raise AlbumNotFoundError(
            f"no file '{text}' in {album['name']}: give its path in the album folder or its ID"
        )
    if found["local"] == "local_only":
        raise ConfigError(
            f"'{found['path']}' is not published in the album, so it cannot be the cover"
        )
    return found


def _in_album(text: str, album: dict[str, Any]) -> str:
    """A path as the files listing spells it: relative to the album folder (a path typed with
    the folder in front, absolute or from the current directory, has it removed)."""
    if album["path"] and (text.startswith(("/", "./")) or Path(text).exists()):
        try:
            return Path(text).resolve().relative_to(Path(album["path"]).resolve()).as_posix()
        except ValueError:
            return text
    return text


def _trash_path(items: list[dict[str, Any]], text: str, album: dict[str, Any]) -> str:
    """A trash entry's TRASH PATH, from itself or from the path of the one trashed copy."""
    if any(i["trash_path"] == text for i in items):
        return text
    copies = [i for i in items if i["path"] == text]
    if len(copies) == 1:
        return str(copies[0]["trash_path"])
    if copies:
        raise ConfigError(
            f"{len(copies)} copies of '{text}' are in the trash: give the TRASH PATH of one "
            f"(see `albumsync trash list {album['album_id']}`)"
        )
    raise AlbumNotFoundError(
        f"'{text}' is not in the trash of {album['name']} "
        f"(see `albumsync trash list {album['album_id']}`)"
    )


async def _resolve_invite(client: ApiClient, prefix: str) -> str:
    invites = await client.get("/invites")
    found = [i["invite_id"] for i in invites["outgoing"] if i["invite_id"].startswith(prefix)]
    if len(prefix) >= 4 and len(found) == 1:
        return str(found[0])
    if len(found) > 1 and len(prefix) >= 4:
        raise ConfigError(f"{len(found)} invites start with '{prefix}': give more of the ID")
    raise AlbumNotFoundError(f"no invite '{prefix}' from this device (see `albumsync invite list`)")


def _device_text(text: str) -> str:
    try:
        return str(DeviceId.parse(text))
    except DecodeError as exc:
        raise ConfigError(exc.message) from None


def _album_id_of_code(text: str) -> str:
    try:
        return str(AlbumId(parse_invite(text, int(time.time())).album_id))
    except ProtocolError as exc:
        raise ConfigError(exc.message) from None


def _folder_name(album: dict[str, Any]) -> str:
    """The album's name as one safe folder name; its ID when the name cannot be one."""
    name = str(album["name"]).replace("/", "_").replace("\\", "_").replace("\0", "").strip()
    return name if name and name.strip(".") and name.isprintable() else str(album["album_id"])


def _unsynced(status: dict[str, Any]) -> list[str]:
    """Why the device is not in sync yet: albums with files to go, or still being joined."""
    waiting = [
        f"album {a['album_id']} is still joining (its owner's device has not answered)"
        for a in status["albums"]
        if a["state"] == "joining"
    ]
    unheard = [
        f"{a['name']} waits for a member's device to say what the album holds"
        for a in status["albums"]
        if a["state"] == "active" and a["progress"].get("waiting_for_peers")
    ]
    return (
        waiting
        + unheard
        + [
            f"{a['name']} has {_to_go(a['progress'])} to go"
            for a in status["albums"]
            if a["state"] == "active" and a["progress"]["files_to_go"] > 0
        ]
    )


def _print_status(status: dict[str, Any]) -> None:
    print(
        f"{status['device_name']}  {status['device_id']}\n"
        f"albumsync {status['version']}, up {_duration(status['uptime'])}, "
        f"peers connect to {status['listen']}\n"
    )
    albums = [a for a in status["albums"] if a["state"] in LIVE_STATES]
    if albums:
        _print_table(
            ["ALBUM", "ROLE", "STATE", "FOLDER", "FILES", "SIZE", "TO GO", "RATE", "NOTES"],
            [_album_row(a) for a in albums],
        )
    else:
        print("no albums: `albumsync album create PATH`, or accept an invite")
    if status["peers"]:
        print()
        _print_table(
            ["PEER", "CONNECTION", "ADDRESS", "IN", "OUT", "LAST ERROR", "DEVICE ID"],
            [_peer_row(p) for p in status["peers"]],
        )
    if status["relays"]:
        print()
        _print_table(
            ["STATE", "SOURCE", "JOINS", "LAST ERROR", "RELAY"],
            [_relay_row(r) for r in status["relays"]],
        )
    if status["errors"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status["errors"].items()))
        print(f"\nerrors since start: {counts}")


def _album_row(a: dict[str, Any]) -> list[str]:
    notes = list(a["problems"])
    if a["local_only"]:
        notes.append(f"{a['local_only']} local files not shared ({a['role'] or 'not a member'})")
    if a["fork"]:
        notes.append("history forked: changes frozen")
    rate = a["progress"]["rate"]
    return [
        a["name"] or a["album_id"],
        a["role"] or "-",
        a["state"],
        a["folder_state"].replace("_", " "),
        str(a["files"]),
        _size(a["bytes"]),
        _to_go(a["progress"]),
        f"{_size(int(rate))}/s" if rate else "-",
        "; ".join(notes) or "-",
    ]


def _peer_row(p: dict[str, Any]) -> list[str]:
    return [
        p["name"],
        f"connected ({p['via']})" if p["connected"] else "not connected",
        p["address"] or (p["addresses"][0] if p["addresses"] else "-"),
        _size(p["bytes_in"]),
        _size(p["bytes_out"]),
        _one_line(p["last_error"]) or "-",
        p["device_id"],
    ]


def _print_json(value: object) -> int:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    return 0


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _to_go(progress: dict[str, Any]) -> str:
    files = int(progress["files_to_go"])
    if not files:
        return "synced" if not progress["bytes_to_go"] else _size(progress["bytes_to_go"])
    noun = "file" if files == 1 else "files"
    return f"{files} {noun}, {_size(progress['bytes_to_go'])}"


def _size(count: int) -> str:
    """Decimal units, as the web UI and desktop file managers show sizes."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _when(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix))


def _one_line(text: str, limit: int = 40) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
