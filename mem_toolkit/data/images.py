"""Reading image files into the model's square uint8 input, and checking them before a long run."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ShardMember:
    """An image stored in a tar shard: where its bytes lie, and the sample key that messages name."""

    shard: Path
    key: str
    offset: int
    size: int

    def read(self) -> bytes:
        """The member's bytes, read straight from their offset (uncompressed tar: random access)."""
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise EOFError(f"the shard ends {self.size - len(data)} bytes into this image")
        return data

    def __str__(self) -> str:
        return f"{self.shard}, key {self.key}"


def rgb_pixels(source: str | os.PathLike | io.BytesIO) -> np.ndarray:
    """An image's pixels as stored, converted to RGB uint8 (H, W, 3) without resizing: what was written, to check or transform."""
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike | ShardMember, size: int) -> np.ndarray:
    """Decode one image (a file, or a member of a tar shard) into a (size, size, 3) uint8 array."""
    source = io.BytesIO(path.read()) if isinstance(path, ShardMember) else path
    with Image.open(source) as image:
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
