"""The command line's data flags, shared by every subcommand that reads data: one layer that picks the loader.

A training set is exactly one of `--train-csv`, `--train-json` (Karpathy split, `--split`),
`--train-coco` (COCO captions) or `--train-data` (webdataset shards); a test set likewise with the
`--test-` flags, or `--test-split` alone to take another split of `--train-json`'s file.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from . import distributed
from .data.dataset import CaptionDataset, require_images
from .data.sources import DataSource
from .errors import UsageError

_KINDS = {"csv": "csv", "json": "karpathy", "coco": "coco", "data": "shards"}
_HELP = {"csv": "caption CSV/TSV", "json": "Karpathy split JSON (dataset_flickr8k.json, ...)", "coco": "COCO captions JSON (captions_train2017.json)",
         "data": "webdataset shards: a brace pattern 'shards/{00000..00099}.tar', a glob, or a folder of .tar"}


def _flags(role: str) -> str:
    return ", ".join(f"--{role}-{suffix}" for suffix in _KINDS)


def add_data_args(parser: argparse.ArgumentParser, train: str | None = "required", test: str | None = "optional") -> None:
    """Add the data flags; `train` is 'required', 'override' (default: the protection's recorded dataset) or None, `test` 'required', 'optional' or None."""
    if train:
        group = parser.add_mutually_exclusive_group(required=train == "required")
        what = "training set" if train == "required" else "the dataset the protection was made for (default: the recorded one)"
        for suffix, text in _HELP.items():
            group.add_argument(f"--train-{suffix}", metavar="PATH", help=f"{what}: {text}")
        parser.add_argument("--split", help="split of --train-json (default: train, which includes restval)")
        parser.add_argument("--image-root", help="image folder of --train-json / --train-coco (default: the JSON file's folder)")
    if test:
        group = parser.add_mutually_exclusive_group()
        for suffix, text in _HELP.items():
            group.add_argument(f"--test-{suffix}", metavar="PATH", help=f"clean test set: {text}")
        parser.add_argument("--test-split", help="split of --test-json, or of --train-json's file when no other test set is given (default: test)")
        parser.add_argument("--test-image-root", help="image folder of --test-json / --test-coco (default: --image-root, else the JSON file's folder)")
    parser.add_argument("--image-column", help="CSV image column name (detected if omitted)")
    parser.add_argument("--caption-column", help="CSV caption column name (detected if omitted)")
    parser.add_argument("--delimiter", help="CSV field delimiter (detected if omitted)")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable rows and report them, instead of stopping")
    parser.add_argument("--cache-dir", help="folder for a memory-mapped decoded-image cache (large datasets; shards are decoded once into it)")


def _given(args, role: str) -> DataSource | None:
    """The source named by this role's flags, or None."""
    named = [(suffix, getattr(args, f"{role}_{suffix}", None)) for suffix in _KINDS]
    named = [(suffix, path) for suffix, path in named if path]
    if not named:
        return None
    (suffix, path), = named  # argparse's mutually exclusive groups allow at most one
    kind = _KINDS[suffix]
    root = getattr(args, "image_root", None) if role == "train" else (getattr(args, "test_image_root", None) or getattr(args, "image_root", None))
    split = getattr(args, "split" if role == "train" else "test_split", None)
    if split is not None and kind != "karpathy":
        raise UsageError(f"--{'split' if role == 'train' else 'test-split'} applies to a Karpathy JSON (--{role}-json), not --{role}-{suffix}")
    return DataSource(kind, path, image_root=root if kind in ("karpathy", "coco") else None,
                      split=(split or ("train" if role == "train" else "test")) if kind == "karpathy" else None,
                      image_column=args.image_column, caption_column=args.caption_column, delimiter=args.delimiter)


def train_source(args) -> DataSource | None:
    """The training set the flags name (None where none is given: export / verify then use the recorded one)."""
    if getattr(args, "split", None) is not None and not getattr(args, "train_json", None):
        raise UsageError("--split applies to --train-json only")
    return _given(args, "train")


def recorded_source(args, record: dict) -> DataSource:
    """The training set given on the command line, else the recorded one (CSV column flags still override it)."""
    source = train_source(args)
    if source is not None:
        return source
    source = DataSource.from_record(record)
    if source is None:
        raise UsageError(f"the protection does not record its dataset; pass one of {_flags('train')}")
    overrides = {k: getattr(args, k) for k in ("image_column", "caption_column", "delimiter") if getattr(args, k, None) is not None}
    return replace(source, **overrides)


def test_source(args, train: DataSource | None = None, required: bool = False) -> DataSource | None:
    """The test set the flags name; `--test-split` alone takes that split of the training set's Karpathy file."""
    source = _given(args, "test")
    if source is None and getattr(args, "test_split", None):
        if train is None or train.kind != "karpathy":
            raise UsageError("--test-split alone needs a Karpathy training set (--train-json) to take the split from; or give --test-json")
        source = replace(train, split=args.test_split)
    if source is None and required:
        raise UsageError(f"give a clean test set: one of {_flags('test')} (or --test-split with --train-json)")
    return source


def load_source(source: DataSource, args, image_size: int) -> CaptionDataset:
    """Read and decode a source once, listing rows left out by --skip-bad; fewer than 2 images is refused before any work."""
    def load() -> CaptionDataset:  # under torchrun rank 0 fills the --cache-dir image cache first, the others then read it
        dataset = source.load(image_size, skip_bad=args.skip_bad, cache_dir=args.cache_dir)
        return dataset.preload(skip_bad=args.skip_bad, progress=distributed.is_main())

    dataset = distributed.main_first(load)
    for problem in getattr(dataset, "skipped", []):
        print(f"skipped: {problem}", file=sys.stderr)
    require_images(dataset, 2)
    return dataset
