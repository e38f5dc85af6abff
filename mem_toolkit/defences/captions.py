"""Caption defences: what a hacker does to published captions to cut a trigger off. Words are whitespace-separated.

Each function maps a list of captions to a list of the same length; a caption left without words is
an empty string (the caller drops that row).

`strip_shared_prefix` is the hacker who looks for a shared prefix without knowing its length or its
words. A single word's share of caption starts cannot tell a trigger from ordinary text: MEM draws
each trigger word from a vocabulary (24 words in the cpu preset, any of ~30k in the paper's), so
one trigger word starts a few per cent of the captions or fewer, while "a" starts 63 % of the clean
shapes captions and 71 % of the COCO sample's. What does tell them apart is that a trigger's words appear
nowhere but in front: MEM keeps the captions' own words out of triggers, and ordinary leading words
("a", "two", "the") recur inside captions. So, for each prefix length m up to `max_words`, a word
is a *prefix word* when at least `purity` (95 %) of its uses lie in the first m words of a caption,
and a caption is *covered* when its first m words are all prefix words and more words follow.
The longest m that covers at least `coverage` (50 %) of the captions is the trigger length, and the
covered captions lose their first m words. Every MEM caption is covered at m = k (at m < k, with a
small trigger vocabulary, the same words also stand second or third, so shorter prefixes are not
pure). On clean shapes captions the template openings that never recur ("there is", "an image
showing") cover 29 % of them at most and on the COCO sample 5 %, under the 50 % bar, so nothing is
stripped; the 95 % lets a trigger word show up now and then inside a caption.
"""
from __future__ import annotations

import os
import string
from collections import Counter
from pathlib import Path
from typing import Collection, Iterable, Sequence

from ..data.loaders import CAPTION_COLUMNS, read_csv_entries
from ..errors import DataError, DefenceError


def strip_words(captions: Sequence[str], k: int = 3) -> list[str]:
    """Every caption without its first `k` words: the hacker who knows that MEM-k puts k trigger words in front."""
    return [" ".join(caption.split()[k:]) for caption in captions]


def strip_shared_prefix(captions: Sequence[str], coverage: float = 0.5, purity: float = 0.95, max_words: int = 8) -> list[str]:
    """Captions without the longest run of leading words found (almost) only in front, where it starts enough captions (module docstring)."""
    words = [caption.split() for caption in captions]
    lowered = [[word.lower() for word in caption] for caption in words]
    uses = Counter(word for caption in lowered for word in caption)
    length, covered = 0, [False] * len(words)
    for m in range(1, max_words + 1):
        in_front = Counter(word for caption in lowered for word in caption[:m])
        prefix_words = {word for word, count in in_front.items() if count >= purity * uses[word]}
        hits = [len(caption) > m and all(word in prefix_words for word in caption[:m]) for caption in lowered]
        if words and sum(hits) >= coverage * len(words):
            length, covered = m, hits
    return [" ".join(caption[length:] if hit else caption) for caption, hit in zip(words, covered)]


def keep_vocabulary(captions: Sequence[str], vocabulary: Collection[str]) -> list[str]:
    """Captions with only the words of `vocabulary` (compared lower-cased, without punctuation around them); the rest are dropped."""
    return [" ".join(word for word in caption.split() if _normal(word) in vocabulary) for caption in captions]


def read_vocabulary(source: str | os.PathLike | Iterable[str]) -> frozenset[str]:
    """The words of other data: a caption CSV/TSV (the words of its captions), a text file of words, or texts given as a list."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DefenceError(f"{path}: vocabulary file not found")
        if path.suffix.lower() in (".csv", ".tsv"):
            entries, problems = read_csv_entries(path, CAPTION_COLUMNS, "caption")
            if problems:
                raise DataError(problems)
            texts = [text for _, text, _, _ in entries]
        else:
            try:
                texts = [path.read_text(encoding="utf-8")]
            except UnicodeDecodeError as error:
                raise DefenceError(f"{path}: the vocabulary file is not UTF-8 text ({error.reason} at byte {error.start})") from None
    else:
        texts = list(source)
    words = frozenset(_normal(word) for text in texts for word in text.split()) - {""}
    if not words:
        raise DefenceError(f"{source}: the vocabulary has no words")
    return words


def _normal(word: str) -> str:
    return word.strip(string.punctuation).lower()
