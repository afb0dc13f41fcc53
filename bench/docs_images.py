"""The README's pictures, from a real run and a real browser: `make bench` ends with this.

  curves.png, confusion_matrix.png, filters.png   copied from the run's plots/
  web_page.png                                    headless Chromium on the running service, after
                                                  uploading a real Fashion-MNIST test picture (an ankle
                                                  boot, shown at 10x as a 280x280 PNG)

    python -m bench.docs_images --run bench/runs/<id> --models bench/models
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.browser import headless_chromium
from bench.serve_bench import Server, warm_up

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "images"
PLOTS = ("curves.png", "confusion_matrix.png", "filters.png")


def copy_plots(run: Path) -> list[Path]:
    DOCS.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLOTS:
        shutil.copyfile(run / "plots" / name, DOCS / name)
        written.append(DOCS / name)
    return written


def sample_photo(folder: Path, fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist") -> Path:
    """The first Fashion-MNIST test image (an ankle boot) at 280x280: what the model was trained on, at a
    size a page can show. (Photos of real clothes on a light background are another matter: see the README.)"""
    from PIL import Image

    from train.data import read_idx

    image = read_idx(Path(fashion_mnist_dir) / "t10k-images-idx3-ubyte.gz")[0]
    path = folder / "ankle_boot_280.png"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((280, 280), Image.Resampling.NEAREST).save(path)
    return path


def screenshot_page(models: Path, photo: Path, out: Path) -> Path:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {"POCKETCNN_MODEL_REPOSITORY": str(models.resolve()), "POCKETCNN_POLL_SECONDS": "0"}
    with Server("serve:create_app()", env, workers=1, threads=2) as server, \
            tempfile.TemporaryDirectory(prefix="pocketcnn-chromium-") as profile:
        warm_up(server.url, photo, count=1)
        driver = headless_chromium(profile, window=(1000, 880))
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
    parser.add_argument("--photo", type=Path, help="the photo to upload on the web page (default: a Fashion-MNIST "
                                                    "test picture)")
    args = parser.parse_args(argv)
    written = copy_plots(args.run)
    photo = args.photo or sample_photo(ROOT / "bench" / "results" / "images")
    written.append(screenshot_page(args.models, photo, DOCS / "web_page.png"))
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return written


if __name__ == "__main__":
    main()
