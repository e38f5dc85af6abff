"""Robustness: does a protection still protect after what a scraper or hacker does to the published data?

Each protection is exported as a data owner would publish it; every defence (`mem_toolkit.defences`)
is applied to those *files* (or to the hacker's training: augmentation, a longer schedule, a
pretrained start) exactly as a hacker would, and a fresh hacker trains on the result. Each cell is
that hacker's clean-test retrieval, beside two references per column: the clean data under the
same defence (the defence's own cost) and random guessing. Every stage is cached in the output
folder, so an interrupted study resumes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import distributed
from ..atomic import write_json
from ..data.dataset import CaptionDataset
from ..data.loaders import load_caption_csv
from ..data.shapes import make_shapes_split
from ..data.writer import write_dataset
from ..defences import DEFENCES, apply_defence, defended_config, get_defence
from ..errors import UsageError
from ..experiment import cache_key, protect_cached, protection_digest
from ..intervals import Interval, format_cell
from ..models import create_model
from ..pretrain import pretrain_clip
from ..protect import EM, MEM, UAP, Protection, random_id_protection
from ..protect.export import export_protection
from ..train import TrainConfig
from .grid import Arm, GridResult, Hacker, resolve_preset, run_grid

NO_DEFENCE = "none"
PRETRAINED = "pretrained"  # the hacker fine-tunes a CLIP pretrained on disjoint data instead of training from scratch
CLEAN = "clean"
ROBUST_EOT = ("jpeg", "crop-flip")  # mem-3-robust: the transformations its PGD steps are taken through
TABLE_METRICS = ("R@1", "R@10", "MedR")
PRETRAINED_SURROGATE = "-pretrained-surrogate"  # a protection's name ending in this starts its surrogate from the owner's pretraining
PROTECTIONS = ("uap", "em", "mem-3", "mem-5", "mem-3-robust", "mem-3" + PRETRAINED_SURROGATE, "mem-3-robust" + PRETRAINED_SURROGATE,
               "mem-3-alternate" + PRETRAINED_SURROGATE, "random-id-trigger")


@dataclass(frozen=True)
class RobustnessPreset:
    """Data, hacker budget, protections and defences of one robustness setting."""

    protections: tuple[str, ...]
    defences: tuple[str, ...]
    n_train: int = 800
    n_test: int = 200
    difficulty: str = "default"
    image_size: int = 64
    hacker_model: str = "mem-tiny-rn"
    hacker_epochs: int = 4
    hacker_batch_size: int = 64
    hacker_lr: float = 5e-4
    pretrain_images: int = 800  # disjoint synthetic scenes the pretrained hacker learned from (another seed)
    pretrain_epochs: int = 4
    seeds: tuple[int, ...] = (0,)
    uap: dict = field(default_factory=dict)
    em: dict = field(default_factory=dict)
    mem: dict = field(default_factory=dict)
    seed: int = 0

    def hacker(self) -> Hacker:
        return Hacker(self.hacker_model, TrainConfig(epochs=self.hacker_epochs, batch_size=self.hacker_batch_size, lr=self.hacker_lr,
                                                     seed=self.seed + 1))


# The demo's quick budgets (README, "Protection strength"): the same protections the demo table reports.
_MEM = dict(granularity="image", trigger_vocab_size=24, surrogate_reset=1, surrogate_lr=5e-4, surrogate_steps=20, pgd_steps=5,
            trigger_rounds=2, candidates=8, rounds=3)
_EM = dict(rounds=2, surrogate_steps=20, pgd_steps=5, granularity="row")
_UAP = dict(surrogate_epochs=1, pgd_steps=5, step_size=2)
# What a scraper or hacker most likely does: re-encode, augment, strip the trigger, mix in clean data, fine-tune.
LIKELY_DEFENCES = ("jpeg75", "crop-flip", "strip3", "protected50", PRETRAINED)
PRESETS: dict[str, RobustnessPreset] = {
    # seconds: checks that protection, publishing, defences, pretraining and hackers run; its figures mean nothing
    "smoke": RobustnessPreset(protections=("mem-3",), defences=("jpeg75", "crop-flip", "protected50", PRETRAINED), n_train=40, n_test=12, difficulty="easy",
                              hacker_epochs=1, hacker_batch_size=20, pretrain_images=20, pretrain_epochs=1,
                              mem=dict(rounds=1, surrogate_steps=1, pgd_steps=1, trigger_rounds=1, candidates=2, batch_size=20,
                                       trigger_vocab_size=24)),
    # 15 minutes on a quiet 2-core machine (README): the likely defences against the protections that matter
    "quick": RobustnessPreset(protections=("mem-3", "em", "random-id-trigger"), defences=LIKELY_DEFENCES, uap=_UAP, em=_EM, mem=_MEM),
    # every defence and protection, two seeds
    "full": RobustnessPreset(protections=PROTECTIONS, defences=tuple(DEFENCES) + (PRETRAINED,),
                             hacker_epochs=6, seeds=(0, 1), uap=_UAP, em=_EM, mem=_MEM),
}


def choose(preset: RobustnessPreset, protections: Sequence[str] | None = None, defences: Sequence[str] | None = None,
           seeds: Sequence[int] | None = None) -> RobustnessPreset:
    """The preset with some of its rows, columns or seeds replaced (None keeps the preset's); unknown names end in one UsageError line.

    Cells are cached by what they hold, so adding a row to a finished study trains only the new row's hackers.
    """
    unknown = [name for name in protections or () if name not in PROTECTIONS]
    unknown += [name for name in defences or () if name not in DEFENCES and name != PRETRAINED]
    if unknown:
        raise UsageError(f"unknown protection or defence {', '.join(map(repr, unknown))}; protections: {', '.join(PROTECTIONS)}; "
                         f"defences: {', '.join((*DEFENCES, PRETRAINED))}")
    changes = {"protections": protections, "defences": defences, "seeds": seeds}
    return replace(preset, **{name: tuple(dict.fromkeys(value)) for name, value in changes.items() if value})


@dataclass
class RobustnessResult:
    """Every cell: protection (or clean) x defence -> the hacker's clean-test metrics over seeds."""

    grid: GridResult
    sources: list[str]  # "clean", then the protections
    columns: list[str]  # "none", then the defences
    settings: dict
    stage_seconds: dict[str, float]
    same_as: dict[str, str] = field(default_factory=dict)  # cells not trained because their data is another cell's

    def cell(self, source: str, column: str) -> dict[str, Interval]:
        name = arm_name(source, column)
        return self.grid.summary(self.grid_hacker, self.same_as.get(name, name))

    @property
    def grid_hacker(self) -> str:
        return next(iter(self.grid.runs))

    def table(self, direction: str = "i2t") -> str:
        """Markdown: a row per protection and the clean reference, a column per defence, cells R@1 / R@10 / MedR of `direction`."""
        head = f"| {direction}: R@1 / R@10 / MedR | " + " | ".join(self.columns) + " |"
        lines = [head, "|---|" + "---:|" * len(self.columns)]
        for source in self.sources:
            cells = [" / ".join(format_cell(self.cell(source, column)[f"{direction}_{m}"], m) for m in TABLE_METRICS) for column in self.columns]
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
        random = " / ".join(format_cell(self.grid.random[f"{direction}_{m}"], m) for m in TABLE_METRICS)
        lines.append("| random guess | " + " | ".join(random for _ in self.columns) + " |")
        return "\n".join(lines)

    def checks(self, protection: str = "mem-3", defences: tuple[str, ...] = ("jpeg75", "crop-flip", "protected50", PRETRAINED)) -> dict[str, bool]:
        """The robustness goal: under each defence, `protection`'s R@1 at most half the clean data's under the same defence, both directions."""
        checks = {}
        for column in (c for c in defences if c in self.columns and protection in self.sources):
            for direction in ("i2t", "t2i"):
                protected = self.cell(protection, column)[f"{direction}_R@1"].mean
                clean = self.cell(CLEAN, column)[f"{direction}_R@1"].mean
                checks[f"{column}, {direction}: {protection} R@1 <= 1/2 clean R@1 under the same defence"] = protected <= clean / 2
        return checks

    def to_dict(self) -> dict:
        cells = {source: {column: {k: v.to_dict() for k, v in self.cell(source, column).items()} for column in self.columns}
                 for source in self.sources}
        return {"sources": self.sources, "columns": self.columns, "cells": cells, "random_guess": self.grid.random,
                "checks": self.checks(), "same_as": self.same_as, "settings": self.settings, "stage_seconds": self.stage_seconds, "runs": self.grid.to_dict(),
                "table_i2t": self.table("i2t"), "table_t2i": self.table("t2i")}

    def plot(self, metric: str = "t2i_R@1", save: str | os.PathLike | None = None):
        """Heat map of one metric's mean: protections and the clean reference against defences."""
        from ..plots import plot_heatmap

        values = np.array([[self.cell(source, column)[metric].mean for column in self.columns] for source in self.sources])
        return plot_heatmap(values, self.sources, self.columns, metric, self.grid.random[metric], xlabel="defence", save=save)


def arm_name(source: str, column: str) -> str:
    """The grid arm of one cell (also its run folder's name)."""
    return f"{source}__{column}"


def run_robustness(out_dir: str | os.PathLike, preset: str | RobustnessPreset = "quick", progress: bool = True,
                   device: str | torch.device = "auto", data: tuple[CaptionDataset, CaptionDataset] | None = None) -> RobustnessResult:
    """Protect, publish, defend and hack every cell of the robustness table into `out_dir` (results.json, results.md, heat map).

    `data`: your (train, test) sets instead of the preset's embedded shapes. The pretrained hacker and
    the vocabulary defence still learn from embedded scenes (no other data can be downloaded here).
    """
    preset = resolve_preset(preset, PRESETS, "robustness study")
    progress = progress and distributed.is_main()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    clock = time.perf_counter()
    train, test = data or make_shapes_split(preset.n_train, preset.n_test, preset.image_size, preset.seed, preset.difficulty)
    preset = replace(preset, image_size=train.image_size)
    stages["data"] = time.perf_counter() - clock
    # what each source publishes: its CSV, and a stamp of what its files hold (the rows alone do not say whether pixels changed)
    published = {CLEAN: (distributed.main_only(lambda: str(_published_clean(train, out / "published" / CLEAN, progress))), train.fingerprint())}
    for name in preset.protections:
        clock = time.perf_counter()
        protection = _protection(name, preset, train, out, device, progress)
        digest = protection_digest(protection)
        published[name] = (distributed.main_only(lambda: str(_published(protection, digest, train, out / "published" / name, progress))), digest)
        stages[f"protect {name}"] = time.perf_counter() - clock
    hacker = preset.hacker()
    pretrained = None
    if PRETRAINED in preset.defences:
        clock = time.perf_counter()
        pretrained = pretrain_on_disjoint_shapes(preset, out / "pretrain", device, progress)
        stages["pretrain"] = time.perf_counter() - clock
    clock = time.perf_counter()
    vocabulary = distributed.main_only(lambda: str(_pretraining_captions(preset, out / "vocabulary", progress)))
    arms, same_as = {}, {}
    for source, (csv, stamp) in published.items():
        for column in (NO_DEFENCE,) + preset.defences:
            if source == CLEAN and column in DEFENCES and DEFENCES[column].kind == "data":
                same_as[arm_name(source, column)] = arm_name(source, NO_DEFENCE)  # clean data mixed with clean data is the clean data
                continue
            key = cache_key(stamp, published[CLEAN][1], column, preset.seed)
            defended = distributed.main_only(lambda: _defended(column, Path(csv), Path(published[CLEAN][0]), key,
                                                               out / "defended" / source / column, vocabulary, preset.seed, progress))
            arms[arm_name(source, column)] = Arm(load_caption_csv(defended, preset.image_size), _adaptation(column, pretrained), key)
    stages["defences"] = time.perf_counter() - clock
    grid = run_grid(arms, test, [hacker], out, preset.seeds, device, progress)
    stages["hackers"] = sum(run.seconds for runs in grid.runs[hacker.label].values() for run in runs)
    result = RobustnessResult(grid, list(published), [NO_DEFENCE, *preset.defences], json.loads(json.dumps(asdict(preset))), stages, same_as)
    distributed.main_only(lambda: _write_results(out, result))
    return result


# Seed offsets of the disjoint synthetic scenes each pretraining learns from: the hacker's, and the data owner's surrogate's.
HACKER_PRETRAINING, SURROGATE_PRETRAINING = 7919, 104729


def pretrain_on_disjoint_shapes(preset: RobustnessPreset, folder: Path, device, progress: bool, offset: int = HACKER_PRETRAINING,
                                architecture: str | None = None) -> str:
    """Weights of `architecture` (default the preset's hacker's) trained from scratch on synthetic scenes drawn with another seed.

    No pretrained CLIP can be downloaded here: this stands in for one, honestly made. Its scenes
    share the embedded data's vocabulary (shapes, colours, backgrounds) but none of its images;
    `offset` picks the draw, so the hacker's and the data owner's pretrainings share no scene either.
    """
    pretraining, held_out = _pretraining_split(preset, offset)
    config = replace(preset.hacker().config, epochs=preset.pretrain_epochs)
    return str(pretrain_clip(architecture or preset.hacker_model, pretraining, held_out, config, folder, device, progress))


def _pretraining_split(preset: RobustnessPreset, offset: int = HACKER_PRETRAINING) -> tuple[CaptionDataset, CaptionDataset]:
    return make_shapes_split(preset.pretrain_images, 100, preset.image_size, preset.seed + offset, preset.difficulty)


def _pretraining_captions(preset: RobustnessPreset, folder: Path, progress: bool) -> Path:
    """The captions of the disjoint pretraining scenes, as a CSV: the 'other data' the vocabulary defence keeps words of."""
    csv = folder / "captions.csv"
    if not csv.exists():
        write_dataset(_pretraining_split(preset)[0], folder, "captions.csv", progress)
    return csv


def _protection(name: str, preset: RobustnessPreset, train: CaptionDataset, out: Path, device, progress: bool) -> Protection:
    """One protection of the training set (cached in `out/protections/<name>`); the random-ID trigger costs nothing."""
    if name == "random-id-trigger":
        return random_id_protection(train, 3, seed=preset.seed, vocab_size=preset.mem.get("trigger_vocab_size", 0))
    if name not in PROTECTIONS:
        raise UsageError(f"unknown protection {name!r}; choose from {', '.join(PROTECTIONS)}")
    method = name.removesuffix(PRETRAINED_SURROGATE)
    # MEM rows: trigger length and the settings they add to the preset's
    mem_rows = {"mem-3": (3, {}), "mem-5": (5, {}),
                "mem-3-robust": (3, {"eot": ROBUST_EOT}),  # the standard remedy: noise optimised through the hacker's JPEG and crops (EOT)
                "mem-3-alternate": (3, {"surrogate_alternate": True})}  # restarts take turns between pretrained weights and a fresh init
    if method in mem_rows:
        trigger_len, extra = mem_rows[method]
        protector = MEM(trigger_len, device=device, seed=preset.seed, **(preset.mem | extra))
    else:
        protector = {"uap": UAP, "em": EM}[method](device=device, seed=preset.seed, **getattr(preset, method))
    surrogate = None
    if name != method:  # the data owner's own pretrained CLIP, as a public one would be: not the hacker's
        weights = pretrain_on_disjoint_shapes(preset, out / "surrogate_pretrain", device, progress, SURROGATE_PRETRAINING,
                                              protector.config.surrogate_model)
        surrogate = create_model(protector.config.surrogate_model, weights)
    return protect_cached(protector, train, out / "protections" / name, progress, surrogate=surrogate)


def _published(protection: Protection, digest: str, train: CaptionDataset, folder: Path, progress: bool) -> Path:
    """The protection exported as a data owner publishes it (re-exported only when the protection, `digest`, changed)."""
    return _once(folder, digest, lambda: export_protection(protection, train, folder, progress))


def _published_clean(train: CaptionDataset, folder: Path, progress: bool) -> Path:
    """The clean training set as files, the reference every defence is also applied to."""
    return _once(folder, train.fingerprint(), lambda: write_dataset(train, folder, "captions.csv", progress))


def _defended(column: str, csv: Path, clean_csv: Path, stamp: str, folder: Path, vocabulary: str, seed: int, progress: bool) -> str:
    """The CSV a hacker trains on in one column: the published files, or their defended copy (rewritten when `stamp` changes)."""
    defence = None if column in (NO_DEFENCE, PRETRAINED) else get_defence(column)
    if defence is None or defence.kind == "training":
        return str(csv)
    return str(_once(folder, stamp, lambda: apply_defence(column, csv, folder, clean_csv=clean_csv, vocabulary=vocabulary, seed=seed,
                                                          progress=progress)))


def _once(folder: Path, stamp: str, write: Callable[[], Path | str]) -> Path:
    """`write()` into `folder` unless a finished write with the same stamp is there; the stamp is written last."""
    record = folder / "written.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("stamp") == stamp:
            return Path(saved["path"])
    path = Path(write())
    write_json(record, {"stamp": stamp, "path": str(path)})
    return path


def _adaptation(column: str, pretrained: str | None) -> Callable[[Hacker], Hacker] | None:
    """How a column changes the hacker: a training defence's settings, or pretrained starting weights."""
    if column == PRETRAINED:
        return lambda hacker: replace(hacker, pretrained=pretrained)
    if column in DEFENCES and DEFENCES[column].kind == "training":
        return lambda hacker: replace(hacker, config=defended_config(column, hacker.config))
    return None


def _write_results(out: Path, result: RobustnessResult) -> None:
    payload = result.to_dict()
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    from matplotlib import pyplot as plt

    for metric in ("i2t_R@1", "t2i_R@1"):
        for suffix in ("png", "pdf"):
            plt.close(result.plot(metric, save=figures / f"robustness_{metric.replace('@', '')}.{suffix}"))
    payload["figures"] = sorted(str(p) for p in figures.iterdir())
    write_json(out / "results.json", payload)
    check_lines = "\n".join(f"- {text}: {'yes' if ok else 'NO'}" for text, ok in payload["checks"].items())
    timing = "\n".join(f"| {stage} | {seconds:.0f} |" for stage, seconds in result.stage_seconds.items())
    seeds = len(result.grid.seeds)
    (out / "results.md").write_text(
        f"**Robustness: hacker {result.grid_hacker} on the clean test set ({result.grid.n_test_images} images), "
        f"{'mean ± 95 % interval over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}; lower R@K is stronger protection**\n\n"
        f"{result.table('i2t')}\n\n{result.table('t2i')}\n\n**Checks**\n\n{check_lines}\n\n"
        f"**Time per stage (seconds)**\n\n| stage | seconds |\n|---|---:|\n{timing}\n")
