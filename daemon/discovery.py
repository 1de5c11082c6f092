"""LAN discovery over mDNS/DNS-SD (python-zeroconf): announce this device, report the others seen.

What we announce, and nothing more (Syncthing's local discovery leaked less than it could; we leak
less still): service type `_albumsync._tcp.local.`, instance and SRV target named after the first
two groups of the device ID (never the host name), TXT exactly {"id": device ID, "v": protocol
version}, the SRV port, and A/AAAA records for this host's addresses (loopback only when nothing
else is up; IPv6 link-local addresses are left out because they mean nothing without a scope).

What we believe: nothing. Anyone on the LAN can announce anything, so an announcement is only a
*candidate address* for the device ID it names. The Noise handshake proves who is at an address
(DESIGN §4), and the connection manager keeps the addresses it has verified: discovery never
replaces or removes a verified address, it only offers more to try. A record that names another
device's ID at an attacker's address therefore costs one failed handshake, not a hijack.

Bounds (TESTPLAN N5): at most `max_services` announcements are tracked (plus those being resolved);
beyond that new ones are ignored, with one log line per minute, so a flood cannot grow our memory
(zeroconf's own record cache still holds what it hears, until the records expire). During such a
flood a device that is new to us can go unseen; devices we already know keep their addresses.
Announcements with a malformed TXT record, device ID, port or address list are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from daemon.errors import DaemonError
from protocol.errors import ProtocolError
from protocol.ids import DeviceId

SERVICE_TYPE = "_albumsync._tcp.local."
PROTOCOL_VERSION = "1"
MAX_SERVICES = 256  # announcements tracked at once; a LAN with more albumsync devices is unusual
MAX_ADDRESSES = 16  # addresses kept per announcement; more is a flood, not a host
MAX_TXT_BYTES = 512  # ours is about 75 bytes
MAX_CONCURRENT_RESOLVES = 16
RESOLVE_TIMEOUT_MS = 3_000
OVERFLOW_LOG_INTERVAL = 60.0  # seconds between "ignoring new services" log lines

Address = tuple[str, int]
# As zeroconf's InterfacesType (not exported): addresses, IPv6 interface indexes, or a choice.
InterfaceList = Sequence[str | int | tuple[tuple[str, int, int], int]]
Interfaces = InterfaceList | InterfaceChoice
OnSeen = Callable[[str, list[Address]], None]

_log = logging.getLogger(__name__)
_DEVICE_ID_SHAPE = re.compile(r"[A-Z2-7]{7}(?:-[A-Z2-7]{7}){7}")
_VERSION_SHAPE = re.compile(r"[0-9]{1,3}")


class NearbyDevice(NamedTuple):
    """A device ID announced on the LAN: candidate addresses (newest first) and unix time seen."""

    device_id: str
    addresses: tuple[Address, ...]
    last_seen: float


@dataclass(frozen=True)
class Candidate:
    """What one well-formed announcement claims: a device ID at some addresses (unverified)."""

    device_id: str
    addresses: tuple[Address, ...]


class Discovery:
    """Announces this device on the LAN and calls on_seen(device_id, addresses) for every other.

    on_seen runs in the event loop for each resolved announcement (again when it changes); the
    addresses are candidates to dial, never proof of identity (see the module docstring).
    """

    def __init__(
        self,
        device_id: str,
        port: int,
        on_seen: OnSeen,
        interfaces: Interfaces = InterfaceChoice.All,
        *,
        ip_version: IPVersion | None = None,
        max_services: int = MAX_SERVICES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not is_device_id(device_id):
            raise ValueError(f"not a device ID in its printed form: {device_id!r}")
        if not 0 < port < 65536:
            raise ValueError(f"a TCP port is 1-65535, not {port}")
        self.device_id = device_id
        self.port = port
        self._on_seen = on_seen
        self._interfaces = interfaces
        self._ip_version = ip_version or _default_ip_version(interfaces)
        self._max_services = max_services
        self._clock = clock
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._services: dict[str, NearbyDevice] = {}  # by lower-case service name
        self._resolving: set[str] = set()
        self._stale: set[str] = set()  # changed again while being resolved
        self._dropped: set[str] = set()  # removed while being resolved
        self._tasks: set[asyncio.Future[object]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_RESOLVES)
        self._ignored = 0
        self._last_overflow_log = -OVERFLOW_LOG_INTERVAL

    @property
    def tracked_services(self) -> int:
        """Announcements tracked or being resolved; never more than max_services."""
        return len(self._services) + len(self._resolving - self._services.keys())

    @property
    def ignored_services(self) -> int:
        """How many announcements were ignored because max_services were already tracked."""
        return self._ignored

    @property
    def instance_name(self) -> str:
        """The DNS-SD instance name in use (zeroconf appends -2, -3... if the name was taken)."""
        if self._info is None:
            return instance_name(self.device_id)
        return self._info.name.removesuffix("." + SERVICE_TYPE)

    async def start(self) -> None:
        """Start browsing, then announce this device (returns once the name is probed, ~1 s)."""
        if self._zc is not None:
            raise RuntimeError("discovery is already running")
        addresses = local_addresses(self._interfaces, self._ip_version)
        _quiet_network_tracebacks()
        try:
            self._zc = AsyncZeroconf(interfaces=self._interfaces, ip_version=self._ip_version)
        except OSError as exc:
            raise DaemonError(
                f"LAN discovery (mDNS) could not start: {exc}. Check that a network interface "
                "with multicast is up, or turn LAN discovery off (--no-mdns)"
            ) from exc
        try:
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
            )
            self._info = self._service_info(addresses)
            announcing = await self._zc.async_register_service(self._info, allow_name_change=True)
            self._keep(asyncio.ensure_future(announcing))
        except BaseException:
            await self.stop()
            raise
        _log.info("announcing %s on the LAN at %s", self.instance_name, ", ".join(addresses))

    async def stop(self) -> None:
        """Say goodbye on the LAN (so peers drop us at once) and close; safe to call twice."""
        zc = self._zc
        if zc is None:
            return
        if self._browser is not None:
            browser, self._browser = self._browser, None
            await browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._zc = None
        await zc.async_close()  # unregisters every service first: goodbye packets with TTL 0
        for state in (self._services, self._resolving, self._stale, self._dropped):
            state.clear()

    async def refresh_addresses(self) -> None:
        """Re-read this host's interfaces and re-announce if our addresses changed."""
        if self._zc is None or self._info is None:
            return
        try:
            if isinstance(self._interfaces, InterfaceChoice):
                await self._zc.async_update_interfaces()
            addresses = local_addresses(self._interfaces, self._ip_version)
            if sorted(addresses) != sorted(self._info.parsed_addresses()):
                self._info.addresses = [_pack(address) for address in addresses]
                self._keep(asyncio.ensure_future(await self._zc.async_update_service(self._info)))
        except OSError as exc:
            _log.warning("could not re-read the network interfaces for LAN discovery: %s", exc)

    def nearby(self) -> list[NearbyDevice]:
        """Devices announced on the LAN now, by device ID, for the UI's "nearby devices"."""
        merged: dict[str, tuple[list[Address], float]] = {}
        for seen in sorted(self._services.values(), key=lambda s: s.last_seen, reverse=True):
            addresses, _ = merged.setdefault(seen.device_id, ([], seen.last_seen))
            addresses += [a for a in seen.addresses if a not in addresses]
        return sorted(NearbyDevice(d, tuple(a), t) for d, (a, t) in merged.items())

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._services.pop(key, None)
            if key in self._resolving:
                self._dropped.add(key)
                self._stale.discard(key)
            return
        if key in self._resolving:
            self._stale.add(key)
            self._dropped.discard(key)
            return
        if key not in self._services and self.tracked_services >= self._max_services:
            self._overflow()
            return
        self._resolving.add(key)
        self._keep(asyncio.ensure_future(self._resolve(name, key)))

    async def _resolve(self, name: str, key: str) -> None:
        try:
            while True:
                self._stale.discard(key)
                resolved, candidate = await self._lookup(name)
                if key not in self._stale:
                    break
        finally:
            self._resolving.discard(key)
            self._stale.discard(key)
        if key in self._dropped:
            self._dropped.discard(key)
        elif resolved:
            self._record(key, candidate)

    async def _lookup(self, name: str) -> tuple[bool, Candidate | None]:
        """(answered in time, the candidate if well-formed)."""
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
        except BadTypeInNameException:
            return True, None
        async with self._slots:
            if self._zc is None:  # stopping
                return False, None
            if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return False, None
        return True, read_candidate(info)

    def _record(self, key: str, candidate: Candidate | None) -> None:
        if candidate is None or candidate.device_id == self.device_id:
            if candidate is None:
                _log.debug("ignoring malformed mDNS announcement %r", key)
            self._services.pop(key, None)
            return
        before = self._services.get(key)
        self._services[key] = NearbyDevice(candidate.device_id, candidate.addresses, self._clock())
        if before is not None and before[:2] == (candidate.device_id, candidate.addresses):
            return  # nothing new to dial
        try:
            self._on_seen(candidate.device_id, list(candidate.addresses))
        except Exception:
            _log.exception("handling a device seen on the LAN failed")

    def _overflow(self) -> None:
        self._ignored += 1
        now = time.monotonic()
        if now - self._last_overflow_log >= OVERFLOW_LOG_INTERVAL:
            self._last_overflow_log = now
            _log.warning(
                "ignoring new devices announced on the LAN: already tracking %d, the limit "
                "(%d ignored so far). Someone may be flooding the network with mDNS records",
                self._max_services,
                self._ignored,
            )

    def _service_info(self, addresses: list[str]) -> ServiceInfo:
        instance = instance_name(self.device_id)
        if not addresses:
            _log.warning("no network address to announce on the LAN; peers will not find us")
        return ServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=self.port,
            properties={b"id": self.device_id.encode(), b"v": PROTOCOL_VERSION.encode()},
            server=f"{instance}.local.",
            parsed_addresses=addresses,
        )

    def _keep(self, task: asyncio.Future[object]) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def instance_name(device_id: str) -> str:
    """The DNS-SD instance name for a device: its ID's first two groups (70 bits, no host name)."""
    return "-".join(device_id.split("-")[:2])


def is_device_id(text: str) -> bool:
    """True for a device ID exactly as printed (8 groups of 7, check characters right)."""
    if len(text) != 63 or not _DEVICE_ID_SHAPE.fullmatch(text):
        return False
    try:
        return str(DeviceId.parse(text)) == text
    except ProtocolError:
        return False


def read_candidate(info: ServiceInfo) -> Candidate | None:
    """The claim a resolved announcement makes, or None if any part of it is malformed."""
    txt = _txt_pairs(info.text or b"")
    if txt is None:
        return None
    device_id = txt.get(b"id", b"").decode("ascii", "replace")
    version = txt.get(b"v", b"").decode("ascii", "replace")
    port = info.port
    if not is_device_id(device_id) or not _VERSION_SHAPE.fullmatch(version):
        return None
    if port is None or not 0 < port < 65536:
        return None
    hosts = [str(ip) for ip in info.ip_addresses_by_version(IPVersion.All) if _dialable(ip)]
    if not hosts:
        return None
    return Candidate(device_id, tuple((host, port) for host in hosts[:MAX_ADDRESSES]))


def local_addresses(interfaces: Interfaces, ip_version: IPVersion) -> list[str]:
    """This host's addresses to announce: the given ones, or every interface's but loopback."""
    if isinstance(interfaces, InterfaceChoice):
        found = [
            ip
            for adapter in ifaddr.get_adapters()
            for ip in _adapter_ips(adapter)
            if not ip.is_link_local or ip.version == 4
        ]
    else:
        found = _listed_ips(interfaces)
    wanted = {IPVersion.V4Only: {4}, IPVersion.V6Only: {6}, IPVersion.All: {4, 6}}[ip_version]
    found = [ip for ip in dict.fromkeys(found) if ip.version in wanted]
    outside = [ip for ip in found if not ip.is_loopback]
    return [str(ip) for ip in (outside or found)]


def _txt_pairs(text: bytes) -> dict[bytes, bytes] | None:
    """TXT strings as {lower-case key: value}; None if truncated, too long or a key repeats."""
    if len(text) > MAX_TXT_BYTES:
        return None
    pairs: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(text):
        length = text[pos]
        item = text[pos + 1 : pos + 1 + length]
        pos += 1 + length
        if len(item) != length:
            return None
        key, sep, value = item.partition(b"=")
        key = key.lower()
        if key in pairs:
            return None
        if key:  # RFC 6763 6.4: a string with no key is ignored
            pairs[key] = value if sep else b""
    return pairs


def _dialable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255")


def _adapter_ips(adapter: ifaddr.Adapter) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for entry in adapter.ips:
        text = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
        ips.append(ipaddress.ip_address(text))
    return ips


def _listed_ips(
    interfaces: InterfaceList,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    adapters = {adapter.index: adapter for adapter in ifaddr.get_adapters()}
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for item in interfaces:
        if isinstance(item, int):  # an IPv6 interface index
            adapter = adapters.get(item)
            ips += [ip for ip in _adapter_ips(adapter) if ip.version == 6] if adapter else []
        else:
            text = item if isinstance(item, str) else item[0][0]
            ips.append(ipaddress.ip_address(text.split("%", 1)[0]))
    return [ip for ip in ips if not (ip.version == 6 and ip.is_link_local)]


def _default_ip_version(interfaces: Interfaces) -> IPVersion:
    if not isinstance(interfaces, InterfaceChoice):
        versions = {ip.version for ip in _listed_ips(interfaces)}
        return {frozenset({4}): IPVersion.V4Only, frozenset({6}): IPVersion.V6Only}.get(
            frozenset(versions), IPVersion.All
        )
    # Linux without IPv6 (ipv6.disable=1) has no if_inet6; zeroconf would fail to bind there.
    has_ipv6 = socket.has_ipv6 and (sys.platform != "linux" or os.path.exists("/proc/net/if_inet6"))
    return IPVersion.All if has_ipv6 else IPVersion.V4Only


def _pack(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


class _NetworkErrorsWithoutTraceback(logging.Filter):
    """zeroconf logs an unusable multicast socket (e.g. no IPv6 route on a host) with a stack
    trace; the one-line warning is what a person needs, and a traceback reads like a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            record.exc_info = None
            record.exc_text = None
        return True


_QUIET = _NetworkErrorsWithoutTraceback()


def _quiet_network_tracebacks() -> None:
    logger = logging.getLogger("zeroconf")  # zeroconf._logger logs every warning on this one
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)
