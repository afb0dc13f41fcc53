"""What an app does with MediaPipe Tasks' ImageClassifier and a pocketcnn .tflite, runnable here: MediaPipe's
Python Tasks API runs the same C++ core as its Android, iOS and web libraries.

  1. The classifier reads everything else from the file's standard TFLite Model Metadata: the label names,
     the input's normalization and colour space. Nothing from pocketcnn is needed to load the model.
  2. MediaPipe only crops and stretches a frame to the model's size. A pocketcnn model needs its input recipe
     first (the manifest's input.recipe; for Fashion-MNIST `product_photo`: trim the background, centre,
     light-on-dark), so the app applies it and hands over the model-size result, with the whole frame as the
     region of interest: nothing is resized or cropped again. Here the recipe is clients/ondevice.py's, which
     gives the service's pixels exactly; a Kotlin or Swift app ports that function (see the README).
  3. A greyscale model's `*_rgb.tflite` takes RGB (MediaPipe takes nothing else): the recipe's grey pixels go
     in R, G and B, and the model's own luma step gives them back exactly.
  4. The categories come back most likely first; `category.index` is the class, `category_name` its label.

    .venv-mediapipe/bin/python -m clients.mediapipe_app mobile_bundle.zip photo.jpg [--model model_int8_rgb.tflite]

For the tests and the benchmark it also classifies raw pixels, every class's score by index:

    .venv-mediapipe/bin/python -m clients.mediapipe_app --scores MODEL.tflite PIXELS.npy OUT.npz [--latency-runs N]

mediapipe 1.2.3 pins absl-py 2.x (tfmot needs 1.x), so it lives in its own environment, made by `make mediapipe`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "model_int8_rgb.tflite"


def open_classifier(model: bytes | str | Path):
    """MediaPipe's ImageClassifier on the file alone, every class returned (the defaults: no score threshold,
    no limit on results)."""
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    base = BaseOptions(model_asset_buffer=model) if isinstance(model, bytes) else \
        BaseOptions(model_asset_path=str(model))
    return ImageClassifier.create_from_options(ImageClassifierOptions(base_options=base))


def as_rgb_image(pixels: np.ndarray):
    """(H, W, 1 or 3) uint8 pixels as a MediaPipe SRGB image (grey repeated in R, G and B)."""
    import mediapipe as mp

    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels, dtype=np.uint8))


def whole_frame():
    """The region of interest an app passes when the recipe already made the frame the model's input."""
    from mediapipe.tasks.python.components.containers.rect import RectF
    from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions

    return ImageProcessingOptions(region_of_interest=RectF(left=0.0, top=0.0, right=1.0, bottom=1.0))


def scores_by_index(result, classes: int) -> tuple[np.ndarray, list[str | None]]:
    """Every class's score and label name, in the model's output order (MediaPipe sorts by score)."""
    scores = np.full(classes, np.nan, np.float32)
    names: list[str | None] = [None] * classes
    for category in result.classifications[0].categories:
        scores[category.index] = category.score
        names[category.index] = category.category_name
    return scores, names


def classify_pixels(model_path: Path, pixels: np.ndarray, latency_runs: int = 0) -> dict:
    """Scores (N, classes) of N model-size images, the label names MediaPipe read from the file, and the median
    time of one classify() call (seconds) over `latency_runs` calls on the first image."""
    with open_classifier(model_path) as classifier:
        roi = whole_frame()
        rows, names = [], None
        classes = None
        for image in pixels:
            result = classifier.classify(as_rgb_image(image), roi)
            classes = classes or len(result.classifications[0].categories)
            scores, found = scores_by_index(result, classes)
            rows.append(scores)
            names = names or found
        timings = []
        if latency_runs:
            image = as_rgb_image(pixels[0])
            for _ in range(10):
                classifier.classify(image, roi)
            for _ in range(latency_runs):
                started = time.perf_counter()
                classifier.classify(image, roi)
                timings.append(time.perf_counter() - started)
    return {"scores": np.stack(rows), "labels": names,
            "seconds_per_image": float(np.median(timings)) if timings else None}


def classify_photo(bundle_path: Path, photo: Path, model_file: str) -> dict:
    """An app's whole flow for one photo: the bundle's manifest gives the recipe, ondevice's decode_photo
    applies it, MediaPipe classifies the result."""
    from clients.ondevice import Bundle, decode_photo

    with Bundle(bundle_path) as bundle:
        height, width, _ = bundle.input_size
        pixels = decode_photo(photo.read_bytes(), height, width, bundle.color_mode, bundle.recipe)
        with open_classifier(bundle.read(model_file)) as classifier:
            result = classifier.classify(as_rgb_image(pixels), whole_frame())
    return {"model": model_file, "recipe": bundle.recipe,
            "categories": [{"label": c.category_name, "index": c.index, "percent": round(c.score * 100, 2)}
                           for c in result.classifications[0].categories]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", nargs=3, metavar=("MODEL", "PIXELS", "OUT"),
                        help="classify PIXELS.npy (N, H, W, 1 or 3 uint8) with MODEL.tflite; scores to OUT.npz")
    parser.add_argument("--latency-runs", type=int, default=0)
    parser.add_argument("bundle", nargs="?", type=Path, help="mobile_bundle.zip or its folder")
    parser.add_argument("photo", nargs="?", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the .tflite in the bundle (default {DEFAULT_MODEL})")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.scores:
        model, pixels, out = args.scores
        found = classify_pixels(Path(model), np.load(pixels), args.latency_runs)
        np.savez(out, scores=found["scores"], labels=np.array(found["labels"]),
                 seconds_per_image=np.float64(found["seconds_per_image"] or np.nan))
        return 0
    if args.bundle is None or args.photo is None:
        parser.error("give a bundle and a photo (or --scores MODEL PIXELS OUT)")
    answer = classify_photo(args.bundle, args.photo, args.model)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{args.photo.name} ({answer['model']}, input recipe {answer['recipe']}, MediaPipe ImageClassifier)")
        for category in answer["categories"]:
            print(f"  {category['label']:<14} {category['percent']:6.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
