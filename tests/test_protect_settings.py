"""Settings that shape the protection: starting noise, surrogate restarts, trigger vocabulary size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mem_toolkit.models import create_model
from mem_toolkit.protect import MEM, UAP
from mem_toolkit.protect.base import ProtectConfig, _initialise_noise


def _start(dataset, triggers, **settings):
    config = ProtectConfig(**settings)
    noise = np.zeros((dataset.n_images, 64, 64, 3), dtype=np.int8)
    _initialise_noise(noise, triggers, dataset, dataset.group_ids, config)
    return noise


def test_trigger_code_noise_is_a_sum_of_per_token_patterns(tiny_shapes):
    triggers = np.zeros((tiny_shapes.n_images, 3), dtype=np.int64)
    triggers[:] = [10, 20, 30]
    triggers[1] = [10, 20, 31]  # differs from unit 0 at the last position only
    triggers[2] = [11, 21, 31]  # differs everywhere
    noise = _start(tiny_shapes, triggers, eps=6, noise_init="trigger-code", trigger_len=3).astype(int)
    assert np.abs(noise).max() == 6 and set(np.unique(np.abs(noise))) <= {0, 1, 2, 3, 4, 5, 6}
    pixels = tiny_shapes.images(range(tiny_shapes.n_images)).astype(int)
    assert (pixels + noise).min() >= 0 and (pixels + noise).max() <= 255
    unclipped = (pixels[:, :, :, :] > 6) & (pixels < 249)
    both = unclipped[0] & unclipped[3]
    assert np.array_equal(noise[0][both], noise[3][both])  # same trigger, same code
    agree_one = np.mean(np.sign(noise[0]) == np.sign(noise[1]))
    agree_none = np.mean(np.sign(noise[0]) == np.sign(noise[2]))
    assert agree_one > agree_none + 0.15  # sharing two of three tokens shares most of the code


def test_uniform_and_zero_starts_and_bad_choices(tiny_shapes):
    triggers = np.zeros((tiny_shapes.n_images, 0), dtype=np.int64)
    assert not _start(tiny_shapes, triggers, eps=8).any()
    uniform = _start(tiny_shapes, triggers, eps=8, noise_init="uniform", seed=1)
    assert np.abs(uniform).max() <= 8 and np.abs(uniform).mean() > 3
    assert np.array_equal(uniform, _start(tiny_shapes, triggers, eps=8, noise_init="uniform", seed=1))
    with pytest.raises(ValueError, match="needs a trigger"):
        _start(tiny_shapes, triggers, eps=8, noise_init="trigger-code")
    with pytest.raises(ValueError, match="unknown noise_init"):
        _start(tiny_shapes, triggers, eps=8, noise_init="gaussian")


def test_zero_pgd_steps_keeps_the_starting_noise(tiny_shapes):
    """pgd_steps=0 skips the noise step: a uniform start with no steps is the random-noise reference."""
    protection = UAP(surrogate_epochs=0, pgd_steps=0, noise_init="uniform", eps=8, batch_size=16, seed=1).fit(tiny_shapes, progress=False)
    triggers = np.zeros((tiny_shapes.n_images, 0), dtype=np.int64)
    assert np.array_equal(protection.noise, _start(tiny_shapes, triggers, eps=8, noise_init="uniform", seed=1))
    assert not any(key.startswith("pgd_") for key in protection.diagnostics[0])


def test_surrogate_reset_gives_a_fresh_model_or_the_given_weights(tiny_shapes):
    protector = MEM(3, surrogate_reset=1, seed=4)
    surrogate = create_model("mem-tiny-rn", seed=0)
    with torch.no_grad():
        surrogate.clip.logit_scale.fill_(3.0)
    protector._reset_surrogate(surrogate, None, round_index=2)
    seed = int(np.random.default_rng([4, 2, 99]).integers(2**31))
    fresh = create_model("mem-tiny-rn", seed=seed)
    for (name, a), (_, b) in zip(surrogate.clip.state_dict().items(), fresh.clip.state_dict().items()):
        assert torch.equal(a, b), name
    given = {k: v.clone() for k, v in create_model("mem-tiny-rn", seed=7).state_dict().items()}
    protector._reset_surrogate(surrogate, given, round_index=2)
    assert all(torch.equal(surrogate.state_dict()[k], v) for k, v in given.items())


def test_alternate_surrogate_takes_turns_between_the_given_weights_and_fresh_ones(tiny_shapes):
    protector = MEM(3, surrogate_reset=1, surrogate_alternate=True, seed=4)
    surrogate = create_model("mem-tiny-rn", seed=0)
    given = {k: v.clone() for k, v in create_model("mem-tiny-rn", seed=7).state_dict().items()}
    seen = []
    for round_index in (1, 2, 3, 4):
        protector._reset_surrogate(surrogate, given, round_index)
        seen.append(all(torch.equal(surrogate.state_dict()[k], v) for k, v in given.items()))
    assert seen == [False, True, False, True]  # round 0 starts from the given weights, so odd rounds are the fresh turns
    with pytest.raises(ValueError, match="needs surrogate_reset"):
        MEM(3, surrogate_alternate=True)
    with pytest.raises(ValueError, match="start from a pretrained surrogate"):
        MEM(3, rounds=1, surrogate_reset=1, surrogate_alternate=True, surrogate_steps=0, pgd_steps=0, trigger_rounds=0).fit(tiny_shapes, progress=False)


def test_reset_rounds_are_recorded_and_small_vocabulary_is_respected(tiny_shapes):
    protection = MEM(3, rounds=3, surrogate_reset=2, surrogate_steps=1, pgd_steps=1, trigger_rounds=3, candidates=3,
                     trigger_vocab_size=6, batch_size=24).fit(tiny_shapes, progress=False)
    assert [d.get("surrogate_reset", False) for d in protection.diagnostics] == [False, False, True]
    assert len(np.unique(protection.triggers)) <= 6
    assert protection.diagnostics[-1]["distinct_trigger_tokens"] <= 6


def test_strip_share_pairs_stripped_rows_with_their_own_caption_and_shuffles_the_rest(tiny_shapes):
    protector = MEM(3, strip_share=0.5, pgd_steps=4, shuffle=True)
    batches = [np.arange(40), np.arange(40, 72)]
    orders = protector._caption_orders([(0, rows) for rows in batches], round_index=0)
    for rows, (order, stripped) in zip(batches, orders):
        assert order.shape == stripped.shape == (4, len(rows))
        assert 0.2 < stripped.mean() < 0.8
        for step in range(4):
            kept = np.flatnonzero(~stripped[step])
            assert np.array_equal(order[step][stripped[step]], np.flatnonzero(stripped[step]))  # EM's aligned pairs
            assert sorted(order[step][kept]) == kept.tolist() and not np.array_equal(order[step][kept], kept)  # MEM's shuffle
    unstripped = MEM(3, pgd_steps=4, shuffle=True)._caption_orders([(0, rows) for rows in batches], round_index=0)
    legacy = np.random.default_rng([0, 0, 2])  # without strip_share: the orders of the earlier releases, bit for bit
    assert all(np.array_equal(o, np.stack([legacy.permutation(len(b)) for _ in range(4)])) and s is None
               for b, (o, s) in zip(batches, unstripped))
    with pytest.raises(ValueError, match="strip_share"):
        MEM(3, strip_share=1.5)


def test_strip_share_shows_the_surrogate_a_share_of_captions_without_trigger(tiny_shapes):
    protection = MEM(3, rounds=1, surrogate_steps=0, pgd_steps=0, trigger_rounds=0).fit(tiny_shapes, progress=False)
    view = MEM(3, strip_share=0.5)._surrogate_view(protection.apply(tiny_shapes), round_index=0)
    model = create_model("mem-tiny-rn", seed=0)
    rows = np.arange(len(tiny_shapes))
    tokens = view.token_batch(rows, model.tokenizer, model.context_length)
    with_trigger = protection.apply(tiny_shapes).token_batch(rows, model.tokenizer, model.context_length)
    without = tiny_shapes.token_batch(rows, model.tokenizer, model.context_length)
    assert torch.equal(tokens[view.stripped], without[view.stripped]) and torch.equal(tokens[~view.stripped], with_trigger[~view.stripped])
    assert 0.3 < view.stripped.mean() < 0.7
    assert torch.equal(view.image_batch(rows[:8]), protection.apply(tiny_shapes).image_batch(rows[:8]))  # the noise stays on every row
