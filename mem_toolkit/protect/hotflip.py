"""HotFlip trigger search: first-order candidate tokens from the embedding gradient, chosen by the real loss.

Image features do not change during a trigger step, so they are computed once; every candidate of a
position is scored in one batched text forward, in fp32 (bf16 rounding at logit scale ~100 is as
large as the differences between candidates). A hypothesis's own loss is carried from the position
before, so only candidates that change it are encoded (16 of 17 text forwards at the paper's 16
candidates). The step never increases the batch loss.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from ..loss import clip_loss
from ..models import ClipModel

_TEXT_CHUNK = 2048
_LOSS_CHUNK = 256


@dataclass
class HotFlipResult:
    """New trigger per unit, and the batch loss before and after the step."""

    triggers: torch.Tensor  # (units, k)
    loss_before: float
    loss_after: float


@contextmanager
def _replace_trigger_embeddings(model: ClipModel, replacement: torch.Tensor):
    """Make the token embedding return `replacement` at the trigger positions (1..k) so we get its gradient."""
    k = replacement.shape[1]

    def hook(_module, _inputs, output):
        output = output.clone()
        output[:, 1:1 + k] = replacement.to(output.dtype)
        return output

    handle = model.token_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _BatchScorer:
    """Exact batch CLIP loss when one unit's rows get new text features, for many candidates at once."""

    def __init__(self, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> None:
        self.image_features = image_features
        self.scale = scale
        self.logits = scale * image_features @ text_features.T  # (B images, B texts)

    def loss(self, text_features: torch.Tensor) -> float:
        return clip_loss(self.image_features, text_features, self.scale).item()

    def with_columns(self, expansion: torch.Tensor, rows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Loss of each expansion e whose rows `rows[p]` (for p with `expansion[p] == e`) get `features[p]`."""
        n_expansions = int(expansion.max()) + 1
        columns = (self.scale * features @ self.image_features.T)  # (P, B images)
        losses = torch.empty(n_expansions)
        diagonal = torch.arange(len(self.logits))
        for start in range(0, n_expansions, _LOSS_CHUNK):
            stop = min(start + _LOSS_CHUNK, n_expansions)
            chosen = (expansion >= start) & (expansion < stop)
            logits = self.logits.expand(stop - start, -1, -1).clone()
            logits[expansion[chosen] - start, :, rows[chosen]] = columns[chosen]
            positive = logits[:, diagonal, diagonal]
            i2t = torch.logsumexp(logits, dim=2) - positive
            t2i = torch.logsumexp(logits, dim=1) - positive
            losses[start:stop] = ((i2t + t2i) / 2).mean(dim=1)
        return losses


def hotflip_step(
    model: ClipModel,
    image_features: torch.Tensor,
    caption_ids: Sequence[Sequence[int]],
    triggers: torch.Tensor,
    unit_index: torch.Tensor,
    allowed: torch.Tensor,
    *,
    candidates: int = 16,
    beam: int = 1,
) -> HotFlipResult:
    """One HotFlip update of the triggers of the units in a batch.

    `triggers[u]` is unit u's current trigger, `unit_index[i]` the unit of batch row i (rows of one
    unit share its trigger). For every unit: gradient of the batch loss w.r.t. its trigger embeddings
    (summed over its rows) -> top `candidates` tokens per position by the first-order change
    -(grad . E) among `allowed` -> beam search left to right scoring each candidate by the real batch
    loss with the other units unchanged. The joint update is kept only if it lowers the loss;
    otherwise the units' changes are accepted one by one, best first, while each lowers it.
    """
    device = model.device
    tokenizer, context = model.tokenizer, model.context_length
    k = triggers.shape[1]
    triggers = triggers.to(device)
    unit_index = unit_index.to(device)
    image_features = image_features.to(device).float()
    scale = model.logit_scale().detach().float()
    embedding = model.token_embedding.weight
    model.eval()

    def encode(trigger_rows: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        tokens = tokenizer.assemble([caption_ids[r] for r in rows], context, prefix=trigger_rows.cpu().numpy())
        with torch.no_grad():
            return torch.cat([model.encode_text(tokens[s:s + _TEXT_CHUNK]).float() for s in range(0, len(tokens), _TEXT_CHUNK)])

    # 1. gradient w.r.t. the trigger embeddings, summed per unit
    leaf = embedding[triggers[unit_index]].detach().float().requires_grad_(True)
    tokens = tokenizer.assemble(caption_ids, context, prefix=triggers[unit_index].cpu().numpy())
    with _replace_trigger_embeddings(model, leaf):
        text_features = model.encode_text(tokens).float()
    loss = clip_loss(image_features, text_features, scale)
    (grad,) = torch.autograd.grad(loss, leaf)
    unit_grad = torch.zeros(len(triggers), k, grad.shape[-1], device=device).index_add_(0, unit_index, grad)
    # 2. candidate tokens per unit and position: largest first-order decrease
    with torch.no_grad():
        first_order = -torch.einsum("ukd,vd->ukv", unit_grad, embedding[allowed].float())
        candidate_ids = allowed[first_order.topk(min(candidates, len(allowed)), dim=-1).indices]  # (U, k, c)
    # 3. beam search per unit, other units fixed. A hypothesis's own loss and features are known from the
    #    position before (the current trigger's from step 1), so only the candidates that change it are encoded.
    scorer = _BatchScorer(image_features, text_features.detach(), scale)
    rows_of_unit = [torch.nonzero(unit_index == u).flatten().tolist() for u in range(len(triggers))]
    beams = [triggers[u][None].clone() for u in range(len(triggers))]  # each (n_hyp, k)
    loss_before = scorer.loss(text_features.detach())
    beam_losses = [torch.tensor([loss_before]) for _ in triggers]  # each (n_hyp,)
    beam_features = [text_features.detach()[rows][None] for rows in rows_of_unit]  # each (n_hyp, rows, width)
    width = text_features.shape[-1]
    for position in range(k):
        flips = []  # per unit (n_hyp, c_u, k): every hypothesis with one candidate at `position`
        for u, hyps in enumerate(beams):
            options = candidate_ids[u, position]
            options = options[options != triggers[u, position]]  # all hypotheses still hold the current token here
            grown = hyps[:, None, :].repeat(1, len(options), 1)
            grown[:, :, position] = options
            flips.append(grown)
        expansions = [(u, trig) for u, grown in enumerate(flips) for trig in grown.reshape(-1, k)]
        expansion_id, row_id, trigger_rows = [], [], []
        for x, (u, trig) in enumerate(expansions):
            for r in rows_of_unit[u]:
                expansion_id.append(x)
                row_id.append(r)
                trigger_rows.append(trig)
        features, losses = torch.empty(0, width, device=device), torch.empty(0)
        if row_id:
            features = encode(torch.stack(trigger_rows), row_id)
            losses = scorer.with_columns(torch.tensor(expansion_id), torch.tensor(row_id), features)
        offset = row_offset = 0
        for u, grown in enumerate(flips):
            n_hyp, n_options, n_rows = grown.shape[0], grown.shape[1], len(rows_of_unit[u])
            size = n_hyp * n_options
            flip_losses = losses[offset:offset + size].reshape(n_hyp, n_options)
            flip_features = features[row_offset:row_offset + size * n_rows].reshape(n_hyp, n_options, n_rows, width)
            offset, row_offset = offset + size, row_offset + size * n_rows
            # each hypothesis followed by its flips, the order in which ties are broken
            expanded = torch.cat([beams[u][:, None], grown], dim=1).reshape(-1, k)
            unit_losses = torch.cat([beam_losses[u][:, None], flip_losses], dim=1).reshape(-1)
            unit_features = torch.cat([beam_features[u][:, None], flip_features], dim=1).flatten(0, 1)
            keep, seen = [], set()
            for index in torch.argsort(unit_losses, stable=True).tolist():
                key = tuple(expanded[index].tolist())
                if key not in seen:
                    seen.add(key)
                    keep.append(index)
                if len(keep) == beam:
                    break
            beams[u], beam_losses[u], beam_features[u] = expanded[keep], unit_losses[keep], unit_features[keep]
    # 4. each unit's best is the head of its beam (the kept hypotheses are ranked with their flips, so it never worsens);
    #    accept the improved units jointly if that lowers the loss, else one by one, best first, while each lowers it
    best_losses = torch.stack([hyp_losses[0] for hyp_losses in beam_losses])
    improved = [u for u in torch.argsort(best_losses).tolist() if best_losses[u] < loss_before]
    new_triggers, joint_features = triggers.clone(), text_features.detach().clone()
    for u in improved:
        new_triggers[u], joint_features[rows_of_unit[u]] = beams[u][0], beam_features[u][0]
    loss_after = scorer.loss(joint_features)
    if loss_after > loss_before:
        new_triggers, joint_features, loss_after = triggers.clone(), text_features.detach().clone(), loss_before
        for u in improved:
            trial = joint_features.clone()
            trial[rows_of_unit[u]] = beam_features[u][0]
            trial_loss = scorer.loss(trial)
            if trial_loss < loss_after:
                joint_features, loss_after = trial, trial_loss
                new_triggers[u] = beams[u][0]
    return HotFlipResult(new_triggers.cpu(), loss_before, loss_after)
