"""MEM's per-batch stages timed side by side: the official compute pattern against mem_toolkit, and a whole run's cost.

    python benchmarks/protection_speed.py --quick                         # mem-tiny-rn, 1 repetition
    python benchmarks/protection_speed.py --models mem-tiny-rn RN50 --reps 3
    python benchmarks/protection_speed.py --quick --ablation              # + mem_toolkit with one speed option off at a time

Same model, weights, batch, triggers and noise for every implementation; the stages (surrogate step,
HotFlip, PGD) are interleaved, the order of the implementations rotating every repetition; one torch
thread by default; medians over the repetitions. A 20-round run is extrapolated from the medians with
the official defaults (N = 1,000 rows, 200 surrogate steps per round, HotFlip in the first 5 rounds
over every batch, 8 PGD steps over every batch). mem_toolkit's HotFlip always scores in fp32, so one
HotFlip timing serves both precisions. JSON in benchmarks/results/protection_speed.json.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from open_clip.modified_resnet import ModifiedResNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_pattern as official  # noqa: E402
from _common import machine, write_result  # noqa: E402

from mem_toolkit.data.shapes import make_shapes  # noqa: E402
from mem_toolkit.models import ClipModel, create_model, pooled_length  # noqa: E402
from mem_toolkit.protect.artifact import Protection  # noqa: E402
from mem_toolkit.protect.hotflip import hotflip_step  # noqa: E402
from mem_toolkit.protect.pgd import pgd_noise  # noqa: E402
from mem_toolkit.protect.vocabulary import allowed_trigger_tokens  # noqa: E402
from mem_toolkit.train import adamw, contrastive_step, parameter_groups  # noqa: E402

MODELS = {"mem-tiny-rn": dict(image_size=64, batch=128), "RN50": dict(image_size=224, batch=8)}
RUN = dict(rows=1000, rounds=20, surrogate_steps=200, trigger_rounds=5)
STAGES = ("surrogate", "hotflip", "pgd")
TRIGGER_LEN, CANDIDATES, PGD_STEPS, EPS = 3, 16, 8, 8


@dataclass(frozen=True)
class Variant:
    """One way mem_toolkit runs: precision and the speed options (all on by default)."""

    name: str
    amp: bool
    trim: bool = True
    pooled_last_block: bool = True
    pooled_attention_pool: bool = True
    fold_batch_norm: bool = True
    channels_last: bool = True
    fused: bool = True

    @property
    def hotflip_options(self) -> tuple[bool, ...]:
        """The options mem_toolkit's HotFlip depends on (it scores in fp32 and trains nothing)."""
        return self.trim, self.pooled_last_block, self.pooled_attention_pool, self.channels_last


MAIN = [Variant("mem_toolkit_bf16", amp=True), Variant("mem_toolkit_fp32", amp=False)]
ABLATION = [Variant(f"mem_toolkit_{p}_no_{o}", amp=p == "bf16", **{o: False}) for p in ("bf16", "fp32") for o in ("trim", "pooled_last_block", "pooled_attention_pool", "fold_batch_norm", "channels_last", "fused")]


class Bench:
    """The shared batch and the models of every implementation, all from the same starting weights."""

    def __init__(self, name: str, image_size: int, batch: int, device: torch.device) -> None:
        self.dataset = make_shapes(math.ceil(batch / 5), image_size, seed=0).preload(progress=False)
        self.rows = np.arange(batch)
        base = create_model(name, seed=0, image_size=image_size, device=device)
        tokenizer = base.tokenizer
        self.caption_ids = [self.dataset.caption_token_ids(tokenizer)[r] for r in self.rows]
        self.allowed = torch.from_numpy(allowed_trigger_tokens(self.dataset, tokenizer)).to(device)
        rng = np.random.default_rng(0)
        n_rows = len(self.dataset)
        triggers = rng.choice(self.allowed.cpu().numpy(), size=(n_rows, TRIGGER_LEN))
        pixels = self.dataset.images(self.dataset.group_ids).astype(np.int16)
        noise = np.clip(rng.integers(-EPS, EPS + 1, pixels.shape), -pixels, 255 - pixels).astype(np.int8)
        protection = Protection("mem-3", noise, triggers, np.arange(n_rows), EPS, image_size, self.dataset.fingerprint(), {})
        self.view = protection.apply(self.dataset)  # what the surrogate trains on
        self.image_view = protection.apply(self.dataset, trigger=False)  # what HotFlip's image features see
        self.triggers = torch.from_numpy(triggers[self.rows])
        self.noise = torch.from_numpy(noise[self.rows]).permute(0, 3, 1, 2).to(torch.int16)
        self.text_length = {"context": base.context_length,
                            "pooled": pooled_length(self.view.token_batch(self.rows, tokenizer, base.context_length))}
        self.official_frozen = official.official_model(base)
        self.official_train = official.official_model(base)
        self.official_optimizer = official.official_optimizer(self.official_train)
        self.mem_frozen = base
        self.mem_train = copy.deepcopy(base)
        settings = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-6)  # the official surrogate optimizer, as `Protector` builds it
        self.mem_optimizers = {True: adamw(self.mem_train, 0.2, **settings),
                               False: torch.optim.AdamW(parameter_groups(self.mem_train, 0.2), foreach=False, **settings)}

    def frozen(self, variant: Variant) -> ClipModel:
        """The never-trained model (HotFlip, PGD) with the variant's options."""
        return _configured(self.mem_frozen, variant)

    def trained(self, variant: Variant) -> tuple[ClipModel, torch.optim.Optimizer]:
        """The surrogate model and the variant's optimizer (surrogate steps move its weights; timing does not care)."""
        return _configured(self.mem_train, variant), self.mem_optimizers[variant.fused]

    # -- the stages ------------------------------------------------------------------------------
    def official_surrogate(self) -> dict:
        tokenizer = self.official_train.tokenizer
        pixels = self.view.image_batch(self.rows)
        tokens = self.view.token_batch(self.rows, tokenizer, self.official_train.context_length)
        return {"loss": official.surrogate_step(self.official_train, self.official_optimizer, pixels.to(self.device), tokens)}

    def official_hotflip(self) -> dict:
        pixels = self.image_view.image_batch(self.rows).to(self.device)
        _, before, after = official.hotflip(self.official_frozen, pixels, self.caption_ids, self.triggers, self.allowed, CANDIDATES)
        return {"loss_before": before, "loss_after": after}

    def official_pgd(self) -> dict:
        pixels = self.dataset.image_batch(self.rows).to(self.device)
        _, losses = official.pgd(self.official_frozen, pixels, self.noise.float().to(self.device), self.caption_ids, self.triggers,
                                 np.random.default_rng(1), EPS, PGD_STEPS)
        return {"loss_first": losses[0], "loss_last": losses[-1]}

    def mem_surrogate(self, variant: Variant) -> dict:
        model, optimizer = self.trained(variant)
        model.train()
        return {"loss": contrastive_step(model, optimizer, self.view, self.rows, variant.amp)}

    def mem_hotflip(self, variant: Variant) -> dict:
        """What `Protector._trigger_step` does per batch: image features once, then `hotflip_step` (one trigger per row)."""
        model = self.frozen(variant)
        with torch.no_grad():
            image_features = model.eval().encode_image(self.image_view.image_batch(self.rows).to(self.device)).float()
        result = hotflip_step(model, image_features, self.caption_ids, self.triggers, torch.arange(len(self.rows)), self.allowed,
                              candidates=CANDIDATES)
        return {"loss_before": result.loss_before, "loss_after": result.loss_after}

    def mem_pgd(self, variant: Variant) -> dict:
        """What `Protector._noise_step` does per batch: `pgd_noise` with the captions re-shuffled every step. In fp32
        the batch-norm fold, made once per sweep there, is counted in every batch here (RN50: 0.15-0.2 s of 17 s)."""
        model = self.frozen(variant)
        rng = np.random.default_rng(1)

        def tokens_for_step(_step: int) -> torch.Tensor:
            order = rng.permutation(len(self.rows))
            return model.tokenizer.assemble([self.caption_ids[i] for i in order], model.context_length, prefix=self.triggers.numpy())

        _, losses = pgd_noise(model, self.dataset.image_batch(self.rows), self.noise, torch.arange(len(self.rows)), tokens_for_step,
                              eps=EPS, steps=PGD_STEPS, amp=variant.amp)
        return {"loss_first": losses[0], "loss_last": losses[-1]}

    @property
    def device(self) -> torch.device:
        return self.official_frozen.device


def _configured(model: ClipModel, variant: Variant) -> ClipModel:
    """`model` with the variant's text trimming, attention pool, batch-norm folding and image layout switched on or off."""
    model.trim_text = variant.trim
    model.pooled_last_block = variant.pooled_last_block
    model.pooled_attention_pool = variant.pooled_attention_pool
    model.fold_batch_norm = variant.fold_batch_norm
    model.channels_last = variant.channels_last and isinstance(model.clip.visual, ModifiedResNet)
    return model


def _timed(call: Callable[[], dict], device: torch.device) -> tuple[float, dict]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    info = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, info


def per_run(seconds: dict[str, float], batch: int) -> dict:
    """A 20-round MEM run on N rows extrapolated from per-batch stage times, and each stage's share of it."""
    batches = RUN["rows"] / batch
    parts = {"surrogate": RUN["rounds"] * RUN["surrogate_steps"] * seconds["surrogate"],
             "hotflip": RUN["trigger_rounds"] * batches * seconds["hotflip"],
             "pgd": RUN["rounds"] * batches * seconds["pgd"]}
    total = sum(parts.values())
    trigger_round = RUN["surrogate_steps"] * seconds["surrogate"] + batches * (seconds["hotflip"] + seconds["pgd"])
    return {"seconds": total, "share": {k: v / total for k, v in parts.items()},
            "hotflip_share_of_a_trigger_round": batches * seconds["hotflip"] / trigger_round}


def bench_model(name: str, image_size: int, batch: int, reps: int, variants: list[Variant], device: torch.device, log) -> dict:
    """Interleaved timings of every stage of every implementation on one model, with medians and run estimates."""
    started = time.perf_counter()
    load_before = os.getloadavg()
    bench = Bench(name, image_size, batch, device)
    impls: dict[str, dict[str, Callable[[], dict]]] = {"official": {"surrogate": bench.official_surrogate, "hotflip": bench.official_hotflip,
                                                                    "pgd": bench.official_pgd}}
    hotflip_of: dict[tuple[bool, ...], str] = {}  # mem_toolkit's HotFlip does not depend on precision or optimizer
    for v in variants:
        impls[v.name] = {"surrogate": lambda v=v: bench.mem_surrogate(v), "pgd": lambda v=v: bench.mem_pgd(v)}
        if v.hotflip_options not in hotflip_of:
            hotflip_of[v.hotflip_options] = v.name
            impls[v.name]["hotflip"] = lambda v=v: bench.mem_hotflip(v)
    for impl in impls.values():  # warm-up: first-call allocations and kernel selection
        impl["surrogate"]()
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in impl} for n, impl in impls.items()}
    infos: dict[str, dict[str, list[dict]]] = {n: {s: [] for s in impl} for n, impl in impls.items()}
    names = list(impls)
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for stage in STAGES:
            for impl_name in order:
                if stage not in impls[impl_name]:
                    continue
                seconds, info = _timed(impls[impl_name][stage], bench.device)
                times[impl_name][stage].append(seconds)
                infos[impl_name][stage].append(info)
                log(f"{name} rep {rep + 1}/{reps} {stage:9s} {impl_name:32s} {seconds:8.3f} s  load {os.getloadavg()[0]:.2f}")
    for v in variants:  # HotFlip shared across precisions / optimizers
        source = hotflip_of[v.hotflip_options]
        times[v.name]["hotflip"], infos[v.name]["hotflip"] = times[source]["hotflip"], infos[source]["hotflip"]
    medians = {n: {s: statistics.median(t) for s, t in stages.items()} for n, stages in times.items()}
    runs = {n: per_run(m, batch) for n, m in medians.items()}
    speedup = {n: {**{s: medians["official"][s] / medians[n][s] for s in STAGES}, "run": runs["official"]["seconds"] / runs[n]["seconds"]}
               for n in medians if n != "official"}
    hotflip_losses = {n: infos[n]["hotflip"] for n in ("official", *hotflip_of.values())}
    never_raises = all(i["loss_after"] <= i["loss_before"] + 1e-6 for entries in hotflip_losses.values() for i in entries)
    return {"model": name, "image_size": image_size, "batch": batch, "reps": reps, "device": str(device), "text_length": bench.text_length,
            "variants": [asdict(v) for v in variants], "seconds": times, "median_seconds": medians, "per_run": runs,
            "speedup_vs_official": speedup, "hotflip_losses": hotflip_losses, "hotflip_never_raises_the_loss": never_raises,
            "stage_info": {n: {s: infos[n][s] for s in ("surrogate", "pgd")} for n in infos},
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "wall_seconds": time.perf_counter() - started}


def summary(result: dict) -> str:
    """Median seconds per batch and the run estimate, one line per implementation."""
    lines = [f"{result['model']} {result['image_size']} px, batch {result['batch']}, {result['reps']} reps, text {result['text_length']}"]
    for name, medians in result["median_seconds"].items():
        speed = result["speedup_vs_official"].get(name)
        ratio = "" if speed is None else "  x" + " x".join(f"{speed[s]:.2f}" for s in (*STAGES, "run"))
        lines.append(f"  {name:32s} " + " ".join(f"{s} {medians[s]:7.3f}" for s in STAGES)
                     + f"  run {result['per_run'][name]['seconds'] / 3600:7.2f} h  hotflip/trigger-round "
                     f"{result['per_run'][name]['hotflip_share_of_a_trigger_round']:.0%}{ratio}")
    lines.append(f"  HotFlip never raises the loss: {result['hotflip_never_raises_the_loss']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every stage (medians are reported)")
    parser.add_argument("--batch", type=int, help="batch size (default: 128 for mem-tiny-rn, 8 for RN50)")
    parser.add_argument("--precision", choices=["both", "bf16", "fp32"], default="both", help="mem_toolkit precisions to time")
    parser.add_argument("--ablation", action="store_true", help="also time mem_toolkit with each speed option off")
    parser.add_argument("--quick", action="store_true", help="mem-tiny-rn only, 1 repetition")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/protection_speed.json)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.reps = ["mem-tiny-rn"], 1
    torch.set_num_threads(args.threads)
    variants = [v for v in MAIN + (ABLATION if args.ablation else []) if args.precision == "both" or v.name.find(args.precision) >= 0]
    payload = {"machine": machine(), "run": RUN, "settings": {"trigger_len": TRIGGER_LEN, "candidates": CANDIDATES, "pgd_steps": PGD_STEPS,
                                                              "eps": EPS, "threads": args.threads}, "results": {}}
    for name in args.models:
        settings = MODELS[name] | ({"batch": args.batch} if args.batch else {})
        result = bench_model(name, settings["image_size"], settings["batch"], args.reps, variants, torch.device(args.device),
                             lambda line: print(line, flush=True))
        payload["results"][name] = result
        print(summary(result), flush=True)
        write_result("protection_speed", payload, args.out)  # after every model, so a long run keeps what it measured


if __name__ == "__main__":
    main()
