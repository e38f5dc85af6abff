"""Results tables, the random-ID control and the demo's ordering checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mem_toolkit.studies.demo import ordering_checks
from mem_toolkit.experiment import results_table
from mem_toolkit.protect import random_id_protection
from mem_toolkit.protect.vocabulary import allowed_trigger_tokens
from mem_toolkit.text import CaptionTokenizer


def test_random_id_control_has_no_noise_and_one_trigger_per_image(tiny_shapes):
    control = random_id_protection(tiny_shapes, 3, seed=1)
    assert control.noise.shape[0] == tiny_shapes.n_images and not control.noise.any()
    assert control.triggers.shape == (tiny_shapes.n_images, 3)
    assert len(np.unique(control.triggers, axis=0)) == tiny_shapes.n_images
    tokenizer = CaptionTokenizer()
    caption_words = tokenizer.vocabulary_of(tiny_shapes.caption_token_ids(tokenizer))
    assert not np.isin(control.triggers, caption_words).any()
    view = control.apply(tiny_shapes)
    assert (view.image_batch([0, 1]) == tiny_shapes.image_batch([0, 1])).all()
    again = random_id_protection(tiny_shapes, 3, seed=1)
    assert np.array_equal(again.triggers, control.triggers)


def test_trigger_vocabulary_excludes_caption_words_and_can_be_small(tiny_shapes):
    tokenizer = CaptionTokenizer()
    caption_words = tokenizer.vocabulary_of(tiny_shapes.caption_token_ids(tokenizer))
    full = allowed_trigger_tokens(tiny_shapes, tokenizer)
    assert not np.isin(full, caption_words).any()
    with_captions = allowed_trigger_tokens(tiny_shapes, tokenizer, exclude_caption_vocab=False)
    assert np.isin(caption_words, with_captions).sum() > 0 and len(with_captions) > len(full)
    small = allowed_trigger_tokens(tiny_shapes, tokenizer, vocab_size=16, seed=2)
    assert len(small) == 16 and np.isin(small, full).all()
    assert np.array_equal(small, allowed_trigger_tokens(tiny_shapes, tokenizer, vocab_size=16, seed=2))


def _metrics(r1: float, r10: float = 60.0) -> dict:
    out = {}
    for d in ("i2t", "t2i"):
        out.update({f"{d}_R@1": r1, f"{d}_R@5": r1 + 5, f"{d}_R@10": r10, f"{d}_MedR": 3.0})
    return out


def test_results_table_has_paper_columns_and_random_row(tiny_shapes):
    table = results_table({"clean": _metrics(40), "mem-3": _metrics(2, 9)}, tiny_shapes, "title")
    lines = table.splitlines()
    assert lines[0] == "**title**"
    assert lines[2].startswith("| method | i2t R@1 | i2t R@5 | i2t R@10 | i2t MedR | t2i R@1")
    assert lines[4].startswith("| clean | 40.0 | 45.0 | 60.0 | 3 |")
    random_row = lines[-1]
    assert random_row.startswith("| random guess | ")
    t2i_r1 = float(random_row.split("|")[6])
    assert abs(t2i_r1 - 100 / tiny_shapes.n_images) < 0.05


def test_ordering_checks_follow_the_issue_targets():
    good = {"clean": _metrics(50), "uap": _metrics(40), "em": _metrics(30), "mem-3": _metrics(10), "mem-5": _metrics(11.5)}
    assert all(ordering_checks(good).values())
    bad = good | {"mem-5": _metrics(13), "em": _metrics(45)}
    checks = ordering_checks(bad)
    assert not checks["i2t: MEM-3 < EM < UAP < clean (R@1)"]
    assert not checks["t2i: MEM-5 <= MEM-3 + 2 points (R@1)"]
    assert checks["i2t: clean R@10 >= 50 %"]


def test_cached_arms_and_protections_are_reused_only_for_the_same_inputs(tiny_shapes, tmp_path):
    import json

    from mem_toolkit.studies.demo import protect_cached
    from mem_toolkit.experiment import run_arm
    from mem_toolkit.protect import EM
    from mem_toolkit.train import TrainConfig

    small = tiny_shapes.select_images(range(16))
    config = TrainConfig(epochs=1, batch_size=16)
    first = run_arm("arm", small, small, config, tmp_path, key="a", progress=False)
    assert run_arm("arm", small, small, config, tmp_path, key="a", progress=False).seconds == first.seconds
    other = run_arm("arm", small, small, config, tmp_path, key="b", progress=False)
    assert other.seconds != first.seconds and json.loads((tmp_path / "arm" / "arm.json").read_text())["data_key"] == "b"

    settings = dict(rounds=1, surrogate_steps=1, pgd_steps=1, batch_size=16)
    made = protect_cached(EM(**settings), small, tmp_path / "em", progress=False)
    assert (tmp_path / "em" / "noise.npy").exists() and not (tmp_path / "em" / "work").exists()  # resume state dropped
    assert Path(made.noise.filename) == tmp_path / "em" / "noise.npy"  # the returned noise maps the saved file
    again = protect_cached(EM(**settings), small, tmp_path / "em", progress=False)
    assert np.array_equal(made.noise, again.noise)
    changed = protect_cached(EM(**(settings | {"eps": 3})), small, tmp_path / "em", progress=False)
    assert changed.eps == 3 and np.abs(changed.noise).max() <= 3
