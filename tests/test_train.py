"""Contrastive training: schedule, parameter groups, learning on shapes, per-epoch history, exact resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mem_toolkit.data import make_shapes_split
from mem_toolkit.loss import clip_loss
from mem_toolkit.metrics import random_guess_metrics
from mem_toolkit.models import create_model
from mem_toolkit.errors import ResumeMismatch
from mem_toolkit.train import History, TrainConfig, batches, cosine_with_warmup, parameter_groups, train_clip, train_run

METRIC_KEYS = {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("R@1", "R@5", "R@10", "MedR", "MeanR")} | {"rsum"}


def test_cosine_with_warmup_values():
    total, warmup = 110, 10
    assert cosine_with_warmup(0, total, warmup) == pytest.approx(0.1)
    assert cosine_with_warmup(4, total, warmup) == pytest.approx(0.5)
    assert cosine_with_warmup(9, total, warmup) == pytest.approx(1.0)
    assert cosine_with_warmup(10, total, warmup) == pytest.approx(1.0)
    assert cosine_with_warmup(60, total, warmup) == pytest.approx(0.5)
    assert cosine_with_warmup(35, total, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_with_warmup(110, total, warmup) == pytest.approx(0.0)
    assert cosine_with_warmup(500, total, warmup) == pytest.approx(0.0)
    values = [cosine_with_warmup(s, total, warmup) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decreasing after the warm-up


def test_parameter_groups_decay_only_weight_matrices():
    model = create_model("mem-tiny-rn", seed=0)
    no_decay, decay = parameter_groups(model, 0.2)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert not ids(no_decay) & ids(decay)
    assert ids(no_decay) | ids(decay) == {id(p) for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
            assert {id(p) for p in module.parameters(recurse=False)} <= ids(no_decay), module
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert id(module.weight) in ids(decay), module
    for name, param in model.named_parameters():
        if name.endswith("bias") or "logit_scale" in name:
            assert id(param) in ids(no_decay), name
    assert id(model.clip.logit_scale) in ids(no_decay)


def test_batches_are_full_shuffled_and_reproducible():
    first = batches(50, 16, seed=3, epoch=0)
    assert [len(b) for b in first] == [16, 16, 16]  # the last partial batch is dropped
    assert len(set(np.concatenate(first).tolist())) == 48
    assert all(np.array_equal(a, b) for a, b in zip(first, batches(50, 16, seed=3, epoch=0)))
    assert not np.array_equal(first[0], batches(50, 16, seed=3, epoch=1)[0])
    assert [len(b) for b in batches(10, 16, seed=0, epoch=0)] == [10]  # a set smaller than a batch is one batch


def test_clip_loss_matches_its_definition():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * image @ text.T
    expected = [(-torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]) / 2 for i in range(6)]
    assert torch.allclose(clip_loss(image, text, scale, reduction="none"), torch.stack(expected), atol=1e-5)
    assert clip_loss(image, text, scale).item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)
    assert clip_loss(image, image, torch.tensor(100.0)).item() < 1e-3  # aligned pairs, sharp scale


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_split(64, 32, 64, seed=0, difficulty="easy")


@pytest.fixture(scope="module")
def trained(shapes):
    train, test = shapes
    model = create_model("mem-tiny-rn", seed=0)
    seen = []
    history = train_clip(model, train, test, TrainConfig(epochs=6, batch_size=32, lr=5e-4), progress=False,
                         on_epoch=lambda h: seen.append(len(h.epochs)))
    return history, seen


def test_loss_falls(trained):
    history, _ = trained
    losses = history.metric("loss")
    assert losses[-1] < 0.6 * losses[0]
    steps = history.step_loss
    assert len(steps) == 6 * 10  # 320 rows in batches of 32, 6 epochs
    assert np.mean(steps[-10:]) < np.mean(steps[:10]) - 1.0


def test_retrieval_beats_random_after_short_training(trained, shapes):
    history, _ = trained
    _, test = shapes
    random = random_guess_metrics(np.bincount(test.group_ids))
    final = history.final
    assert final["rsum"] > 2 * random["rsum"]
    assert final["t2i_MeanR"] < 0.75 * random["t2i_MeanR"]
    assert final["i2t_MeanR"] < 0.75 * random["i2t_MeanR"]


def test_history_has_metrics_every_epoch(trained, tmp_path):
    history, seen = trained
    assert seen == [1, 2, 3, 4, 5, 6]  # on_epoch is called after every epoch with the history so far
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4, 5, 6]
    for entry in history.epochs:
        assert METRIC_KEYS | {"loss", "train_seconds"} <= set(entry)
    assert history.metric("rsum") == [e["rsum"] for e in history.epochs]
    assert history.model == "mem-tiny-rn" and history.config["epochs"] == 6
    history.save(tmp_path / "history.json")
    assert History.load(tmp_path / "history.json") == history


def test_training_without_test_set_records_loss_only(shapes):
    train, _ = shapes
    history = train_clip(create_model("mem-tiny-rn", seed=0), train.select_images(range(16)), None,
                         TrainConfig(epochs=1, batch_size=16), progress=False)
    assert set(history.final) == {"epoch", "loss", "train_seconds"}


class Interrupted(Exception):
    """Stands for Ctrl-C or a killed job after a checkpoint was written."""


def _without_times(history: History) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "train_seconds"} for entry in history.epochs]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(shapes, tmp_path):
    train, test = shapes
    train, test = train.select_images(range(32)), test.select_images(range(16))
    config = TrainConfig(epochs=3, batch_size=32, seed=0)
    full_model = create_model("mem-tiny-rn", seed=0)
    full = train_clip(full_model, train, test, config, checkpoint=tmp_path / "full.safetensors", progress=False)

    def interrupt_after_first_epoch(history: History) -> None:
        if len(history.epochs) == 1:
            raise Interrupted

    checkpoint = tmp_path / "run.safetensors"
    with pytest.raises(Interrupted):
        train_clip(create_model("mem-tiny-rn", seed=0), train, test, config, checkpoint=checkpoint, progress=False,
                   on_epoch=interrupt_after_first_epoch)
    resumed_model = create_model("mem-tiny-rn", seed=123)  # other weights: all state must come from the checkpoint
    resumed = train_clip(resumed_model, train, test, config, checkpoint=checkpoint, resume=True, progress=False)

    assert len(resumed.epochs) == 3
    assert resumed.step_loss == full.step_loss
    assert _without_times(resumed) == _without_times(full)
    full_state, resumed_state = full_model.clip.state_dict(), resumed_model.clip.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)

    with pytest.raises(ValueError, match=r"cannot resume from .*run\.safetensors: it was trained with"):
        train_clip(create_model("mem-tiny-rn", seed=0), train, test, TrainConfig(epochs=3, batch_size=32, lr=1e-3),
                   checkpoint=checkpoint, resume=True, progress=False)


def test_a_finished_run_folder_keeps_the_model_not_the_resume_state_and_is_reread(shapes, tmp_path):
    train, test = shapes
    train, test = train.select_images(range(16)), test.select_images(range(8))
    config = TrainConfig(epochs=1, batch_size=16, seed=0)
    trained = create_model("mem-tiny-rn", seed=0)
    history = train_run(trained, train, test, config, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["history.json", "metrics.json", "model.json", "model.safetensors"]

    reread_model = create_model("mem-tiny-rn", seed=123)
    reread = train_run(reread_model, train, test, config, tmp_path / "run", resume=True, progress=False)
    assert reread.step_loss == history.step_loss and reread.epochs == history.epochs
    trained_state, reread_state = trained.clip.state_dict(), reread_model.clip.state_dict()
    assert all(torch.equal(trained_state[k], reread_state[k]) for k in trained_state)
    with pytest.raises(ResumeMismatch, match=r"it holds a finished mem-tiny-rn run trained with"):
        train_run(create_model("mem-tiny-vit", seed=0), train, test, config, tmp_path / "run", resume=True, progress=False)
