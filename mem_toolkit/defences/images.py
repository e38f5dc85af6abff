"""Image defences: what a scraper or a hacker does to published pixels, each uint8 (H, W, 3) in, uint8 (H, W, 3) out.

Every function works on the image at its own size and returns that size; steps that produce
fractions (blur, bit depth) round them to the nearest integer.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from ..data.images import rgb_pixels


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """The pixels after a JPEG round trip at `quality` (Pillow's encoder and its defaults: 4:2:0 chroma subsampling, standard tables)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return rgb_pixels(buffer)


def rescale(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Resized by `factor` and back to the original size, bicubic both ways (Pillow's, antialiased when shrinking): detail finer than the small size is lost."""
    height, width = pixels.shape[:2]
    small = Image.fromarray(pixels).resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BICUBIC)
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def grayscale(pixels: np.ndarray) -> np.ndarray:
    """Luma (Pillow's ITU-R 601-2 weights: 0.299 R + 0.587 G + 0.114 B) copied into all three channels: colour is gone."""
    luma = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint8)
    return np.repeat(luma[..., None], 3, axis=2)


def gaussian_blur(pixels: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Each channel convolved with a Gaussian of std `sigma` px cut at `radius` px (a (2 radius + 1)^2 kernel), edges mirrored."""
    blurred = ndimage.gaussian_filter(pixels.astype(np.float32), sigma=(sigma, sigma, 0), radius=(radius, radius, 0), mode="reflect")
    return _to_uint8(blurred)


def median_filter(pixels: np.ndarray, size: int) -> np.ndarray:
    """Each channel's `size` x `size` median, edges mirrored: removes isolated pixel changes, keeps edges."""
    return ndimage.median_filter(pixels, size=(size, size, 1), mode="reflect")


def reduce_bits(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Every value rounded to the nearest of 2^bits levels spread evenly over 0..255 (for 4 bits: 0, 17, ..., 255)."""
    levels = 2 ** bits - 1
    return _to_uint8(np.rint(pixels / 255.0 * levels) * (255.0 / levels))


def uniform_noise(pixels: np.ndarray, eps: int, rng: np.random.Generator) -> np.ndarray:
    """Integer noise drawn uniformly from -eps..eps (in 1/255 units, as the protections' ε) added to every value, clipped to 0..255."""
    noise = rng.integers(-eps, eps + 1, size=pixels.shape)
    return np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
