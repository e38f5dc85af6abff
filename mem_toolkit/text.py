"""Tokenisation with a trigger: k token ids right after the start token, the caption truncated, never the trigger."""
from __future__ import annotations

import re
from functools import cache, cached_property
from typing import Sequence

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer

_WORD = re.compile(r"[a-z]{2,}")


class CaptionTokenizer:
    """open_clip's BPE tokenizer plus the operations triggers need (assemble, whole-word vocabulary)."""

    def __init__(self, bpe: SimpleTokenizer | None = None) -> None:
        self.default_vocabulary = bpe is None
        self.bpe = bpe or SimpleTokenizer()
        self.sot = self.bpe.sot_token_id
        self.eot = self.bpe.eot_token_id
        self.vocab_size = self.bpe.vocab_size

    def encode(self, text: str) -> list[int]:
        """BPE ids of a text, without start and end tokens (lower-cased, whitespace cleaned)."""
        return self.bpe.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Plain text of BPE ids (whole-word tokens are separated by spaces)."""
        return self.bpe.decode([int(i) for i in ids]).strip()

    def assemble(
        self,
        caption_ids: Sequence[Sequence[int]],
        context_length: int,
        prefix: np.ndarray | torch.Tensor | None = None,
        drop_first: int = 0,
        with_prefix: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Build (B, context_length) tokens: SOT, prefix (trigger) ids, caption ids, EOT, zero padding.

        The caption is truncated to fit; the prefix never is. `drop_first` removes the first caption
        tokens (what a hacker who strips a suspected trigger does). `with_prefix` (B booleans) puts the
        prefix only on the rows marked True, the others get their caption alone.
        """
        batch = len(caption_ids)
        prefix = np.zeros((batch, 0), dtype=np.int64) if prefix is None else np.asarray(prefix, dtype=np.int64).reshape(batch, -1)
        k = prefix.shape[1]
        room = context_length - 2 - k
        if room < 1:
            raise ValueError(f"a trigger of {k} tokens leaves no room for the caption in context length {context_length}")
        out = np.zeros((batch, context_length), dtype=np.int64)
        out[:, 0] = self.sot
        for i, ids in enumerate(caption_ids):
            used = k if with_prefix is None or with_prefix[i] else 0
            out[i, 1:1 + used] = prefix[i, :used]
            body = list(ids[drop_first:])[:context_length - 2 - used]
            out[i, 1 + used:1 + used + len(body)] = body
            out[i, 1 + used + len(body)] = self.eot
        return torch.from_numpy(out)

    def __call__(self, texts: str | Sequence[str], context_length: int) -> torch.Tensor:
        """Tokenise plain texts (no trigger)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.assemble([self.encode(t) for t in texts], context_length)

    @cached_property
    def whole_word_ids(self) -> np.ndarray:
        """Ids of tokens usable in a publishable trigger (see `whole_word_ids`); computed once per process for the default BPE."""
        return _default_whole_word_ids().copy() if self.default_vocabulary else whole_word_ids(self.bpe)

    def trigger_text(self, ids: Sequence[int]) -> str:
        """The words of a trigger, to put in front of a published caption."""
        return self.decode(ids)

    def vocabulary_of(self, captions: Sequence[Sequence[int]]) -> np.ndarray:
        """Distinct token ids used by a set of tokenised captions."""
        used = np.unique(np.concatenate([np.asarray(c, dtype=np.int64) for c in captions])) if captions else np.zeros(0, np.int64)
        return used


def whole_word_ids(bpe: SimpleTokenizer) -> np.ndarray:
    """Ids of tokens usable in a publishable trigger.

    A token qualifies if it is a whole word (`...</w>`), made of 2+ ASCII letters, not special,
    and the word re-tokenises to exactly that id, so `decode(trigger) + " " + caption` reads
    back as the optimised ids.
    """
    allowed = []
    for token_id in range(bpe.vocab_size):
        token = bpe.decoder[token_id]
        if not token.endswith("</w>"):
            continue
        word = token[:-4]
        if _WORD.fullmatch(word) and bpe.encode(word) == [token_id]:
            allowed.append(token_id)
    return np.asarray(allowed, dtype=np.int64)


@cache
def _default_whole_word_ids() -> np.ndarray:
    """`whole_word_ids` of open_clip's default BPE: re-tokenising ~49k tokens takes seconds, so once per process."""
    ids = whole_word_ids(SimpleTokenizer())
    ids.setflags(write=False)
    return ids
