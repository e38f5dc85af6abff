"""Protect-then-hack experiments: one fresh hacker per arm, same budget, evaluated on the clean test set.

Each arm trains in its own folder with per-epoch checkpoints, so an interrupted experiment resumes
where it stopped and finished arms are never recomputed.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .data.dataset import CaptionDataset
from .metrics import random_guess_metrics
from .models import create_model, resolve_device
from .train import History, PairSource, TrainConfig, train_run

TABLE_COLUMNS = [("i2t", "R@1"), ("i2t", "R@5"), ("i2t", "R@10"), ("i2t", "MedR"), ("t2i", "R@1"), ("t2i", "R@5"), ("t2i", "R@10"), ("t2i", "MedR")]


@dataclass
class ArmResult:
    """One row of a results table: the arm's training history and its wall time."""

    name: str
    history: History
    seconds: float
    note: str = ""

    @property
    def final(self) -> dict:
        return self.history.final


def run_arm(
    name: str,
    train_data: PairSource,
    test: CaptionDataset,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    model_name: str = "mem-tiny-rn",
    device: str = "auto",
    progress: bool = True,
    pretrained: str | os.PathLike | None = None,
) -> ArmResult:
    """Train a fresh hacker `model_name` (from scratch, or from `pretrained` weights) on `train_data`.

    A finished run in `out_dir/name` is reused and an interrupted one resumed, so give runs from
    other starting weights their own `out_dir`.
    """
    folder = Path(out_dir) / name
    timing = folder / "timing.json"
    if (folder / "history.json").exists() and timing.exists():
        history = History.load(folder / "history.json")
        if len(history.epochs) == config.epochs and history.config == json.loads(json.dumps(config.__dict__)):
            return ArmResult(name, history, json.loads(timing.read_text())["seconds"])
    started = time.perf_counter()
    model = create_model(model_name, pretrained, device=resolve_device(device), seed=config.seed)
    history = train_run(model, train_data, test, config, folder, resume=True, progress=progress, description=name)
    seconds = time.perf_counter() - started
    timing.write_text(json.dumps({"seconds": seconds}))
    return ArmResult(name, history, seconds)


def results_table(results: dict[str, dict], test: CaptionDataset, title: str = "") -> str:
    """Markdown table in the paper's layout (i2t and t2i R@1/5/10 and MedR) with a random-guess row."""
    import numpy as np

    random = random_guess_metrics(np.bincount(test.group_ids, minlength=test.n_images))
    head = "| method | " + " | ".join(f"{d} {m}" for d, m in TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = ([f"**{title}**", ""] if title else []) + [head, rule]
    for name, metrics in list(results.items()) + [("random guess", random)]:
        cells = [f"{metrics[f'{d}_{m}']:.0f}" if m == "MedR" else f"{metrics[f'{d}_{m}']:.1f}" for d, m in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
