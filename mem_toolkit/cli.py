"""The `mem-toolkit` command line (also `python -m mem_toolkit`): thin wrappers over the library."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from . import distributed
from .augment import AUGMENTATIONS
from .cli_data import add_data_args, load_source, recorded_source, test_source, train_source
from .data.pubfig import register_prepare
from .errors import DataError, DefenceError, OutputError, ProtectionError, ResumeMismatch, UsageError
from .studies.faces_cli import register_faces
from .lock import FolderLocked, output_lock


def _add_train_args(parser: argparse.ArgumentParser, starting_weights: bool = True) -> None:
    parser.add_argument("--model", default="mem-tiny-rn", help="open_clip model name or bundled config")
    if starting_weights:
        parser.add_argument("--pretrained", help="open_clip pretrained tag or local checkpoint path (default: from scratch)")
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--no-amp", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="none",
                        help="crop-flip: random resized crop (50-100 %% of the area) + horizontal flip per image and step, as CLIP trainers do")


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       seed=args.seed, amp=not args.no_amp, augment=args.augment)


def cmd_make_data(args) -> int:
    if args.kind == "faces":
        from .data.faces import generate_faces
        from .data.identity import write_identity_folder

        photos = generate_faces(args.people, args.photos_per_person, args.image_size, args.seed, progress=True)
        labels = write_identity_folder(args.out, photos)
        print(f"wrote {labels} ({len(photos.keys)} photos of {len(photos.people)} people, one folder per person)")
        return 0
    from .data.shapes import make_shapes_split
    from .data.writer import write_dataset

    train, test = make_shapes_split(args.n_train, args.n_test, args.image_size, args.seed, args.difficulty)
    write_dataset(train, args.out, "train.csv")
    write_dataset(test, args.out, "test.csv")
    print(f"wrote {args.out}/train.csv ({len(train)} rows, {train.n_images} images) and test.csv ({len(test)} rows)")
    return 0


def cmd_train(args) -> int:
    from .models import create_model, resolve_device
    from .train import train_run

    source = train_source(args)
    test_of = test_source(args, source)
    with output_lock(args.out):
        model = create_model(args.model, args.pretrained, resolve_device(args.device), seed=args.seed)
        train = load_source(source, args, model.image_size)
        test = load_source(test_of, args, model.image_size) if test_of else None
        history = train_run(model, train, test, _train_config(args), args.out, resume=args.resume)
    print(json.dumps(history.final, indent=2))
    return 0


def cmd_pretrain(args) -> int:
    from .models import create_model
    from .pretrain import pretrain_clip

    source = train_source(args)
    test_of = test_source(args, source)
    with output_lock(args.out):
        image_size = create_model(args.model, seed=args.seed).image_size
        train = load_source(source, args, image_size)
        held_out = load_source(test_of, args, image_size) if test_of else None
        weights = pretrain_clip(args.model, train, held_out, _train_config(args), args.out, args.device)
    print(f"pretrained weights: {weights}\nfine-tune from them with --pretrained {weights} (train, verify, faces, robustness)")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_retrieval
    from .models import load_model, resolve_device
    from .atomic import write_json

    source = test_source(args, required=True)
    model = load_model(args.checkpoint, resolve_device(args.device))
    report = evaluate_retrieval(model, load_source(source, args, model.image_size))
    print(report.table())
    if args.out:
        write_json(args.out, report.to_dict())
    return 0


def _protector(args):
    from .protect import EM, MEM, UAP

    settings = {k: v for k, v in {
        "eps": args.eps, "rounds": args.rounds, "surrogate_steps": args.surrogate_steps, "pgd_steps": args.pgd_steps,
        "trigger_rounds": args.trigger_rounds, "candidates": args.candidates, "beam": args.beam, "batch_size": args.batch_size,
        "granularity": args.granularity, "n_clusters": args.n_clusters, "cluster_size": args.cluster_size, "trigger_init": args.trigger_init,
        "surrogate_model": args.surrogate_model, "surrogate_epochs": args.surrogate_epochs, "seed": args.seed,
        "surrogate_lr": args.surrogate_lr, "surrogate_reset": args.surrogate_reset, "trigger_vocab_size": args.trigger_vocab_size,
        "noise_init": args.noise_init, "step_size": args.step_size, "noise_block": args.noise_block, "eot": args.eot,
        "strip_share": args.strip_share, "surrogate_alternate": args.alternate_surrogate or None,
        "noise_code": args.noise_code, "code_words": args.code_words, "code_min_share": args.code_min_share,
        "code_ensemble": args.code_ensemble,
    }.items() if v is not None}
    if args.all_tokens:
        settings["exclude_caption_vocab"] = False
    if args.alternate_surrogate and not args.surrogate_checkpoint:
        raise UsageError("--alternate-surrogate takes turns between given weights and fresh ones: give --surrogate-checkpoint")
    if args.method != "mem" and args.trigger_len not in (None, 0):
        raise UsageError(f"--trigger-len applies to MEM only, not {args.method}")
    try:
        if args.method == "mem":
            return MEM(trigger_len=3 if args.trigger_len is None else args.trigger_len, preset=args.preset, device=args.device, **settings)
        return {"em": EM, "uap": UAP}[args.method](preset=args.preset, device=args.device, **settings)
    except ValueError as error:  # a setting out of range, or a preset the method does not have
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_protect(args) -> int:
    from .experiment import learnability_cached, save_protection, saved_protection
    from .models import create_model

    if args.check_epochs < 0 or args.check_seeds < 1:
        raise UsageError("--check-epochs must be 0 (no check) or more, and --check-seeds at least 1")
    source = train_source(args)
    protector = _protector(args)
    config = protector.config
    out = Path(args.out)
    with output_lock(out):
        surrogate = create_model(config.surrogate_model, args.surrogate_checkpoint, protector.device, seed=config.seed)
        train = load_source(source, args, surrogate.image_size)
        finished = saved_protection(out, train, protector, surrogate.pretrained) if args.resume else None
        if finished is not None:
            print(f"{out} already holds this finished protection")
            protection = finished
        else:
            protection = protector.fit(train, surrogate, work_dir=out / "work", resume=args.resume)
            protection.config["dataset"] = source.record()
            protection = save_protection(protection, out)
            print(f"saved {protection.method} protection of {len(train)} rows to {out}")
    last = protection.diagnostics[-1]
    print("last round: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float)))
    if protection.trigger_len:
        print("example triggers: " + "; ".join(protection.trigger_words()[:5]))
    if protection.config.get("shortcut"):
        print("shortcut: " + protection.config["shortcut"]["verdict"])
    if args.check_epochs:
        report = learnability_cached(out / "learnability.json", train, protection, args.check_model or config.surrogate_model,
                                     args.check_epochs, [config.seed + i for i in range(args.check_seeds)], protector.device)
        print("learnability: " + report["verdict"])
    return 0


def _protected_dataset(args):
    """The protection and the dataset it was made for (the recorded source unless a --train-* flag names another)."""
    from .protect import Protection

    protection = Protection.load(args.protection)
    source = recorded_source(args, protection.config.get("dataset", {}))
    dataset = load_source(source, args, protection.image_size)
    protection.check_fits(dataset)
    return protection, source, dataset


def cmd_export(args) -> int:
    from .protect.export import export_protection

    with output_lock(args.out):
        protection, _, dataset = _protected_dataset(args)
        written = export_protection(protection, dataset, args.out, format=args.format, samples_per_shard=args.shard_size)
    print(f"wrote {written} and the protected images; |noise| <= {protection.eps}/255 verified on the written files")
    return 0


def cmd_verify(args) -> int:
    from .experiment import results_table, run_arm
    from .atomic import write_json

    out = Path(args.out or Path(args.protection) / "verify")
    with output_lock(out):
        protection, source, dataset = _protected_dataset(args)
        test = load_source(test_source(args, source, required=True), args, protection.image_size)
        config = _train_config(args)
        arms = {"clean": dataset, protection.method: protection.apply(dataset)}
        if protection.trigger_len:  # what a hacker who deletes the trigger trains on: is the noise doing the work?
            arms[f"{protection.method}-noise-only"] = protection.apply(dataset, trigger=False)
        results = {name: run_arm(name, data, test, config, out, args.model, args.device) for name, data in arms.items()}
        finals = {name: r.final for name, r in results.items()}
        table = results_table(finals, test, f"hacker {args.model}, {args.epochs} epochs, clean test set")
        if distributed.is_main():
            (out / "verify.md").write_text(table + "\n")
            write_json(out / "verify.json", {"results": finals, "table": table})
    print(table)
    return 0


def cmd_defend(args) -> int:
    from .defences import apply_defence, get_defence

    defence = get_defence(args.defence)  # an unknown name is refused before the output folder is made
    with output_lock(args.out):
        written = apply_defence(args.defence, args.data, args.out, clean_csv=args.clean, vocabulary=args.vocabulary, seed=args.seed)
    print(f"wrote {written}: {args.data} after {defence.name} ({defence.description})")
    return 0


def cmd_demo(args) -> int:
    from .studies.demo import run_demo

    results = run_demo(args.out, args.preset, device=args.device)
    print(results["table"])
    print()
    for text, ok in results["checks"].items():
        print(f"{'ok ' if ok else 'NO '} {text}")
    print(f"\nresults: {Path(args.out) / 'results.md'} and results.json; figures in {Path(args.out) / 'figures'}")
    return 0


def cmd_robustness(args) -> int:
    from .studies.robustness import PRESETS, choose, run_robustness

    preset = choose(PRESETS[args.preset], args.protections, args.defences, args.seeds)
    result = run_robustness(args.out, preset, device=args.device)
    print(result.table("i2t"))
    print()
    for text, ok in result.checks().items():
        print(f"{'ok ' if ok else 'NO '} {text}")
    print(f"\nresults (both directions): {Path(args.out) / 'results.md'} and results.json; heat maps in {Path(args.out) / 'figures'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mem-toolkit", description=__doc__)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-data", help="write an embedded synthetic dataset as PNGs + CSV")
    make.add_argument("kind", choices=["shapes", "faces"])
    make.add_argument("--out", required=True)
    make.add_argument("--n-train", type=int, default=2000)
    make.add_argument("--n-test", type=int, default=500)
    make.add_argument("--image-size", type=int, default=64)
    make.add_argument("--difficulty", default="default", help="easy, default or hard")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--people", type=int, default=50, help="faces: number of invented people")
    make.add_argument("--photos-per-person", type=int, default=10, help="faces: photos of each person")
    make.set_defaults(func=cmd_make_data)

    train = commands.add_parser("train", help="train a CLIP on a caption dataset, evaluating on the test set every epoch")
    add_data_args(train)
    _add_train_args(train)
    train.add_argument("--out", required=True, help="run folder: history.json, metrics.json, model.safetensors, checkpoint")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.set_defaults(func=cmd_train)

    pretrain = commands.add_parser("pretrain", help="pretrain a hacker from scratch on other data, for --pretrained (a pretrained CLIP made "
                                                     "here, where none can be downloaded); cached and resumable")
    add_data_args(pretrain)
    _add_train_args(pretrain, starting_weights=False)
    pretrain.add_argument("--out", required=True, help="folder: weights/model.safetensors (+ its history; rerunning reuses or resumes it)")
    pretrain.set_defaults(func=cmd_pretrain)

    evaluate = commands.add_parser("evaluate", help="retrieval of a saved model on a clean test set")
    evaluate.add_argument("--checkpoint", required=True, help="model.safetensors written by `train`")
    add_data_args(evaluate, train=None, test="required")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", help="write the report as JSON here")
    evaluate.set_defaults(func=cmd_evaluate)

    protect = commands.add_parser("protect", help="make a protection (noise + trigger) for a caption dataset")
    add_data_args(protect, test=None)
    protect.add_argument("--method", choices=["mem", "em", "uap"], default="mem")
    protect.add_argument("--trigger-len", type=int, default=None, help="MEM trigger length k (MEM-3: 3)")
    protect.add_argument("--preset", choices=["paper", "cpu", "photos"],
                         help="official defaults, scaled for a laptop CPU (tuned on the embedded shapes), or for real photos (MEM)")
    protect.add_argument("--eps", type=int, help="noise bound in 1/255 units (8 means 8/255)")
    protect.add_argument("--rounds", type=int)
    protect.add_argument("--surrogate-steps", type=int)
    protect.add_argument("--pgd-steps", type=int)
    protect.add_argument("--step-size", type=int, help="PGD step in 1/255 units")
    protect.add_argument("--trigger-rounds", type=int)
    protect.add_argument("--candidates", type=int)
    protect.add_argument("--beam", type=int)
    protect.add_argument("--batch-size", type=int)
    protect.add_argument("--granularity", choices=["row", "image", "cluster"])
    protect.add_argument("--n-clusters", type=int)
    protect.add_argument("--cluster-size", type=int, help="cluster granularity: about N photos per cluster (overrides --n-clusters)")
    protect.add_argument("--trigger-init", help="a word repeated k times, or 'random'")
    protect.add_argument("--all-tokens", action="store_true", help="let triggers use caption words too")
    protect.add_argument("--surrogate-model")
    protect.add_argument("--surrogate-checkpoint", help="start the surrogate from these weights (open_clip tag or path)")
    protect.add_argument("--surrogate-epochs", type=int, help="UAP: epochs of clean surrogate training")
    protect.add_argument("--surrogate-lr", type=float)
    protect.add_argument("--surrogate-reset", type=int, help="restart the surrogate every N rounds (0: never)")
    protect.add_argument("--alternate-surrogate", action="store_true",
                         help="with --surrogate-checkpoint and --surrogate-reset: every other restart is a fresh random init instead of those weights")
    protect.add_argument("--trigger-vocab-size", type=int, help="draw triggers from a seeded subset of N words (0: all allowed words)")
    protect.add_argument("--noise-init", choices=["zero", "uniform", "trigger-code"])
    protect.add_argument("--noise-block", type=int, help="keep the noise constant on N x N pixel squares (low-frequency noise)")
    protect.add_argument("--eot", nargs="+", choices=["jpeg", "crop-flip"],
                         help="optimise the noise through these hacker transformations, one drawn per PGD step (expectation over transformation)")
    protect.add_argument("--noise-code", choices=["none", "words"],
                         help="words: the noise is a learned code of each photo's caption words, which survives deleting the trigger")
    protect.add_argument("--code-words", type=int, help="--noise-code words: caption words coded per photo")
    protect.add_argument("--code-min-share", type=float, help="--noise-code words: code only words found in at least this share of the photos")
    protect.add_argument("--code-ensemble", nargs="+", metavar="MODEL",
                         help="--noise-code words: also train the code against a fresh model of each of these architectures every round")
    protect.add_argument("--strip-share", type=float, help="share of rows seen with the trigger deleted and their own caption (0-1)")
    protect.add_argument("--seed", type=int)
    protect.add_argument("--device", default="auto")
    protect.add_argument("--out", required=True, help="protection folder (work/ inside holds per-round checkpoints)")
    protect.add_argument("--resume", action="store_true", help="continue an interrupted run from its last round")
    protect.add_argument("--check-epochs", type=int, default=0, metavar="N",
                         help="then train fresh hackers N epochs on the clean, the published and the trigger-deleted pairs of 4/5 of "
                              "the photos and compare their retrieval on the other fifth, clean (saved as OUT/learnability.json; 0: skip)")
    protect.add_argument("--check-model", help="--check-epochs: the hackers' architecture (default: the surrogate's)")
    protect.add_argument("--check-seeds", type=int, default=2, metavar="N",
                         help="--check-epochs: hackers per view, from seeds SEED..SEED+N-1 (short runs spread: more seeds, firmer verdict)")
    protect.set_defaults(func=cmd_protect, trigger_len=None)

    export = commands.add_parser("export", help="write the protected data, ready to publish: PNGs + captions.csv, or webdataset shards")
    export.add_argument("--protection", required=True)
    add_data_args(export, train="override", test=None)
    export.add_argument("--format", choices=["png", "webdataset"], default="png",
                        help="png: images/*.png + captions.csv; webdataset: shard-00000.tar, ... (PNG + txt, or json with all captions)")
    export.add_argument("--shard-size", type=int, default=1000, help="webdataset: samples per shard")
    export.add_argument("--out", required=True)
    export.set_defaults(func=cmd_export)

    verify = commands.add_parser("verify", help="train a hacker on clean and on protected data (with a trigger, also on the photos "
                                                "with the trigger deleted), compare on the clean test set")
    verify.add_argument("--protection", required=True)
    add_data_args(verify, train="override", test="required")
    _add_train_args(verify)
    verify.add_argument("--out", help="results folder (default: PROTECTION/verify)")
    verify.set_defaults(func=cmd_verify)

    from .defences import DEFENCES

    defend = commands.add_parser("defend", help="what a hacker does to published data: write a defended copy (PNGs + captions.csv)",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Apply one defence to a published folder (images + captions.csv). Defences:\n" + "\n".join(
                                     f"  {name:14} {d.kind:9} {d.description}" for name, d in DEFENCES.items()))
    defend.add_argument("--data", required=True, help="the published caption CSV (e.g. an export's captions.csv)")
    defend.add_argument("--defence", required=True, help="the defence's name (see the list above)")
    defend.add_argument("--out", required=True, help="folder for the defended images and captions.csv")
    defend.add_argument("--clean", help="data defences (protectedNN): the clean CSV of the same rows in the same order")
    defend.add_argument("--vocabulary", help="the vocabulary defence: a caption CSV of other data, or a text file of words")
    defend.add_argument("--seed", type=int, default=0, help="seed of the added noise and of the protected share")
    defend.set_defaults(func=cmd_defend)

    demo = commands.add_parser("demo", help="the main job: protect the embedded data with UAP, EM, MEM-3, MEM-5, hack it, tabulate")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--preset", choices=["quick", "full"], default="quick", help="quick: minutes on a laptop CPU; full: the strength run")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=cmd_demo)
    robustness = commands.add_parser("robustness", help="the defences table: each protection, published, defended as a hacker would, and hacked")
    robustness.add_argument("--out", default="runs/robustness")
    robustness.add_argument("--preset", choices=["smoke", "quick", "full"], default="quick",
                            help="smoke: seconds, does it run; quick: the likely defences against MEM-3, EM and a random-ID trigger; "
                                 "full: every defence and protection, two seeds")
    robustness.add_argument("--protections", nargs="+", metavar="NAME",
                            help="the rows instead of the preset's (e.g. mem-3 mem-3-robust; an unknown name lists them all); "
                                 "cached cells are reread, so a row added to a finished study trains only its own hackers")
    robustness.add_argument("--defences", nargs="+", metavar="NAME", help="the columns instead of the preset's (any defence, or pretrained)")
    robustness.add_argument("--seeds", nargs="+", type=int, metavar="S", help="hacker seeds instead of the preset's")
    robustness.add_argument("--device", default="auto")
    robustness.set_defaults(func=cmd_robustness)

    register_prepare(commands)
    register_faces(commands)
    return parser


DISTRIBUTED_COMMANDS = ("protect", "train", "pretrain", "verify", "demo", "faces", "robustness")


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input ends with the full list of problems and exit status 2.

    Under torchrun, `protect`, `train`, `pretrain`, `verify`, `demo`, `faces` and `robustness` run in every process and only rank 0 prints;
    the other commands run in one process.
    """
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS and int(os.environ["WORLD_SIZE"]) > 1:
        print(f"error: {args.command} runs in one process; of the commands only {', '.join(DISTRIBUTED_COMMANDS)} run under torchrun "
              "with several processes", file=sys.stderr)
        return 2
    distributed.init(getattr(args, "device", "auto"))
    try:
        with contextlib.ExitStack() as stack:
            if not distributed.is_main():  # one copy of every result line: rank 0's
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return args.func(args)
    except (DataError, DefenceError, ProtectionError, UsageError, FolderLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OutputError as error:
        print(f"error: {error}; free some space (or fix the folder's permissions) and run again: train and protect continue "
              "from their last checkpoint with --resume", file=sys.stderr)
        return 1
    except ResumeMismatch as error:
        print(f"error: {error}; run without --resume to start afresh, or choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed epochs/rounds are checkpointed; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        distributed.close()
