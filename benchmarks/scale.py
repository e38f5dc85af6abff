"""Scale-out of MEM: rows per second of one round and peak RAM per process, with 1 and 2 processes (torchrun).

    python benchmarks/scale.py                                  # 20k and 100k rows, 1 and 2 processes
    python benchmarks/scale.py --rows 500 --surrogate-steps 2   # a quick check that it runs

Synthetic 64 px shapes (5 captions per image) are written as PNGs once per size and read through
the memory-mapped image cache; each run is `torchrun --standalone --nproc-per-node N -m mem_toolkit
protect` for one MEM round (image-wise noise, a trigger step, a noise step) with small step counts.
Per run: seconds per stage and rows per second (from the protection's diagnostics, rank 0's clock),
and each worker's peak VmRSS and RssAnon sampled from /proc (memory maps count in VmRSS, not in
RssAnon: RssAnon should stay flat in the data size, VmRSS grows by the noise map and image cache
pages touched). Measure on a machine with nothing else running, or the speed-up means nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, _status_kib, machine, write_result  # noqa: E402

from mem_toolkit.data.shapes import make_shapes  # noqa: E402
from mem_toolkit.data.writer import write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class WorkerMemory:
    """Peak VmRSS / RssAnon of every child of a launcher process (torchrun's workers), sampled while it runs."""

    def __init__(self, launcher: int, interval: float = 0.1) -> None:
        self.launcher = launcher
        self.interval = interval
        self.peaks: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.launcher:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._children():
                try:
                    rss, anon = _status_kib("VmRSS", pid) / 1024, _status_kib("RssAnon", pid) / 1024
                except OSError:
                    continue
                peak = self.peaks.setdefault(pid, {"peak_rss_mib": 0.0, "peak_anon_mib": 0.0})
                peak["peak_rss_mib"] = max(peak["peak_rss_mib"], rss)
                peak["peak_anon_mib"] = max(peak["peak_anon_mib"], anon)
            time.sleep(self.interval)

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def dataset_folder(rows: int, work: Path) -> Path:
    """PNGs + train.csv of `rows` rows (rows / 5 images), written once and reused."""
    folder = work / f"rows{rows}"
    if not (folder / "train.csv").exists():
        write_dataset(make_shapes(rows // 5, 64, seed=1), folder, "train.csv", progress=False)
    return folder


def protect_once(folder: Path, processes: int, settings: list[str], out: Path) -> dict:
    """One MEM round under torchrun with `processes` workers: stage seconds, rows/s, peak memory per worker."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), "-m", "mem_toolkit",
               "--threads", "1", "protect", "--method", "mem", "--trigger-len", "3", "--rounds", "1", "--trigger-rounds", "1",
               "--granularity", "image", *settings, "--train-csv", str(folder / "train.csv"), "--cache-dir", str(folder / "cache"),
               "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with WorkerMemory(launcher.pid) as memory:
        _, stderr = launcher.communicate()
    wall = time.perf_counter() - started
    if launcher.returncode != 0:
        raise RuntimeError(f"torchrun exited {launcher.returncode}:\n{stderr[-3000:]}")
    info = json.loads((out / "protection.json").read_text())
    rows = len(np.load(out / "unit_of_row.npy"))
    record = info["diagnostics"][0]
    stages = {stage: record.get(f"{stage}_seconds", 0.0) for stage in ("surrogate", "trigger", "noise")}
    round_seconds = sum(stages.values())
    return {"processes": processes, "rows": rows, "stage_seconds": stages, "round_seconds": round_seconds,
            "rows_per_second": rows / round_seconds, "sweep_rows_per_second": rows / (stages["trigger"] + stages["noise"]),
            "wall_seconds_with_startup": wall, "noise_map_mib": (out / "noise.npy").stat().st_size / 2**20,
            "workers": sorted(memory.peaks.values(), key=lambda p: -p["peak_rss_mib"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20000, 100000], help="dataset sizes in rows (5 per image)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--surrogate-steps", type=int, default=5)
    parser.add_argument("--pgd-steps", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--work", default=str(RESULTS / "scale-work"), help="folder for the generated data and protections")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/scale.json)")
    args = parser.parse_args()
    settings = ["--surrogate-steps", str(args.surrogate_steps), "--pgd-steps", str(args.pgd_steps), "--candidates", str(args.candidates),
                "--batch-size", str(args.batch_size), "--trigger-vocab-size", "24"]
    work = Path(args.work)
    payload: dict = {"machine": machine(), "settings": settings, "by_size": {}}
    for rows in args.rows:
        folder = dataset_folder(rows, work)
        runs = {str(n): protect_once(folder, n, settings, work / f"prot-rows{rows}-n{n}") for n in args.processes}
        entry: dict = {"runs": runs}
        if "1" in runs:
            entry["speedup"] = {n: runs["1"]["round_seconds"] / run["round_seconds"] for n, run in runs.items() if n != "1"}
        payload["by_size"][str(rows)] = entry
        print(json.dumps({rows: {n: (round(r["rows_per_second"], 1), round(max(w["peak_anon_mib"] for w in r["workers"]), 1))
                                 for n, r in runs.items()}}))
    write_result("scale", payload, args.out)


if __name__ == "__main__":
    main()
