"""Benchmark: train a clean CLIP from scratch on synthetic shapes, evaluating every epoch, within a time budget.

Answers "how long until a hacker model learns this data on this machine?": the per-epoch retrieval
curve with wall time, and the time to reach R@10 >= 50 % in each direction. Writes JSON after every
epoch (an interrupted run keeps what it measured). Not part of the tests.

    python benchmarks/clean_training.py --n-train 2000 --n-test 500 --epochs 32 --time-budget-s 300
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict

import torch

from mem_toolkit.data import Difficulty, make_shapes_split
from mem_toolkit.models import create_model
from mem_toolkit.train import History, TrainConfig, train_clip
from mem_toolkit.atomic import write_json

TARGET_R10 = 50.0


class BudgetReached(Exception):
    """Raised after the epoch that crossed the time budget."""


def machine_info() -> dict:
    """What the timings depend on, including how busy the machine was."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def first_time_reaching(curve: list[dict], keys: tuple[str, ...], target: float) -> dict | None:
    """Epoch and wall time at which every metric in `keys` first reached `target`, or None."""
    for point in curve:
        if all(point[key] >= target for key in keys):
            return {"epoch": point["epoch"], "wall_seconds": point["wall_seconds"]}
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--difficulty", default="default", help="easy, default or hard")
    parser.add_argument("--model", default="mem-tiny-rn")
    parser.add_argument("--epochs", type=int, default=32, help="the LR schedule spans these; the budget may stop sooner")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--time-budget-s", type=float, default=300.0, help="stop after the epoch that passes this wall time")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/clean_training.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    train, test = make_shapes_split(args.n_train, args.n_test, args.image_size, args.seed, args.difficulty)
    generation_seconds = time.perf_counter() - started
    model = create_model(args.model, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    result = {
        "benchmark": "clean_training",
        "args": vars(args),
        "train_config": asdict(config),
        "difficulty": {"preset": args.difficulty, **asdict(Difficulty.preset(args.difficulty))},
        "data": {"train_images": train.n_images, "train_rows": len(train), "test_images": test.n_images,
                 "test_rows": len(test), "generation_seconds": generation_seconds},
        "machine": machine_info(),
        "curve": [],
    }
    training_started = time.perf_counter()

    def record(history: History) -> None:
        entry = history.epochs[-1]
        wall = time.perf_counter() - training_started
        previous = result["curve"][-1]["wall_seconds"] if result["curve"] else 0.0
        result["curve"].append({**entry, "wall_seconds": wall, "eval_and_overhead_seconds": wall - previous - entry["train_seconds"]})
        summarise(result)
        write_json(args.out, result)
        if wall >= args.time_budget_s and len(history.epochs) < config.epochs:
            raise BudgetReached

    try:
        train_clip(model, train, test, config, progress=not args.quiet, on_epoch=record, description="clean")
        result["stopped_by"] = "epochs"
    except BudgetReached:
        result["stopped_by"] = "time budget"
    summarise(result)
    write_json(args.out, result)
    print(f"wrote {args.out}: {len(result['curve'])} epochs in {result['summary']['training_wall_seconds']:.0f} s; "
          f"R@10>={TARGET_R10:.0f}% both directions: {result['summary']['reached_R@10_both']}")
    return 0


def summarise(result: dict) -> None:
    """Times to the R@10 target and the last point of the curve, kept in the JSON as it grows."""
    curve = result["curve"]
    result["machine"]["load_average_now"] = os.getloadavg()
    result["summary"] = {
        "epochs_done": len(curve),
        "training_wall_seconds": curve[-1]["wall_seconds"] if curve else 0.0,
        "seconds_per_epoch_train": sum(p["train_seconds"] for p in curve) / len(curve) if curve else None,
        "target": f"R@10 >= {TARGET_R10:.0f} %",
        "reached_R@10_i2t": first_time_reaching(curve, ("i2t_R@10",), TARGET_R10),
        "reached_R@10_t2i": first_time_reaching(curve, ("t2i_R@10",), TARGET_R10),
        "reached_R@10_both": first_time_reaching(curve, ("i2t_R@10", "t2i_R@10"), TARGET_R10),
        "last": {k: curve[-1][k] for k in ("epoch", "loss", "i2t_R@10", "t2i_R@10", "rsum")} if curve else None,
    }


if __name__ == "__main__":
    sys.exit(main())
