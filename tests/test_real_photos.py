"""The loaders on real photographs (COCO JPEGs of varying size and mode) beside the repository."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mem_toolkit.data import load_caption_csv
from mem_toolkit.protect import MEM, StrippedView, random_id_protection
from mem_toolkit.protect.controls import strip_words, write_control_sets
from mem_toolkit.protect.diagnostics import surviving_share
from mem_toolkit.protect.word_code import distinctive_words
from mem_toolkit.text import CaptionTokenizer


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


@pytest.fixture(scope="module")
def photo_subset(shared_data):
    """The first 64 photos of the real-photo development split (about 320 human captions) at 64 px."""
    train = load_caption_csv(shared_data / "vi_photos_dev" / "train.csv", 64)
    return train.select_images(np.arange(64)).preload(progress=False)


def test_control_sets_are_what_a_hacker_makes_of_the_published_files(photo_subset, tmp_path):
    protection = MEM(3, preset="photos", rounds=1, surrogate_steps=2, pgd_steps=1, trigger_rounds=1, candidates=2, batch_size=32).fit(
        photo_subset, progress=False)
    assert protection.n_units == photo_subset.n_images  # one noise (a code of its caption words) and one trigger per photo
    random_id = random_id_protection(photo_subset, 3, vocab_size=24)
    sets = write_control_sets(photo_subset, protection, random_id, tmp_path)
    assert sorted(sets) == ["clean", "mem-3", "mem-3-noise-only", "mem-3-trigger-only", "random-id-trigger"]
    loaded = {name: load_caption_csv(path, 64).preload(progress=False) for name, path in sets.items()}
    rows = np.arange(len(photo_subset))
    protected = protection.apply(photo_subset)
    tokenizer = CaptionTokenizer()
    # noise only = the published photos with the trigger words deleted from the published captions
    assert loaded["mem-3-noise-only"].captions == photo_subset.captions
    assert loaded["mem-3-noise-only"].captions == [strip_words(c, 3) for c in loaded["mem-3"].captions]
    assert torch.equal(loaded["mem-3-noise-only"].image_batch(rows), protected.image_batch(rows))
    assert torch.equal(loaded["mem-3-noise-only"].token_batch(rows, tokenizer, 77), StrippedView(protected, 3).token_batch(rows, tokenizer, 77))
    # trigger only = the published captions on the clean photos
    assert torch.equal(loaded["mem-3-trigger-only"].image_batch(rows), photo_subset.image_batch(rows))
    assert torch.equal(loaded["mem-3-trigger-only"].token_batch(rows, tokenizer, 77), protected.token_batch(rows, tokenizer, 77))
    assert not torch.equal(loaded["mem-3"].image_batch(rows), photo_subset.image_batch(rows))
    assert torch.equal(loaded["random-id-trigger"].image_batch(rows), photo_subset.image_batch(rows))
    assert all(published.endswith(" " + caption) and published != caption
               for published, caption in zip(loaded["random-id-trigger"].captions, photo_subset.captions))


def test_shortcut_report_sees_per_photo_triggers_acting_as_ids_on_real_photos(photo_subset):
    # the embedded-shapes setting on real photos: per-photo triggers and noise (the real-photo issue's failure)
    protection = MEM(3, preset="cpu", rounds=2, batch_size=64).fit(photo_subset, progress=False)
    report = protection.config["shortcut"]
    assert report["protected_accuracy"] > report["chance_accuracy"]
    assert surviving_share(report, "trigger_deleted") < surviving_share(report, "noise_removed")
    assert report["shuffled_caption_loss"] > 0.75 * report["ln_batch"]  # the noise never bound to the trigger
    assert report["verdict"].endswith("the triggers act as photo IDs"), report["verdict"]


def test_word_code_on_real_photos_keys_the_caption_words(photo_subset):
    # the photos preset's code step on real photos and captions: it lowers the surrogate's loss on the photos with
    # their own captions (no trigger), and photos that share all their coded words get one noise
    protection = MEM(3, preset="photos", rounds=2, surrogate_steps=2, pgd_steps=3, trigger_rounds=0, batch_size=32).fit(
        photo_subset, progress=False)
    assert all(record["pgd_loss_last"] < record["pgd_loss_first"] for record in protection.diagnostics)
    words = distinctive_words(photo_subset, protection.unit_of_row, protection.n_units, 4, 0.02)
    noise = np.asarray(protection.noise).astype(np.int16)
    pixels = photo_subset.images(np.arange(photo_subset.n_images)).astype(np.int16)
    free = (pixels >= 8) & (pixels <= 247)
    pairs = [(a, b) for a in range(len(words)) for b in range(a + 1, len(words)) if set(words[a]) == set(words[b])]
    assert pairs, "some photos of the subset share their coded words"
    assert all(np.array_equal(noise[a][free[a] & free[b]], noise[b][free[a] & free[b]]) for a, b in pairs)
    assert 0 < np.abs(noise).max() <= 8
