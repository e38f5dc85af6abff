"""Reliability at the command line: one run per output folder, a full disk during a checkpoint, damaged protections, tiny datasets."""
from __future__ import annotations

import csv
import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mem_toolkit.checkpoint
from mem_toolkit.checkpoint import load_state
from mem_toolkit.cli import main
from mem_toolkit.data.shapes import make_shapes
from mem_toolkit.errors import DataError
from mem_toolkit.lock import LOCK_NAME, FolderLocked, output_lock
from mem_toolkit.protect import EM

REPO = Path(__file__).resolve().parents[1]
TINY_PROTECT = ["protect", "--method", "mem", "--trigger-len", "2", "--eps", "4", "--rounds", "2", "--surrogate-steps", "1", "--pgd-steps", "1",
                "--trigger-rounds", "1", "--candidates", "2", "--batch-size", "8", "--trigger-vocab-size", "10", "--granularity", "image"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    assert main(["make-data", "shapes", "--out", str(folder), "--n-train", "12", "--n-test", "4", "--image-size", "64"]) == 0
    return folder


@pytest.fixture(scope="module")
def protection(shapes, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prot") / "p"
    assert main([*TINY_PROTECT, "--train-csv", str(shapes / "train.csv"), "--out", str(folder)]) == 0
    return folder


def train_args(shapes: Path, out: Path, epochs: int = 1) -> list[str]:
    return ["train", "--train-csv", str(shapes / "train.csv"), "--epochs", str(epochs), "--batch-size", "12", "--out", str(out)]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_second_run_on_a_held_folder_is_refused_and_a_dead_holder_is_taken_over(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from mem_toolkit.lock import output_lock
            with output_lock({str(out)!r}):
                print("held", flush=True)
                time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(train_args(shapes, out)) == 2
        err = capsys.readouterr().err
        assert f"error: {out} is in use by another run (pid {holder.pid} on " in err
        assert not (out / "model.safetensors").exists()
    finally:
        holder.kill()  # killed: its lock file stays behind, naming a dead pid
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    assert main(train_args(shapes, out)) == 0
    err = capsys.readouterr().err
    assert f"note: took over the lock of {out} from a run that is no longer alive (pid {holder.pid} on " in err
    assert (out / "model.safetensors").exists() and not (out / LOCK_NAME).exists()


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with output_lock(tmp_path / "out"):
        with pytest.raises(FolderLocked, match=f"{tmp_path / 'out'} is in use by another run \\(pid \\d+"):
            with output_lock(tmp_path / "out"):
                pass
    with output_lock(tmp_path / "out"):  # released: free again
        pass


def failing_save_file(monkeypatch, fail_on_call: int):
    """Make the n-th checkpoint write stop half-way with ENOSPC, as a full disk does; the others write normally."""
    real = mem_toolkit.checkpoint.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] != fail_on_call:
            return real(tensors, filename, metadata=metadata)
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mem_toolkit.checkpoint, "save_file", save_file)
    return calls


def test_full_disk_during_a_training_checkpoint_keeps_the_previous_one(shapes, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    failing_save_file(monkeypatch, fail_on_call=2)  # epoch 1's checkpoint is written, epoch 2's is not
    assert main(train_args(shapes, out, epochs=3)) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert f"could not write {out / 'checkpoint.safetensors'} (No space left on device); its previous version is unchanged" in lines[0]
    _, state = load_state(out / "checkpoint.safetensors")
    assert state["epoch"] == 1 and not list(out.glob("*.tmp"))
    monkeypatch.undo()
    assert main(train_args(shapes, out, epochs=3) + ["--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]


def test_full_disk_during_a_protection_checkpoint_keeps_the_previous_round(shapes, tmp_path, capsys, monkeypatch):
    out = tmp_path / "prot"
    failing_save_file(monkeypatch, fail_on_call=2)  # round 1's state is written, round 2's is not
    args = [*TINY_PROTECT, "--train-csv", str(shapes / "train.csv"), "--out", str(out)]
    assert main(args) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"could not write {out / 'work' / 'state.safetensors'} (No space left on device)" in lines[0]
    _, state = load_state(out / "work" / "state.safetensors")
    assert state["rounds_done"] == 1 and sorted(p.name for p in (out / "work").glob("noise.round*")) == [state["noise_file"]]
    monkeypatch.undo()
    assert main(args + ["--resume"]) == 0
    assert len(json.loads((out / "protection.json").read_text())["diagnostics"]) == 2


def damage(folder: Path, how: str) -> None:
    if how == "missing noise":
        (folder / "noise.npy").unlink()
    elif how == "truncated noise":
        data = (folder / "noise.npy").read_bytes()
        (folder / "noise.npy").write_bytes(data[: len(data) // 3])
    elif how == "malformed json":
        (folder / "protection.json").write_text('{"method": "mem-2", ')
    elif how == "json without eps":
        info = json.loads((folder / "protection.json").read_text())
        del info["eps"]
        (folder / "protection.json").write_text(json.dumps(info))
    elif how == "noise beyond eps":
        noise = np.load(folder / "noise.npy")
        noise[0, 0, 0, 0] = 9
        np.save(folder / "noise.npy", noise)
    elif how == "truncated triggers":
        (folder / "triggers.npy").write_bytes((folder / "triggers.npy").read_bytes()[:100])


@pytest.mark.parametrize("how, message", [
    ("missing noise", "noise.npy is missing"), ("truncated noise", "noise.npy cannot be read"),
    ("malformed json", "protection.json is not valid JSON"), ("json without eps", "protection.json lacks a valid entry 'eps'"),
    ("noise beyond eps", "noise reaches 9/255, beyond its ε = 4/255"), ("truncated triggers", "triggers.npy cannot be read"),
])
def test_a_damaged_protection_is_one_line_and_exit_2(protection, tmp_path, capsys, how, message):
    folder = tmp_path / "damaged"
    shutil.copytree(protection, folder)
    damage(folder, how)
    assert main(["export", "--protection", str(folder), "--out", str(tmp_path / "pub")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and message in err


def test_a_protection_for_other_rows_is_one_line_and_exit_2(protection, shapes, tmp_path, capsys):
    assert main(["export", "--protection", str(protection), "--train-csv", str(shapes / "test.csv"), "--out", str(tmp_path / "pub")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1  # beside the progress bar of decoding the given rows
    assert "error: protection does not fit dataset 'test': 20 rows, the protection has 60" in err
    assert main(["export", "--protection", str(tmp_path / "nothing"), "--out", str(tmp_path / "pub")]) == 2
    assert f"error: {tmp_path / 'nothing' / 'protection.json'} not found" in capsys.readouterr().err


def test_fewer_than_two_images_are_refused_before_any_work(shapes, tmp_path, capsys):
    with open(shapes / "train.csv", newline="") as handle:
        image, caption = next(csv.DictReader(handle)).values()
    one = tmp_path / "one.csv"  # one real image, one missing: --skip-bad leaves a single image
    with open(one, "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "caption"), (shapes / image, caption), ("missing.png", "a lost photo")])
    for command in (train_args(shapes, tmp_path / "run"), [*TINY_PROTECT, "--out", str(tmp_path / "prot")]):
        command = [a if a != str(shapes / "train.csv") else str(one) for a in command]
        if "--train-csv" not in command:
            command += ["--train-csv", str(one)]
        assert main(command + ["--skip-bad"]) == 2
        err = capsys.readouterr().err
        assert "skipped: " in err and "image file not found" in err
        assert "1 usable image(s) (1 bad row(s) were left out); at least 2 are needed" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "prot").exists()
    single = make_shapes(1, 32, seed=0)
    with pytest.raises(DataError, match="1 usable image"):
        EM(rounds=1, surrogate_steps=1, pgd_steps=1).fit(single, progress=False)


def test_full_disk_during_a_shard_export_is_one_line_and_leaves_no_torn_shard(protection, tmp_path, capsys, monkeypatch):
    import mem_toolkit.data.shards as shards

    real, calls = shards._write_tar, {"n": 0}

    def write_tar(path, samples):
        calls["n"] += 1
        real(path, samples)
        if calls["n"] == 2:
            path.write_bytes(path.read_bytes()[:700])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards, "_write_tar", write_tar)
    out = tmp_path / "pub"
    assert main(["export", "--protection", str(protection), "--format", "webdataset", "--shard-size", "5", "--out", str(out)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"could not write {out / 'shard-00001.tar'} (No space left on device); nothing was written there" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.tar"]  # the whole first shard, no temp file, no lock
