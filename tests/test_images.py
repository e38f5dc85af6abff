"""Image files to the model's square uint8 input: resize the shorter side, centre-crop, any mode."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mem_toolkit.data.images import fit_square, load_image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(size: tuple[int, int], vertical: bool) -> Image.Image:
    """Three equal stripes red, green, blue: left to right if `vertical`, else top to bottom."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for index, colour in enumerate((RED, GREEN, BLUE)):
        if vertical:
            pixels[:, index * width // 3:(index + 1) * width // 3] = colour
        else:
            pixels[index * height // 3:(index + 1) * height // 3] = colour
    return Image.fromarray(pixels)


@pytest.mark.parametrize("vertical", [True, False])
def test_long_side_is_centre_cropped(vertical):
    image = stripes((300, 100) if vertical else (100, 300), vertical)
    out = fit_square(image, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    inner = out[4:-4, 4:-4].reshape(-1, 3).astype(int)  # away from the resampling blur at the stripe edges
    assert (inner[:, 1] > 200).all() and (inner[:, 0] < 50).all() and (inner[:, 2] < 50).all()


def test_orientation_is_kept():
    pixels = np.zeros((90, 60, 3), dtype=np.uint8)
    pixels[:30, :30] = RED  # top-left marker of a portrait photo
    out = fit_square(Image.fromarray(pixels), 32)
    assert out[2, 2, 0] > 200  # still top left
    assert out[-3, -3].max() < 30 and out[2, -3].max() < 30 and out[-3, 2].max() < 30


def test_small_images_are_upscaled():
    out = fit_square(Image.fromarray(np.full((10, 20, 3), 77, dtype=np.uint8)), 48)
    assert out.shape == (48, 48, 3)
    assert (out == 77).all()  # a flat image stays flat


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    image = image.quantize(8) if mode == "P" else image.convert(mode)
    out = fit_square(image, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_grey_image_has_equal_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8), mode="L").save(path)
    out = load_image(path, 16)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_jpeg_and_png_files_decode(tmp_path, make_image):
    for name, mode in (("a.jpg", "RGB"), ("b.jpg", "L"), ("c.png", "RGBA"), ("d.png", "P")):
        assert load_image(make_image(tmp_path / name, (37, 53), mode), 20).shape == (20, 20, 3)
