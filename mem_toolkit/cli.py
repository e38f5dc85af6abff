"""The `mem-toolkit` command line (also `python -m mem_toolkit`): thin wrappers over the library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data.pubfig import register_prepare
from .errors import DataError


def _add_data_args(parser: argparse.ArgumentParser, train: bool = True, test: bool = True) -> None:
    if train:
        parser.add_argument("--train-csv", required=True, help="caption CSV/TSV of the training set")
    if test:
        parser.add_argument("--test-csv", help="caption CSV/TSV of the clean test set")
    parser.add_argument("--image-column", help="image column name (detected if omitted)")
    parser.add_argument("--caption-column", help="caption column name (detected if omitted)")
    parser.add_argument("--delimiter", help="field delimiter (detected if omitted)")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable rows and report them, instead of stopping")
    parser.add_argument("--cache-dir", help="folder for a memory-mapped decoded-image cache (large datasets)")


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mem-tiny-rn", help="open_clip model name or bundled config")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or local checkpoint path (default: from scratch)")
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--no-amp", action="store_true", help="train in fp32 instead of bf16 autocast")


def _load_csv(path: str, args, image_size: int):
    from .data.loaders import load_caption_csv

    dataset = load_caption_csv(path, image_size, image_column=args.image_column, caption_column=args.caption_column,
                               delimiter=args.delimiter, skip_bad=args.skip_bad, cache_dir=args.cache_dir)
    dataset = dataset.preload(skip_bad=args.skip_bad)
    for problem in getattr(dataset, "skipped", []):
        print(f"skipped: {problem}", file=sys.stderr)
    return dataset


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       seed=args.seed, amp=not args.no_amp)


def cmd_make_data(args) -> int:
    if args.kind == "faces":
        from .data.faces import generate_faces
        from .data.identity import write_identity_folder

        photos = generate_faces(args.people, args.photos_per_person, args.image_size, args.seed, progress=True)
        labels = write_identity_folder(args.out, photos)
        print(f"wrote {labels} ({len(photos.keys)} photos of {len(photos.people)} people, one folder per person)")
        return 0
    from .data.shapes import make_shapes_split
    from .data.writer import write_dataset

    train, test = make_shapes_split(args.n_train, args.n_test, args.image_size, args.seed, args.difficulty)
    write_dataset(train, args.out, "train.csv")
    write_dataset(test, args.out, "test.csv")
    print(f"wrote {args.out}/train.csv ({len(train)} rows, {train.n_images} images) and test.csv ({len(test)} rows)")
    return 0


def cmd_train(args) -> int:
    from .models import create_model, resolve_device
    from .train import train_run

    model = create_model(args.model, args.pretrained, resolve_device(args.device), seed=args.seed)
    train = _load_csv(args.train_csv, args, model.image_size)
    test = _load_csv(args.test_csv, args, model.image_size) if args.test_csv else None
    history = train_run(model, train, test, _train_config(args), args.out, resume=args.resume)
    print(json.dumps(history.final, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_retrieval
    from .models import load_model, resolve_device
    from .train import write_json

    model = load_model(args.checkpoint, resolve_device(args.device))
    report = evaluate_retrieval(model, _load_csv(args.test_csv, args, model.image_size))
    print(report.table())
    if args.out:
        write_json(args.out, report.to_dict())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mem-toolkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-data", help="write an embedded synthetic dataset as PNGs + CSV")
    make.add_argument("kind", choices=["shapes", "faces"])
    make.add_argument("--out", required=True)
    make.add_argument("--n-train", type=int, default=2000)
    make.add_argument("--n-test", type=int, default=500)
    make.add_argument("--image-size", type=int, default=64)
    make.add_argument("--difficulty", default="default", help="easy, default or hard")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--people", type=int, default=50, help="faces: number of invented people")
    make.add_argument("--photos-per-person", type=int, default=10, help="faces: photos of each person")
    make.set_defaults(func=cmd_make_data)

    train = commands.add_parser("train", help="train a CLIP on a caption CSV, evaluating on the test CSV every epoch")
    _add_data_args(train)
    _add_train_args(train)
    train.add_argument("--out", required=True, help="run folder: history.json, metrics.json, model.safetensors, checkpoint")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="retrieval of a saved model on a clean test CSV")
    evaluate.add_argument("--checkpoint", required=True, help="model.safetensors written by `train`")
    evaluate.add_argument("--test-csv", required=True)
    _add_data_args(evaluate, train=False, test=False)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", help="write the report as JSON here")
    evaluate.set_defaults(func=cmd_evaluate)
    register_prepare(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input ends with the full list of problems and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed epochs/rounds are checkpointed; rerun with --resume to continue", file=sys.stderr)
        return 130
