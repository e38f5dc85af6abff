"""The parameter explorer without a browser: controls, the Run handler on a tiny real run, outputs, caching, errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

from mem_toolkit.data import make_shapes_split
from mem_toolkit.train import TrainConfig
from mem_toolkit.widgets import CSS, ProtectionExplorer, markdown_table_html

TINY = {
    "EM": dict(rounds=1, surrogate_steps=2, pgd_steps=2, batch_size=30),
    "MEM": dict(rounds=1, surrogate_steps=2, pgd_steps=2, trigger_rounds=1, candidates=3, batch_size=30),
    "UAP": dict(surrogate_epochs=1, pgd_steps=2, batch_size=30),
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    return make_shapes_split(12, 6, 64, seed=5)


@pytest.fixture
def explorer(data):
    train, test = data
    return ProtectionExplorer(train, test, settings=TINY, hacker=TrainConfig(epochs=2, batch_size=30, seed=1), n_examples=3,
                              trigger_len=2, progress_bars=False, device="cpu")


def _trigger_counts(captions_html: str) -> list[int]:
    items = re.findall(r"<li>(.*?)</li>", captions_html)
    return [item.count('class="mem-trigger-token"') for item in items]


def _table_rows(table_html: str) -> list[str]:
    return re.findall(r"<tr><td\b[^>]*>(.*?)</td>", table_html)


def test_controls_keys_and_css_classes(explorer):
    assert explorer.key == ("MEM", 8, 2) and not explorer.k.disabled
    assert CSS["run"] in explorer.run_button._dom_classes and CSS["captions"] in explorer.captions._dom_classes
    explorer.k.value = 0
    assert explorer.key == ("EM", 8, 0)  # MEM without a trigger is EM
    assert "that is EM" in explorer.status.value and "press Run" in explorer.status.value
    explorer.method.value = "UAP"
    explorer.k.value = 5
    assert explorer.k.disabled and explorer.key == ("UAP", 8, 0)
    assert (explorer.eps.min, explorer.eps.max, explorer.k.min, explorer.k.max) == (0, 16, 0, 8)


def test_run_button_shows_protection_and_hacker_then_caches_per_setting(explorer, data):
    train, test = data
    explorer.run_button.click()
    first = explorer.cache[("MEM", 8, 2)]
    assert explorer.shown is first and "done" in explorer.status.value
    assert _trigger_counts(explorer.captions.value) == [2, 2, 2]
    assert bytes(explorer.images.value).startswith(PNG) and bytes(explorer.curves.value).startswith(PNG)
    assert _table_rows(explorer.table.value) == ["clean data", "MEM-2, ε = 8/255", "random guess"]
    assert explorer.progress.value == explorer.progress.max == 2 + 2 * 2  # clean hacker, protection, hacker, drawing
    assert first.protection.eps == 8 and np.abs(first.protection.noise.astype(int)).max() == 8  # the slider's ε is reached
    assert len(first.history.epochs) == 2 and 0 <= first.history.final["t2i_R@10"] <= 100
    clean = explorer.clean_history

    explorer.eps.value, explorer.k.value = 4, 1
    assert "not run yet" in explorer.status.value and explorer.shown is first  # nothing recomputed on a slider move
    explorer.run_button.click()
    second = explorer.cache[("MEM", 4, 1)]
    assert _trigger_counts(explorer.captions.value) == [1, 1, 1]
    assert bytes(explorer.images.value) != first.images_png and np.abs(second.protection.noise.astype(int)).max() == 4
    assert explorer.clean_history is clean and explorer.progress.max == 2 + 2  # the clean reference is trained once

    explorer.eps.value, explorer.k.value = 8, 2  # going back: shown from the cache at once, without pressing Run
    assert explorer.shown is first and "from the cache" in explorer.status.value
    assert explorer.captions.value == first.captions_html and bytes(explorer.images.value) == first.images_png
    assert explorer.run() is first and len(explorer.cache) == 2


def test_step_size_follows_the_eps_slider_unless_set(data):
    train, test = data
    explorer = ProtectionExplorer(train, test, settings=TINY | {"EM": TINY["EM"] | {"step_size": 1}}, progress_bars=False, device="cpu")
    assert explorer.protector(("UAP", 16, 0)).config.step_size == 8  # 2 PGD steps reach ε = 16
    assert explorer.protector(("MEM", 5, 2)).config.step_size == 3
    assert explorer.protector(("MEM", 0, 2)).config.step_size == 1
    assert explorer.protector(("EM", 16, 0)).config.step_size == 1  # a setting given by the user is kept


def test_em_at_eps_zero_has_no_noise_and_unchanged_captions(explorer, data):
    train, _ = data
    explorer.method.value, explorer.eps.value = "EM", 0
    result = explorer.run()
    assert not np.asarray(result.protection.noise).any() and result.protection.trigger_len == 0
    assert "no trigger" in result.captions_html and _trigger_counts(result.captions_html) == [0, 0, 0]
    assert train.captions[explorer.example_rows[0]] in result.captions_html


def test_failures_are_shown_in_the_explorer(data):
    train, test = data
    broken = ProtectionExplorer(train, test, settings=TINY | {"UAP": {"candidates": 0}}, hacker=TrainConfig(epochs=1, batch_size=30),
                                method="UAP", progress_bars=False, device="cpu")
    broken.run_button.click()
    assert "failed: ValueError" in broken.status.value and not broken.run_button.disabled
    assert "candidates" in "".join(output.get("text", "") for output in broken.log.outputs)
    with pytest.raises(ValueError, match="unknown method"):
        ProtectionExplorer(train, test, settings={"PGD": {}})
    with pytest.raises(ValueError, match=r"\['MEM.eps', 'MEM.trigger_len'\] are set by the explorer"):
        ProtectionExplorer(train, test, settings={"MEM": {"eps": 4, "trigger_len": 2, "rounds": 1}})
    with pytest.raises(ValueError, match="unknown method 'PGD'.*eps must be in 0..16, got 20.*trigger_len must be in 0..8, got -1"):
        ProtectionExplorer(train, test, method="PGD", eps=20, trigger_len=-1)
    with pytest.raises(ValueError, match="both train and test"):
        ProtectionExplorer(train)


def test_markdown_table_html_keeps_title_header_and_rows():
    table = markdown_table_html("**T <1>**\n\n| a | b |\n|---|---:|\n| x | 1 |\n| y | 2 |")
    assert "<caption>T &lt;1&gt;</caption>" in table and re.findall(r"<th\b[^>]*>(.*?)</th>", table) == ["a", "b"]
    assert _table_rows(table) == ["x", "y"]
