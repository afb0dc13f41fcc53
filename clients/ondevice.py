"""The reference on-device client: classify photos with the mobile bundle alone, as an app does.

Needs only ai-edge-litert, numpy and Pillow, and nothing else from this repository: copy this one file
into an app project (or read it as the recipe for a Kotlin/Swift port). What it does, step by step:

  1. Open the bundle (mobile_bundle.zip, or the folder it was extracted into): manifest.json,
     labels.txt, the .tflite files and reference/ (sample PNGs and reference.json).
  2. Load one .tflite (default model_int8.tflite) and read the class names stored inside it (the
     flatbuffer's metadata entry "labels"); they must equal labels.txt and the manifest's labels.
  3. Decode the photo like the server does: first frame, EXIF orientation, transparency on white,
     greyscale or RGB as the manifest's input color_mode says, then the model's input recipe (the
     manifest's input.recipe: crop, pad, or product_photo, Fashion-MNIST's own: trim the background,
     fit, centre, negate, grey). Raw 0-255 pixels: scaling is inside the model.
  4. Quantize the pixels with the scale and zero-point of the model's input tensor (checked against
     the manifest), invoke, dequantize the output, and map it to the labels as percentages.
  5. Read the features the last layer used (an intermediate tensor) and score them with the bundle's
     out-of-distribution detector (ood*.npz): "this doesn't look like anything the model was trained on".

    python -m clients.ondevice mobile_bundle.zip shoe.jpg [--model model_float32.tflite] [--json]
    python -m clients.ondevice mobile_bundle.zip --verify     # the on-device self-check

`--verify` runs the bundle's reference samples through every .tflite (or the one given with --model)
and compares the outputs with reference.json within each file's tolerance: what an app should do
once after install or update, before trusting the model.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

DEFAULT_MODEL = "model_int8.tflite"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"
REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference/reference.json"
LABELS_METADATA = "labels"  # name of the .tflite metadata entry that holds labels.txt

# The input recipes, as contract/recipes.py defines them (this file's own copy: an app has no contract package).
RESAMPLING = Image.Resampling.BILINEAR
REDUCING_GAP = 3.0   # Pillow reduces by whole factors first (box filter), then resamples: fast and antialiased
TRIM_MIN_CONTRAST = 0.05   # the paper's "within 5 % of the maximum possible intensity"
BORDER_SHARE = 0.05        # the band of the photo taken as background, on each side
BORDER_CLUTTER_LIMIT = 0.4  # share of the border that is not background, above which a photo is no product photo
NOTHING_FOUND = 2.0         # the photo doubt of a photo in which nothing stands out from the background
CORNER_TOLERANCE = 0.2     # band pixels this far from the corners' colour are not taken for background at first
# How much larger than the model's input a photo is decoded (JPEG DCT scaling) and worked on: cropping needs
# twice the input's size; finding a garment's straps and handles in a product photo needs more.
# (Measured on generated product photos: working at 3, 4 or 6 times found no better garments than at 2.)
WORKING_SCALE = {"crop": 2, "pad": 2, "product_photo": 2}
SPECK_SHARE = 0.004        # mask components smaller than this share of the picture are specks
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")

BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉"
# The still-image formats the service accepts; other Pillow decoders stay closed to untrusted files.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BundleError(Exception):
    """The bundle is missing a file, inconsistent, or a model in it cannot be loaded."""


class PhotoError(ValueError):
    """The photo cannot be decoded."""


# --- the bundle ------------------------------------------------------------------------------------


class Bundle:
    """The files of a mobile bundle, from the zip or from the folder it was extracted into."""

    def __init__(self, location: str | Path):
        self.location = Path(location)
        if self.location.is_dir():
            self._files = {p.relative_to(self.location).as_posix(): p for p in self.location.rglob("*") if p.is_file()}
            self._zip = None
        elif zipfile.is_zipfile(self.location):
            self._zip = zipfile.ZipFile(self.location)
            self._files = {name: name for name in self._zip.namelist() if not name.endswith("/")}
        elif self.location.exists():
            raise BundleError(f"{self.location} is neither a zip file nor a folder; pass mobile_bundle.zip "
                              f"or the folder it was extracted into.")
        else:
            raise BundleError(f"{self.location} does not exist.")
        for required in (MANIFEST_FILE, LABELS_FILE):
            if required not in self._files:
                raise BundleError(f"{self.location} has no {required}; it is not a pocketcnn mobile bundle.")
        try:
            self.manifest = json.loads(self.read(MANIFEST_FILE))
            self.labels = self.read(LABELS_FILE).decode("utf-8").splitlines()
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{self.location}: {MANIFEST_FILE} or {LABELS_FILE} cannot be read ({err}).") from None
        if self.manifest.get("labels") != self.labels:
            raise BundleError(f"{self.location}: {LABELS_FILE} and the manifest's labels differ.")
        shape = self.manifest.get("input", {}).get("shape")
        if not (isinstance(shape, list) and len(shape) == 4):
            raise BundleError(f"{self.location}: the manifest's input.shape is not [batch, height, width, channels].")

    @property
    def input_size(self) -> tuple[int, int, int]:
        _, height, width, channels = self.manifest["input"]["shape"]
        return int(height), int(width), int(channels)

    @property
    def recipe(self) -> str:
        """How a photo becomes the input (the manifest's input.recipe; manifests of schema /1 crop)."""
        if self.manifest.get("schema") == "pocketcnn.manifest/1":
            return "crop"
        return str((self.manifest["input"].get("recipe") or {}).get("name", "crop"))

    @property
    def color_mode(self) -> str:
        """Pillow mode of the model input: "L" for greyscale models, "RGB" for colour ones."""
        declared = self.manifest["input"].get("color_mode")
        if declared is None:
            declared = "grayscale" if self.input_size[2] == 1 else "rgb"
        modes = {"grayscale": "L", "rgb": "RGB"}
        if declared not in modes:
            raise BundleError(f"{self.location}: unknown input color_mode '{declared}' in the manifest.")
        return modes[declared]

    def names(self) -> list[str]:
        return sorted(self._files)

    def tflite_files(self) -> list[str]:
        return [name for name in self.names() if name.endswith(".tflite") and "/" not in name]

    def read(self, name: str) -> bytes:
        if name not in self._files:
            raise BundleError(f"{self.location} has no {name} (it holds: {', '.join(self.names())}).")
        if self._zip is not None:
            return self._zip.read(name)
        return Path(self._files[name]).read_bytes()

    def artifact_for(self, model_file: str) -> tuple[str, dict]:
        """(manifest key, manifest entry) of the artifact stored as `model_file`."""
        for key, artifact in self.manifest.get("artifacts", {}).items():
            if artifact.get("file") == model_file:
                return key, artifact
        raise BundleError(f"the manifest describes no artifact stored as {model_file}; "
                          f"models in this bundle: {', '.join(self.tflite_files())}")

    def reference(self) -> dict:
        return json.loads(self.read(REFERENCE_FILE))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_embedded_labels(tflite: bytes) -> list[str] | None:
    """The labels stored in the .tflite's metadata table under "labels", or None if there are none."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(tflite, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if (entry.Name() or b"").decode("utf-8") != LABELS_METADATA:
                continue
            buffer = model.Buffers(entry.Buffer())
            data = buffer.DataAsNumpy()
            if isinstance(data, np.ndarray) and data.size:
                raw = data.tobytes()
            elif buffer.Offset() > 1:  # large models keep buffers after the flatbuffer, addressed by offset
                raw = tflite[buffer.Offset(): buffer.Offset() + buffer.Size()]
            else:
                raw = b""
            return raw.decode("utf-8").splitlines()
    except (IndexError, ValueError, UnicodeDecodeError) as err:  # flatbuffers raise these on damaged bytes
        raise BundleError(f"the .tflite file's metadata cannot be read ({err})") from None
    return None


# --- the photo -------------------------------------------------------------------------------------


def decode_photo(source: str | Path | bytes, height: int, width: int, mode: str, recipe: str = "crop",
                 notes: dict | None = None) -> np.ndarray:
    """A photo -> (height, width, channels) uint8 pixels, by the same rules as the service: first frame, EXIF
    orientation, transparency on white, then the model's input recipe (crop, pad or product_photo). `notes`
    receives what the recipe measured (product_photo: photo_doubt, for the out-of-distribution score)."""
    if recipe not in WORKING_SCALE:
        raise BundleError(f"unknown input recipe {recipe!r} in the manifest (this client knows: "
                          f"{', '.join(WORKING_SCALE)}); use a newer client")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                           formats=PHOTO_FORMATS)
        image.seek(0)  # the first frame of an animated GIF/WebP or a multi-page TIFF
        working = mode if recipe != "product_photo" or mode == "RGB" else (
            "L" if image.mode in GREY_MODES else "RGB")
        if image.format in ("JPEG", "MPO"):
            # Let the JPEG decoder skip detail the model cannot see (as the service does): decode at the
            # smallest scale that keeps at least twice the model's size.
            image.draft(working, (WORKING_SCALE[recipe] * max(height, width),) * 2)
        image.load()
    except FileNotFoundError:
        raise PhotoError(f"{source}: no such file") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on bad bytes
        raise PhotoError(f"not a photo this client can read ({err})") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001, S110 - malformed EXIF must not make a good picture unusable: keep it as stored
        pass
    image = _to_mode(image, working)
    channels = 1 if mode == "L" else 3
    if recipe == "product_photo":
        return _product_photo(image, height, width, channels, notes)
    fitted = _crop_and_resize(image, height, width) if recipe == "crop" else _pad(image, height, width)
    return np.asarray(fitted, dtype=np.uint8).reshape(height, width, channels)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit greyscale: 0-65535 onto 0-255
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values *= 255.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as on a white app background (and as the service does).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode == mode:
        return image
    if mode == "L" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, palette, YCbCr... to RGB first, then to grey
    return image.convert(mode)


def _crop_and_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    image_width, image_height = image.size
    target = width / height
    if image_width / image_height > target:  # wider than the model's input: crop the sides
        crop = image_height * target
        box = ((image_width - crop) / 2, 0.0, (image_width + crop) / 2, float(image_height))
    else:  # taller: crop top and bottom
        crop = image_width / target
        box = (0.0, (image_height - crop) / 2, float(image_width), (image_height + crop) / 2)
    # reducing_gap=3.0 is the service's setting: same pixels here and there for large photos.
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


def _fit_size(size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    scale = min(width / size[0], height / size[1])
    return max(1, min(width, round(size[0] * scale))), max(1, min(height, round(size[1] * scale)))


def _pad(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = tuple(int(v) for v in np.median(border, axis=0).reshape(-1)) if pixels.ndim == 3 else \
        int(np.median(border))
    fitted = image.resize(_fit_size(image.size, height, width), RESAMPLING, reducing_gap=REDUCING_GAP)
    canvas = Image.new(image.mode, (width, height), colour)
    canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return canvas


def _product_photo(image: Image.Image, height: int, width: int, channels: int,
                   notes: dict | None = None) -> np.ndarray:
    """Fashion-MNIST's own recipe, made robust to phone photos: see contract/recipes.py, of which this is a copy."""
    notes = {} if notes is None else notes
    notes["photo_doubt"] = 0.0
    if image.mode not in ("L", "RGB") or (channels == 3 and image.mode != "RGB"):
        image = image.convert("RGB")
    if image.size == (width, height):  # at the input's size it already is an input...
        if channels == 3:
            return np.asarray(image, dtype=np.uint8).reshape(height, width, 3)
        pixels = np.asarray(image if image.mode == "L" else image.convert("L"))
        if _border_median(pixels) < 128:  # ...when it is a light garment on black, as Fashion-MNIST's are
            return pixels.reshape(height, width, 1)
    # Work at two to four times the input's size: the trim needs no more (the JPEG decoder's own scaling
    # usually delivered about that already; Pillow's reduce is a fast box filter for other formats).
    factor = max(image.size) // (WORKING_SCALE["product_photo"] * max(height, width))
    if factor >= 2:
        image = image.reduce(factor)
    rgb = np.asarray(image, dtype=np.float32)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    background = _background(rgb)
    light = float(_luma(background[_band(rgb.shape[:2])]).mean()) >= 128
    mask, strength, clutter = _garment(rgb, background, light)
    # How far the photo is from one garment on a plain background (contract/ood.py): 1 when the share of its border
    # that is not background reaches BORDER_CLUTTER_LIMIT (a scene, not a product photo); NOTHING_FOUND when
    # nothing stands out from the background at all (an empty table, a blank page: there is no garment).
    notes["photo_doubt"] = NOTHING_FOUND if not mask.any() else clutter / BORDER_CLUTTER_LIMIT
    box = Image.fromarray(mask.view(np.uint8) * 255, "L").getbbox() or (0, 0, image.width, image.height)
    if channels == 1:
        crop = Image.fromarray(strength.astype(np.uint8), "L").crop(box)
        fill: int | tuple[int, ...] = 0
    else:  # colour models: the garment as photographed, framed the same way, on its own background colour
        crop = image.crop(box)
        fill = tuple(int(v) for v in background[_band(rgb.shape[:2])].mean(axis=0).clip(0, 255).round())
    fitted = crop.resize(_fit_size(crop.size, height, width), RESAMPLING, reducing_gap=REDUCING_GAP)
    if light and channels == 1:  # the paper's sharpening (Gaussian, radius and sigma 1), on product photos
        fitted = fitted.filter(ImageFilter.UnsharpMask(radius=1, percent=60, threshold=0))
    canvas = Image.new("L" if channels == 1 else "RGB", (width, height), fill)
    canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return np.asarray(canvas, dtype=np.uint8).reshape(height, width, channels)


def _luma(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[-1] == 1:
        return rgb[..., 0]
    return rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def _border_median(pixels: np.ndarray) -> float:
    return float(np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])))


@functools.lru_cache(maxsize=16)
def _band(shape: tuple[int, int]) -> np.ndarray:
    """The band along the four edges taken to show the background (a boolean mask, cached per size)."""
    h, w = shape
    b = max(1, int(round(BORDER_SHARE * min(h, w))))
    band = np.zeros((h, w), dtype=bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    band.flags.writeable = False
    return band


@functools.lru_cache(maxsize=16)
def _surface_basis(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For a picture of `shape`: the quadratic surface's terms (1, x, y, x^2, y^2, xy) at every pixel, and at
    the band's pixels (cached: phones send the same size again and again)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    basis = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], axis=-1)
    design = basis[_band(shape)]
    basis.flags.writeable = design.flags.writeable = False
    return basis, design


def _background(rgb: np.ndarray) -> np.ndarray:
    """A smooth surface per channel fitted to the background, from the border band: first the pixels near the
    corners' colour (the paper's "corner pixels": a garment filling the frame still leaves the corners), then
    again without the band pixels that fit explains worst (where the garment reaches the edge). This runs on
    every upload: few numpy calls, normal equations for the 6-term fit."""
    shape = rgb.shape[:2]
    samples = rgb[_band(shape)]
    if len(samples) < 12:  # a tiny picture: its median colour
        return np.broadcast_to(_median(rgb.reshape(-1, rgb.shape[-1])), rgb.shape).astype(np.float32)
    corner = _median(rgb[_corners(shape)])
    keep = np.abs(samples - corner).max(axis=1) <= 255 * CORNER_TOLERANCE
    if keep.sum() < 12:
        keep[:] = True
    basis, design = _surface_basis(shape)
    coefficients = _fit(design, samples, keep)
    residual = np.abs(design @ coefficients - samples).max(axis=1)
    tighter = residual <= max(3 * 1.4826 * float(_median(residual[keep])), 255 * TRIM_MIN_CONTRAST)
    if 12 <= tighter.sum() and not np.array_equal(tighter, keep):
        coefficients = _fit(design, samples, tighter)
    return basis @ coefficients


def _fit(design: np.ndarray, samples: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Least squares of `samples` on `design` over the rows in `keep` (normal equations: 6 terms)."""
    rows = design[keep]
    normal = rows.T @ rows + np.eye(rows.shape[1], dtype=np.float32) * 1e-6
    return np.linalg.solve(normal, rows.T @ samples[keep]).astype(np.float32)


def _median(values: np.ndarray) -> np.ndarray | float:
    """The (lower) median along the first axis: np.partition, without np.median's overhead (it runs per upload)."""
    middle = (len(values) - 1) // 2
    return np.partition(values, middle, axis=0)[middle]


@functools.lru_cache(maxsize=16)
def _corners(shape: tuple[int, int]) -> np.ndarray:
    """The four corner squares of the band (a boolean mask, cached per size)."""
    h, w = shape
    b = max(1, int(round(BORDER_SHARE * min(h, w))))
    corners = np.zeros((h, w), dtype=bool)
    corners[:b, :b], corners[:b, -b:], corners[-b:, :b], corners[-b:, -b:] = True, True, True, True
    corners.flags.writeable = False
    return corners


def _garment(rgb: np.ndarray, background: np.ndarray, light: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Where the garment is (a boolean mask), how strongly each pixel shows it (0..255, 0 outside), and the share
    of the border that is not background (near 0 for a product photo; most of it for a scene: contract/ood.py)."""
    difference = np.abs(rgb - background).max(axis=-1)
    band = difference[_band(rgb.shape[:2])]
    clutter = float((band > 255 * TRIM_MIN_CONTRAST).mean())
    quartiles = [len(band) // 4, len(band) // 2, 3 * len(band) // 4]
    low, middle, high = np.partition(band, quartiles)[quartiles]
    noise = (high - low) / 1.349  # the spread of the background's own texture and JPEG noise
    threshold = max(255 * TRIM_MIN_CONTRAST, middle + 4 * noise, 0.5 * _otsu(difference))
    mask = _without_specks(difference > threshold)
    luma, base = _luma(rgb), np.maximum(_luma(background), 1.0)
    if light:
        strength = np.clip(1.0 - luma / base, 0.0, 1.0)  # negated, relative to the local light
    else:
        strength = np.clip((luma - base) / np.maximum(255.0 - base, 1.0), 0.0, 1.0)
    # Inside the garment the strength itself (x 255); outside it 0; on its outline, between (a 3x3 box blur
    # of the mask, tripled: a pixel with three of its nine neighbours in the garment keeps its full strength).
    soft = np.asarray(Image.fromarray(mask.view(np.uint8) * 255, "L").filter(ImageFilter.BoxBlur(1)), np.float32)
    return mask, strength * np.minimum(soft * 3.0, 255.0), clutter


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of `values` (0..255): the split that best separates two groups."""
    histogram = np.bincount(np.minimum(values, 255).astype(np.int64).ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * np.arange(256))
    between = (mean[-1] * weight - mean * weight[-1]) ** 2 / np.maximum(weight * (weight[-1] - weight), 1e-9)
    return float(np.argmax(between[:-1]))


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """The mask without specks: pixels with fewer than two neighbours go (noise, dust; a strap or a handle a
    pixel wide stays, it is a line), then rows and columns far from the main mass (a mark beside the garment)."""
    padded = np.pad(mask, 1).view(np.uint8)
    h, w = mask.shape
    neighbours = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    mask = mask & (neighbours >= 3)
    if not mask.any():
        return mask
    minimum = max(1, int(SPECK_SHARE * max(mask.shape)))
    rows, cols = _main_run(mask.sum(axis=1) >= minimum), _main_run(mask.sum(axis=0) >= minimum)
    return mask & rows[:, None] & cols[None, :]


def _main_run(flags: np.ndarray) -> np.ndarray:
    """The span of the largest group of set flags, where flags separated by gaps shorter than a tenth of the
    length are one group (a sandal's straps are one garment)."""
    indices = np.flatnonzero(flags)
    if len(indices) == 0:
        return flags
    breaks = np.flatnonzero(np.diff(indices) > max(2, len(flags) // 10))
    starts, ends = np.r_[0, breaks + 1], np.r_[breaks, len(indices) - 1]
    best = int(np.argmax(indices[ends] - indices[starts]))
    kept = np.zeros_like(flags)
    kept[indices[starts[best]]: indices[ends[best]] + 1] = True
    return kept


# --- the model -------------------------------------------------------------------------------------


class Classifier:
    """One .tflite from a bundle, ready to classify photos."""

    def __init__(self, bundle: Bundle, model_file: str = DEFAULT_MODEL, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.bundle = bundle
        self.model_file = model_file
        self.key, self.artifact = bundle.artifact_for(model_file)
        self.model_bytes = bundle.read(model_file)
        self.detector = Detector.from_bundle(bundle, self.artifact)
        try:
            # The detector reads the features, an intermediate tensor: LiteRT keeps those only when asked to.
            self.interpreter = Interpreter(model_content=self.model_bytes, num_threads=threads,
                                           experimental_preserve_all_tensors=self.detector is not None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BundleError(f"LiteRT cannot load {model_file}: {err}") from None
        if self.detector is not None:
            index = features_tensor(self.model_bytes)
            details = next(t for t in self.interpreter.get_tensor_details() if t["index"] == index)
            self.features = (index, _tensor_quantization(details))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_quantization = _tensor_quantization(self.input)
        self.output_quantization = _tensor_quantization(self.output)
        if tuple(int(v) for v in self.input["shape"][1:]) != bundle.input_size:
            raise BundleError(f"{model_file} takes input {list(self.input['shape'])}, the manifest says "
                              f"{bundle.manifest['input']['shape']}")
        # The tensor's own quantization is what the model needs; a manifest that disagrees was written for
        # another file, and an app that trusted it would feed wrong numbers.
        for side, found in (("input", self.input_quantization), ("output", self.output_quantization)):
            declared = self.artifact.get(side, {}).get("quantization")
            if not _same_quantization(found, declared):
                raise BundleError(f"{model_file}: the {side} tensor's quantization {found} differs from the "
                                  f"manifest's {declared}")
        self.embedded_labels = read_embedded_labels(self.model_bytes)
        if self.embedded_labels is not None and self.embedded_labels != bundle.labels:
            raise BundleError(f"{model_file} carries labels {self.embedded_labels}, but {LABELS_FILE} "
                              f"says {bundle.labels}")
        self.labels = self.embedded_labels or bundle.labels
        classes = int(self.output["shape"][-1])
        if classes != len(self.labels):
            raise BundleError(f"{model_file} has {classes} outputs for {len(self.labels)} labels")

    def decode(self, photo: str | Path | bytes, notes: dict | None = None) -> np.ndarray:
        height, width, _ = self.bundle.input_size
        return decode_photo(photo, height, width, self.bundle.color_mode, self.bundle.recipe, notes)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(height, width, channels) uint8 pixels -> float32 probabilities, one per label."""
        tensor = _quantize(pixels[np.newaxis], np.dtype(self.input["dtype"]), self.input_quantization)
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])[0]
        return _dequantize(raw, self.output_quantization)

    def ood_score(self, photo_doubt: float = 0.0) -> float | None:
        """The out-of-distribution score of the image the model last ran on (None without a detector)."""
        if self.detector is None:
            return None
        index, quantization = self.features
        features = _dequantize(self.interpreter.get_tensor(index).reshape(1, -1), quantization)
        return self.detector.score(features, photo_doubt if self.bundle.recipe == "product_photo" else None)

    def classify(self, photo: str | Path | bytes) -> dict:
        """Every label with its percentage, most likely first (ties: lower index first, like argmax), and whether
        the photo looks like anything the model was trained on, as the service answers."""
        notes: dict = {}
        probabilities = self.probabilities(self.decode(photo, notes))
        score = self.ood_score(notes.get("photo_doubt", 0.0))
        total = float(probabilities.sum())
        # int8 outputs come in steps of 1/256 and need not add up to exactly 1: show shares of the total.
        shares = probabilities / total if total > 0 else probabilities
        order = sorted(range(len(shares)), key=lambda i: (-float(shares[i]), i))
        return {"predictions": [{"label": self.labels[i], "index": i, "percent": round(float(shares[i]) * 100, 2)}
                                for i in order],
                "out_of_distribution": None if score is None else bool(score > 1.0),
                "ood_score": None if score is None else round(score, 4)}

    def describe(self) -> dict:
        return {"name": self.bundle.manifest.get("name"), "version": self.bundle.manifest.get("version"),
                "format": self.key, "file": self.model_file}


# --- "this doesn't look like anything I was trained on" (a copy of contract/ood.py's scoring) ----------------

@dataclass
class Detector:
    """The relative Mahalanobis distance of the features to the training data, on the file's validation scale."""

    class_means: np.ndarray
    class_factor: np.ndarray
    global_mean: np.ndarray
    global_factor: np.ndarray
    center: float
    threshold: float

    @classmethod
    def from_bundle(cls, bundle: "Bundle", artifact: dict) -> "Detector | None":
        entry = artifact.get("ood")
        if not entry:
            return None  # a bundle exported before the detector
        data = bundle.read(entry["detector"])
        if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"{entry['detector']} differs from the manifest's sha256: the detector was changed")
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return cls(stored["class_means"], stored["class_factor"], stored["global_mean"], stored["global_factor"],
                       float(entry["center"]), float(entry["threshold"]))

    def score(self, features: np.ndarray, photo_doubt: float | None = None) -> float:
        features = features.astype(np.float32)
        projected = features @ self.class_factor
        means = self.class_means @ self.class_factor
        to_class = ((projected[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1).min(axis=1)
        to_all = (((features - self.global_mean) @ self.global_factor) ** 2).sum(axis=-1)
        score = float(((to_class - to_all) - self.center)[0] / (self.threshold - self.center))
        if photo_doubt is not None:
            score = max(score, photo_doubt)
        return max(score, 0.0)


def features_tensor(tflite: bytes) -> int:
    """The features' tensor: the input of the FULLY_CONNECTED operator whose output the SOFTMAX reads."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    producer, softmax_input = {}, None
    for i in range(graph.OperatorsLength()):
        operator = graph.Operators(i)
        code = model.OperatorCodes(operator.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        for output in operator.OutputsAsNumpy():
            producer[int(output)] = (kind, operator)
        if kind == "SOFTMAX":
            softmax_input = int(operator.InputsAsNumpy()[0])
    kind, operator = producer.get(softmax_input, (None, None))
    while kind in ("QUANTIZE", "DEQUANTIZE", "RESHAPE"):
        kind, operator = producer.get(int(operator.InputsAsNumpy()[0]), (None, None))
    if kind != "FULLY_CONNECTED":
        raise BundleError("the .tflite file has no softmax after a fully connected layer: no features to read")
    return int(operator.InputsAsNumpy()[0])


def _tensor_quantization(details: dict) -> dict | None:
    scale, zero_point = details["quantization"]
    return None if scale == 0.0 else {"scale": float(scale), "zero_point": int(zero_point)}


def _same_quantization(found: dict | None, declared: dict | None) -> bool:
    if found is None or declared is None:
        return found is None and declared is None
    return (abs(found["scale"] - float(declared["scale"])) <= 1e-6 * abs(found["scale"])
            and found["zero_point"] == int(declared["zero_point"]))


def _quantize(pixels: np.ndarray, dtype: np.dtype, quantization: dict | None) -> np.ndarray:
    """0-255 pixels -> what the input tensor holds: real value = scale * (q - zero_point)."""
    if quantization is None:  # float model: the pixels themselves
        return pixels.astype(dtype)
    limits = np.iinfo(dtype)
    values = np.round(pixels.astype(np.float32) / quantization["scale"] + quantization["zero_point"])
    return np.clip(values, limits.min, limits.max).astype(dtype)


def _dequantize(values: np.ndarray, quantization: dict | None) -> np.ndarray:
    if quantization is None:
        return values.astype(np.float32)
    return (values.astype(np.float32) - quantization["zero_point"]) * quantization["scale"]


# --- the self-check --------------------------------------------------------------------------------


@dataclass
class ModelCheck:
    model_file: str
    key: str = ""
    tolerance: float | None = None
    max_abs_diff: float | None = None
    samples: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {"model_file": self.model_file, "format": self.key, "passed": self.passed, "samples": self.samples,
                "tolerance": self.tolerance, "max_abs_diff": self.max_abs_diff, "failures": self.failures}


def verify_bundle(bundle: Bundle, model_files: list[str] | None = None) -> list[ModelCheck]:
    """Run the reference samples through each model and compare with reference.json (and the file's
    sha256 with the manifest's). One ModelCheck per model; a model that cannot load fails its check."""
    reference = bundle.reference()
    checks = []
    for model_file in model_files or bundle.tflite_files():
        check = ModelCheck(model_file)
        checks.append(check)
        try:
            classifier = Classifier(bundle, model_file)
        except BundleError as err:
            check.failures.append(str(err))
            continue
        check.key = classifier.key
        digest = hashlib.sha256(classifier.model_bytes).hexdigest()
        if digest != classifier.artifact.get("sha256"):
            check.failures.append(f"sha256 {digest[:12]}... differs from the manifest's "
                                  f"{str(classifier.artifact.get('sha256'))[:12]}...: the file was changed")
        expected_key = reference.get("compare_with", {}).get(check.key)
        check.tolerance = reference.get("tolerance", {}).get(check.key)
        if expected_key is None or check.tolerance is None:
            check.failures.append(f"reference.json has no expected outputs or tolerance for {check.key}")
            continue
        worst = 0.0
        for sample in reference.get("samples", []):
            name = sample["file"]
            try:
                pixels = classifier.decode(bundle.read(f"{REFERENCE_DIR}/{name}"))
            except (BundleError, PhotoError) as err:
                check.failures.append(f"{name}: {err}")
                continue
            first = classifier.probabilities(pixels)
            again = classifier.probabilities(pixels)
            expected = np.asarray(sample["expected"][expected_key], dtype=np.float32)
            difference = float(np.abs(first - expected).max())
            worst = max(worst, difference)
            check.samples += 1
            if not np.array_equal(first, again):
                check.failures.append(f"{name}: two runs gave different outputs (the model is not deterministic)")
            if difference > check.tolerance:
                check.failures.append(f"{name}: outputs differ from the reference by {difference:.4g} "
                                      f"(tolerance {check.tolerance:.4g})")
            if int(first.argmax()) != int(expected.argmax()):
                check.failures.append(f"{name}: top class {classifier.labels[int(first.argmax())]!r}, reference "
                                      f"{classifier.labels[int(expected.argmax())]!r}")
        check.max_abs_diff = worst
        if check.samples == 0 and not check.failures:
            check.failures.append("reference.json lists no samples")
    return checks


# --- command line ----------------------------------------------------------------------------------


def bar(percent: float, width: int = BAR_WIDTH) -> str:
    eighths = round(max(0.0, min(100.0, percent)) / 100 * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


NOT_KNOWN = "This doesn't look like anything the model was trained on"


def format_answer(photo: str, model: dict, answer: dict) -> str:
    predictions = answer["predictions"]
    width = max(len(p["label"]) for p in predictions)
    lines = [f"{photo}: {model['name']} v{model['version']} ({model['format']}, on device)"]
    if answer.get("out_of_distribution"):
        lines.append(f"  {NOT_KNOWN} (score {answer['ood_score']}; the percentages are what it would answer)")
    lines += [f"  {p['label']:<{width}}  {p['percent']:6.2f} %  {bar(p['percent'])}".rstrip() for p in predictions]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.ondevice",
        description="Classify photos on this machine with a pocketcnn mobile bundle, exactly as a phone app "
                    "does (LiteRT, no server, no TensorFlow), or run the bundle's self-check with --verify.",
        epilog="Exit status: 0 success; 1 a photo could not be read or the self-check failed; "
               "2 bad arguments or an unusable bundle.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="mobile_bundle.zip, or the folder it was extracted into")
    parser.add_argument("photos", nargs="*", metavar="PHOTO", help="photos to classify")
    parser.add_argument("--model", metavar="FILE",
                        help=f"the .tflite in the bundle to use (default: {DEFAULT_MODEL}; with --verify: all)")
    parser.add_argument("--verify", action="store_true",
                        help="run the bundle's reference samples and compare with reference.json")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not args.verify and not args.photos:
        print("error: give at least one PHOTO to classify, or --verify", file=sys.stderr)
        return 2
    try:
        bundle = Bundle(args.bundle)
    except (BundleError, OSError, zipfile.BadZipFile) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.verify:
            return _verify(bundle, args)
        return _classify(bundle, args)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        bundle.close()


def _verify(bundle: Bundle, args) -> int:
    checks = verify_bundle(bundle, [args.model] if args.model else None)
    if args.json:
        print(json.dumps({"passed": all(c.passed for c in checks), "models": [c.as_dict() for c in checks]}))
    else:
        for check in checks:
            status = "passed" if check.passed else "FAILED"
            detail = (f"{check.samples} samples, max diff {check.max_abs_diff:.2e} <= {check.tolerance:.2e}"
                      if check.passed else "")
            print(f"{check.model_file:<28} {status}  {detail}".rstrip())
            for failure in check.failures:
                print(f"    ! {failure}")
    return 0 if checks and all(c.passed for c in checks) else 1


def _classify(bundle: Bundle, args) -> int:
    classifier = Classifier(bundle, args.model or DEFAULT_MODEL)
    unreadable = 0
    for index, photo in enumerate(args.photos):
        try:
            answer = classifier.classify(photo)
        except PhotoError as err:
            print(f"{photo}: {err}", file=sys.stderr)
            unreadable += 1
            continue
        if args.json:
            print(json.dumps({"photo": photo, "model": classifier.describe(), **answer}, ensure_ascii=False))
        else:
            print(("\n" if index else "") + format_answer(photo, classifier.describe(), answer))
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
