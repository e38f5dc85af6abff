"""Synthetic shapes: deterministic from the seed, five captions per image, written and read back losslessly."""
from __future__ import annotations

import numpy as np
import pytest

from mem_toolkit.data import Difficulty, load_caption_csv, make_shapes, make_shapes_split
from mem_toolkit.data.writer import write_dataset


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_shapes(6, 32, seed=3), make_shapes(6, 32, seed=3), make_shapes(6, 32, seed=4)
    assert a.captions == b.captions and np.array_equal(a.images(range(6)), b.images(range(6)))
    assert a.captions != c.captions and not np.array_equal(a.images(range(6)), c.images(range(6)))


def test_five_captions_per_image_of_its_content():
    dataset = make_shapes(10, 32, seed=0, difficulty="easy")
    assert len(dataset) == 50 and np.bincount(dataset.group_ids).tolist() == [5] * 10
    assert all(caption and caption == " ".join(caption.split()) for caption in dataset.captions)
    assert len(set(dataset.captions)) > 40  # templates and synonyms vary


def test_split_is_disjoint_and_sized():
    train, test = make_shapes_split(8, 4, 32, seed=0)
    assert (train.n_images, test.n_images) == (8, 4)
    assert not set(train.image_keys) & set(test.image_keys)
    assert not {p.tobytes() for p in train.images(range(8))} & {p.tobytes() for p in test.images(range(4))}


def test_difficulty_presets():
    assert Difficulty.preset("easy").max_objects == 1 and Difficulty.preset("hard").max_objects == 3
    assert Difficulty.preset("default") == Difficulty()
    with pytest.raises(ValueError, match="unknown difficulty 'brutal'"):
        Difficulty.preset("brutal")


def test_written_dataset_reads_back_identically(tmp_path):
    dataset = make_shapes(5, 32, seed=2)
    csv_path = write_dataset(dataset, tmp_path, "train.csv", progress=False)
    loaded = load_caption_csv(csv_path, 32).preload(progress=False)
    assert loaded.captions == dataset.captions
    assert loaded.group_ids.tolist() == dataset.group_ids.tolist()
    assert np.array_equal(loaded.images(range(5)), dataset.images(range(5)))  # PNG is lossless, sizes match
    assert not list(tmp_path.rglob("*.tmp"))
