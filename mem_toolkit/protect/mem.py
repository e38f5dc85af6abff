"""MEM: Multi-step Error Minimization — image noise by PGD and a text trigger by HotFlip, bound to each other."""
from __future__ import annotations

from .base import Protector


class MEM(Protector):
    """Error-minimising noise plus a k-token trigger; the noise step re-shuffles captions so the noise binds to the trigger.

    `MEM(trigger_len=3)` is MEM-3. Presets: `paper` (the official defaults), `cpu` (scaled for the
    embedded data on a laptop CPU) and `photos` (real photos: a learned word code as the noise).
    """

    method = "mem"
    defaults = dict(trigger_len=3, trigger_rounds=5, shuffle=True, rounds=20, surrogate_steps=200, pgd_steps=8)
    presets = {
        "paper": dict(rounds=20, surrogate_steps=200, surrogate_lr=1e-4, pgd_steps=8, trigger_rounds=5, candidates=16,
                      beam=1, batch_size=128, eps=8, granularity="row"),
        # tuned on the embedded shapes: a small trigger vocabulary and a surrogate restarted every round,
        # trained briefly at a higher lr, so the noise<->trigger shortcut is what it learns first
        "cpu": dict(rounds=10, surrogate_steps=20, surrogate_lr=5e-4, surrogate_reset=1, pgd_steps=5, trigger_rounds=2, candidates=8,
                    trigger_vocab_size=24, batch_size=128, eps=8, granularity="image"),
        # real photos: the noise is a learned code of each photo's caption words (protect.word_code: patterns of words
        # found in at least 2 % of the photos, trained on fresh surrogates with the photos' own captions), so it keys
        # the captions a hacker keeps after deleting the trigger; the trigger is HotFlip's, per photo
        "photos": dict(rounds=10, surrogate_steps=20, surrogate_lr=5e-4, surrogate_reset=1, pgd_steps=5, trigger_rounds=2, candidates=8,
                       trigger_vocab_size=24, batch_size=128, eps=8, granularity="image", noise_code="words", code_words=4,
                       code_min_share=0.02, strip_share=1.0),
    }

    def __init__(self, trigger_len: int = 3, preset: str | None = None, **settings) -> None:
        super().__init__(preset=preset, trigger_len=trigger_len, **settings)
        if self.config.trigger_len < 1:
            raise ValueError("MEM needs a trigger of at least one token; EM is the method without one")
        self.method = f"mem-{self.config.trigger_len}"
