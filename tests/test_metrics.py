"""Retrieval metrics against a brute-force per-query reference, hand-made cases, and the random-guess reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mem_toolkit.metrics import random_guess_metrics, retrieval_metrics

KS = (1, 5, 10)


def brute_force_metrics(image_features, text_features, caption_image) -> dict[str, float]:
    """One query at a time: sort all candidates by score (argsort) and find the position of the right one."""
    scores = np.asarray(image_features, dtype=np.float64) @ np.asarray(text_features, dtype=np.float64).T
    i2t = []
    for image in range(len(scores)):
        order = list(np.argsort(-scores[image], kind="stable"))
        own = [j for j in range(len(caption_image)) if caption_image[j] == image]
        i2t.append(min(order.index(j) for j in own) + 1)
    t2i = []
    for caption in range(scores.shape[1]):
        order = list(np.argsort(-scores[:, caption], kind="stable"))
        t2i.append(order.index(caption_image[caption]) + 1)
    out = {}
    for prefix, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in KS:
            out[f"{prefix}_R@{k}"] = 100.0 * np.mean(ranks <= k)
        out[f"{prefix}_MedR"] = math.floor(np.median(ranks - 1)) + 1
        out[f"{prefix}_MeanR"] = ranks.mean()
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def random_features(n_images: int, counts: np.ndarray, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    caption_image = np.repeat(np.arange(n_images), counts)
    images = rng.normal(size=(n_images, dim))
    texts = 0.8 * images[caption_image] + rng.normal(size=(len(caption_image), dim))  # related, far from perfect
    normalise = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return normalise(images), normalise(texts), caption_image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_uneven_caption_counts(seed):
    rng = np.random.default_rng(100 + seed)
    counts = rng.integers(1, 7, size=41)  # 1 to 6 captions per image
    images, texts, caption_image = random_features(41, counts, 8, seed)
    got = retrieval_metrics(images, texts, caption_image)
    assert got == pytest.approx(brute_force_metrics(images, texts, caption_image))


def test_matches_brute_force_across_chunk_boundaries():
    """More than 1024 images and captions: the vectorised code scores in chunks."""
    counts = np.random.default_rng(5).integers(1, 3, size=1100)
    images, texts, caption_image = random_features(1100, counts, 16, seed=3)
    got = retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts), torch.from_numpy(caption_image))
    assert got == pytest.approx(brute_force_metrics(images, texts, caption_image))


def test_five_captions_per_image_matches_brute_force():
    images, texts, caption_image = random_features(30, np.full(30, 5), 8, seed=7)
    assert retrieval_metrics(images, texts, caption_image) == pytest.approx(brute_force_metrics(images, texts, caption_image))


def test_identity_features_are_perfect():
    counts = np.array([1, 3, 2, 5, 1, 4])
    caption_image = np.repeat(np.arange(len(counts)), counts)
    images = np.eye(len(counts), dtype=np.float32)
    got = retrieval_metrics(images, images[caption_image], caption_image)
    for direction in ("i2t", "t2i"):
        assert got[f"{direction}_R@1"] == 100.0
        assert got[f"{direction}_MedR"] == 1.0
        assert got[f"{direction}_MeanR"] == 1.0
    assert got["rsum"] == 600.0


def test_hand_made_case():
    """Image features are one-hot, so score[image, caption] is text_features[caption][image]."""
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[0.2, 0.9, 0.1],   # caption 0, of image 0: image 1 scores higher -> t2i rank 2
                      [0.8, 0.1, 0.3],   # caption 1, of image 0: t2i rank 1
                      [0.5, 0.4, 0.6],   # caption 2, of image 1: images 2 and 0 score higher -> rank 3
                      [0.3, 0.2, 0.7]],  # caption 3, of image 2: rank 1
                     dtype=np.float32)
    got = retrieval_metrics(images, texts, [0, 0, 1, 2])
    # i2t: image 0's best caption (0.8) is first; image 1's caption (0.4) is behind caption 0 (0.9); image 2 first.
    assert got["i2t_R@1"] == pytest.approx(200 / 3)
    assert got["i2t_R@5"] == 100.0
    assert got["i2t_MedR"] == 1.0
    assert got["i2t_MeanR"] == pytest.approx(4 / 3)
    # t2i ranks 2, 1, 3, 1: median of (rank - 1) is 0.5, floored -> MedR 1.
    assert got["t2i_R@1"] == 50.0
    assert got["t2i_MedR"] == 1.0
    assert got["t2i_MeanR"] == pytest.approx(7 / 4)
    assert got["rsum"] == pytest.approx(200 / 3 + 100 + 100 + 50 + 100 + 100)


def test_ties_are_broken_at_random_in_expectation():
    images = np.array([[1, 0], [0, 1]], dtype=np.float32)
    texts = np.array([[1, 0], [1, 0]], dtype=np.float32)  # both captions identical; caption 1 belongs to image 1
    got = retrieval_metrics(images, texts, [0, 1])
    # each image's own caption ties with the other one: rank 1 or 2 with equal chance
    assert got["i2t_R@1"] == 50.0 and got["i2t_MeanR"] == 1.5
    # caption 1 scores image 0 (1) above its own image 1 (0) -> rank 2; caption 0 -> rank 1 (no tie)
    assert got["t2i_R@1"] == 50.0
    assert got["t2i_MeanR"] == 1.5


def test_collapsed_features_score_like_random_guessing():
    features = np.ones((4, 3), dtype=np.float32) / math.sqrt(3)
    counts = np.full(4, 2)
    got = retrieval_metrics(features, np.repeat(features, 2, axis=0), np.repeat(np.arange(4), 2))
    chance = random_guess_metrics(counts)
    assert got["t2i_R@1"] == pytest.approx(25.0) == pytest.approx(chance["t2i_R@1"])
    assert got["i2t_R@1"] == pytest.approx(100 / 7)  # the best own caption ties with the 6 others
    assert got["t2i_MeanR"] == pytest.approx(chance["t2i_MeanR"])


def test_own_captions_tying_with_each_other_do_not_count_against_the_image():
    images = np.eye(2, dtype=np.float32)
    texts = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # image 0 has two identical captions
    got = retrieval_metrics(images, texts, [0, 0, 1])
    assert got["i2t_R@1"] == 100.0


def test_bad_arguments_are_refused():
    images, texts, caption_image = random_features(4, np.full(4, 2), 4, seed=0)
    with pytest.raises(ValueError, match="one entry per caption"):
        retrieval_metrics(images, texts, caption_image[:-1])
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(images, texts, np.where(caption_image == 3, 0, caption_image))


# -- random guessing -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [7, 50, 51, 1000])
def test_random_guess_one_caption_per_image_closed_form(n):
    got = random_guess_metrics(np.ones(n, dtype=int))
    for direction in ("i2t", "t2i"):
        for k in KS:
            assert got[f"{direction}_R@{k}"] == pytest.approx(100 * min(k, n) / n)
        assert got[f"{direction}_MeanR"] == pytest.approx((n + 1) / 2)
        assert got[f"{direction}_MedR"] == math.ceil(n / 2)  # = floor(median of 0..n-1) + 1


def test_random_guess_uneven_counts_closed_form():
    counts = np.array([1, 5, 2, 5, 3, 1, 4, 5])
    total = int(counts.sum())
    got = random_guess_metrics(counts)
    for k in KS:
        # the best of m random positions among M is beyond k with probability C(M - k, m) / C(M, m)
        expected = np.mean([1 - math.comb(total - k, m) / math.comb(total, m) for m in counts])
        assert got[f"i2t_R@{k}"] == pytest.approx(100 * expected)
        assert got[f"t2i_R@{k}"] == pytest.approx(100 * min(k, len(counts)) / len(counts))
    assert got["i2t_MeanR"] == pytest.approx(np.mean([(total + 1) / (m + 1) for m in counts]))  # E[min] = (M+1)/(m+1)
    assert got["t2i_MeanR"] == pytest.approx((len(counts) + 1) / 2)


def test_random_guess_agrees_with_monte_carlo():
    counts = np.array([5, 5, 1, 2, 5, 3, 5, 4, 1, 5, 2, 5])
    n_images, n_captions, trials = len(counts), int(counts.sum()), 4000
    rng = np.random.default_rng(0)
    positions = np.argsort(rng.random((trials, n_captions)), axis=1).argsort(axis=1) + 1  # a random ranking per trial
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    i2t = np.minimum.reduceat(positions, starts, axis=1).ravel()
    t2i = rng.integers(1, n_images + 1, size=(trials, n_captions)).ravel()
    expected = random_guess_metrics(counts)
    for prefix, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in KS:
            assert 100 * np.mean(ranks <= k) == pytest.approx(expected[f"{prefix}_R@{k}"], abs=1.0)
        assert ranks.mean() == pytest.approx(expected[f"{prefix}_MeanR"], rel=0.02)
        assert abs((math.floor(np.median(ranks - 1)) + 1) - expected[f"{prefix}_MedR"]) <= 1


def test_random_guess_is_what_random_features_give_on_average():
    """Averaged over many random feature draws, measured retrieval approaches the reference."""
    counts = np.array([5, 1, 3, 5, 2, 5, 4, 5, 1, 5])
    caption_image = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(1)
    runs = [retrieval_metrics(rng.normal(size=(len(counts), 32)), rng.normal(size=(len(caption_image), 32)), caption_image) for _ in range(250)]
    expected = random_guess_metrics(counts)
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"):
        assert np.mean([r[key] for r in runs]) == pytest.approx(expected[key], abs=3.0)  # about 3 standard errors
