"""The rendered site in headless Chromium: every page loads with no broken image, no console
error and no failed request (a missing favicon counts), and the per-model view is screenshotted.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it) and the
``playwright`` Python package; Playwright's own browser download is not used.

Environment:
    GALLERYVIS_SCREENSHOT: also save the top of the landing page to this path (for the README).
    GALLERYVIS_BROWSER_SITE: check this already built site instead of the hand-built one.
"""
from __future__ import annotations

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from galleryvis.render.records import Gallery
from galleryvis.render import render_site

from gallery_fixture import make_gallery

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is missing")

# Makes every lazy image load, waits for all of them, and returns the broken ones.
BROKEN_IMAGES = """async () => {
  const imgs = Array.from(document.images);
  const waits = imgs.map((img) => {
    img.loading = "eager";
    if (img.complete) return null;
    return new Promise((done) => {
      img.addEventListener("load", done, { once: true });
      img.addEventListener("error", done, { once: true });
      setTimeout(done, 10000);
    });
  });
  await Promise.all(waits);
  return imgs.filter((img) => !(img.complete && img.naturalWidth > 0))
             .map((img) => img.getAttribute("src"));
}"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("GALLERYVIS_BROWSER_SITE")
    if given:
        return Path(given).resolve()
    root = tmp_path_factory.mktemp("browser-site")
    render_site(_with_random_weights(make_gallery(root)), root)
    return root


def _with_random_weights(gallery: Gallery) -> Gallery:
    """``gallery`` with its last model built with random weights, so every page's checks cover
    the "random weights" marks beside a trained model's columns."""
    return replace(gallery, models=[replace(m, random_weights=m is gallery.models[-1]) for m in gallery.models])


@pytest.fixture(scope="module")
def base_url(site_root: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site_root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _pages(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.html"))


def _model_page(root: Path) -> str:
    """The first model page of the site under test (the fixture's: model-alexnet.html)."""
    return next(n for n in _pages(root) if n.startswith("model-"))


def _open(browser: Any, url: str) -> tuple[Any, Any, list[str]]:
    """A new page at ``url`` with every console error, failed request and HTTP error recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    return context, page, problems


def _reveal(link: Any) -> Any:
    """``link`` (an ``a.pic``) scrolled into view with its lazily loaded thumbnail in place (the
    fixture's pictures declare no size, so an unloaded one is 0 px high and cannot be clicked)."""
    link.evaluate("a => a.scrollIntoView({block: 'center'})")
    link.locator("img").evaluate("i => i.complete ? true : new Promise(done => { i.onload = i.onerror = done; })")
    return link


def test_site_has_pages(site_root: Path):
    names = _pages(site_root)
    assert "index.html" in names and any(n.startswith("model-") for n in names)


def test_every_page_loads_cleanly(browser: Any, base_url: str, site_root: Path):
    failures: dict[str, list[str]] = {}
    for name in _pages(site_root):
        context, page, problems = _open(browser, base_url + name)
        try:
            broken = page.evaluate(BROKEN_IMAGES)
            problems += [f"broken image: {src}" for src in broken]
            status = page.evaluate(
                "async () => (await fetch(document.querySelector('link[rel=icon]').href)).status")
            if status != 200:
                problems.append(f"favicon: HTTP {status}")
            page.wait_for_load_state("networkidle")
            if page.evaluate("document.images.length") == 0 and name not in ("techniques.html", "build.html"):
                problems.append("no images on the page")
        finally:
            context.close()
        if problems:
            failures[name] = problems
    assert not failures


def test_screenshot_of_the_landing_page(browser: Any, base_url: str, site_root: Path, tmp_path: Path):
    context, page, problems = _open(browser, base_url + "index.html")  # the results at a glance
    try:
        page.evaluate(BROKEN_IMAGES)
        shot = tmp_path / "screenshot-model.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        target = os.environ.get("GALLERYVIS_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            # The top of the page (the headline results), small enough for a README.
            page.screenshot(path=target, full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 1400})
    finally:
        context.close()
    assert not problems


# -- the viewer, phones, accessibility -------------------------------------------------------
def test_the_viewer_opens_reads_values_moves_and_closes(browser: Any, base_url: str, site_root: Path):
    if os.environ.get("GALLERYVIS_BROWSER_SITE"):
        pytest.skip("reads the values of the hand-built site's maps (a left-to-right ramp)")
    context, page, problems = _open(browser, base_url + "model-alexnet.html")
    try:
        link = _reveal(page.locator("a.pic[data-values]").first)
        link.click()
        dialog = page.locator("dialog.viewer")
        assert dialog.evaluate("d => d.open")
        title = page.locator(".viewer-title").inner_text()
        assert "Grad-CAM" in title
        # Opacity and swipe change the map layer.
        page.locator(".viewer-opacity").fill("25")
        assert page.locator(".viewer-map").evaluate("m => m.style.opacity") == "0.25"
        page.locator(".viewer-swipe").fill("40")
        assert "60%" in page.locator(".viewer-clip").evaluate("c => c.style.clipPath")
        # The value under the pointer: the fixture's map is a left-to-right ramp from 0 to 1.
        page.wait_for_function("() => !document.querySelector('.viewer-npy').hidden")
        box = page.locator(".viewer-stage").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.02, box["y"] + box["height"] / 2)
        low = page.locator(".viewer-value").inner_text()
        page.mouse.move(box["x"] + box["width"] * 0.98, box["y"] + box["height"] / 2)
        high = page.locator(".viewer-value").inner_text()
        assert low.startswith("map value 0.000") and high.startswith("map value 1.000"), (low, high)
        assert page.locator(".viewer-npy").get_attribute("href").startswith("blob:")
        with page.expect_download() as png:
            page.locator(".viewer-png").click()
        assert png.value.suggested_filename.endswith(".png")
        with page.expect_download() as npy:
            page.locator(".viewer-npy").click()
        data = Path(npy.value.path()).read_bytes()
        assert data.startswith(b"\x93NUMPY") and len(data) == 128 + 16 * 16 * 4  # float32, 16 x 16
        # Arrow keys move between cells; Escape closes and gives focus back.
        page.locator(".viewer-close").focus()
        page.keyboard.press("ArrowRight")
        assert page.locator(".viewer-title").inner_text() != title
        page.keyboard.press("ArrowLeft")
        assert page.locator(".viewer-title").inner_text() == title
        page.keyboard.press("Escape")
        assert not dialog.evaluate("d => d.open")
        assert page.evaluate("document.activeElement.matches('a.pic')")
    finally:
        context.close()
    assert not [p for p in problems if "ERR_ABORTED" not in p]  # moving on cancels a picture's load


def test_a_picture_made_from_no_image_is_shown_whole_without_sliders(browser: Any, base_url: str,
                                                                    site_root: Path):
    """A cell with ``data-image=""`` and no values (a class visualization with its own class):
    no base image, no opacity or swipe slider, the picture at full opacity and unclipped, and no
    map download; the next cell with an image gets its sliders back, at their values."""
    context, page, problems = _open(browser, base_url + _model_page(site_root))
    try:
        first = page.locator("a.pic[data-image]").first
        first.evaluate("a => { a.setAttribute('data-image', ''); a.removeAttribute('data-values'); }")
        _reveal(page.locator("a.pic[data-image]").nth(1)).click()
        page.locator(".viewer-opacity").fill("30")
        page.locator(".viewer-close").focus()  # arrow keys on a slider move the slider
        page.keyboard.press("ArrowLeft")  # onto the picture made from no image
        assert not page.locator(".viewer-opacity").is_visible() and not page.locator(".viewer-swipe").is_visible()
        assert page.locator(".viewer-base").evaluate("b => b.hidden")
        assert page.locator(".viewer-map").evaluate("m => m.style.opacity") == "1"
        assert page.locator(".viewer-clip").evaluate("c => c.style.clipPath") == "none"
        assert not page.locator(".viewer-npy").is_visible()
        assert page.locator(".viewer-value").inner_text() == "A picture: no values to read"
        page.keyboard.press("ArrowRight")
        assert page.locator(".viewer-opacity").is_visible()
        assert page.locator(".viewer-map").evaluate("m => m.style.opacity") == "0.3"
    finally:
        context.close()
    assert not [p for p in problems if "ERR_ABORTED" not in p]


def test_the_viewer_works_by_keyboard_alone(browser: Any, base_url: str, site_root: Path):
    context, page, problems = _open(browser, base_url + _model_page(site_root))
    try:
        page.locator("a.pic[data-image]").first.focus()
        page.keyboard.press("Enter")
        assert page.locator("dialog.viewer").evaluate("d => d.open")
        page.keyboard.press("Escape")
        assert not page.locator("dialog.viewer").evaluate("d => d.open")
    finally:
        context.close()
    assert not problems


def test_the_row_filter_hides_other_rows(browser: Any, base_url: str, site_root: Path):
    context, page, problems = _open(browser, base_url + _model_page(site_root))
    try:
        page.locator("input.row-filter").fill("grad-cam")
        shown = page.evaluate("Array.from(document.querySelectorAll('table.grid tbody tr'))"
                              ".filter(r => !r.hidden).map(r => r.querySelector('th').textContent)")
        assert shown and all("Grad-CAM" in s for s in shown)
    finally:
        context.close()
    assert not problems


def test_a_metrics_header_sorts_the_techniques_best_first_then_reversed(browser: Any, base_url: str,
                                                                         site_root: Path):
    context, page, problems = _open(browser, base_url + _model_page(site_root))
    try:
        table = page.locator("table#metrics-table")
        read = ("t => Array.from(t.tBodies[0].rows).map(r => [r.querySelector('th').textContent, "
                "r.cells[{i}].dataset.value === undefined ? null : parseFloat(r.cells[{i}].dataset.value)])")
        heads = table.locator("thead th[data-better]")
        assert heads.count() >= 2
        for i in range(heads.count()):
            higher = heads.nth(i).get_attribute("data-better") == "higher"
            before = table.evaluate(read.format(i=i + 1))
            heads.nth(i).locator("button.sort").click()
            first = table.evaluate(read.format(i=i + 1))
            values = [v for _, v in first if v is not None]
            assert values == sorted(values, reverse=higher), (i, first)
            assert [v for _, v in first[len(values):]] == [None] * (len(first) - len(values))  # dashes last
            assert heads.nth(i).get_attribute("aria-sort") == ("descending" if higher else "ascending")
            heads.nth(i).locator("button.sort").click()
            again = [v for _, v in table.evaluate(read.format(i=i + 1)) if v is not None]
            assert again == sorted(values, reverse=not higher)
            assert sorted(map(tuple, before)) == sorted(map(tuple, first))  # the same rows, reordered
    finally:
        context.close()
    assert not problems


def test_no_page_scrolls_sideways_on_a_phone(browser: Any, base_url: str, site_root: Path):
    wide = {}
    for name in _pages(site_root):
        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        page = context.new_page()
        page.goto(base_url + name, wait_until="load")
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > 390:
            wide[name] = width
        context.close()
    assert not wide


@pytest.mark.parametrize("width", [1400, 390])
def test_random_weights_marks_are_visible_beside_the_random_models_classes(browser: Any, base_url: str,
                                                                           site_root: Path, width: int):
    """On a desktop and on a phone, each "random weights" mark is drawn (not hidden, not zero-sized)
    as words inside its table's box, and the landing page says it above the fold."""
    if os.environ.get("GALLERYVIS_BROWSER_SITE"):
        pytest.skip("the hand-built site has a model with random weights; a given site may have none")
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        for name in ("index.html", "compare.html", "compare-cat.html"):
            page.goto(base_url + name, wait_until="load")
            marks = page.locator(".random-weights")
            assert marks.count() > 0, name
            for i in range(marks.count()):
                mark = marks.nth(i)
                assert mark.inner_text() == "random weights" and mark.is_visible(), (name, i)
                box = mark.bounding_box()
                assert box is not None and box["width"] > 40 and box["height"] > 8, (name, i, box)
        page.goto(base_url + "index.html", wait_until="load")
        note = page.locator(".random-note").bounding_box()
        assert note is not None and note["y"] + note["height"] <= 900 and note["x"] + note["width"] <= width
    finally:
        context.close()


def test_axe_finds_no_serious_violation_on_any_kind_of_page(browser: Any, base_url: str, site_root: Path):
    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    kinds: dict[str, str] = {}
    for name in _pages(site_root):
        kinds.setdefault(name.split("-")[0] if "-" in name else name, name)  # compare.html apart from compare-*.html
    found = {}
    for name in kinds.values():
        context, page, _ = _open(browser, base_url + name)
        try:
            results = axe_module.Axe().run(page)
            bad = [f"{v['id']}: {v['help']}" for v in results.response["violations"]
                   if v.get("impact") in ("serious", "critical")]
            if bad:
                found[name] = bad
        finally:
            context.close()
    assert not found
