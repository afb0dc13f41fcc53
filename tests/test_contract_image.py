"""The shared image -> tensor function: formats, colour modes, orientation, sizes and bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import encode, photo_like, png_bytes, png_claiming_size
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from contract import ImageError, ImageTooLarge, decode_image


@pytest.fixture(scope="module")
def boot(fashion_mnist_test):
    """A real Fashion-MNIST picture (28x28, greyscale) and the same picture upscaled to 112x112."""
    image = fashion_mnist_test[0][0].squeeze(-1)
    return image, Image.fromarray(image).resize((112, 112), Image.Resampling.NEAREST)


def test_model_sized_greyscale_png_passes_unchanged(fashion_mnist_test):
    for image in fashion_mnist_test[0][:20]:
        out = decode_image(png_bytes(image), 28, 28, 1)
        assert out.dtype == np.uint8 and out.shape == (28, 28, 1)
        assert np.array_equal(out, image)


@pytest.mark.parametrize("fmt,options,tolerance", [
    ("PNG", {}, 0), ("BMP", {}, 0), ("TIFF", {}, 0), ("GIF", {}, 0), ("WEBP", {"lossless": True}, 0),
    ("JPEG", {"quality": 95}, 6.0), ("WEBP", {"quality": 90}, 8.0),
])
def test_every_supported_format_gives_the_same_tensor(boot, fmt, options, tolerance):
    _, big = boot
    reference = decode_image(encode(big, "PNG"), 28, 28, 1)
    out = decode_image(encode(big, fmt, **options), 28, 28, 1)
    assert out.shape == (28, 28, 1)
    assert np.abs(out.astype(int) - reference).mean() <= tolerance


def test_transparency_is_composited_on_white(boot):
    image, _ = boot
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = image[..., None]
    rgba[..., 3] = 255
    rgba[:, :14, 3] = 0  # left half fully transparent
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), 28, 28, 1)
    assert (out[:, :14] == 255).all()
    assert np.array_equal(out[:, 14:, 0], image[:, 14:])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK", "YCbCr"])
def test_every_colour_mode_decodes_to_the_requested_channels(boot, mode):
    _, big = boot
    picture = big.convert(mode) if mode not in ("I;16", "I", "F") else _high_depth(big, mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else ("TIFF" if mode in ("F", "I") else "PNG")
    data = encode(picture, fmt)
    grey = decode_image(data, 28, 28, 1)
    rgb = decode_image(data, 28, 28, 3)
    assert grey.shape == (28, 28, 1) and rgb.shape == (28, 28, 3)
    reference = decode_image(encode(big, "PNG"), 28, 28, 1)
    # Every mode must carry the picture, not noise or a blank: close to the 8-bit original.
    limit = 40 if mode == "1" else 8
    assert np.abs(grey.astype(int) - reference).mean() < limit, mode


def _high_depth(picture: Image.Image, mode: str) -> Image.Image:
    values = np.asarray(picture, dtype=np.float64)
    if mode == "F":
        return Image.fromarray((values / 255.0).astype(np.float32), "F")
    sixteen = (values * 257).astype(np.uint16)
    return Image.fromarray(sixteen) if mode == "I;16" else Image.fromarray(sixteen.astype(np.int32))


def test_sixteen_bit_png_keeps_its_brightness():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(ramp), "PNG"), 64, 64, 1)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert abs(int(out[32, 32, 0]) - 128) <= 2


@pytest.mark.parametrize("orientation,expected", [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied(orientation, expected):
    canvas = np.zeros((40, 40), np.uint8)
    canvas[:20, :10] = 255  # a bright block in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(canvas), "PNG", exif=exif)
    out = decode_image(data, 40, 40, 1)[..., 0]
    assert np.array_equal(out, expected(canvas))


def test_jpeg_is_decoded_at_reduced_scale_without_changing_the_result():
    photo = photo_like(640, 480)
    full = photo.crop((80, 0, 560, 480)).resize((28, 28), Image.Resampling.BILINEAR).convert("L")
    out = decode_image(encode(photo, "JPEG", quality=92), 28, 28, 1)
    assert np.abs(out[..., 0].astype(int) - np.asarray(full)).mean() < 4


def test_wide_and_tall_pictures_are_centre_cropped():
    wide = np.zeros((20, 60), np.uint8)
    wide[:, 20:40] = 200  # the centre square is bright, the sides dark
    assert (decode_image(encode(Image.fromarray(wide), "PNG"), 20, 20, 1) == 200).all()
    assert (decode_image(encode(Image.fromarray(wide.T.copy()), "PNG"), 20, 20, 1) == 200).all()


@pytest.mark.parametrize("size", [(1, 1), (1, 100000), (100000, 1), (3, 2)])
def test_extreme_shapes_still_give_a_tensor(size):
    out = decode_image(encode(Image.new("L", size, 77), "PNG"), 28, 28, 1)
    assert out.shape == (28, 28, 1) and (out == 77).all()


def test_first_frame_of_animated_gif_and_multipage_tiff():
    frames = [Image.new("L", (28, 28), value) for value in (10, 200, 90)]
    for fmt in ("GIF", "TIFF", "WEBP"):
        options = {"save_all": True, "append_images": frames[1:]}
        if fmt == "WEBP":
            options["lossless"] = True
        out = decode_image(encode(frames[0], fmt, **options), 28, 28, 1)
        assert abs(int(out.mean()) - 10) <= 1, fmt


def test_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(ImageTooLarge, match="limit is 64,000,000"):
        decode_image(png_claiming_size(30000, 30000), 28, 28, 1)


def test_pixel_limit_is_configurable(real_png):
    with pytest.raises(ImageTooLarge, match="limit is 100"):
        decode_image(real_png, 28, 28, 1, max_pixels=100)


@pytest.mark.parametrize("name,data", [
    ("empty", b""),
    ("text", b"hello, this is not a picture"),
    ("html", b"<!doctype html><html><body>hi</body></html>"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'),
    ("random", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))),
    ("ico", encode(Image.new("RGB", (32, 32), "red"), "ICO")),
    ("zero-size png", png_claiming_size(0, 0)),
])
def test_bytes_that_are_not_a_supported_image_raise_image_error(name, data):
    with pytest.raises(ImageError) as raised:
        decode_image(data, 28, 28, 1)
    assert not isinstance(raised.value, ImageTooLarge)
    assert str(raised.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise_image_error(fmt):
    data = encode(photo_like(200, 150), fmt)
    with pytest.raises(ImageError, match="damaged|truncated|header"):
        decode_image(data[: len(data) // 2], 28, 28, 1)


def test_paths_and_file_objects_are_accepted(tmp_path, real_png):
    path = tmp_path / "boot.png"
    path.write_bytes(real_png)
    expected = decode_image(real_png, 28, 28, 1)
    assert np.array_equal(decode_image(path, 28, 28, 1), expected)
    assert np.array_equal(decode_image(str(path), 28, 28, 1), expected)
    assert np.array_equal(decode_image(io.BytesIO(real_png), 28, 28, 1), expected)
    with pytest.raises(ImageError, match="No image file"):
        decode_image(tmp_path / "missing.png", 28, 28, 1)


def test_channels_other_than_one_or_three_are_a_programming_error(real_png):
    with pytest.raises(ValueError, match="channels"):
        decode_image(real_png, 28, 28, 4)


# --- properties: whatever the bytes, a valid tensor or the project's own error --------------------

def _check_property(data: bytes):
    try:
        out = decode_image(data, 28, 28, 1, max_pixels=4_000_000)
    except ImageError:
        return
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_tensor_or_image_error(data):
    _check_property(data)


_SEEDS = {fmt: encode(photo_like(48, 32, seed=3), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_SEEDS)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10**6),
)
def test_corrupted_real_images_give_a_tensor_or_image_error(fmt, flips, cut):
    data = bytearray(_SEEDS[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    _check_property(bytes(data[: max(1, cut % (len(data) + 1))]))
