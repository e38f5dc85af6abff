"""Did the shortcut form? The end-of-run surrogate's in-batch matching with the trigger or the noise taken away.

A protection works when a model trained on it matches protected photos to their captions through
the noise<->trigger pair, not through content. The surrogate at the end of a run is such a model.
Its in-batch accuracy on the protected pairs, on the same pairs with the trigger deleted (what a
hacker who strips it trains on), with the noise removed, and on clean pairs tells the user which
cue it uses; the loss with captions shuffled under each photo's own trigger (the PGD objective)
falls well below ln(batch) only if the noise is bound to the trigger.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.dataset import CaptionDataset
from ..loss import clip_loss
from ..models import ClipModel
from .artifact import Protection
from .sharing import sweep_rows


def shortcut_report(surrogate: ClipModel, dataset: CaptionDataset, protection: Protection, batch_size: int, seed: int,
                    max_rows: int = 1024) -> dict:
    """In-batch loss and top-1 matching accuracy of `surrogate` (fp32) on one caption per photo, under each view."""
    rng = np.random.default_rng([seed, 4242])
    rows = sweep_rows(dataset, "image", rng)[:max_rows]
    size = min(batch_size, len(rows))
    batches = [rows[i:i + size] for i in range(0, len(rows) - size + 1, size)]
    views = {"protected": protection.apply(dataset), "clean": dataset}
    if protection.trigger_len:
        views |= {"trigger_deleted": protection.apply(dataset, trigger=False), "noise_removed": protection.apply(dataset, noise=False)}
    tokenizer, context = surrogate.tokenizer, surrogate.context_length
    caption_ids = dataset.caption_token_ids(tokenizer)
    same_unit = np.mean([np.mean(protection.unit_of_row[b][:, None] == protection.unit_of_row[b][None]) for b in batches])
    report: dict = {"batch_size": size, "rows": int(size * len(batches)), "chance_accuracy": float(same_unit), "ln_batch": math.log(size)}
    def units(b: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(protection.unit_of_row[b])

    surrogate.eval()
    with torch.no_grad():
        for name, view in views.items():
            scores = [_match(surrogate, view.image_batch(b), view.token_batch(b, tokenizer, context), units(b)) for b in batches]
            report[f"{name}_loss"], report[f"{name}_accuracy"] = (float(np.mean(s)) for s in zip(*scores))
        if protection.trigger_len:
            shuffled = []
            for b in batches:
                prefix = protection.triggers[protection.unit_of_row[b]]
                tokens = tokenizer.assemble([caption_ids[r] for r in b[rng.permutation(len(b))]], context, prefix=prefix)
                shuffled.append(_match(surrogate, views["protected"].image_batch(b), tokens, units(b))[0])
            report["shuffled_caption_loss"] = float(np.mean(shuffled))
    report["verdict"] = verdict(report)
    return report


def _match(model: ClipModel, pixels: torch.Tensor, tokens: torch.Tensor, units: torch.Tensor) -> tuple[float, float]:
    """(symmetric InfoNCE loss, top-1 matching accuracy) within one batch, image->text and text->image averaged.

    A match counts when it lands on a row of the query's own unit: rows that share noise and trigger
    cannot be told apart by the shortcut, so no view is asked to.
    """
    image_features, text_features, scale = model(pixels.to(model.device), tokens.to(model.device))
    logits = scale * image_features.float() @ text_features.float().T
    units = units.to(logits.device)
    accuracy = ((units[logits.argmax(1)] == units).float().mean() + (units[logits.argmax(0)] == units).float().mean()) / 2
    return clip_loss(image_features, text_features, scale).item(), accuracy.item()


def surviving_share(report: dict, view: str) -> float:
    """The share of the protected pairs' above-chance accuracy that `view` keeps (1: all of it, 0: none)."""
    gained = report["protected_accuracy"] - report["chance_accuracy"]
    return (report[f"{view}_accuracy"] - report["chance_accuracy"]) / gained if gained > 0 else float("nan")


def verdict(report: dict) -> str:
    """One line for the user: which cue the surrogate matches by, and what that means for a hacker."""
    if report["protected_accuracy"] < 2 * report["chance_accuracy"]:
        return ("the end-of-run surrogate matches nothing above chance, so it cannot say whether a shortcut formed "
                "(a surrogate restarted every round ends there): --check-epochs 3 trains fresh hackers on the result")
    if "trigger_deleted_accuracy" not in report:
        return f"clean pairs keep {surviving_share(report, 'clean'):.0%} of the protected pairs' matching"
    without_trigger, without_noise = surviving_share(report, "trigger_deleted"), surviving_share(report, "noise_removed")
    bound = report["shuffled_caption_loss"] < 0.75 * report["ln_batch"]
    line = (f"deleting the trigger keeps {without_trigger:.0%} of the matching, removing the noise keeps {without_noise:.0%}; "
            f"shuffled-caption loss {report['shuffled_caption_loss']:.2f} vs ln(batch) {report['ln_batch']:.2f}")
    if bound:
        if without_trigger < 0.5:
            return line + ": the shortcut lives in the trigger; a hacker who deletes it learns much of the content"
        return line + ": the noise carries the shortcut"
    if without_noise < 0.5 <= without_trigger:
        return line + (": the noise carries the matching without the trigger (keyed to the captions, not bound to the "
                       "trigger), so it survives a hacker who deletes the trigger")
    if without_trigger < 0.5 <= without_noise:
        return line + ": the noise is not bound to the trigger, the triggers act as photo IDs"
    if min(without_trigger, without_noise) >= 0.5:
        return line + ": neither the noise nor the trigger carries the matching; the surrogate matches by content"
    return line + ": the matching needs both the noise and the trigger, yet the noise is not bound to the trigger"
