"""Protect-then-hack experiments: one fresh hacker per arm, same budget, evaluated on the clean test set.

Each arm trains in its own folder with per-epoch checkpoints, so an interrupted experiment resumes
where it stopped and finished arms are never recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from . import distributed
from .atomic import write_json
from .data.dataset import CaptionDataset
from .errors import ResumeMismatch
from .intervals import format_cell
from .metrics import random_guess_metrics
from .models import ClipModel, create_model, resolve_device
from .protect import ProtectConfig, ProtectedDataset, Protection, Protector, StrippedView
from .protect.learnability import learnability_report
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


def cache_key(*parts) -> str:
    """Short stable hash of JSON-able parts (settings, fingerprints, names)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def protection_digest(protection: Protection) -> str:
    """Hash of what a protection does to data: method, ε, noise, triggers and row-to-unit map (chunked: noise may be a memory map)."""
    digest = hashlib.sha256(json.dumps([protection.method, protection.eps, protection.fingerprint]).encode())
    for array in (protection.triggers, protection.unit_of_row):
        digest.update(np.ascontiguousarray(array).tobytes())
    for start in range(0, protection.n_units, 1024):
        digest.update(np.ascontiguousarray(protection.noise[start:start + 1024]).tobytes())
    return digest.hexdigest()[:16]


def data_key(source: PairSource) -> str:
    """Identity of training data: a dataset's fingerprint, or its base plus the protection and controls applied to it."""
    if isinstance(source, CaptionDataset):
        return source.fingerprint()
    if isinstance(source, ProtectedDataset):
        return cache_key(source.base.fingerprint(), protection_digest(source.protection), source.use_noise, source.use_trigger)
    if isinstance(source, StrippedView):
        return cache_key(data_key(source.source), "stripped", source.k)
    raise TypeError(f"cannot tell which data a {type(source).__name__} holds; train it with experiment.run_arm and a folder of your own")


def run_arm(
    name: str,
    train_data: PairSource,
    test: CaptionDataset,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    model_name: str = "mem-tiny-rn",
    device: str = "auto",
    progress: bool = True,
    key: str | None = None,
    pretrained: str | os.PathLike | None = None,
) -> ArmResult:
    """Train a fresh hacker `model_name` (from scratch, or from `pretrained` weights) on `train_data` in `out_dir/name`.

    A finished or interrupted run is reused only if it had the same hacker, starting weights, budget
    and training data (`key`, by default `data_key(train_data)`); otherwise it starts afresh.
    """
    folder = Path(out_dir) / name
    record_path = folder / "arm.json"
    record = {"model": model_name, "pretrained": None if pretrained is None else str(pretrained), "config": config.record(),
              "data_key": data_key(train_data) if key is None else key}
    previous = json.loads(record_path.read_text()) if record_path.exists() and distributed.is_main() else None
    previous = distributed.broadcast_object(previous)  # every process decides on what rank 0 read
    if previous is not None and {k: previous.get(k) for k in record} == record:
        if previous.get("seconds") is not None:
            return ArmResult(name, History.load(folder / "history.json"), previous["seconds"], folder=folder)
    elif folder.exists() and distributed.is_main():
        shutil.rmtree(folder)  # another hacker, budget or training set: nothing here can be reused
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(record_path, record | {"seconds": None})
    distributed.barrier()
    started = time.perf_counter()
    model = create_model(model_name, pretrained, device=resolve_device(device), seed=config.seed)
    history = train_run(model, train_data, test, config, folder, resume=True, progress=progress, description=name)
    seconds = time.perf_counter() - started
    if distributed.is_main():
        write_json(record_path, record | {"seconds": seconds})
    return ArmResult(name, history, seconds, folder=folder)


def protect_cached(protector: Protector, dataset: CaptionDataset, folder: str | os.PathLike, progress: bool = True,
                   surrogate: ClipModel | None = None) -> Protection:
    """The protection saved in `folder` if it was made with these settings; else make it (resuming) and save it there.

    `surrogate` starts the protection from given weights (default: the protector's from scratch).
    A folder holding a protection, or an interrupted run, made with other settings or starting
    weights is cleared and the work redone: a stale result is never returned.
    """
    folder = Path(folder)
    pretrained = None if surrogate is None else surrogate.pretrained
    try:
        saved = saved_protection(folder, dataset, protector, pretrained)
        if saved is not None:
            return saved
        protection = protector.fit(dataset, surrogate, work_dir=folder / "work", resume=True, progress=progress)
    except ResumeMismatch:  # every process reads the same files, so all of them get here together
        if distributed.is_main():
            shutil.rmtree(folder)
        distributed.barrier()
        protection = protector.fit(dataset, surrogate, work_dir=folder / "work", progress=progress)
    return save_protection(protection, folder)


def saved_protection(folder: Path, dataset: CaptionDataset, protector: Protector, pretrained: str | None) -> Protection | None:
    """The finished protection in `folder`, None if there is none; ResumeMismatch if it was made for other data or settings."""
    if not (folder / "protection.json").exists():
        return None
    protection = Protection.load(folder)
    try:
        protection.check_fits(dataset)
    except ValueError as error:
        raise ResumeMismatch(f"{folder} holds a protection made for other data: {error}") from error
    if not same_settings(protection.config, protector.get_params()) or protection.config.get("surrogate_pretrained") != pretrained:
        raise ResumeMismatch(f"{folder} holds a {protection.method} protection made with other settings or starting weights")
    return protection


def save_protection(protection: Protection, folder: Path) -> Protection:
    """Save a finished protection into `folder` and delete the run's resume state in `folder/work`.

    The resume state holds the surrogate with its optimizer (three times the model's size) and two
    copies of the noise; once the artifact is saved nothing needs it. The returned protection's
    noise is a read-only memory map of the saved `folder/noise.npy`, not of the deleted work file.
    In several processes rank 0 writes and the others then map what it wrote.
    """
    if distributed.is_main():
        protection.save(folder)
        shutil.rmtree(folder / "work", ignore_errors=True)
    distributed.barrier()
    protection.noise = np.load(folder / "noise.npy", mmap_mode="r")
    return protection


def learnability_cached(path: str | os.PathLike, dataset: CaptionDataset, protection: Protection, model_name: str, epochs: int,
                        seeds: list[int], device: str = "auto", progress: bool = True) -> dict:
    """`protect.learnability.learnability_report`, reread from `path` when it was made for this protection, hacker and budget."""
    path = Path(path)
    key = {"protection": protection_digest(protection), "model": model_name, "epochs": epochs, "seeds": list(seeds)}
    saved = json.loads(path.read_text()) if path.exists() else None
    if saved is not None and saved.get("key") == key:
        return saved
    report = learnability_report(dataset, protection, model_name, epochs, seeds, device=resolve_device(device),
                                 progress=progress and distributed.is_main()) | {"key": key}
    if distributed.is_main():
        write_json(path, report)
    return report


def same_settings(saved: dict, wanted: dict) -> bool:
    """Whether a saved protection's config holds exactly the wanted settings (provenance entries aside).

    A setting the saved config lacks was added to the toolkit after it was made, when the code did
    what the setting's default does: it counts as that default.
    """
    wanted = json.loads(json.dumps(wanted))
    defaults = json.loads(json.dumps(asdict(ProtectConfig())))
    return all(saved.get(key, defaults.get(key)) == value for key, value in wanted.items())


def random_guess(test: CaptionDataset) -> dict[str, float]:
    """Exact random-guess metrics for the shape of a test set (its captions per image)."""
    return random_guess_metrics(np.bincount(test.group_ids, minlength=test.n_images))


def results_table(results: Mapping[str, Mapping | History | ArmResult], test: CaptionDataset | Mapping[str, float], title: str = "") -> str:
    """Markdown table in the paper's layout (i2t and t2i R@1/5/10 and MedR) with a random-guess row.

    Each result is a metrics dict (values, or Intervals over seeds: `mean ± half-width`), or a
    History / ArmResult whose final epoch is used. `test` is the test set, or its random-guess metrics.
    """
    head = "| method | " + " | ".join(f"{d} {m}" for d, m in TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = ([f"**{title}**", ""] if title else []) + [head, rule]
    random = random_guess(test) if isinstance(test, CaptionDataset) else test
    for name, result in list(results.items()) + [("random guess", random)]:
        metrics = result.final if isinstance(result, (History, ArmResult)) else result
        cells = [format_cell(metrics[f"{d}_{m}"], m) for d, m in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
