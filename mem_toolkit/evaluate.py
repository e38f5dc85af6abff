"""Encode a clean test set and report retrieval beside the random-guess reference."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .data.dataset import CaptionDataset
from .metrics import random_guess_metrics, retrieval_metrics
from .models import ClipModel


@dataclass
class RetrievalReport:
    """Retrieval metrics of one model on one test set, and what random guessing would give."""

    metrics: dict[str, float]
    random: dict[str, float]
    n_images: int
    n_captions: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "random": self.random, "n_images": self.n_images, "n_captions": self.n_captions, **self.extra}

    def table(self) -> str:
        """Two-line text table: the model's figures and the random-guess row."""
        keys = [k for k in self.metrics if k != "rsum"] + ["rsum"]
        head = "         " + " ".join(f"{k:>11}" for k in keys)
        row = lambda name, m: f"{name:<9}" + " ".join(f"{m[k]:>11.2f}" for k in keys)  # noqa: E731
        return "\n".join([head, row("model", self.metrics), row("random", self.random)])


@torch.no_grad()
def encode_dataset(model: ClipModel, dataset: CaptionDataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm features of every image (in group order) and every caption (in row order)."""
    was_training = model.training
    model.eval()
    images = [model.encode_image(_pixels(dataset, range(s, min(s + batch_size, dataset.n_images))).to(model.device)).cpu()
              for s in range(0, dataset.n_images, batch_size)]
    ids = dataset.caption_token_ids(model.tokenizer)
    texts = [model.encode_text(model.tokenizer.assemble(ids[s:s + batch_size], model.context_length)).cpu()
             for s in range(0, len(dataset), batch_size)]
    model.train(was_training)
    return torch.cat(images).float(), torch.cat(texts).float()


def _pixels(dataset: CaptionDataset, groups) -> torch.Tensor:
    return torch.from_numpy(dataset.images(np.asarray(list(groups)))).permute(0, 3, 1, 2)


def evaluate_retrieval(model: ClipModel, dataset: CaptionDataset, batch_size: int = 256) -> RetrievalReport:
    """Retrieval of `model` on a (clean) test set, both directions, with the random-guess reference."""
    image_features, text_features = encode_dataset(model, dataset, batch_size)
    counts = np.bincount(dataset.group_ids, minlength=dataset.n_images)
    return RetrievalReport(
        retrieval_metrics(image_features, text_features, dataset.group_ids),
        random_guess_metrics(counts),
        dataset.n_images,
        len(dataset),
    )
