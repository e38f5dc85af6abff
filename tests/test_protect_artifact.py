"""The Protection artifact, its protected views, export, sharing units and resumable protection runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mem_toolkit.data.loaders import load_caption_csv
from mem_toolkit.errors import ProtectionError
from mem_toolkit.protect import EM, MEM, UAP, Protection, StrippedView
from mem_toolkit.protect.export import export_protection
from mem_toolkit.protect.sharing import sharing_units, sweep_batches
from mem_toolkit.text import CaptionTokenizer

TINY = dict(rounds=2, surrogate_steps=2, pgd_steps=2, trigger_rounds=1, candidates=4, batch_size=16)


@pytest.fixture(scope="module")
def mem_protection(tiny_shapes):
    return MEM(trigger_len=3, eps=6, **TINY).fit(tiny_shapes, progress=False)


def test_mem_artifact_shapes_bounds_and_diagnostics(mem_protection, tiny_shapes):
    p = mem_protection
    assert p.method == "mem-3"
    assert p.noise.dtype == np.int8 and p.noise.shape == (tiny_shapes.n_images, 64, 64, 3)
    assert 0 < np.abs(p.noise).max() <= 6
    assert p.triggers.shape == (tiny_shapes.n_images, 3)
    assert (p.unit_of_row == tiny_shapes.group_ids).all()
    assert [d["round"] for d in p.diagnostics] == [1, 2]
    first = p.diagnostics[0]
    for key in ("surrogate_loss", "hotflip_loss_before", "hotflip_loss_after", "pgd_loss_first", "pgd_loss_last",
                "unique_triggers", "caption_vocab_share"):
        assert key in first
    assert first["hotflip_loss_after"] <= first["hotflip_loss_before"]
    assert "hotflip_loss_before" not in p.diagnostics[1]  # trigger_rounds=1
    assert first["caption_vocab_share"] == 0.0  # caption words are excluded by default


def test_published_captions_round_trip_to_the_optimised_ids(mem_protection, tiny_shapes):
    tokenizer = CaptionTokenizer()
    ids = tiny_shapes.caption_token_ids(tokenizer)
    for row in range(0, len(tiny_shapes), 7):
        text = mem_protection.published_caption(tiny_shapes, row, tokenizer)
        trigger = mem_protection.triggers[mem_protection.unit_of_row[row]].tolist()
        assert tokenizer.encode(text) == trigger + list(ids[row])


def test_protected_view_applies_noise_and_trigger_and_the_controls(mem_protection, tiny_shapes):
    tokenizer = CaptionTokenizer()
    rows = np.array([0, 6, 17])
    view = mem_protection.apply(tiny_shapes)
    clean = tiny_shapes.image_batch(rows).to(torch.int16)
    noise = torch.from_numpy(mem_protection.noise[tiny_shapes.group_ids[rows]]).permute(0, 3, 1, 2).to(torch.int16)
    assert torch.equal(view.image_batch(rows).to(torch.int16), (clean + noise).clamp(0, 255))
    tokens = view.token_batch(rows, tokenizer, 32)
    assert (tokens[:, 0] == tokenizer.sot).all()
    assert torch.equal(tokens[:, 1:4], torch.from_numpy(mem_protection.triggers[tiny_shapes.group_ids[rows]]))
    trigger_only = mem_protection.apply(tiny_shapes, noise=False)
    noise_only = mem_protection.apply(tiny_shapes, trigger=False)
    assert torch.equal(trigger_only.image_batch(rows), tiny_shapes.image_batch(rows))
    assert torch.equal(trigger_only.token_batch(rows, tokenizer, 32), tokens)
    assert torch.equal(noise_only.token_batch(rows, tokenizer, 32), tiny_shapes.token_batch(rows, tokenizer, 32))
    stripped = StrippedView(view, 3)
    assert torch.equal(stripped.token_batch(rows, tokenizer, 32), noise_only.token_batch(rows, tokenizer, 32))
    assert torch.equal(StrippedView(view, 1).token_batch(rows, tokenizer, 32)[:, 1:3], tokens[:, 2:4])


def test_save_and_load_round_trip_without_pickle(mem_protection, tiny_shapes, tmp_path):
    mem_protection.save(tmp_path / "p")
    info = json.loads((tmp_path / "p" / "protection.json").read_text())
    assert info["method"] == "mem-3" and len(info["trigger_words"]) == mem_protection.n_units
    loaded = Protection.load(tmp_path / "p", tiny_shapes)
    assert np.array_equal(loaded.noise, mem_protection.noise)
    assert np.array_equal(loaded.triggers, mem_protection.triggers)
    assert loaded.config == json.loads(json.dumps(mem_protection.config))
    assert isinstance(loaded.noise, np.memmap)  # never a dense copy of the dataset's noise in RAM


def test_load_rejects_wrong_shape_eps_and_dataset(mem_protection, tiny_shapes, tmp_path):
    from mem_toolkit.data.shapes import make_shapes

    folder = mem_protection.save(tmp_path / "p")
    with pytest.raises(ValueError, match="fingerprint"):
        Protection.load(folder, make_shapes(48, 64, seed=99))
    np.save(folder / "noise.npy", np.zeros((5, 32, 32, 3), dtype=np.int8))
    with pytest.raises(ValueError, match="noise must be int8 of shape"):
        Protection.load(folder)
    too_big = np.array(mem_protection.noise)
    too_big[0, 0, 0, 0] = 7
    np.save(folder / "noise.npy", too_big)
    with pytest.raises(ValueError, match="beyond its ε = 6"):
        Protection.load(folder)
    (folder / "triggers.npy").unlink()
    with pytest.raises(ProtectionError, match="triggers.npy is missing"):
        Protection.load(folder)


def test_export_writes_verified_pngs_and_publishable_captions(mem_protection, tiny_shapes, tmp_path):
    csv_path = export_protection(mem_protection, tiny_shapes, tmp_path / "published", progress=False)
    exported = load_caption_csv(csv_path, 64).preload(progress=False)
    assert len(exported) == len(tiny_shapes) and exported.n_images == tiny_shapes.n_images
    tokenizer = CaptionTokenizer()
    assert exported.captions[0] == mem_protection.published_caption(tiny_shapes, 0, tokenizer)
    diff = exported.images(range(exported.n_images)).astype(int) - tiny_shapes.images(range(tiny_shapes.n_images)).astype(int)
    assert np.abs(diff).max() <= mem_protection.eps and np.abs(diff).max() > 0


def test_sharing_units_by_granularity(tiny_shapes):
    assert (sharing_units(tiny_shapes, "row") == np.arange(len(tiny_shapes))).all()
    assert (sharing_units(tiny_shapes, "image") == tiny_shapes.group_ids).all()
    clusters = sharing_units(tiny_shapes, "cluster", n_clusters=4, seed=0)
    assert set(clusters.tolist()) == {0, 1, 2, 3}
    for rows in tiny_shapes.rows_of_group():
        assert len(set(clusters[rows].tolist())) == 1  # an image's captions share its cluster
    with pytest.raises(ValueError, match="n_clusters"):
        sharing_units(tiny_shapes, "cluster", n_clusters=0)


def test_sweep_batches_go_round_robin_unless_a_unit_spans_batches_then_each_unit_has_one_process():
    rng = np.random.default_rng(0)
    unit_of_row = rng.integers(0, 7, size=57)
    rows = rng.permutation(57)
    one = sweep_batches(rows, unit_of_row, 8)
    assert [owner for owner, _ in one] == [0] * 7 and np.array_equal(np.concatenate([b for _, b in one]), rows[:56])  # a 1-row tail is dropped
    round_robin = sweep_batches(rows, unit_of_row, 8, processes=2)
    assert [owner for owner, _ in round_robin] == [0, 1, 0, 1, 0, 1, 0]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, round_robin))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, sweep_batches(rows, unit_of_row, 8, 1, units_span_batches=True)))
    by_unit = sweep_batches(rows, unit_of_row, 8, processes=2, units_span_batches=True)
    units_of = {owner: set() for owner in (0, 1)}
    for owner, batch in by_unit:
        assert 2 <= len(batch) <= 8
        units_of[owner] |= set(unit_of_row[batch].tolist())
    assert units_of[0] and units_of[1] and not units_of[0] & units_of[1]  # no unit is swept by two processes
    for owner in (0, 1):  # each process sweeps its rows in the sweep's order
        mine = np.concatenate([b for o, b in by_unit if o == owner])
        expected = rows[unit_of_row[rows] % 2 == owner]
        assert np.array_equal(mine, expected[:len(mine)]) and len(expected) - len(mine) <= 1


def test_row_granularity_exports_one_file_per_row(tiny_shapes, tmp_path):
    small = tiny_shapes.select_images(range(8))
    protection = EM(granularity="row", rounds=1, surrogate_steps=1, pgd_steps=1, batch_size=16).fit(small, progress=False)
    assert protection.noise.shape[0] == len(small)
    csv_path = export_protection(protection, small, tmp_path / "rows", progress=False)
    assert len(list((tmp_path / "rows" / "images").glob("*.png"))) == len(small)
    assert csv_path.read_text().count("\n") == len(small) + 1


def test_uap_trains_a_clean_surrogate_then_ascends(tiny_shapes):
    protection = UAP(surrogate_epochs=1, pgd_steps=2, batch_size=16).fit(tiny_shapes, progress=False)
    assert protection.config["prepare"]["surrogate_training"] == "clean"
    assert protection.diagnostics[0]["pgd_loss_last"] >= protection.diagnostics[0]["pgd_loss_first"] - 1e-3


def test_interrupted_then_resumed_run_gives_the_same_artifact(tiny_shapes, tmp_path, monkeypatch):
    settings = dict(trigger_len=2, eps=4, seed=5, **TINY)
    whole = MEM(**settings).fit(tiny_shapes, work_dir=tmp_path / "whole", progress=False)

    calls = {"n": 0}
    original = MEM._noise_step

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during round 2
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MEM, "_noise_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        MEM(**settings).fit(tiny_shapes, work_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(MEM, "_noise_step", original)
    resumed = MEM(**settings).fit(tiny_shapes, work_dir=tmp_path / "run", resume=True, progress=False)
    assert np.array_equal(resumed.noise, whole.noise)
    assert np.array_equal(resumed.triggers, whole.triggers)
    assert [d["round"] for d in resumed.diagnostics] == [1, 2]
    assert resumed.diagnostics[0]["surrogate_loss"] == whole.diagnostics[0]["surrogate_loss"]
    with pytest.raises(ValueError, match="settings differ"):
        MEM(**(settings | {"eps": 5})).fit(tiny_shapes, work_dir=tmp_path / "run", resume=True, progress=False)


def test_bad_settings_are_refused():
    with pytest.raises(TypeError, match="unknown setting"):
        MEM(trigger_length=3)
    with pytest.raises(ValueError, match="eps"):
        EM(eps=300)
    with pytest.raises(ValueError, match="at least one token"):
        MEM(trigger_len=0)
    with pytest.raises(ValueError, match="unknown preset"):
        MEM(preset="gpu-xl")
    with pytest.raises(ValueError, match="pgd_steps, surrogate_steps, surrogate_epochs >= 0 and step_size >= 1"):
        EM(pgd_steps=-1)
    with pytest.raises(ValueError, match="step_size >= 1"):
        UAP(step_size=0)
