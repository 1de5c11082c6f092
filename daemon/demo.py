"""`albumsync demo`: a three-device household on this machine, sharing one album.

Three real devices (each its own identity, state database, peer listener and web UI on
127.0.0.1), talking over loopback exactly as they would across a LAN: the owner's laptop shares
"Summer 2026" with the desktop as editor and the home server as viewer. Sample photos are
generated with Pillow and carry EXIF capture times.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from daemon.config import Config
from daemon.core import Core
from daemon.identity import create_identity
from daemon.instance import InstanceLock
from daemon.runner import setup_logging, start_ui
from daemon.store import Store
from protocol.rights import Role

AppFactory = Callable[[Core], web.Application]
DEVICES = (("Ana's laptop", "owner"), ("Family desktop", "editor"), ("Home server", "viewer"))
SAMPLE_PHOTOS = 12
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_IFD = 0x8769


def make_sample_photos(folder: Path, count: int = SAMPLE_PHOTOS) -> list[Path]:
    """Small JPEGs with distinct colours and EXIF DateTimeOriginal, a day apart."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - only the demo draws

    folder.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2026, 7, 1, 10, 0, 0)
    made = []
    for i in range(count):
        hue = (i * 37) % 256
        image = Image.new("RGB", (640, 480), (hue, 160, 255 - hue))
        draw = ImageDraw.Draw(image)
        draw.ellipse((200 + i * 5, 120, 440 + i * 5, 360), fill=(255 - hue, 220, hue))
        draw.text((20, 20), f"Summer 2026 #{i + 1}", fill=(0, 0, 0))
        exif = Image.Exif()
        taken = start + dt.timedelta(days=i, hours=i % 5)
        exif.get_ifd(EXIF_IFD)[EXIF_DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
        path = folder / f"IMG_{i + 1:04}.jpg"
        image.save(path, "JPEG", quality=85, exif=exif)
        made.append(path)
    return made


async def run_demo(root: Path, app_factory: AppFactory, ui_base_port: int = 8861) -> int:
    setup_logging()
    cores: list[Core] = []
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    locks: list[InstanceLock] = []
    for i, (name, _) in enumerate(DEVICES):
        home = root / name.lower().replace(" ", "-").replace("'", "")
        store = await Store.open(home / "state.db")
        if await store.load_identity() is None:
            await create_identity(store, name)
        await store.close()
        config = Config(
            home=home,
            ui_port=ui_base_port + i if ui_base_port else 0,
            listen_host="127.0.0.1",
            listen_port=0,
            mdns=False,
        )
        locks.append(InstanceLock.acquire(home))
        core = await Core.open(config)
        runner = web.AppRunner(app_factory(core), access_log=None, handle_signals=False)
        await runner.setup()
        urls.append(await start_ui(runner, config))
        cores.append(core)
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            for core, url in zip(cores, urls, strict=True):
                await core.start(tasks)
                core.write_runtime_file(url, peer_port=core.engine.peers.bound_port)
            await _share(root, cores)
            _print_welcome(root, cores, urls)
            await stop.wait()
            for core in cores:
                await core.stop()
    finally:
        for core, runner in zip(cores, runners, strict=True):
            core.remove_runtime_file()
            await runner.cleanup()
            await core.close()
        for lock in locks:
            lock.release()
    return 0


async def _share(root: Path, cores: list[Core]) -> None:
    owner, editor, viewer = cores
    for core in (editor, viewer):
        await owner.engine.add_peer(
            core.identity.device_id, f"tcp://127.0.0.1:{core.engine.peers.bound_port}"
        )
        await core.engine.add_peer(
            owner.identity.device_id, f"tcp://127.0.0.1:{owner.engine.peers.bound_port}"
        )
    if owner.engine.albums:
        return  # a demo that ran before: everything is in its state already
    folder = root / "photos" / "ana" / "Summer 2026"
    make_sample_photos(folder)
    album = await owner.engine.create_album(folder, "Summer 2026")
    await owner.engine.create_invite(
        album.album_id,
        role=Role.EDITOR,
        message="Add yours too!",
        to_device=editor.identity.device_id,
    )
    await owner.engine.create_invite(
        album.album_id, role=Role.VIEWER, message="For the TV", to_device=viewer.identity.device_id
    )
    for core, who in ((editor, "desktop"), (viewer, "server")):
        for _ in range(200):
            if album.album_id in core.engine.albums:
                break
            await asyncio.sleep(0.05)
        else:
            continue
        await core.engine.accept_invite(album.album_id, root / "photos" / who / "Summer 2026")


def _print_welcome(root: Path, cores: list[Core], urls: list[str]) -> None:
    lines = ["", "albumsync demo: a household of three devices on this machine", ""]
    for (name, role), core, url in zip(DEVICES, cores, urls, strict=True):
        lines.append(f"  {name:<16} {role:<7} {url}   data: {core.config.home}")
    lines += [
        "",
        f"  Photos live in {root / 'photos'}/<device>/Summer 2026.",
        "  Try: drop a JPEG into the desktop's folder and watch it reach the others in a second;",
        "  delete one of Ana's photos and find it in the others' .albumsync/trash; open a web UI.",
        "  CLI: albumsync --home <data> status | album list | member list 'Summer 2026'",
        "  Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(lines), flush=True)
