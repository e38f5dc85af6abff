"""Expectation over transformation for the noise step: the defences a hacker applies, made differentiable.

A noise optimised on the exact published pixels may not survive JPEG re-encoding or the crops of
a training pipeline. The standard remedy (EOT) draws one such transformation per PGD step and
differentiates through it, so the noise minimises the loss *after* the hacker's processing.
JPEG is simulated as the codec computes it (YCbCr, 4:2:0 chroma, 8 x 8 DCT, the standard
quantisation tables scaled by quality as the IJG library does), with rounding replaced by a
cubic approximation whose gradient is not zero (Shin and Song, 2017).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# The example quantisation tables of the JPEG standard (ITU-T T.81, Annex K), row by row.
LUMA_TABLE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
              18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101,
              72, 92, 95, 98, 112, 100, 103, 99]
CHROMA_TABLE = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
CHROMA_TABLE += [99] * (64 - len(CHROMA_TABLE))
TRANSFORMS = ("jpeg", "crop-flip")
Transform = Callable[[torch.Tensor, int], torch.Tensor]  # (images in [0, 1], step) -> what the hacker would see
JPEG_QUALITIES = (50, 90)  # each step draws a quality uniformly in this range
CROP_AREA = (0.5, 1.0)  # as the crop-flip defence: 50-100 % of the area


def quantisation_table(base: Sequence[int], quality: int) -> torch.Tensor:
    """A standard table scaled to `quality` (1-100) as libjpeg does it, as an 8 x 8 tensor."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor([min(max(math.floor((q * scale + 50) / 100), 1), 255) for q in base], dtype=torch.float32)
    return table.reshape(8, 8)


def _dct_matrix() -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (rows: frequencies)."""
    n = torch.arange(8, dtype=torch.float32)
    matrix = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) in value, with gradient 3 (x - round(x))^2 instead of 0."""
    rounded = torch.round(x)
    return rounded + (x - rounded) ** 3


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """One channel (N, H, W, values 0-255, H and W multiples of 8) through DCT, quantisation, dequantisation and inverse DCT."""
    n, h, w = plane.shape
    dct = _dct_matrix().to(plane)
    blocks = (plane - 128).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coefficients = dct @ blocks @ dct.T
    table = table.to(plane)
    restored = dct.T @ (_soft_round(coefficients / table) * table) @ dct
    return restored.permute(0, 1, 3, 2, 4).reshape(n, h, w) + 128


def differentiable_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """`images` (N, 3, H, W, values in [0, 1]) as a JPEG round trip at `quality` would return them, differentiably."""
    n, _, h, w = images.shape
    pad_h, pad_w = -h % 16, -w % 16
    x = F.pad(images * 255, (0, pad_w, 0, pad_h), mode="replicate")
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    luma, chroma = quantisation_table(LUMA_TABLE, quality), quantisation_table(CHROMA_TABLE, quality)
    y = _code_plane(y, luma)
    half = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # 4:2:0: chroma at half the side
    half = torch.stack([_code_plane(half[:, i], chroma) for i in range(2)], 1)
    cb, cr = F.interpolate(half, scale_factor=2, mode="nearest").unbind(1)
    rgb = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], 1)
    return (rgb[..., :h, :w] / 255).clamp(0, 1)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random resized crop (50-100 % of the area, aspect 3/4-4/3) and flip per image, resized back bilinearly, differentiably."""
    n, _, h, w = images.shape
    out = []
    for i in range(n):
        u = torch.rand(4, generator=generator).tolist()
        area = CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * u[0]
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        ch, cw = min(h, round(h * math.sqrt(area / aspect))), min(w, round(w * math.sqrt(area * aspect)))
        top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
        crop = F.interpolate(images[i:i + 1, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False)
        out.append(crop.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else crop)
    return torch.cat(out)


def eot_transform(names: Sequence[str], seed: Sequence[int]) -> Transform | None:
    """The per-step transformation of the noise step: step t draws one of `names` (and its parameters) from `seed` and t.

    None when `names` is empty (the plain noise step)."""
    unknown = sorted(set(names) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown EOT transformation(s) {unknown}; choose from {TRANSFORMS}")
    if not names:
        return None

    def transform(images: torch.Tensor, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([*seed, step]).generate_state(1, np.uint64)[0] >> 1))
        name = names[int(torch.randint(len(names), (1,), generator=generator))]
        if name == "jpeg":
            quality = int(torch.randint(JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1, (1,), generator=generator))
            return differentiable_jpeg(images, quality)
        return random_crop_flip(images, generator)

    return transform
