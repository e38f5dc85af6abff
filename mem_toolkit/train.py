"""Contrastive training of a CLIP (the hacker, or a surrogate) with per-epoch clean-test evaluation.

AdamW without decay on norms, biases and the logit scale; linear warm-up then cosine over the real
number of steps; logit scale clamped at ln 100; atomic per-epoch checkpoints and `resume`.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .atomic import write_json
from .augment import AUGMENTATIONS, crop_flip, crop_flip_params
from .checkpoint import load_state, optimizer_tensors, restore_optimizer, save_state
from .data.dataset import CaptionDataset
from .errors import ResumeMismatch
from .evaluate import evaluate_retrieval
from .loss import clip_loss
from .models import ClipModel


class PairSource(Protocol):
    """What training needs of a dataset, or of a protected / stripped view of one."""

    def __len__(self) -> int: ...

    def image_batch(self, rows: np.ndarray) -> torch.Tensor: ...

    def token_batch(self, rows: np.ndarray, tokenizer, context_length: int) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    """Hacker training settings; the defaults are the official MEM evaluation protocol."""

    epochs: int = 32
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup_steps: int | None = None  # None: 10 % of all steps
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    seed: int = 0
    amp: bool = True  # bf16 autocast where the device runs bf16 natively (else fp32); the loss is computed in fp32
    eval_batch_size: int = 256
    augment: str = "none"  # "crop-flip": random resized crop + horizontal flip per sample and step (mem_toolkit.augment)

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; choose from {AUGMENTATIONS}")

    def record(self) -> dict:
        """The settings as JSON, for run records and cache keys. `augment` is left out while "none", so the records
        and keys of runs made before the setting existed still match and those runs are reused, not trained again."""
        settings = json.loads(json.dumps(asdict(self)))
        if settings["augment"] == "none":
            del settings["augment"]
        return settings


@dataclass
class History:
    """Per-step training loss and per-epoch metrics of one training run."""

    config: dict
    model: str
    step_loss: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)

    def metric(self, key: str) -> list[float]:
        """One metric over the epochs, e.g. `history.metric("t2i_MedR")`."""
        return [entry[key] for entry in self.epochs]

    @property
    def final(self) -> dict:
        return self.epochs[-1] if self.epochs else {}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        return cls.from_dict(json.loads(Path(path).read_text()))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: no decay on norms, biases, scalars (logit scale) — as open_clip."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        excluded = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if excluded else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def adamw(model: torch.nn.Module, weight_decay: float, **settings) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, fused where torch has the kernel: one pass over all parameters instead of
    a Python loop per tensor (6x cheaper for the tiny models' 6M-entry token embedding), the same update up to rounding."""
    groups = parameter_groups(model, weight_decay)
    devices = {param.device.type for group in groups for param in group["params"]}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, fused=fused or None, **settings)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether the device runs bf16 matrix kernels in hardware: CUDA with bf16, a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 is emulated: on an AVX2-only CPU (most laptops) a tiny-model training step is
    about 10x slower in bf16 than in fp32 (2 s vs 21 s measured), so autocast is not worth it there.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def runs_bf16(device: torch.device, amp: bool) -> bool:
    """Whether `autocast(device, amp)` computes in bf16: asked for, and the device runs it natively (`native_bf16`)."""
    return amp and native_bf16(device.type)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where `runs_bf16`, else a no-op context (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if runs_bf16(device, enabled) else nullcontext()


def batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled full batches of one epoch, reproducible from (seed, epoch) alone."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    size = min(batch_size, n_rows)
    return [order[i:i + size] for i in range(0, n_rows - size + 1, size)]


def contrastive_step(model: ClipModel | DistributedDataParallel, optimizer: torch.optim.Optimizer, data: PairSource, rows: np.ndarray,
                     amp: bool, crops: np.ndarray | None = None) -> float:
    """One optimiser step of the symmetric InfoNCE loss over the global batch `rows` (gradients zeroed first); returns the loss.

    `crops` (`augment.crop_flip_params` of the global batch) crops and flips each row's image first.

    `model` is a ClipModel, or in several processes its `distributed.replicate` (DDP) wrapper: then
    each rank encodes only its slice of `rows` and the loss is taken over the features gathered
    from every rank, which is the single-process loss and gradient of the whole batch
    (`distributed.gather_with_grad` says why it must be so). Features leave bf16 autocast as fp32
    before the gather, so the exchange and the loss are in fp32 as in one process.
    """
    clip = model.module if isinstance(model, DistributedDataParallel) else model
    device = clip.device
    local = distributed.shard(rows)
    pixels = data.image_batch(local).to(device)
    if crops is not None:
        pixels = crop_flip(pixels, distributed.shard(crops))
    tokens = data.token_batch(local, clip.tokenizer, clip.context_length).to(device)
    with autocast(device, amp):
        image_features, text_features, scale = model(pixels, tokens)
    image_features = distributed.gather_with_grad(image_features.float(), len(rows))
    text_features = distributed.gather_with_grad(text_features.float(), len(rows))
    loss = clip_loss(image_features, text_features, scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    clip.clamp_logit_scale()
    return loss.item()


def train_clip(
    model: ClipModel,
    train_data: PairSource,
    test_data: CaptionDataset | None = None,
    config: TrainConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[History], None] | None = None,
    description: str = "train",
) -> History:
    """Train `model` contrastively on `train_data`, evaluating on the clean `test_data` after every epoch.

    With `checkpoint`, the model, optimizer and history are saved atomically after each epoch;
    `resume=True` continues from that file (same config required) and gives the same result as an
    uninterrupted run. Under torchrun the model trains with DDP on the same global batches (each
    rank encodes its slice); rank 0 evaluates, writes the checkpoint and shows progress, and after
    every epoch all ranks hold rank 0's model (BatchNorm running statistics included).
    """
    config = config or TrainConfig()
    progress = progress and distributed.is_main()
    n_batches = len(batches(len(train_data), config.batch_size, config.seed, 0))
    total = config.epochs * n_batches
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, total // 10)
    optimizer = adamw(model, config.weight_decay, lr=config.lr, betas=config.betas, eps=config.adam_eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total, warmup))
    history = History(config=config.record(), model=model.name)
    start_epoch = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        start_epoch, history = _restore(checkpoint, model, optimizer, schedule, config)
    use_amp = config.amp
    replica = distributed.replicate(model)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        losses = []
        bar = tqdm(batches(len(train_data), config.batch_size, config.seed, epoch), desc=f"{description} epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False, unit="batch")
        for step, rows in enumerate(bar):
            crops = crop_flip_params(len(rows), (config.seed, epoch, step)) if config.augment == "crop-flip" else None
            losses.append(contrastive_step(replica, optimizer, train_data, rows, use_amp, crops))
            schedule.step()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        distributed.sync_buffers(model)
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_seconds": time.perf_counter() - started}
        if test_data is not None:
            metrics = evaluate_retrieval(model, test_data, config.eval_batch_size).metrics if distributed.is_main() else None
            entry.update(distributed.broadcast_object(metrics))
        history.step_loss.extend(losses)
        history.epochs.append(entry)
        if progress:
            tqdm.write(_epoch_line(description, entry))
        if checkpoint is not None and distributed.is_main():
            _save(checkpoint, model, optimizer, schedule, history, epoch + 1)
        distributed.barrier()
        if on_epoch is not None:
            on_epoch(history)
    return history


def _epoch_line(description: str, entry: dict) -> str:
    metrics = "".join(f"  {k} {entry[k]:.1f}" for k in ("i2t_R@1", "i2t_R@10", "t2i_R@1", "t2i_R@10", "t2i_MedR") if k in entry)
    return f"{description} epoch {entry['epoch']}: loss {entry['loss']:.3f}{metrics}"


def _save(path, model: ClipModel, optimizer, schedule, history: History, epoch: int) -> None:
    opt_tensors, opt_info = optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in model.clip.state_dict().items()} | opt_tensors
    save_state(path, tensors, {"epoch": epoch, "history": history.to_dict(), "optimizer": opt_info,
                               "schedule": schedule.state_dict(), "model_name": model.name})


def _restore(path, model: ClipModel, optimizer, schedule, config: TrainConfig) -> tuple[int, History]:
    tensors, state = load_state(path)
    saved = History.from_dict(state["history"])
    if saved.config != config.record():
        raise ResumeMismatch(f"cannot resume from {path}: it was trained with {saved.config}, not {config.record()}")
    model.clip.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return int(state["epoch"]), saved


def train_run(model: ClipModel, train_data: PairSource, test_data: CaptionDataset | None, config: TrainConfig,
              out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True, description: str = "train") -> History:
    """`train_clip` with the standard run folder: history.json, metrics.json, model.safetensors.

    The per-epoch checkpoint (model + optimizer state, three times the model's size) lives only
    while the run is unfinished; once the final model is saved it is deleted, and `resume=True` on
    a finished folder rereads that run instead of training again.
    """
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.safetensors"
    if resume and not checkpoint.exists():
        finished = _finished_run(out_dir, model, config)
        if finished is not None:
            return finished
    history = train_clip(model, train_data, test_data, config, checkpoint=checkpoint,
                         resume=resume, progress=progress, description=description)
    if distributed.is_main():
        history.save(out_dir / "history.json")
        write_json(out_dir / "metrics.json", history.final)
        model.save(out_dir / "model.safetensors")
        checkpoint.unlink(missing_ok=True)
    distributed.barrier()
    return history


def _finished_run(out_dir: Path, model: ClipModel, config: TrainConfig) -> History | None:
    """The history of the run that finished in `out_dir` (its weights loaded into `model`), or None if there is none."""
    history_path, weights = out_dir / "history.json", out_dir / "model.safetensors"
    if not (history_path.exists() and weights.exists()):
        return None
    history = History.load(history_path)
    if history.config != config.record() or history.model != model.name:
        raise ResumeMismatch(f"cannot resume in {out_dir}: it holds a finished {history.model} run trained with {history.config}, "
                         f"not {model.name} with {config.record()}")
    model.clip.load_state_dict(load_file(str(weights)))
    return history
