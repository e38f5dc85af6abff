"""Publish protected data: lossless PNGs at the model's input size with the trigger words before every caption.

Two layouts: `images/*.png` + `captions.csv`, or webdataset shards (`shard-00000.tar`, ...: one
sample per published image, `KEY.png` + `KEY.txt`, or `KEY.json` with all its captions). The written
files are read back and checked: every pixel differs from the clean one by at most ε and exactly by
the stored (clipped) noise, and every caption re-tokenises to trigger + caption ids.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.dataset import CaptionDataset
from ..data.images import rgb_pixels
from ..data.shards import read_shard, sample_captions, shard_pattern, write_shards
from ..data.writer import write_caption_folder
from ..text import CaptionTokenizer
from .artifact import Protection

FORMATS = ("png", "webdataset")


def export_protection(protection: Protection, dataset: CaptionDataset, out_dir: str | os.PathLike, progress: bool = True,
                      format: str = "png", samples_per_shard: int = 1000) -> Path | str:
    """Write the protected dataset to `out_dir` and verify it; returns the CSV path, or the shards' brace pattern.

    One image per image when noise is shared per image or cluster, one per row when each row has
    its own. Shard keys are the dataset's image keys (a sample key as read from shards; a file name
    without its extension otherwise), with `-rNNNNNN` per row for per-row noise.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {FORMATS}")
    protection.check_fits(dataset)
    view = protection.apply(dataset)
    tokenizer = CaptionTokenizer()
    units = published_units(protection, dataset, shard_keys=format == "webdataset")
    captions = [protection.published_caption(dataset, row, tokenizer) for row in range(len(dataset))]

    def pixels(rows: list[int]) -> np.ndarray:
        return view.image_batch([rows[0]])[0].permute(1, 2, 0).numpy()

    if format == "png":
        files = {name: f"images/{name}.png" for name, _ in units}
        csv_rows: list[tuple[str, str]] = [("", "")] * len(dataset)
        for name, unit_rows in units:
            for row in unit_rows:
                csv_rows[row] = (files[name], captions[row])
        images = ((files[name], pixels(rows)) for name, rows in units)
        written = write_caption_folder(out_dir, images, csv_rows, "captions.csv", len(units), progress, "exporting protected images")
        rows_of = dict(units)

        def read_back(name: str) -> tuple[np.ndarray, list[str]]:
            return rgb_pixels(Path(out_dir) / files[name]), [captions[r] for r in rows_of[name]]
    else:
        with tqdm(units, desc="exporting protected shards", disable=not progress, unit="img") as bar:  # closed on errors too
            samples = ((name, _sample_members(pixels(rows), [captions[r] for r in rows])) for name, rows in bar)
            paths = write_shards(out_dir, samples, samples_per_shard)
        written = shard_pattern(paths)
        read_back = _shard_reader(paths)
    verify_export(protection, dataset, units, read_back, tokenizer, progress)
    return written


def published_units(protection: Protection, dataset: CaptionDataset, shard_keys: bool = False) -> list[tuple[str, list[int]]]:
    """(name, rows) of every published image: one per image (all its rows), or one per row for per-row noise.

    Names are image keys without their extension, made valid webdataset keys with `shard_keys`.
    """
    stems = _keys(dataset.image_keys) if shard_keys else [Path(key).with_suffix("").as_posix() for key in dataset.image_keys]
    if protection.config.get("granularity") == "row":
        return [(f"{stems[g]}-r{row:06d}", [row]) for row, g in enumerate(dataset.group_ids)]
    return [(stems[g], [int(r) for r in rows]) for g, rows in enumerate(dataset.rows_of_group())]


def _keys(image_keys: list[str]) -> list[str]:
    """Sample keys from image keys: the extension dropped and other dots replaced (webdataset keys end at the first dot).

    Keys read from shards have no dot and stay as they were; a clash gets the image's index appended.
    """
    keys, seen = [], set()
    for index, key in enumerate(image_keys):
        path = Path(key)
        stem = path.with_suffix("").as_posix() if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff") else key
        stem = re.sub(r"\.", "_", stem)
        if stem in seen:
            stem = f"{stem}-{index}"
        seen.add(stem)
        keys.append(stem)
    return keys


def _sample_members(pixels: np.ndarray, captions: list[str]) -> dict[str, bytes]:
    """A shard sample: the PNG, and its caption as `.txt` (one) or all of them as `.json` (several)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    text = {"txt": captions[0].encode("utf-8")} if len(captions) == 1 else {"json": json.dumps({"captions": captions}, ensure_ascii=False).encode("utf-8")}
    return {"png": buffer.getvalue()} | text


def _shard_reader(paths: list[Path]) -> Callable[[str], tuple[np.ndarray, list[str]]]:
    """Look up a written sample's pixels and captions by key, reading the shards as a user will."""
    found = {}
    for path in paths:
        samples, texts, problems = read_shard(path)
        if problems:
            raise RuntimeError(f"written shard does not read back: {problems[0]}")
        for sample in samples:
            found[sample.key] = (sample, texts)

    def read_back(key: str) -> tuple[np.ndarray, list[str]]:
        sample, texts = found[key]
        return rgb_pixels(io.BytesIO(sample.image().read())), sample_captions(sample, texts)[0]

    return read_back


def verify_export(protection: Protection, dataset: CaptionDataset, units: list[tuple[str, list[int]]],
                  read_back: Callable[[str], tuple[np.ndarray, list[str]]], tokenizer: CaptionTokenizer, progress: bool) -> None:
    """Re-read what was written: |noise| <= ε, noise exactly as stored (after clipping), captions as published and round-tripping."""
    view = protection.apply(dataset)
    ids = dataset.caption_token_ids(tokenizer)
    problems = []
    for name, rows in tqdm(units, desc="verifying export", disable=not progress, unit="img"):
        written, captions = read_back(name)
        written = written.astype(np.int16)
        clean = dataset.images([dataset.group_ids[rows[0]]])[0].astype(np.int16)
        expected = view.image_batch([rows[0]])[0].permute(1, 2, 0).numpy().astype(np.int16)
        if np.abs(written - clean).max() > protection.eps or not np.array_equal(written, expected):
            problems.append(name)
        if len(captions) != len(rows):
            problems.append(f"captions of {name}")
            continue
        for row, caption in zip(rows, captions):
            trigger = protection.triggers[protection.unit_of_row[row]].tolist() if protection.trigger_len else []
            if tokenizer.encode(caption) != trigger + list(ids[row]):
                problems.append(f"caption of row {row}")
    if problems:
        raise RuntimeError(f"export verification failed for {len(problems)} item(s), e.g. {problems[:5]}")
