"""Transferability (paper Table 2): protect with a surrogate of one architecture, hack with models of others.

A protection is made once per surrogate architecture; a fresh hacker of every hacker architecture
is trained on each protected set, and on the clean set as the reference, all with the same budget,
and evaluated on the clean test set. The table has one row per surrogate, one column per hacker.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..atomic import write_json
from ..data.dataset import CaptionDataset
from ..experiment import random_guess, results_table
from ..plots import plot_heatmap
from ..protect import Protector
from ..train import TrainConfig
from ..workspace import Workspace

CELL_METRICS = ("i2t_R@1", "i2t_R@10", "i2t_MedR", "t2i_R@1", "t2i_R@10", "t2i_MedR")
CLEAN_ROW = "clean data (no protection)"
RANDOM_ROW = "random guess"


@dataclass
class TransferResult:
    """Clean-test retrieval of every (surrogate architecture, hacker architecture) pair, the clean reference and random guessing."""

    method: str
    surrogates: list[str]
    hackers: list[str]
    protected: dict[str, dict[str, dict[str, float]]]  # surrogate -> hacker -> final clean-test metrics
    clean: dict[str, dict[str, float]]  # hacker -> metrics of the hacker trained on clean data
    random: dict[str, float]
    n_images: int
    n_captions: int
    detail: str = ""  # every run in the paper's layout (experiment.results_table)
    settings: dict = field(default_factory=dict)  # protector and hacker training settings, as JSON
    seconds: dict[str, float] = field(default_factory=dict)

    def rows(self) -> dict[str, dict[str, dict[str, float]]]:
        """Row label -> hacker -> metrics: one row per surrogate, then the clean reference and random guessing."""
        table = {f"surrogate {s}": self.protected[s] for s in self.surrogates}
        table[CLEAN_ROW] = self.clean
        table[RANDOM_ROW] = {hacker: self.random for hacker in self.hackers}
        return table

    def grid(self, metrics: Sequence[str] = CELL_METRICS) -> str:
        """Markdown table, rows = surrogate architecture, columns = hacker architecture; each cell lists `metrics`."""
        legend = " · ".join(f"{direction} " + " / ".join(m.partition("_")[2] for m in group) for direction, group in _by_direction(metrics))
        lines = [f"**{self.method}: hacker retrieval on the clean test set ({self.n_images} images, {self.n_captions} captions)**", "",
                 f"Cells: {legend} (R@K in %, lower is stronger protection; MedR higher is stronger).", "",
                 "| surrogate \\ hacker | " + " | ".join(self.hackers) + " |", "|---|" + "---:|" * len(self.hackers)]
        for label, cells in self.rows().items():
            lines.append(f"| {label} | " + " | ".join(_cell(cells[h], metrics) for h in self.hackers) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The grid, then every run in the paper's layout."""
        return self.grid() + ("\n\n" + self.detail if self.detail else "") + "\n"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TransferResult":
        return cls(**data)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `transfer.json` and `transfer.md` into `folder` (atomically); returns the JSON path."""
        folder = Path(folder)
        write_json(folder / "transfer.json", self.to_dict())
        tmp = folder / "transfer.md.tmp"
        tmp.write_text(self.markdown())
        os.replace(tmp, folder / "transfer.md")
        return folder / "transfer.json"

    def plot(self, metric: str = "t2i_R@10", save: str | os.PathLike | None = None) -> Figure:
        """Heat map of one metric: surrogate rows and the clean reference against hacker columns, values written in."""
        rows = {label: cells for label, cells in self.rows().items() if label != RANDOM_ROW}
        values = np.array([[cells[h][metric] for h in self.hackers] for cells in rows.values()])
        return plot_heatmap(values, list(rows), self.hackers, metric, self.random[metric], xlabel="hacker architecture", save=save)


def run_transfer(
    protector: Protector,
    train: CaptionDataset,
    test: CaptionDataset,
    surrogates: Sequence[str] = ("mem-tiny-rn", "mem-tiny-vit"),
    hackers: Sequence[str] = ("mem-tiny-rn", "mem-tiny-vit"),
    config: TrainConfig | None = None,
    workspace: Workspace | str | os.PathLike = "runs/transfer",
) -> TransferResult:
    """Protect `train` with `protector`'s settings once per surrogate architecture, train every hacker architecture on
    each protected set and on the clean set (same `config`), and tabulate clean-test retrieval.

    Architectures are open_clip model names (the bundled `mem-tiny-rn` / `mem-tiny-vit`, or e.g.
    `RN50`, `ViT-B-32`) and must take the dataset's image size. Every protection and hacker run is
    cached in `workspace`, so a rerun or an interrupted run reuses finished work.
    """
    config = config or TrainConfig()
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    surrogates, hackers = list(surrogates), list(hackers)
    check_architectures(surrogates + hackers, train.image_size)
    protected: dict[str, dict[str, dict]] = {s: {} for s in surrogates}
    clean: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    params = protector.get_params()
    jobs = [(None, h) for h in hackers] + [(s, h) for s in surrogates for h in hackers]
    views = {}
    for surrogate, hacker in tqdm(jobs, desc="transfer runs", disable=not workspace.progress, unit="hacker"):
        if surrogate is None:
            arm = workspace.hack("clean", train, test, config, hacker)
            clean[hacker] = arm.final
        else:
            if surrogate not in views:
                copy = type(protector)(device=protector.device, **(params | {"surrogate_model": surrogate}))
                views[surrogate] = workspace.protect(copy, train).apply(train)
            arm = workspace.hack(f"{protector.method}-by-{surrogate}", views[surrogate], test, config, hacker)
            protected[surrogate][hacker] = arm.final
        seconds[f"{surrogate or 'clean'} -> {hacker}"] = arm.seconds
    detail_rows = {f"hacker {h} on clean data": clean[h] for h in hackers}
    detail_rows |= {f"hacker {h}, {protector.method} by surrogate {s}": protected[s][h] for s in surrogates for h in hackers}
    detail = results_table(detail_rows, test, f"Every run: hackers trained from scratch for {config.epochs} epochs")
    return TransferResult(protector.method, surrogates, hackers, protected, clean, random_guess(test), test.n_images, len(test),
                          detail, json.loads(json.dumps({"protector": params, "train": config.record()})), seconds)


def check_architectures(names: Sequence[str], image_size: int) -> None:
    """Refuse, before any work, every architecture that is unknown or whose image size is not the dataset's."""
    problems = []
    for name in dict.fromkeys(names):
        config = open_clip.get_model_config(name)
        if config is None:
            problems.append(f"{name}: not an open_clip model name")
            continue
        size = config["vision_cfg"].get("image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        if size != image_size:
            problems.append(f"{name}: takes {size} px images, the dataset has {image_size} px")
    if problems:
        raise ValueError("cannot run the transfer table:\n  " + "\n  ".join(problems))


def _by_direction(metrics: Sequence[str]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for metric in metrics:
        groups.setdefault(metric.partition("_")[0], []).append(metric)
    return list(groups.items())


def _cell(values: dict[str, float], metrics: Sequence[str]) -> str:
    return " · ".join(" / ".join(f"{values[m]:.0f}" if m.endswith("MedR") else f"{values[m]:.1f}" for m in group)
                      for _, group in _by_direction(metrics))
