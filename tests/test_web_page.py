"""The web page (serve/static/index.html) in real headless Chromium: upload a real photo and read the
bars, see the service's error for a file that is not a photo and a network failure in words, load
nothing from elsewhere, and fit a phone's screen."""

from __future__ import annotations

import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes

from bench.browser import chromium_installed, headless_chromium
from clients.predict import ServiceError, predict

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "serve" / "static" / "index.html"
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not chromium_installed():
        pytest.skip("Chromium and ChromeDriver are not installed (make system-packages)")
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def live_server(tiny_server) -> str:
    return tiny_server.url


@pytest.fixture(scope="module")
def photos(fashion_mnist_test, tmp_path_factory) -> list[Path]:
    """Real Fashion-MNIST test images as PNG files: a trouser, a sneaker, an ankle boot."""
    x, y = fashion_mnist_test
    folder = tmp_path_factory.mktemp("page-photos")
    paths = []
    for label in (1, 7, 9):
        index = int(np.flatnonzero(y == label)[0])
        path = folder / f"fashion_{label}_{index}.png"
        path.write_bytes(png_bytes(x[index]))
        paths.append(path)
    return paths


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "ready")


def wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition)


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#file").send_keys(str(path))


def wait_for_outcome(driver) -> str:
    """'done' when the bars are shown, 'error' when the error box is."""
    return wait(driver, lambda d: d.execute_script(
        "const s = document.body.dataset.state; return s === 'done' || s === 'error' ? s : null"))


def read_bars(driver) -> list[dict]:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results .bar')).map(bar => ({
            label: bar.dataset.label,
            percent: parseFloat(bar.dataset.percent),
            text: bar.querySelector('.percent').textContent,
            fill: bar.querySelector('.fill').getBoundingClientRect().width,
            track: bar.querySelector('.track').getBoundingClientRect().width,
        }));""")


def test_an_uploaded_photo_gets_the_same_bars_as_the_api(browser, live_server, photos):
    open_page(browser, live_server + "/")
    for photo in photos:
        upload(browser, photo)
        assert wait_for_outcome(browser) == "done"
        bars = read_bars(browser)
        answer = predict(photo, url=live_server)
        assert [b["label"] for b in bars] == [p["label"] for p in answer["predictions"]]
        assert [b["percent"] for b in bars] == [p["percent"] for p in answer["predictions"]]
        assert [b["text"] for b in bars] == [f"{p['percent']:.2f} %" for p in answer["predictions"]]
        for bar in bars:  # each bar is drawn as long as its percentage
            assert bar["fill"] == pytest.approx(max(bar["track"] * bar["percent"] / 100, 2), abs=1.5)
        model = browser.execute_script("return document.getElementById('model').textContent")
        assert answer["model"]["name"] in model and f"version {answer['model']['version']}" in model
        state = browser.execute_script("""
            const preview = document.getElementById('preview');
            return {error: document.getElementById('error').hidden, preview: !preview.hidden,
                    loaded: preview.complete && preview.naturalWidth};""")
        assert state == {"error": True, "preview": True, "loaded": 28}


def test_a_text_file_shows_the_services_error_message(browser, live_server, photos, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("A shopping list, not a photo.\n")
    with pytest.raises(ServiceError) as caught:
        predict(text_file, url=live_server)
    open_page(browser, live_server + "/")
    upload(browser, photos[0])
    assert wait_for_outcome(browser) == "done"
    upload(browser, text_file)
    assert wait_for_outcome(browser) == "error"
    shown = browser.execute_script("""
        const error = document.getElementById('error');
        return {hidden: error.hidden, text: error.textContent,
                bars: document.querySelectorAll('#results .bar').length};""")
    assert shown == {"hidden": False, "text": caught.value.message, "bars": 0}
    # A text file has no picture to preview: no empty result card is left on the page.
    wait(browser, lambda d: d.execute_script("return document.getElementById('answer').hidden"))


@pytest.fixture
def unreachable_predict():
    """Serves the page, but drops every connection to /predict without an answer (a network failure)."""
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def do_POST(self):
            self.close_connection = True
            self.connection.close()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_network_failure_is_shown_in_words(browser, unreachable_predict, photos):
    open_page(browser, unreachable_predict + "/")
    upload(browser, photos[1])
    assert wait_for_outcome(browser) == "error"
    text = browser.execute_script("return document.getElementById('error').textContent")
    assert text.startswith("Could not reach the service") and "try again" in text


def test_the_page_loads_nothing_from_elsewhere(browser, live_server, photos):
    source = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"https?://|@import|<script[^>]+src=|url\(", source)
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", source) == ["data:,"]
    open_page(browser, live_server + "/")
    upload(browser, photos[2])
    assert wait_for_outcome(browser) == "done"
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    origin = urllib.parse.urlsplit(live_server)
    for name in names:
        address = urllib.parse.urlsplit(name.removeprefix("blob:"))
        assert (address.scheme, address.netloc) == (origin.scheme, origin.netloc), name
    assert any(urllib.parse.urlsplit(name).path == "/predict" for name in names), names


def test_the_page_fits_a_phone_screen(browser, live_server, photos):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 360, "height": 740, "deviceScaleFactor": 3, "mobile": True})
    try:
        open_page(browser, live_server + "/")
        camera = browser.execute_script("""
            const camera = document.getElementById('camera');
            return [camera.type, camera.accept, camera.getAttribute('capture')];""")
        assert camera == ["file", "image/*", "environment"]
        upload(browser, photos[0])
        assert wait_for_outcome(browser) == "done"
        layout = browser.execute_script("""
            const rect = id => document.getElementById(id).getBoundingClientRect();
            return {
                viewport: window.innerWidth,
                page: document.documentElement.scrollWidth,
                rightmost: Math.max(...Array.from(document.querySelectorAll('#results .bar .percent'))
                                         .map(e => e.getBoundingClientRect().right)),
                // a percentage broken over two lines ("91.39" / "%") is twice as tall as a line
                tallest: Math.max(...Array.from(document.querySelectorAll('#results .bar .percent'))
                                       .map(e => e.getBoundingClientRect().height /
                                                 parseFloat(getComputedStyle(e).lineHeight))),
                previewBottom: rect('preview').bottom, resultsTop: rect('results').top,
            };""")
        assert layout["viewport"] == 360
        assert layout["page"] <= layout["viewport"], "nothing may scroll sideways"
        assert layout["rightmost"] <= layout["viewport"], "every percentage is on screen"
        assert layout["tallest"] < 1.5, "every percentage on one line"
        assert layout["previewBottom"] <= layout["resultsTop"], "photo above the bars on a narrow screen"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

