"""A learned word code: the noise of every unit is built from patterns owned by its caption words.

Each coded word w owns a learnable pattern Q_w (3 x S x S); a unit's noise is ε·tanh(Σ_w∈unit Q_w) in
pixel units, over the unit's `code_words` most distinctive words among those found in at least
`code_min_share` of the photos. The patterns are trained to minimise the CLIP loss of each round's
surrogate on the protected photos with their *own* captions (EM's objective, no trigger), so the noise
is a key to the caption words themselves: a hacker who deletes the trigger still trains on it. Shared
by every photo that mentions the word, a pattern is learned by a fresh model the way a class-wise
noise is in classification; a per-photo noise from a surrogate at chance is not (the real-photo
measurements in the README).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import CaptionDataset
from ..loss import clip_loss
from ..models import ClipModel
from ..train import autocast
from .eot import Transform


class WordCode:
    """The code's patterns, which words each unit carries, and the Adam optimiser that trains the patterns."""

    def __init__(self, words_of_unit: list[list[str]], image_size: int, eps: int, lr: float, device: torch.device) -> None:
        self.words = sorted({word for words in words_of_unit for word in words})
        index = {word: i for i, word in enumerate(self.words)}
        self.membership = torch.zeros(len(words_of_unit), len(self.words), device=device)
        for unit, words in enumerate(words_of_unit):
            self.membership[unit, [index[word] for word in words]] = 1.0
        self.patterns = torch.zeros(len(self.words), 3, image_size, image_size, device=device, requires_grad=True)
        self.eps = eps
        self.optimizer = torch.optim.Adam([self.patterns], lr=lr)

    def noise(self, units: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Real-valued noise (B, 3, S, S) in pixel units, within ±ε, of the given units (differentiable in the patterns)."""
        members = self.membership[torch.as_tensor(units, dtype=torch.long, device=self.membership.device)]
        return self.eps * torch.tanh(torch.einsum("bv,vchw->bchw", members, self.patterns))

    def int_noise(self, units: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """The stored noise (B, S, S, 3) int8 of the given units: rounded, and clipped so pixels + noise stay in 0..255."""
        with torch.no_grad():
            noise = torch.round(self.noise(units)).permute(0, 2, 3, 1).cpu().numpy().astype(np.int16)
        return np.clip(noise, -pixels.astype(np.int16), 255 - pixels.astype(np.int16)).astype(np.int8)

    def train_batch(self, surrogate: ClipModel, pixels: torch.Tensor, units: np.ndarray, tokens: torch.Tensor,
                    steps: int, amp: bool, transform: Transform | None = None) -> list[float]:
        """`steps` Adam steps on the patterns for one batch (one row per unit), the surrogate's weights fixed; the loss
        before each. Batch norm runs in training mode (batch statistics), as in the hacker's training that the code must steer.
        `transform(images, step)` (EOT, `protect.eot`) processes the protected [0, 1] images as a hacker would first."""
        surrogate.train()
        trainable = [p for p in surrogate.parameters() if p.requires_grad]
        for param in trainable:
            param.requires_grad_(False)
        try:
            return self._descend(surrogate, pixels, units, tokens, steps, amp, transform)
        finally:
            for param in trainable:
                param.requires_grad_(True)

    def _descend(self, surrogate: ClipModel, pixels: torch.Tensor, units: np.ndarray, tokens: torch.Tensor, steps: int,
                 amp: bool, transform: Transform | None) -> list[float]:
        device = surrogate.device
        with torch.no_grad(), autocast(device, amp):
            text_features = surrogate.encode_text(tokens.to(device)).float()
        scale = surrogate.logit_scale().detach()
        pixels = pixels.float().to(device)
        losses = []
        for step in range(steps):
            images = (pixels + self.noise(units)).clamp(0, 255) / 255  # float pixels are [0, 1] to the model
            if transform is not None:
                images = transform(images, step)
            with autocast(device, amp):
                image_features = surrogate.encode_image(images).float()
            loss = clip_loss(image_features, text_features, scale)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return losses


def distinctive_words(dataset: CaptionDataset, unit_of_row: np.ndarray, n_units: int, count: int,
                      min_share: float = 0.0) -> list[list[str]]:
    """The `count` words of highest TF-IDF in each unit's captions (all its rows' captions as one document),
    among the words found in at least `min_share` of the photos (0: any word)."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    pattern = r"(?u)\b\w+\b"
    documents = [[] for _ in range(n_units)]
    for row, unit in enumerate(unit_of_row):
        documents[unit].append(dataset.captions[row])
    common = None
    if min_share > 0:
        photos = [" ".join(dataset.captions[r] for r in rows) for rows in dataset.rows_of_group()]
        counter = CountVectorizer(token_pattern=pattern, binary=True)
        photos_with_word = np.asarray(counter.fit_transform(photos).sum(axis=0)).ravel()
        common = [w for w, n in zip(counter.get_feature_names_out(), photos_with_word) if n >= min_share * dataset.n_images]
        if not common:
            raise ValueError(f"no caption word is found in {min_share:.0%} of the photos: lower code_min_share")
    vectorizer = TfidfVectorizer(token_pattern=pattern, vocabulary=common)
    weights = vectorizer.fit_transform([" ".join(d) for d in documents])
    vocabulary = vectorizer.get_feature_names_out()
    words = []
    for unit in range(n_units):
        row = weights.getrow(unit)
        order = np.lexsort((row.indices, -row.data))[:count]  # highest weight first, ties by word index
        words.append([str(vocabulary[row.indices[i]]) for i in order])
    return words
