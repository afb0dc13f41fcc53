"""The README's pictures, from a real run and a real browser: `make bench` ends with this.

  curves.png, confusion_matrix.png, filters.png   copied from the run's plots/
  web_page.png                                    headless Chromium on the running service, after
                                                  uploading a real Fashion-MNIST test picture (an ankle
                                                  boot, shown at 10x as a 280x280 PNG)
  web_page_on_device.png                          the same page classifying a 640x480 phone-like photo of
                                                  a held-out ankle boot on the device (onnxruntime-web)
  input_recipe.png                                phone-like photos (bench/product_photos.py) and what the
                                                  product_photo input recipe makes of them, beside the
                                                  held-out image they were made from

    python -m bench.docs_images --run bench/runs/<id> --models bench/models
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

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


def recipe_sheet(out: Path, fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist") -> Path:
    """Rows: a held-out image, a phone-like photo of it under one condition, and the recipe's output."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from bench.product_photos import product_photo
    from contract import decode_image
    from train.data import read_idx

    images = read_idx(Path(fashion_mnist_dir) / "t10k-images-idx3-ubyte.gz")
    cases = [(0, "small, off-centre", {"fill": 0.4, "offset": np.array([0.8, -0.6])}),
             (2, "soft shadow", {"shadow": 0.3, "fill": 0.7}),
             (1, "lighting gradient", {"gradient": np.array([0.12, -0.1])}),
             (3, "woven cloth", {"texture": "weave"}), (8, "tilted, dim corners", {"tilt": 6, "falloff": 0.25}),
             (13, "fills the frame", {"fill": 0.9})]
    figure, axes = plt.subplots(3, len(cases), figsize=(2.2 * len(cases), 6.4))
    for column, (index, title, conditions) in enumerate(cases):
        photo = product_photo(images[index], seed=index, size=(640, 480), conditions=conditions)
        recipe = decode_image(photo, 28, 28, 1, recipe="product_photo")
        for row, (picture, label) in enumerate(((images[index], "held-out image"),
                                                (np.asarray(Image.open(io.BytesIO(photo))), title),
                                                (recipe[..., 0], "after the recipe"))):
            axis = axes[row, column]
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255,
                        interpolation="nearest" if picture.shape[0] == 28 else "antialiased")
            axis.set_title(label, fontsize=9)
            axis.set_axis_off()
    figure.suptitle("The product_photo input recipe: a phone-like photo becomes what the model was trained on")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def screenshot_page(models: Path, photo: Path, out: Path, on_device: bool = False) -> Path:
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
            if on_device:
                wait.until(lambda d: d.execute_script("return document.body.dataset.device") == "off")
                driver.execute_script("document.getElementById('on-device').click()")
                wait.until(lambda d: d.execute_script("return document.body.dataset.device") == "ready")
            driver.find_element(By.CSS_SELECTOR, "#file").send_keys(str(photo.resolve()))
            wait.until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
            wait.until(lambda d: d.execute_script("return document.getElementById('preview').complete"))
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return out


def _phone_photo(fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist") -> bytes:
    """The README's 640x480 photo of an ankle boot: the first held-out image, photographed (bench/product_photos)."""
    from bench.product_photos import product_photo
    from train.data import read_idx

    return product_photo(read_idx(Path(fashion_mnist_dir) / "t10k-images-idx3-ubyte.gz")[0], seed=0, size=(640, 480))


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
    phone_photo = photo.parent / "ankle_boot_640x480.jpg"
    phone_photo.write_bytes(_phone_photo())
    written.append(screenshot_page(args.models, phone_photo, DOCS / "web_page_on_device.png", on_device=True))
    written.append(recipe_sheet(DOCS / "input_recipe.png"))
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return written


if __name__ == "__main__":
    main()
