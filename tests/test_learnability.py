"""The learnability check: fresh hackers on each view of most photos, scored on the held-out rest, clean."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mem_toolkit.cli import main
from mem_toolkit.data.shapes import make_shapes
from mem_toolkit.protect.controls import random_id_protection
from mem_toolkit.protect.learnability import check_split, learnability_report, learnability_verdict


def test_the_held_out_photos_are_seeded_and_none_of_their_rows_is_trained_on(tiny_shapes):
    held, rows = check_split(tiny_shapes, 0.2, seed=0)
    assert len(held) == round(0.2 * tiny_shapes.n_images) and np.all(np.diff(held) > 0)
    assert not np.isin(tiny_shapes.group_ids[rows], held).any()
    assert len(rows) + np.isin(tiny_shapes.group_ids, held).sum() == len(tiny_shapes)
    assert np.array_equal(check_split(tiny_shapes, 0.2, seed=0)[0], held)
    assert not np.array_equal(check_split(tiny_shapes, 0.2, seed=1)[0], held)
    with pytest.raises(ValueError, match="at least 4 photos"):
        check_split(tiny_shapes.select_images([0, 1, 2]), 0.2, seed=0)


def test_a_trigger_deleted_view_without_noise_trains_the_very_hacker_the_clean_pairs_do():
    """A random-ID trigger has no noise: with the trigger deleted the hacker sees the clean pairs, from the same
    start and batches, so it must score exactly as the clean one; the published pairs (with IDs) train another."""
    data = make_shapes(100, 64, seed=5, name="check")
    report = learnability_report(data, random_id_protection(data, 2, seed=0), epochs=1, seeds=(0, 1), batch_size=32, progress=False)
    assert report["held_out_photos"] == 20 and report["train_rows"] == 80 * 5
    assert report["metrics"]["trigger_deleted"] == report["metrics"]["clean"] and len(report["metrics"]["clean"]) == 2
    assert report["metrics"]["clean"][0] != report["metrics"]["clean"][1]  # two seeds, two hackers
    assert report["kept_R@10"]["trigger_deleted"] == {d: {"mean": 1.0, "min": 1.0, "max": 1.0} for d in ("i2t", "t2i")}
    assert report["metrics"]["published"] != report["metrics"]["clean"]
    assert report["verdict"] == learnability_verdict(report)


def _report(clean: float, noise_only: tuple[float, float], published: float, random: float = 5.0) -> dict:
    """A two-seed report whose hackers score the same in both directions."""
    def seeds(values):
        return [{"i2t_R@10": v, "t2i_R@10": v} for v in values]

    metrics = {"clean": seeds([clean, clean]), "trigger_deleted": seeds(noise_only), "published": seeds([published, published])}
    kept = {name: {d: {"mean": float(np.mean([m[f"{d}_R@10"] / clean for m in metrics[name]])),
                       "min": min(m[f"{d}_R@10"] for m in metrics[name]) / clean, "max": max(m[f"{d}_R@10"] for m in metrics[name]) / clean}
                   for d in ("i2t", "t2i")} for name in ("published", "trigger_deleted")}
    return {"model": "m", "epochs": 3, "seeds": [0, 1], "held_out_photos": 160, "metrics": metrics,
            "random": {"i2t_R@10": random, "t2i_R@10": random}, "kept_R@10": kept}


def test_the_verdict_names_how_much_work_the_noise_does_and_stays_unsure_inside_the_spread():
    assert learnability_verdict(_report(6.0, (6.0, 6.0), 2.0)).endswith("says nothing (more epochs, or more photos)")
    assert learnability_verdict(_report(18.0, (17.0, 18.0), 6.0)).endswith("the noise does little: a hacker who deletes the trigger learns the content")
    assert learnability_verdict(_report(18.0, (12.0, 16.0), 6.0)).endswith("within these short runs' spread (verify on a test set)")
    split = _report(18.0, (17.0, 18.0), 6.0)
    split["kept_R@10"]["trigger_deleted"]["t2i"]["mean"] = 0.7  # the directions disagree: no firm word
    assert learnability_verdict(split).endswith("within these short runs' spread (verify on a test set)")
    good = learnability_verdict(_report(18.0, (6.0, 12.0), 6.0))
    assert good.endswith("the noise does real work") and "trigger deleted keeps 50% (33%-67%) / 50% (33%-67%)" in good


def test_protect_runs_the_check_once_and_rereads_it(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["make-data", "shapes", "--out", str(data), "--n-train", "30", "--n-test", "4", "--image-size", "64"]) == 0
    out = tmp_path / "prot"
    args = ["protect", "--method", "mem", "--trigger-len", "2", "--rounds", "1", "--surrogate-steps", "1", "--pgd-steps", "1",
            "--trigger-rounds", "1", "--candidates", "2", "--batch-size", "16", "--train-csv", str(data / "train.csv"),
            "--out", str(out), "--check-epochs", "1", "--check-seeds", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    report = json.loads((out / "learnability.json").read_text())
    assert f"learnability: {report['verdict']}" in first
    assert report["key"] == {"protection": report["key"]["protection"], "model": "mem-tiny-rn", "epochs": 1, "seeds": [0]}
    assert set(report["metrics"]) == {"clean", "published", "trigger_deleted"}
    written = (out / "learnability.json").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert f"learnability: {report['verdict']}" in capsys.readouterr().out
    assert (out / "learnability.json").stat().st_mtime_ns == written  # reread, not trained again
    assert main(args[:-2] + ["--check-seeds", "0"]) == 2
    assert "--check-seeds at least 1" in capsys.readouterr().err
