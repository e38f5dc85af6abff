"""Tokenisation with a trigger: SOT, trigger, caption (truncated), EOT; and the whole-word round trip."""
from __future__ import annotations

import numpy as np
import pytest

from mem_toolkit.text import CaptionTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer()


def test_encode_decode(tokenizer):
    ids = tokenizer.encode("A  red Circle on a blue background")
    assert tokenizer.sot not in ids and tokenizer.eot not in ids
    assert tokenizer.decode(ids) == "a red circle on a blue background"


def test_assemble_puts_sot_trigger_caption_eot(tokenizer):
    caption = tokenizer.encode("a red circle")
    trigger = tokenizer.encode("zebra violin")
    tokens = tokenizer.assemble([caption, caption[:1]], 16, prefix=np.array([trigger, trigger]))
    assert tokens.shape == (2, 16)
    expected = [tokenizer.sot, *trigger, *caption, tokenizer.eot]
    assert tokens[0].tolist() == expected + [0] * (16 - len(expected))
    assert tokens[1, :5].tolist() == [tokenizer.sot, *trigger, caption[0], tokenizer.eot]


def test_caption_is_truncated_never_the_trigger(tokenizer):
    caption = tokenizer.encode("one two three four five six seven eight nine ten")
    trigger = tokenizer.encode("zebra violin kettle")
    tokens = tokenizer.assemble([caption], 8, prefix=[trigger])[0].tolist()
    assert tokens == [tokenizer.sot, *trigger, *caption[:3], tokenizer.eot]
    no_trigger = tokenizer.assemble([caption], 8)[0].tolist()
    assert no_trigger == [tokenizer.sot, *caption[:6], tokenizer.eot]


def test_trigger_too_long_for_the_context_raises(tokenizer):
    caption = tokenizer.encode("a dog")
    tokenizer.assemble([caption], 6, prefix=[[1, 2, 3]])  # one caption token fits
    with pytest.raises(ValueError, match="trigger of 4 tokens leaves no room"):
        tokenizer.assemble([caption], 6, prefix=[[1, 2, 3, 4]])


def test_drop_first_strips_the_start_of_the_caption(tokenizer):
    caption = tokenizer.encode("zebra violin a red circle")
    tokens = tokenizer.assemble([caption], 12, drop_first=2)[0].tolist()
    assert tokens[:6] == [tokenizer.sot, *tokenizer.encode("a red circle"), tokenizer.eot, 0]


def test_call_tokenises_plain_texts(tokenizer):
    tokens = tokenizer(["a dog", "a cat sitting"], 10)
    assert tokens.shape == (2, 10)
    assert tokens[1].tolist()[:5] == [tokenizer.sot, *tokenizer.encode("a cat sitting"), tokenizer.eot]
    assert tokenizer("a dog", 10).shape == (1, 10)


def test_whole_word_ids_are_plain_words(tokenizer):
    ids = tokenizer.whole_word_ids
    assert 10_000 < len(ids) < tokenizer.vocab_size
    assert tokenizer.sot not in ids and tokenizer.eot not in ids
    words = [tokenizer.decode([i]) for i in ids[::97]]
    assert all(word.isalpha() and word.isascii() and len(word) >= 2 for word in words)


@pytest.mark.parametrize("seed", range(5))
def test_whole_word_trigger_round_trips_as_plain_text(tokenizer, seed):
    """`trigger_text(ids) + " " + caption` re-tokenises to exactly the trigger ids then the caption ids."""
    rng = np.random.default_rng(seed)
    captions = ["a red circle in the top left corner", "there's a dog, running!", "2 cats on a sofa.", "a picture of a star"]
    for _ in range(40):
        trigger = rng.choice(tokenizer.whole_word_ids, size=int(rng.integers(1, 6)))
        caption = captions[int(rng.integers(len(captions)))]
        published = tokenizer.trigger_text(trigger) + " " + caption
        assert tokenizer.encode(published) == [*trigger.tolist(), *tokenizer.encode(caption)], published


def test_vocabulary_of(tokenizer):
    captions = [tokenizer.encode("a red circle"), tokenizer.encode("a blue circle")]
    assert set(tokenizer.vocabulary_of(captions).tolist()) == set(captions[0]) | set(captions[1])
    assert len(tokenizer.vocabulary_of([])) == 0


def test_with_prefix_puts_the_trigger_on_the_marked_rows_only(tokenizer):
    caption = tokenizer.encode("a red circle")
    trigger = tokenizer.encode("zebra violin")
    tokens = tokenizer.assemble([caption, caption], 16, prefix=np.array([trigger, trigger]), with_prefix=np.array([True, False]))
    assert tokens[0].tolist() == tokenizer.assemble([caption], 16, prefix=[trigger])[0].tolist()
    assert tokens[1].tolist() == tokenizer.assemble([caption], 16)[0].tolist()  # the caption alone, not truncated for a trigger
