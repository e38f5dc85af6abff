"""`CaptionDataset.with_rows` (new rows over the same decoded images) and `select_images`, which now uses it."""
from __future__ import annotations

import numpy as np
from PIL import Image

from mem_toolkit.data.loaders import load_caption_csv


def test_with_rows_carries_decoded_pixels_without_decoding_again(tmp_path):
    for i, colour in enumerate(((250, 0, 0), (0, 250, 0), (0, 0, 250))):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.csv").write_text("image,caption\n0.png,red\n1.png,green\n1.png,grass\n2.png,blue\n")
    dataset = load_caption_csv(tmp_path / "captions.csv", 16).preload(progress=False)
    before = dataset.images([0, 1, 2])
    for i in range(3):
        (tmp_path / f"{i}.png").unlink()  # from here on, only the cache can answer
    relabelled = dataset.with_rows(["the blue one", "the red one", "red again"], [0, 1, 1], groups=[2, 0], name="relabelled")
    assert relabelled.n_images == 2 and len(relabelled) == 3 and relabelled.name == "relabelled"
    assert relabelled.image_keys == [dataset.image_keys[2], dataset.image_keys[0]]
    assert np.array_equal(relabelled.images([0, 1]), before[[2, 0]])
    same = dataset.with_rows(["a", "b", "c"], [2, 1, 0])
    assert np.array_equal(same.images([0, 1, 2]), before) and same.captions == ["a", "b", "c"]
    selected = dataset.select_images([1])
    assert selected.captions == ["green", "grass"] and list(selected.group_ids) == [0, 0]
    assert np.array_equal(selected.images([0]), before[[1]])


def test_preload_keeps_the_rows_the_loader_skipped(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "captions.csv").write_text("image,caption\ngood.png,fine\nmissing.png,gone\ncorrupt.png,broken\n")
    listed = load_caption_csv(tmp_path / "captions.csv", 8, skip_bad=True)
    assert [p.message.split(":")[0] for p in listed.skipped] == ["image file not found"]
    decoded = listed.preload(progress=False, skip_bad=True)
    assert decoded.captions == ["fine"]
    assert len(decoded.skipped) == 2 and "missing.png" in str(decoded.skipped[0]) and "corrupt.png" in str(decoded.skipped[1])
