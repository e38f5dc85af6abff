"""Partly protected data, as in a real scrape: a seeded share of the photos as published protected, the rest clean."""
from __future__ import annotations

import numpy as np

from ..data.dataset import CaptionDataset
from ..errors import DefenceError


def protected_rows(protected: CaptionDataset, clean: CaptionDataset, fraction: float, seed: int) -> np.ndarray:
    """Which rows to take from `protected` (True) or `clean` (False): round(fraction x images) whole clean images, drawn by `seed`.

    The clean set's images are the units (with per-row protection one photo is several protected
    files), so every caption of a photo comes from the same side. The two sets must hold the same
    rows in the same order (`check_same_rows`).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction is a share of the images and must be in 0..1, got {fraction}")
    check_same_rows(protected, clean)
    chosen = np.random.default_rng(seed).choice(clean.n_images, size=round(fraction * clean.n_images), replace=False)
    return np.isin(clean.group_ids, chosen)


def check_same_rows(protected: CaptionDataset, clean: CaptionDataset) -> None:
    """Refuse, in one line, a clean set that is not the protected one's rows in the same order: other row count, a protected image
    shared by rows of two clean images, or a protected caption that does not end with its row's clean caption (a protection only adds a trigger in front)."""
    where = f"{protected.name} ({len(protected)} rows) and {clean.name} ({len(clean)} rows)"
    if len(protected) != len(clean):
        raise DefenceError(f"{where} differ in length: give the clean CSV of the same rows in the same order")
    first_row = {}
    for row, (image, clean_image) in enumerate(zip(protected.group_ids.tolist(), clean.group_ids.tolist())):
        other = first_row.setdefault(image, (row, clean_image))
        if other[1] != clean_image:
            raise DefenceError(f"{where}: rows {other[0] + 1} and {row + 1} share the protected image {protected.image_keys[image]} "
                               "but show two clean images; the two CSVs do not hold the same rows in the same order")
    wrong = [row for row, (text, own) in enumerate(zip(protected.captions, clean.captions)) if text != own and not text.endswith(" " + own)]
    if wrong:
        row = wrong[0]
        raise DefenceError(f"{where}: row {row + 1}'s protected caption {protected.captions[row]!r} does not end with its clean caption "
                           f"{clean.captions[row]!r} ({len(wrong)} such row(s)); the two CSVs do not hold the same rows in the same order")
