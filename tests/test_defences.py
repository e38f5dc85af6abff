"""The hacker's defences, applied to a real exported MEM protection of the tiny shapes, and the crop-flip training augmentation."""
from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mem_toolkit.augment import crop_flip, crop_flip_params
from mem_toolkit.cli import main
from mem_toolkit.data import load_caption_csv, make_shapes
from mem_toolkit.data.writer import write_dataset
from mem_toolkit.defences import DEFENCES, KINDS, apply_defence, defended_config
from mem_toolkit.defences.captions import strip_shared_prefix
from mem_toolkit.errors import DefenceError
from mem_toolkit.models import create_model
from mem_toolkit.protect import MEM
from mem_toolkit.protect.export import export_protection
from mem_toolkit.train import History, TrainConfig, train_clip


@pytest.fixture(scope="module")
def published(tiny_shapes, tmp_path_factory):
    """A MEM-3 export of the tiny shapes (triggers from a 24-word vocabulary, as the cpu preset draws them) and the clean CSV of the same rows.

    One short round; the noise starts uniform in ±ε so that it has the size of a real protection's (mean |noise| about 4/255).
    """
    root = tmp_path_factory.mktemp("defences")
    protection = MEM(3, rounds=1, surrogate_steps=1, pgd_steps=1, trigger_rounds=1, batch_size=24, trigger_vocab_size=24,
                     noise_init="uniform").fit(tiny_shapes, progress=False)
    return SimpleNamespace(root=root, protection=protection, csv=export_protection(protection, tiny_shapes, root / "published", progress=False),
                           clean=write_dataset(tiny_shapes, root / "clean", "captions.csv", progress=False))


def _pixels(csv_path) -> np.ndarray:
    """Every image of a caption CSV, in the order of first use (64 px files are read without resizing)."""
    dataset = load_caption_csv(csv_path, 64)
    return dataset.images(range(dataset.n_images)).astype(np.int16)


def _defended(published, name: str, **options):
    return apply_defence(name, published.csv, published.root / name, progress=False, **options)


def _high_frequency(images: np.ndarray) -> float:
    """Spectral energy of the grey images above a quarter cycle per pixel (what a half-size image cannot hold)."""
    grey = images.astype(np.float64).mean(axis=-1)
    frequencies = np.abs(np.fft.fftfreq(grey.shape[1]))
    high = np.maximum(frequencies[:, None], frequencies[None, :]) > 0.25
    return float((np.abs(np.fft.fft2(grey - grey.mean(axis=(1, 2), keepdims=True))) ** 2)[:, high].sum())


def _rows(csv_path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_registry_names_every_defence_with_its_kind_and_parameters():
    assert {d.kind for d in DEFENCES.values()} == set(KINDS)
    assert {"jpeg90", "jpeg75", "jpeg50", "downscale50", "grayscale", "gaussian-blur", "median3", "bits4", "noise8", "strip3", "shared-prefix",
            "vocabulary", "protected20", "protected50", "protected80", "protected100", "crop-flip", "epochs-x2"} <= set(DEFENCES)
    assert DEFENCES["jpeg75"].params == {"quality": 75} and DEFENCES["protected50"].params == {"fraction": 0.5}
    config = TrainConfig(epochs=8)
    assert defended_config("crop-flip", config) == TrainConfig(epochs=8, augment="crop-flip")
    assert defended_config("epochs-x2", config).epochs == 16 and defended_config("jpeg75", config) is config


def test_jpeg_is_a_pillow_round_trip_at_its_quality(published):
    before = _pixels(published.csv).astype(np.uint8)
    for quality in (90, 75, 50):
        after = _pixels(_defended(published, f"jpeg{quality}"))
        for image, defended in zip(before, after):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            assert np.array_equal(np.asarray(Image.open(buffer).convert("RGB")), defended)
        assert not np.array_equal(after, before)


def test_jpeg75_shrinks_the_published_noise(published):
    """The noise a hacker's images carry after the defence is the difference JPEG leaves between the protected and the clean image.

    (JPEG's own loss on these small textured images, mean 6/255 from the clean pixels, is larger than
    the noise, so |JPEG(published) - clean| is not the measure.)"""
    clean, noisy = _pixels(published.clean), _pixels(published.csv)
    jpeg_clean = _pixels(apply_defence("jpeg75", published.clean, published.root / "clean-jpeg75", progress=False))
    before = np.abs(noisy - clean).mean()
    after = np.abs(_pixels(_defended(published, "jpeg75")) - jpeg_clean).mean()
    assert 3 < before <= published.protection.eps and after < 0.85 * before


def test_grayscale_bits_and_noise_do_what_they_say(published):
    before = _pixels(published.csv)
    grey = _pixels(_defended(published, "grayscale"))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all() and not np.array_equal(grey, before)
    levels = np.unique(_pixels(_defended(published, "bits4")))
    assert len(levels) <= 16 and set(levels.tolist()) <= set(range(0, 256, 17))
    noise = _pixels(_defended(published, "noise8")) - before
    assert np.abs(noise).max() <= 8 and np.abs(noise).mean() > 3
    again = apply_defence("noise8", published.csv, published.root / "noise8-again", progress=False)
    other_seed = apply_defence("noise8", published.csv, published.root / "noise8-seed1", seed=1, progress=False)
    assert np.array_equal(_pixels(again) - before, noise) and not np.array_equal(_pixels(other_seed) - before, noise)


def test_downscale_blur_and_median_keep_the_size_and_lose_high_frequencies(published):
    before = _pixels(published.csv)
    for name, kept in (("downscale50", 0.5), ("gaussian-blur", 0.5), ("median3", 0.8)):
        after = _pixels(_defended(published, name))
        assert after.shape == before.shape
        assert _high_frequency(after) < kept * _high_frequency(before), name


def test_strip3_and_the_shared_prefix_give_back_the_original_captions(published, tiny_shapes):
    triggers = set(" ".join(published.protection.trigger_words()).split())
    published_rows = _rows(published.csv)
    assert all(row["caption"].split()[0] in triggers for row in published_rows)
    for name in ("strip3", "shared-prefix"):
        rows = _rows(_defended(published, name))
        assert [row["caption"] for row in rows] == tiny_shapes.captions, name
        assert [row["image"] for row in rows] == [row["image"] for row in published_rows]


def test_the_shared_prefix_leaves_clean_captions_alone(published, tiny_shapes):
    out = apply_defence("shared-prefix", published.clean, published.root / "clean-prefix", progress=False)
    assert [row["caption"] for row in _rows(out)] == tiny_shapes.captions
    captions = make_shapes(300, 16, seed=5).captions  # more captions, other scenes: still no opening is shared by half of them
    stripped = strip_shared_prefix(captions)
    removed = sum(len(a.split()) - len(b.split()) for a, b in zip(captions, stripped))
    assert removed <= 0.02 * sum(len(a.split()) for a in captions)


def test_the_vocabulary_filter_keeps_only_words_of_other_data(published, tiny_shapes, tmp_path):
    other = write_dataset(make_shapes(60, 16, seed=11, name="other"), tmp_path / "other", "captions.csv", progress=False)
    vocabulary = {word.lower().strip(",:") for row in _rows(other) for word in row["caption"].split()}
    rows = _rows(_defended(published, "vocabulary", vocabulary=other))
    assert all(word.lower().strip(",:") in vocabulary for row in rows for word in row["caption"].split())
    triggers = set(" ".join(published.protection.trigger_words()).split())
    assert not any(set(row["caption"].split()) & triggers for row in rows)
    assert sum(row["caption"] == caption for row, caption in zip(rows, tiny_shapes.captions)) > 0.9 * len(rows)
    words = tmp_path / "words.txt"
    words.write_text("Red\nCIRCLE\n")
    kept = _rows(apply_defence("vocabulary", published.csv, tmp_path / "words", vocabulary=words, progress=False))
    assert kept and all({word.lower().strip(",:") for word in row["caption"].split()} <= {"red", "circle"} for row in kept)
    assert len(kept) < len(tiny_shapes)  # captions left without a known word are dropped


def test_a_protected_fraction_takes_whole_images_seeded(published, tiny_shapes):
    protected_captions = [row["caption"] for row in _rows(published.csv)]
    chosen = {}
    for percent in (20, 50, 80, 100):
        rows = _rows(_defended(published, f"protected{percent}", clean_csv=published.clean))
        assert len(rows) == len(tiny_shapes)
        sides = np.array([row["image"].startswith("images/protected/") for row in rows])
        assert all(row["image"].startswith(("images/protected/", "images/clean/")) for row in rows)
        for rows_of_image in tiny_shapes.rows_of_group():
            assert len(set(sides[rows_of_image].tolist())) == 1  # all captions of an image from the same side
        assert sides.reshape(-1, 5)[:, 0].sum() == round(percent / 100 * tiny_shapes.n_images)
        expected = [p if side else c for p, c, side in zip(protected_captions, tiny_shapes.captions, sides)]
        assert [row["caption"] for row in rows] == expected
        defended = load_caption_csv(published.root / f"protected{percent}" / "captions.csv", 64)
        assert len(defended) == len(tiny_shapes) and defended.n_images == tiny_shapes.n_images
        chosen[percent] = sides
    again = _rows(apply_defence("protected50", published.csv, published.root / "p50-again", clean_csv=published.clean, progress=False))
    other = _rows(apply_defence("protected50", published.csv, published.root / "p50-seed1", clean_csv=published.clean, seed=1, progress=False))
    assert np.array_equal([row["image"].startswith("images/protected/") for row in again], chosen[50])
    assert not np.array_equal([row["image"].startswith("images/protected/") for row in other], chosen[50])


def test_crop_flip_geometry_and_seeding(tiny_shapes):
    pixels = tiny_shapes.image_batch(np.arange(8))
    identity = np.tile([1.0, 1.0, 0.0, 0.0, 1.0], (8, 1))
    assert torch.equal(crop_flip(pixels, identity), pixels)
    mirrored = identity * [1, 1, 1, 1, -1]
    assert torch.equal(crop_flip(pixels, mirrored), pixels.flip(-1))
    params = crop_flip_params(8, (0, 1, 2))
    assert np.array_equal(params, crop_flip_params(8, (0, 1, 2))) and not np.array_equal(params, crop_flip_params(8, (0, 1, 3)))
    area = params[:, 0] * params[:, 1]
    assert (area >= 0.5 - 1e-9).all() and (area <= 1).all() and (np.abs(params[:, 2]) <= 1 - params[:, 0] + 1e-9).all()
    augmented = crop_flip(pixels, params)
    assert augmented.shape == pixels.shape and augmented.dtype == torch.uint8 and not torch.equal(augmented, pixels)


class Interrupted(Exception):
    pass


def test_training_with_crop_flip_is_reproducible_and_resumes_to_the_same_run(tiny_shapes, tmp_path):
    train = tiny_shapes.select_images(range(8))
    config = TrainConfig(epochs=2, batch_size=8, augment="crop-flip")
    assert "augment" not in TrainConfig().record() and config.record()["augment"] == "crop-flip"
    with pytest.raises(ValueError, match="unknown augment"):
        TrainConfig(augment="mixup")
    full = train_clip(create_model("mem-tiny-rn", seed=0), train, None, config, progress=False)

    def stop_after_first_epoch(history: History) -> None:
        if len(history.epochs) == 1:
            raise Interrupted

    checkpoint = tmp_path / "run.safetensors"
    with pytest.raises(Interrupted):
        train_clip(create_model("mem-tiny-rn", seed=0), train, None, config, checkpoint=checkpoint, progress=False, on_epoch=stop_after_first_epoch)
    resumed = train_clip(create_model("mem-tiny-rn", seed=0), train, None, config, checkpoint=checkpoint, resume=True, progress=False)
    assert resumed.step_loss == full.step_loss and resumed.config["augment"] == "crop-flip"
    plain = train_clip(create_model("mem-tiny-rn", seed=0), train, None, TrainConfig(epochs=2, batch_size=8), progress=False)
    assert plain.step_loss[0] != full.step_loss[0]  # same weights and rows, other pixels


def test_defend_command_writes_and_refuses_bad_input_in_one_line(published, tmp_path, capsys):
    out = tmp_path / "defended"
    assert main(["defend", "--data", str(published.csv), "--defence", "jpeg75", "--out", str(out)]) == 0
    assert f"wrote {out / 'captions.csv'}" in capsys.readouterr().out
    assert len(load_caption_csv(out / "captions.csv", 64)) == len(_rows(published.csv))
    reversed_clean = tmp_path / "reversed.csv"
    clean_rows = _rows(published.clean)[::-1]
    with open(reversed_clean, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("image", "caption")] + [(str(published.clean.parent / r["image"]), r["caption"]) for r in clean_rows])
    shorter = tmp_path / "shorter.csv"
    with open(shorter, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("image", "caption")] + [(str(published.clean.parent / r["image"]), r["caption"]) for r in clean_rows[:10]])
    cases = [
        (["--defence", "jpeg-75"], "unknown defence 'jpeg-75'; choose from jpeg90, jpeg75"),
        (["--defence", "jpeg75", "--data", str(tmp_path / "missing.csv")], f"{tmp_path / 'missing.csv'}: caption CSV not found"),
        (["--defence", "protected50"], "protected50 mixes protected and clean images: give the clean CSV"),
        (["--defence", "protected50", "--clean", str(tmp_path / "nope.csv")], f"{tmp_path / 'nope.csv'}: caption CSV not found"),
        (["--defence", "protected50", "--clean", str(reversed_clean)], "row 1's protected caption"),
        (["--defence", "protected50", "--clean", str(shorter)], f"{published.csv} (240 rows) and {shorter} (10 rows) differ in length"),
        (["--defence", "vocabulary"], "vocabulary keeps the words of other data: give their vocabulary"),
        (["--defence", "crop-flip"], "crop-flip is a training defence"),
        (["--defence", "jpeg75", "--out", str(published.csv.parent)], "write the defended copy to another folder"),
    ]
    for flags, message in cases:
        args = {"--data": str(published.csv), "--out": str(tmp_path / "refused")} | dict(zip(flags[::2], flags[1::2]))
        assert main(["defend", *[item for pair in args.items() for item in pair]]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (flags, err)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(DefenceError, match="unknown defence"):
        apply_defence("jpeg", published.csv, tmp_path / "x")
