"""The built site in a real browser: the index, the API page of ``vp.audit`` and the gallery
render (no console errors, every image loads) and the search finds ``iwae``.

Runs where Debian's ``chromium`` and ``chromium-driver`` are installed (``/usr/bin/chromium``,
``/usr/bin/chromedriver``), selenium is importable (the ``docs`` extra) and the site is built
(``make docs``); otherwise it is skipped, saying which is missing. ``make test`` never builds
the site. The pages are served from 127.0.0.1 (no other address is contacted).
"""

import functools
import http.server
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[docs]')"
    if not (SITE / "index.html").exists():
        return f"the site is not built ({SITE}/index.html absent): run make docs first"
    return None


@pytest.fixture(scope="module")
def site():
    """The built site over HTTP on a free loopback port."""
    if reason := _missing():
        pytest.skip(reason)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the test's output is its assertions
            pass

    handler = functools.partial(Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(site):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="vaeprobe-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, url: str) -> None:
    browser.get(url)
    browser.get_log("browser")  # what an earlier page logged is not this page's
    browser.refresh()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete")


def _check_rendered(browser, min_images: int = 0) -> dict:
    errors = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE"]
    assert not errors, f"console errors on {browser.current_url}: {errors}"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, "
        "i.naturalWidth])")
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load on {browser.current_url}: {broken}"
    assert len(images) >= min_images, f"{len(images)} images on {browser.current_url}"
    return {"images": len(images), "title": browser.title}


def test_index_renders(site, browser):
    _open(browser, f"{site}/index.html")
    facts = _check_rendered(browser)
    assert "vaeprobe" in facts["title"]
    links = browser.execute_script("return Array.from(document.links).map(a => a.href)")
    for page in ("tutorials/index.html", "auto_examples/index.html", "api/index.html"):
        assert any(link.endswith(page) for link in links), f"the index links no {page}"


def test_api_page_of_audit_renders(site, browser):
    _open(browser, f"{site}/generated/api/vaeprobe.audit.html")
    _check_rendered(browser)
    assert browser.execute_script("return document.getElementById('vaeprobe.audit') !== null")
    text = browser.execute_script("return document.body.innerText")
    assert "Parameters" in text and "Returns" in text and "AuditReport" in text


def test_gallery_renders_with_its_figures(site, browser):
    _open(browser, f"{site}/auto_examples/index.html")
    facts = _check_rendered(browser, min_images=8)
    thumbnails = browser.execute_script(
        "return document.querySelectorAll('.sphx-glr-thumbcontainer').length")
    assert thumbnails >= 8, facts
    _open(browser, f"{site}/auto_examples/plot_06_audit.html")
    _check_rendered(browser, min_images=1)


def test_search_finds_iwae(site, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, f"{site}/search.html?q=iwae")

    def results(driver):
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('#search-results a'))"
            ".map(a => a.getAttribute('href'))")

    WebDriverWait(browser, 30).until(lambda driver: len(results(driver)) > 0)
    found = results(browser)
    assert any("vaeprobe.iwae.html" in href for href in found), found
    _check_rendered(browser)
