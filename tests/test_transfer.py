"""Transferability table (paper Table 2) from a real tiny end-to-end run: shape, rows, columns, real metrics, cache, JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from mem_toolkit.data import make_shapes_split
from mem_toolkit.experiment import random_guess
from mem_toolkit.protect import MEM, Protection
from mem_toolkit.train import TrainConfig
from mem_toolkit.studies.transfer import CLEAN_ROW, RANDOM_ROW, TransferResult, check_architectures, run_transfer
from mem_toolkit.workspace import Workspace

ARCHS = ["mem-tiny-rn", "mem-tiny-vit"]


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    train, test = make_shapes_split(16, 8, 64, seed=2)
    protector = MEM(2, rounds=1, surrogate_steps=2, pgd_steps=1, trigger_rounds=1, candidates=3, batch_size=40, device="cpu")
    workspace = Workspace(tmp_path_factory.mktemp("transfer"), device="cpu", progress=False)
    result = run_transfer(protector, train, test, ARCHS, ARCHS, TrainConfig(epochs=1, batch_size=40), workspace)
    return result, protector, train, test, workspace


def test_table_has_a_row_per_surrogate_and_a_column_per_hacker(transfer):
    result, _, _, test, _ = transfer
    rows = result.rows()
    assert list(rows) == [f"surrogate {a}" for a in ARCHS] + [CLEAN_ROW, RANDOM_ROW]
    assert all(list(cells) == ARCHS for cells in rows.values())
    grid = result.grid()
    assert "| surrogate \\ hacker | mem-tiny-rn | mem-tiny-vit |" in grid
    body = [line for line in grid.splitlines() if line.startswith("| ") and "\\ hacker" not in line]
    assert [line.split("|")[1].strip() for line in body] == list(rows)
    assert all(len(line.strip("|").split("|")) == 1 + len(ARCHS) for line in body)
    assert rows[RANDOM_ROW]["mem-tiny-vit"] == random_guess(test)
    assert "| random guess |" in result.detail and result.detail.count("| hacker ") == len(ARCHS) * (len(ARCHS) + 1)


def test_cells_are_real_retrieval_metrics(transfer):
    result, _, _, test, _ = transfer
    for label, cells in result.rows().items():
        for hacker, metrics in cells.items():
            for direction in ("i2t", "t2i"):
                r1, r5, r10 = (metrics[f"{direction}_R@{k}"] for k in (1, 5, 10))
                assert 0 <= r1 <= r5 <= r10 <= 100, (label, hacker, metrics)
                assert 1 <= metrics[f"{direction}_MedR"] <= (len(test) if direction == "i2t" else test.n_images)
            if label != RANDOM_ROW:
                assert metrics["epoch"] == 1 and np.isfinite(metrics["loss"])  # a trained hacker's last epoch
    assert result.protected["mem-tiny-rn"]["mem-tiny-rn"] != result.protected["mem-tiny-vit"]["mem-tiny-rn"]


def test_each_surrogate_made_its_own_protection_and_reruns_reuse_everything(transfer):
    result, protector, train, test, workspace = transfer
    folders = sorted((workspace.root / "protections").iterdir())
    protections = [Protection.load(folder, train) for folder in folders]
    assert sorted(p.config["surrogate_model"] for p in protections) == ARCHS
    assert not np.array_equal(np.asarray(protections[0].noise), np.asarray(protections[1].noise))
    runs = sorted((workspace.root / "hackers").iterdir())
    assert len(runs) == len(ARCHS) * (len(ARCHS) + 1)
    written = [(run / "history.json").stat().st_mtime_ns for run in runs]
    again = run_transfer(protector, train, test, ARCHS, ARCHS, TrainConfig(epochs=1, batch_size=40), workspace)
    assert again.protected == result.protected and again.clean == result.clean
    assert [(run / "history.json").stat().st_mtime_ns for run in runs] == written


def test_save_load_and_plot(transfer, tmp_path):
    result = transfer[0]
    path = result.save(tmp_path)
    loaded = TransferResult.from_dict(json.loads(path.read_text()))
    assert loaded == result and (tmp_path / "transfer.md").read_text() == result.markdown()
    fig = result.plot("t2i_R@10", save=tmp_path / "transfer.png")
    assert isinstance(fig, Figure) and (tmp_path / "transfer.png").stat().st_size > 1000
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ARCHS
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"surrogate {a}" for a in ARCHS] + [CLEAN_ROW]


def test_architectures_are_checked_before_any_work():
    with pytest.raises(ValueError) as error:
        check_architectures(["mem-tiny-rn", "RN50", "no-such-model"], 64)
    message = str(error.value)
    assert "RN50: takes 224 px images, the dataset has 64 px" in message and "no-such-model: not an open_clip model name" in message
    check_architectures(ARCHS, 64)
