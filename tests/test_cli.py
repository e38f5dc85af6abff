"""The `mem-toolkit` command: make-data -> train -> evaluate on tiny shapes, and bad input."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mem_toolkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-data", "shapes", "--out", str(out), "--n-train", "32", "--n-test", "16", "--image-size", "64", "--seed", "1"]) == 0
    return out


def test_make_data_writes_csvs_and_pngs(shapes_folder):
    with open(shapes_folder / "train.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "caption"] and len(rows) == 1 + 32 * 5
    images = {row[0] for row in rows[1:]}
    assert len(images) == 32 and all((shapes_folder / image).is_file() for image in images)
    with open(shapes_folder / "test.csv", newline="") as handle:
        test_images = {row[0] for row in list(csv.reader(handle))[1:]}
    assert len(test_images) == 16 and not images & test_images


def test_train_then_evaluate(shapes_folder, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--train-csv", str(shapes_folder / "train.csv"), "--test-csv", str(shapes_folder / "test.csv"),
                 "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out", str(run)])
    assert code == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history["epochs"]) == 1 and len(history["step_loss"]) == 10
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and "t2i_R@10" in metrics and "rsum" in metrics
    assert (run / "model.safetensors").is_file() and (run / "model.json").is_file()
    out = capsys.readouterr().out
    assert "train epoch 1: loss" in out
    assert json.loads(out[out.index("{"):]) == metrics  # after the epoch lines, the last epoch as JSON

    report = tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(run / "model.safetensors"), "--test-csv", str(shapes_folder / "test.csv"),
                 "--device", "cpu", "--out", str(report)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["i2t_R@1", "i2t_R@5", "i2t_R@10", "i2t_MedR", "i2t_MeanR",
                                "t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_MedR", "t2i_MeanR", "rsum"]
    assert lines[1].startswith("model") and lines[2].startswith("random")
    saved = json.loads(report.read_text())
    assert saved["n_images"] == 16 and saved["n_captions"] == 80
    assert saved["metrics"] == pytest.approx({k: metrics[k] for k in saved["metrics"]})  # the saved model is the trained one
    assert float(lines[2].split()[-1]) == pytest.approx(saved["random"]["rsum"], abs=0.01)


def test_pretrain_saves_weights_that_pretrained_takes_and_reuses_them(shapes_folder, tmp_path, capsys):
    args = ["pretrain", "--train-csv", str(shapes_folder / "train.csv"), "--test-csv", str(shapes_folder / "test.csv"), "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "pre")]
    assert main(args) == 0
    weights = tmp_path / "pre" / "weights" / "model.safetensors"
    assert f"pretrained weights: {weights}" in capsys.readouterr().out and weights.is_file()
    history = json.loads((weights.parent / "history.json").read_text())
    assert len(history["epochs"]) == 1 and "t2i_R@10" in history["epochs"][0]  # the held-out set was scored
    written = weights.stat().st_mtime_ns
    assert main(args) == 0 and weights.stat().st_mtime_ns == written  # a finished pretraining is reused, not redone
    assert main(["train", "--train-csv", str(shapes_folder / "train.csv"), "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--pretrained", str(weights), "--out", str(tmp_path / "tuned")]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--train-csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "bad")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_resume_of_a_finished_run_adds_nothing(shapes_folder, tmp_path, capsys):
    args = ["train", "--train-csv", str(shapes_folder / "train.csv"), "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    first = json.loads((tmp_path / "run" / "history.json").read_text())
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()  # resume state is dropped once the model is saved
    assert main(args + ["--resume"]) == 0
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == first
    capsys.readouterr()
    assert main([("2" if a == "1" else a) for a in args] + ["--resume"]) == 2
    assert "it holds a finished mem-tiny-rn run trained with" in capsys.readouterr().err


def test_bad_csv_exits_2_naming_file_and_line(tmp_path, shapes_folder):
    bad = tmp_path / "bad.csv"
    image = next((shapes_folder / "images").iterdir())
    bad.write_text(f"image,caption\n{image},a fine row\n{tmp_path / 'missing.png'},lost\n{image},\n")
    result = subprocess.run([sys.executable, "-m", "mem_toolkit", "train", "--train-csv", str(bad), "--epochs", "1",
                             "--device", "cpu", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert f"{bad}, line 3: image file not found" in result.stderr
    assert f"{bad}, line 4: empty caption" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_skip_bad_trains_on_the_good_rows(tmp_path, shapes_folder, capsys):
    rows = (shapes_folder / "train.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows[:1] + [r.replace("images/", str(shapes_folder / "images") + "/") for r in rows[1:41]]
                             + ["nowhere.png,lost"]) + "\n")
    assert main(["train", "--train-csv", str(bad), "--epochs", "1", "--batch-size", "20", "--device", "cpu",
                 "--skip-bad", "--out", str(tmp_path / "run")]) == 0
    assert f"skipped: {bad}, line 42: image file not found" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())["step_loss"]) == 2
