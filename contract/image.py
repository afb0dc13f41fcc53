"""Any photo -> the model's input tensor. The one function every stage calls.

Training from folders, export calibration and parity, the service and the clients all decode
images through `decode_image`, so what the server sees is exactly what the model was trained on.

The rules, in order:
  1. Only well-known still-image formats are opened (JPEG, PNG, WebP, GIF, BMP, TIFF); for
     animated or multi-page files the first frame is used.
  2. The pixel count is checked from the header before anything is decoded (decompression bombs).
  3. JPEGs are decoded at reduced scale when the photo is much larger than the model input
     (libjpeg's DCT scaling): a 640x480 photo for a 28x28 model decodes at 80x60.
  4. EXIF orientation is applied.
  5. Colour: transparency is composited on white; palette, CMYK, 16-bit and float images are
     brought to 8-bit; then the image becomes greyscale ("L") or "RGB" as the model wants.
  6. The centre of the image is cropped to the model's aspect ratio and resized (bilinear,
     antialiased) to height x width. An image already at the model's size passes unchanged.

Returns a numpy array of shape (height, width, channels), dtype uint8, values 0-255.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

from contract.recipes import InputRecipe

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]

# Formats Pillow may use to open untrusted bytes. A short list keeps rarely used decoders
# (and their history of security bugs) away from uploads. Pillow's JPEG opener also opens MPO, the
# multi-picture JPEG some cameras write (its format then reads "MPO").
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# 64 megapixels: above every common phone camera (50 MP), far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000



class ImageError(ValueError):
    """The input is not an image this contract can turn into a tensor (HTTP 400)."""

    status = 400
    code = "invalid_image"


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (HTTP 413)."""

    status = 413
    code = "image_too_large"


def color_mode_for(channels: int) -> str:
    """Pillow mode for a channel count: 1 -> "L" (greyscale), 3 -> "RGB"."""
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), not {channels}")


def decode_image(
    source: ImageSource,
    height: int,
    width: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    recipe=None,
    notes: dict | None = None,
) -> np.ndarray:
    """Decode `source` (bytes, a path or a binary file) into a (height, width, channels) uint8 array, through
    the input recipe `recipe` (a manifest's input.recipe record, a name, or None for `crop`). `notes`, if given,
    receives what the recipe measured (product_photo: `photo_doubt`, for the out-of-distribution score).

    Raises ImageError (or its subclass ImageTooLarge) for anything that cannot be decoded;
    never anything else for bad bytes.
    """
    recipe = InputRecipe.parse(recipe)
    mode = color_mode_for(channels)
    opened = _open(source, max_pixels)
    image = opened
    try:
        image_width, image_height = image.size
        if image_width < 1 or image_height < 1:
            raise ImageError(f"The image is {image_width}x{image_height} pixels; it has no content.")
        if image_width * image_height > max_pixels:
            raise ImageTooLarge(
                f"The image is {image_width}x{image_height} = {image_width * image_height:,} pixels; "
                f"the limit is {max_pixels:,}. Send a smaller photo."
            )
        working_mode = recipe.working_mode(image.mode, mode)
        if image.format in ("JPEG", "MPO"):
            # Ask libjpeg for the smallest DCT scale that still leaves at least twice the model's
            # size in both directions (square request, so EXIF rotation cannot shrink it).
            side = recipe.draft_side(height, width)
            image.draft(working_mode, (side, side))
        try:
            image.load()
        except Image.DecompressionBombError:
            raise ImageTooLarge(f"The image has too many pixels; the limit is {max_pixels:,}.") from None
        except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types on bad bytes
            raise ImageError(f"The image data is damaged or truncated ({err}).") from None
        image = _apply_exif_orientation(image)
        image = _to_mode(image, working_mode)
        return recipe.apply(image, height, width, channels, notes)
    finally:
        opened.close()


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 pixels as a PNG file: lossless, decode_image gives them back."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(buffer,
                                                                                                     format="PNG")
    return buffer.getvalue()


def _open(source: ImageSource, max_pixels: int) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("The image is empty (0 bytes).")
        stream: BinaryIO | str | os.PathLike = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise ImageError(f"No image file at {source}.")
        stream = source
    else:
        stream = source
    try:
        image = Image.open(stream, formats=SUPPORTED_FORMATS)
        image.seek(0)  # first frame of animated GIF / WebP and multi-page TIFF
        return image
    except Image.DecompressionBombError:
        # Pillow's own guard fired while reading the header (more than twice Image.MAX_IMAGE_PIXELS).
        raise ImageTooLarge(
            f"The image has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; the limit is {max_pixels:,}. "
            "Send a smaller photo."
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"The data is not a {SUPPORTED_FORMATS_TEXT} image, or it is damaged."
        ) from None
    except Exception as err:  # noqa: BLE001 - header parsers of untrusted bytes raise many types
        raise ImageError(f"The image header could not be read ({err}).") from None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright photo
    except Exception:  # noqa: BLE001, S110 - malformed EXIF must not make a good picture unusable: keep it as stored
        pass
    return image


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Bring any Pillow mode to 8-bit "L" or "RGB", compositing transparency on white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (and 32-bit integer) greyscale: map 0-65535 onto 0-255.
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode == mode:
        return image
    if mode == "L" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, palette, YCbCr, LAB... go through RGB first
    return image.convert(mode)
