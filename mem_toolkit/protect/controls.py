"""Controls that every MEM result is reported beside: the free random-ID trigger baseline, and the training sets a hacker makes of published files."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..data.dataset import CaptionDataset
from ..data.writer import write_caption_csv
from ..text import CaptionTokenizer
from .artifact import Protection
from .export import export_protection
from .vocabulary import allowed_trigger_tokens


def random_id_protection(
    dataset: CaptionDataset,
    trigger_len: int,
    seed: int = 0,
    exclude_caption_vocab: bool = True,
    vocab_size: int = 0,
    tokenizer: CaptionTokenizer | None = None,
) -> Protection:
    """One random k-token trigger per image and no noise: zero cost, no optimisation.

    On real photos such ID triggers protected more than a small-budget MEM-3, so MEM has to beat it.
    """
    tokenizer = tokenizer or CaptionTokenizer()
    allowed = allowed_trigger_tokens(dataset, tokenizer, exclude_caption_vocab, vocab_size, seed)
    triggers = np.random.default_rng([seed, 31337]).choice(allowed, size=(dataset.n_images, trigger_len))
    noise = np.zeros((dataset.n_images, dataset.image_size, dataset.image_size, 3), dtype=np.int8)
    config = {"trigger_len": trigger_len, "granularity": "image", "seed": seed, "exclude_caption_vocab": exclude_caption_vocab,
              "trigger_vocab_size": vocab_size}
    return Protection("random-id-trigger", noise, triggers, dataset.group_ids.copy(), 0, dataset.image_size, dataset.fingerprint(), config)


def strip_words(caption: str, k: int) -> str:
    """A published caption with its first k words deleted: what a hacker who suspects a trigger prefix trains on."""
    return " ".join(caption.split(" ")[k:])


def write_control_sets(dataset: CaptionDataset, protection: Protection, random_id: Protection, out_dir: str | os.PathLike,
                       progress: bool = False) -> dict[str, Path]:
    """Publish `protection` and `random_id`, then write each training set a hacker could make of the files as a CSV.

    `clean`: the original photos and captions; `<method>`: the published files; `-trigger-only`: the
    published captions on the clean photos; `-noise-only`: the published photos with the published
    captions' first k words deleted (checked to be the original captions); `random-id-trigger`: the
    published free baseline. Image paths are absolute, so every CSV stands alone.
    """
    out_dir = Path(out_dir)
    k = protection.trigger_len
    published = {p.method: _read_rows(export_protection(p, dataset, out_dir / "export" / p.method, progress)) for p in (protection, random_id)}
    clean = [(str(Path(dataset.image_paths[g]).resolve()), caption) for g, caption in zip(dataset.group_ids, dataset.captions)]
    mem = published[protection.method]
    stripped = [strip_words(caption, k) for _, caption in mem]
    if stripped != [caption for _, caption in clean]:
        raise RuntimeError("deleting the trigger words of the published captions does not give the original captions")
    sets = {
        "clean": clean,
        protection.method: mem,
        f"{protection.method}-trigger-only": [(image, caption) for (image, _), (_, caption) in zip(clean, mem)],
        f"{protection.method}-noise-only": [(image, caption) for (image, _), caption in zip(mem, stripped)],
        random_id.method: published[random_id.method],
    }
    return {name: write_caption_csv(out_dir / "sets" / f"{name}.csv", rows) for name, rows in sets.items()}


def _read_rows(csv_path: Path) -> list[tuple[str, str]]:
    """The rows of an exported captions CSV, image paths made absolute."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [(str((csv_path.parent / image).resolve()), caption) for image, caption in reader]
