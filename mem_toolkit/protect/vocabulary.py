"""Which tokens a trigger may use: publishable whole words, by default none of the dataset's caption words."""
from __future__ import annotations

import numpy as np

from ..data.dataset import CaptionDataset
from ..text import CaptionTokenizer


def allowed_trigger_tokens(
    dataset: CaptionDataset,
    tokenizer: CaptionTokenizer,
    exclude_caption_vocab: bool = True,
    vocab_size: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Sorted token ids a trigger may contain.

    Whole-word, non-special tokens that re-tokenise to themselves; without the tokens of the
    dataset's own captions (a trigger must be a key, not a description of the image) unless asked;
    restricted to a seeded random subset of `vocab_size` tokens when that is set (a small shared
    vocabulary makes triggers compositional codes instead of per-image IDs).
    """
    allowed = tokenizer.whole_word_ids
    if exclude_caption_vocab:
        allowed = np.setdiff1d(allowed, tokenizer.vocabulary_of(dataset.caption_token_ids(tokenizer)))
    if 0 < vocab_size < len(allowed):
        allowed = np.sort(np.random.default_rng([seed, 104729]).choice(allowed, size=vocab_size, replace=False))
    if len(allowed) < 2:
        raise ValueError(f"only {len(allowed)} trigger tokens are allowed; a trigger needs a choice")
    return allowed
