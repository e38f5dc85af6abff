"""Real-photo efficacy: protect the train split of a real photo-caption set, publish it, and hack the published files.

Fresh hackers (several architectures x seeds, from scratch) train on files a hacker could download:
clean, MEM-k as exported, its triggers on the clean photos (trigger only), its photos with the
original captions (noise only = the trigger stripped) and one random k-word trigger per photo (the
free baseline); each is scored on the clean test photos. Mean and spread over seeds, JSON out.

`--eval validation` holds a fifth of the train photos out as the test set, for choosing settings;
`--eval test` uses the fixed test split and is for reporting only (never tune on it). `--defences` also
hacks every arm after each named defence (JPEG, blur, crops, ...), as a hacker who expects protection would.

    python benchmarks/real_photos.py --eval validation --preset photos --seeds 0 1
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from mem_toolkit.data import load_caption_csv  # noqa: E402
from mem_toolkit.defences import apply_defence, defended_config, get_defence  # noqa: E402
from mem_toolkit.errors import DefenceError  # noqa: E402
from mem_toolkit.experiment import learnability_cached, protect_cached, random_guess, run_arm  # noqa: E402
from mem_toolkit.models import create_model  # noqa: E402
from mem_toolkit.pretrain import pretrain_clip  # noqa: E402
from mem_toolkit.data.writer import write_caption_csv  # noqa: E402
from mem_toolkit.protect import MEM, random_id_protection  # noqa: E402
from mem_toolkit.protect.controls import write_control_sets  # noqa: E402
from mem_toolkit.protect.settings import parse_settings  # noqa: E402
from mem_toolkit.train import TrainConfig  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vi_photos_dev"
METRICS = [f"{d}_{m}" for d in ("i2t", "t2i") for m in ("R@1", "R@5", "R@10", "MedR")]


def split_for_evaluation(data: Path, mode: str, image_size: int, seed: int):
    """(train, test) datasets: the fixed split, or the train split with a seeded fifth of its photos held out."""
    train = load_caption_csv(data / "train.csv", image_size).preload(progress=False)
    if mode == "test":
        return train, load_caption_csv(data / "test.csv", image_size).preload(progress=False)
    order = np.random.default_rng([seed, 2024]).permutation(train.n_images)
    held = len(order) // 5
    return train.select_images(np.sort(order[held:])), train.select_images(np.sort(order[:held]))


def hack(job: dict) -> dict:
    """One fresh hacker on one arm's CSV (run in a worker process with one torch thread)."""
    torch.set_num_threads(job["threads"])
    train = load_caption_csv(job["csv"], job["image_size"]).preload(progress=False)
    test = load_caption_csv(job["test_csv"], job["image_size"]).preload(progress=False)
    config = TrainConfig(epochs=job["epochs"], batch_size=job["batch_size"], seed=job["seed"] + 1)
    if job["defence"]:
        config = defended_config(job["defence"], config)
    result = run_arm(job["arm"], train, test, config, Path(job["out"]) / job["hacker"] / f"seed{job['seed']}", job["hacker"], progress=False)
    return {"arm": job["arm"], "hacker": job["hacker"], "seed": job["seed"], "final": result.final, "seconds": result.seconds,
            "final_loss": result.final["loss"]}


def summarise(runs: list[dict]) -> dict:
    """Mean, standard deviation, min and max over seeds of every metric, per hacker and arm."""
    table: dict = {}
    for run in runs:
        table.setdefault(run["hacker"], {}).setdefault(run["arm"], []).append(run["final"])
    return {hacker: {arm: {m: {"mean": float(np.mean([f[m] for f in finals])), "std": float(np.std([f[m] for f in finals])),
                               "min": float(np.min([f[m] for f in finals])), "max": float(np.max([f[m] for f in finals])),
                               "values": [f[m] for f in finals]} for m in METRICS + ["loss"]}
                     for arm, finals in arms.items()} for hacker, arms in table.items()}


def defended_arms(arms: dict[str, Path], defences: list[str], out: Path) -> dict[str, tuple[Path, str | None]]:
    """Each arm's CSV with its hacker's defence (None), and every arm after each defence as `arm+defence`: a defence of
    the files is applied to a copy of them, a training defence only changes that hacker's settings."""
    jobs: dict[str, tuple[Path, str | None]] = {name: (path, None) for name, path in arms.items()}
    for defence in defences:
        training = get_defence(defence).kind == "training"
        for name, path in arms.items():
            defended = path if training else apply_defence(defence, path, out / "defended" / defence / name, progress=False)
            jobs[f"{name}+{defence}"] = (defended, defence if training else None)
    return jobs


def targets(summary: dict, k: int, random: dict) -> dict[str, dict]:
    """The real-photo issue's targets on mean R@10, both directions, per hacker: met or not, the figure and its bound.

    The random-guess R@10 is kept beside each bound: where a weak clean hacker puts half of clean at the level of
    guessing, the target asks for retrieval no better than chance, which seed noise decides either way."""
    checks = {}
    for hacker, arms in summary.items():
        for d in ("i2t", "t2i"):
            r10 = {arm: arms[arm][f"{d}_R@10"]["mean"] for arm in arms}
            bounds = {f"MEM-{k} R@10 <= 1/2 clean": (f"mem-{k}", r10["clean"] / 2, False),
                      "noise only R@10 <= 2/3 clean": (f"mem-{k}-noise-only", r10["clean"] * 2 / 3, False),
                      f"MEM-{k} R@10 < random-ID trigger": (f"mem-{k}", r10["random-id-trigger"], True)}
            for name, (arm, bound, strict) in bounds.items():
                met = r10[arm] < bound if strict else r10[arm] <= bound
                checks[f"{hacker} {d}: {name}"] = {"met": bool(met), "value": r10[arm], "bound": bound, "random_guess": random[f"{d}_R@10"]}
    return checks


def markdown(summary: dict, random: dict) -> str:
    lines = []
    for hacker, arms in summary.items():
        lines += [f"**{hacker}** (mean ± sd over seeds)", "", "| arm | i2t R@1 | i2t R@10 | i2t MedR | t2i R@1 | t2i R@10 | t2i MedR |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for arm, metrics in arms.items():
            cells = [f"{metrics[m]['mean']:.1f} ± {metrics[m]['std']:.1f}" for m in
                     ("i2t_R@1", "i2t_R@10", "i2t_MedR", "t2i_R@1", "t2i_R@10", "t2i_MedR")]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("| random guess | " + " | ".join(f"{random[m]:.1f}" for m in
                                                       ("i2t_R@1", "i2t_R@10", "i2t_MedR", "t2i_R@1", "t2i_R@10", "t2i_MedR")) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--eval", choices=("validation", "test"), default="validation")
    parser.add_argument("--preset", default="photos", help="MEM preset")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="MEM settings over the preset")
    parser.add_argument("--trigger-len", type=int, default=3)
    parser.add_argument("--hackers", nargs="+", default=["mem-tiny-rn", "mem-tiny-vit"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--arms", nargs="*", help="only these arms (default: all)")
    parser.add_argument("--defences", nargs="*", default=[], metavar="NAME",
                        help="also hack every arm after each of these defences (mem-toolkit defend --help lists them), as ARM+NAME")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2, help="hackers trained at once")
    parser.add_argument("--threads", type=int, help="torch threads per job (default: 2 for one job, else 1)")
    parser.add_argument("--surrogate-pretrain-on", type=Path, metavar="CSV",
                        help="start the surrogate (and every restart of it) from weights trained on these other photos (image,caption CSV)")
    parser.add_argument("--surrogate-pretrain-epochs", type=int, default=15)
    parser.add_argument("--check-epochs", type=int, default=3,
                        help="the protect command's learnability check, per hacker architecture and --seeds, on the protected train photos (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("runs/real_photos"))
    parser.add_argument("--json", help="result file (default benchmarks/results/real_photos_<eval>.json)")
    args = parser.parse_args()
    if not (args.data / "train.csv").exists():
        raise SystemExit(f"error: {args.data}/train.csv not found (the real photos live in ../shared/data/vi_photos_dev)")
    for defence in args.defences:
        try:
            chosen = get_defence(defence)
        except DefenceError as error:
            raise SystemExit(f"error: --defences: {error}")
        if chosen.kind == "data" or "vocabulary" in chosen.inputs:
            raise SystemExit(f"error: --defences: {defence} needs inputs of its own (clean images or a vocabulary); use mem-toolkit robustness")
    threads = args.threads or (2 if args.jobs == 1 else 1)
    torch.set_num_threads(threads)
    try:
        settings = parse_settings(args.set)
    except ValueError as error:
        raise SystemExit(f"error: --set: {error}")
    started = time.perf_counter()
    train, test = split_for_evaluation(args.data, args.eval, args.image_size, seed=0)
    k = args.trigger_len
    protector = MEM(k, preset=args.preset, **settings)
    out = args.out / args.eval
    clock = time.perf_counter()
    surrogate = None
    if args.surrogate_pretrain_on:
        other = load_caption_csv(args.surrogate_pretrain_on, args.image_size).preload(progress=False)
        weights = pretrain_clip(protector.config.surrogate_model, other, None,
                                TrainConfig(epochs=args.surrogate_pretrain_epochs, batch_size=args.batch_size, seed=protector.config.seed),
                                out / "surrogate_pretraining" / f"{other.fingerprint()[:8]}-{args.surrogate_pretrain_epochs}e", progress=True)
        surrogate = create_model(protector.config.surrogate_model, weights)  # its path names the data: a cached protection is never stale
    protection = protect_cached(protector, train, out / "protection" / f"mem-{k}", progress=True, surrogate=surrogate)
    protect_seconds = time.perf_counter() - clock
    checks = {hacker: learnability_cached(out / "protection" / f"mem-{k}" / f"learnability-{hacker}-{args.check_epochs}e.json", train,
                                          protection, hacker, args.check_epochs, seeds=args.seeds) for hacker in args.hackers} if args.check_epochs else {}
    for hacker, check in checks.items():
        print(f"learnability ({hacker}): {check['verdict']}", flush=True)
    random_id = random_id_protection(train, k, seed=protector.config.seed, vocab_size=protector.config.trigger_vocab_size)
    arms = write_control_sets(train, protection, random_id, out)
    test_csv = write_caption_csv(out / "test.csv", [(str(Path(test.image_paths[g]).resolve()), c) for g, c in zip(test.group_ids, test.captions)])
    if args.arms:
        arms = {name: path for name, path in arms.items() if name in args.arms}
    jobs = [{"arm": arm, "csv": str(path), "defence": defence, "test_csv": str(test_csv), "hacker": hacker, "seed": seed,
             "epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size, "out": str(out / "hackers"),
             "threads": threads}
            for seed in args.seeds for hacker in args.hackers for arm, (path, defence) in defended_arms(arms, args.defences, out).items()]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        runs = []
        for run in pool.map(hack, jobs):
            runs.append(run)
            print(f"{run['hacker']} seed {run['seed']} {run['arm']}: i2t R@10 {run['final']['i2t_R@10']:.1f} t2i R@10 "
                  f"{run['final']['t2i_R@10']:.1f} loss {run['final_loss']:.2f} ({run['seconds']:.0f} s)", flush=True)
    summary = summarise(runs)
    random = random_guess(test)
    payload = {
        "machine": machine(), "eval": args.eval, "data": str(args.data), "n_train_images": train.n_images, "n_train_rows": len(train),
        "n_test_images": test.n_images, "protection": {"method": protection.method, "config": protection.config,
                                                       "diagnostics": protection.diagnostics, "shortcut": protection.config.get("shortcut"),
                                                       "seconds": protect_seconds,
                                                       "surrogate_pretrained_on": None if surrogate is None else str(args.surrogate_pretrain_on),
                                                       "unique_triggers": int(len(np.unique(protection.triggers, axis=0))),
                                                       "example_triggers": protection.trigger_words()[:8], "learnability": checks},
        "hacker": {"epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size, "from": "scratch"},
        "defences": args.defences, "runs": runs, "summary": summary, "random_guess": random,
        "targets": targets(summary, k, random) if not args.arms else {},
        "table": markdown(summary, random), "seconds": time.perf_counter() - started,
    }
    print(payload["table"])
    for check, figures in payload["targets"].items():
        print(f"{'yes' if figures['met'] else 'NO '}  {check}: {figures['value']:.1f} against {figures['bound']:.1f} "
              f"(random guess {figures['random_guess']:.1f})")
    write_result(f"real_photos_{args.eval}", payload, args.json)


if __name__ == "__main__":
    main()
