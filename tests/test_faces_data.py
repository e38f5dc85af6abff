"""Synthetic faces, pseudonyms, identity layouts (folder / CSV), renaming and the per-person split."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mem_toolkit.data.faces import generate_faces, make_faces
from mem_toolkit.data.identity import (
    NEUTRAL_TEMPLATE, TEMPLATES, load_identity_csv, load_identity_folder, read_pseudonyms, write_identity_folder,
)
from mem_toolkit.data.names import FIRST_NAMES, LAST_NAMES, pseudonyms
from mem_toolkit.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def small_faces():
    return make_faces(6, 4, 32, seed=3)


def test_same_seed_same_faces_other_seed_other_faces():
    a, b, c = generate_faces(3, 2, 32, seed=1), generate_faces(3, 2, 32, seed=1), generate_faces(3, 2, 32, seed=2)
    everything = np.arange(6)
    assert np.array_equal(a.dataset.images(everything), b.dataset.images(everything))
    assert a.keys == b.keys and a.people == b.people
    assert not np.array_equal(a.dataset.images(everything), c.dataset.images(everything))
    assert a.dataset.images([0]).shape == (1, 32, 32, 3) and a.dataset.images([0]).dtype == np.uint8


def test_more_people_keep_the_earlier_ones():
    few, more = generate_faces(2, 2, 32, seed=0), generate_faces(3, 3, 32, seed=0)
    for g, key in enumerate(few.keys):
        assert np.array_equal(few.dataset.images([g]), more.dataset.images([more.keys.index(key)]))


def test_identities_are_distinguishable_but_not_trivially():
    """Nearest neighbour in pixel space finds the same person far above chance, yet far from always."""
    photos = generate_faces(20, 6, 32, seed=0)
    x = photos.dataset.images(np.arange(len(photos.keys))).reshape(len(photos.keys), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    accuracy = (photos.identity[similarity.argmax(1)] == photos.identity).mean()
    assert 3 / 20 < accuracy < 0.9
    photos_of_first = photos.dataset.images(np.flatnonzero(photos.identity == 0))
    assert not np.array_equal(photos_of_first[0], photos_of_first[1])  # every photo varies


def test_pseudonyms_are_invented_unique_and_stable():
    names = pseudonyms(300, seed=5)
    assert names == pseudonyms(300, seed=5) and names != pseudonyms(300, seed=6)
    assert len(set(names)) == 300
    assert all(n.split(" ")[0] in FIRST_NAMES and n.split(" ")[1] in LAST_NAMES for n in names)
    assert pseudonyms(10, seed=5) == names[:10]
    with pytest.raises(ValueError, match="distinct pseudonyms"):
        pseudonyms(len(FIRST_NAMES) * len(LAST_NAMES) + 1)


def test_split_one_test_photo_per_person_with_one_caption(small_faces):
    data = small_faces
    assert data.n_people == 6 and len(set(data.names)) == 6
    assert data.test.n_images == 6 and len(data.test) == 6
    assert data.train.n_images == 6 * 3 and len(data.train) == 18
    assert list(data.test_identity) == list(range(6))
    assert np.bincount(data.train_identity).tolist() == [3] * 6
    assert not set(data.train.image_keys) & set(data.test.image_keys)
    for dataset, identity in ((data.train, data.train_identity), (data.test, data.test_identity)):
        for caption, group in zip(dataset.captions, dataset.group_ids):
            person = identity[group]
            assert data.names[person] in caption
            assert any(caption == t.format(name=data.names[person]) for t in TEMPLATES)
            assert dataset.image_keys[group].startswith(data.people[person] + "/")


def test_split_is_deterministic_and_follows_the_seed():
    a, b, c = make_faces(5, 4, 32, seed=0), make_faces(5, 4, 32, seed=0), make_faces(5, 4, 32, seed=9)
    assert a.test.image_keys == b.test.image_keys and a.train.captions == b.train.captions
    assert a.names != c.names


def test_several_captions_per_training_photo_use_distinct_templates():
    data = make_faces(3, 3, 32, seed=0, captions_per_image=4)
    assert len(data.train) == 4 * data.train.n_images and len(data.test) == data.test.n_images
    for rows in data.train.rows_of_group():
        assert len({data.train.captions[r] for r in rows}) == 4


def test_templates_must_name_the_person():
    with pytest.raises(ValueError, match="name"):
        make_faces(2, 2, 32, templates=("a photo of someone",))


def test_written_folder_reads_back_as_the_same_split(tmp_path, small_faces):
    photos = generate_faces(6, 4, 32, seed=3)
    labels = write_identity_folder(tmp_path, photos, progress=False)
    assert (tmp_path / photos.keys[0]).is_file()
    with open(labels, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "identity"] and len(rows) == 25
    from_folder = load_identity_folder(tmp_path, 32, seed=3, rename=False, progress=False)
    from_csv = load_identity_csv(labels, 32, seed=3, rename=False, progress=False)
    for loaded in (from_folder, from_csv):
        assert loaded.names == small_faces.names
        assert loaded.test.captions == small_faces.test.captions
        assert loaded.train.captions == small_faces.train.captions
        assert np.array_equal(loaded.test.images(np.arange(6)), small_faces.test.images(np.arange(6)))
        assert np.array_equal(loaded.train_identity, small_faces.train_identity)


def test_renaming_is_stable_for_a_seed_and_can_be_saved(tmp_path):
    write_identity_folder(tmp_path / "data", generate_faces(4, 3, 32, seed=0), progress=False)
    first = load_identity_folder(tmp_path / "data", 32, seed=1, progress=False)
    again = load_identity_folder(tmp_path / "data", 32, seed=1, progress=False)
    other = load_identity_folder(tmp_path / "data", 32, seed=2, progress=False)
    assert first.pseudonyms() == again.pseudonyms() != other.pseudonyms()
    assert set(first.people) == {p.replace(" ", "_") for p in make_faces(4, 3, 32, seed=0).names}
    assert not set(first.names) & {p.replace("_", " ") for p in first.people}  # real labels never reach a caption
    first.save_names(tmp_path / "names.json")
    reused = load_identity_folder(tmp_path / "data", 32, seed=2, pseudonyms=read_pseudonyms(tmp_path / "names.json"), progress=False)
    assert reused.names == first.names


def _jpeg(path: Path, shade: int = 120, size=(20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, shade).save(path)


def test_folder_problems_are_collected_together(tmp_path):
    root = tmp_path / "people"
    _jpeg(root / "alice" / "1.jpg")
    _jpeg(root / "alice" / "2.jpg", 60)
    _jpeg(root / "bob" / "1.jpg")  # only one photo
    (root / "carol").mkdir()  # no photos
    _jpeg(root / "dave" / "1.jpg")
    (root / "dave" / "2.jpg").write_bytes(b"")  # empty
    (root / "dave" / "3.jpg").write_bytes(b"not a jpeg at all")  # corrupt
    (root / "dave" / "notes.txt").write_text("ignored")
    _jpeg(root / "stray.jpg")
    with pytest.raises(DataError) as caught:
        load_identity_folder(root, 32, progress=False)
    text = str(caught.value)
    assert "person 'bob'" in text and "only 1 usable photo" in text
    assert "carol" in text and "no image files" in text
    assert "2.jpg" in text and "empty" in text
    assert "3.jpg" in text and "cannot read image" in text
    assert "person 'dave'" in text
    assert "directly in the root" in text
    assert len(caught.value.problems) == 6
    kept = load_identity_folder(root, 32, skip_bad=True, progress=False, rename=False)
    assert kept.people == ["alice"] and kept.train.n_images == 1 and kept.test.n_images == 1
    assert len(kept.skipped) == 6


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="identity folder not found"):
        load_identity_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no person folders"):
        load_identity_folder(tmp_path / "empty")


def test_csv_problems_are_collected_together(tmp_path):
    for person, n in (("ann", 3), ("ben", 2)):
        for i in range(n):
            _jpeg(tmp_path / person / f"{i}.jpg", 40 * i + 20)
    (tmp_path / "labels.csv").write_text(
        "image,identity\n"
        "ann/0.jpg,ann\nann/1.jpg,ann\nann/2.jpg,\n"  # line 4: empty identity
        "ben/0.jpg,ben\nben/0.jpg,ann\n"  # line 6: the same photo under another person
        "ben/1.jpg,ben,extra\n"  # line 7: field count
        "ben/9.jpg,ben\n"  # line 8: missing file
    )
    with pytest.raises(DataError) as caught:
        load_identity_csv(tmp_path / "labels.csv", 32, progress=False)
    messages = [str(p) for p in caught.value.problems]
    assert any("line 4" in m and "empty identity" in m for m in messages)
    assert any("line 6" in m and "already listed for 'ben'" in m for m in messages)
    assert any("line 7" in m and "fields" in m for m in messages)
    assert any("line 8" in m and "not found" in m for m in messages)
    assert any("person 'ben'" in m and "only 1 usable photo" in m for m in messages)
    with pytest.raises(DataError, match="no identity column"):
        (tmp_path / "bad.csv").write_text("image,caption\nann/0.jpg,hello\n")
        load_identity_csv(tmp_path / "bad.csv")


def test_a_missing_pseudonym_is_reported(tmp_path):
    write_identity_folder(tmp_path, generate_faces(2, 2, 32, seed=0), progress=False)
    first = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())[0]
    with pytest.raises(DataError, match="no pseudonym"):
        load_identity_folder(tmp_path, 32, pseudonyms={first: "Some Body"}, progress=False)


@pytest.fixture(scope="module")
def att_faces():
    root = SHARED / "att_faces"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"real sample faces not found at {root} (only present beside the project checkout)")
    return root


def test_att_faces_folder_and_csv_split_alike(att_faces):
    folder = load_identity_folder(att_faces, 64, seed=0, progress=False)
    table = load_identity_csv(att_faces / "labels.csv", 64, seed=0, progress=False)
    assert folder.n_people == 40 and folder.test.n_images == 40 and folder.train.n_images == 360
    assert folder.test.image_keys == table.test.image_keys and folder.names == table.names
    assert folder.test.captions[0] in {t.format(name=folder.names[0]) for t in TEMPLATES}
    pixels = folder.test.images([0])
    assert pixels.shape == (1, 64, 64, 3) and (pixels[..., 0] == pixels[..., 1]).all()  # grayscale read as RGB
    assert NEUTRAL_TEMPLATE == "a photo of {name}"
