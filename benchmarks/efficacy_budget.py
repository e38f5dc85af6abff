"""Efficacy against budget: MEM-3 at several protection budgets on the embedded data, each judged by a fresh hacker.

    python benchmarks/efficacy_budget.py --preset full --budgets 2x30x5 6x60x8 12x100x8 --out-dir runs/budget

A budget is ROUNDSxSURROGATE_STEPSxPGD_STEPS (other settings from the demo preset's MEM settings).
Protections and hackers are cached in --out-dir, so an interrupted run resumes. Writes JSON (and a
markdown table) with protection time and clean-test retrieval per budget, beside the clean hacker
and random guessing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from mem_toolkit.data.shapes import make_shapes_split  # noqa: E402
from mem_toolkit.demo import PRESETS  # noqa: E402
from mem_toolkit.experiment import protect_cached, results_table, run_arm  # noqa: E402
from mem_toolkit.metrics import random_guess_metrics  # noqa: E402
from mem_toolkit.protect import MEM  # noqa: E402


def parse_budget(text: str) -> dict:
    rounds, steps, pgd = (int(part) for part in text.lower().split("x"))
    return {"rounds": rounds, "surrogate_steps": steps, "pgd_steps": pgd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--budgets", nargs="+", default=["2x30x5", "4x30x5", "8x60x8"])
    parser.add_argument("--trigger-len", type=int, default=3)
    parser.add_argument("--out-dir", default="runs/efficacy_budget")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/efficacy_budget.json)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    out = Path(args.out_dir)
    train, test = make_shapes_split(preset.n_train, preset.n_test, preset.image_size, preset.seed, preset.difficulty)
    config = preset.hacker_config()
    rows, finals = [], {}
    clean = run_arm("clean", train, test, config, out / "hackers", preset.hacker_model)
    finals["clean"] = clean.final
    for text in args.budgets:
        settings = dict(preset.mem) | parse_budget(text)
        settings["trigger_rounds"] = min(settings.get("trigger_rounds", settings["rounds"]), settings["rounds"])
        started = time.perf_counter()
        protection = protect_cached(MEM(args.trigger_len, seed=preset.seed, **settings), train, out / "protections" / text, progress=True)
        protect_seconds = time.perf_counter() - started
        name = f"mem-{args.trigger_len} {text}"
        result = run_arm(text, protection.apply(train), test, config, out / "hackers", preset.hacker_model)
        finals[name] = result.final
        rows.append({"budget": text, "settings": settings, "protect_seconds": protect_seconds, "hacker_seconds": result.seconds,
                     "final": result.final, "last_round": protection.diagnostics[-1]})
    random = random_guess_metrics(np.bincount(test.group_ids, minlength=test.n_images))
    table = results_table(finals, test, f"MEM-{args.trigger_len} against protection budget (preset {args.preset})")
    (out / "efficacy_budget.md").write_text(table + "\n")
    print(table)
    write_result("efficacy_budget", {"machine": machine(), "preset": args.preset, "clean": clean.final, "random": random,
                                     "budgets": rows, "table": table}, args.out)


if __name__ == "__main__":
    main()
