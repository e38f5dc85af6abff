"""Can a fresh model still learn the photos? Short hacker trainings on the protected pairs, scored on held-out clean photos.

The end-of-run surrogate (`diagnostics.shortcut_report`) is only as trained as the protection's schedule
leaves it: one restarted every round ends near chance, and says nothing about what a hacker learns.
This check asks the hacker's question directly. A seeded share of the photos is held out; fresh
models of one architecture, from each of a few seeds, train for the same few epochs on the other
photos' clean pairs, on their pairs as published, and (with a trigger) on the published photos with
the original captions (the trigger deleted). Each is scored by retrieval on the held-out photos,
clean. What a protected training keeps of the clean training's R@10 is what the protection leaves a
hacker. A few short runs on a small held-out set are an indicator, not a measurement: `verify` on a
test set and the real-photo benchmark (several hackers and seeds) are that.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.dataset import CaptionDataset
from ..evaluate import evaluate_retrieval
from ..models import create_model
from ..train import TrainConfig, train_clip
from .artifact import Protection

DIRECTIONS = ("i2t", "t2i")


class RowSubset:
    """The rows `rows` of a dataset or protected view, renumbered 0..len-1, as a training set."""

    def __init__(self, source, rows: np.ndarray) -> None:
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def image_batch(self, rows: np.ndarray) -> torch.Tensor:
        return self.source.image_batch(self.rows[rows])

    def token_batch(self, rows: np.ndarray, tokenizer, context_length: int) -> torch.Tensor:
        return self.source.token_batch(self.rows[rows], tokenizer, context_length)


def check_split(dataset: CaptionDataset, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out photo indices, the rows of every other photo): a seeded `share` of the photos, at least 2, leaving at least 2."""
    if dataset.n_images < 4:
        raise ValueError(f"the learnability check needs at least 4 photos, the dataset has {dataset.n_images}")
    count = min(max(2, round(share * dataset.n_images)), dataset.n_images - 2)
    held = np.sort(np.random.default_rng([seed, 5150]).permutation(dataset.n_images)[:count])
    return held, np.flatnonzero(~np.isin(dataset.group_ids, held))


def learnability_report(dataset: CaptionDataset, protection: Protection, model_name: str = "mem-tiny-rn", epochs: int = 3,
                        seeds: Sequence[int] = (0, 1), batch_size: int = 128, held_out_share: float = 0.2,
                        device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Retrieval on held-out clean photos of fresh `model_name` hackers trained `epochs` on each view of the other photos,
    one per view and seed, and the share of the clean-trained hacker's R@10 each protected view keeps (per direction,
    mean over seeds, with the lowest and highest seed's share). The held-out photos are drawn from the first seed."""
    held, train_rows = check_split(dataset, held_out_share, seeds[0])
    held_out = dataset.select_images(held)
    views = {"clean": dataset, "published": protection.apply(dataset)}
    if protection.trigger_len:
        views["trigger_deleted"] = protection.apply(dataset, trigger=False)
    runs = [(seed, name) for seed in seeds for name in views]
    metrics: dict = {name: [] for name in views}
    for seed, name in tqdm(runs, desc="learnability check", disable=not progress, unit="hacker"):
        model = create_model(model_name, device=device, seed=seed, image_size=dataset.image_size)
        config = TrainConfig(epochs=epochs, batch_size=min(batch_size, len(train_rows)), seed=seed)
        train_clip(model, RowSubset(views[name], train_rows), None, config, progress=False)
        retrieval = evaluate_retrieval(model, held_out)
        metrics[name].append(retrieval.metrics)
    kept = {name: {d: _shares([_ratio(m[f"{d}_R@10"], c[f"{d}_R@10"]) for m, c in zip(metrics[name], metrics["clean"])])
                   for d in DIRECTIONS} for name in views if name != "clean"}
    report = {"model": model_name, "epochs": epochs, "seeds": list(seeds), "held_out_photos": int(len(held)),
              "train_rows": int(len(train_rows)), "metrics": metrics,
              "random": retrieval.random, "kept_R@10": kept}
    report["verdict"] = learnability_verdict(report)
    return report


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else float("nan")


def _shares(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def learnability_verdict(report: dict) -> str:
    """One line: what the fresh hackers kept of clean R@10, and how much work the noise (the trigger deleted) does.

    Short runs on a few hundred photos spread by about ±0.15 in these shares from seed to seed (measured on real
    photos, README), so a firm word needs both directions to agree."""
    random = report["random"]
    clean = {d: np.mean([m[f"{d}_R@10"] for m in report["metrics"]["clean"]]) for d in DIRECTIONS}
    head = (f"fresh {report['model']} hackers ({report['epochs']} epochs, {len(report['seeds'])} seeds) "
            f"on {report['held_out_photos']} held-out clean photos")
    if all(clean[d] < 1.5 * random[f"{d}_R@10"] for d in DIRECTIONS):
        return head + ": even the clean-trained ones are near chance, so this says nothing (more epochs, or more photos)"
    kept = "; ".join(f"{name.replace('_', ' ')} keeps " + " / ".join(
        f"{shares[d]['mean']:.0%} ({shares[d]['min']:.0%}-{shares[d]['max']:.0%})" for d in DIRECTIONS)
        for name, shares in report["kept_R@10"].items())
    line = f"{head}: of the clean-trained R@10 (i2t / t2i, mean and seed range), {kept}"
    key = "trigger_deleted" if "trigger_deleted" in report["kept_R@10"] else "published"
    shares = [report["kept_R@10"][key][d]["mean"] for d in DIRECTIONS]
    subject = "the noise" if key == "trigger_deleted" else "the protection"
    if max(shares) <= 2 / 3:
        return line + f" — {subject} does real work"
    if min(shares) >= 0.9:
        return line + f" — {subject} does little: a hacker {'who deletes the trigger ' if key == 'trigger_deleted' else ''}learns the content"
    return line + f" — {subject} does some work, by how much is within these short runs' spread (verify on a test set)"
