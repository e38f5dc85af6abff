"""The quick demo's MEM-3 row alone (protection + one hacker), to check a speed change keeps the protection's effect.

    python benchmarks/demo_mem3_row.py            # JSON in benchmarks/results/demo_mem3_row.json

`make demo` runs the same protection and hacker among its other arms; the README quotes its MEM-3 row
(clean-test R@1 4.5 / 1.4 at commit 7821f10). An optimisation that only changes rounding must keep
this row within about a point of R@1.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from mem_toolkit.data.shapes import make_shapes_split  # noqa: E402
from mem_toolkit.studies.demo import PRESETS  # noqa: E402
from mem_toolkit.experiment import run_arm  # noqa: E402
from mem_toolkit.protect import MEM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/demo_mem3_row.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = PRESETS["quick"]
    train, test = make_shapes_split(preset.n_train, preset.n_test, preset.image_size, preset.seed, preset.difficulty)
    started = time.perf_counter()
    protection = MEM(3, device="cpu", seed=preset.seed, **preset.mem).fit(train, progress=False)
    protect_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        arm = run_arm("mem-3", protection.apply(train), test, preset.hacker_config(), tmp, preset.hacker_model, "cpu", progress=False)
    final = arm.final
    payload = {"machine": machine(), "protect_seconds": protect_seconds, "hacker_seconds": arm.seconds,
               "final": final, "readme_at_7821f10": {"i2t_R@1": 4.5, "t2i_R@1": 1.4}}
    print(f"MEM-3 hacker clean-test R@1 i2t {final['i2t_R@1']:.1f} / t2i {final['t2i_R@1']:.1f} (README: 4.5 / 1.4); "
          f"protect {protect_seconds:.0f} s, hacker {arm.seconds:.0f} s")
    write_result("demo_mem3_row", payload, args.out)


if __name__ == "__main__":
    main()
