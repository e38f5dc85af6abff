"""A pretrained hacker, honestly made here: a bundled CLIP trained from scratch on data the protection never saw.

The paper's strongest hacker fine-tunes a pretrained CLIP. No pretrained weights can be downloaded
on these machines, so `pretrain_clip` trains one on other data (disjoint synthetic scenes, other
people's photos) and returns its weights file, which every `--pretrained` / `pretrained=` takes.
Where real open_clip weights are at hand, pass them instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .data.dataset import CaptionDataset
from .experiment import run_arm
from .train import PairSource, TrainConfig

WEIGHTS = "model.safetensors"


def pretrain_clip(architecture: str, data: PairSource, held_out: CaptionDataset | None, config: TrainConfig, out_dir: str | os.PathLike,
                  device: str | torch.device = "auto", progress: bool = True) -> Path:
    """Train `architecture` from scratch on `data` into `out_dir/weights/` (cached, resumable) and return its weights file.

    `held_out` (other photos of the same kind, or None) is scored after each epoch, to show what the
    pretraining learned; it never touches the weights.
    """
    run = run_arm("weights", data, held_out, config, out_dir, architecture, device, progress)
    return run.folder / WEIGHTS
