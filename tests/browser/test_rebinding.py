"""TESTPLAN W2 [root]: DNS rebinding in a real browser is stopped by the server, not the browser.

`/etc/hosts` maps rebind.test to 127.0.0.1 (restored afterwards). The attacker's page is what
Chromium gets for http://rebind.test:PORT/ (served by Playwright, as the attacker's server would
have served it before the name was rebound); its script then calls the daemon's API on the same
origin - now resolving to 127.0.0.1 - and tries to create an invite. The browser's own
local-network protections are switched off, so only the daemon's Host check stands in the way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_browser import CHROMIUM, sync_api
from tests.e2e.harness import Daemon

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.timeout(120)]

HOSTS = Path("/etc/hosts")
NAME = "rebind.test"
ATTACK = """<!doctype html><html><body><script>
async function attack() {
  const out = {};
  for (const [method, path, body] of [
    ["GET", "/api/v1/albums", null],
    ["GET", "/", null],
    ["POST", "/api/v1/invites", JSON.stringify({album: "ALBUM", role: "editor"})],
  ]) {
    try {
      const r = await fetch(path, {method, body, headers: body ? {"Content-Type": "application/json"} : {}});
      out[method + " " + path] = r.status;
    } catch (e) { out[method + " " + path] = "network error"; }
  }
  document.title = JSON.stringify(out);
}
attack();
</script></body></html>"""


@pytest.fixture
def rebind_name() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("W2 maps a name in /etc/hosts, which needs root")
    original = HOSTS.read_bytes()
    HOSTS.write_bytes(original + f"\n127.0.0.1 {NAME}\n".encode())
    try:
        yield NAME
    finally:
        HOSTS.write_bytes(original)


def test_W2_dns_rebinding_in_the_browser_is_refused(tmp_path: Path, rebind_name: str) -> None:
    daemon = Daemon(home=tmp_path / "device", name="Rebound")
    daemon.init()
    daemon.start()
    try:
        photos = tmp_path / "photos"
        photos.mkdir()
        status, album, _ = daemon.request("POST", "/api/v1/albums", {"path": str(photos)})
        assert status == 201
        port = daemon.ui_url.rsplit(":", 1)[1].rstrip("/")
        before = daemon.request("GET", "/api/v1/invites")[1]
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--no-sandbox",
                    "--disable-features=PrivateNetworkAccessChecks,"
                    "PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks",
                ],
            )
            try:
                page = browser.new_page()
                origin = f"http://{rebind_name}:{port}"

                def attacker_page(route: Any) -> None:
                    html = ATTACK.replace("ALBUM", album["album_id"])
                    route.fulfill(status=200, content_type="text/html", body=html)

                page.route(f"{origin}/attack", attacker_page)
                page.goto(f"{origin}/attack")
                page.wait_for_function("document.title.startsWith('{')", timeout=20_000)
                results = json.loads(page.title())
            finally:
                browser.close()
        print(f"\nrebinding attempts from {origin}: {results}")
        assert results, "the attack page did not run"
        # Every request reached the daemon (no network error: the name resolved to it) and was
        # refused by the Host check.
        assert set(results.values()) == {403}, results
        assert daemon.request("GET", "/api/v1/invites")[1] == before
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log()
