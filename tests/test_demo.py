"""The demo end to end at a tiny size: every row, the files it promises, and resuming from its cache."""
from __future__ import annotations

import json

from mem_toolkit.data import make_shapes_split
from mem_toolkit.studies.demo import METHOD_ORDER, DemoPreset, run_demo
from mem_toolkit.experiment import run_arm
from mem_toolkit.protect import Protection

TINY = DemoPreset(
    n_train=40, n_test=12, difficulty="easy", hacker_epochs=1, hacker_batch_size=20,
    uap=dict(surrogate_epochs=1, pgd_steps=1, batch_size=20),
    em=dict(rounds=1, surrogate_steps=1, pgd_steps=1, batch_size=20),
    mem=dict(rounds=1, surrogate_steps=1, pgd_steps=1, trigger_rounds=1, candidates=2, batch_size=20),
)


def test_demo_writes_every_row_table_figures_and_resumes(tmp_path):
    results = run_demo(tmp_path, TINY, progress=False)
    assert list(results["methods"]) == METHOD_ORDER
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"]["clean"]["final"]["epoch"] == 1
    assert "noise-only training data" in saved["methods"]["mem-3-stripped"]["note"]
    table = (tmp_path / "results.md").read_text()
    for name in METHOD_ORDER + ["random guess"]:
        assert f"| {name} |" in table
    assert "Time per stage" in table and "protect mem-3" in table
    for figure in ("curves.png", "curves.pdf", "examples_mem-3.png", "examples_uap.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 1000
    assert set(saved["protections"]) == {"uap", "em", "mem-3", "mem-5"}
    assert len(saved["protections"]["mem-5"]["example_triggers"][0].split()) == 5
    # the study grid changes where runs live, not what they compute: MEM-3's hacker trained directly (as before the grid) agrees
    train, test = make_shapes_split(TINY.n_train, TINY.n_test, TINY.image_size, TINY.seed, TINY.difficulty)
    direct = run_arm("mem-3", Protection.load(tmp_path / "protections" / "mem-3").apply(train), test, TINY.hacker_config(), tmp_path / "direct",
                     TINY.hacker_model, progress=False)
    timing = ("train_seconds",)
    assert {k: v for k, v in direct.final.items() if k not in timing} == {k: v for k, v in results["methods"]["mem-3"]["final"].items() if k not in timing}
    # a second run finds every protection and hacker in the folder and recomputes nothing
    again = run_demo(tmp_path, TINY, progress=False)
    assert again["methods"]["mem-3"]["final"] == results["methods"]["mem-3"]["final"]
    assert again["stage_seconds"]["protect mem-3"] < 5
