"""The run cache behind notebooks and tables: keyed protections and hacker runs, data identities, and load_split."""
from __future__ import annotations

import numpy as np
import pytest

from mem_toolkit.data import load_split, make_shapes
from mem_toolkit.data.writer import write_dataset
from mem_toolkit.experiment import protect_cached
from mem_toolkit.protect import MEM, StrippedView
from mem_toolkit.train import TrainConfig
from mem_toolkit.experiment import data_key
from mem_toolkit.workspace import Workspace

TINY = dict(rounds=1, surrogate_steps=1, pgd_steps=1, trigger_rounds=1, candidates=3, batch_size=20, device="cpu")


@pytest.fixture(scope="module")
def data():
    return make_shapes(8, 64, seed=4, name="train"), make_shapes(4, 64, seed=5, name="test")


def test_protections_are_keyed_by_settings_and_reused(data, tmp_path):
    train, _ = data
    workspace = Workspace(tmp_path, progress=False)
    first = workspace.protect(MEM(2, **TINY), train)
    again = workspace.protect(MEM(2, **TINY), train)
    assert np.array_equal(np.asarray(again.noise), np.asarray(first.noise)) and np.array_equal(again.triggers, first.triggers)
    other = workspace.protect(MEM(2, **(TINY | {"eps": 4})), train)
    folders = sorted(p.name for p in (tmp_path / "protections").iterdir())
    assert len(folders) == 2 and all(name.startswith("mem-2-") for name in folders)
    assert other.eps == 4 and np.abs(np.asarray(other.noise).astype(int)).max() <= 4
    # A folder holding a protection made with other settings is redone, never returned stale.
    redone = protect_cached(MEM(2, **(TINY | {"eps": 4})), train, workspace.protection_folder(MEM(2, **TINY), train), progress=False)
    assert redone.eps == 4 and redone.config["eps"] == 4


def test_data_keys_tell_clean_protected_controls_and_stripped_data_apart(data):
    train, _ = data
    protection = MEM(2, **TINY).fit(train, progress=False)
    views = {"clean": train, "protected": protection.apply(train), "trigger-only": protection.apply(train, noise=False),
             "noise-only": protection.apply(train, trigger=False), "stripped": StrippedView(protection.apply(train), 2)}
    keys = {name: data_key(view) for name, view in views.items()}
    assert len(set(keys.values())) == len(keys)
    assert data_key(protection.apply(train)) == keys["protected"]
    protection.noise[0, 0, 0, 0] += 1 if protection.noise[0, 0, 0, 0] < protection.eps else -1
    assert data_key(protection.apply(train)) != keys["protected"]  # the key follows the noise itself
    with pytest.raises(TypeError, match="cannot tell which data"):
        data_key(object())


def test_hacker_runs_are_reused_and_their_models_load(data, tmp_path):
    train, test = data
    workspace = Workspace(tmp_path, device="cpu", progress=False)
    config = TrainConfig(epochs=1, batch_size=20)
    run = workspace.hack("clean", train, test, config)
    history_file = run.folder / "history.json"
    written = history_file.stat().st_mtime_ns
    again = workspace.hack("clean", train, test, config)
    assert again.folder == run.folder and history_file.stat().st_mtime_ns == written and again.history == run.history
    assert run.name == "clean" and 0 <= run.final["t2i_R@10"] <= 100
    longer = workspace.hack("clean", train, test, TrainConfig(epochs=2, batch_size=20))
    assert longer.folder != run.folder and len(longer.history.epochs) == 2
    model = workspace.hacker(run)
    assert model.name == "mem-tiny-rn" and model.image_size == 64


def test_load_split_embedded_or_files(tmp_path):
    train, test = load_split(n_train=3, n_test=2, image_size=32, seed=1)
    assert (train.n_images, test.n_images, train.image_size) == (3, 2, 32)
    write_dataset(train, tmp_path, "train.csv", progress=False)
    write_dataset(test, tmp_path, "test.csv", progress=False)
    mine, held_out = load_split(tmp_path / "train.csv", tmp_path / "test.csv", image_size=32)
    assert mine.captions == train.captions and held_out.n_images == 2
    np.testing.assert_array_equal(mine.images([0]), train.images([0]))
    with pytest.raises(ValueError, match="give both"):
        load_split(tmp_path / "train.csv")
