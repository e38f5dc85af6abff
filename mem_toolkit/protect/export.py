"""Publish protected data: lossless PNGs at the model's input size plus a caption CSV with the trigger words.

The written files are read back and checked: every pixel differs from the clean one by at most ε and
exactly by the stored (clipped) noise, and every caption re-tokenises to trigger + caption ids.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.dataset import CaptionDataset
from ..data.writer import write_caption_folder
from ..text import CaptionTokenizer
from .artifact import Protection


def export_protection(protection: Protection, dataset: CaptionDataset, out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Write the protected dataset to `out_dir` (`images/*.png`, `captions.csv`) and verify it; returns the CSV path.

    One file per image when noise is shared per image or cluster, one per row when each row has its own.
    """
    protection.check_fits(dataset)
    view = protection.apply(dataset)
    tokenizer = CaptionTokenizer()
    per_row = protection.config.get("granularity") == "row"
    stems = [Path(key).with_suffix("").as_posix() for key in dataset.image_keys]
    if per_row:
        names = [f"images/{stems[g]}-r{row:06d}.png" for row, g in enumerate(dataset.group_ids)]
        items = [(names[row], row) for row in range(len(dataset))]
    else:
        names = [f"images/{stems[g]}.png" for g in dataset.group_ids]
        items = [(f"images/{stems[g]}.png", int(row)) for g, row in enumerate(dataset.first_rows())]
    images = ((name, view.image_batch([row])[0].permute(1, 2, 0).numpy()) for name, row in items)
    rows = [(names[row], protection.published_caption(dataset, row, tokenizer)) for row in range(len(dataset))]
    csv_path = write_caption_folder(out_dir, images, rows, "captions.csv", len(items), progress, "exporting protected images")
    verify_export(protection, dataset, out_dir, items, rows, tokenizer, progress)
    return csv_path


def verify_export(protection: Protection, dataset: CaptionDataset, out_dir, items, rows, tokenizer: CaptionTokenizer, progress: bool) -> None:
    """Re-read what was written: |noise| <= ε, noise exactly as stored (after clipping), captions round-trip."""
    out_dir = Path(out_dir)
    view = protection.apply(dataset)
    problems = []
    for name, row in tqdm(items, desc="verifying export", disable=not progress, unit="img"):
        written = np.asarray(Image.open(out_dir / name).convert("RGB"), dtype=np.int16)
        clean = dataset.images([dataset.group_ids[row]])[0].astype(np.int16)
        expected = view.image_batch([row])[0].permute(1, 2, 0).numpy().astype(np.int16)
        if np.abs(written - clean).max() > protection.eps or not np.array_equal(written, expected):
            problems.append(name)
    ids = dataset.caption_token_ids(tokenizer)
    for row, (_, caption) in enumerate(rows):
        trigger = protection.triggers[protection.unit_of_row[row]].tolist() if protection.trigger_len else []
        if tokenizer.encode(caption) != trigger + list(ids[row]):
            problems.append(f"caption of row {row}")
    if problems:
        raise RuntimeError(f"export verification failed for {len(problems)} item(s), e.g. {problems[:5]}")
