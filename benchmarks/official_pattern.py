"""The official MEM code's per-batch compute pattern, as a speed baseline (written from issue 9's description).

It runs mem_toolkit's own model and loss, so only the pattern of computation differs from the library:
fp32 throughout, the full text context (77 tokens for open_clip models), open_clip's memory layout,
torch's default AdamW, weight gradients in HotFlip's gradient pass, and every HotFlip candidate scored
by a full forward of both towers. This is not the official code and not mem_toolkit's algorithm.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from mem_toolkit.loss import clip_loss
from mem_toolkit.models import ClipModel
from mem_toolkit.train import parameter_groups


def official_model(model: ClipModel) -> ClipModel:
    """A copy of `model` that runs as open_clip does: full text context, image input in the default memory layout, every attention-pool query, batch norm as its own layer."""
    copied = copy.deepcopy(model)
    copied.trim_text = False
    copied.channels_last = False
    copied.pooled_attention_pool = False
    copied.fold_batch_norm = False
    return copied


def official_optimizer(model: ClipModel, lr: float = 1e-4, weight_decay: float = 0.2) -> torch.optim.Optimizer:
    """torch's AdamW with its default implementation choice (a per-tensor loop on CPU), the official settings."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)


@contextmanager
def _frozen(model: ClipModel) -> Iterator[None]:
    """Weights without gradients (PGD needs only the gradient to the noise); restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in zip(model.parameters(), flags):
            param.requires_grad_(flag)


def surrogate_step(model: ClipModel, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, tokens: torch.Tensor) -> float:
    """One forward + backward of the CLIP loss and an AdamW step, fp32."""
    model.train()
    loss = clip_loss(*model(pixels, tokens))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.clamp_logit_scale()
    return loss.item()


def _batch_loss(model: ClipModel, pixels: torch.Tensor, caption_ids: Sequence[Sequence[int]], triggers: torch.Tensor) -> float:
    """The batch's CLIP loss from a full forward of both towers (no gradient)."""
    tokens = model.tokenizer.assemble(caption_ids, model.context_length, prefix=triggers.numpy())
    with torch.no_grad():
        return clip_loss(*model(pixels, tokens)).item()


def hotflip(model: ClipModel, pixels: torch.Tensor, caption_ids: Sequence[Sequence[int]], triggers: torch.Tensor,
            allowed: torch.Tensor, candidates: int = 16) -> tuple[torch.Tensor, float, float]:
    """Greedy HotFlip over the k trigger positions; returns (new triggers (B, k), loss before, loss after).

    One forward + backward of the whole model gives the gradient at the trigger embeddings; each row
    gets its top `candidates` tokens per position by -(grad . E); at each position the current
    triggers and the batch with every row's j-th candidate (j = 1..c) are each scored by a full
    forward of both towers, and the best of these c + 1 is kept.
    """
    model.eval()
    k = triggers.shape[1]
    tokens = model.tokenizer.assemble(caption_ids, model.context_length, prefix=triggers.numpy())
    captured: list[torch.Tensor] = []

    def keep_embeddings(_module, _inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = model.token_embedding.register_forward_hook(keep_embeddings)
    try:
        loss = clip_loss(*model(pixels, tokens))
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    loss.backward()
    model.zero_grad(set_to_none=True)
    grad = captured[0].grad[:, 1:1 + k]  # (B, k, D)
    with torch.no_grad():
        first_order = -torch.einsum("bkd,vd->bkv", grad, model.token_embedding.weight[allowed])
        ranked = allowed[first_order.topk(min(candidates, len(allowed)), dim=-1).indices]  # (B, k, c)
    current = triggers.clone()
    loss_before = best = loss.item()
    for position in range(k):
        options = [current]
        for rank in range(ranked.shape[-1]):
            option = current.clone()
            option[:, position] = ranked[:, position, rank]
            options.append(option)
        losses = [_batch_loss(model, pixels, caption_ids, option) for option in options]
        choice = int(np.argmin(losses))
        current, best = options[choice], losses[choice]
    return current, loss_before, best


def pgd(model: ClipModel, pixels: torch.Tensor, noise: torch.Tensor, caption_ids: Sequence[Sequence[int]], triggers: torch.Tensor,
        rng: np.random.Generator, eps: int = 8, steps: int = 8) -> tuple[torch.Tensor, list[float]]:
    """`steps` sign-descent steps of 1/255 on per-row noise (pixel units), fp32, both towers forward every step.

    The captions are re-shuffled within the batch every step while each image keeps its own trigger.
    """
    model.eval()
    base = pixels.float()
    losses = []
    with _frozen(model):
        for _ in range(steps):
            order = rng.permutation(len(caption_ids))
            tokens = model.tokenizer.assemble([caption_ids[i] for i in order], model.context_length, prefix=triggers.numpy())
            delta = noise.float().requires_grad_(True)
            loss = clip_loss(*model((base + delta) / 255.0, tokens))
            (grad,) = torch.autograd.grad(loss, delta)
            losses.append(loss.item())
            noise = (noise - torch.sign(grad)).clamp(-eps, eps)
            noise = torch.maximum(torch.minimum(noise, 255 - base), -base)
    return noise, losses
