"""Figures: every plot returns a Figure and writes a non-empty file; inputs are checked; t-SNE is deterministic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mem_toolkit import plots
from mem_toolkit.data import make_shapes
from mem_toolkit.explain import explain_image, explain_text
from mem_toolkit.metrics import random_guess_metrics
from mem_toolkit.models import create_model
from mem_toolkit.train import History


@pytest.fixture(scope="module")
def model():
    return create_model("mem-tiny-rn", seed=0)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(6, 64, seed=3)


def _history(epochs: int, steps_per_epoch: int, start: float) -> History:
    """A History as train_clip writes it (per-step loss, per-epoch metrics), with made-up numbers."""
    history = History(config={"epochs": epochs}, model="mem-tiny-rn")
    history.step_loss = list(start * np.exp(-np.arange(epochs * steps_per_epoch) / 30) + 1)
    for epoch in range(epochs):
        history.epochs.append({"epoch": epoch + 1, "loss": float(np.mean(history.step_loss[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch])),
                               "t2i_MedR": 40.0 / (epoch + 1), "i2t_R@10": 10.0 + 5 * epoch, "t2i_R@10": 8.0 + 4 * epoch})
    return history


def _written(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000


def test_curves_accept_history_objects_json_paths_and_run_folders(tmp_path):
    clean, protected = _history(4, 10, 3.0), _history(4, 10, 2.0)
    protected.save(tmp_path / "mem.json")
    (tmp_path / "run").mkdir()
    clean.save(tmp_path / "run" / "history.json")
    runs = {"clean": clean, "MEM (json)": tmp_path / "mem.json", "clean (folder)": str(tmp_path / "run"), "clean (dict)": clean.to_dict()}
    fig = plots.plot_curves(runs, random=random_guess_metrics([5] * 50), save=tmp_path / "curves.png")
    assert isinstance(fig, Figure) and _written(tmp_path / "curves.png")
    loss_axis, medr_axis = fig.axes[0], fig.axes[1]
    assert loss_axis.get_ylabel() == "training loss" and medr_axis.get_ylabel() == "text→image MedR"
    # per run: a raw and a smoothed loss line; the smoothed one ends on the loaded history's values
    assert len(loss_axis.lines) == 2 * len(runs)
    np.testing.assert_allclose(loss_axis.lines[3].get_ydata(), plots.smooth(protected.step_loss, 0.9))
    np.testing.assert_allclose(loss_axis.lines[3].get_xdata()[-1], 4.0)  # step loss is drawn in epoch units
    random_lines = [line for line in medr_axis.lines if line.get_label() == "random guess"]
    assert len(random_lines) == 1 and random_lines[0].get_ydata()[0] == random_guess_metrics([5] * 50)["t2i_MedR"]
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == sorted([*runs, "random guess"])


def test_curves_per_epoch_loss_as_pdf(tmp_path):
    fig = plots.plot_curves({"clean": _history(3, 5, 3.0)}, metrics=["i2t_R@10"], loss="epoch", save=tmp_path / "curves.pdf")
    assert len(fig.axes[0].lines[0].get_ydata()) == 3
    data = (tmp_path / "curves.pdf").read_bytes()
    assert data.startswith(b"%PDF") and b"/FontFile2" in data  # TrueType text embedded: editable vector figure


def test_curves_report_every_missing_metric_and_empty_run(tmp_path):
    with pytest.raises(ValueError) as error:
        plots.plot_curves({"a": _history(2, 3, 1.0), "b": History(config={}, model="x")}, metrics=["t2i_MedR", "i2t_R@99"])
    message = str(error.value)
    assert "'a' has no metric 'i2t_R@99'" in message and "'b': no epochs" in message
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        plots.plot_curves({"a": tmp_path / "nothing.json"})


def test_smoothing_is_a_debiased_moving_average():
    values = np.array([1.0, 3.0, 2.0, 5.0])
    expected, running = [], 0.0
    for i, v in enumerate(values):
        running = 0.6 * running + 0.4 * v
        expected.append(running / (1 - 0.6 ** (i + 1)))
    np.testing.assert_allclose(plots.smooth(values, 0.6), expected)
    np.testing.assert_allclose(plots.smooth(values, 0.0), values)


def test_tsne_shapes_groups_and_determinism(model, shapes, tmp_path):
    first = plots.tsne_features(model, shapes, groups=[0, 2, 4], seed=1)
    again = plots.tsne_features(model, shapes, groups=[0, 2, 4], seed=1)
    rows = np.flatnonzero(np.isin(shapes.group_ids, [0, 2, 4]))
    assert first.points.shape == (3 + len(rows), 2)  # one point per distinct image, one per caption
    assert (first.modality == "image").sum() == 3 and sorted(first.group[first.modality == "image"]) == [0, 2, 4]
    np.testing.assert_array_equal(first.group[first.modality == "text"], shapes.group_ids[rows])
    np.testing.assert_array_equal(first.points, again.points)
    fig = plots.plot_tsne(first, title="clean", save=tmp_path / "tsne.png")
    assert isinstance(fig, Figure) and _written(tmp_path / "tsne.png")
    with pytest.raises(ValueError, match=r"\[99\]"):
        plots.tsne_features(model, shapes, groups=[0, 99])


class _PerRowNoiseView:
    """A dataset-like view whose every row shows its own perturbed copy of the image (as per-row noise does)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.group_ids = dataset.group_ids

    def image_batch(self, rows):
        pixels = self.dataset.image_batch(rows).to(torch.int16)
        shift = torch.as_tensor(np.asarray(rows) % 7 - 3, dtype=torch.int16).view(-1, 1, 1, 1)
        return (pixels + shift).clamp(0, 255).to(torch.uint8)

    def token_batch(self, rows, tokenizer, context_length):
        return self.dataset.token_batch(rows, tokenizer, context_length)


def test_tsne_comparison_takes_any_dataset_like_view(model, shapes, tmp_path):
    view = _PerRowNoiseView(shapes)
    embedding = plots.tsne_features(model, view, groups=[1, 3])
    assert (embedding.modality == "image").sum() == 10  # every row's image differs: 2 groups x 5 captions
    fig = plots.plot_tsne_comparison({"clean model, clean data": (model, shapes), "model, per-row view": embedding},
                                     groups=[1, 3], save=tmp_path / "pair.png")
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["clean model, clean data", "model, per-row view"]
    assert _written(tmp_path / "pair.png")
    with pytest.raises(ValueError, match="give the image groups"):
        plots.plot_tsne_comparison({"a": (model, shapes)})


def test_heat_overlay_blends_the_colormap_over_the_image():
    image = np.full((4, 4, 3), 200, dtype=np.uint8)
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    np.testing.assert_array_equal(plots.heat_overlay(image, heat, alpha=0.0), image)
    full = plots.heat_overlay(image, heat, cmap="gray", alpha=1.0)
    np.testing.assert_array_equal(full[..., 0], np.rint(heat * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        plots.heat_overlay(image, np.zeros((3, 3)))


def test_attention_figures(model, shapes, tmp_path):
    tokenizer = model.tokenizer
    trigger = np.array([[tokenizer.encode("apple")[0], tokenizer.encode("zebra")[0]]])
    tokens = tokenizer.assemble([tokenizer.encode(shapes.captions[0])], model.context_length, prefix=trigger)[0]
    image = shapes.image_batch([0])[0]
    heat = [explain_image(model, image, shapes.captions[0]), explain_image(model, image, tokens)]
    fig = plots.plot_image_attention(heat, save=tmp_path / "cam.png")
    assert isinstance(fig, Figure) and _written(tmp_path / "cam.png")
    assert len([ax for ax in fig.axes if ax.images]) == 3  # the image, then one overlay per caption

    text = explain_text(model, image, tokens, trigger_len=2, steps=16)
    fig = plots.plot_token_attention([text, explain_text(model, image, shapes.captions[1], steps=16)], save=tmp_path / "tokens.png")
    assert _written(tmp_path / "tokens.png")
    labels = [t for t in fig.axes[0].texts if t.get_text() == "trigger"]
    boxed = [t.get_text() for t in fig.axes[0].texts if t.get_bbox_patch() is not None and t.get_bbox_patch().get_linewidth() > 0]
    assert len(labels) == 2 and boxed == ["apple", "zebra"]
    assert isinstance(plots.plot_explanation(text, save=tmp_path / "one.svg"), Figure) and _written(tmp_path / "one.svg")
    with pytest.raises(ValueError, match="not text explanations"):
        plots.plot_token_attention(heat)


def test_noise_grid_and_amplification(shapes, tmp_path):
    np.testing.assert_array_equal(plots.amplify_noise(np.array([-8, -1, 0, 1, 8], dtype=np.int8), eps=8), [1, 112, 128, 144, 255])
    rng = np.random.default_rng(0)
    clean = list(shapes.images([0, 1, 2]))
    noise = [rng.integers(-8, 9, size=image.shape).astype(np.int8) for image in clean]
    captions = ["apple zebra " + shapes.captions[r] for r in (0, 5, 10)]
    fig = plots.plot_noise_grid(clean, noise, captions, eps=8, save=tmp_path / "noise.png")
    assert isinstance(fig, Figure) and _written(tmp_path / "noise.png")
    protected = fig.axes[3 + 1].images[0].get_array()  # row-major 3 x 3 grid: row 1 (protected), column 1
    np.testing.assert_array_equal(protected, np.clip(clean[1].astype(int) + noise[1], 0, 255))
    assert fig.axes[0].get_title().replace("\n", " ") == captions[0]
    too_big = [noise[0] * 2, noise[1].astype(np.float32), noise[2]]
    with pytest.raises(ValueError) as error:
        plots.plot_noise_grid(clean, too_big, captions[:2], eps=8)
    message = str(error.value)
    assert "example 0: noise reaches 16 > eps 8" in message and "example 1: noise must be integer" in message and "(got 3, 3, 2)" in message



def test_noise_grid_at_eps_zero_shows_flat_grey_noise(shapes):
    clean = list(shapes.images([0, 1]))
    noise = [np.zeros_like(image, dtype=np.int8) for image in clean]
    fig = plots.plot_noise_grid(clean, noise, ["a", "b"], eps=0)
    assert (fig.axes[2 * 2].images[0].get_array() == 128).all() and "ε = 0" in fig.axes[2 * 2].get_ylabel()

def test_save_rejects_unknown_formats(tmp_path):
    fig = plots.plot_curves({"a": _history(2, 2, 1.0)})
    with pytest.raises(ValueError, match=r"\.png"):
        plots.save_figure(fig, tmp_path / "figure.jpg")
    assert plots.save_figure(fig, tmp_path / "sub" / "figure.svg").read_text().startswith("<?xml")
