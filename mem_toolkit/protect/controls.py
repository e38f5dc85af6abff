"""Controls that every MEM result is reported beside: the free random-ID trigger baseline."""
from __future__ import annotations

import numpy as np

from ..data.dataset import CaptionDataset
from ..text import CaptionTokenizer
from .artifact import Protection
from .vocabulary import allowed_trigger_tokens


def random_id_protection(
    dataset: CaptionDataset,
    trigger_len: int,
    seed: int = 0,
    exclude_caption_vocab: bool = True,
    vocab_size: int = 0,
    tokenizer: CaptionTokenizer | None = None,
) -> Protection:
    """One random k-token trigger per image and no noise: zero cost, no optimisation.

    On real photos such ID triggers protected more than a small-budget MEM-3, so MEM has to beat it.
    """
    tokenizer = tokenizer or CaptionTokenizer()
    allowed = allowed_trigger_tokens(dataset, tokenizer, exclude_caption_vocab, vocab_size, seed)
    triggers = np.random.default_rng([seed, 31337]).choice(allowed, size=(dataset.n_images, trigger_len))
    noise = np.zeros((dataset.n_images, dataset.image_size, dataset.image_size, 3), dtype=np.int8)
    config = {"trigger_len": trigger_len, "granularity": "image", "seed": seed, "exclude_caption_vocab": exclude_caption_vocab,
              "trigger_vocab_size": vocab_size}
    return Protection("random-id-trigger", noise, triggers, dataset.group_ids.copy(), 0, dataset.image_size, dataset.fingerprint(), config)
