"""The symmetric InfoNCE loss of CLIP, shared by training and protection."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over the batch; pair i matches pair i.

    With `reduction="none"` returns the per-pair loss (B,), which HotFlip uses to score candidates.
    """
    logits = logit_scale * image_features.float() @ text_features.float().T
    target = torch.arange(len(logits), device=logits.device)
    per_pair = (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2
    return per_pair if reduction == "none" else per_pair.mean()
