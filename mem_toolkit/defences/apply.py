"""Apply a named defence to published files: read a caption CSV and its images, write the defended folder a hacker trains on."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..data.dataset import CaptionDataset
from ..data.images import rgb_pixels
from ..errors import DefenceError
from .captions import read_vocabulary
from .folders import image_names, read_published, write_defended
from .registry import Defence, get_defence


def apply_defence(name: str, csv_path: str | os.PathLike, out_dir: str | os.PathLike, *, clean_csv: str | os.PathLike | None = None,
                  vocabulary: str | os.PathLike | Iterable[str] | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Write `out_dir/captions.csv` and its images: the published data `csv_path` after defence `name`; returns the CSV.

    Image defences write every image as a PNG of the transformed pixels; caption and data defences
    copy the image files. Data defences take the clean CSV of the same rows (`clean_csv`), the
    vocabulary filter its `vocabulary` (a caption CSV, a text file of words, or a list of texts);
    `seed` draws the noise and the protected share. Rows left without words are dropped. Training
    defences change the hacker's settings, not the files: see `defended_config`.
    """
    defence = get_defence(name)
    if defence.kind == "training":
        raise DefenceError(f"{name} is a training defence ({defence.description}): it changes the hacker's TrainConfig "
                           "(defended_config; train --augment / --epochs on the command line), not the published files")
    if defence.kind == "data" and clean_csv is None:
        raise DefenceError(f"{name} mixes protected and clean images: give the clean CSV of the same rows (clean_csv, --clean)")
    if "vocabulary" in defence.inputs and vocabulary is None:
        raise DefenceError(f"{name} keeps the words of other data: give their vocabulary (vocabulary, --vocabulary: a caption CSV or a file of words)")
    out_dir = Path(out_dir)
    inputs = [Path(csv_path)] + ([Path(clean_csv)] if clean_csv is not None else [])
    for path in inputs:
        if out_dir.resolve() == path.parent.resolve():
            raise DefenceError(f"{out_dir} holds the input {path}: write the defended copy to another folder")
    published = read_published(csv_path)
    if defence.kind == "image":
        return _defend_images(defence, published, out_dir, seed, progress)
    if defence.kind == "caption":
        return _defend_captions(defence, published, vocabulary, out_dir, progress)
    return _defend_mixed(defence, published, read_published(clean_csv), out_dir, seed, progress)


def _defend_images(defence: Defence, published: CaptionDataset, out_dir: Path, seed: int, progress: bool) -> Path:
    """Every image transformed and written as a PNG (lossless: what is lost is the defence's doing), the captions as they were."""
    names = image_names(published, suffix=".png")

    def pixels(index: int, source: Path) -> np.ndarray:
        extra = {"rng": np.random.default_rng([seed, index])} if "rng" in defence.inputs else {}
        return defence.function(rgb_pixels(source), **defence.params, **extra)

    rows = [(names[image], caption) for image, caption in zip(published.group_ids, published.captions)]
    return write_defended(out_dir, list(zip(names, published.image_paths)), rows, pixels, progress, f"{defence.name}: writing images")


def _defend_captions(defence: Defence, published: CaptionDataset, vocabulary: str | os.PathLike | Iterable[str] | None, out_dir: Path,
                     progress: bool) -> Path:
    """The new captions with copies of their images; rows left without words are dropped, and so are images left without rows."""
    extra = {"vocabulary": read_vocabulary(vocabulary)} if "vocabulary" in defence.inputs else {}
    captions = defence.function(published.captions, **defence.params, **extra)
    kept = [row for row, caption in enumerate(captions) if caption]
    if not kept:
        raise DefenceError(f"{published.name}: {defence.name} leaves no caption with a word in it")
    names = image_names(published)
    used = sorted({int(published.group_ids[row]) for row in kept})
    rows = [(names[published.group_ids[row]], captions[row]) for row in kept]
    return write_defended(out_dir, [(names[g], published.image_paths[g]) for g in used], rows, None, progress, f"{defence.name}: copying images")


def _defend_mixed(defence: Defence, published: CaptionDataset, clean: CaptionDataset, out_dir: Path, seed: int, progress: bool) -> Path:
    """Each row from the protected or the clean set as `defence` picks; the images go under images/protected/ and images/clean/."""
    take = defence.function(published, clean, **defence.params, seed=seed)
    sides = [(clean, image_names(clean, "images/clean")), (published, image_names(published, "images/protected"))]
    images: dict[str, Path] = {}
    rows = []
    for row, protected in enumerate(take):
        dataset, names = sides[int(protected)]
        image = dataset.group_ids[row]
        images[names[image]] = dataset.image_paths[image]
        rows.append((names[image], dataset.captions[row]))
    return write_defended(out_dir, list(images.items()), rows, None, progress, f"{defence.name}: copying images")
