"""`mem-toolkit faces`: the face case study from the command line (kept apart so `--help` stays fast)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def register_faces(commands: argparse._SubParsersAction) -> None:
    """Add `mem-toolkit faces` to the command line."""
    faces = commands.add_parser("faces", help="the face case study: protect named face photos with MEM-3 / MEM-5 and hack them (Table 3)")
    faces.add_argument("--out", required=True, help="output folder: results.md, results.json, figures/, and the caches that let a run resume")
    faces.add_argument("--data", default="synthetic", help="'synthetic', an identity folder root/<person>/<photo>, or a labels CSV image,identity")
    faces.add_argument("--preset", default="quick", help="smoke (seconds: does it run), quick (minutes on a laptop CPU) or full (the strength run)")
    faces.add_argument("--hackers", nargs="+", default=["mem-tiny-rn", "mem-tiny-vit"],
                       help="hacker architectures (bundled configs or open_clip names)")
    faces.add_argument("--pretrained", nargs="+", default=[], metavar="[ARCH=]WEIGHTS",
                       help="fine-tune hackers from these weights (open_clip tag or checkpoint): ARCH=WEIGHTS per architecture, "
                            "or one bare WEIGHTS for a single hacker; the others train from scratch")
    faces.add_argument("--people", type=int, help="study only N of the people (chosen from the seed; the others can pretrain the hackers)")
    faces.add_argument("--pretrain-on", metavar="rest|synthetic|DATA",
                       help="pretrain every hacker architecture on other people first, and report it fine-tuned beside from scratch: "
                            "'rest' (the people of --data left out by --people), 'synthetic' (invented people) or another identity "
                            "folder / labels CSV; checked to share no person and no photo with the study")
    faces.add_argument("--surrogate-model", default="mem-tiny-rn", help="architecture of the protection's surrogate")
    faces.add_argument("--surrogate-pretrained", help="start the surrogate from these weights, or 'pretrained' for the weights "
                                                      "--pretrain-on made (default: from scratch)")
    faces.add_argument("--seeds", nargs="+", type=int, help="train every hacker once per seed (default: the preset's; full: 0 1 2); "
                                                              "tables print mean ± 95 %% interval")
    faces.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="mem_settings",
                       help="MEM settings over the preset's, e.g. granularity=cluster n_clusters=30 (names as in mem_toolkit.protect.ProtectConfig)")
    faces.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    faces.set_defaults(func=cmd_faces)


def parse_hacker_weights(specs: Sequence[str], hackers: Sequence[str]) -> dict[str, str]:
    """`ARCH=WEIGHTS` pairs (or one bare `WEIGHTS` when there is one hacker) -> {architecture: weights}."""
    weights = {}
    for spec in specs:
        architecture, sep, path = spec.partition("=")
        if not sep:
            if len(hackers) != 1 or len(specs) != 1:
                raise ValueError(f"--pretrained {spec!r}: name the architecture (ARCH=WEIGHTS) when there are several hackers")
            architecture, path = hackers[0], spec
        if architecture not in hackers:
            raise ValueError(f"--pretrained {spec!r}: {architecture!r} is not among --hackers {list(hackers)}")
        if architecture in weights:
            raise ValueError(f"--pretrained gives weights for {architecture!r} twice")
        weights[architecture] = path
    return weights


def cmd_faces(args) -> int:
    from ..protect.settings import parse_settings
    from .faces import run_faces_study

    try:
        weights = parse_hacker_weights(args.pretrained, args.hackers)
        settings = parse_settings(args.mem_settings)
        results = run_faces_study(args.out, args.data, args.preset, args.hackers, weights, args.surrogate_model, args.surrogate_pretrained,
                                  device=args.device, seeds=args.seeds, people=args.people, pretrain_on=args.pretrain_on,
                                  mem_settings=settings)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results["table"], results["control_table"], sep="\n\n", end="\n\n")
    for text, ok in results["checks"].items():
        print(f"{'ok ' if ok else 'NO '} {text}")
    print(f"\nresults: {Path(args.out) / 'results.md'} and results.json; figures in {Path(args.out) / 'figures'}")
    return 0
