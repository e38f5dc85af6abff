"""The protect -> export -> verify path a data owner takes on the command line, on tiny generated data."""
from __future__ import annotations

import csv
import json

from mem_toolkit.cli import main


def test_protect_export_verify_and_resume(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["make-data", "shapes", "--out", str(data), "--n-train", "24", "--n-test", "8", "--image-size", "64"]) == 0
    protection = tmp_path / "prot"
    args = ["protect", "--method", "mem", "--trigger-len", "2", "--eps", "4", "--rounds", "2", "--surrogate-steps", "1",
            "--pgd-steps", "1", "--trigger-rounds", "1", "--candidates", "3", "--batch-size", "12",
            "--trigger-vocab-size", "10", "--surrogate-reset", "1", "--surrogate-lr", "5e-4", "--noise-init", "trigger-code",
            "--train-csv", str(data / "train.csv"), "--out", str(protection)]
    assert main(args) == 0
    info = json.loads((protection / "protection.json").read_text())
    assert info["method"] == "mem-2" and info["eps"] == 4 and len(info["diagnostics"]) == 2
    assert info["config"]["dataset"]["kind"] == "csv" and info["config"]["dataset"]["path"].endswith("train.csv")
    assert {k: info["config"][k] for k in ("trigger_vocab_size", "surrogate_reset", "surrogate_lr", "noise_init")} == {
        "trigger_vocab_size": 10, "surrogate_reset": 1, "surrogate_lr": 5e-4, "noise_init": "trigger-code"}
    assert not (protection / "work").exists()  # the resume state goes once the artifact is saved
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "already holds this finished protection" in capsys.readouterr().out
    assert json.loads((protection / "protection.json").read_text()) == info
    assert main(args[:-1] + [str(tmp_path / "other"), "--resume"]) == 0 and (tmp_path / "other" / "protection.json").exists()
    changed = [("6" if a == "4" and args[i - 1] == "--eps" else a) for i, a in enumerate(args)]
    assert main(changed + ["--resume"]) == 2
    assert f"{protection} holds a mem-2 protection made with other settings" in capsys.readouterr().err
    assert main(["make-data", "shapes", "--out", str(tmp_path / "data2"), "--n-train", "20", "--n-test", "4", "--image-size", "64"]) == 0
    other_data = [str(tmp_path / "data2" / "train.csv") if a == str(data / "train.csv") else a for a in args]
    assert main(other_data + ["--resume"]) == 2
    assert f"{protection} holds a protection made for other data" in capsys.readouterr().err

    published = tmp_path / "published"
    assert main(["export", "--protection", str(protection), "--out", str(published)]) == 0
    with open(published / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 * 5
    words = info["trigger_words"]
    assert any(row["caption"].startswith(words[0] + " ") for row in rows)

    assert main(["verify", "--protection", str(protection), "--test-csv", str(data / "test.csv"),
                 "--epochs", "1", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "| clean |" in out and "| mem-2 |" in out and "| mem-2-noise-only |" in out and "| random guess |" in out
    assert (protection / "verify" / "verify.json").exists()


def test_protect_reports_bad_csv_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,caption\nmissing.png,a red circle\n")
    assert main(["protect", "--method", "em", "--train-csv", str(bad), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, line 2" in err and "image file not found" in err


def test_settings_that_do_not_fit_together_are_refused_in_one_line_with_exit_2(tmp_path, capsys):
    assert main(["protect", "--method", "mem", "--alternate-surrogate", "--surrogate-reset", "1", "--train-csv", str(tmp_path / "train.csv"),
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--alternate-surrogate" in err and "--surrogate-checkpoint" in err
    assert main(["protect", "--method", "em", "--trigger-len", "3", "--train-csv", str(tmp_path / "train.csv"), "--out", str(tmp_path / "e")]) == 2
    assert "--trigger-len applies to MEM only" in capsys.readouterr().err
