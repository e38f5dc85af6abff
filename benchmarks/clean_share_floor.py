"""Benchmark: the floor a protection can reach when only part of the data is protected.

A hacker who trains on a partly protected scrape still has its clean part. If the protected part
were perfectly useless to him (neither teaching nor misleading), he would do as well as a hacker
trained on the clean part alone: this trains that hacker on the clean rows of a finished robustness
study's mixed copy, with the study's test set and its budget in epochs (so half the steps for half the
data) and in steps (twice the epochs), and prints both beside the study's cells.

    python benchmarks/clean_share_floor.py --study runs/robustness --column protected50 --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from mem_toolkit.data.loaders import load_caption_csv  # noqa: E402
from mem_toolkit.data.shapes import make_shapes_split  # noqa: E402
from mem_toolkit.studies.grid import Arm, run_grid  # noqa: E402
from mem_toolkit.studies.robustness import CLEAN, NO_DEFENCE, RobustnessPreset  # noqa: E402


def clean_part(study: Path, source: str, column: str, image_size: int):
    """The rows of `source`'s mixed copy in `column` whose images came from the clean side."""
    mixed = load_caption_csv(study / "defended" / source / column / "captions.csv", image_size)
    return mixed.select_images([g for g, path in enumerate(mixed.image_paths) if Path(path).parent.name == CLEAN])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished robustness study's folder (mem-toolkit robustness --out)")
    parser.add_argument("--column", default="protected50", help="a data defence of that study (protected20/50/80)")
    parser.add_argument("--source", default="mem-3", help="the protection whose mixed copy gives the clean rows (all give the same ones)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/clean_share_floor.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    saved = json.loads((args.study / "results.json").read_text())
    preset = RobustnessPreset(**saved["settings"])
    test = make_shapes_split(preset.n_train, preset.n_test, preset.image_size, preset.seed, preset.difficulty)[1]
    if test.n_images != saved["runs"]["test"]["images"]:  # the study was run on the user's own data, which results.json does not name
        raise SystemExit(f"error: {args.study} was not run on the embedded shapes its settings describe; this floor needs that study's test set")
    part = clean_part(args.study, args.source, args.column, preset.image_size)
    hacker = preset.hacker()
    longer = round(preset.n_train / part.n_images)  # times the epochs that take as many steps on the clean part as the study's hackers took
    arms = {"same epochs": Arm(part), "same steps": Arm(part, lambda h: replace(h, config=replace(h.config, epochs=h.config.epochs * longer)))}
    grid = run_grid(arms, test, [hacker], args.study / f"floor-{args.column}", args.seeds, args.device)
    floors = {name: grid.summary(hacker.label, name) for name in arms}
    report = {"machine": machine(), "study": str(args.study), "column": args.column, "clean_images": part.n_images, "seeds": args.seeds,
              "clean_part_only": {name: {k: v.to_dict() for k, v in floor.items()} for name, floor in floors.items()},
              "study_cells": {source: saved["cells"][source][args.column] for source in saved["sources"]},
              "clean_no_defence": saved["cells"][CLEAN][NO_DEFENCE]}
    write_result("clean_share_floor", report, args.out)
    for direction in ("i2t", "t2i"):
        cells = ", ".join(f"{source} {saved['cells'][source][args.column][f'{direction}_R@1']['mean']:.1f}" for source in saved["sources"])
        alone = ", ".join(f"{name} {floor[f'{direction}_R@1'].mean:.1f}" for name, floor in floors.items())
        print(f"{direction} R@1: clean part only ({part.n_images} images): {alone}; under {args.column}: {cells}")


if __name__ == "__main__":
    main()
