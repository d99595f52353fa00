"""A generated report.html in a real, headless Chromium: the maths renders (every <math> has a
box) and nothing is fetched from the network. Under CI=true a missing Chromium fails the test."""

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,2400"]

#: schemes the browser serves from itself (its own UI pages), never from the network
INTERNAL = ("chrome://", "chrome-untrusted://", "devtools://")


def _find(*names):
    for name in names:
        path = shutil.which(name) or (name if os.path.isfile(name) else None)
        if path:
            return path
    return None


def _require(reason: str):
    """Fail under CI=true (the browser check must run there), skip locally."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def _browser():
    """``(chromium, chromedriver)`` paths, or fail (CI) / skip (locally) with the reason."""
    chromium = _find("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
    driver = _find("/usr/bin/chromedriver", "chromedriver")
    missing = [what for what, path in (("chromium", chromium), ("chromedriver (chromium-driver)", driver))
               if path is None]
    if missing:
        _require(f"{' and '.join(missing)} not found; install with "
                 "'apt-get install -y chromium chromium-driver' (.ci/run does)")
    return chromium, driver


@pytest.fixture
def chrome(tmp_path):
    chromium, driver_path = _browser()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require("selenium is not installed (pip install -e '.[dev]')")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver) -> list[str]:
    """Every URL requested since the last call, but those of the browser's own pages (its new-tab
    page loads chrome:// and chrome-untrusted:// resources from inside the browser, in parallel)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            if not any(u.startswith(INTERNAL) for u in (params.get("documentURL", ""), params["request"]["url"])):
                urls.append(params["request"]["url"])
    return urls


def test_report_renders_offline_in_chromium(small_report, chrome, tmp_path):
    page = Path(small_report.html).resolve()
    _requested_urls(chrome)  # drain what the browser did before our page
    chrome.get(page.as_uri())
    assert chrome.execute_script("return document.readyState") == "complete"

    boxes = chrome.execute_script(
        "return Array.from(document.querySelectorAll('math')).map(m => {"
        "const r = m.getBoundingClientRect(); return [r.width, r.height, m.textContent.slice(0, 40)]; });")
    assert len(boxes) > 10
    empty = [text for w, h, text in boxes if not (w > 0 and h > 0)]
    assert not empty, f"{len(empty)} <math> elements without a box, e.g. {empty[:3]}"

    images = chrome.execute_script(
        "return Array.from(document.images).map(i => [i.naturalWidth, i.src.slice(0, 22)]);")
    assert len(images) == 2 and all(w > 0 and src == "data:image/png;base64," for w, src in images)

    chrome.set_window_size(1280, min(12000, chrome.execute_script("return document.body.scrollHeight") + 100))
    shot = tmp_path / "report.png"
    assert chrome.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    urls = _requested_urls(chrome)
    assert page.as_uri() in urls, f"the performance log did not record the page itself: {urls}"
    foreign = [u for u in urls if not u.startswith(("file://", "data:"))]
    assert not foreign, f"the page fetched {foreign}"


#: per element of the page: its box past the page's right edge, unless a box that scrolls (a wide
#: equation's own .eq box) holds it; and every display equation that does not fit its box
LAYOUT_JS = """
const page = document.documentElement.clientWidth;
const clipped = el => { for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
  if (getComputedStyle(p).overflowX !== 'visible') return true; } return false; };
const wide = Array.from(document.body.querySelectorAll('*')).filter(el => {
  const r = el.getBoundingClientRect(); return (r.right > page + 1 || r.left < -1) && !clipped(el); })
  .map(el => [el.tagName, Math.round(el.getBoundingClientRect().width), el.textContent.slice(0, 60)]);
const scrolling = Array.from(document.querySelectorAll('.eq')).filter(e => e.scrollWidth > e.clientWidth + 1)
  .map(e => [e.scrollWidth, e.textContent.slice(0, 60)]);
const unboxed = Array.from(document.querySelectorAll('math')).filter(m => {
  const r = m.getBoundingClientRect(); return !(r.width > 0 && r.height > 0); }).map(m => m.textContent.slice(0, 40));
return {page, scroll: document.documentElement.scrollWidth, maths: document.querySelectorAll('math').length,
        wide, scrolling, unboxed};
"""


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp", "lact", "vittt_dwconv", "gla"])
def test_derivation_reports_fit_the_page(name, chrome, tmp_path):
    """The reports that were hard to read, at 1280 px: no element wider than the page, every
    equation fits without scrolling, every <math> has a box (a screenshot is left in tmp_path)."""
    from derivations import derive
    from tttla.reporting.derivation_report import write_report

    _, page = write_report(derive(name), tmp_path / name)
    chrome.set_window_size(1280, 1000)
    chrome.get(page.resolve().as_uri())
    layout = chrome.execute_script(LAYOUT_JS)
    assert layout["maths"] > 10 and not layout["unboxed"], layout["unboxed"][:3]
    assert layout["scroll"] <= layout["page"] and not layout["wide"], layout["wide"][:3]
    assert not layout["scrolling"], f"equations wider than the page: {layout['scrolling'][:3]}"
    chrome.set_window_size(1280, min(16000, chrome.execute_script("return document.body.scrollHeight") + 100))
    shot = tmp_path / f"{name}.png"
    assert chrome.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
