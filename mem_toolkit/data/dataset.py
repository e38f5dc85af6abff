"""The dataset every part of the toolkit shares: rows of (image, caption), grouped by image."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError, Problem
from .images import ShardMember, load_image


class CaptionDataset:
    """Rows of (image, caption); rows showing the same image share a group id.

    Images are either files or members of tar shards (decoded lazily with Pillow into a uint8
    cache, in RAM or as a memory map under `cache_dir`) or an in-memory uint8 array (the synthetic
    generators). Pixels stay uint8 until the model: protection adds integer noise to them, the
    model wrapper normalises.
    """

    def __init__(
        self,
        captions: Sequence[str],
        group_ids: Sequence[int] | np.ndarray,
        image_keys: Sequence[str],
        image_size: int,
        *,
        image_paths: Sequence[str | os.PathLike | ShardMember] | None = None,
        image_array: np.ndarray | None = None,
        name: str = "dataset",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if (image_paths is None) == (image_array is None):
            raise ValueError("give exactly one of image_paths or image_array")
        self.captions = list(captions)
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        self.image_keys = list(image_keys)
        self.image_size = int(image_size)
        self.name = name
        self.cache_dir = cache_dir
        self.image_paths = None if image_paths is None else [p if isinstance(p, ShardMember) else Path(p) for p in image_paths]
        if len(self.captions) != len(self.group_ids):
            raise ValueError("captions and group_ids differ in length")
        if len(self.group_ids) and (self.group_ids.min() < 0 or self.group_ids.max() >= len(self.image_keys)):
            raise ValueError("a group id points outside the image list")
        shape = (len(self.image_keys), self.image_size, self.image_size, 3)
        if image_array is not None:
            if image_array.shape != shape or image_array.dtype != np.uint8:
                raise ValueError(f"image_array must be uint8 of shape {shape}, got {image_array.dtype} {image_array.shape}")
            self._pixels = image_array
            self._loaded = np.ones(len(self.image_keys), dtype=bool)
        else:
            self._pixels, self._loaded = _make_cache(shape, cache_dir, self.fingerprint())
        self._token_cache: dict[int, list[list[int]]] = {}
        self.skipped: list[Problem] = []  # rows left out by a loader or `preload(skip_bad=True)`

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.captions)

    @property
    def n_images(self) -> int:
        return len(self.image_keys)

    def rows_of_group(self) -> list[np.ndarray]:
        """Row indices of each image, in image order."""
        order = np.argsort(self.group_ids, kind="stable")
        bounds = np.searchsorted(self.group_ids[order], np.arange(self.n_images + 1))
        return [order[bounds[g]:bounds[g + 1]] for g in range(self.n_images)]

    def first_rows(self) -> np.ndarray:
        """Index of each image's first row (its first caption), in image order: one row to show or export per image."""
        first = np.full(self.n_images, len(self), dtype=np.int64)
        np.minimum.at(first, self.group_ids, np.arange(len(self), dtype=np.int64))
        return first

    # -- images --------------------------------------------------------------------------------
    def images(self, groups: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 pixels (B, S, S, 3) of the given images, decoding any not yet cached."""
        groups = np.asarray(groups, dtype=np.int64)
        missing = np.unique(groups[~self._loaded[groups]])
        if len(missing):
            self._decode(missing, progress=False, skip_bad=False)
        return np.asarray(self._pixels[groups])

    def image_batch(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 tensor (B, 3, S, S) of the images of the given rows."""
        pixels = self.images(self.group_ids[np.asarray(rows, dtype=np.int64)])
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    def preload(self, progress: bool = True, skip_bad: bool = False) -> "CaptionDataset":
        """Decode every image once (with progress), reporting all unreadable files together.

        With `skip_bad`, rows of unreadable images are dropped and a new dataset is returned; its
        `skipped` lists the dropped files after whatever the loader skipped already. Images
        decoded before an error stay cached.
        """
        missing = np.flatnonzero(~self._loaded)
        bad = self._decode(missing, progress=progress, skip_bad=skip_bad) if len(missing) else []
        if not bad:
            return self
        keep_groups = np.setdiff1d(np.arange(self.n_images), [g for g, _ in bad])
        kept = self.select_images(keep_groups)
        kept.skipped = list(getattr(self, "skipped", [])) + [problem for _, problem in bad]
        return kept

    def _decode(self, groups: np.ndarray, progress: bool, skip_bad: bool) -> list[tuple[int, Problem]]:
        assert self.image_paths is not None
        bad: list[tuple[int, Problem]] = []
        try:
            for g in tqdm(groups, desc=f"decoding {self.name} images", disable=not progress, unit="img"):
                path = self.image_paths[g]
                try:
                    self._pixels[g] = load_image(path, self.image_size)
                    self._loaded[g] = True
                except Exception as error:  # Pillow raises many kinds; all mean "cannot read this file"
                    bad.append((int(g), Problem(str(path), None, f"cannot read image ({type(error).__name__}: {error})")))
        finally:  # even on an error or Ctrl-C, the on-disk cache keeps what was decoded
            if isinstance(self._pixels, np.memmap):
                self._pixels.flush()
                _save_mask(self._pixels.filename, self._loaded)
        if bad and not skip_bad:
            raise DataError([p for _, p in bad], hint="Fix or remove these files, or pass skip_bad / --skip-bad.")
        return bad

    # -- text ----------------------------------------------------------------------------------
    def caption_token_ids(self, tokenizer) -> list[list[int]]:
        """BPE ids of every caption (no start/end tokens), computed once per tokenizer."""
        key = id(tokenizer)
        if key not in self._token_cache:
            self._token_cache[key] = [tokenizer.encode(c) for c in self.captions]
        return self._token_cache[key]

    def token_batch(self, rows: Sequence[int] | np.ndarray, tokenizer, context_length: int) -> torch.Tensor:
        """Token tensor (B, context_length) of the captions of the given rows."""
        ids = self.caption_token_ids(tokenizer)
        return tokenizer.assemble([ids[r] for r in np.asarray(rows)], context_length)

    # -- derived datasets ----------------------------------------------------------------------
    def select_images(self, groups: Sequence[int] | np.ndarray) -> "CaptionDataset":
        """A dataset with only the given images (and all their rows), re-indexed from 0."""
        groups = np.asarray(groups, dtype=np.int64)
        new_id = np.full(self.n_images, -1, dtype=np.int64)
        new_id[groups] = np.arange(len(groups))
        rows = np.flatnonzero(new_id[self.group_ids] >= 0)
        return self.with_rows([self.captions[r] for r in rows], new_id[self.group_ids[rows]], groups)

    def with_rows(self, captions: Sequence[str], group_ids: Sequence[int] | np.ndarray,
                  groups: Sequence[int] | np.ndarray | None = None, name: str | None = None) -> "CaptionDataset":
        """The given images (all by default) with new rows, e.g. captions written from identity labels.

        `group_ids[row]` indexes `groups`; decoded pixels are carried over, never decoded again.
        """
        groups = np.arange(self.n_images) if groups is None else np.asarray(groups, dtype=np.int64)
        subset = CaptionDataset(
            captions,
            group_ids,
            [self.image_keys[g] for g in groups],
            self.image_size,
            image_array=None if self.image_paths is not None else np.ascontiguousarray(self._pixels[groups]),
            image_paths=None if self.image_paths is None else [self.image_paths[g] for g in groups],
            name=self.name if name is None else name,
            cache_dir=self.cache_dir,
        )
        if self.image_paths is not None:
            subset._pixels[:] = self._pixels[groups]
            subset._loaded[:] = self._loaded[groups]
        return subset

    def fingerprint(self) -> str:
        """Hash of the rows (image keys, captions, grouping): what a protection was made for."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.image_keys, self.captions, self.group_ids.tolist()]).encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"CaptionDataset({self.name!r}, rows={len(self)}, images={self.n_images}, size={self.image_size})"


def _mask_path(filename: str) -> str:
    return str(filename) + ".loaded.npy"


def _save_mask(filename: str, loaded: np.ndarray) -> None:
    """Which cached images are decoded, written atomically beside the memory map."""
    target = _mask_path(filename)
    with open(target + ".tmp", "wb") as handle:
        np.save(handle, loaded)
    os.replace(target + ".tmp", target)


def _make_cache(shape: tuple[int, ...], cache_dir, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
    """RAM array, or a memory map that survives the process so a resumed run skips decoding."""
    if cache_dir is None:
        return np.zeros(shape, dtype=np.uint8), np.zeros(shape[0], dtype=bool)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    path = Path(cache_dir) / f"images-{fingerprint}-{shape[1]}px.u8"
    mode = "r+" if path.exists() and path.stat().st_size == int(np.prod(shape)) else "w+"
    pixels = np.memmap(path, dtype=np.uint8, mode=mode, shape=shape)
    mask_file = _mask_path(str(path))
    loaded = np.load(mask_file) if mode == "r+" and os.path.exists(mask_file) else np.zeros(shape[0], dtype=bool)
    return pixels, loaded


def require_images(dataset: CaptionDataset, minimum: int = 2) -> None:
    """Refuse a dataset with fewer than `minimum` images before any work: contrastive training and retrieval compare images."""
    if dataset.n_images < minimum:
        left_out = f" ({len(dataset.skipped)} bad row(s) were left out)" if dataset.skipped else ""
        raise DataError([Problem(dataset.name, None, f"{dataset.n_images} usable image(s){left_out}; at least {minimum} are needed, "
                                                     "since contrastive training and retrieval compare images with each other")])
