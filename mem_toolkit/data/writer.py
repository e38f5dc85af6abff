"""Write a dataset as PNG files plus a caption CSV: the layout every loader here (and open_clip) reads."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..atomic import atomic_write


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Lossless PNG, written to a temp name then renamed so an interrupted export (or a full disk) leaves no torn file."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"), sync=False)


def write_caption_folder(
    out_dir: str | os.PathLike,
    images: Iterable[tuple[str, np.ndarray]],
    rows: list[tuple[str, str]],
    csv_name: str = "captions.csv",
    n_images: int | None = None,
    progress: bool = True,
    description: str = "writing images",
    header: tuple[str, str] = ("image", "caption"),
) -> Path:
    """Write (file name, uint8 HxWx3) images under `out_dir` and a CSV of `rows` (`image,caption` by default)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(images, total=n_images, desc=description, disable=not progress, unit="img") as bar:  # closed on errors too
        for name, pixels in bar:
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_png(target, pixels)
    return write_caption_csv(out_dir / csv_name, rows, header)


def write_caption_csv(path: str | os.PathLike, rows: list[tuple[str, str]], header: tuple[str, str] = ("image", "caption")) -> Path:
    """A caption CSV of `rows`, written atomically (a reader never sees half a file; a full disk keeps the old one)."""

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    return atomic_write(path, write_csv)


def write_dataset(dataset, out_dir: str | os.PathLike, csv_name: str, progress: bool = True) -> Path:
    """Write a CaptionDataset as `images/<key>` PNGs plus `csv_name` with paths relative to `out_dir`."""
    keys = [f"images/{Path(k).with_suffix('.png').as_posix()}" for k in dataset.image_keys]
    images = ((keys[g], dataset.images([g])[0]) for g in range(dataset.n_images))
    rows = [(keys[g], caption) for g, caption in zip(dataset.group_ids, dataset.captions)]
    return write_caption_folder(out_dir, images, rows, csv_name, dataset.n_images, progress, f"writing {dataset.name}")
