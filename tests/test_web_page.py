"""The web page (serve/static/index.html) in real headless Chromium: upload a real photo and read the
bars, see the service's error for a file that is not a photo and a network failure in words, load
nothing from elsewhere, and fit a phone's screen."""

from __future__ import annotations

import base64
import io
import re
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import answers, encode, png_bytes
from PIL import Image, ImageOps

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



# --- classify on this device: onnxruntime-web in the page (serve/in_browser.py, device.mjs, recipes.mjs) -------

def run_module(driver, body: str, *args):
    """Run `body` (an async function body, with the page's modules imported as `device` and `recipes`) in the page
    and return what it returns; an exception comes back as {"error": message}."""
    driver.set_script_timeout(120)
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const args = Array.from(arguments).slice(0, -1);
        Promise.all([import('./ondevice/device.mjs'), import('./ondevice/recipes.mjs')])
          .then(([device, recipes]) => (async (device, recipes, args) => {""" + body + """})(device, recipes, args))
          .then(done, (err) => done({error: String(err && err.stack || err)}));""", *args)


def decoded_pixels(data: bytes) -> np.ndarray:
    """What a browser's decoder gives for a photo: all of it, in colour, as Pillow decodes it (no JPEG draft)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def recipe_cases(fashion_mnist_test) -> list[tuple[str, np.ndarray, str, int]]:
    """(name, decoded pixels, recipe, channels): product photos under each phone condition, greyscale and colour
    pictures, and the edge cases."""
    from bench.product_photos import product_photo

    x, _ = fashion_mnist_test
    cases = []
    for i in range(24):
        photo = decoded_pixels(product_photo(x[i], seed=i, size=(320, 240)))
        cases.append((f"product photo {i}", photo, "product_photo", 1))
    grey_photo = np.asarray(Image.fromarray(x[30][..., 0]).resize((90, 90), Image.Resampling.BICUBIC))[..., None]
    cases += [("greyscale light-on-dark", grey_photo, "product_photo", 1),
              ("greyscale dark-on-light", 255 - grey_photo, "product_photo", 1),
              ("model size, dark background", x[31], "product_photo", 1),
              ("colour model", decoded_pixels(product_photo(x[32], seed=32, size=(200, 150))), "product_photo", 3),
              ("all white", np.full((50, 70, 3), 255, np.uint8), "product_photo", 1),
              ("1x1", np.full((1, 1, 3), 90, np.uint8), "product_photo", 1),
              ("noise", np.random.default_rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8), "product_photo", 1)]
    for recipe in ("crop", "pad"):
        for channels in (1, 3):
            cases.append((f"{recipe} {channels}", decoded_pixels(product_photo(x[40 + channels], seed=40,
                                                                               size=(300, 180))), recipe, channels))
    return cases


def test_the_pages_recipes_give_the_contracts_bytes(browser, live_server, fashion_mnist_test):
    """recipes.mjs against contract/recipes.py on the same decoded pixels: byte for byte, and the same photo doubt."""
    from contract.recipes import apply_recipe

    open_page(browser, live_server + "/")
    for name, pixels, recipe, channels in recipe_cases(fashion_mnist_test):
        notes: dict = {}
        expected = apply_recipe(pixels, 28, 28, channels, recipe, notes)
        found = run_module(browser, """
            const [b64, h, w, c, recipe, channels] = args;
            const data = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
            const notes = {};
            const out = recipes.applyRecipe(recipes.picture(h, w, c, data), 28, 28, channels, recipe, notes);
            return {data: btoa(String.fromCharCode(...out.data)), c: out.c, doubt: notes.photo_doubt};""",
            base64.b64encode(pixels.tobytes()).decode(), pixels.shape[0], pixels.shape[1], pixels.shape[2], recipe,
            channels)
        assert "error" not in found, found
        got = np.frombuffer(base64.b64decode(found["data"]), np.uint8)
        assert found["c"] == channels and np.array_equal(got, expected.reshape(-1)), name
        assert found["doubt"] == notes.get("photo_doubt", 0.0), name


def jpeg_cases(fashion_mnist_test) -> list[tuple[str, bytes]]:
    """JPEGs as phones send them: product photos at each size bench/product_photos.py makes; sides that are no
    multiple of the draft scale under every EXIF orientation (the partial blocks move to the left or top); greyscale
    and progressive files."""
    from bench.product_photos import SIZES, product_photo

    x, _ = fashion_mnist_test
    cases = [(f"product photo {w}x{h}", product_photo(x[50 + k], seed=50 + k, size=(w, h)))
             for k, (w, h) in enumerate(SIZES)]
    odd = Image.open(io.BytesIO(product_photo(x[60], seed=60, size=(645, 483))))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append((f"645x483, EXIF orientation {orientation}", encode(odd, "JPEG", quality=90, exif=exif.tobytes())))
    cases += [("greyscale", encode(odd.convert("L"), "JPEG", quality=90)),
              ("progressive", encode(odd, "JPEG", quality=90, progressive=True))]
    return cases


def drafted(data: bytes, side: int) -> np.ndarray:
    """What the service decodes a JPEG into before the recipe (contract/image.py): Pillow's draft (libjpeg's DCT
    scaling), then the EXIF orientation."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L" if image.mode == "L" else "RGB", (side, side))
        image.load()
        upright = ImageOps.exif_transpose(image)
        return np.asarray(upright)[..., None] if upright.mode == "L" else np.asarray(upright)


def block_means(pixels: np.ndarray, scale: int, orientation: int) -> np.ndarray:
    """device.mjs draft() in numpy: the mean of each scale x scale block, rounded half up, the blocks those of the
    stored picture before its EXIF orientation turned it upright."""
    height, width = pixels.shape[:2]
    top = (-height) % scale if orientation in (3, 4, 7, 8) else 0
    left = (-width) % scale if orientation in (2, 3, 6, 7) else 0
    rows, cols = -(-(height + top) // scale), -(-(width + left) // scale)
    sums, counts = np.zeros((rows * scale, cols * scale, 3), np.int64), np.zeros((rows * scale, cols * scale, 1),
                                                                                  np.int64)
    sums[top:top + height, left:left + width], counts[top:top + height, left:left + width] = pixels, 1
    sums, counts = (a.reshape(rows, scale, cols, scale, -1).sum(axis=(1, 3)) for a in (sums, counts))
    return ((sums + counts // 2) // counts).astype(np.uint8)


def test_the_page_decodes_a_jpeg_at_the_size_the_service_does(browser, live_server, fashion_mnist_test):
    """The service lets libjpeg decode a JPEG at 1/8, 1/4 or 1/2 scale (Pillow's draft); the page decodes it at full
    size and averages blocks of the scale the service's decoder picks (device.mjs draft()): Pillow's size exactly, and
    pixels within a few levels of its decode (on 300 phone-like photos: within 6, 89 % equal, 0.11 levels apart on
    average, 0.36 at worst). A PNG is decoded at full size, as the service does."""
    from contract.recipes import InputRecipe

    open_page(browser, live_server + "/")
    sides = run_module(browser, """
        return args[0].map(([name, h, w]) => device.draftSide({height: h, width: w, recipe: {name, version: 1}}));""",
        [["product_photo", 28, 28], ["crop", 32, 32], ["pad", 64, 48]])
    assert sides == [InputRecipe.parse(name).draft_side(h, w)
                     for name, h, w in (("product_photo", 28, 28), ("crop", 32, 32), ("pad", 64, 48))]
    side = sides[0]
    as_base64 = """
        let text = "";
        for (let i = 0; i < p.data.length; i += 8192) text += String.fromCharCode(...p.data.subarray(i, i + 8192));
        return {h: p.h, w: p.w, c: p.c, data: btoa(text)};"""

    def pixels(found: dict) -> np.ndarray:
        assert "error" not in found, found
        return np.frombuffer(base64.b64decode(found["data"]), np.uint8).reshape(found["h"], found["w"], found["c"])

    cases = jpeg_cases(fashion_mnist_test)
    for name, data in cases:
        expected = drafted(data, side)
        found = pixels(run_module(browser, """
            const bytes = Uint8Array.from(atob(args[0]), (ch) => ch.charCodeAt(0));
            const p = await device.decode(new Blob([bytes]), args[1]);""" + as_base64,
            base64.b64encode(data).decode(), side))
        assert found.shape == expected.shape, name
        difference = np.abs(found.astype(np.int64) - expected)
        assert difference.max() <= 8 and difference.mean() <= 0.5, (name, difference.max(), difference.mean())
    # The block averaging itself, on given pixels (not the browser's decoder): its numpy twin's bytes.
    with Image.open(io.BytesIO(cases[0][1])) as image:
        full = np.asarray(image.convert("RGBA"))[:-5, :-3]  # sides that are no multiple of the scale
    for orientation, scale in ((1, 8), (3, 8), (6, 4), (8, 2)):
        found = pixels(run_module(browser, """
            const [b64, h, w, scale, orientation] = args;
            const rgba = Uint8ClampedArray.from(atob(b64), (ch) => ch.charCodeAt(0));
            const drafted = device.draft(rgba, h, w, scale, orientation);
            const p = device.fromRGBA(drafted.rgba, drafted.height, drafted.width);""" + as_base64,
            base64.b64encode(full.tobytes()).decode(), full.shape[0], full.shape[1], scale, orientation))
        assert np.array_equal(found, block_means(full[..., :3], scale, orientation)), (orientation, scale)
    png = png_bytes(np.asarray(Image.open(io.BytesIO(cases[0][1]))))  # 640 x 480
    found = run_module(browser, """
        const p = await device.decode(new Blob([Uint8Array.from(atob(args[0]), (ch) => ch.charCodeAt(0))]), args[1]);
        return [p.h, p.w];""", base64.b64encode(png).decode(), side)
    assert found == [480, 640]


@pytest.fixture(scope="module")
def onnx_server(model_repository):
    """gunicorn serving the session model's ONNX file: the file the page runs on the device, so that answers can
    be compared like for like."""
    from serve.testing import GunicornServer

    server = GunicornServer(model_repository, env={"POCKETCNN_MODEL_FORMAT": "onnx"}).start()
    yield server
    server.stop()


def enable_on_device(driver, url: str) -> None:
    open_page(driver, url + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.device") in ("off", "ready"))
    driver.execute_script("const box = document.getElementById('on-device'); if (!box.checked) box.click();")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.device") in ("ready", "failed"))
    assert driver.execute_script("return document.body.dataset.device") == "ready", driver.execute_script(
        "return document.getElementById('where-note').textContent")


def disable_on_device(driver) -> None:
    driver.execute_script("const box = document.getElementById('on-device'); if (box.checked) box.click();")


@pytest.mark.slow
def test_fed_the_same_pixels_the_device_gives_the_services_percentages(browser, onnx_server, published_version,
                                                                       fashion_mnist_test):
    """The model in the browser (onnxruntime-web, WebAssembly) on the contract's pixels: ONNX Runtime's
    probabilities within the ONNX file's tolerance, and the service's out-of-distribution scores."""
    from bench.product_photos import product_photo
    from contract import decode_image, read_manifest
    from contract.runtime import open_runner

    manifest = read_manifest(published_version)
    tolerance = manifest["artifacts"]["onnx"]["gates"]["max_abs_diff"]
    x, _ = fashion_mnist_test
    photos = [png_bytes(x[i]) for i in range(20)] + [product_photo(x[i], seed=i) for i in range(20, 40)]
    enable_on_device(browser, onnx_server.url)
    runner = open_runner(published_version / "model.onnx", "onnxruntime")
    served = answers(onnx_server.url, photos)
    for photo, answer in zip(photos, served, strict=True):
        notes: dict = {}
        pixels = decode_image(photo, 28, 28, 1, recipe="product_photo", notes=notes)
        found = run_module(browser, """
            const [b64, doubt] = args;
            const dev = await device.loadDevice();
            const run = await dev.run(Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0)));
            return {p: Array.from(run.probabilities), ood: dev.oodScore(run.features, doubt)};""",
            base64.b64encode(pixels.tobytes()).decode(), notes["photo_doubt"])
        assert "error" not in found, found
        assert np.abs(np.array(found["p"]) - runner.predict(pixels[None])[0]).max() <= tolerance
        assert found["ood"] == pytest.approx(answer["ood_score"], abs=0.01)


@pytest.mark.slow
def test_photos_classified_on_the_device_get_the_services_answers(browser, onnx_server, fashion_mnist_test,
                                                                  tmp_path):
    """Uploaded through the page with "on this device" on: the browser decodes the photo and applies the recipe in
    JavaScript; the same top class as /predict on every held-out PNG (the same pixels). The service decodes a JPEG at
    libjpeg's reduced DCT scale (Pillow's draft: 80x60 for a 640x480 photo), the page at full size and then averages
    blocks of that scale (device.mjs draft()): within a few levels of the service's pixels, not bit for bit, so a
    photo the model is unsure of, or whose garment's edge is on the trim's threshold, can tip either way. The top
    classes agree on at least 98 % of phone-like photos (297 of 300 with a 91 % model, whose top class on the three
    others was at 36 to 64 %; 289 when the page used the full-size decode), and the service's top class is always
    among the page's first three."""
    from bench.product_photos import product_photo

    x, _ = fashion_mnist_test
    files = []
    for i in range(50):
        files.append(("png", tmp_path / f"held_out_{i}.png", png_bytes(x[-1 - i])))
        files.append(("photo", tmp_path / f"photo_{i}.jpg", product_photo(x[i], seed=100 + i)))
    for _, path, data in files:
        path.write_bytes(data)
    served = answers(onnx_server.url, [data for _, _, data in files])
    enable_on_device(browser, onnx_server.url)
    same = {"png": [], "photo": []}
    for (kind, path, _), answer in zip(files, served, strict=True):
        upload(browser, path)
        assert wait_for_outcome(browser) == "done"
        bars = read_bars(browser)
        same[kind].append(bars[0]["label"] == answer["predictions"][0]["label"])
        assert answer["predictions"][0]["label"] in [bar["label"] for bar in bars[:3]], (path.name, bars[:3], answer)
        model = browser.execute_script("return document.getElementById('model').textContent")
        assert "on this device" in model
    disable_on_device(browser)
    assert all(same["png"]), same["png"]
    assert np.mean(same["photo"]) >= 0.98, same["photo"]
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not any(urllib.parse.urlsplit(name).path == "/predict" for name in names), "no photo left the page"


@pytest.mark.slow
def test_on_the_device_the_page_works_offline_once_loaded(model_repository, tmp_path_factory, photos):
    """With the model loaded once, the service stops: the page still opens (its service worker) and classifies."""
    from serve.testing import GunicornServer

    server = GunicornServer(model_repository, env={"POCKETCNN_MODEL_FORMAT": "onnx"}).start()
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-offline"))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        enable_on_device(driver, server.url)
        wait(driver, lambda d: d.execute_script("return !!navigator.serviceWorker.controller"))
        enable_on_device(driver, server.url)  # reloaded under the service worker: everything is in its cache
        server.stop()
        driver.refresh()
        wait(driver, lambda d: d.execute_script("return document.body.dataset.device") == "ready")
        upload(driver, photos[2])
        assert wait_for_outcome(driver) == "done"
        assert read_bars(driver)[0]["label"] == "Ankle boot"
    finally:
        driver.quit()
        server.stop()


def test_without_the_web_runtime_the_page_says_why_and_uses_the_service(tiny_repository, browser, photos):
    from tiny_model import TINY_FORMAT

    from serve.testing import GunicornServer

    server = GunicornServer(tiny_repository, env={"POCKETCNN_MODEL_FORMAT": TINY_FORMAT,
                                                  "POCKETCNN_WEB_RUNTIME": "/nonexistent/dist"}).start()
    try:
        open_page(browser, server.url + "/")
        wait(browser, lambda d: d.execute_script("return document.body.dataset.device") == "unavailable")
        state = browser.execute_script("""return {disabled: document.getElementById('on-device').disabled,
            note: document.getElementById('where-note').textContent}""")
        assert state["disabled"] and "without the in-browser runtime" in state["note"] and "make web" in state["note"]
        upload(browser, photos[0])
        assert wait_for_outcome(browser) == "done"
    finally:
        server.stop()


def test_a_runtime_that_cannot_load_falls_back_to_the_service_and_says_so(tiny_repository, browser, photos,
                                                                          tmp_path):
    """A broken WebAssembly file: the page says it could not load the model here and sends the photo instead."""
    from tiny_model import TINY_FORMAT

    from serve.in_browser import DEFAULT_RUNTIME_DIR, RUNTIME_FILES
    from serve.testing import GunicornServer

    if not DEFAULT_RUNTIME_DIR.is_dir():
        pytest.skip("the web runtime is not installed (make web)")
    broken = tmp_path / "onnxruntime-web" / "dist"
    broken.mkdir(parents=True)
    shutil.copy(DEFAULT_RUNTIME_DIR.parent / "package.json", broken.parent / "package.json")
    for name in RUNTIME_FILES:
        shutil.copy(DEFAULT_RUNTIME_DIR / name, broken / name)
    (broken / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm broken")
    server = GunicornServer(tiny_repository, env={"POCKETCNN_MODEL_FORMAT": TINY_FORMAT,
                                                  "POCKETCNN_WEB_RUNTIME": str(broken)}).start()
    try:
        open_page(browser, server.url + "/")
        wait(browser, lambda d: d.execute_script("return document.body.dataset.device") == "off")
        browser.execute_script("document.getElementById('on-device').click()")
        upload(browser, photos[1])
        assert wait_for_outcome(browser) == "done"
        state = browser.execute_script("""return {device: document.body.dataset.device,
            checked: document.getElementById('on-device').checked,
            note: document.getElementById('where-note').textContent,
            model: document.getElementById('model').textContent}""")
        assert state["device"] == "failed" and not state["checked"]
        assert "Could not load the model in this browser" in state["note"] and "go to the service" in state["note"]
        assert "on this device" not in state["model"], "answered by the service"
    finally:
        server.stop()
