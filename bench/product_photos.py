"""Product-style photos made from held-out Fashion-MNIST images, as a phone photographs a garment on a table.

Fashion-MNIST was made from product photos (a garment on a light background): trimmed, fitted, centred,
negated and made grey. This turns one of its 28x28 images back into such a photo, with what phones add:
a dark garment of some colour on a light background with a lighting gradient and fall-off towards the
corners, a woven or grainy texture, a soft shadow beside the garment, the garment tilted a few degrees,
off-centre, filling from a third to most of the frame, JPEG noise. Seeded: the same index and seed give
the same bytes.

    from bench.product_photos import product_photo
    jpeg = product_photo(image_28x28, seed=7)          # bytes of a 640x480 JPEG (or another size)
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

SIZES = ((640, 480), (480, 640), (800, 600), (720, 720))


def product_photo(image: np.ndarray, seed: int, size: tuple[int, int] | None = None, quality: int | None = None,
                  conditions: dict | None = None) -> bytes:
    """A JPEG photo of the garment in `image` (28x28 or 28x28x1 uint8, light on black).

    `conditions` fixes any of the random choices (for tests of one condition at a time): fill, tilt,
    offset, shadow, gradient, falloff, texture, tint, background, quality."""
    rng = np.random.default_rng(seed)
    width, height = size or SIZES[rng.integers(len(SIZES))]
    c = {
        "fill": rng.uniform(0.34, 0.9),            # the garment's long edge, as a share of the frame's short edge
        "tilt": rng.uniform(-6, 6),                 # degrees
        "offset": rng.uniform(-1, 1, 2),            # share of the free space, each axis
        "shadow": rng.uniform(0.0, 0.3),            # darkening of the soft shadow
        "gradient": rng.uniform(-0.12, 0.12, 2),    # lighting gradient across the frame, each axis
        "falloff": rng.uniform(0.0, 0.25),          # darkening at the corners
        "texture": rng.choice(["grain", "weave", "smooth"]),
        "tint": rng.uniform(0.05, 0.55, 3),         # the garment's colour (dark: Fashion-MNIST's garments are)
        "background": rng.uniform(205, 250) * (1 + rng.uniform(-0.04, 0.04, 3)),  # light, slightly coloured
        "quality": int(rng.integers(70, 96)),
    }
    c.update(conditions or {})

    garment = np.asarray(image, dtype=np.float64).reshape(28, 28) / 255.0   # 1 where the garment is opaque
    long_edge = max(8, int(round(c["fill"] * min(width, height))))
    picture = Image.fromarray((garment * 255).astype(np.uint8), "L").resize((long_edge, long_edge), Image.BICUBIC)
    picture = picture.rotate(c["tilt"], resample=Image.BICUBIC, expand=True)
    alpha = np.asarray(picture, dtype=np.float64) / 255.0
    h, w = alpha.shape
    top = int((height - h) / 2 * (1 + c["offset"][1] * 0.9))
    left = int((width - w) / 2 * (1 + c["offset"][0] * 0.9))
    top, left = max(-h // 8, min(top, height - h + h // 8)), max(-w // 8, min(left, width - w + w // 8))

    yy, xx = np.mgrid[0:height, 0:width]
    u, v = xx / width - 0.5, yy / height - 0.5
    light = 1 + c["gradient"][0] * u * 2 + c["gradient"][1] * v * 2
    light *= 1 - c["falloff"] * (u ** 2 + v ** 2) / 0.5
    # One plane per colour channel (numpy is slow on a short last axis), the same arithmetic element by element.
    background = [float(value) * light for value in np.asarray(c["background"], dtype=np.float64)]
    if c["texture"] == "grain":
        grain = rng.normal(0, 5, (height, width))
        background = [plane + grain for plane in background]
    elif c["texture"] == "weave":
        period = rng.uniform(3, 7)
        weave = np.sin(xx / period * np.pi) * np.sin(yy / period * np.pi)
        texture = 5 * weave + rng.normal(0, 2, (height, width))
        background = [plane + texture for plane in background]

    def placed(layer: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
        canvas = np.zeros((height, width))
        y0, x0 = top + dy, left + dx
        ys, xs = slice(max(0, y0), min(height, y0 + h)), slice(max(0, x0), min(width, x0 + w))
        canvas[ys, xs] = layer[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        return canvas

    blur = max(2.0, long_edge / 40)
    shadow = Image.fromarray((placed(alpha, int(long_edge * 0.04), int(long_edge * 0.05)) * 255).astype(np.uint8))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64) / 255.0
    shade = 1 - c["shadow"] * shadow
    opacity = placed(alpha)
    clear = 1 - opacity
    cloth = rng.normal(0, 3, (height, width))
    tint = 255 * np.asarray(c["tint"], dtype=np.float64)
    planes = [(plane * shade) * clear + (float(t) * light + cloth) * opacity
              for plane, t in zip(background, tint, strict=True)]
    photo = np.stack([np.clip(plane, 0, 255).round().astype(np.uint8) for plane in planes], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(photo, "RGB").save(
        buffer, format="JPEG", quality=int(quality or c["quality"]))
    return buffer.getvalue()
