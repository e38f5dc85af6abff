"""The two optimisation steps of protection: PGD on integer noise and HotFlip on trigger tokens."""
from __future__ import annotations

import numpy as np
import torch

from mem_toolkit.loss import clip_loss
from mem_toolkit.models import create_model
from mem_toolkit.protect.hotflip import hotflip_step
from mem_toolkit.protect.pgd import pgd_noise


def _batch(dataset, n=16):
    rows = np.arange(0, 5 * n, 5)[:n]  # one caption per image
    return rows, dataset.image_batch(rows)


def test_pgd_noise_stays_on_lattice_within_eps_and_valid_pixels(tiny_shapes):
    model = create_model("mem-tiny-rn", seed=0)
    rows, pixels = _batch(tiny_shapes)
    pixels[0] = 255  # a saturated image: noise must not push it above 255
    tokens = tiny_shapes.token_batch(rows, model.tokenizer, model.context_length)
    noise, _ = pgd_noise(model, pixels, torch.zeros(len(rows), 3, 64, 64, dtype=torch.int16), torch.arange(len(rows)),
                         lambda step: tokens, eps=4, steps=6, step_size=1, amp=False)
    assert noise.dtype == torch.int16
    assert noise.abs().max() <= 4 and noise.abs().max() > 0
    protected = pixels.to(torch.int16) + noise
    assert protected.min() >= 0 and protected.max() <= 255
    assert (noise[0] <= 0).all()


def test_pgd_descent_lowers_and_ascent_raises_the_loss(tiny_shapes):
    model = create_model("mem-tiny-rn", seed=0)
    rows, pixels = _batch(tiny_shapes)
    tokens = tiny_shapes.token_batch(rows, model.tokenizer, model.context_length)
    start = torch.zeros(len(rows), 3, 64, 64, dtype=torch.int16)

    def loss_with(noise):
        model.eval()
        with torch.no_grad():
            image = model.encode_image((pixels.float() + noise.float()) / 255)
            return clip_loss(image, model.encode_text(tokens), model.logit_scale()).item()

    down, _ = pgd_noise(model, pixels, start, torch.arange(len(rows)), lambda s: tokens, eps=8, steps=8, amp=False)
    up, _ = pgd_noise(model, pixels, start, torch.arange(len(rows)), lambda s: tokens, eps=8, steps=8, ascent=True, amp=False)
    clean = loss_with(start)
    assert loss_with(down) < clean - 1e-3
    assert loss_with(up) > clean + 1e-3


def test_pgd_shared_unit_gets_one_noise_for_all_its_rows(tiny_shapes):
    model = create_model("mem-tiny-rn", seed=0)
    rows, pixels = _batch(tiny_shapes, 8)
    tokens = tiny_shapes.token_batch(rows, model.tokenizer, model.context_length)
    units = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    noise, losses = pgd_noise(model, pixels, torch.zeros(2, 3, 64, 64, dtype=torch.int16), units, lambda s: tokens, eps=8, steps=3, amp=False)
    assert noise.shape == (2, 3, 64, 64) and len(losses) == 3
    assert noise.abs().max() <= 8


def _hotflip_setup(dataset, n_rows=12, k=3, seed=0):
    model = create_model("mem-tiny-rn", seed=seed)
    rows = np.arange(n_rows) * 4
    ids = dataset.caption_token_ids(model.tokenizer)
    caption_ids = [ids[r] for r in rows]
    allowed = torch.from_numpy(model.tokenizer.whole_word_ids[:3000])
    rng = np.random.default_rng(seed)
    triggers = torch.from_numpy(rng.choice(allowed.numpy(), size=(n_rows, k)))
    with torch.no_grad():
        image_features = model.eval().encode_image(dataset.image_batch(rows)).float()
    return model, caption_ids, triggers, allowed, image_features


def _loss(model, image_features, caption_ids, triggers, unit_index):
    tokens = model.tokenizer.assemble(caption_ids, model.context_length, prefix=triggers[unit_index].numpy())
    with torch.no_grad():
        return clip_loss(image_features, model.encode_text(tokens).float(), model.logit_scale().float()).item()


def test_hotflip_never_increases_the_loss_and_reports_it_exactly(tiny_shapes):
    for seed in range(3):
        model, caption_ids, triggers, allowed, image_features = _hotflip_setup(tiny_shapes, seed=seed)
        units = torch.arange(len(caption_ids))
        result = hotflip_step(model, image_features, caption_ids, triggers, units, allowed, candidates=8, beam=2)
        before = _loss(model, image_features, caption_ids, triggers, units)
        after = _loss(model, image_features, caption_ids, result.triggers, units)
        assert abs(result.loss_before - before) < 1e-4
        assert abs(result.loss_after - after) < 1e-4
        assert after <= before + 1e-6
        assert after < before  # with 8 candidates per position some flip helps a random trigger
        changed = result.triggers[result.triggers != triggers]
        assert torch.isin(changed, allowed).all()


def test_hotflip_units_shared_by_several_rows_get_one_trigger(tiny_shapes):
    model, caption_ids, triggers, allowed, image_features = _hotflip_setup(tiny_shapes, n_rows=12, k=2)
    units = torch.arange(12) // 3  # four units of three rows
    result = hotflip_step(model, image_features, caption_ids, triggers[:4], units, allowed, candidates=6)
    assert result.triggers.shape == (4, 2)
    assert result.loss_after <= result.loss_before + 1e-6
    assert abs(_loss(model, image_features, caption_ids, result.triggers, units) - result.loss_after) < 1e-4


def test_hotflip_scores_only_the_flips_and_matches_exhaustive_coordinate_descent(tiny_shapes):
    """With every allowed token a candidate, the candidates do not depend on the gradient: beam-1 HotFlip is then
    exact coordinate descent per unit (other units fixed), and a hypothesis's own loss is never re-encoded."""
    model, caption_ids, _, allowed, image_features = _hotflip_setup(tiny_shapes, n_rows=6, k=2, seed=1)
    allowed = allowed[:5]
    triggers = allowed[torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1], [3, 2], [0, 4]])]
    units = torch.arange(6)
    encoded = [0]
    hook = model.token_embedding.register_forward_hook(lambda _m, _i, out: encoded.__setitem__(0, encoded[0] + out.shape[0]))
    try:
        result = hotflip_step(model, image_features, caption_ids, triggers, units, allowed, candidates=len(allowed))
    finally:
        hook.remove()
    assert encoded[0] == 6 + 2 * 6 * (len(allowed) - 1)  # the gradient pass, then 4 flips per unit and position

    def loss_with(unit, trigger):
        trial = triggers.clone()
        trial[unit] = trigger
        return _loss(model, image_features, caption_ids, trial, units)

    before = _loss(model, image_features, caption_ids, triggers, units)
    descended = triggers.clone()
    for unit in range(6):
        current, current_loss = triggers[unit].clone(), before
        for position in range(2):
            for token in allowed:
                trial = current.clone()
                trial[position] = token
                trial_loss = loss_with(unit, trial)
                if trial_loss < current_loss - 1e-6:
                    current, current_loss = trial, trial_loss
        descended[unit] = current
    assert _loss(model, image_features, caption_ids, descended, units) < before  # so the joint update is kept
    assert torch.equal(result.triggers, descended)
