"""open_clip models behind one wrapper that takes [0, 1] (or uint8) pixels and normalises inside.

Any open_clip architecture works, with an open_clip pretrained tag (where the machine can download)
or a local checkpoint path; small configs bundled with this package train on a laptop CPU.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import open_clip
import torch
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from safetensors.torch import load_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .checkpoint import save_tensors
from .text import CaptionTokenizer

BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(BUNDLED_CONFIGS)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = 100.0


def bundled_models() -> list[str]:
    """Names of the small configs shipped with the toolkit."""
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.json"))


class ClipModel(nn.Module):
    """A CLIP whose image input is pixels in [0, 1] (float) or [0, 255] (uint8), (B, 3, S, S).

    Text forwards stop at the batch's last end-of-text token (`trim_text`, on by default): open_clip's
    CLIP text tower is causal and pools at the end-of-text token (the largest id of a row), so the
    padding after it changes nothing and costs most of a 77-token forward. `trim_text = False`
    runs the full context, as open_clip does. Of the last text block only the pooled position is computed
    (`pooled_last_block`, with `trim_text`): nothing else of its output reaches the features. A ResNet image tower gets its input channels-last
    (NHWC), so its convolutions run in the layout oneDNN and cuDNN are fastest in; the weights keep
    the usual layout (checkpoints, safetensors and fused AdamW need no care). Its attention pool computes
    only the pooled (mean) token's query (`pooled_attention_pool`): open_clip queries every position and
    keeps the first. `frozen_image_tower` folds its batch norms into the convolutions for frozen forwards
    (`fold_batch_norm`). Every flag can be switched off per model, to compare against open_clip's computation.
    """

    trim_text: bool = True
    pooled_last_block: bool = True
    pooled_attention_pool: bool = True
    fold_batch_norm: bool = True
    _folded_visual: nn.Module | None = None  # set by `frozen_image_tower`, kept out of the module tree

    def __init__(self, clip: nn.Module, name: str, pretrained: str | None, mean, std) -> None:
        super().__init__()
        self.clip = clip
        self.name = name
        self.pretrained = pretrained
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.context_length = int(clip.context_length)
        self.tokenizer = CaptionTokenizer()
        self.text_trimmable = text_trimmable(clip)
        self.channels_last = isinstance(clip.visual, ModifiedResNet)

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def token_embedding(self) -> nn.Embedding:
        """The text tower's token embedding (HotFlip and Integrated Gradients work on it)."""
        text = getattr(self.clip, "text", None)
        return text.token_embedding if text is not None else self.clip.token_embedding

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] pixels -> CLIP-normalised float input."""
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        return (pixels.to(self.mean.device) - self.mean) / self.std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features."""
        inputs = self.normalise(pixels)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        visual = self._folded_visual if self._folded_visual is not None else self.clip.visual
        if self.pooled_attention_pool and pooled_pool_applies(visual):
            features = pooled_attention_pool(visual.attnpool, visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(inputs))))))
        else:
            features = visual(inputs)  # what open_clip's encode_image computes before its optional normalisation
        return nn.functional.normalize(features, dim=-1)

    @contextmanager
    def frozen_image_tower(self):
        """Within the block `encode_image` runs a frozen copy of an eval-mode ResNet image tower whose batch norms are
        folded into the convolutions before them (`batch_norm_folded`): for many forwards with unchanged weights
        (PGD's steps). Exact in real arithmetic; in training mode, or for other towers, nothing changes. Nested
        blocks share the outer block's copy (a sweep over many batches folds once)."""
        visual = self.clip.visual
        if not self.fold_batch_norm or visual.training or type(visual) is not ModifiedResNet or self._folded_visual is not None:
            yield
            return
        object.__setattr__(self, "_folded_visual", batch_norm_folded(visual))
        try:
            yield
        finally:
            object.__setattr__(self, "_folded_visual", None)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm text features; the forward is cut after the batch's last end-of-text token where that is exact."""
        tokens = tokens.to(self.device)
        with _text_attention_kernel(tokens.device):
            if self.trim_text and self.text_trimmable:
                features = trimmed_text_forward(self.clip, tokens[:, :pooled_length(tokens)], self.pooled_last_block)
            else:
                features = self.clip.encode_text(tokens)
        return nn.functional.normalize(features, dim=-1)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor):
        """(image features, text features, logit scale) with features of unit norm."""
        return self.encode_image(pixels), self.encode_text(tokens), self.logit_scale()

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def clamp_logit_scale(self) -> None:
        """Keep the temperature within CLIP's bound (logit scale at most 100)."""
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, torch.log(torch.tensor(MAX_LOGIT_SCALE)).item())

    def save(self, path: str | os.PathLike) -> None:
        """Weights as safetensors plus a JSON sidecar naming the architecture (no pickle)."""
        path = Path(path)
        save_tensors(path, self.clip.state_dict(), {"name": self.name})
        sidecar = path.with_suffix(".json")
        sidecar.write_text(json.dumps({"name": self.name, "pretrained": self.pretrained, "image_size": self.image_size}))


def _text_attention_kernel(device: torch.device):
    """The plain (math) attention kernel for a bf16-autocast CPU text forward that will be differentiated, else torch's choice.

    On CPU the flash kernel's bf16 backward costs 2-3x the math one for text lengths of a few dozen
    tokens (measured: mem-tiny-rn text fwd+bwd 0.11 -> 0.04 s at batch 128), with the same accuracy
    against fp32; in fp32, without gradient or on CUDA the default kernel is as fast or faster.
    """
    bf16_cpu = device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return sdpa_kernel([SDPBackend.MATH]) if bf16_cpu and torch.is_grad_enabled() else nullcontext()


def text_trimmable(clip: nn.Module) -> bool:
    """Whether the text tower is open_clip's CLIP one with a causal mask and end-of-text (argmax) pooling.

    Only then is every token after a row's end-of-text token invisible to its features; other towers
    (bidirectional, pooled at the last position, a class token, a padding mask) run the full context.
    """
    return (isinstance(clip, open_clip.CLIP) and getattr(clip, "text_pool_type", None) == "argmax"
            and isinstance(getattr(clip, "attn_mask", None), torch.Tensor) and clip.attn_mask.dim() == 2)


def pooled_length(tokens: torch.Tensor) -> int:
    """Columns a causal, end-of-text-pooled text forward needs: up to the batch's furthest pooled (argmax) token."""
    if tokens.numel() == 0:
        return tokens.shape[-1]
    return int(tokens.argmax(dim=-1).max()) + 1


def trimmed_text_forward(clip: nn.Module, tokens: torch.Tensor, pooled_last_block: bool = True) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` for a sequence of at most the context length: positional embedding and
    causal mask sliced to its length (open_clip adds the full-context ones, which only fit 77 tokens).

    With `pooled_last_block` (where the last block is open_clip's plain one, `pooled_block_applies`) the
    last block computes only each row's end-of-text position, the one that is pooled: its keys and values
    still come from every position, but its query, attention output and MLP run on one token a row.
    """
    n = tokens.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding[:n].to(cast_dtype)
    mask = clip.attn_mask[:n, :n]
    if pooled_last_block and pooled_block_applies(clip.transformer):
        *blocks, last = clip.transformer.resblocks
        for block in blocks:
            x = block(x, attn_mask=mask)
        x = clip.ln_final(_pooled_block(last, x, tokens.argmax(dim=-1), mask))
    else:
        x = clip.ln_final(clip.transformer(x, attn_mask=mask))
        x = text_global_pool(x, tokens, clip.text_pool_type)
    projection = clip.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def pooled_block_applies(transformer: nn.Module) -> bool:
    """Whether the tower's last block can be run at the pooled positions only: open_clip's plain, batch-first
    self-attention block (no cross attention, no gradient checkpointing, which would bypass it)."""
    blocks = getattr(transformer, "resblocks", None)
    return (getattr(transformer, "batch_first", False) and not getattr(transformer, "grad_checkpointing", True) and bool(blocks)
            and type(blocks[-1]) is ResidualAttentionBlock and not hasattr(blocks[-1], "ln_1_kv"))


def _pooled_block(block: ResidualAttentionBlock, x: torch.Tensor, pooled_at: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
    """`block(x, attn_mask=causal_mask)[rows, pooled_at]`, computed for those positions alone: (B, width)."""
    rows = torch.arange(len(x), device=x.device)
    normed = block.ln_1(x)
    query = normed[rows, pooled_at][:, None]
    mask = causal_mask[pooled_at][:, None, :].repeat_interleave(block.attn.num_heads, dim=0)  # (B * heads, 1, n)
    attended = block.attn(query, normed, normed, need_weights=False, attn_mask=mask.to(query.dtype))[0]
    y = x[rows, pooled_at][:, None] + block.ls_1(attended)
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y[:, 0]


def batch_norm_folded(visual: ModifiedResNet) -> ModifiedResNet:
    """A frozen eval-mode copy of `visual` with every batch norm folded into the convolution it follows (torch's
    `fuse_conv_bn_eval`): one affine map fewer per convolution, forward and backward (fp32, one thread: 8 PGD
    steps of RN50 at 224 px, batch 8, 19.4 -> 17.2 s; mem-tiny-rn at batch 128 3.9 -> 3.5 s).
    """
    tower = copy.deepcopy(visual).eval().requires_grad_(False)
    for module in tower.modules():
        children = list(module.named_children())
        for (before, _), (name, norm) in zip([(None, None)] + children, children):
            conv_name = "conv" + name[2:] if name.startswith("bn") else before  # stem and Bottleneck: bnN follows convN; Sequential: the one before
            conv = getattr(module, conv_name, None) if conv_name is not None else None
            if isinstance(norm, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, name, nn.Identity())
    left = [name for name, m in tower.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"batch norms not after a convolution, cannot be folded: {left}")
    return tower


def pooled_pool_applies(visual: nn.Module) -> bool:
    """Whether the image tower is open_clip's ModifiedResNet with its own attention pool (not replaced by a head or identity)."""
    return type(visual) is ModifiedResNet and type(visual.attnpool) is AttentionPool2d


def pooled_attention_pool(pool: AttentionPool2d, x: torch.Tensor) -> torch.Tensor:
    """`pool(x)` (B, C, H, W) -> (B, out), computed for the one query open_clip keeps (the mean token's).

    Keys and values still come from all H * W + 1 tokens. Where there are more tokens than heads
    (RN50 at 224 px: 50 and 32) the key and value projections are folded into the query
    (`_folded_pool`); with fewer (mem-tiny-rn at 64 px: 5 and 32) the folded query would be larger than
    the keys it replaces, and the keys and values are projected (`_one_query_pool`).
    """
    tokens = x.flatten(2).permute(0, 2, 1)  # (B, HW, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + pool.positional_embedding.to(x.dtype)
    return (_folded_pool if tokens.shape[1] > pool.num_heads else _one_query_pool)(pool, tokens)


def _one_query_pool(pool: AttentionPool2d, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's attention of the pool for the first token's query alone; `tokens` (B, n, C)."""
    tokens = tokens.transpose(0, 1)  # (n, B, C), as torch's attention takes it
    pooled, _ = nn.functional.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return pooled[0]


def _folded_pool(pool: AttentionPool2d, tokens: torch.Tensor) -> torch.Tensor:
    """The same attention with the key and value projections folded into the one query (exact in real arithmetic).

    q . (Wk x_j + bk) = (Wk^T q) . x_j + q . bk, and sum_j a_j (Wv x_j + bv) = Wv (sum_j a_j x_j) + bv, as
    the weights sum to one. So each head projects its query back to the input width once and weighs the
    raw tokens: about three C x C products an image instead of 2n + 1 (RN50 at 224 px, batch 8, one
    thread: forward and backward of the pool 244 -> 47 ms in bf16, 428 -> 55 ms in fp32). The constant
    q . bk, which the softmax ignores, is kept so that every weight takes part (as in open_clip; DDP expects it).
    """
    batch, _, width = tokens.shape
    heads = pool.num_heads
    head_width = width // heads
    query = nn.functional.linear(tokens[:, 0], pool.q_proj.weight, pool.q_proj.bias) * head_width ** -0.5
    per_head = query.view(batch, heads, head_width)
    folded_query = per_head.transpose(0, 1) @ pool.k_proj.weight.view(heads, head_width, width)  # (heads, B, C)
    key_bias_logit = (per_head * pool.k_proj.bias.view(heads, head_width)).sum(dim=-1, keepdim=True)
    logits = folded_query.transpose(0, 1) @ tokens.transpose(1, 2) + key_bias_logit  # (B, heads, n)
    weights = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(tokens.dtype)  # bf16 logits: softmax in fp32
    mixed = weights @ tokens  # each head's attention-weighted token, (B, heads, C)
    values = mixed.transpose(0, 1) @ pool.v_proj.weight.view(heads, head_width, width).transpose(1, 2)  # (heads, B, head width)
    values = values.transpose(0, 1).reshape(batch, width) + pool.v_proj.bias.to(values.dtype)
    return pool.c_proj(values)


def create_model(
    name: str = "mem-tiny-rn",
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    image_size: int | None = None,
) -> ClipModel:
    """Build an open_clip model by name: open_clip tag or local checkpoint (.pt / .safetensors) in `pretrained`.

    With no weights the model is initialised from `seed` (so the same seed gives the same model);
    `image_size` overrides the config's input size (e.g. a bundled tiny model at 224 px).
    """
    if seed is None:
        return _create_model(name, pretrained, device, image_size)
    with torch.random.fork_rng(devices=[]):  # seeding the init must not reseed the caller's global generator
        torch.manual_seed(seed)
        return _create_model(name, pretrained, device, image_size)


def _create_model(name: str, pretrained, device, image_size: int | None) -> ClipModel:
    tokenizer_check(name)
    weights = str(pretrained) if pretrained is not None else None
    if weights is not None and weights.endswith(".safetensors"):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"checkpoint not found: {weights}")
        clip = _quiet_create(name, None, image_size)
        try:
            missing, unexpected = clip.load_state_dict(load_file(weights), strict=False)
        except RuntimeError as error:  # same names, other shapes: torch raises instead of listing them
            raise ValueError(f"checkpoint {weights} does not fit model {name!r}: {str(error).splitlines()[-1].strip()}") from None
        if missing or unexpected:
            raise ValueError(f"checkpoint {weights} does not fit model {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    else:
        clip = _quiet_create(name, weights, image_size)
    mean = getattr(clip.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(clip.visual, "image_std", None) or OPENAI_STD
    return ClipModel(clip, name, weights, mean, std).to(device)


def _quiet_create(name: str, pretrained: str | None, image_size: int | None = None) -> nn.Module:
    """open_clip warns that a from-scratch model has no weights; that is our normal case."""
    logger = logging.getLogger()
    level = logger.level
    if pretrained is None:
        logger.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(name, pretrained=pretrained, force_image_size=image_size)
    except RuntimeError as error:
        if "not found" in str(error) and pretrained is None:
            check_model_name(name)
        raise
    finally:
        logger.setLevel(level)


def check_model_name(name: str) -> None:
    """Refuse, before any work, a name that is neither a bundled config nor an open_clip architecture, or another tokenizer's."""
    if name not in bundled_models() and name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}; bundled: {bundled_models()}, open_clip has {len(open_clip.list_models())} more")
    tokenizer_check(name)


def tokenizer_check(name: str) -> None:
    """Triggers are BPE ids: refuse models whose text tower uses another tokenizer."""
    tokenizer = open_clip.get_tokenizer(name) if name in open_clip.list_models() else None
    if tokenizer is not None and not isinstance(tokenizer, SimpleTokenizer):
        raise ValueError(f"model {name!r} uses {type(tokenizer).__name__}; mem_toolkit supports CLIP BPE (SimpleTokenizer) models")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ClipModel:
    """Load a checkpoint written by `ClipModel.save` (its JSON sidecar names the architecture)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} (written beside every saved model) is missing; use create_model(name, pretrained=path)")
    info = json.loads(sidecar.read_text())
    return create_model(info["name"], pretrained=path, device=device, image_size=info.get("image_size"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` means CUDA where present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
