"""Every data format from the command line: CSV -> shards -> protect -> export shards -> hack; Karpathy and COCO JSON; flags."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mem_toolkit.cli import main

TINY_PROTECT = ["--method", "mem", "--trigger-len", "2", "--eps", "4", "--rounds", "1", "--surrogate-steps", "1", "--pgd-steps", "1",
                "--trigger-rounds", "1", "--candidates", "2", "--batch-size", "8", "--trigger-vocab-size", "10", "--granularity", "image"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """16 training and 6 test shapes (5 captions each) as PNGs + train.csv / test.csv."""
    folder = tmp_path_factory.mktemp("shapes")
    assert main(["make-data", "shapes", "--out", str(folder), "--n-train", "16", "--n-test", "6", "--image-size", "64"]) == 0
    return folder


def csv_groups(path: Path) -> dict[str, list[str]]:
    """Image path (relative to the CSV) -> its captions, in file order."""
    groups: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            groups[row["image"]].append(row["caption"])
    return dict(groups)


def csv_to_shards(csv_path: Path, out: Path, name: str, per_shard: int) -> list[Path]:
    """The test's own shard writer (tarfile): KEY.png + KEY.json with all captions; KEY.txt where an image has one."""
    groups = list(csv_groups(csv_path).items())
    paths = []
    for index in range(0, len(groups), per_shard):
        path = out / f"{name}-{index // per_shard:05d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for image, captions in groups[index:index + per_shard]:
                key = Path(image).stem
                text = (captions[0].encode(), "txt") if len(captions) == 1 else (json.dumps({"captions": captions}).encode(), "json")
                for data, ext in (((csv_path.parent / image).read_bytes(), "png"), text):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def shard_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard in `folder`, read with tarfile: key -> {extension: bytes}."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tar.extractfile(member).read()
    return dict(samples)


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_csv_to_shards_protect_export_shards_and_hack(shapes, tmp_path, capsys):
    csv_to_shards(shapes / "train.csv", tmp_path / "in", "train", per_shard=9)
    csv_to_shards(shapes / "test.csv", tmp_path / "in", "test", per_shard=9)
    protection = tmp_path / "prot"
    pattern = str(tmp_path / "in" / "train-{00000..00001}.tar")
    assert main(["protect", *TINY_PROTECT, "--train-data", pattern, "--cache-dir", str(tmp_path / "cache"), "--out", str(protection)]) == 0
    info = json.loads((protection / "protection.json").read_text())
    assert info["config"]["dataset"]["kind"] == "shards" and info["config"]["dataset"]["path"] == pattern
    assert list((tmp_path / "cache").glob("images-*-64px.u8"))  # the shards were decoded into the memory-mapped cache

    published = tmp_path / "pub"
    assert main(["export", "--protection", str(protection), "--format", "webdataset", "--shard-size", "5", "--out", str(published)]) == 0
    assert f"wrote {published / 'shard-{00000..00003}.tar'}" in capsys.readouterr().out
    clean = csv_groups(shapes / "train.csv")
    samples = shard_samples(published)
    assert sorted(samples) == sorted(Path(image).stem for image in clean)  # the input's keys, one sample per image
    words = info["trigger_words"]
    for image, captions in clean.items():
        sample = samples[Path(image).stem]
        assert set(sample) == {"png", "json"}
        published_captions = json.loads(sample["json"])["captions"]
        trigger = published_captions[0][: -len(captions[0]) - 1]
        assert trigger in words and published_captions == [f"{trigger} {c}" for c in captions]
        difference = np.abs(pixels(sample["png"]) - pixels((shapes / image).read_bytes()))
        assert difference.max() <= 4
    assert any(np.abs(pixels(samples[Path(i).stem]["png"]) - pixels((shapes / i).read_bytes())).max() > 0 for i in clean)

    hacker = tmp_path / "hack"
    assert main(["train", "--train-data", str(published), "--test-data", str(tmp_path / "in" / "test-00000.tar"),
                 "--epochs", "1", "--batch-size", "16", "--out", str(hacker)]) == 0
    metrics = json.loads((hacker / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and "t2i_R@10" in metrics


def karpathy_file(shapes: Path, out: Path) -> Path:
    """A Karpathy split file over the shapes: 12 train + 4 restval images, 6 test images."""
    images = []
    for split_of, csv_name in ((lambda i: "train" if i < 12 else "restval", "train.csv"), (lambda i: "test", "test.csv")):
        for index, (image, captions) in enumerate(csv_groups(shapes / csv_name).items()):
            images.append({"filepath": str(Path(image).parent), "filename": Path(image).name, "split": split_of(index),
                           "sentences": [{"raw": c, "tokens": c.split()} for c in captions]})
    out.write_text(json.dumps({"images": images, "dataset": "shapes"}))
    return out


@pytest.mark.slow
def test_karpathy_json_train_and_evaluate(shapes, tmp_path, capsys):
    split_file = karpathy_file(shapes, tmp_path / "dataset_shapes.json")
    run = tmp_path / "run"
    assert main(["train", "--train-json", str(split_file), "--image-root", str(shapes), "--test-split", "test",
                 "--epochs", "1", "--batch-size", "16", "--out", str(run)]) == 0
    assert "t2i_R@10" in json.loads((run / "metrics.json").read_text())
    for split, n_images in (("test", 6), ("restval", 4), ("train", 16)):
        report = tmp_path / f"{split}.json"
        assert main(["evaluate", "--checkpoint", str(run / "model.safetensors"), "--test-json", str(split_file), "--test-split", split,
                     "--test-image-root", str(shapes), "--out", str(report)]) == 0
        assert json.loads(report.read_text())["n_images"] == n_images  # train includes restval


@pytest.mark.slow
def test_coco_json_protect_and_export_from_the_recorded_source(shapes, tmp_path):
    groups = csv_groups(shapes / "train.csv")
    images = [{"id": 100 + i, "file_name": Path(image).name} for i, image in enumerate(groups)]
    notes = [{"id": len(images) * j + i, "image_id": 100 + i, "caption": c} for i, captions in enumerate(groups.values()) for j, c in enumerate(captions)]
    annotations = tmp_path / "captions_train.json"
    annotations.write_text(json.dumps({"images": images, "annotations": notes}))
    protection = tmp_path / "prot"
    image_dir = shapes / Path(next(iter(groups))).parent
    assert main(["protect", *TINY_PROTECT, "--train-coco", str(annotations), "--image-root", str(image_dir), "--out", str(protection)]) == 0
    record = json.loads((protection / "protection.json").read_text())["config"]["dataset"]
    assert record["kind"] == "coco" and record["image_root"] == str(image_dir.resolve())
    published = tmp_path / "pub"
    assert main(["export", "--protection", str(protection), "--out", str(published)]) == 0
    with open(published / "captions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(notes)


def test_one_training_source_exactly(shapes, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as caught:
        main(["train", "--train-csv", str(shapes / "train.csv"), "--train-data", "x.tar", *out])
    assert caught.value.code == 2 and "argument --train-data: not allowed with argument --train-csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["protect", *out])
    assert caught.value.code == 2
    assert "one of the arguments --train-csv --train-json --train-coco --train-data is required" in capsys.readouterr().err
    assert main(["train", "--train-csv", str(shapes / "train.csv"), "--test-split", "test", *out]) == 2
    assert "error: --test-split alone needs a Karpathy training set (--train-json)" in capsys.readouterr().err
    assert main(["train", "--train-csv", str(shapes / "train.csv"), "--split", "val", *out]) == 2
    assert "error: --split applies to --train-json only" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "missing.safetensors"]) == 2
    assert "error: give a clean test set: one of --test-csv, --test-json, --test-coco, --test-data" in capsys.readouterr().err
