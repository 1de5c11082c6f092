"""The web UI in a real browser (Debian's chromium via Playwright) against real daemons.

Two `albumsync run` processes (tests/e2e/harness.py): the owner makes an album and an invite code
in its browser, the invitee joins with it in its own browser, photos appear in both grids, a role
change and a removal take effect, and a viewer sees no owner controls. Screenshots of each page go
to docs/screenshots/ (1280x800) for the README. A 10,000-photo album measures first paint.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.e2e.harness import Daemon

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 30_000

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium; ./dev test does it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def photo(seed: int, size: tuple[int, int] = (1200, 800)) -> bytes:
    """A JPEG with a colourful gradient and shapes, so thumbnails look like photos."""
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    hue = (seed * 47) % 255
    for y in range(0, size[1], 8):
        shade = int(255 * y / size[1])
        draw.rectangle(
            [0, y, size[0], y + 8], fill=((hue + shade) % 255, 120 + shade // 3, 255 - shade)
        )
    draw.ellipse(
        [size[0] // 3, size[1] // 4, size[0] // 3 + 300, size[1] // 4 + 300], fill=(255, 220, 120)
    )
    draw.rectangle([0, size[1] * 2 // 3, size[0], size[1]], fill=(40 + seed * 20 % 100, 90, 60))
    out = io.BytesIO()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = f"2026:07:{1 + seed % 28:02d} 10:{seed % 60:02d}:00"
    img.save(out, "JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    started: list[Daemon] = []

    def make(name: str) -> Daemon:
        # Data dirs apart from the album folders (tmp_path / "Bob" / "Summer" is one).
        daemon = Daemon(home=tmp_path / "data" / name.split("'", maxsplit=1)[0], name=name)
        daemon.init()
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def new_page(browser: Any, daemon: Daemon) -> Any:
    context = browser.new_context(viewport=VIEWPORT, base_url=daemon.ui_url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("dialog", lambda dialog: dialog.accept())
    return page


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def wait_tiles(page: Any, count: int) -> None:
    """Until the grid shows `count` tiles whose thumbnails have loaded (the page polls every 2 s)."""
    page.wait_for_function(
        "n => document.querySelectorAll('#grid .tile.loaded').length === n", arg=count
    )


def test_owner_invites_member_joins_and_roles_apply(
    daemons: Callable[[str], Daemon], browser: Any, tmp_path: Path
) -> None:
    ana, bob = daemons("Ana's laptop"), daemons("Bob's desktop")
    ana_folder, bob_folder = tmp_path / "Summer 2026", tmp_path / "Bob" / "Summer"
    ana_folder.mkdir()
    bob_folder.mkdir(parents=True)
    for index in range(5):
        (ana_folder / f"IMG_{index:04d}.jpg").write_bytes(photo(index))

    # The owner makes the album from a folder and an invite code, in its browser.
    owner = new_page(browser, ana)
    owner.goto("/")
    shoot(owner, "albums-empty")
    owner.get_by_role("button", name="New album").click()
    owner.fill("#create-dialog input[name=path]", str(ana_folder))
    owner.get_by_role("button", name="Create album").click()
    owner.wait_for_url("**/albums/*")
    wait_tiles(owner, 5)
    owner.get_by_role("button", name="Invite").click()
    owner.check("#invite-dialog input[value=editor]")
    owner.fill("#invite-dialog textarea[name=message]", "Add yours from the lake!")
    owner.get_by_role("button", name="Create invite").click()
    owner.locator("#invite-dialog [data-code]").wait_for(state="visible")
    code = owner.locator("#invite-code").inner_text()
    assert code.startswith("albumsync:")
    shoot(owner, "invite")

    # The invitee joins with the code into a folder of its choice.
    member = new_page(browser, bob)
    member.goto("/")
    member.get_by_role("button", name="Join with a code").click()
    member.fill("#code-dialog input[name=code]", code)
    member.fill("#code-dialog input[name=path]", str(bob_folder))
    member.get_by_role("button", name="Join", exact=True).click()
    member.wait_for_url(ana.ui_url.rsplit(":", 1)[0] + "*/")
    card = member.locator("#shared .album-card", has_text="Summer 2026")
    _until(lambda: _reloaded(member) and card.count() == 1)
    card.click()
    wait_tiles(member, 5)
    assert member.locator("#invite-dialog").count() == 0
    assert member.locator("#leave-dialog").count() == 1
    assert "Ana's laptop" in member.locator(".tile-by").first.inner_text()

    # A photo added on the owner's side appears in the member's grid, live.
    (ana_folder / "IMG_0100.jpg").write_bytes(photo(100))
    wait_tiles(member, 6)
    member.locator(".tile-open").first.click()
    member.wait_for_function("() => document.getElementById('viewer-img').src.startsWith('blob:')")
    member.keyboard.press("Escape")

    # The owner makes the member a viewer: the member's page shows no controls it may not use.
    _reload(owner)
    wait_tiles(owner, 6)
    owner.locator("#members li[data-status=active] select").select_option("viewer")
    owner.wait_for_load_state()
    _until(lambda: "viewer" in bob.request("GET", "/api/v1/albums")[1][0]["role"])
    _reload(member)
    assert member.locator(".album-head .badge.role-viewer").count() == 1
    for control in ("#invite-dialog", "#rename-dialog", "#remove-dialog", "#viewer-cover"):
        assert member.locator(control).count() == 0
    assert member.locator("select[data-api]").count() == 0
    shoot(member, "album-viewer")

    # Screenshots of the owner's pages for the README.
    _reload(owner)
    wait_tiles(owner, 6)
    owner.locator("#members").scroll_into_view_if_needed()
    owner.evaluate("window.scrollTo(0, 0)")
    shoot(owner, "album")
    owner.goto("/")
    owner.wait_for_function("() => document.querySelectorAll('.cover.loaded').length > 0")
    shoot(owner, "albums")
    owner.goto("/devices")
    shoot(owner, "devices")
    owner.goto("/activity")
    shoot(owner, "activity")

    # The owner removes the member: its album shows removed.
    owner.goto(f"/albums/{_album_id(ana)}")
    owner.locator("#members li[data-status=active] button", has_text="Remove").click()
    owner.get_by_role("button", name="Remove", exact=True).last.click()
    owner.wait_for_load_state()
    _until(lambda: bob.request("GET", "/api/v1/albums")[1][0]["state"] == "removed")
    _reload(member)
    assert member.locator("#leave-dialog").count() == 0
    assert "removed" in member.locator(".album-head").inner_text().lower()


def test_first_paint_of_a_10000_photo_album(
    daemons: Callable[[str], Daemon], browser: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "Ten thousand"
    folder.mkdir()
    for index in range(10_000):
        (folder / f"f{index:05d}.txt").write_bytes(b"%d" % index)
    ana = daemons("Ana's laptop")
    status, album, _ = ana.request("POST", "/api/v1/albums", {"path": str(folder)})
    assert status == 201, album
    started = time.monotonic()
    _until(
        lambda: ana.request("GET", f"/api/v1/albums/{album['album_id']}")[1]["files"] == 10_000, 150
    )
    print(f"published 10,000 files in {time.monotonic() - started:.1f} s")
    page = new_page(browser, ana)
    # The first view builds the grid order; reloads use the cached order (daemon/reports.py).
    paints = [_paint(page, f"/albums/{album['album_id']}") for _ in range(3)]
    tiles = page.locator("#grid .tile").count()
    for label, (paint, server) in zip(("first view", "reload", "reload"), paints, strict=True):
        print(
            f"10,000-photo album, {label}: first contentful paint {paint:.0f} ms "
            f"(server answered in {server:.0f} ms)"
        )
    print(f"{tiles} tiles in the first view")
    assert tiles > 0
    assert max(paint for paint, _ in paints) < 3000
    page.locator("#grid-more").scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelectorAll('#grid .tile').length > 120")


def _paint(page: Any, path: str) -> tuple[float, float]:
    """(first contentful paint, time from request to the first byte of the page) in ms."""
    page.goto(path)
    page.wait_for_function(
        "() => performance.getEntriesByName('first-contentful-paint').length > 0"
    )
    paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
    server = page.evaluate(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.responseStart - n.requestStart; })()"
    )
    return float(paint), float(server)


def _album_id(daemon: Daemon) -> str:
    return str(daemon.request("GET", "/api/v1/albums")[1][0]["album_id"])


def _reload(page: Any) -> None:
    """Reload, again if the page's own script navigated at that moment (it reloads after actions
    and when the album's state changes), which aborts ours with ERR_ABORTED."""
    for _ in range(3):
        try:
            page.reload()
            return
        except sync_api.Error:
            page.wait_for_load_state()
    page.reload()


def _reloaded(page: Any) -> bool:
    """Reload; False when the page was navigating by itself (our JS reloads after an action)."""
    try:
        page.reload()
    except sync_api.Error:
        return False
    return True


def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (IndexError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true in time")
        time.sleep(0.5)


def teardown_module() -> None:
    shutil.rmtree(Path("/tmp/unused-albumsync"), ignore_errors=True)
