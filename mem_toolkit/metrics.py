"""Retrieval metrics in the VSE++ convention, vectorised, with the exact random-guess reference.

image -> text: rank of the best of an image's captions among all captions.
text -> image: rank of a caption's image among all images.
Ranks are 1-based; MedR = floor(median(rank - 1)) + 1 as in VSE++; R@K in percent. Ties are broken
at random in expectation (not in the query's favour: collapsed features must not look perfect).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import gammaln

KS = (1, 5, 10)
_CHUNK = 1024


def _ranks(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor):
    """For i2t and t2i queries: how many candidates score strictly higher than the right one, and how many tie.

    Computed in chunks so a big test set never needs the whole score matrix. Each positive score is
    read from the same matrix product it is compared with, so identical features tie exactly. For
    i2t the right answer is the image's best caption; its other captions never count against it.
    """
    n_images = image_features.shape[0]
    t2i_above = torch.empty(len(text_features), dtype=torch.float64)
    t2i_tied = torch.empty(len(text_features), dtype=torch.float64)
    for start in range(0, len(text_features), _CHUNK):
        scores = text_features[start:start + _CHUNK] @ image_features.T
        positive = scores.gather(1, caption_image[start:start + _CHUNK, None])
        t2i_above[start:start + _CHUNK] = (scores > positive).sum(1)
        t2i_tied[start:start + _CHUNK] = (scores == positive).sum(1) - 1
    i2t_above = torch.empty(n_images, dtype=torch.float64)
    i2t_tied = torch.empty(n_images, dtype=torch.float64)
    for start in range(0, n_images, _CHUNK):
        scores = image_features[start:start + _CHUNK] @ text_features.T
        own = caption_image[None, :] == torch.arange(start, start + len(scores))[:, None]
        best = scores.masked_fill(~own, -math.inf).amax(1, keepdim=True)
        i2t_above[start:start + _CHUNK] = (scores > best).sum(1)
        i2t_tied[start:start + _CHUNK] = ((scores == best) & ~own).sum(1)
    return (i2t_above, i2t_tied), (t2i_above, t2i_tied)


def hits_at(above: torch.Tensor, tied: torch.Tensor, k: int) -> torch.Tensor:
    """Per query, the probability that its right answer ranks within k when ties are broken at random."""
    return ((k - above) / (tied + 1)).clamp(0, 1)


def recall_at(above: torch.Tensor, tied: torch.Tensor, k: int) -> float:
    """Percent of queries whose right answer ranks within k when ties are broken at random (in expectation)."""
    return float(hits_at(above, tied, k).mean() * 100)


def _summary(above: torch.Tensor, tied: torch.Tensor, prefix: str) -> dict[str, float]:
    """Metrics with ties broken at random, in expectation: the right answer is equally likely at any tied place.

    R@K is the probability of rank <= K; MedR and mean rank use the expected rank 1 + above + tied / 2.
    So a model whose features have collapsed scores like random guessing, not perfectly.
    """
    out = {f"{prefix}_R@{k}": recall_at(above, tied, k) for k in KS}
    ranks = 1 + above + tied / 2
    out[f"{prefix}_MedR"] = float(math.floor(float(torch.quantile(ranks - 1, 0.5))) + 1)
    out[f"{prefix}_MeanR"] = float(ranks.mean())
    return out


def _checked_ranks(image_features, text_features, caption_image_index):
    """`_ranks` of features given as arrays or tensors, after checking that every caption has an image and every image a caption."""
    image_features = torch.as_tensor(image_features).float().cpu()
    text_features = torch.as_tensor(text_features).float().cpu()
    caption_image = torch.as_tensor(np.asarray(caption_image_index), dtype=torch.long)
    if len(caption_image) != len(text_features):
        raise ValueError("caption_image_index must have one entry per caption")
    if torch.bincount(caption_image, minlength=len(image_features)).min() == 0:
        raise ValueError("every image needs at least one caption")
    return _ranks(image_features, text_features, caption_image)


def retrieval_metrics(image_features, text_features, caption_image_index) -> dict[str, float]:
    """R@1/5/10, MedR and mean rank for both directions, plus rsum, from unit-norm features.

    `caption_image_index[j]` is the row of `image_features` that caption j describes. An image
    with no caption is an error (its i2t rank is undefined).
    """
    i2t, t2i = _checked_ranks(image_features, text_features, caption_image_index)
    out = {**_summary(*i2t, "i2t"), **_summary(*t2i, "t2i")}
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def retrieval_hits(image_features, text_features, caption_image_index, ks=KS) -> dict[str, list[float]]:
    """Per query, the probability of a hit within k (`i2t_R@k` per image, `t2i_R@k` per caption): what R@k averages,
    kept per item so that an interval can resample the test set."""
    i2t, t2i = _checked_ranks(image_features, text_features, caption_image_index)
    return {f"{prefix}_R@{k}": hits_at(*ranks, k).tolist() for prefix, ranks in (("i2t", i2t), ("t2i", t2i)) for k in ks}


def random_guess_metrics(captions_per_image) -> dict[str, float]:
    """Exact expected metrics of a retrieval that ranks at random, for the same test-set shape.

    t2i: a caption's image has a uniform rank in 1..N_images. i2t: the best of an image's m captions
    is the minimum of m uniform positions without replacement among all M captions. MedR is the
    median of the rank distribution pooled over queries.
    """
    counts = np.asarray(captions_per_image, dtype=np.int64)
    n_images, n_captions = len(counts), int(counts.sum())
    # P(best rank > r) = C(M - r, m) / C(M, m), for r = 0..M, averaged over images.
    r = np.arange(0, n_captions + 1)
    i2t_survival = np.zeros(n_captions + 1)
    for m, how_many in zip(*np.unique(counts, return_counts=True)):
        log_tail = _log_comb(n_captions - r, int(m)) - _log_comb(np.array(n_captions), int(m))
        i2t_survival += how_many / n_images * np.exp(log_tail)
    t2i_survival = 1 - np.arange(0, n_images + 1) / n_images
    out: dict[str, float] = {}
    for prefix, survival in (("i2t", i2t_survival), ("t2i", t2i_survival)):
        cdf = 1 - survival[1:]  # cdf[r - 1] = P(rank <= r)
        out.update({f"{prefix}_R@{k}": float(cdf[min(k, len(cdf)) - 1] * 100) for k in KS})
        out[f"{prefix}_MedR"] = float(np.searchsorted(cdf, 0.5 - 1e-12, side="left") + 1)
        out[f"{prefix}_MeanR"] = float(survival[:-1].sum())
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def _log_comb(n: np.ndarray, k: int) -> np.ndarray:
    """log C(n, k), and -inf where n < k."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = gammaln(n + 1) - gammaln(k + 1) - gammaln(np.maximum(n - k, 0) + 1)
    return np.where(n >= k, value, -np.inf)
