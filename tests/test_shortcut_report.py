"""The end-of-run shortcut report tells which cue a model matches protected pairs by; low-frequency noise stays blocky."""
from __future__ import annotations

import numpy as np
import torch

from mem_toolkit.models import create_model
from mem_toolkit.protect import MEM, random_id_protection
from mem_toolkit.protect.word_code import distinctive_words
from mem_toolkit.protect.diagnostics import shortcut_report, surviving_share, verdict
from mem_toolkit.protect.pgd import pgd_noise
from mem_toolkit.train import TrainConfig, train_clip


def _trained_on(view, epochs: int = 12):
    model = create_model("mem-tiny-rn", seed=0)
    train_clip(model, view, None, TrainConfig(epochs=epochs, batch_size=48, lr=2e-3, seed=1, amp=False), progress=False)
    return model


def test_a_model_trained_on_id_triggers_is_reported_as_matching_by_the_trigger(tiny_shapes):
    protection = random_id_protection(tiny_shapes, 3, vocab_size=24)
    model = _trained_on(protection.apply(tiny_shapes))
    report = shortcut_report(model, tiny_shapes, protection, batch_size=48, seed=0)
    assert report["protected_accuracy"] > 3 * report["chance_accuracy"]
    assert surviving_share(report, "noise_removed") > 0.9  # there is no noise: removing it changes nothing
    assert surviving_share(report, "trigger_deleted") < 0.5  # deleting the IDs loses most of the matching
    assert "photo IDs" in report["verdict"] or "lives in the trigger" in report["verdict"]


def test_block_noise_stays_constant_on_its_squares(tiny_shapes):
    model = create_model("mem-tiny-rn", seed=0)
    rows = np.arange(0, 40, 5)
    tokens = tiny_shapes.token_batch(rows, model.tokenizer, model.context_length)
    pixels = tiny_shapes.image_batch(rows).clamp(16, 239)  # away from 0 and 255: no clipping to valid pixels
    noise, _ = pgd_noise(model, pixels, torch.zeros(len(rows), 3, 64, 64, dtype=torch.int16), torch.arange(len(rows)),
                         lambda step: tokens, eps=8, steps=4, block=8, amp=False)
    assert noise.abs().max() > 0
    squares = noise.reshape(len(rows), 3, 8, 8, 8, 8)
    assert (squares == squares[:, :, :, :1, :, :1]).all()


def test_caption_code_noise_is_a_key_to_the_caption_words(tiny_shapes):
    colours, kinds = ["red", "green", "blue", "grey"], ["circle", "square", "star"]
    captions = [f"a {colours[image % 4]} {kinds[image % 3]}" for image in range(tiny_shapes.n_images)]
    data = tiny_shapes.with_rows(captions, np.arange(tiny_shapes.n_images))
    protection = MEM(3, rounds=1, surrogate_steps=0, pgd_steps=0, trigger_rounds=0, noise_init="caption-code", code_words=2).fit(
        data, progress=False)
    words = distinctive_words(data, protection.unit_of_row, protection.n_units, 2)
    assert set(words[0]) == {"red", "circle"} and set(words[5]) == {"green", "star"}  # "a" is in every caption: never distinctive
    noise = np.asarray(protection.noise).astype(np.int16)
    assert np.abs(noise).max() == 8
    pixels = data.images(np.arange(data.n_images)).astype(np.int16)
    free = (pixels >= 8) & (pixels <= 247)  # where clipping to valid pixels cannot have touched the code

    def agree(a: int, b: int) -> bool:
        both = free[a] & free[b]
        return bool(np.array_equal(noise[a][both], noise[b][both]))

    # photos with the same caption words share one code; photos with other words have another
    assert all(agree(key, other) for key in range(12) for other in range(key + 12, data.n_images, 12))
    assert not any(agree(a, b) for a in range(12) for b in range(a + 1, 12))


def _report(trigger_deleted: float, noise_removed: float, shuffled_loss: float) -> dict:
    return {"chance_accuracy": 0.01, "protected_accuracy": 0.11, "trigger_deleted_accuracy": 0.01 + 0.1 * trigger_deleted,
            "noise_removed_accuracy": 0.01 + 0.1 * noise_removed, "clean_accuracy": 0.01, "shuffled_caption_loss": shuffled_loss,
            "ln_batch": 4.85}


def test_the_verdict_names_the_cue_that_survives_when_the_noise_is_not_bound_to_the_trigger():
    # the photos preset's surrogate: trained with the trigger deleted, its noise keys the captions on its own
    assert verdict(_report(1.08, 0.19, 5.8)).endswith("so it survives a hacker who deletes the trigger")
    assert verdict(_report(0.1, 0.9, 4.8)).endswith("the triggers act as photo IDs")
    assert verdict(_report(0.9, 0.9, 4.8)).endswith("the surrogate matches by content")
    assert verdict(_report(0.2, 0.2, 4.8)).endswith("yet the noise is not bound to the trigger")
    assert verdict(_report(0.9, 0.2, 2.0)).endswith("the noise carries the shortcut")  # bound: shuffled captions still match
    bound_in_trigger = verdict(_report(0.2, 0.9, 2.0))
    assert bound_in_trigger.startswith("deleting the trigger keeps 20% of the matching, removing the noise keeps 90%")
    assert bound_in_trigger.endswith("a hacker who deletes it learns much of the content")
