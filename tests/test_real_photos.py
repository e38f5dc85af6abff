"""The loaders on real photographs (COCO JPEGs of varying size and mode) beside the repository."""
from __future__ import annotations

import numpy as np

from mem_toolkit.data import load_caption_csv


def test_coco_mini_loads_and_decodes(shared_data):
    dataset = load_caption_csv(shared_data / "coco_mini" / "captions.csv", 48).preload(progress=False)
    assert dataset.n_images == 159 and len(dataset) == 795
    assert dataset.skipped == []
    assert np.bincount(dataset.group_ids).tolist() == [5] * 159
    assert all(caption.strip() for caption in dataset.captions)
    pixels = dataset.images(np.arange(dataset.n_images))
    assert pixels.shape == (159, 48, 48, 3) and pixels.dtype == np.uint8
    assert (pixels.reshape(159, -1).std(axis=1) > 5).all()  # real content in every image, not blank
    assert len({p.tobytes() for p in pixels}) == 159  # and all distinct
