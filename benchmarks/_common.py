"""Helpers shared by the benchmark scripts: machine facts, memory sampling, JSON output."""
from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

import torch

from mem_toolkit.train import native_bf16

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the figures were measured on."""
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
            "bf16_native_cpu": native_bf16("cpu")}  # without it, amp (the "bf16" variants) runs in fp32


def _status_kib(field: str, pid: int | str = "self") -> int:
    """One `kB` field of /proc/PID/status (0 if absent)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Peak resident memory while a block runs: all of it (VmRSS) and the anonymous part (RssAnon).

    RssAnon is what the process really needs; file-backed pages of memory maps count in VmRSS but
    the kernel can drop them at any time.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss_mib = 0.0
        self.peak_anon_mib = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mib = max(self.peak_rss_mib, _status_kib("VmRSS") / 1024)
            self.peak_anon_mib = max(self.peak_anon_mib, _status_kib("RssAnon") / 1024)
            time.sleep(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_result(name: str, payload: dict, out: str | None = None) -> Path:
    """Write benchmark JSON to `out` or benchmarks/results/<name>.json and print where."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
