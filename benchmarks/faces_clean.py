"""How well a clean CLIP trained from scratch names people: the reference every face protection is compared with.

Trains `mem-tiny-rn` (or --model) on the synthetic faces or on an identity folder (e.g. AT&T faces),
evaluates identification (top-1 / top-5 vs chance) and N x N retrieval after every few epochs, and
writes the curve, wall-clock and CPU seconds as JSON. Not part of the tests.

    python benchmarks/faces_clean.py --data synthetic --epochs 30 --out benchmarks/results/faces_synthetic.json
    python benchmarks/faces_clean.py --data ../shared/data/att_faces --epochs 30 --out benchmarks/results/faces_att.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mem_toolkit.data.faces import make_faces
from mem_toolkit.data.identity import load_identity_folder
from mem_toolkit.studies.face_metrics import evaluate_faces
from mem_toolkit.models import create_model
from mem_toolkit.train import TrainConfig, train_clip
from mem_toolkit.atomic import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="'synthetic' or an identity folder root/<person>/<photo>")
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--photos-per-person", type=int, default=10)
    parser.add_argument("--variation", type=float, default=1.0)
    parser.add_argument("--model", default="mem-tiny-rn")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=5, help="evaluate every this many epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model(args.model, seed=args.seed)
    if args.data == "synthetic":
        data = make_faces(args.people, args.photos_per_person, model.image_size, args.seed, variation=args.variation)
    else:
        data = load_identity_folder(args.data, model.image_size, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    curve = []

    def on_epoch(history) -> None:
        entry = history.epochs[-1]
        if entry["epoch"] % args.every and entry["epoch"] != args.epochs:
            return
        report = evaluate_faces(model, data)
        point = {"epoch": entry["epoch"], "loss": entry["loss"], "wall_s": time.perf_counter() - started_wall,
                 "cpu_s": time.process_time() - started_cpu, **report["identification"], **report["retrieval"]}
        curve.append(point)
        print(f"epoch {point['epoch']:3d}  {point['wall_s']:6.0f} s  loss {point['loss']:.3f}  top1 {point['top1']:5.1f}  "
              f"top5 {point['top5']:5.1f}  i2t R@1 {point['i2t_R@1']:5.1f}  t2i R@1 {point['t2i_R@1']:5.1f}", flush=True)

    train_clip(model, data.train, None, config, progress=False, on_epoch=on_epoch)
    final = evaluate_faces(model, data)
    write_json(args.out, {
        "data": args.data, "people": data.n_people, "train_photos": data.train.n_images, "test_photos": data.test.n_images,
        "model": args.model, "config": vars(args), "steps_per_epoch": len(data.train) // min(args.batch_size, len(data.train)),
        "curve": curve, "final": final, "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                                                    "torch": torch.__version__},
    })
    print(json.dumps({k: round(v, 2) for k, v in final["identification"].items()}))


if __name__ == "__main__":
    main()
