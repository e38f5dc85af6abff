"""Where a dataset comes from (a caption CSV, a Karpathy split, a COCO captions file, webdataset shards), as one value.

A DataSource loads itself with the matching loader and records itself as JSON, so that a protection
can say which data it was made for and `export` / `verify` can read that data again.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from .dataset import CaptionDataset
from .loaders import load_caption_csv, load_coco_captions, load_karpathy_json
from .shards import load_shards

KINDS = ("csv", "karpathy", "coco", "shards")


@dataclass(frozen=True)
class DataSource:
    """A dataset on disk: its kind, its file (or shard pattern), and the options its loader takes."""

    kind: str
    path: str
    image_root: str | None = None  # images of a JSON file (default: the file's folder); relative CSV paths
    split: str | None = None  # Karpathy split
    image_column: str | None = None  # CSV only, as the three below
    caption_column: str | None = None
    delimiter: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown data source kind {self.kind!r}; choose from {KINDS}")

    def load(self, image_size: int, *, skip_bad: bool = False, cache_dir: str | os.PathLike | None = None) -> CaptionDataset:
        """Read the rows with the loader of this kind (images are decoded later, by `preload`)."""
        root = self.image_root or os.path.dirname(os.path.abspath(self.path))
        common = {"skip_bad": skip_bad, "cache_dir": cache_dir}
        if self.kind == "csv":
            return load_caption_csv(self.path, image_size, image_column=self.image_column, caption_column=self.caption_column,
                                    delimiter=self.delimiter, image_root=self.image_root, **common)
        if self.kind == "karpathy":
            return load_karpathy_json(self.path, root, self.split or "train", image_size, **common)
        if self.kind == "coco":
            return load_coco_captions(self.path, root, image_size, **common)
        return load_shards(self.path, image_size, **common)

    def record(self) -> dict:
        """JSON-able description with absolute paths, readable by `from_record` from any working folder."""
        absolute = {"path": os.path.abspath(self.path), "image_root": None if self.image_root is None else os.path.abspath(self.image_root)}
        return asdict(replace(self, **absolute))

    @classmethod
    def from_record(cls, record: dict) -> "DataSource | None":
        """The source a record describes; also reads the older `{"train_csv": ...}` records; None for an empty record."""
        if "kind" in record:
            return cls(**{k: record.get(k) for k in ("kind", "path", "image_root", "split", "image_column", "caption_column", "delimiter")})
        if record.get("train_csv"):
            return cls("csv", record["train_csv"], image_column=record.get("image_column"), caption_column=record.get("caption_column"),
                       delimiter=record.get("delimiter"))
        return None

    def __str__(self) -> str:
        split = f" (split {self.split})" if self.kind == "karpathy" else ""
        return f"{self.kind} {self.path}{split}"
