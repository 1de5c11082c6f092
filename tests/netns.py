"""Throwaway test networks made of Linux network namespaces on one bridge (root tests, N1-N5).

Layout: one namespace holds the bridge `br0`; each node namespace has `lo` (up, multicast on) and
`eth0`, a veth whose other end (`v<i>` in the bridge namespace) is a bridge port. Node i has
10.231.<subnet>.<i>/24 and fd31:231:<subnet>::<i>/64; those addresses exist only inside these
namespaces and never leave the machine. Multicast snooping is off so mDNS reaches every port.

A partition moves bridge ports onto separate bridges: each side keeps a working link (nothing goes
down, packets to the other side are silently lost, as on a real split LAN); `heal()` moves them back.
`set_link(node, up=False)` is the blunter cut (`ip link set down` on the bridge-side veth).

Namespace names are `<prefix>-<pid>-<n>-<node>`; `delete_all()` also removes namespaces with the
prefix whose process is gone (left behind by a crashed run), and kills only the processes still
running inside the namespaces it deletes, which tests started there.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest

PREFIX = "albumsync-t"
BRIDGE = "br0"
NODE_LINK = "eth0"

_counter = itertools.count(1)


def require_root() -> None:
    """Skip the calling test unless network namespaces can be made here (root, `ip`, kernel)."""
    reason = _namespace_support()
    if reason:
        pytest.skip(reason)


class Network:
    """N node namespaces joined by a bridge; use as a context manager so teardown always runs."""

    def __init__(
        self, nodes: int, *, prefix: str = PREFIX, subnet: int = 1, ipv6: bool = True
    ) -> None:
        if not 1 <= nodes <= 250 or not 0 <= subnet <= 255:
            raise ValueError("a test network has 1-250 nodes and a subnet number 0-255")
        clean_stale(prefix)
        self.prefix = prefix
        self.subnet = subnet
        self.ipv6 = ipv6
        base = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.bridge_ns = f"{base}-br"
        self.nodes = [f"{base}-n{i}" for i in range(1, nodes + 1)]
        self._extra_bridges: list[str] = []
        self._created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.delete_all()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete_all()

    def address(self, node: str, version: int = 4) -> str:
        """The node's address on the test LAN (version 4 or 6)."""
        i = self._index(node)
        return f"10.231.{self.subnet}.{i}" if version == 4 else f"fd31:231:{self.subnet}::{i}"

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` inside the node's namespace (for asyncio.create_subprocess_exec)."""
        self._index(node)
        return ["ip", "netns", "exec", node, *argv]

    def run_in(
        self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the node's namespace; text output captured."""
        kw.setdefault("capture_output", True)
        return subprocess.run(
            self.exec_argv(node, argv), check=check, timeout=timeout, text=True, **kw
        )

    def popen_in(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the node's namespace and return at once."""
        return subprocess.Popen(self.exec_argv(node, argv), **kw)

    def partition(self, *groups: Iterable[str] | str) -> None:
        """Split the LAN: each group gets a bridge of its own; unlisted nodes stay on br0."""
        self.heal()
        for k, group in enumerate(groups, start=1):
            bridge = f"br{k}"
            _ip(
                "-n", self.bridge_ns, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0"
            )
            _ip("-n", self.bridge_ns, "link", "set", bridge, "up")
            self._extra_bridges.append(bridge)
            for node in [group] if isinstance(group, str) else group:
                self._attach(node, bridge)

    def heal(self) -> None:
        """Undo partition() and set_link(): every node back on br0 with its link up."""
        for node in self.nodes:
            self._attach(node, BRIDGE)
            self.set_link(node, up=True)
        for bridge in self._extra_bridges:
            _ip("-n", self.bridge_ns, "link", "del", bridge)
        self._extra_bridges.clear()

    def set_link(self, node: str, *, up: bool) -> None:
        """Bring the bridge-side veth of a node down (cut it off) or up again."""
        port = f"v{self._index(node)}"
        _ip("-n", self.bridge_ns, "link", "set", port, "up" if up else "down")

    def delete_all(self) -> None:
        """Delete this network's namespaces (and stale ones with the prefix); safe to call twice."""
        for name in reversed(self._created):
            _delete_namespace(name)
        self._created.clear()
        clean_stale(self.prefix)

    def _build(self) -> None:
        self._add_namespace(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge_ns, "link", "set", BRIDGE, "up")
        for node in self.nodes:
            self._build_node(node)

    def _build_node(self, node: str) -> None:
        i = self._index(node)
        self._add_namespace(node)
        # DAD would leave fresh IPv6 addresses "tentative" (unusable) for about a second.
        _sysctl(node, "net.ipv6.conf.default.accept_dad", "0")
        port = f"v{i}"
        _ip(
            "-n",
            self.bridge_ns,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            NODE_LINK,
            "netns",
            node,
        )
        _ip("-n", self.bridge_ns, "link", "set", port, "master", BRIDGE, "up")
        _ip("-n", node, "link", "set", "lo", "up", "multicast", "on")
        _ip("-n", node, "addr", "add", f"{self.address(node)}/24", "dev", NODE_LINK)
        if self.ipv6:
            v6 = f"{self.address(node, 6)}/64"
            _ip("-n", node, "addr", "add", v6, "dev", NODE_LINK, "nodad")
        _ip("-n", node, "link", "set", NODE_LINK, "up", "multicast", "on")
        _ip("-n", node, "route", "add", "224.0.0.0/4", "dev", NODE_LINK)

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def _attach(self, node: str, bridge: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", f"v{self._index(node)}", "master", bridge)

    def _index(self, node: str) -> int:
        try:
            return self.nodes.index(node) + 1
        except ValueError:
            raise ValueError(f"{node!r} is not a node of this test network") from None


@contextlib.contextmanager
def network(nodes: int, **kw: Any) -> Iterator[Network]:
    """A Network for the duration of a with-block (skips the test unless namespaces work here)."""
    require_root()
    with Network(nodes, **kw) as net:
        yield net


def clean_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named `<prefix>-<pid>-...` whose pid is no longer running."""
    removed = []
    for name in _namespaces():
        if not name.startswith(prefix + "-"):
            continue
        pid_text = name[len(prefix) + 1 :].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            _delete_namespace(name)
            removed.append(name)
    return removed


@functools.cache
def _namespace_support() -> str:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs root for network namespaces: the `ip` command (iproute2) is missing"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    added = subprocess.run(
        ["ip", "netns", "add", probe], check=False, capture_output=True, text=True
    )
    if added.returncode != 0:
        return f"needs root for network namespaces: `ip netns add` failed: {added.stderr.strip()}"
    _delete_namespace(probe)
    return ""


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", name], check=False, capture_output=True, text=True
    )
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sysctl(node: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    if os.path.exists(path):  # no IPv6 in this kernel: nothing to set
        subprocess.run(
            ["ip", "netns", "exec", node, "sysctl", "-qw", f"{key}={value}"],
            check=True,
            capture_output=True,
        )


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
