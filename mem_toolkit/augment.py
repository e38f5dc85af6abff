"""The image augmentation CLIP trainers use: a random resized crop and a horizontal flip, drawn per sample and step.

The crop keeps 50-100 % of the image's area at an aspect ratio of 3/4 to 4/3 (open_clip's and
torchvision's `RandomResizedCrop` ranges); a box wider or taller than the image is cut to the
image's side instead of being drawn again, so every draw is one step of a seeded generator. The
box is continuous (sub-pixel) and resampled bilinearly back to the full size; half of the samples
are mirrored left to right.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "crop-flip")
SCALE = (0.5, 1.0)
RATIO = (3 / 4, 4 / 3)


def crop_flip_params(n: int, seed: Sequence[int]) -> np.ndarray:
    """(n, 5) crops for n samples, from `seed` alone: width and height (fractions of the side), centre x and y in
    [-1, 1] image coordinates, and ±1 (-1: mirrored). Drawn for a whole global batch, so a rank takes its slice."""
    rng = np.random.default_rng(list(seed))
    area = rng.uniform(*SCALE, n)
    ratio = np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1]), n))
    width = np.minimum(np.sqrt(area * ratio), 1.0)
    height = np.minimum(np.sqrt(area / ratio), 1.0)
    centre_x = 2 * rng.uniform(0.0, 1.0 - width) + width - 1
    centre_y = 2 * rng.uniform(0.0, 1.0 - height) + height - 1
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return np.stack([width, height, centre_x, centre_y, mirror], axis=1)


def crop_flip(pixels: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """uint8 images (B, 3, S, S) cropped, resized back to S x S and flipped as `params` (from `crop_flip_params`) say."""
    p = torch.as_tensor(params, dtype=torch.float32, device=pixels.device)
    theta = torch.zeros(len(p), 2, 3, device=pixels.device)
    theta[:, 0, 0] = p[:, 0] * p[:, 4]  # a negative x scale mirrors the output
    theta[:, 0, 2] = p[:, 2]
    theta[:, 1, 1] = p[:, 1]
    theta[:, 1, 2] = p[:, 3]
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    resampled = F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return resampled.round().clamp(0, 255).to(torch.uint8)
