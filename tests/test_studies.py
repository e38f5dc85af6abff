"""The study layer: intervals over seeds, the arms x hackers x seeds grid, and the robustness study end to end at a tiny size."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mem_toolkit.cli import main
from mem_toolkit.data import make_shapes_split
from mem_toolkit.data.loaders import load_caption_csv
from mem_toolkit.intervals import bootstrap_interval, interval, intervals
from mem_toolkit.studies.grid import Arm, Hacker, run_grid
from mem_toolkit.studies.robustness import CLEAN, NO_DEFENCE, PRESETS, PRETRAINED, arm_name, run_robustness
from mem_toolkit.train import TrainConfig


def test_interval_is_students_t_over_seeds_and_prints_without_spread_for_one_seed():
    three = interval([10.0, 12.0, 17.0])
    expected = stats.t.ppf(0.975, 2) * np.std([10, 12, 17], ddof=1) / np.sqrt(3)
    assert three.mean == pytest.approx(13.0) and three.half_width == pytest.approx(expected)
    assert three.low == pytest.approx(13.0 - expected) and three.format() == f"13.0 ± {expected:.1f}"
    one = interval([4.0])
    assert one.half_width == 0 and one.format() == "4.0"
    summary = intervals([{"a": 1.0, "b": 2.0, "name": "x"}, {"a": 3.0, "b": 2.0, "name": "y"}])
    assert set(summary) == {"a", "b"} and summary["b"].half_width == 0 and summary["a"].mean == 2.0
    with pytest.raises(ValueError):
        interval([])


def test_bootstrap_interval_resamples_seeds_and_test_items():
    # one seed, 50 faces of which 10 are named right: 20 % with the spread of a binomial (about ±11 points), not 0
    one_seed = bootstrap_interval([[1.0] * 10 + [0.0] * 40])
    assert one_seed.mean == pytest.approx(20.0) and one_seed.values == (20.0,)
    assert 8.0 <= one_seed.low < 20.0 < one_seed.high <= 33.0
    assert one_seed.format() == f"20.0 [{one_seed.low:.1f}, {one_seed.high:.1f}]"  # a percentile range, never printed as ±
    # seeds that disagree widen it; the same seed twice does not narrow it below the items' spread
    agreeing = bootstrap_interval([[1.0] * 10 + [0.0] * 40] * 2)
    disagreeing = bootstrap_interval([[1.0] * 2 + [0.0] * 48, [1.0] * 18 + [0.0] * 32])
    assert disagreeing.mean == pytest.approx(20.0) and disagreeing.high - disagreeing.low > agreeing.high - agreeing.low
    assert bootstrap_interval([[1.0] * 10 + [0.0] * 40], seed=0) == one_seed  # seeded: the same table, the same interval
    with pytest.raises(ValueError):
        bootstrap_interval([[]])


def test_grid_trains_each_hacker_on_each_arm_per_seed_reports_intervals_and_rereads_finished_runs(tmp_path):
    train, test = make_shapes_split(16, 8, 64, seed=2)
    hacker = Hacker("mem-tiny-vit", TrainConfig(epochs=1, batch_size=20, seed=5))
    arms = {"clean": train, "half": Arm(train.select_images(range(8)))}
    grid = run_grid(arms, test, [hacker], tmp_path, seeds=[0, 1], progress=False)
    runs = grid.runs["mem-tiny-vit"]
    assert list(runs) == ["clean", "half"] and all(len(seeded) == 2 for seeded in runs.values())
    assert [r.history.config["seed"] for r in runs["clean"]] == [5, 6]  # seed s moves the hacker's seed by s
    assert runs["clean"][0].history.step_loss != runs["clean"][1].history.step_loss
    summary = grid.summary("mem-tiny-vit", "clean")
    assert summary["i2t_R@1"].mean == pytest.approx(np.mean([f["i2t_R@1"] for f in grid.finals("mem-tiny-vit", "clean")]))
    table = grid.table("mem-tiny-vit", {"clean": "clean data", "half": "half the photos"})
    assert "| clean data |" in table and "| half the photos |" in table and "| random guess |" in table and " ± " in table
    saved = json.loads(json.dumps(grid.to_dict()))
    assert saved["runs"]["mem-tiny-vit"]["half"]["summary"]["t2i_R@1"]["values"] == [f["t2i_R@1"] for f in grid.finals("mem-tiny-vit", "half")]
    again = run_grid(arms, test, [hacker], tmp_path, seeds=[0, 1], progress=False)
    assert [r.seconds for r in again.runs["mem-tiny-vit"]["clean"]] == [r.seconds for r in runs["clean"]]  # reread, not retrained
    tuned = Hacker("mem-tiny-vit", replace(hacker.config, epochs=2))
    assert tuned.key == hacker.key and Hacker("mem-tiny-vit", hacker.config, pretrained="w.safetensors").key != hacker.key


SMOKE = PRESETS["smoke"]


def test_robustness_defends_the_published_files_trains_every_cell_and_resumes(tmp_path):
    result = run_robustness(tmp_path, SMOKE, progress=False)
    assert result.sources == [CLEAN, "mem-3"] and result.columns == [NO_DEFENCE, "jpeg75", "crop-flip", "protected50", PRETRAINED]
    runs = result.grid.runs["mem-tiny-rn"]
    assert len(runs) == 9 and result.same_as == {"clean__protected50": "clean__none"}  # clean mixed with clean: nothing to train
    assert result.cell(CLEAN, "protected50") == result.cell(CLEAN, NO_DEFENCE)
    records = {name: json.loads((run[0].folder / "arm.json").read_text()) for name, run in runs.items()}
    assert all(r["pretrained"] is None for name, r in records.items() if not name.endswith(PRETRAINED))
    assert all(r["pretrained"].endswith("model.safetensors") for name, r in records.items() if name.endswith(PRETRAINED))
    assert all(r["config"].get("augment") == "crop-flip" for name, r in records.items() if name.endswith("crop-flip"))
    assert not any("augment" in r["config"] for name, r in records.items() if not name.endswith("crop-flip"))
    # the hacker of a file defence trains on the defended files, which differ from the published ones
    published = load_caption_csv(tmp_path / "published" / "mem-3" / "captions.csv", 64).preload(progress=False)
    defended = load_caption_csv(tmp_path / "defended" / "mem-3" / "jpeg75" / "captions.csv", 64).preload(progress=False)
    assert published.captions == defended.captions
    difference = np.abs(published.images(range(published.n_images)).astype(int) - defended.images(range(defended.n_images)).astype(int))
    assert 0 < difference.mean() and difference.max() > 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["cells"]["mem-3"]) == set(result.columns) and "i2t_R@10" in saved["cells"][CLEAN]["jpeg75"]
    assert saved["cells"]["mem-3"]["jpeg75"]["t2i_R@1"]["mean"] == result.cell("mem-3", "jpeg75")["t2i_R@1"].mean
    assert set(saved["checks"]) == {f"{c}, {d}: mem-3 R@1 <= 1/2 clean R@1 under the same defence"
                                    for c in ("jpeg75", "crop-flip", "protected50", PRETRAINED) for d in ("i2t", "t2i")}
    table = (tmp_path / "results.md").read_text()
    assert "| mem-3 |" in table and "| random guess |" in table and "| i2t: R@1 / R@10 / MedR | none |" in table
    assert (tmp_path / "figures" / "robustness_t2i_R1.png").stat().st_size > 1000
    again = run_robustness(tmp_path, SMOKE, progress=False)
    assert again.stage_seconds["hackers"] == result.stage_seconds["hackers"] and again.stage_seconds["protect mem-3"] < 5
    assert again.cell("mem-3", PRETRAINED)["i2t_R@1"].mean == result.cell("mem-3", PRETRAINED)["i2t_R@1"].mean
    assert arm_name("mem-3", "jpeg75") in runs
    mixed = load_caption_csv(tmp_path / "defended" / "mem-3" / "protected50" / "captions.csv", 64)
    assert {Path(p).parent.name for p in mixed.image_paths} == {"clean", "protected"}  # half the images from each side


def test_robustness_command_refuses_an_unknown_preset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["robustness", "--out", "x", "--preset", "huge"])
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


def test_robustness_command_takes_its_rows_columns_and_seeds_from_flags(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["robustness", "--out", str(out), "--preset", "smoke", "--protections", "random-id-trigger",
                 "--defences", "jpeg75", "--seeds", "0", "1"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["sources"] == [CLEAN, "random-id-trigger"] and saved["columns"] == [NO_DEFENCE, "jpeg75"]
    assert saved["runs"]["seeds"] == [0, 1] and len(saved["runs"]["runs"]["mem-tiny-rn"]) == 4
    assert all(len(arm["finals"]) == 2 for arm in saved["runs"]["runs"]["mem-tiny-rn"].values())
    assert "| random-id-trigger |" in capsys.readouterr().out


def test_robustness_command_names_every_choice_for_an_unknown_protection_or_defence(capsys):
    assert main(["robustness", "--out", "x", "--protections", "mem-9", "--defences", "jpeg75", "jpeg12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown protection or defence 'mem-9', 'jpeg12'" in err and "mem-3-robust" in err


def test_pretrained_surrogate_row_starts_its_surrogate_from_weights_the_hacker_never_saw(tmp_path):
    preset = replace(SMOKE, protections=("mem-3-pretrained-surrogate",), defences=(PRETRAINED,))
    result = run_robustness(tmp_path, preset, progress=False)
    config = json.loads((tmp_path / "protections" / "mem-3-pretrained-surrogate" / "protection.json").read_text())["config"]
    surrogate_weights = Path(config["surrogate_pretrained"])
    hacker_weights = Path(json.loads((result.grid.runs["mem-tiny-rn"][arm_name(CLEAN, PRETRAINED)][0].folder / "arm.json").read_text())["pretrained"])
    assert surrogate_weights.is_relative_to(tmp_path / "surrogate_pretrain") and hacker_weights.is_relative_to(tmp_path / "pretrain")
    # the data owner's and the hacker's pretrainings learned from different scenes
    owner, hacker = (json.loads((weights.parent / "arm.json").read_text())["data_key"] for weights in (surrogate_weights, hacker_weights))
    assert owner != hacker
    assert result.sources == [CLEAN, "mem-3-pretrained-surrogate"] and len(result.grid.runs["mem-tiny-rn"]) == 4
