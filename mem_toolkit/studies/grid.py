"""The shape every study shares: training-data arms x hackers x seeds, each cell a fresh hacker scored on the clean test set.

A study (the demo, the face study, robustness) names its arms (what a hacker trains on: clean,
protected, a control, a defended copy) and its hackers (architecture, budget, starting weights);
`run_grid` trains every hacker on every arm once per seed, caching each run in its own folder so
an interrupted study resumes and a finished one is reread, and `GridResult` gives the runs, the
mean and 95 % interval over seeds, and the paper's table.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..data.dataset import CaptionDataset
from ..experiment import ArmResult, random_guess, results_table, run_arm
from ..intervals import Interval, intervals
from ..train import PairSource, TrainConfig


P = TypeVar("P")


def resolve_preset(preset: str | P, presets: Mapping[str, P], study: str) -> P:
    """A study's preset, given by name (one of `presets`) or as the preset itself."""
    if not isinstance(preset, str):
        return preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for the {study}; choose from {sorted(presets)}")
    return presets[preset]


@dataclass(frozen=True)
class Hacker:
    """One hacker of a study: an architecture, its training budget and, to fine-tune instead of training from scratch, its weights."""

    architecture: str
    config: TrainConfig
    pretrained: str | None = None

    @property
    def label(self) -> str:
        """The architecture, marked when it is fine-tuned."""
        return self.architecture if self.pretrained is None else f"{self.architecture} (fine-tuned)"

    @property
    def key(self) -> str:
        """Its run folder's name: the architecture, plus a digest of the starting weights when fine-tuning."""
        if self.pretrained is None:
            return self.architecture
        return f"{self.architecture}-from-{hashlib.sha1(str(self.pretrained).encode()).hexdigest()[:8]}"

    def seeded(self, seed: int) -> "Hacker":
        """The same hacker with its training seed moved by `seed` (seed 0 is the hacker as given)."""
        return replace(self, config=replace(self.config, seed=self.config.seed + seed))


@dataclass(frozen=True)
class Arm:
    """One training set of a study, and how it changes the hacker (a training defence: longer, augmented, fine-tuned).

    `key` names what the data holds where its rows alone do not (files read from disk whose pixels
    a new protection changes); by default `experiment.data_key` tells.
    """

    data: PairSource
    adapt: Callable[[Hacker], Hacker] | None = None
    key: str | None = None

    def hacker(self, hacker: Hacker) -> Hacker:
        return hacker if self.adapt is None else self.adapt(hacker)


@dataclass
class GridResult:
    """Every run of a study: hacker label -> arm -> one ArmResult per seed, in the order of `seeds`."""

    runs: dict[str, dict[str, list[ArmResult]]]
    seeds: list[int]
    random: dict[str, float]
    n_test_images: int
    n_test_captions: int
    hackers: dict[str, Hacker] = field(default_factory=dict)

    def finals(self, hacker: str, arm: str) -> list[dict]:
        """The final clean-test metrics of `hacker` trained on `arm`, one per seed."""
        return [run.final for run in self.runs[hacker][arm]]

    def summary(self, hacker: str, arm: str, metrics: Sequence[str] | None = None) -> dict[str, Interval]:
        """Mean and 95 % interval over seeds of every metric (or of `metrics`)."""
        return intervals(self.finals(hacker, arm), metrics)

    def table(self, hacker: str, rows: Mapping[str, str] | None = None, title: str = "") -> str:
        """The paper's table for one hacker, mean ± 95 % interval over seeds (just the value for one seed), random guess last.

        `rows` maps arm -> row label (default every arm under its own name)."""
        rows = rows or {arm: arm for arm in self.runs[hacker]}
        summaries = {label: self.summary(hacker, arm) for arm, label in rows.items() if arm in self.runs[hacker]}
        return results_table(summaries, self.random, title)

    def to_dict(self) -> dict:
        """JSON: per hacker and arm, every seed's final metrics, wall time and note, and the intervals."""
        return {
            "seeds": self.seeds, "random_guess": self.random, "test": {"images": self.n_test_images, "captions": self.n_test_captions},
            "hackers": {label: {"architecture": h.architecture, "pretrained": h.pretrained, "config": h.config.record()}
                        for label, h in self.hackers.items()},
            "runs": {hacker: {arm: {"finals": [r.final for r in runs], "seconds": [r.seconds for r in runs], "note": runs[0].note,
                                    "summary": {k: v.to_dict() for k, v in intervals([r.final for r in runs]).items()}}
                              for arm, runs in arms.items()} for hacker, arms in self.runs.items()},
        }


def run_grid(
    arms: Mapping[str, PairSource | Arm],
    test: CaptionDataset,
    hackers: Sequence[Hacker],
    out_dir: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    device: str | torch.device = "auto",
    progress: bool = True,
    folder: Callable[[Hacker, int], Path] | None = None,
) -> GridResult:
    """Train every hacker on every arm once per seed (cached runs are reread) and collect their clean-test metrics.

    Runs live in `out_dir/hackers/<hacker key>/seed<s>/<arm>` (or `folder(hacker, seed)/<arm>`).
    Under torchrun every process calls this and every hacker trains distributed.
    """
    progress = progress and distributed.is_main()
    folder = folder or (lambda hacker, seed: Path(out_dir) / "hackers" / hacker.key / f"seed{seed}")
    arms = {name: arm if isinstance(arm, Arm) else Arm(arm) for name, arm in arms.items()}
    runs: dict[str, dict[str, list[ArmResult]]] = {hacker.label: {name: [] for name in arms} for hacker in hackers}
    jobs = [(seed, hacker, name) for seed in seeds for hacker in hackers for name in arms]
    for seed, hacker, name in tqdm(jobs, desc="hackers", disable=not progress, unit="hacker"):
        arm = arms[name]
        trained = arm.hacker(hacker).seeded(seed)
        run = run_arm(name, arm.data, test, trained.config, folder(hacker, seed), trained.architecture, device, progress, key=arm.key,
                      pretrained=trained.pretrained)
        runs[hacker.label][name].append(run)
    return GridResult(runs, list(seeds), random_guess(test), test.n_images, len(test), {h.label: h for h in hackers})
