"""One call for a train/test pair: the user's caption files when given, else the embedded synthetic shapes."""
from __future__ import annotations

import os

from .dataset import CaptionDataset
from .loaders import load_caption_csv
from .shapes import make_shapes_split


def load_split(
    train_csv: str | os.PathLike | None = None,
    test_csv: str | os.PathLike | None = None,
    image_size: int = 64,
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
    **csv_options,
) -> tuple[CaptionDataset, CaptionDataset]:
    """(train, test) from two caption CSV/TSV files (`load_caption_csv` options pass through), or embedded shapes.

    With no files, `n_train` / `n_test` synthetic images are generated from `seed`; with files,
    both are read and decoded now, so a bad file is reported before any work starts.
    """
    if (train_csv is None) != (test_csv is None):
        raise ValueError("give both train_csv and test_csv (your data), or neither (the embedded synthetic shapes)")
    if train_csv is None:
        return make_shapes_split(n_train, n_test, image_size, seed)
    return tuple(load_caption_csv(path, image_size, **csv_options).preload() for path in (train_csv, test_csv))
