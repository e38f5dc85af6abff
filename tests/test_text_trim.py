"""Text forwards trimmed to the batch's longest sequence give the full-context features and gradients."""
from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from mem_toolkit.loss import clip_loss
from mem_toolkit.models import BUNDLED_CONFIGS, ClipModel, create_model, pooled_length
from mem_toolkit.protect import MEM

CAPTIONS = ["a red circle", "two small green squares on a blue background", "a big yellow triangle at the top left of a gray image"]

# the bundled configs, and open_clip's RN50 and ViT-B-32 at full size (their text towers: 12 layers, width 512, 77 tokens)
CONFIGS = ["mem-tiny-rn", "mem-tiny-vit", "RN50", "ViT-B-32"]


@pytest.fixture(scope="module", params=CONFIGS)
def model(request) -> ClipModel:
    return create_model(request.param, seed=0).eval()


def _tokens(model: ClipModel, trigger: list[int] | None = None) -> torch.Tensor:
    ids = [model.tokenizer.encode(c) for c in CAPTIONS]
    prefix = None if trigger is None else np.tile(trigger, (len(ids), 1))
    return model.tokenizer.assemble(ids, model.context_length, prefix=prefix)


def _features(model: ClipModel, tokens: torch.Tensor, trim: bool) -> torch.Tensor:
    model.trim_text = trim
    try:
        return model.encode_text(tokens)
    finally:
        del model.trim_text  # back to the class default


def _seen_lengths(model: ClipModel, tokens: torch.Tensor) -> list[int]:
    """Sequence lengths the text transformer's first block really ran on."""
    lengths: list[int] = []
    handle = model.clip.transformer.resblocks[0].register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model.encode_text(tokens)
    finally:
        handle.remove()
    return lengths


def test_trimmed_and_full_context_features_agree(model):
    assert model.text_trimmable
    for trigger in (None, [1000, 2000, 3000]):
        tokens = _tokens(model, trigger)
        with torch.no_grad():
            full, trimmed = _features(model, tokens, False), _features(model, tokens, True)
        torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-5)
        longest = int((tokens == model.tokenizer.eot).nonzero()[:, 1].max()) + 1
        assert _seen_lengths(model, tokens) == [longest] < [model.context_length]


def test_a_batch_filling_the_context_runs_full_length(model):
    tokens = model.tokenizer.assemble([list(range(400, 400 + 200))], model.context_length)  # truncated to the context
    assert _seen_lengths(model, tokens) == [model.context_length]
    torch.testing.assert_close(_features(model, tokens, True), _features(model, tokens, False), rtol=0, atol=1e-5)


def _last_block_mlp_inputs(model: ClipModel, tokens: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """Text features and the shapes the last text block's MLP ran on."""
    shapes: list[tuple[int, ...]] = []
    mlp = model.clip.transformer.resblocks[-1].mlp
    handle = mlp.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            return model.encode_text(tokens), shapes
    finally:
        handle.remove()


def test_the_last_block_runs_only_at_the_pooled_positions(model):
    """Nothing of the last block's output but the end-of-text position is pooled: it alone is computed, same features."""
    tokens = _tokens(model, [1000, 2000, 3000])
    pooled, shapes = _last_block_mlp_inputs(model, tokens)
    width = model.clip.transformer.width
    assert shapes == [(len(CAPTIONS), 1, width)]
    model.pooled_last_block = False
    try:
        every_position, shapes = _last_block_mlp_inputs(model, tokens)
    finally:
        del model.pooled_last_block
    assert shapes == [(len(CAPTIONS), pooled_length(tokens), width)]
    torch.testing.assert_close(pooled, every_position, rtol=0, atol=1e-5)


def test_gradient_checkpointing_keeps_the_whole_last_block():
    """A checkpointed tower calls its blocks its own way, so the pooled-only last block is not used there."""
    model = create_model("mem-tiny-rn", seed=0).eval()
    tokens = _tokens(model)
    expected, _ = _last_block_mlp_inputs(model, tokens)
    model.clip.set_grad_checkpointing(True)
    features, shapes = _last_block_mlp_inputs(model, tokens)
    assert shapes == [(len(CAPTIONS), pooled_length(tokens), model.clip.transformer.width)]
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


def test_trimmed_gradients_match_full_context_for_training():
    """Weight gradients of the CLIP loss (surrogate and hacker training) are the same with and without trimming
    (the columns after the last end-of-text token, and the last block's other positions)."""
    model = create_model("mem-tiny-rn", seed=0).train()
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = _tokens(model, [1000, 2000])
    grads = []
    for trim in (False, True):
        model.zero_grad(set_to_none=True)
        model.trim_text = trim
        image_features, text_features, scale = model(pixels, tokens)
        clip_loss(image_features, text_features, scale).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    del model.trim_text
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        scale = grads[0][name].abs().max().item()  # rounding of the loss moves near-zero entries by ~1e-6 of the largest
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=max(1e-6, 1e-5 * scale), msg=name)
    positions = grads[0]["clip.positional_embedding"]
    assert positions[pooled_length(tokens):].abs().max() == 0  # nothing after the last end-of-text token was ever used


def test_pooled_length_is_the_furthest_end_of_text_token():
    tokens = torch.zeros(2, 10, dtype=torch.long)
    tokens[0, :3] = torch.tensor([49406, 5, 49407])
    tokens[1, :5] = torch.tensor([49406, 5, 6, 7, 49407])
    assert pooled_length(tokens) == 5


def test_a_bidirectional_text_tower_is_not_trimmed():
    """Without the causal mask every padding token reaches the pooled one: such a tower runs the full context."""
    config = json.loads((BUNDLED_CONFIGS / "mem-tiny-rn.json").read_text())
    torch.manual_seed(0)
    clip = open_clip.create_model("mem-tiny-rn", text_cfg=config["text_cfg"] | {"no_causal_mask": True}).eval()
    model = ClipModel(clip, "mem-tiny-rn", None, (0.5,) * 3, (0.5,) * 3).eval()
    assert not model.text_trimmable
    tokens = _tokens(model)
    assert _seen_lengths(model, tokens) == [model.context_length]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1))


def test_the_noise_gradient_agrees_so_only_rounding_level_signs_can_flip(tiny_shapes):
    """PGD steps by the gradient's sign: trimming moves the gradient by rounding only (about 1e-6 of its largest
    entry, at most 1e-5), so a pixel's step can flip only where its gradient is itself at that level."""
    model = create_model("mem-tiny-rn", seed=0).eval()
    rows = np.arange(24) * 10
    ids = tiny_shapes.caption_token_ids(model.tokenizer)
    tokens = model.tokenizer.assemble([ids[r] for r in rows], model.context_length, prefix=np.tile([1000, 2000, 3000], (24, 1)))
    pixels = tiny_shapes.image_batch(rows).float()
    grads = []
    for trim in (False, True):
        model.trim_text = trim
        delta = torch.zeros_like(pixels).requires_grad_(True)
        with torch.no_grad():
            text_features = model.encode_text(tokens)
        loss = clip_loss(model.encode_image((pixels + delta) / 255), text_features, model.logit_scale().detach())
        grads.append(torch.autograd.grad(loss, delta)[0])
    del model.trim_text
    full, trimmed = grads
    assert (trimmed - full).abs().max() < 1e-5 * full.abs().max()


def _mem_run(tiny_shapes, trim: bool, **settings):
    """One fp32 MEM-3 run with full-context or trimmed text forwards."""
    settings = dict(rounds=2, pgd_steps=3, trigger_rounds=2, candidates=4, batch_size=24, amp=False) | settings
    surrogate = create_model("mem-tiny-rn", seed=0)
    surrogate.trim_text = trim
    return MEM(trigger_len=3, **settings).fit(tiny_shapes, surrogate, progress=False)


def _mem_pair(tiny_shapes, **settings):
    """The same fp32 MEM-3 run with full-context and with trimmed text forwards."""
    full, trimmed = (_mem_run(tiny_shapes, trim, **settings) for trim in (False, True))
    assert np.abs(np.asarray(full.noise)).max() > 0 and len(np.unique(full.triggers)) > 1  # the run did change something
    return full, trimmed


def _share_differing(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.asarray(a) != np.asarray(b)).mean())


@pytest.mark.parametrize("granularity", ["image", "row"])
def test_hotflip_and_pgd_in_fp32_give_the_same_triggers_and_nearly_the_same_noise(tiny_shapes, granularity):
    """With the surrogate's weights fixed (no surrogate steps): the same triggers, and at most 0.5 % of noise
    values differ. A sign step flips only where the pixel's gradient is at rounding level (about 3 in a million
    per batch, test above), but each flip changes every later gradient a little, so once one happens more
    follow: measured 0.07 % (row granularity: 2,001 of 2.95M values) and 0.18 % (image granularity: 1,041 of
    590k) over 2 rounds, one thread."""
    full, trimmed = _mem_pair(tiny_shapes, surrogate_steps=0, granularity=granularity)
    np.testing.assert_array_equal(trimmed.triggers, full.triggers)
    assert _share_differing(trimmed.noise, full.noise) < 5e-3


def test_with_surrogate_steps_trimming_moves_no_more_noise_than_another_thread_count(tiny_shapes):
    """AdamW turns rounding-level gradient differences into weight differences of about lr/10 for weights
    whose gradient is near zero (its step is lr * m / sqrt(v), whatever the gradient's size), so after
    surrogate steps more sign steps flip. Trimming is a rounding change like running on another number of
    threads (another order of summation): the same triggers, and no more than twice the share of noise values
    that the thread count moves (measured 3.0 % for trimming, 3.2 % for 1 against 2 threads)."""
    full, trimmed = _mem_pair(tiny_shapes, surrogate_steps=3)
    np.testing.assert_array_equal(trimmed.triggers, full.triggers)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        other_threads = _mem_run(tiny_shapes, True, surrogate_steps=3)
    finally:
        torch.set_num_threads(threads)
    baseline = _share_differing(trimmed.noise, other_threads.noise)
    assert 0 < baseline and _share_differing(trimmed.noise, full.noise) < 2 * baseline
