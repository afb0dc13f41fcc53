"""Input recipes: how a decoded photo becomes the model's input, a declarative part of every model.

The manifest records the recipe a model was trained with (`input.recipe`, e.g. {"name": "product_photo",
"version": 1}); decode_image applies it, in training, export, the service and the clients alike.

  crop           the centre of the photo, cropped to the input's aspect ratio and resized (bilinear,
                 antialiased). The default for folder datasets, and what every manifest of schema /1 means.
  pad            the whole photo, fitted inside the input and padded with its background colour.
  product_photo  the recipe Fashion-MNIST was made with (Xiao et al. 2017, section 2): trim the edges close
                 to the background colour, fit the longest edge, sharpen, centre on the canvas, negate,
                 greyscale. A photo of one garment on a plain light background becomes what the model was
                 trained on: a light garment centred on black. Made robust to what phones add:
                 - the background is a smooth surface fitted to the photo's border (lighting gradients, fall-off
                   towards the corners), not one corner colour;
                 - a pixel is the garment when it differs from that surface by more than the border's own
                   noise allows (JPEG noise, grain, a woven cloth) and by more than a soft shadow does (the
                   threshold is Otsu's split of the differences, never below 5 % of full scale, the paper's);
                 - specks are removed before the trim, so one dust mark does not widen it;
                 - intensities are divided by the local background brightness before negating, so a dim photo
                   gives the same garment as a bright one, and everything outside the garment becomes 0.
                 The background's polarity is detected, never assumed: on a dark background the photo is
                 trimmed, fitted and centred but not negated. An image that already looks like Fashion-MNIST
                 (the input's size, dark background) passes unchanged, bit for bit. Colour models get the
                 garment as photographed, trimmed, fitted and centred on its background colour (no negation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

RECIPES = ("crop", "pad", "product_photo")
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


def recipe_for(dataset: str, choice: str | None = "auto") -> str:
    """The recipe a run records for `choice` (auto: its dataset's own). Fashion-MNIST's images were made with
    product_photo, so photos must be too; folders of photos and CIFAR-10 crop."""
    if choice and choice != "auto":
        return choice
    return "product_photo" if dataset == "fashion_mnist" else "crop"


class RecipeError(ValueError):
    """An input recipe that this contract does not know."""


@dataclass(frozen=True)
class InputRecipe:
    name: str = "crop"
    version: int = 1

    @classmethod
    def parse(cls, value) -> "InputRecipe":
        """None (crop), a name, a manifest record {"name": ..., "version": ...} or an InputRecipe."""
        if value is None:
            return cls()
        if isinstance(value, InputRecipe):
            return value
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or value.get("name") not in RECIPES:
            raise RecipeError(f"unknown input recipe {value!r}; this version knows {', '.join(RECIPES)}")
        version = value.get("version", 1)
        if version != 1:
            raise RecipeError(f"input recipe {value['name']} version {version!r} is newer than this reader (1)")
        return cls(value["name"], 1)

    def as_manifest(self) -> dict:
        return {"name": self.name, "version": self.version}

    def working_mode(self, source_mode: str, model_mode: str) -> str:
        """The Pillow mode to decode into: the model's, except that product_photo finds the garment in colour
        (a red garment on a grey table can have the table's brightness), unless the photo is greyscale."""
        if self.name != "product_photo" or model_mode == "RGB":
            return model_mode
        return "L" if source_mode in ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F") else "RGB"

    def draft_side(self, height: int, width: int) -> int:
        """The smallest side a JPEG may be decoded at (libjpeg's DCT scaling) for this recipe to work well."""
        return WORKING_SCALE[self.name] * max(height, width)

    def apply(self, image: Image.Image, height: int, width: int, channels: int,
              notes: dict | None = None) -> np.ndarray:
        """A decoded image (mode "L" or "RGB", any size) -> (height, width, channels) uint8 pixels. `notes`, if
        given, receives what the recipe measured on the way (product_photo: `photo_doubt`)."""
        mode = "L" if channels == 1 else "RGB"
        if self.name == "crop":
            return _pixels(_crop_and_resize(image.convert(mode) if image.mode != mode else image, height, width),
                           height, width, channels)
        if self.name == "pad":
            return _pixels(_pad(image.convert(mode) if image.mode != mode else image, height, width),
                           height, width, channels)
        return product_photo(image, height, width, channels, notes)


def apply_recipe(pixels: np.ndarray, height: int, width: int, channels: int, recipe=None,
                 notes: dict | None = None) -> np.ndarray:
    """The recipe on pixels already decoded ((h, w) or (h, w, 1|3) uint8): what decode_image does after
    decoding. Other implementations of a recipe are checked against this one."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    return InputRecipe.parse(recipe).apply(image, height, width, channels, notes)


def _pixels(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def _crop_and_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    image_width, image_height = image.size
    if (image_width, image_height) == (width, height):
        return image
    target_ratio = width / height
    if image_width / image_height > target_ratio:  # too wide: crop the sides
        crop_width = image_height * target_ratio
        left = (image_width - crop_width) / 2
        box = (left, 0.0, left + crop_width, float(image_height))
    else:  # too tall: crop top and bottom
        crop_height = image_width / target_ratio
        top = (image_height - crop_height) / 2
        box = (0.0, top, float(image_width), top + crop_height)
    return image.resize((width, height), RESAMPLING, box=box, reducing_gap=REDUCING_GAP)


def _fit_size(size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(w, h) of `size` scaled to fit inside width x height, at least 1 x 1."""
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


# --- product_photo ------------------------------------------------------------------------------------

def product_photo(image: Image.Image, height: int, width: int, channels: int,
                  notes: dict | None = None) -> np.ndarray:
    notes = {} if notes is None else notes
    notes["photo_doubt"] = 0.0
    if image.mode not in ("L", "RGB") or (channels == 3 and image.mode != "RGB"):
        image = image.convert("RGB")
    if image.size == (width, height):  # at the input's size it already is an input...
        if channels == 3:
            return _pixels(image, height, width, 3)
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
    return _pixels(canvas, height, width, channels)


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
