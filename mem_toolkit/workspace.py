"""A run folder that caches protections and hacker runs under keys of their settings and data.

Notebooks, the transferability table and repeated experiments ask for the same work again and
again; a `Workspace` names every protection by (method, settings, dataset) and every hacker run by
(training data, test set, model, training settings), so finished work is reused, interrupted work
resumes, and changed settings never pick up a stale result.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from . import distributed
from .data.dataset import CaptionDataset
from .experiment import ArmResult, cache_key, data_key, protect_cached, run_arm
from .models import ClipModel, load_model
from .protect import Protection, Protector
from .train import PairSource, TrainConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Workspace:
    """A folder of cached protections (`protections/`) and hacker runs (`hackers/`), keyed by what made them."""

    def __init__(self, root: str | os.PathLike, device: str = "auto", progress: bool = True) -> None:
        self.root = Path(root)
        self.device = device
        self._progress = progress

    @property
    def progress(self) -> bool:
        """Whether to show progress bars: asked for, and this is rank 0 (under torchrun the others stay quiet)."""
        return self._progress and distributed.is_main()

    def protection_folder(self, protector: Protector, dataset: CaptionDataset) -> Path:
        """Where `protector` applied to `dataset` is (or will be) saved."""
        return self.root / "protections" / f"{_safe(protector.method)}-{cache_key(protector.get_params(), dataset.fingerprint())}"

    def protect(self, protector: Protector, dataset: CaptionDataset) -> Protection:
        """The protection of `dataset` by `protector`: loaded if made before with these settings, else made and saved."""
        return protect_cached(protector, dataset, self.protection_folder(protector, dataset), self.progress)

    def hack(self, name: str, train_data: PairSource, test: CaptionDataset, config: TrainConfig,
             model_name: str = "mem-tiny-rn") -> ArmResult:
        """A fresh hacker `model_name` trained on `train_data` and evaluated on the clean `test` (reused when already trained)."""
        training = data_key(train_data)
        key = cache_key(training, test.fingerprint(), model_name, config.record())
        result = run_arm(f"{_safe(name)}-{_safe(model_name)}-{key}", train_data, test, config, self.root / "hackers", model_name,
                         self.device, self.progress, key=training)
        return replace(result, name=name)

    def hacker(self, result: ArmResult) -> ClipModel:
        """The trained model of a hacker run."""
        if result.folder is None:
            raise ValueError(f"run {result.name!r} has no folder (it was derived, not trained)")
        return load_model(result.folder / "model.safetensors")


def _safe(name: str) -> str:
    """A name usable as one path component (open_clip names may hold ':' or '/')."""
    return _UNSAFE.sub("_", name).strip("_") or "run"
