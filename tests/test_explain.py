"""Explanations on real tiny models: Grad-CAM follows the caption, Integrated Gradients is complete, triggers are marked."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mem_toolkit.data import make_shapes
from mem_toolkit.explain import (BASELINE_TOKEN_ID, CAM_METHODS, VitTokensToGrid, cam_layer, explain_image,
                                 explain_text)
from mem_toolkit.models import create_model
from mem_toolkit.train import TrainConfig, train_clip

QUADRANTS = [(slice(0, 32), slice(0, 32)), (slice(0, 32), slice(32, 64)), (slice(32, 64), slice(0, 32)), (slice(32, 64), slice(32, 64))]


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(200, 64, seed=0, difficulty="easy")


@pytest.fixture(scope="module", params=["mem-tiny-rn", "mem-tiny-vit"])
def trained(request, shapes):
    """A tiny CLIP trained for 40 steps: enough to tie colours and shapes to words."""
    model = create_model(request.param, seed=0)
    train_clip(model, shapes, None, TrainConfig(epochs=2, batch_size=50, lr=1e-3, warmup_steps=5, amp=False), progress=False)
    return model


def _tiles(shapes, groups) -> np.ndarray:
    """A 2 x 2 mosaic of four images, each shrunk to one quadrant."""
    mosaic = np.zeros((64, 64, 3), dtype=np.uint8)
    for quadrant, image in zip(QUADRANTS, shapes.images(groups)):
        mosaic[quadrant] = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BOX))
    return mosaic


@torch.no_grad()
def _best_caption(model, shapes, group) -> str:
    """The one of an image's captions that the model matches best to that image alone."""
    rows = np.flatnonzero(shapes.group_ids == group)
    model.eval()
    scores = model.encode_text(shapes.token_batch(rows, model.tokenizer, model.context_length)) @ model.encode_image(shapes.image_batch(rows[:1])).T
    return shapes.captions[rows[int(scores.argmax())]]


def test_gradcam_map_has_image_size_and_moves_to_the_described_tile(trained, shapes):
    own_share, differences = [], []
    for first in range(0, 32, 4):
        groups = list(range(first, first + 4))
        mosaic = _tiles(shapes, groups)
        maps = [explain_image(trained, mosaic, _best_caption(trained, shapes, g)).attribution for g in groups]
        for quadrant, heat in zip(QUADRANTS, maps):
            assert heat.shape == (64, 64) and heat.dtype == np.float32
            assert 0 <= heat.min() and heat.max() <= 1
            own_share.append(heat[quadrant].sum() / max(heat.sum(), 1e-9))
        differences += [np.abs(maps[i] - maps[j]).mean() for i in range(4) for j in range(i + 1, 4)]
    # Chance is 0.25: the caption of one tile pulls the heat onto that tile (about 0.5 measured for both towers).
    assert np.mean(own_share) > 0.35, own_share
    # The map is a function of the caption: different captions give clearly different maps.
    assert np.median(differences) > 0.1, differences


def test_gradcam_map_is_not_constant_for_a_matching_caption(trained, shapes):
    caption = _best_caption(trained, shapes, 0)
    explanation = explain_image(trained, shapes.image_batch([0])[0], caption)
    assert explanation.attribution.std() > 0.05
    assert explanation.image.shape == (64, 64, 3) and explanation.image.dtype == np.uint8
    with torch.no_grad():
        pixels = shapes.image_batch([0])
        expected = trained.encode_image(pixels) @ trained.encode_text(trained.tokenizer(caption, trained.context_length)).T
    assert explanation.score == pytest.approx(float(expected), abs=1e-5)


def test_integrated_gradients_complete_and_triggers_marked(trained, shapes):
    tokenizer = trained.tokenizer
    trigger = [tokenizer.encode("apple")[0], tokenizer.encode("zebra")[0], tokenizer.encode("violin")[0]]
    caption = tokenizer.encode(shapes.captions[0])
    tokens = tokenizer.assemble([caption], trained.context_length, prefix=np.array([trigger]))[0]
    explanation = explain_text(trained, shapes.image_batch([0])[0], tokens, trigger_len=3, steps=64)

    assert explanation.tokens == ["apple", "zebra", "violin"] + [tokenizer.decode([i]) for i in caption]
    np.testing.assert_array_equal(explanation.trigger, [True] * 3 + [False] * len(caption))
    assert explanation.caption == "apple zebra violin " + shapes.captions[0]
    # Completeness, against an independently computed baseline: start token, neutral ids, end token, padding.
    baseline = tokens.clone()
    baseline[1:1 + 3 + len(caption)] = BASELINE_TOKEN_ID
    with torch.no_grad():
        image = trained.encode_image(shapes.image_batch([0]))
        score, baseline_score = (trained.encode_text(torch.stack([tokens, baseline])) @ image.T).flatten().tolist()
    assert explanation.score == pytest.approx(score, abs=1e-5)
    assert explanation.attribution.sum() == pytest.approx(score - baseline_score, abs=2e-3)
    assert abs(explanation.extras["delta"]) < 2e-3
    assert abs(score - baseline_score) > 0.02  # the check above is not vacuous
    assert np.abs(explanation.attribution).max() > 1e-3


def test_explanations_leave_the_model_as_they_found_it(trained, shapes):
    trained.train()
    trained.zero_grad(set_to_none=True)
    before = {name: p.clone() for name, p in trained.state_dict().items()}
    explain_image(trained, shapes.image_batch([1])[0], shapes.captions[5])
    explain_text(trained, shapes.image_batch([1])[0], shapes.captions[5], steps=8)
    assert trained.training and all(p.requires_grad and p.grad is None for p in trained.parameters())
    assert all(torch.equal(before[name], p) for name, p in trained.state_dict().items())  # batch-norm statistics included
    trained.eval()


def test_other_cam_methods_and_layers(trained, shapes):
    image, caption = shapes.images([2])[0], shapes.captions[10]  # an (S, S, 3) uint8 array is accepted too
    for method in CAM_METHODS:
        heat = explain_image(trained, image, caption, method=method).attribution
        assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1, method
    layer = "layer3" if hasattr(trained.clip.visual, "layer3") else "transformer.resblocks.0.ln_1"
    explanation = explain_image(trained, image, caption, layer=layer)
    assert explanation.extras["layer"] == layer and explanation.attribution.shape == (64, 64)
    with pytest.raises(ValueError, match="no layer 'nothing'"):
        explain_image(trained, image, caption, layer="nothing")
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain_image(trained, image, caption, method="magic")


def test_cam_layer_per_tower():
    resnet, vit = create_model("mem-tiny-rn", seed=0), create_model("mem-tiny-vit", seed=0)
    module, reshape, name = cam_layer(resnet)
    assert module is resnet.clip.visual.layer4[-1] and reshape is None
    module, reshape, name = cam_layer(vit)
    assert module is vit.clip.visual.transformer.resblocks[-1].ln_1 and isinstance(reshape, VitTokensToGrid)


class _Tower:
    """The two attributes of an open_clip ViT the reshape reads: its patch grid and its token layout."""

    def __init__(self, batch_first: bool):
        self.grid_size = (2, 3)
        self.transformer = type("Transformer", (), {"batch_first": batch_first})()


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_vit_reshape_drops_prefix_tokens_in_either_layout(prefix):
    batch, channels = 2, 5
    grid = torch.arange(batch * channels * 6, dtype=torch.float32).reshape(batch, channels, 2, 3)
    patches = grid.flatten(2).transpose(1, 2)  # (B, 6, C), row-major patches as open_clip's conv stem
    tokens = torch.cat([torch.full((batch, prefix, channels), -1.0), patches], dim=1)
    torch.testing.assert_close(VitTokensToGrid(_Tower(batch_first=True))(tokens), grid)
    torch.testing.assert_close(VitTokensToGrid(_Tower(batch_first=False))(tokens.transpose(0, 1)), grid)
    with pytest.raises(ValueError, match="cannot hold a 2x3"):
        VitTokensToGrid(_Tower(batch_first=True))(tokens[:, :5])


def test_bad_inputs_are_named():
    model = create_model("mem-tiny-rn", seed=0)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"shape \(3, 64, 64\).*got \(3, 32, 32\)"):
        explain_image(model, torch.zeros(3, 32, 32), "a red circle")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explain_image(model, torch.full((3, 64, 64), 2.0), "a red circle")
    with pytest.raises(ValueError, match="start with the start token"):
        explain_image(model, image, torch.zeros(model.context_length, dtype=torch.long))
    with pytest.raises(ValueError, match="trigger_len 9"):
        explain_text(model, image, "a red circle", trigger_len=9)
    with pytest.raises(ValueError, match="baseline_id 49407"):
        explain_text(model, image, "a red circle", baseline_id=model.tokenizer.eot)
