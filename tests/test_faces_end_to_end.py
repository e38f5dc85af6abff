"""A tiny CLIP trained from scratch on synthetic faces learns to name unseen photos; the make-data command writes them."""
from __future__ import annotations

import csv

import pytest
import torch

from mem_toolkit.cli import main
from mem_toolkit.data.faces import make_faces
from mem_toolkit.data.identity import load_identity_folder
from mem_toolkit.studies.face_metrics import evaluate_faces
from mem_toolkit.models import create_model
from mem_toolkit.train import TrainConfig, train_clip


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, spinning thread pools make this run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_tiny_clip_identifies_test_people_above_chance(one_thread):
    data = make_faces(16, 6, 64, seed=0)
    model = create_model("mem-tiny-rn", seed=0)
    untrained = evaluate_faces(model, data)["identification"]
    train_clip(model, data.train, None, TrainConfig(epochs=20, batch_size=40, lr=2e-3, seed=0), progress=False)
    report = evaluate_faces(model, data)
    named = report["identification"]
    assert named["top5"] > named["chance_top5"] + 15 and named["top5"] > untrained["top5"] + 15
    assert named["mean_rank"] < named["chance_mean_rank"] - 2
    assert report["retrieval"]["rsum"] > report["retrieval_random"]["rsum"]


def test_make_data_faces_writes_one_folder_per_person(tmp_path, capsys):
    out = tmp_path / "faces"
    assert main(["make-data", "faces", "--out", str(out), "--people", "3", "--photos-per-person", "2", "--image-size", "32", "--seed", "4"]) == 0
    assert "6 photos of 3 people" in capsys.readouterr().out
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(folders) == 3 and len(rows) == 6
    assert all(row["image"].split("/")[0] == row["identity"] and (out / row["image"]).is_file() for row in rows)
    expected = make_faces(3, 2, 32, seed=4)
    assert [name.replace(" ", "_") for name in expected.names] == folders
    loaded = load_identity_folder(out, 32, seed=4, rename=False, progress=False)
    assert loaded.test.captions == expected.test.captions
