"""Why a CLIP matches an image and a caption: Grad-CAM on the image tower, Integrated Gradients on caption tokens.

Both explain the same number, the cosine similarity of one image and one caption, and share one
call shape (as captum's `attribute(inputs, baselines, target)`):
`explain_image(model, pixels, caption_tokens)` and `explain_text(model, pixels, caption_tokens,
trigger_len)` each return an `Explanation`, which `Explanation.plot()` draws.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from torch import nn

from .models import ClipModel

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "xgradcam": XGradCAM, "layercam": LayerCAM}
# Integrated Gradients' default baseline replaces every trigger and caption token with this id. It is
# the id open_clip pads every caption with, so the baseline is a valid token row of the same length
# whose start token, end token (where text pooling reads) and padding are untouched: only content is
# removed, and the text tower runs the same path (positions, causal mask, pooling). Id 0 is also the
# BPE token "!": for a model that learned "!" as content, pass another `baseline_id`.
BASELINE_TOKEN_ID = 0


@dataclass
class Explanation:
    """One explained image-caption pair: which pixels or tokens raise their cosine similarity, and by how much."""

    method: str
    attribution: np.ndarray  # image: (H, W) in [0, 1]; text: (T,) signed, one value per trigger/caption token
    score: float  # the explained output: cosine similarity of the image and the caption
    image: np.ndarray  # uint8 (H, W, 3), the explained image
    caption: str  # decoded caption, trigger words first
    tokens: list[str] = field(default_factory=list)  # text: the T attributed tokens
    trigger: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # text: True for trigger tokens
    extras: dict = field(default_factory=dict)  # method details (CAM layer; IG delta, baseline score, steps)

    @property
    def modality(self) -> str:
        """`image` (a heat map over pixels) or `text` (one value per token)."""
        return "image" if self.attribution.ndim == 2 else "text"


class ImageTextSimilarity:
    """pytorch-grad-cam target: cosine similarity between an image's feature and one fixed text feature."""

    def __init__(self, text_feature: torch.Tensor) -> None:
        self.text_feature = text_feature.detach().flatten().float()

    def __call__(self, image_feature: torch.Tensor) -> torch.Tensor:
        text = self.text_feature.to(image_feature.device)
        return nn.functional.cosine_similarity(image_feature.flatten().float(), text, dim=0)


class ImageTower(nn.Module):
    """The image tower as a module of one [0, 1] pixel tensor, which is what pytorch-grad-cam calls."""

    def __init__(self, model: ClipModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The weights are frozen while explaining: a leaf input that needs a gradient is what makes
        # the target layer's activations carry one.
        return self.model.encode_image(pixels.detach().float().requires_grad_(True))


class VitTokensToGrid:
    """pytorch-grad-cam `reshape_transform` for an open_clip ViT: patch tokens -> (B, C, rows, cols).

    Reads open_clip's layout instead of assuming it: batch-first or sequence-first (older open_clip),
    and how many prefix tokens (class token, registers) come before the patches.
    """

    def __init__(self, visual: nn.Module) -> None:
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.batch_first = bool(getattr(visual.transformer, "batch_first", False))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        rows, cols = self.grid
        prefix = tokens.shape[1] - rows * cols
        if prefix < 0:
            raise ValueError(f"{tokens.shape[1]} tokens cannot hold a {rows}x{cols} patch grid")
        patches = tokens[:, prefix:]
        return patches.reshape(tokens.shape[0], rows, cols, tokens.shape[2]).permute(0, 3, 1, 2)


def cam_layer(model: ClipModel, layer: str | None = None) -> tuple[nn.Module, Callable | None, str]:
    """The Grad-CAM layer of the image tower, its reshape transform, and its name.

    ResNet (open_clip ModifiedResNet): the last block of `layer4`. ViT (open_clip VisionTransformer):
    the input normalisation `ln_1` of the last transformer block: the patch tokens there still reach
    the pooled class token through attention, whereas after the last block only the class token is
    read. `layer` names another module of `model.clip.visual` (e.g. `"layer3"`).
    """
    visual = model.clip.visual
    is_resnet = hasattr(visual, "layer4") and hasattr(visual, "attnpool")
    is_vit = hasattr(visual, "transformer") and hasattr(visual, "grid_size")
    if not (is_resnet or is_vit):
        raise ValueError(f"Grad-CAM supports open_clip ModifiedResNet and VisionTransformer image towers, not {type(visual).__name__}")
    name = layer or ("layer4.-1" if is_resnet else "transformer.resblocks.-1.ln_1")
    module = visual
    for part in name.split("."):
        try:
            module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
        except (AttributeError, IndexError, TypeError):
            raise ValueError(f"image tower {type(visual).__name__} has no layer {name!r}") from None
    return module, (VitTokensToGrid(visual) if is_vit else None), name


def explain_image(model: ClipModel, pixels, caption_tokens, method: str = "gradcam", layer: str | None = None) -> Explanation:
    """Grad-CAM heat map (H x W in [0, 1]) of the pixels that raise the image's cosine similarity to the caption.

    Grad-CAM keeps positive evidence only: an all-zero map means no region raises the similarity
    (common for a caption the model finds unrelated to the image).

    `pixels`: one image, uint8 or [0, 1] float, (3, S, S) / (1, 3, S, S) tensor or (S, S, 3) array.
    `caption_tokens`: a (context_length,) token row (e.g. from `tokenizer.assemble`, trigger
    included) or a plain caption string. `method`: one of `CAM_METHODS`.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {sorted(CAM_METHODS)}")
    image, tokens = _image_input(model, pixels), _token_input(model, caption_tokens)
    target_layer, reshape, layer_name = cam_layer(model, layer)
    with _explaining(model):
        with torch.no_grad():
            text_feature = model.encode_text(tokens)[0]
            score = float(model.encode_image(image)[0] @ text_feature)
        cam = CAM_METHODS[method](ImageTower(model), [target_layer], reshape_transform=reshape)
        try:
            heat = cam(image, targets=[ImageTextSimilarity(text_feature)])[0]
        finally:
            cam.activations_and_grads.release()
    return Explanation(method, heat.astype(np.float32), score, _display_image(image), _caption_text(model, tokens),
                       extras={"layer": layer_name})


def explain_text(model: ClipModel, pixels, caption_tokens, trigger_len: int = 0, steps: int = 64,
                 baseline_id: int = BASELINE_TOKEN_ID) -> Explanation:
    """Integrated Gradients of the image-caption cosine similarity over the caption's tokens (trigger first).

    Attributions are summed over the embedding dimension, one per trigger and caption token; by
    completeness they add up to score - baseline score, up to `extras["delta"]` (captum's
    convergence delta; more `steps` shrink it). The baseline replaces those tokens with
    `baseline_id` and keeps the start token, end token and padding. `caption_tokens` comes
    from `tokenizer.assemble(caption_ids, context_length, prefix=trigger_ids)`; its first
    `trigger_len` tokens after the start token are marked as the trigger.
    """
    image, tokens = _image_input(model, pixels), _token_input(model, caption_tokens)
    end = int((tokens[0] == model.tokenizer.eot).nonzero()[0])
    if not 0 <= trigger_len <= end - 1:
        raise ValueError(f"trigger_len {trigger_len} does not fit a row of {end - 1} tokens between start and end token")
    if not 0 <= baseline_id < model.tokenizer.sot:
        raise ValueError(f"baseline_id {baseline_id} must be an ordinary token id (0 to {model.tokenizer.sot - 1})")
    baseline = tokens.clone()
    baseline[0, 1:end] = baseline_id
    with _explaining(model):
        with torch.no_grad():
            image_feature = model.encode_image(image)[0]

        def similarity(token_rows: torch.Tensor) -> torch.Tensor:
            return model.encode_text(token_rows) @ image_feature

        with torch.no_grad():
            score, baseline_score = (float(s) for s in similarity(torch.cat([tokens, baseline])))
        integrated = LayerIntegratedGradients(similarity, model.token_embedding)
        attributions, delta = integrated.attribute(tokens, baselines=baseline, n_steps=steps, return_convergence_delta=True)
    per_token = attributions[0].sum(-1).detach().cpu().numpy()[1:end]
    ids = tokens[0, 1:end].tolist()
    return Explanation(
        "integrated_gradients", per_token.astype(np.float64), score, _display_image(image), _caption_text(model, tokens),
        tokens=[model.tokenizer.decode([i]) for i in ids],
        trigger=np.arange(len(ids)) < trigger_len,
        extras={"delta": float(delta[0]), "baseline_score": baseline_score, "steps": steps, "baseline_id": baseline_id},
    )


@contextmanager
def _explaining(model: ClipModel) -> Iterator[None]:
    """Eval mode (batch norm, dropout) and frozen weights while explaining; the caller's state is restored after."""
    was_training = model.training
    needs_grad = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in zip(model.parameters(), needs_grad):
            param.requires_grad_(flag)
        model.train(was_training)


def _image_input(model: ClipModel, pixels) -> torch.Tensor:
    """One image as a (1, 3, S, S) float tensor in [0, 1] on the model's device."""
    if isinstance(pixels, np.ndarray) and pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    pixels = torch.as_tensor(pixels)
    size, given = model.image_size, tuple(pixels.shape)
    pixels = pixels[None] if pixels.ndim == 3 else pixels
    if pixels.shape != (1, 3, size, size):
        raise ValueError(f"expected one image of shape (3, {size}, {size}) or ({size}, {size}, 3) for {model.name}, got {given}")
    if pixels.dtype == torch.uint8:
        return pixels.float().div(255).to(model.device)
    if pixels.min() < 0 or pixels.max() > 1:
        raise ValueError("float pixels must lie in [0, 1] (uint8 pixels are divided by 255)")
    return pixels.float().to(model.device)


def _token_input(model: ClipModel, caption_tokens) -> torch.Tensor:
    """One caption as a (1, context_length) token row starting with the start token and holding an end token."""
    if isinstance(caption_tokens, str):
        return model.tokenizer(caption_tokens, model.context_length).to(model.device)
    tokens = torch.as_tensor(caption_tokens, dtype=torch.long)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    if tokens.shape != (1, model.context_length):
        raise ValueError(f"expected one token row of length {model.context_length}, got shape {tuple(tokens.shape)}")
    if int(tokens[0, 0]) != model.tokenizer.sot or not bool((tokens[0] == model.tokenizer.eot).any()):
        raise ValueError("caption tokens must start with the start token and contain the end token (use tokenizer.assemble)")
    return tokens.to(model.device)


def _display_image(image: torch.Tensor) -> np.ndarray:
    return (image[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def _caption_text(model: ClipModel, tokens: torch.Tensor) -> str:
    end = int((tokens[0] == model.tokenizer.eot).nonzero()[0])
    return model.tokenizer.decode(tokens[0, 1:end].tolist())
