"""`albumsync run`: start every service, tell systemd, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from daemon.config import Config
from daemon.core import Core
from daemon.errors import ConfigError
from daemon.instance import InstanceLock
from daemon.systemd import notify, watchdog_interval, watchdog_loop

log = logging.getLogger("albumsync")
AppFactory = Callable[[Core], web.Application]


def setup_logging() -> None:
    """One line per event on stderr, no timestamps: journald adds its own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def run_daemon(config: Config, app_factory: AppFactory) -> int:
    setup_logging()
    lock = InstanceLock.acquire(config.home)
    try:
        return await _run(config, app_factory)
    finally:
        lock.release()


async def _run(config: Config, app_factory: AppFactory) -> int:
    core = await Core.open(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app_factory(core), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        ui_url = await start_ui(runner, config)
        log.info(
            "device %s (%s); web UI at %s", core.identity.device_id, core.identity.name, ui_url
        )
        async with asyncio.TaskGroup() as tasks:
            await core.start(tasks)
            log.info("listening for peers on port %d", core.engine.peers.bound_port)
            core.write_runtime_file(ui_url, peer_port=core.engine.peers.bound_port)
            notify(f"READY=1\nSTATUS=serving the web UI at {ui_url}")
            interval = watchdog_interval(fraction=config.watchdog_fraction)
            if interval:
                core.tasks.append(tasks.create_task(watchdog_loop(interval)))
            await stop.wait()
            notify("STOPPING=1")
            log.info("stopping")
            await core.stop()
    finally:
        core.remove_runtime_file()
        await runner.cleanup()
        await core.close()
    return 0


async def start_ui(runner: web.AppRunner, config: Config) -> str:
    site = web.TCPSite(runner, config.ui_host, config.ui_port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for the web UI on {config.ui_host}:{config.ui_port} ({exc.strerror}); "
            "pick another with --ui 127.0.0.1:PORT"
        ) from None
    server = site._server
    sockets = list(getattr(server, "sockets", None) or [])
    host, port = sockets[0].getsockname()[:2] if sockets else (config.ui_host, config.ui_port)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
