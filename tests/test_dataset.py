"""CaptionDataset: grouping, subsets, fingerprint, token batches and the on-disk image cache."""
from __future__ import annotations

import numpy as np
import pytest

from mem_toolkit.data import CaptionDataset, load_caption_csv
from mem_toolkit.errors import DataError

SIZE = 16


def array_dataset(captions, groups, n_images, seed=0) -> CaptionDataset:
    pixels = np.random.default_rng(seed).integers(0, 256, (n_images, SIZE, SIZE, 3), dtype=np.uint8)
    return CaptionDataset(captions, groups, [f"img{i}.png" for i in range(n_images)], SIZE, image_array=pixels, name="toy")


@pytest.fixture
def toy():
    return array_dataset(["a0", "b0", "a1", "c0", "b1", "a2", "d0"], [0, 1, 0, 2, 1, 0, 3], 4)


def test_sizes_and_rows_of_group(toy):
    assert len(toy) == 7 and toy.n_images == 4
    assert [rows.tolist() for rows in toy.rows_of_group()] == [[0, 2, 5], [1, 4], [3], [6]]
    assert toy.first_rows().tolist() == [0, 1, 3, 6]


def test_image_batch_follows_the_rows(toy):
    batch = toy.image_batch([3, 0, 2])
    assert batch.shape == (3, 3, SIZE, SIZE)
    pixels = toy.images([2, 0, 0])
    assert np.array_equal(batch.permute(0, 2, 3, 1).numpy(), pixels)


def test_select_images_reindexes_groups_and_keeps_their_rows(toy):
    subset = toy.select_images([2, 0])
    assert subset.captions == ["a0", "a1", "c0", "a2"]  # row order of the original
    assert subset.group_ids.tolist() == [1, 1, 0, 1]  # image 2 is now 0, image 0 is now 1
    assert subset.image_keys == ["img2.png", "img0.png"]
    assert np.array_equal(subset.images([0, 1]), toy.images([2, 0]))


def test_fingerprint_follows_the_rows(toy):
    same = array_dataset(list(toy.captions), toy.group_ids, 4, seed=1)  # other pixels, same rows
    assert same.fingerprint() == toy.fingerprint()
    changed = array_dataset(["a0", "b0", "a1!", "c0", "b1", "a2", "d0"], toy.group_ids, 4)
    assert changed.fingerprint() != toy.fingerprint()
    regrouped = array_dataset(list(toy.captions), [0, 1, 0, 2, 1, 3, 3], 4)
    assert regrouped.fingerprint() != toy.fingerprint()


def test_bad_construction_is_refused():
    pixels = np.zeros((2, SIZE, SIZE, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="exactly one of"):
        CaptionDataset(["a"], [0], ["k"], SIZE)
    with pytest.raises(ValueError, match="differ in length"):
        CaptionDataset(["a", "b"], [0], ["k", "l"], SIZE, image_array=pixels)
    with pytest.raises(ValueError, match="outside the image list"):
        CaptionDataset(["a"], [2], ["k", "l"], SIZE, image_array=pixels)
    with pytest.raises(ValueError, match="uint8 of shape"):
        CaptionDataset(["a"], [0], ["k", "l"], SIZE, image_array=pixels.astype(np.float32))


def test_token_batch_and_caption_ids(toy):
    from mem_toolkit.text import CaptionTokenizer

    tokenizer = CaptionTokenizer()
    ids = toy.caption_token_ids(tokenizer)
    assert ids[0] == tokenizer.encode("a0")
    tokens = toy.token_batch([1, 6], tokenizer, 8)
    assert tokens.shape == (2, 8)
    assert tokens[1, 1:1 + len(ids[6])].tolist() == ids[6]


@pytest.fixture
def photo_csv(tmp_path, make_image):
    for i in range(5):
        make_image(tmp_path / "img" / f"{i}.png", (30 + 7 * i, 24), seed=i)
    rows = "".join(f"img/{i}.png,caption {i}\nimg/{i}.png,another {i}\n" for i in range(5))
    return (tmp_path / "c.csv", rows)


def test_memmap_cache_is_reused_by_a_second_dataset(tmp_path, photo_csv):
    path, rows = photo_csv
    path.write_text("image,caption\n" + rows)
    cache = tmp_path / "cache"
    first = load_caption_csv(path, SIZE, cache_dir=cache).preload(progress=False)
    pixels = first.images(range(5))
    assert len(list(cache.glob("images-*-16px.u8"))) == 1
    for image in (tmp_path / "img").iterdir():
        image.write_bytes(b"garbage")  # a second dataset over the same rows must not decode the files again
    second = load_caption_csv(path, SIZE, cache_dir=cache).preload(progress=False)
    assert np.array_equal(second.images(range(5)), pixels)


def test_cache_remembers_images_decoded_before_an_error(tmp_path, photo_csv):
    path, rows = photo_csv
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png at all")
    path.write_text("image,caption\n" + rows + "img/bad.png,broken\n")
    cache = tmp_path / "cache"
    first = load_caption_csv(path, SIZE, cache_dir=cache)
    with pytest.raises(DataError, match="bad.png"):
        first.preload(progress=False)
    expected = first.images(range(5))
    for i in range(5):
        (tmp_path / "img" / f"{i}.png").unlink()
    reopened = CaptionDataset(first.captions, first.group_ids, first.image_keys, SIZE, image_paths=first.image_paths, cache_dir=cache)
    assert np.array_equal(reopened.images(range(5)), expected)


def test_a_different_row_set_gets_its_own_cache(tmp_path, photo_csv):
    path, rows = photo_csv
    path.write_text("image,caption\n" + rows)
    cache = tmp_path / "cache"
    load_caption_csv(path, SIZE, cache_dir=cache).preload(progress=False)
    path.write_text("image,caption\n" + rows.replace("another 3", "yet another 3"))
    load_caption_csv(path, SIZE, cache_dir=cache).preload(progress=False)
    assert len(list(cache.glob("images-*-16px.u8"))) == 2
