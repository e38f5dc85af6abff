"""Reading image files into the model's square uint8 input, and checking them before a long run."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Convert to RGB, resize the shorter side to `size` and centre-crop: CLIP's own preprocessing."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image file into a (size, size, 3) uint8 array."""
    with Image.open(path) as image:
        return fit_square(image, size)


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Say what is wrong with an image file (missing, empty, not an image, corrupt), or None if it reads."""
    path = Path(path)
    if not path.exists():
        return f"image file not found: {path}"
    if not path.is_file():
        return f"image path is not a file: {path}"
    if path.stat().st_size == 0:
        return f"image file is empty (0 bytes): {path}"
    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return f"not an image file (Pillow cannot identify it): {path}"
    except (OSError, SyntaxError, ValueError) as error:
        return f"corrupt image file ({error}): {path}"
    return None
