"""The main job: protect the embedded synthetic data with UAP, EM, MEM-3 and MEM-5, hack it, and tabulate.

Every MEM-3 result is reported beside its controls: its triggers without its noise, its noise
without its triggers, a free random-ID trigger, and a hacker that strips the first k caption
tokens. All stages are cached in the output folder, so an interrupted demo resumes.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..atomic import write_json
from ..data.shapes import make_shapes_split
from ..experiment import ArmResult, protect_cached, random_guess, results_table
from ..protect import EM, MEM, UAP, Protection, StrippedView, random_id_protection
from ..text import CaptionTokenizer
from ..train import TrainConfig
from .grid import Hacker, resolve_preset, run_grid


@dataclass(frozen=True)
class DemoPreset:
    """Data size, hacker budget and protection budgets of one demo setting."""

    n_train: int
    n_test: int
    difficulty: str
    hacker_epochs: int
    hacker_batch_size: int = 128
    hacker_lr: float = 5e-4
    hacker_model: str = "mem-tiny-rn"
    image_size: int = 64
    uap: dict = field(default_factory=dict)
    em: dict = field(default_factory=dict)
    mem: dict = field(default_factory=dict)
    seed: int = 0

    def hacker_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.hacker_epochs, batch_size=self.hacker_batch_size, lr=self.hacker_lr, seed=self.seed + 1)


# MEM settings tuned on the embedded shapes (see README, "Protection strength"): image-wise noise, a 24-token
# trigger vocabulary, and a short-lived surrogate restarted every round at a higher learning rate.
_TUNED_MEM = dict(granularity="image", trigger_vocab_size=24, surrogate_reset=1, surrogate_lr=5e-4, surrogate_steps=20, pgd_steps=5,
                  trigger_rounds=2, candidates=8)

PRESETS: dict[str, DemoPreset] = {
    # about 10 minutes on 2 CPU cores: the whole table at a small budget
    "quick": DemoPreset(
        n_train=800, n_test=200, difficulty="default", hacker_epochs=4, hacker_batch_size=64,
        uap=dict(surrogate_epochs=1, pgd_steps=5, step_size=2),
        em=dict(rounds=2, surrogate_steps=20, pgd_steps=5, granularity="row"),
        mem=dict(_TUNED_MEM, rounds=3),
    ),
    # up to an hour on 2 CPU cores: harder content (where shortcuts win, as on real photos) and a larger budget
    "full": DemoPreset(
        n_train=1000, n_test=200, difficulty="hard", hacker_epochs=8,
        uap=dict(surrogate_epochs=4, pgd_steps=8),
        em=dict(rounds=5, surrogate_steps=50, pgd_steps=8, granularity="row"),
        mem=dict(_TUNED_MEM, rounds=10),
    ),
}

METHOD_ORDER = ["clean", "uap", "em", "mem-3", "mem-5", "mem-3-trigger-only", "mem-3-noise-only", "random-id-trigger", "mem-3-stripped"]


def run_demo(out_dir: str | os.PathLike, preset: str | DemoPreset = "quick", progress: bool = True, device: str = "auto") -> dict:
    """Run the whole demo into `out_dir` (results.json, results.md, figures); returns the results dict.

    Under torchrun every process runs it: protections and hackers are distributed, rank 0 writes the results.
    """
    preset = resolve_preset(preset, PRESETS, "demo")
    progress = progress and distributed.is_main()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    clock = time.perf_counter()
    train, test = make_shapes_split(preset.n_train, preset.n_test, preset.image_size, preset.seed, preset.difficulty)
    stages["data"] = time.perf_counter() - clock

    protectors = {
        "uap": UAP(device=device, seed=preset.seed, **preset.uap),
        "em": EM(device=device, seed=preset.seed, **preset.em),
        "mem-3": MEM(3, device=device, seed=preset.seed, **preset.mem),
        "mem-5": MEM(5, device=device, seed=preset.seed, **preset.mem),
    }
    protections = {}
    for name, protector in protectors.items():
        clock = time.perf_counter()
        protections[name] = protect_cached(protector, train, out / "protections" / name, progress)
        stages[f"protect {name}"] = time.perf_counter() - clock
    mem3 = protections["mem-3"]
    random_id = random_id_protection(train, 3, seed=preset.seed, vocab_size=preset.mem.get("trigger_vocab_size", 0))

    arms = {
        "clean": train,
        "uap": protections["uap"].apply(train),
        "em": protections["em"].apply(train),
        "mem-3": mem3.apply(train),
        "mem-5": protections["mem-5"].apply(train),
        "mem-3-trigger-only": mem3.apply(train, noise=False),
        "mem-3-noise-only": mem3.apply(train, trigger=False),
        "random-id-trigger": random_id.apply(train),
    }
    hacker = Hacker(preset.hacker_model, preset.hacker_config())
    stripped = StrippedView(mem3.apply(train), 3)
    stripping_is_noise_only = _same_training_data(stripped, arms["mem-3-noise-only"], train, hacker.config.batch_size)
    if not stripping_is_noise_only:
        arms["mem-3-stripped"] = stripped
    grid = run_grid(arms, test, [hacker], out, device=device, progress=progress)
    results: dict[str, ArmResult] = {name: runs[0] for name, runs in grid.runs[hacker.label].items()}
    if stripping_is_noise_only:
        results["mem-3-stripped"] = ArmResult("mem-3-stripped", results["mem-3-noise-only"].history, 0.0,
                                              note="stripping the 3 trigger tokens gives exactly the noise-only training data (checked token by token)")
    stages |= {f"hacker {name}": result.seconds for name, result in results.items()}
    return distributed.main_only(lambda: _write_results(out, preset, results, protections, train, test, stages))


def _same_training_data(a, b, dataset, batch_size: int) -> bool:
    """Whether two training views give identical pixels and tokens for every row."""
    tokenizer = CaptionTokenizer()
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        if not torch.equal(a.token_batch(rows, tokenizer, 77), b.token_batch(rows, tokenizer, 77)):
            return False
        if not torch.equal(a.image_batch(rows), b.image_batch(rows)):
            return False
    return True


def _write_results(out: Path, preset: DemoPreset, results: dict[str, ArmResult], protections: dict[str, Protection], train, test,
                   stages) -> dict:
    finals = {name: results[name].final for name in METHOD_ORDER if name in results}
    table = results_table(finals, test, f"Hacker {preset.hacker_model} trained from scratch for {preset.hacker_epochs} epochs; clean test set "
                                        f"({test.n_images} images, {len(test)} captions)")
    checks = ordering_checks(finals)
    payload = {
        "preset": asdict(preset),
        "methods": {name: {"final": results[name].final, "history": results[name].history.to_dict(), "seconds": results[name].seconds,
                           "note": results[name].note} for name in finals},
        "protections": {name: {"diagnostics": p.diagnostics, "config": p.config, "example_triggers": p.trigger_words()[:10]}
                        for name, p in protections.items()},
        "stage_seconds": stages,
        "checks": checks,
        "table": table,
    }
    payload["figures"] = _write_figures(out, results, protections, train, test)
    write_json(out / "results.json", payload)
    notes = [f"- {name}: {results[name].note}" for name in finals if results[name].note]
    timing = "\n".join(f"| {stage} | {seconds:.0f} |" for stage, seconds in stages.items())
    check_lines = "\n".join(f"- {text}: {'yes' if ok else 'NO'}" for text, ok in checks.items())
    (out / "results.md").write_text(f"{table}\n\n{chr(10).join(notes)}\n\n**Checks**\n\n{check_lines}\n\n"
                                    f"**Time per stage (seconds)**\n\n| stage | seconds |\n|---|---:|\n{timing}\n")
    return payload


def _write_figures(out: Path, results: dict[str, ArmResult], protections: dict[str, Protection], train, test) -> list[str]:
    """Loss and retrieval curves of every hacker, and examples of each protection (clean, protected, noise, caption)."""
    from matplotlib import pyplot as plt

    from ..plots import plot_curves, plot_protection

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    runs = {name: result.history for name, result in results.items() if not result.note}
    written = [figures / "curves.png", figures / "curves.pdf"]
    for path in written:
        plt.close(plot_curves(runs, metrics=("t2i_MedR", "i2t_R@10", "t2i_R@10"), loss="epoch", random=random_guess(test), save=path))
    for name, protection in protections.items():
        path = figures / f"examples_{name}.png"
        plt.close(plot_protection(protection, train, rows=4, save=path))
        written.append(path)
    return [str(p) for p in written]


def ordering_checks(finals: dict[str, dict]) -> dict[str, bool]:
    """The paper's ordering by clean-test R@1 (lower is stronger), in both directions."""
    checks = {}
    for direction in ("i2t", "t2i"):
        r1 = {name: finals[name][f"{direction}_R@1"] for name in finals}
        checks[f"{direction}: MEM-3 < EM < UAP < clean (R@1)"] = r1["mem-3"] < r1["em"] < r1["uap"] < r1["clean"]
        checks[f"{direction}: MEM-5 <= MEM-3 + 2 points (R@1)"] = r1["mem-5"] <= r1["mem-3"] + 2
        checks[f"{direction}: clean R@10 >= 50 %"] = finals["clean"][f"{direction}_R@10"] >= 50
    return checks
