"""The learned word code (noise_code="words"): noise built from patterns of caption words, trained by the code step."""
import numpy as np
import pytest
import torch

from mem_toolkit.loss import clip_loss
from mem_toolkit.models import create_model
from mem_toolkit.protect import MEM
from mem_toolkit.protect.word_code import WordCode, distinctive_words

TINY = dict(rounds=2, surrogate_steps=2, pgd_steps=3, trigger_rounds=1, candidates=4, batch_size=16, noise_code="words", code_words=2,
            code_lr=0.2, strip_share=1.0)


def _captioned(tiny_shapes):
    colours, kinds = ["red", "green", "blue", "grey"], ["circle", "square", "star"]
    captions = [f"a {colours[image % 4]} {kinds[image % 3]}" for image in range(tiny_shapes.n_images)]
    return tiny_shapes.with_rows(captions, np.arange(tiny_shapes.n_images))


def test_min_share_keeps_only_words_many_photos_share(tiny_shapes):
    data = tiny_shapes.with_rows([f"a red thing{image}" for image in range(tiny_shapes.n_images)], np.arange(tiny_shapes.n_images))
    units = np.arange(data.n_images)
    assert distinctive_words(data, units, data.n_images, 1)[0] == ["thing0"]  # a word of one photo is the most distinctive
    assert distinctive_words(data, units, data.n_images, 1, min_share=0.5)[0] in (["a"], ["red"])
    with pytest.raises(ValueError, match="code_min_share"):
        distinctive_words(data.with_rows([f"w{i}" for i in range(data.n_images)], np.arange(data.n_images)), units, data.n_images, 1, 0.5)


def test_units_with_the_same_words_share_a_noise_within_eps():
    code = WordCode([["red", "circle"], ["circle", "red"], ["red", "star"]], image_size=8, eps=8, lr=0.1, device=torch.device("cpu"))
    assert code.words == ["circle", "red", "star"]
    with torch.no_grad():
        code.patterns.normal_(0, 3, generator=torch.Generator().manual_seed(0))
    noise = code.noise(np.arange(3))
    assert noise.abs().max() <= 8 and noise.abs().max() > 7
    assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    stored = code.int_noise(np.arange(3), np.full((3, 8, 8, 3), 250, dtype=np.uint8))
    assert stored.dtype == np.int8 and stored.max() <= 5 and stored.min() >= -8  # pixels + noise stay within 0..255


@pytest.mark.parametrize("transform", [None, lambda images, step: images.flip(-1)], ids=["plain", "eot"])
def test_code_step_scores_the_images_the_hacker_sees(tiny_shapes, transform):
    """The code's first loss (zero patterns) is the surrogate's CLIP loss on the uint8 photos, after the EOT transformation."""
    data = _captioned(tiny_shapes)
    rows = np.arange(8)
    torch.manual_seed(0)
    surrogate = create_model("mem-tiny-rn").train()
    tokens = data.token_batch(rows, surrogate.tokenizer, surrogate.context_length)
    pixels = data.image_batch(rows)
    seen = pixels if transform is None else pixels.flip(-1)
    with torch.no_grad():
        expected = clip_loss(surrogate.encode_image(seen), surrogate.encode_text(tokens), surrogate.logit_scale()).item()
    code = WordCode([["red"]] * 8, image_size=data.image_size, eps=8, lr=0.1, device=torch.device("cpu"))
    losses = code.train_batch(surrogate, pixels, np.arange(8), tokens, steps=2, amp=False, transform=transform)
    assert losses[0] == pytest.approx(expected, abs=1e-5)


def test_code_step_lowers_the_loss_and_stores_the_code(tiny_shapes):
    data = _captioned(tiny_shapes)
    protection = MEM(3, **TINY).fit(data, progress=False)
    for record in protection.diagnostics:
        assert record["pgd_loss_last"] < record["pgd_loss_first"]  # descent on the word patterns
    noise = np.asarray(protection.noise).astype(np.int16)
    assert 0 < np.abs(noise).max() <= 8
    pixels = data.images(np.arange(data.n_images)).astype(np.int16)
    free = (pixels >= 8) & (pixels <= 247)
    # image granularity: photos 12 apart have the same caption words, hence one noise; other words, another noise
    assert all(np.array_equal(noise[a][free[a] & free[a + 12]], noise[a + 12][free[a] & free[a + 12]]) for a in range(12))
    assert not np.array_equal(noise[0], noise[1])


def test_code_ensemble_trains_the_code_against_a_fresh_model_of_each_architecture(tiny_shapes, monkeypatch):
    data = _captioned(tiny_shapes)
    seen, original = [], WordCode.train_batch

    def spy(self, surrogate, *args, **kwargs):
        seen.append((surrogate.name, next(surrogate.clip.parameters()).sum().item()))
        return original(self, surrogate, *args, **kwargs)

    monkeypatch.setattr(WordCode, "train_batch", spy)
    protection = MEM(3, **TINY, surrogate_reset=1, code_ensemble=("mem-tiny-vit",)).fit(data, progress=False)
    batches = len(seen) // 2 // TINY["rounds"]
    assert batches >= 1 and [name for name, _ in seen] == ["mem-tiny-rn", "mem-tiny-vit"] * (batches * TINY["rounds"])
    assert len({weights for name, weights in seen if name == "mem-tiny-vit"}) == TINY["rounds"]  # fixed within a round, new each round
    assert all(len(r["ensemble_surrogate_losses"]) == 1 for r in protection.diagnostics)  # one ViT trained per round
    without = MEM(3, **TINY, surrogate_reset=1).fit(data, progress=False)
    assert not any("ensemble_surrogate_losses" in r for r in without.diagnostics)
    assert not np.array_equal(protection.noise, without.noise)  # the ViT's gradients shaped the code


@pytest.mark.parametrize("ensemble", [(), ("mem-tiny-vit",)], ids=["surrogate", "ensemble"])
def test_word_code_resumes_to_the_same_artifact(tiny_shapes, tmp_path, monkeypatch, ensemble):
    data = _captioned(tiny_shapes)
    settings = dict(TINY, code_ensemble=ensemble)
    whole = MEM(3, **settings).fit(data, work_dir=tmp_path / "whole", progress=False)
    original, calls = MEM._code_step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in round 2: the code and its optimiser come back from round 1's checkpoint
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MEM, "_code_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        MEM(3, **settings).fit(data, work_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(MEM, "_code_step", original)
    resumed = MEM(3, **settings).fit(data, work_dir=tmp_path / "run", resume=True, progress=False)
    assert np.array_equal(resumed.noise, whole.noise)
    assert np.array_equal(resumed.triggers, whole.triggers)


def test_word_code_refuses_settings_it_replaces():
    with pytest.raises(ValueError, match="noise_code"):
        MEM(3, noise_code="letters")
    with pytest.raises(ValueError, match="noise_init"):
        MEM(3, noise_code="words", noise_init="trigger-code")
    with pytest.raises(ValueError, match="needs noise_code='words'"):
        MEM(3, code_ensemble=("mem-tiny-vit",))
    with pytest.raises(ValueError, match="unknown model 'mem-tiny-vitt'"):
        MEM(3, noise_code="words", code_ensemble=("mem-tiny-vitt",))


def test_word_code_is_refused_under_several_processes(monkeypatch, tmp_path):
    from mem_toolkit import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="one process"):
        MEM(3, noise_code="words")._check_processes(tmp_path)
    MEM(3)._check_processes(tmp_path)  # the per-unit noise is shared through its memory map: allowed
