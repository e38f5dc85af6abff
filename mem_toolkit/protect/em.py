"""EM: error-minimising noise, the unimodal unlearnable-examples recipe applied to CLIP (no trigger, no shuffle)."""
from __future__ import annotations

from .base import Protector


class EM(Protector):
    """Alternate surrogate training and noise minimisation on aligned pairs (official: 5 rounds x 50 steps)."""

    method = "em"
    defaults = dict(trigger_len=0, trigger_rounds=0, shuffle=False, rounds=5, surrogate_steps=50, pgd_steps=8)
    presets = {
        "paper": dict(rounds=5, surrogate_steps=50, pgd_steps=8, batch_size=128, eps=8, granularity="row"),
        "cpu": dict(rounds=5, surrogate_steps=30, pgd_steps=5, batch_size=128, eps=8, granularity="row"),
    }
