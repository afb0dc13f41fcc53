"""The README's pictures, from a real run and a real browser: `make bench` ends with this.

  curves.png, confusion_matrix.png, filters.png   copied from the run's plots/
  web_page.png                                    headless Chromium on the running service, after
                                                  uploading the benchmark's 640x480 photo

    python -m bench.docs_images --run bench/runs/<id> --models bench/models --photo bench/results/images/photo_640x480.jpg
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.serve_bench import Server, warm_up

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "images"
PLOTS = ("curves.png", "confusion_matrix.png", "filters.png")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def copy_plots(run: Path) -> list[Path]:
    DOCS.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLOTS:
        shutil.copyfile(run / "plots" / name, DOCS / name)
        written.append(DOCS / name)
    return written


def screenshot_page(models: Path, photo: Path, out: Path) -> Path:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {"POCKETCNN_MODEL_REPOSITORY": str(models.resolve()), "POCKETCNN_POLL_SECONDS": "0"}
    with Server("serve:create_app()", env, workers=1, threads=2) as server, \
            tempfile.TemporaryDirectory(prefix="pocketcnn-chromium-") as profile:
        warm_up(server.url, photo, count=1)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                         "--window-size=1000,760", f"--user-data-dir={profile}"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: d.execute_script("return document.body.dataset.state") == "ready")
            driver.find_element(By.CSS_SELECTOR, "#file").send_keys(str(photo.resolve()))
            wait.until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
            wait.until(lambda d: d.execute_script("return document.getElementById('preview').complete"))
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return out


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.docs_images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder (its plots/)")
    parser.add_argument("--models", type=Path, required=True, help="a model repository with a published version")
    parser.add_argument("--photo", type=Path, required=True, help="the photo to upload on the web page")
    args = parser.parse_args(argv)
    written = copy_plots(args.run)
    written.append(screenshot_page(args.models, args.photo, DOCS / "web_page.png"))
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return written


if __name__ == "__main__":
    main()
