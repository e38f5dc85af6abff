"""Generation cost of MEM: throughput per stage and peak memory, and RAM against dataset size.

    python benchmarks/protection_cost.py                # all parts, JSON in benchmarks/results/
    python benchmarks/protection_cost.py --parts demo   # one part

Parts: `demo` (MEM-3 at the demo's settings on the embedded data, 64 px), `224px` (mem-tiny-rn at
224 px), `scaling` (peak RAM protecting 2k and 20k rows read from files with memory-mapped image
cache and noise: RAM must not grow with the dataset beyond the int8 noise map).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MemorySampler, machine, write_result  # noqa: E402

from mem_toolkit.data.loaders import load_caption_csv  # noqa: E402
from mem_toolkit.data.shapes import make_shapes  # noqa: E402
from mem_toolkit.data.writer import write_dataset  # noqa: E402
from mem_toolkit.studies.demo import PRESETS  # noqa: E402
from mem_toolkit.models import create_model  # noqa: E402
from mem_toolkit.protect import MEM  # noqa: E402


def _throughput(protection, n_images: int, seconds: float, pgd_steps: int) -> dict:
    diagnostics = protection.diagnostics
    noise_seconds = sum(d["noise_seconds"] for d in diagnostics)
    per_stage = {stage: float(np.mean([d[f"{stage}_seconds"] for d in diagnostics if f"{stage}_seconds" in d]))
                 for stage in ("surrogate", "trigger", "noise") if any(f"{stage}_seconds" in d for d in diagnostics)}
    return {
        "total_seconds": seconds,
        "rounds": len(diagnostics),
        "seconds_per_round_by_stage": per_stage,
        "samples_per_second": n_images * len(diagnostics) / seconds,
        "pgd_sample_steps_per_second": n_images * pgd_steps * len(diagnostics) / noise_seconds,
        "trigger_share_of_time": sum(d.get("trigger_seconds", 0) for d in diagnostics) / seconds,
    }


def part_demo(rounds: int) -> dict:
    """MEM-3 at the quick demo's per-round settings, `rounds` rounds (cost per round is what matters)."""
    preset = PRESETS["quick"]
    settings = dict(preset.mem) | {"rounds": rounds, "trigger_rounds": min(rounds, preset.mem.get("trigger_rounds", rounds))}
    train = make_shapes(preset.n_train, preset.image_size, seed=0, difficulty=preset.difficulty)
    with MemorySampler() as memory:
        started = time.perf_counter()
        protection = MEM(3, **settings).fit(train, progress=False)
        seconds = time.perf_counter() - started
    return {"settings": settings, "n_images": train.n_images, "image_size": preset.image_size,
            **_throughput(protection, train.n_images, seconds, settings["pgd_steps"]),
            "peak_rss_mib": memory.peak_rss_mib, "peak_anon_mib": memory.peak_anon_mib}


def part_224(n_images: int) -> dict:
    """mem-tiny-rn at 224 px: one round with a trigger step."""
    settings = dict(rounds=1, trigger_rounds=1, surrogate_steps=10, pgd_steps=5, candidates=8, batch_size=64)
    train = make_shapes(n_images, 224, seed=0)
    surrogate = create_model("mem-tiny-rn", image_size=224, seed=0)
    with MemorySampler() as memory:
        started = time.perf_counter()
        protection = MEM(3, **settings).fit(train, surrogate, progress=False)
        seconds = time.perf_counter() - started
    return {"settings": settings, "n_images": n_images, "image_size": 224, **_throughput(protection, n_images, seconds, settings["pgd_steps"]),
            "peak_rss_mib": memory.peak_rss_mib, "peak_anon_mib": memory.peak_anon_mib}


def part_scaling(sizes: list[int]) -> dict:
    """Peak RAM protecting datasets of different sizes read from PNG files (memory-mapped cache and noise)."""
    out = {}
    settings = dict(rounds=1, trigger_rounds=1, surrogate_steps=2, pgd_steps=1, candidates=2, batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            folder = Path(tmp) / f"rows{rows}"
            write_dataset(make_shapes(rows // 5, 64, seed=1), folder, "train.csv", progress=False)
            dataset = load_caption_csv(folder / "train.csv", 64, cache_dir=folder / "cache")
            with MemorySampler() as memory:
                started = time.perf_counter()
                protection = MEM(3, **settings).fit(dataset, work_dir=folder / "work", progress=False)
                seconds = time.perf_counter() - started
            out[str(rows)] = {"rows": rows, "images": dataset.n_images, "noise_map_mib": protection.noise.nbytes / 2**20,
                              "peak_rss_mib": memory.peak_rss_mib, "peak_anon_mib": memory.peak_anon_mib, "seconds": seconds}
    return {"settings": settings, "by_size": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["demo", "224px", "scaling"], choices=["demo", "224px", "scaling"])
    parser.add_argument("--rounds", type=int, default=2, help="MEM rounds for the demo part")
    parser.add_argument("--n-224", type=int, default=256, help="images for the 224 px part")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="rows for the scaling part")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/protection_cost.json)")
    args = parser.parse_args()
    payload = {"machine": machine()}
    if "demo" in args.parts:
        payload["demo"] = part_demo(args.rounds)
    if "224px" in args.parts:
        payload["224px"] = part_224(args.n_224)
    if "scaling" in args.parts:
        payload["scaling"] = part_scaling(args.sizes)
    write_result("protection_cost", payload, args.out)


if __name__ == "__main__":
    main()
