"""Projected sign-gradient steps on integer image noise (the noise step of MEM / EM, and UAP).

Noise is an integer tensor in pixel units, so every iterate stays exactly on the 1/255 lattice and
within [-ε, ε]; pixels + noise stay within [0, 255].
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from ..loss import clip_loss
from ..models import ClipModel
from ..train import autocast, runs_bf16
from .eot import Transform


def pgd_noise(
    model: ClipModel,
    pixels: torch.Tensor,
    noise: torch.Tensor,
    unit_index: torch.Tensor,
    tokens_for_step: Callable[[int], torch.Tensor],
    *,
    eps: int,
    steps: int,
    step_size: int = 1,
    ascent: bool = False,
    amp: bool = True,
    block: int = 1,
    transform: Transform | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Run `steps` sign steps on `noise` (units, 3, S, S, int16) for a batch of rows.

    Row i uses `noise[unit_index[i]]` (units shared by several rows get the summed gradient).
    `tokens_for_step(t)` gives the texts for step t (MEM re-shuffles captions every step). Descent
    minimises the CLIP loss (EM, MEM); `ascent=True` maximises it (UAP). Returns the new noise and the
    loss before each step. Text features need no gradient, so they are computed without one; in fp32 a ResNet
    image tower runs with batch norm folded (`ClipModel.frozen_image_tower`).
    With `block` > 1 the gradient is summed over `block` x `block` squares before its sign is taken,
    so a noise that starts constant on those squares stays so (low-frequency noise: a coarse
    pattern a fresh model picks up early, and one that survives resizing and re-encoding better).
    `transform(images, step)` (EOT, `protect.eot`) processes the protected images as a hacker would
    before the model sees them, differentiably, so the noise is optimised for what survives it.
    """
    device = model.device
    pixels = pixels.to(device)
    unit_index = unit_index.to(device)
    noise = noise.to(device=device, dtype=torch.int16)
    one_row_per_unit = len(torch.unique(unit_index)) == len(unit_index)
    losses = []
    with frozen_for_pgd(model, amp):
        for step in range(steps):
            with torch.no_grad(), autocast(device, amp):
                text_features = model.encode_text(tokens_for_step(step).to(device))
            delta = noise.float().requires_grad_(True)
            images = (pixels.float() + delta[unit_index]) / 255.0
            if transform is not None:
                images = transform(images, step)
            with autocast(device, amp):
                image_features = model.encode_image(images)
            loss = clip_loss(image_features, text_features.float(), model.logit_scale().detach())
            (grad,) = torch.autograd.grad(loss, delta)
            losses.append(loss.item())
            if block > 1:
                grad = _block_sum(grad, block)
            direction = torch.sign(grad).to(torch.int16) * step_size
            noise = (noise + direction if ascent else noise - direction).clamp_(-eps, eps)
            if one_row_per_unit:  # exact projection onto valid pixels; shared noise is clipped when applied
                order = torch.empty_like(unit_index)
                order[unit_index] = torch.arange(len(unit_index), device=device)
                base = pixels[order].to(torch.int16)
                noise = torch.maximum(torch.minimum(noise, 255 - base), -base)
    return noise, losses


def frozen_for_pgd(model: ClipModel, amp: bool):
    """`model` in eval mode, within its `frozen_image_tower` where PGD's passes run in fp32 (batch norm folded into
    the convolutions: RN50 at 224 px, 8 steps 19.4 -> 17.2 s); in bf16 the folded pass is no faster and folding
    RN50 costs 0.2 s. A sweep over many batches with unchanged weights enters it once around its `pgd_noise` calls."""
    model.eval()
    return nullcontext() if runs_bf16(model.device, amp) else model.frozen_image_tower()


def _block_sum(grad: torch.Tensor, block: int) -> torch.Tensor:
    """The gradient summed over each `block` x `block` square and spread back over it (edges: partial squares)."""
    size = grad.shape[-2:]
    pooled = torch.nn.functional.avg_pool2d(grad, block, ceil_mode=True)
    return pooled.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :size[0], :size[1]]
