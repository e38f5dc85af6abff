"""Efficacy against budget: one protection method at several settings on the embedded data, each judged by a fresh hacker.

    python benchmarks/efficacy_budget.py --preset full --budgets 3x20x5 10x20x5 20x20x5 --out-dir runs/budget
    python benchmarks/efficacy_budget.py --method uap --budgets surrogate_epochs=1 surrogate_epochs=2 \\
        surrogate_epochs=4 surrogate_epochs=0,pgd_steps=0,noise_init=uniform --out-dir runs/uap_budget

A budget is ROUNDSxSURROGATE_STEPSxPGD_STEPS or comma-separated `setting=value` pairs; either
overrides the demo preset's settings for the method. Protections and hackers are cached in
--out-dir, so an interrupted run resumes. Writes JSON (and a markdown table) with protection time
and clean-test retrieval per budget, beside the clean hacker and random guessing.
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
from mem_toolkit.studies.demo import PRESETS, DemoPreset  # noqa: E402
from mem_toolkit.experiment import protect_cached, results_table, run_arm  # noqa: E402
from mem_toolkit.metrics import random_guess_metrics  # noqa: E402
from mem_toolkit.protect import EM, MEM, UAP, Protector  # noqa: E402


def parse_budget(text: str) -> dict:
    """`3x20x5` (rounds x surrogate steps x PGD steps) or `key=value,key=value` settings."""
    if "=" not in text:
        rounds, steps, pgd = (int(part) for part in text.lower().split("x"))
        return {"rounds": rounds, "surrogate_steps": steps, "pgd_steps": pgd}
    return {key: _value(value) for key, value in (pair.split("=", 1) for pair in text.split(","))}


def _value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def protector_for(method: str, preset: DemoPreset, budget: dict, trigger_len: int) -> Protector:
    """The demo preset's protector for `method` with `budget` applied on top."""
    settings = dict(getattr(preset, method)) | budget
    if method == "mem":
        settings["trigger_rounds"] = min(settings.get("trigger_rounds", settings.get("rounds", 1)), settings.get("rounds", 1))
        return MEM(trigger_len, seed=preset.seed, **settings)
    return {"em": EM, "uap": UAP}[method](seed=preset.seed, **settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--method", default="mem", choices=["mem", "em", "uap"])
    parser.add_argument("--budgets", nargs="+", default=["2x30x5", "4x30x5", "8x60x8"])
    parser.add_argument("--trigger-len", type=int, default=3, help="MEM only")
    parser.add_argument("--out-dir", default="runs/efficacy_budget")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/efficacy_budget[_METHOD].json)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    out = Path(args.out_dir)
    train, test = make_shapes_split(preset.n_train, preset.n_test, preset.image_size, preset.seed, preset.difficulty)
    config = preset.hacker_config()
    label = f"mem-{args.trigger_len}" if args.method == "mem" else args.method
    rows, finals = [], {}
    clean = run_arm("clean", train, test, config, out / "hackers", preset.hacker_model)
    finals["clean"] = clean.final
    for text in args.budgets:
        protector = protector_for(args.method, preset, parse_budget(text), args.trigger_len)
        started = time.perf_counter()
        protection = protect_cached(protector, train, out / "protections" / f"{label} {text}", progress=True)
        protect_seconds = time.perf_counter() - started
        result = run_arm(f"{label} {text}", protection.apply(train), test, config, out / "hackers", preset.hacker_model)
        finals[f"{label} {text}"] = result.final
        rows.append({"budget": text, "settings": protector.get_params(), "protect_seconds": protect_seconds,
                     "hacker_seconds": result.seconds, "final": result.final, "last_round": protection.diagnostics[-1]})
    random = random_guess_metrics(np.bincount(test.group_ids, minlength=test.n_images))
    table = results_table(finals, test, f"{label.upper()} against protection budget (preset {args.preset})")
    (out / "efficacy_budget.md").write_text(table + "\n")
    print(table)
    name = "efficacy_budget" if args.method == "mem" else f"efficacy_budget_{args.method}"
    write_result(name, {"machine": machine(), "preset": args.preset, "method": args.method, "clean": clean.final, "random": random,
                        "budgets": rows, "table": table}, args.out)


if __name__ == "__main__":
    main()
