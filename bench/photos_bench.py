"""Photos people upload, measured on a published version through the service's own code (Flask's test client):

  - the 10,000 held-out test images as 28x28 PNGs, and product-style photos made from held-out images
    (bench/product_photos.py: 640x480 and other sizes, JPEG), each through the model's input recipe and through
    the old centre crop: accuracy, expected calibration error (15 bins, top-1), share flagged as unknown;
  - real photos of other things (bench/foreign_photos.py): the `selection` set the detector's settings were
    chosen on, and the `report` set, measured only: share flagged;
  - a reliability diagram of the held-out images and the product photos (docs/images/reliability.png);
  - what the recipe costs the service: requests per second on the benchmark's 640x480 JPEG under gunicorn and
    wrk (bench/serve_bench.py), the version as published against the same version with the crop recipe, in
    turn.

    python -m bench.photos_bench --version bench/models/fashion_mnist/3 --out bench/results/photos.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

from bench.foreign_photos import photos as foreign_photos
from bench.product_photos import product_photo
from contract import decode_image, input_recipe, read_manifest, recipes
from export.calibration import expected_calibration_error, reliability_diagram

ROOT = Path(__file__).resolve().parent.parent


def service(version: Path, recipe: dict | None = None):
    """The service on a copy of `version` (with its input recipe replaced by `recipe`, if given)."""
    from serve import create_app

    repository = copy_with_recipe(version, recipe)
    app = create_app({"MODEL_REPOSITORY": str(repository), "LOAD_IN_BACKGROUND": False, "POLL_SECONDS": 0})
    if app.extensions["pocketcnn"].current is None:
        raise SystemExit(f"no servable model in {version}: {app.extensions['pocketcnn'].reason}")
    return app


def ask(app, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities (in label order), out-of-distribution flags and scores, one row per photo."""
    client = app.test_client()
    probabilities, flags, scores = [], [], []
    for photo in photos:
        answer = client.post("/predict", data=photo, content_type="application/octet-stream").get_json()
        row = np.zeros(len(answer["predictions"]))
        for p in answer["predictions"]:
            row[p["index"]] = p["percent"] / 100
        probabilities.append(row)
        flags.append(bool(answer["out_of_distribution"]))
        scores.append(answer["ood_score"])
    return np.asarray(probabilities), np.asarray(flags), np.asarray(scores, dtype=float)


def copy_with_recipe(version: Path, recipe: dict | None) -> Path:
    """A model repository holding a copy of `version`, its input recipe replaced by `recipe` (if given)."""
    repository = Path(tempfile.mkdtemp(prefix="pocketcnn-photos-"))
    copy = repository / version.parent.name / version.name
    shutil.copytree(version, copy)
    if recipe is not None:
        manifest = read_manifest(copy)
        manifest["input"]["recipe"] = recipe
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return repository


def recipe_cost(version: Path, seconds: int = 4, rounds: int = 5, connections: int = 8) -> dict:
    """Requests per second on the 640x480 JPEG: the version's own recipe against crop, measured in turn."""
    from bench.serve_bench import Server, interleaved, make_images, median_ratio, warm_up

    image = make_images(Path(tempfile.mkdtemp(prefix="pocketcnn-images-")))["jpeg_640x480"]
    repositories = {"recipe": copy_with_recipe(version, None),
                    "crop": copy_with_recipe(version, {"name": "crop", "version": 1})}
    servers = {name: Server("serve:create_app()", {"POCKETCNN_MODEL_REPOSITORY": str(repository),
                                                   "POCKETCNN_POLL_SECONDS": "0"}, workers=2, threads=4)
               for name, repository in repositories.items()}
    try:
        for server in servers.values():
            server.start()
            warm_up(server.url, image)
        found = interleaved(servers, image, connections, seconds, rounds)
    finally:
        for server in servers.values():
            server.stop()
        for repository in repositories.values():
            shutil.rmtree(repository, ignore_errors=True)
    ratio = median_ratio(found["recipe"], found["crop"])
    # The same photo through decode_image in this process, best of 7 x 300: the recipe's own cost without the noise
    # of two servers measured in turn.
    manifest = read_manifest(version)
    data, recorded, (_, height, width, channels) = Path(image).read_bytes(), input_recipe(manifest), \
        manifest["input"]["shape"]
    decode_ms = {name: min(timeit.repeat(lambda recipe=recipe: decode_image(data, height, width, channels,
                                                                            recipe=recipe),
                                         number=300, repeat=7)) / 300 * 1000
                 for name, recipe in (("recipe", recorded), ("crop", "crop"))}
    return {"connections": connections, "recipe": found["recipe"], "crop": found["crop"],
            "recipe_over_crop": ratio, "cost": 1 - ratio, "decode_image_ms": decode_ms,
            # what the servers ran product_photo with: contract/_product_photo.c, or the numpy code without it
            "implementation": "numpy" if recipes._compiled is None else "compiled"}


def summary(probabilities: np.ndarray, labels: np.ndarray | None, flags: np.ndarray) -> dict:
    found = {"images": int(len(flags)), "flagged": float(flags.mean())}
    if labels is not None:
        found["accuracy"] = float((probabilities.argmax(axis=1) == labels).mean())
        found["ece"] = expected_calibration_error(probabilities, labels)
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.photos_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=Path, required=True, help="a published version folder")
    parser.add_argument("--products", type=int, default=1000, help="product-style photos (default 1000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "photos.json")
    parser.add_argument("--diagram", type=Path, default=ROOT / "docs" / "images" / "reliability.png")
    parser.add_argument("--no-cost", action="store_true", help="skip the serving cost (gunicorn and wrk)")
    args = parser.parse_args(argv)
    from contract.image import png_bytes
    from train.data import load_fashion_mnist

    _, _, x, y = load_fashion_mnist()
    pngs = [png_bytes(image) for image in x]
    chosen = np.random.default_rng(2026).choice(len(x), size=args.products, replace=False)
    products = [product_photo(x[i], seed=int(i)) for i in chosen]
    manifest = read_manifest(args.version)
    results = {"version": str(args.version), "served_format": None, "recipe": manifest["input"].get("recipe"),
               "calibration": manifest.get("calibration", {}), "ood": manifest.get("ood", {})}
    curves = {}
    for label, recipe in (("recipe", None), ("crop", {"name": "crop", "version": 1})):
        app = service(args.version, recipe)
        results["served_format"] = app.extensions["pocketcnn"].current.format
        test_p, test_f, _ = ask(app, pngs)
        product_p, product_f, _ = ask(app, products)
        results[label] = {"test": summary(test_p, y, test_f), "products": summary(product_p, y[chosen], product_f)}
        if label == "recipe":
            curves = {"held-out 28x28 PNGs": (test_p, y), "product-style photos": (product_p, y[chosen])}
            for which in ("selection", "report"):
                paths = foreign_photos(which)
                _, flags, scores = ask(app, [p.read_bytes() for p in paths])
                results[f"foreign_{which}"] = {**summary(np.zeros((len(flags), 1)), None, flags),
                                               "photos": {str(p.relative_to(p.parent.parent.parent)): round(s, 3)
                                                          for p, s in zip(paths, scores, strict=True)}}
        app.extensions["pocketcnn"].stop()
        print(f"{label:7} test: {results[label]['test']}\n        products: {results[label]['products']}", flush=True)
    for which in ("selection", "report"):
        print(f"foreign {which}: {results[f'foreign_{which}']['flagged'] * 100:.1f} % of "
              f"{results[f'foreign_{which}']['images']} flagged", flush=True)
    if not args.no_cost:
        results["serving_cost"] = recipe_cost(args.version)
        print(f"serving cost of the recipe on the 640x480 JPEG: {results['serving_cost']['cost'] * 100:.1f} % of "
              "the requests per second", flush=True)
    args.diagram.parent.mkdir(parents=True, exist_ok=True)
    reliability_diagram(curves, args.diagram, "Reliability of the served percentages")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
