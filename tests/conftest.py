"""Shared fixtures: tiny deterministic data, the real sample photos beside the repository, small image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mem_toolkit.data.shapes import make_shapes

# The tiny test models gain little from intra-op threads, and on a shared CPU (CI, a laptop doing other
# work) OpenMP threads waiting for each other make every small operation many times slower.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_shapes():
    """48 images x 5 captions at 64 px: enough for a batch of real rows, fast to protect."""
    return make_shapes(48, 64, seed=3, name="tiny")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real photos for development and CI), or skip where it is absent."""
    if not (SHARED_DATA / "coco_mini" / "captions.csv").is_file():
        pytest.skip(f"real sample photos not found at {SHARED_DATA} (they sit beside the repository on development and CI machines only)")
    return SHARED_DATA


@pytest.fixture
def make_image():
    """Write a small image file: `make_image(path, (w, h), mode="RGB", seed=0)`; format from the suffix."""

    def write(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if mode == "P":
            image = image.quantize(16)
        elif mode != "RGB":
            image = image.convert(mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return path

    return write
