"""One Syncthing 1.19 instance (the Debian package) configured to talk only over 127.0.0.1.

Every setting that could reach past loopback is switched off in config.xml before the first start
(discovery, relays, NAT, usage and crash reports, upgrades), peers have explicit
tcp://127.0.0.1:PORT addresses, and the file is re-read and refused on any other address. On
root the whole benchmark also runs in a network namespace that holds only `lo`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench import processes
from bench.procstats import BenchError, children

FOLDER = "photos"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LOOPBACK_ONLY_OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
    "announceLANAddresses": "false",
    "stunKeepaliveStartS": "0",
}


def version() -> str | None:
    if shutil.which("syncthing") is None:
        return None
    out = subprocess.run(["syncthing", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(STNODEFAULTFOLDER="1", STNOUPGRADE="1", STNORESTART="1")
    return env


class SyncthingNode:
    def __init__(self, home: Path, name: str, gui_port: int, listen_port: int) -> None:
        self.home, self.name = home, name
        self.gui_port, self.listen_port = gui_port, listen_port
        self.apikey = secrets.token_urlsafe(24)
        self.device_id = ""
        self.proc: subprocess.Popen[bytes] | None = None  # the monitor process
        self.inner = 0  # the process that does the work, the one we measure

    @property
    def pid(self) -> int:
        return self.inner

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.listen_port}"

    def generate(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        out = subprocess.run(
            [
                "syncthing",
                "generate",
                f"--home={self.home}",
                "--no-default-folder",
                "--skip-port-probing",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=_env(),
        )
        found = re.search(r"Device ID:\s*([A-Z0-9-]{50,})", out.stdout + out.stderr)
        if not found:
            raise BenchError(f"syncthing generate printed no device ID: {out.stdout}{out.stderr}")
        self.device_id = found.group(1)

    def configure(
        self, peer: SyncthingNode | None, folder: Path, *, paused: bool, watcher_delay: int = 10
    ) -> None:
        """One folder shared with `peer` (or with nobody), everything loopback only."""
        path = self.home / "config.xml"
        tree = ET.parse(path)  # noqa: S314 - written by the syncthing we just ran
        root = tree.getroot()
        device_template = root.find("device")
        folder_template = root.find("defaults/folder")
        if device_template is None or folder_template is None:
            raise BenchError(f"{path}: no <device> or <defaults><folder> to start from")
        for old in root.findall("device") + root.findall("folder"):
            root.remove(old)
        nodes = [self] + ([peer] if peer is not None else [])
        for i, node in enumerate(nodes):
            device = _copy(device_template)
            device.set("id", node.device_id)
            device.set("name", node.name)
            for address in device.findall("address"):
                device.remove(address)
            address = ET.Element("address")
            address.text = node.address
            device.insert(0, address)
            root.insert(i, device)
        shared = _copy(folder_template)
        shared.attrib.update(
            id=FOLDER,
            label=FOLDER,
            path=str(folder),
            type="sendreceive",
            fsWatcherEnabled="true",
            fsWatcherDelayS=str(watcher_delay),
        )
        own = shared.find("device")
        if own is None:
            raise BenchError(f"{path}: the default folder lists no device")
        own.set("id", self.device_id)
        if peer is not None:
            other = _copy(own)
            other.set("id", peer.device_id)
            shared.insert(list(shared).index(own) + 1, other)
        _set_text(shared, "paused", "true" if paused else "false")
        root.insert(len(nodes), shared)
        for address in root.findall("defaults/device/address"):
            address.text = self.address  # never "dynamic", also for devices added later
        gui = root.find("gui")
        if gui is None:
            raise BenchError(f"{path}: no <gui>")
        gui.set("enabled", "true")
        gui.set("tls", "false")
        _set_text(gui, "address", f"127.0.0.1:{self.gui_port}")
        _set_text(gui, "apikey", self.apikey)
        options = root.find("options")
        if options is None:
            raise BenchError(f"{path}: no <options>")
        for listen in options.findall("listenAddress"):
            options.remove(listen)
        listen = ET.Element("listenAddress")
        listen.text = self.address
        options.insert(0, listen)
        for key, value in LOOPBACK_ONLY_OPTIONS.items():
            _set_text(options, key, value)
        tree.write(path)
        self._refuse_unless_loopback(path)

    def _refuse_unless_loopback(self, path: Path) -> None:
        root = ET.parse(path).getroot()  # noqa: S314 - the file we just wrote
        bad = [
            key
            for key, value in LOOPBACK_ONLY_OPTIONS.items()
            if root.findtext(f"options/{key}") != value
        ]
        for element in root.iter():
            if element.tag in ("address", "listenAddress") and element.text:
                text = element.text
                if not (text.startswith(("tcp://127.", "127."))) or "dynamic" in text:
                    bad.append(f"{element.tag}={text}")
        if bad:
            raise BenchError(f"{path}: refusing to start Syncthing, not loopback-only: {bad}")

    def start(self) -> None:
        argv = ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart"]
        argv += ["--no-upgrade", "--no-default-folder"]
        self.proc = processes.spawn(argv, self.home / "syncthing.log", env=_env())
        # Syncthing 1.19 re-executes itself under a monitor process even with --no-restart.
        deadline = time.monotonic() + 20
        while not self.inner:
            kids = children(self.proc.pid)
            if kids:
                self.inner = kids[0]
                processes.track_child(self.proc.pid, self.inner)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"syncthing {self.name} did not start: {self.log_tail()}")
            else:
                time.sleep(0.02)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.api("GET", "/rest/system/ping", timeout=2)
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"syncthing {self.name}: REST not up: {self.log_tail()}"
                    ) from None
                time.sleep(0.1)
            else:
                return

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.home / "syncthing.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, method: str, path: str, body: object = None, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        url = f"http://127.0.0.1:{self.gui_port}{path}"
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("X-API-Key", self.apikey)
        request.add_header("Content-Type", "application/json")
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw.strip() else None

    def connected_to(self, other: SyncthingNode) -> bool:
        connections = self.api("GET", "/rest/system/connections")["connections"]
        return bool(connections.get(other.device_id, {}).get("connected"))

    def folder_status(self) -> dict[str, Any]:
        return dict(self.api("GET", f"/rest/db/status?folder={FOLDER}"))

    def unpause(self) -> None:
        self.api("PATCH", f"/rest/config/folders/{FOLDER}", {"paused": False})


def _copy(element: ET.Element) -> ET.Element:
    return ET.fromstring(ET.tostring(element))  # noqa: S314 - our own element


def _set_text(parent: ET.Element, tag: str, text: str) -> None:
    element = parent.find(tag)
    if element is None:
        element = ET.SubElement(parent, tag)
    element.text = text


def pair(
    base: Path, a_folder: Path, b_folder: Path, *, a_paused: bool, ports: tuple[int, int]
) -> tuple[SyncthingNode, SyncthingNode]:
    """Two fresh Syncthing homes (new keys, empty databases) sharing one folder."""
    gui, listen = ports
    a = SyncthingNode(base / "st-a", "bench-a", gui, listen)
    b = SyncthingNode(base / "st-b", "bench-b", gui + 1, listen + 1)
    for node in (a, b):
        node.generate()
    for folder in (a_folder, b_folder):
        (folder / ".stfolder").mkdir(parents=True, exist_ok=True)
    a.configure(b, a_folder, paused=a_paused)
    b.configure(a, b_folder, paused=False)
    return a, b


def start_connected(a: SyncthingNode, b: SyncthingNode, limit: float = 120) -> None:
    a.start()
    b.start()
    deadline = time.monotonic() + limit
    while not (a.connected_to(b) and b.connected_to(a)):
        if time.monotonic() > deadline:
            raise BenchError(f"syncthing pair did not connect: {a.log_tail()}\n{b.log_tail()}")
        time.sleep(0.1)
