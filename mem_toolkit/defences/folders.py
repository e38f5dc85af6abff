"""Published folders as a hacker gets them: read a caption CSV's rows and image files, write a defended copy beside it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..data.dataset import CaptionDataset
from ..data.loaders import load_caption_csv
from ..data.writer import write_caption_csv, write_png
from ..errors import DefenceError


def read_published(csv_path: str | os.PathLike) -> CaptionDataset:
    """The rows of a caption CSV (captions, image files, rows grouped by image), checked as `load_caption_csv` checks them.

    The dataset is named by the CSV's path, so that messages name the file. Its pixel cache is
    never filled (hence image size 1): a defence reads every image file at its own size.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DefenceError(f"{path}: caption CSV not found")
    dataset = load_caption_csv(path, image_size=1)
    dataset.name = str(path)
    return dataset


def image_names(dataset: CaptionDataset, folder: str = "images", suffix: str | None = None) -> list[str]:
    """Where each image of `dataset` goes in a defended folder: `folder/<its key>`, the extension replaced by `suffix` if given."""
    keys = [Path(key) if suffix is None else Path(key).with_suffix(suffix) for key in dataset.image_keys]
    return [f"{folder}/{key.as_posix()}" for key in keys]


def write_defended(out_dir: str | os.PathLike, images: Sequence[tuple[str, Path]], rows: Sequence[tuple[str, str]],
                   pixels: Callable[[int, Path], np.ndarray] | None = None, progress: bool = True,
                   description: str = "writing defended images") -> Path:
    """Write every (name, source file) image under `out_dir`, then `captions.csv` of (name, caption) rows; returns the CSV.

    With `pixels`, the image written is `pixels(index, source)` as a PNG; without, the file is copied
    byte for byte. Every file is written atomically, the CSV last, so a reader never sees a CSV
    naming a missing or torn image.
    """
    out_dir = Path(out_dir)
    for index, (name, source) in enumerate(tqdm(images, desc=description, disable=not progress, unit="img")):
        if pixels is None:
            atomic_write(out_dir / name, lambda tmp: shutil.copyfile(source, tmp), sync=False)
        else:
            write_png(out_dir / name, pixels(index, source))
    return write_caption_csv(out_dir / "captions.csv", rows)
