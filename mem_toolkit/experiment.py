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
from typing import Mapping

import numpy as np

from .data.dataset import CaptionDataset
from .metrics import random_guess_metrics
from .models import create_model, resolve_device
from .protect import Protection, Protector
from .train import History, PairSource, TrainConfig, train_run

TABLE_COLUMNS = [("i2t", "R@1"), ("i2t", "R@5"), ("i2t", "R@10"), ("i2t", "MedR"), ("t2i", "R@1"), ("t2i", "R@5"), ("t2i", "R@10"), ("t2i", "MedR")]


@dataclass
class ArmResult:
    """One row of a results table: the arm's training history and its wall time."""

    name: str
    history: History
    seconds: float
    note: str = ""
    folder: Path | None = None  # the run folder (model.safetensors, history.json), None for a derived row

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
) -> ArmResult:
    """Train a fresh hacker `model_name` on `train_data` (resuming or reusing a finished run in `out_dir/name`)."""
    folder = Path(out_dir) / name
    timing = folder / "timing.json"
    if (folder / "history.json").exists() and timing.exists():
        history = History.load(folder / "history.json")
        if len(history.epochs) == config.epochs and history.config == json.loads(json.dumps(config.__dict__)):
            return ArmResult(name, history, json.loads(timing.read_text())["seconds"], folder=folder)
    started = time.perf_counter()
    model = create_model(model_name, device=resolve_device(device), seed=config.seed)
    history = train_run(model, train_data, test, config, folder, resume=True, progress=progress, description=name)
    seconds = time.perf_counter() - started
    timing.write_text(json.dumps({"seconds": seconds}))
    return ArmResult(name, history, seconds, folder=folder)


def protect_cached(protector: Protector, dataset: CaptionDataset, folder: str | os.PathLike, progress: bool = True) -> Protection:
    """Load the protection saved in `folder`, or make it (resuming an interrupted run) and save it there.

    A saved protection made with other settings is refused, naming the settings that differ, rather
    than silently reused.
    """
    folder = Path(folder)
    if not (folder / "protection.json").exists():
        protection = protector.fit(dataset, work_dir=folder / "work", resume=True, progress=progress)
        protection.save(folder)
        return protection
    protection = Protection.load(folder, dataset)
    wanted = json.loads(json.dumps(protector.get_params()))
    differ = sorted(k for k, v in wanted.items() if protection.config.get(k) != v)
    if differ:
        raise ValueError(f"{folder} holds a protection made with other settings ({', '.join(f'{k}: {protection.config.get(k)!r} there, {wanted[k]!r} now' for k in differ)}); "
                         "delete the folder or choose another")
    return protection


def random_guess(test: CaptionDataset) -> dict[str, float]:
    """Exact random-guess metrics for the shape of a test set (its captions per image)."""
    return random_guess_metrics(np.bincount(test.group_ids, minlength=test.n_images))


def results_table(results: Mapping[str, Mapping | History | ArmResult], test: CaptionDataset, title: str = "") -> str:
    """Markdown table in the paper's layout (i2t and t2i R@1/5/10 and MedR) with a random-guess row.

    Each result is a metrics dict, or a History / ArmResult whose final epoch is used.
    """
    head = "| method | " + " | ".join(f"{d} {m}" for d, m in TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = ([f"**{title}**", ""] if title else []) + [head, rule]
    for name, result in list(results.items()) + [("random guess", random_guess(test))]:
        metrics = result.final if isinstance(result, (History, ArmResult)) else result
        cells = [f"{metrics[f'{d}_{m}']:.0f}" if m == "MedR" else f"{metrics[f'{d}_{m}']:.1f}" for d, m in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
