"""The `albumsync` command line. `run` is the composition root: the one place that imports webui.

Every command except init, id and demo talks to the running daemon through its local API, so the
CLI, the web pages and scripts all go through the same checks. Errors print one sentence to stderr
and exit non-zero: never a traceback at a person.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from daemon.config import DEFAULT_PEER_PORT, DEFAULT_UI_PORT, Config, default_home, parse_host_port
from daemon.errors import ConfigError, DaemonError
from daemon.identity import create_identity, load_identity
from daemon.store import Store

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


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
    except KeyboardInterrupt:
        return 130


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
    p.set_defaults(func=cmd_run)
    return parser


def config_from(args: argparse.Namespace) -> Config:
    home = args.home.expanduser() if args.home else default_home()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"the data directory {home} exists and is not a directory")
    return Config(home=home)


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
    )
    return await run_daemon(config, create_app)


if __name__ == "__main__":
    sys.exit(main())
