"""Which rows share one noise and one trigger: per row, per image, or per cluster of similar images."""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer

from ..data.dataset import CaptionDataset

GRANULARITIES = ("row", "image", "cluster")


def sharing_units(dataset: CaptionDataset, granularity: str, n_clusters: int = 0, seed: int = 0, cluster_size: int = 0) -> np.ndarray:
    """Unit index of every row (noise and trigger are stored once per unit).

    `row`: each (image, caption) pair its own (the official code); `image`: all captions of a photo
    share one (a person posts a photo once); `cluster`: k-means over the TF-IDF of each image's
    captions, so similar images share (the official class-wise variant, without labels), with
    `n_clusters` clusters or, given `cluster_size`, about that many images per cluster whatever the
    size of the data. A shared trigger cannot act as a photo ID, and a noise shared by photos whose
    captions agree is a shortcut to those captions even when the trigger is deleted.
    """
    if granularity == "cluster" and cluster_size:
        n_clusters = max(1, round(dataset.n_images / cluster_size))
    if granularity == "row":
        return np.arange(len(dataset), dtype=np.int64)
    if granularity == "image":
        return dataset.group_ids.copy()
    if granularity == "cluster":
        if not 1 <= n_clusters <= dataset.n_images:
            raise ValueError(f"n_clusters must be between 1 and the number of images ({dataset.n_images}), got {n_clusters}")
        documents = [" ".join(dataset.captions[r] for r in rows) for rows in dataset.rows_of_group()]
        features = TfidfVectorizer().fit_transform(documents)
        cluster_of_image = KMeans(n_clusters, n_init=4, random_state=seed).fit_predict(features)
        return cluster_of_image[dataset.group_ids].astype(np.int64)
    raise ValueError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")


def sweep_rows(dataset: CaptionDataset, granularity: str, rng: np.random.Generator) -> np.ndarray:
    """Rows visited by one pass of the trigger or noise step, shuffled.

    Per row, every row; otherwise one randomly chosen caption per image, so each image is seen once.
    """
    if granularity == "row":
        return rng.permutation(len(dataset))
    picks = np.array([rng.choice(rows) for rows in dataset.rows_of_group()], dtype=np.int64)
    return rng.permutation(picks)


def sweep_batches(rows: np.ndarray, unit_of_row: np.ndarray, batch_size: int, processes: int = 1,
                  units_span_batches: bool = False) -> list[tuple[int, np.ndarray]]:
    """A sweep's rows cut into batches of `batch_size` (at least 2 rows), each with the rank that sweeps it.

    Where every unit lies in one batch of the sweep (row and image granularity) the batches go round
    robin. Where a unit spans several batches (clusters) and several processes sweep, two processes
    must never update one unit: each unit belongs to one rank (unit mod `processes`) and that rank's
    batches hold only its units, which it sweeps in order. In one process both plans are the same.
    """
    def cut(part: np.ndarray) -> list[np.ndarray]:
        return [part[i:i + batch_size] for i in range(0, len(part), batch_size) if len(part[i:i + batch_size]) >= 2]

    if not units_span_batches or processes == 1:
        return [(index % processes, batch) for index, batch in enumerate(cut(rows))]
    owner_of_row = unit_of_row[rows] % processes
    return [(owner, batch) for owner in range(processes) for batch in cut(rows[owner_of_row == owner])]
