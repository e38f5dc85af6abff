"""Speed options that compute the same: fused AdamW, channels-last ResNet image towers, their one-query attention pool
and their batch norm folded into the convolutions for PGD."""
from __future__ import annotations

import copy
from unittest import mock

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mem_toolkit.loss import clip_loss
from mem_toolkit import models
from mem_toolkit.models import create_model, load_model, pooled_attention_pool, pooled_pool_applies
from mem_toolkit.data.shapes import make_shapes
from mem_toolkit.protect import MEM, base
from mem_toolkit.protect.pgd import pgd_noise
from mem_toolkit.train import adamw, parameter_groups


def _train(model, optimizer, steps: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = model.tokenizer(["a red circle", "two green squares", "a big blue triangle", "a gray star"], model.context_length)
    for _ in range(steps):
        pixels = torch.rand(4, 3, 64, 64, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        clip_loss(*model(pixels, tokens)).backward()
        optimizer.step()
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def test_adamw_is_fused_on_cpu_and_steps_like_the_per_tensor_loop():
    """One step from the same gradients gives the same weights up to rounding (1e-6 against a step of lr = 1e-3).
    Later steps would differ more where a gradient is pure rounding noise (e.g. attention key biases): Adam
    divides it by its own size, so any rounding change gives those weights other steps of size lr."""
    model = create_model("mem-tiny-rn", seed=0)
    reference = copy.deepcopy(model)
    fused = adamw(model, 0.2, lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(parameter_groups(reference, 0.2), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    after_fused, after_loop = _train(model, fused, steps=1), _train(reference, loop, steps=1)
    moved = max(float((after_loop[n] - start[n]).abs().max()) for n in start)
    assert moved > 5e-4  # the step did move the weights
    for name in after_loop:
        torch.testing.assert_close(after_fused[name], after_loop[name], rtol=0, atol=1e-6, msg=name)


def test_resnet_image_tower_runs_channels_last_with_the_same_features(tmp_path):
    model = create_model("mem-tiny-rn", seed=0).eval()
    assert model.channels_last and not create_model("mem-tiny-vit", seed=0).channels_last
    assert all(p.is_contiguous() for p in model.parameters())  # only the activations change layout
    plain = copy.deepcopy(model)
    plain.channels_last = False
    layouts = []
    handle = model.clip.visual.layer1.register_forward_hook(lambda _m, _i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    pixels = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), plain.encode_image(pixels), rtol=0, atol=1e-5)
    handle.remove()
    assert layouts == [True]
    model.save(tmp_path / "model.safetensors")  # safetensors needs contiguous tensors: saved in the usual layout
    loaded = load_model(tmp_path / "model.safetensors").eval()
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.encode_image(pixels).numpy(), model.encode_image(pixels).numpy())



@pytest.mark.parametrize("name, size", [("mem-tiny-rn", 64), ("mem-tiny-rn", 256), ("RN50", 64)])  # 5, 65 and 5 tokens; 32 heads
def test_resnet_attention_pool_of_the_pooled_query_alone_gives_the_same_features_and_gradients(name, size):
    """Training mode (batch-norm statistics of the batch). Features agree in fp32 to 1e-6. Weight gradients are
    compared in float64, where they agree to 1e-9 of each tensor's largest entry: the two orders of summation
    are the same function (in fp32 sums over a 256 px batch differ by ~1e-5 of their size from rounding alone).
    The key bias's true gradient is zero (softmax does not see a shift of every key): rounding noise in both."""
    model = create_model(name, seed=0, image_size=size).train()
    plain = copy.deepcopy(model)
    plain.pooled_attention_pool = False
    pixels = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.encode_image(pixels), plain.encode_image(pixels), rtol=0, atol=1e-6)
    model, plain, pixels = model.double(), plain.double(), pixels.double()
    for each in (model, plain):
        features = each.encode_image(pixels)
        (features * torch.arange(features.shape[1])).sum().backward()
    scale = max(float(p.grad.abs().max()) for p in plain.clip.visual.parameters())
    assert scale > 1.0
    for (param_name, param), other in zip(model.clip.visual.named_parameters(), plain.clip.visual.parameters()):
        if param_name == "attnpool.k_proj.bias":
            assert max(float(param.grad.abs().max()), float(other.grad.abs().max())) < 1e-12 * scale
            continue
        torch.testing.assert_close(param.grad, other.grad, rtol=0, atol=1e-9 * float(other.grad.abs().max()), msg=param_name)
    assert not pooled_pool_applies(create_model("mem-tiny-vit", seed=0).clip.visual)


@pytest.mark.parametrize("side, bound", [(2, 0.75), (8, 0.1)])
def test_pooled_attention_pool_costs_a_fraction_of_open_clips(side, bound):
    """Counted multiply-adds of the pool alone on mem-tiny-rn's last feature map (width 1024, 32 heads). 5 tokens:
    one query instead of five (~11.6 C x C products an image against 15.6); 65 tokens: the projections
    folded into the query (~3 against 195.6)."""
    pool = create_model("mem-tiny-rn", seed=0, image_size=32 * side).clip.visual.attnpool
    x = torch.rand(4, 1024, side, side)
    counts = []
    for run in (lambda: pooled_attention_pool(pool, x), lambda: pool(x)):
        with FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    assert 0 < counts[0] < bound * counts[1]



@pytest.mark.parametrize("name", ["mem-tiny-rn", "RN50"])
def test_frozen_image_tower_folds_batch_norm_with_the_same_features_and_input_gradients(name):
    """Eval mode: features agree in fp32 to 1e-6 and the input gradient in float64 to 1e-10 of its largest entry.
    The folded copy has no batch norm left, is not one of the model's modules, and is gone after the block;
    in training mode (batch statistics) nothing is folded."""
    model = create_model(name, seed=0, image_size=64).eval()
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    keys = list(model.state_dict())
    reference = model.encode_image(pixels)
    with model.frozen_image_tower():
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model._folded_visual.modules())
        assert list(model.state_dict()) == keys
        torch.testing.assert_close(model.encode_image(pixels), reference, rtol=0, atol=1e-6)
    assert model._folded_visual is None
    model, pixels = model.double(), pixels.double()
    gradients = []
    for folded in (True, False):
        inputs = pixels.clone().requires_grad_(True)
        model.fold_batch_norm = folded
        with model.frozen_image_tower():
            features = model.encode_image(inputs)
        (features * torch.arange(features.shape[1])).sum().backward()
        gradients.append(inputs.grad)
    assert float(gradients[1].abs().max()) > 0
    torch.testing.assert_close(gradients[0], gradients[1], rtol=0, atol=1e-10 * float(gradients[1].abs().max()))
    with model.train().frozen_image_tower():
        assert model._folded_visual is None


def test_pgd_in_fp32_folds_once_per_call_and_gives_the_same_noise():
    model = create_model("mem-tiny-rn", seed=0)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (16, 3, 64, 64), generator=generator).to(torch.uint8)
    tokens = model.tokenizer([f"a red circle {i}" for i in range(16)], model.context_length)
    runs = []
    for fold in (True, False):
        model.fold_batch_norm = fold
        with mock.patch.object(models, "batch_norm_folded", wraps=models.batch_norm_folded) as folding:
            runs.append(pgd_noise(model, pixels, torch.zeros(16, 3, 64, 64, dtype=torch.int16), torch.arange(16), lambda _step: tokens,
                                  eps=8, steps=3, amp=False))
        assert folding.call_count == int(fold)
    (noise, losses), (plain_noise, plain_losses) = runs
    assert noise.abs().max() == 3  # three steps of one pixel unit moved the noise
    assert torch.equal(noise, plain_noise)
    np.testing.assert_allclose(losses, plain_losses, rtol=0, atol=1e-5)



def test_a_mem_noise_sweep_in_fp32_folds_batch_norm_once_per_round():
    """Two rounds of three batches each (12 images, batches of 4): the surrogate's weights stay fixed during a
    sweep, so one fold a round."""
    protector = MEM(2, rounds=2, surrogate_steps=1, pgd_steps=2, trigger_rounds=0, batch_size=4, amp=False)
    with mock.patch.object(models, "batch_norm_folded", wraps=models.batch_norm_folded) as folding, \
            mock.patch.object(base, "pgd_noise", wraps=base.pgd_noise) as sweeps:
        protector.fit(make_shapes(12, 64, seed=4), progress=False)
    assert sweeps.call_count == 6 and folding.call_count == 2


def _text_gradients(model, encode, tokens, amp: bool) -> tuple[torch.Tensor, list[str]]:
    """Gradient of the text features' sum w.r.t. the text transformer's weights, and the attention ops that ran."""
    model.zero_grad(set_to_none=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            features = encode(tokens)
        features.float().sum().backward()
    ops = sorted({e.key for e in prof.key_averages() if "attention" in e.key})
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "clip.transformer" in n]), ops


def test_bf16_cpu_text_training_uses_the_math_attention_kernel_with_flash_accuracy():
    """open_clip's own text forward (torch's default kernel: flash) is the accuracy reference in bf16."""
    model = create_model("mem-tiny-rn", seed=0).train()
    tokens = model.tokenizer(["a big red circle on a blue background", "two green squares", "a small yellow star"] * 20, model.context_length)
    reference, _ = _text_gradients(model, model.encode_text, tokens, amp=False)
    chosen, ops = _text_gradients(model, model.encode_text, tokens, amp=True)
    flash, flash_ops = _text_gradients(model, model.clip.encode_text, tokens, amp=True)
    assert not any("flash" in op for op in ops) and any("flash" in op for op in flash_ops)
    error = lambda grads: float((grads - reference).norm() / reference.norm())  # noqa: E731
    assert error(chosen) < 0.05 and error(chosen) < 1.5 * error(flash)


def test_autocast_is_bf16_only_where_the_device_runs_bf16_natively():
    """Emulated bf16 (an AVX2-only CPU) is about 10x slower than fp32 there, so `amp` falls back to fp32."""
    from mem_toolkit.train import autocast, native_bf16

    layer = torch.nn.Linear(8, 8)
    with autocast(torch.device("cpu"), True):
        out = layer(torch.ones(2, 8))
    assert out.dtype == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    with autocast(torch.device("cpu"), False):
        assert layer(torch.ones(2, 8)).dtype == torch.float32
