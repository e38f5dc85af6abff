"""The Protection artifact (int8 noise, trigger ids, config, provenance) and the protected views of a dataset.

Saved as `.npy` arrays plus `protection.json`: nothing that executes code when loaded. The noise is
memory-mapped on load, so a protection for a large dataset never sits in RAM as a dense tensor.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..atomic import atomic_write, write_text
from ..data.dataset import CaptionDataset
from ..errors import ProtectionError
from ..text import CaptionTokenizer

FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Software versions recorded in every artifact (provenance)."""
    import open_clip

    return {"mem_toolkit": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass
class Protection:
    """What a protector produced for one dataset: per-unit noise and trigger, and which unit each row uses."""

    method: str
    noise: np.ndarray  # int8 (units, S, S, 3), pixel units (1/255)
    triggers: np.ndarray  # int64 (units, k); k = 0 without trigger
    unit_of_row: np.ndarray  # int64 (rows,)
    eps: int
    image_size: int
    fingerprint: str
    config: dict
    diagnostics: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=versions)

    @property
    def trigger_len(self) -> int:
        return int(self.triggers.shape[1])

    @property
    def n_units(self) -> int:
        return int(self.noise.shape[0])

    def trigger_words(self, tokenizer: CaptionTokenizer | None = None) -> list[str]:
        """The trigger of every unit as plain words."""
        tokenizer = tokenizer or CaptionTokenizer()
        return [tokenizer.trigger_text(ids) for ids in self.triggers]

    def published_caption(self, dataset: CaptionDataset, row: int, tokenizer: CaptionTokenizer | None = None) -> str:
        """The caption as published: the trigger words, a space, the caption; it re-tokenises to trigger + caption ids."""
        tokenizer = tokenizer or CaptionTokenizer()
        caption = dataset.captions[row]
        if not self.trigger_len:
            return caption
        return f"{tokenizer.trigger_text(self.triggers[self.unit_of_row[row]])} {caption}"

    def apply(self, dataset: CaptionDataset, noise: bool = True, trigger: bool = True) -> "ProtectedDataset":
        """A lazy protected view of `dataset` (the one this protection was made for)."""
        self.check_fits(dataset)
        return ProtectedDataset(dataset, self, noise, trigger)

    def check_fits(self, dataset: CaptionDataset) -> None:
        """Refuse a dataset other than the one the protection was made for, saying what differs."""
        problems = []
        if len(dataset) != len(self.unit_of_row):
            problems.append(f"{len(dataset)} rows, the protection has {len(self.unit_of_row)}")
        if dataset.image_size != self.image_size:
            problems.append(f"image size {dataset.image_size}, the protection was made at {self.image_size}")
        if dataset.fingerprint() != self.fingerprint:
            problems.append(f"fingerprint {dataset.fingerprint()} (images, captions or order differ), the protection's is {self.fingerprint}")
        if problems:
            raise ProtectionError(f"protection does not fit dataset {dataset.name!r}: " + "; ".join(problems))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write `noise.npy`, `triggers.npy`, `unit_of_row.npy` and `protection.json` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _save_npy(directory / "noise.npy", self.noise)
        _save_npy(directory / "triggers.npy", self.triggers)
        _save_npy(directory / "unit_of_row.npy", self.unit_of_row)
        info = {"format": FORMAT_VERSION, "method": self.method, "eps": self.eps, "image_size": self.image_size,
                "fingerprint": self.fingerprint, "config": self.config, "diagnostics": self.diagnostics,
                "versions": self.versions, "trigger_words": self.trigger_words()}
        write_text(directory / "protection.json", json.dumps(info, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, dataset: CaptionDataset | None = None) -> "Protection":
        """Read a saved protection, checking shapes, dtype and the ε bound (and the dataset, if given).

        Every problem (a missing or truncated file, malformed JSON, noise beyond ε, other rows) is
        one ProtectionError naming the folder and what is wrong.
        """
        directory = Path(directory)
        meta_path = directory / "protection.json"
        if not meta_path.is_file():
            raise ProtectionError(f"{meta_path} not found: {directory} is not a protection folder")
        try:
            info = json.loads(meta_path.read_text(encoding="utf-8"))
            header = (info["method"], int(info["eps"]), int(info["image_size"]), info["fingerprint"], info["config"])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ProtectionError(f"{meta_path} is not valid JSON ({error}): the protection is damaged") from None
        except (KeyError, TypeError, ValueError) as error:
            raise ProtectionError(f"{meta_path} lacks a valid entry {error}: the protection is damaged") from None
        arrays = {}
        for name in ("noise", "triggers", "unit_of_row"):
            path = directory / f"{name}.npy"
            if not path.is_file():
                raise ProtectionError(f"{path} is missing: the protection is incomplete")
            try:
                arrays[name] = np.load(path, mmap_mode="r" if name == "noise" else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as error:
                raise ProtectionError(f"{path} cannot be read ({error}): truncated or damaged") from None
        method, eps, image_size, fingerprint, config = header
        protection = cls(method, arrays["noise"], arrays["triggers"], arrays["unit_of_row"], eps, image_size, fingerprint, config,
                         info.get("diagnostics", []), info.get("versions", {}))
        protection.validate(source=str(directory))
        if dataset is not None:
            protection.check_fits(dataset)
        return protection

    def validate(self, source: str = "protection") -> None:
        """Check array shapes and dtypes, unit indices, and |noise| <= ε (in chunks: the noise may be a memory map)."""
        size = self.image_size
        if self.triggers.dtype.kind not in "iu" or self.unit_of_row.dtype.kind not in "iu":
            raise ProtectionError(f"{source}: triggers and unit_of_row must be integer arrays, got {self.triggers.dtype} and {self.unit_of_row.dtype}")
        if self.noise.dtype != np.int8 or self.noise.ndim != 4 or self.noise.shape[1:] != (size, size, 3):
            raise ProtectionError(f"{source}: noise must be int8 of shape (units, {size}, {size}, 3), got {self.noise.dtype} {self.noise.shape}")
        if self.triggers.ndim != 2 or self.triggers.shape[0] != self.noise.shape[0]:
            raise ProtectionError(f"{source}: triggers must have shape ({self.noise.shape[0]}, k), got {self.triggers.shape}")
        if self.unit_of_row.ndim != 1 or (len(self.unit_of_row) and (self.unit_of_row.min() < 0 or self.unit_of_row.max() >= self.n_units)):
            raise ProtectionError(f"{source}: unit_of_row must index the {self.n_units} units")
        for start in range(0, self.n_units, 4096):
            peak = int(np.abs(self.noise[start:start + 4096].astype(np.int16)).max(initial=0))
            if peak > self.eps:
                raise ProtectionError(f"{source}: noise reaches {peak}/255, beyond its ε = {self.eps}/255")


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Atomic .npy write, streamed from a memory map when the array is one."""
    if isinstance(array, np.memmap) and array.filename and Path(array.filename).suffix == ".npy":
        array.flush()
        atomic_write(path, lambda tmp: shutil.copyfile(array.filename, tmp))
    else:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a file handle: np.save would add ".npy" to a bare temp name
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

        atomic_write(path, write)


class ProtectedDataset:
    """A dataset seen through a protection: noise added to the pixels and the trigger put before each caption.

    Nothing is materialised: batches are built on demand, so it costs the int8 noise and nothing more.
    `noise=False` or `trigger=False` give the controls (trigger-only, noise-only); `stripped` (one
    boolean per row) leaves the trigger off the marked rows only, as the surrogate of `strip_share` sees them.
    """

    def __init__(self, base: CaptionDataset, protection: Protection, noise: bool = True, trigger: bool = True,
                 stripped: np.ndarray | None = None) -> None:
        self.base = base
        self.protection = protection
        self.use_noise = noise
        self.use_trigger = trigger and protection.trigger_len > 0
        self.stripped = stripped
        self.group_ids = base.group_ids
        self.name = f"{base.name}+{protection.method}"

    def __len__(self) -> int:
        return len(self.base)

    @property
    def n_images(self) -> int:
        return self.base.n_images

    def units(self, rows) -> np.ndarray:
        return self.protection.unit_of_row[np.asarray(rows, dtype=np.int64)]

    def image_batch(self, rows) -> torch.Tensor:
        """Protected uint8 pixels (B, 3, S, S): clean + noise, clipped to valid pixels."""
        pixels = self.base.image_batch(rows)
        if not self.use_noise:
            return pixels
        noise = torch.from_numpy(np.asarray(self.protection.noise[self.units(rows)])).permute(0, 3, 1, 2)
        return (pixels.to(torch.int16) + noise.to(torch.int16)).clamp_(0, 255).to(torch.uint8)

    def token_batch(self, rows, tokenizer: CaptionTokenizer, context_length: int) -> torch.Tensor:
        """Trigger ids right after the start token, then the caption (truncated, never the trigger)."""
        ids = self.base.caption_token_ids(tokenizer)
        rows = np.asarray(rows, dtype=np.int64)
        prefix = self.protection.triggers[self.units(rows)] if self.use_trigger else None
        with_prefix = None if self.stripped is None else ~self.stripped[rows]
        return tokenizer.assemble([ids[r] for r in rows], context_length, prefix=prefix, with_prefix=with_prefix)

    def published_ids(self, rows, tokenizer: CaptionTokenizer) -> list[list[int]]:
        """Untruncated token ids of the published captions (trigger then caption), as a reader re-tokenises them."""
        ids = self.base.caption_token_ids(tokenizer)
        rows = np.asarray(rows, dtype=np.int64)
        if not self.use_trigger:
            return [list(ids[r]) for r in rows]
        return [self.protection.triggers[u].tolist() + list(ids[r]) for u, r in zip(self.units(rows), rows)]


class StrippedView:
    """What a hacker who drops the first k tokens of every published caption trains on."""

    def __init__(self, source: ProtectedDataset, k: int) -> None:
        self.source = source
        self.k = k
        self.group_ids = source.group_ids
        self.name = f"{source.name}-stripped{k}"

    def __len__(self) -> int:
        return len(self.source)

    def image_batch(self, rows) -> torch.Tensor:
        return self.source.image_batch(rows)

    def token_batch(self, rows, tokenizer: CaptionTokenizer, context_length: int) -> torch.Tensor:
        return tokenizer.assemble([ids[self.k:] for ids in self.source.published_ids(rows, tokenizer)], context_length)
