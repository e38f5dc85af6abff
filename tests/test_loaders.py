"""Caption loaders (CSV/TSV, Karpathy JSON, COCO JSON) on generated fixtures, good and bad."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mem_toolkit.data import load_caption_csv, load_coco_captions, load_karpathy_json
from mem_toolkit.errors import DataError

SIZE = 32


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def photos(tmp_path, make_image):
    """Four images of varied size, mode and format under tmp_path/images."""
    folder = tmp_path / "images"
    return {
        "a.jpg": make_image(folder / "a.jpg", (48, 32), "RGB", seed=1),
        "b.png": make_image(folder / "b.png", (20, 40), "L", seed=2),
        "c.png": make_image(folder / "c.png", (33, 33), "RGBA", seed=3),
        "d.png": make_image(folder / "d.png", (64, 50), "P", seed=4),
    }


def test_official_images_caption_csv(tmp_path, photos):
    csv = write_text(tmp_path / "train.csv", "images,caption\n"
                     "images/a.jpg,a dog on grass\n"
                     "images/b.png,  a   grey   cat \n"
                     "images/a.jpg,\"a dog, running\"\n"
                     "images/c.png,a red ball\n"
                     "images/d.png,a small boat\n")
    dataset = load_caption_csv(csv, SIZE)
    assert len(dataset) == 5 and dataset.n_images == 4
    assert dataset.captions == ["a dog on grass", "a grey cat", "a dog, running", "a red ball", "a small boat"]
    assert dataset.group_ids.tolist() == [0, 1, 0, 2, 3]  # rows of the same image share its group
    assert dataset.image_keys == ["a.jpg", "b.png", "c.png", "d.png"]
    assert dataset.skipped == []
    batch = dataset.image_batch(np.arange(5))
    assert batch.shape == (5, 3, SIZE, SIZE) and batch.dtype == torch.uint8
    assert (batch[0] == batch[2]).all()


def test_open_clip_tsv(tmp_path, photos):
    tsv = write_text(tmp_path / "train.tsv", "filepath\ttitle\nimages/a.jpg\ta dog, on grass\nimages/d.png\ta boat\n")
    dataset = load_caption_csv(tsv, SIZE)
    assert dataset.captions == ["a dog, on grass", "a boat"]  # the comma inside a caption does not split it
    assert dataset.n_images == 2


def test_utf8_bom_and_crlf_line_ends(tmp_path, photos):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffimage,caption\r\nimages/a.jpg,un café\r\n".encode("utf-8"))
    assert load_caption_csv(path, SIZE).captions == ["un café"]


def test_explicit_column_names_and_delimiter(tmp_path, photos):
    csv = write_text(tmp_path / "odd.csv", "id;photo;words\n1;images/a.jpg;a dog\n2;images/b.png;a cat\n")
    with pytest.raises(DataError, match="no image column found"):
        load_caption_csv(csv, SIZE)  # ';' is not detected and `photo` is not a known column name
    dataset = load_caption_csv(csv, SIZE, image_column="photo", caption_column="words", delimiter=";")
    assert dataset.captions == ["a dog", "a cat"]
    with pytest.raises(DataError, match=r"odd\.csv, line 1: missing image column 'picture'"):
        load_caption_csv(csv, SIZE, image_column="picture", delimiter=";")


def test_relative_paths_resolve_against_csv_folder_or_image_root(tmp_path, photos):
    meta = tmp_path / "meta"
    meta.mkdir()
    beside = write_text(meta / "up.csv", "image,caption\n../images/a.jpg,a dog\n")
    assert load_caption_csv(beside, SIZE).image_paths == [meta / "../images/a.jpg"]
    rooted = write_text(meta / "rooted.csv", "image,caption\na.jpg,a dog\nb.png,a cat\n")
    with pytest.raises(DataError, match="image file not found"):
        load_caption_csv(rooted, SIZE)  # resolved against meta/ by default
    dataset = load_caption_csv(rooted, SIZE, image_root=tmp_path / "images")
    assert dataset.image_paths == [photos["a.jpg"], photos["b.png"]]
    absolute = write_text(meta / "abs.csv", f"image,caption\n{photos['c.png']},a ball\n")
    assert load_caption_csv(absolute, SIZE, image_root=tmp_path / "elsewhere").image_paths == [photos["c.png"]]


def test_every_problem_of_a_file_in_one_error(tmp_path, photos):
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    csv = write_text(tmp_path / "bad.csv", "image,caption\n"
                     "images/a.jpg,a good row\n"            # line 2
                     "images/missing.jpg,a missing image\n"  # line 3
                     "images/empty.jpg,an empty file\n"      # line 4
                     "images/b.png,   \n"                    # line 5: empty caption
                     "images/c.png,too,many,fields\n"        # line 6
                     ",no image path\n"                      # line 7
                     "images/d.png,another good row\n")
    with pytest.raises(DataError) as caught:
        load_caption_csv(csv, SIZE)
    problems = caught.value.problems
    assert [(p.where, p.source) for p in problems] == [(f"line {n}", str(csv)) for n in (6, 7, 3, 4, 5)]
    text = str(caught.value)
    assert "5 problem(s)" in text
    for expected in ("line 3: image file not found", "missing.jpg", "line 4: image file is empty (0 bytes)",
                     "line 5: empty caption", "line 6: has 4 fields, the header has 2", "line 7: empty image path"):
        assert expected in text
    assert text.count(str(csv)) >= 5  # every line names the file


def test_skip_bad_leaves_rows_out_and_reports_them(tmp_path, photos):
    csv = write_text(tmp_path / "bad.csv", "image,caption\nimages/a.jpg,a dog\nimages/nope.png,gone\nimages/b.png,\nimages/b.png,a cat\n")
    dataset = load_caption_csv(csv, SIZE, skip_bad=True)
    assert dataset.captions == ["a dog", "a cat"]
    assert [p.where for p in dataset.skipped] == ["line 3", "line 4"]
    assert "image file not found" in str(dataset.skipped[0]) and "empty caption" in str(dataset.skipped[1])


def test_bad_utf8_is_reported_with_its_line(tmp_path, photos):
    path = tmp_path / "latin1.csv"
    path.write_bytes("image,caption\nimages/a.jpg,a dog\nimages/b.png,un caf\xe9\nimages/nope.jpg,x\nimages/c.png,na\xefve\n".encode("latin-1"))
    with pytest.raises(DataError) as caught:
        load_caption_csv(path, SIZE)
    found = {(p.where, p.message.split(" (")[0]) for p in caught.value.problems}
    assert found == {("line 3", "not valid UTF-8 text"), ("line 5", "not valid UTF-8 text"), ("line 4", "image file not found: " + str(tmp_path / "images" / "nope.jpg"))}
    dataset = load_caption_csv(path, SIZE, skip_bad=True)
    assert dataset.captions == ["a dog"]
    assert sorted(p.where for p in dataset.skipped) == ["line 3", "line 4", "line 5"]


def test_bad_utf8_in_the_header(tmp_path):
    path = tmp_path / "head.csv"
    path.write_bytes(b"imag\xe9,caption\nx.jpg,a\n")
    with pytest.raises(DataError, match=r"head\.csv, line 1: not valid UTF-8"):
        load_caption_csv(path, SIZE)


def test_duplicate_header_and_missing_columns(tmp_path):
    dup = write_text(tmp_path / "dup.csv", "image,caption,Caption\nx.jpg,a,b\n")
    with pytest.raises(DataError, match=r"dup\.csv, line 1: duplicate column name\(s\) in header: \['caption'\]"):
        load_caption_csv(dup, SIZE)
    neither = write_text(tmp_path / "neither.csv", "picture,words\nx.jpg,a\n")
    with pytest.raises(DataError) as caught:
        load_caption_csv(neither, SIZE)
    assert [p.message.split(";")[0] for p in caught.value.problems] == ["no image column found", "no caption column found"]


def test_empty_and_absent_files(tmp_path):
    with pytest.raises(DataError, match="the file is empty"):
        load_caption_csv(write_text(tmp_path / "empty.csv", "\n"), SIZE)
    with pytest.raises(DataError, match=r"absent\.csv: file not found"):
        load_caption_csv(tmp_path / "absent.csv", SIZE)


def test_header_only_file_has_no_usable_rows(tmp_path):
    with pytest.raises(DataError, match="no usable rows"):
        load_caption_csv(write_text(tmp_path / "head.csv", "image,caption\n"), SIZE)


# -- image decoding at preload ---------------------------------------------------------------------

def corrupt_files(folder: Path, intact_jpeg: Path) -> tuple[Path, Path]:
    not_image = folder / "notes.png"
    not_image.write_bytes(b"this is a text file, not a PNG\n" * 4)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(intact_jpeg.read_bytes()[: intact_jpeg.stat().st_size // 2])
    return not_image, truncated


def test_preload_reports_every_undecodable_image_and_keeps_the_decoded_ones(tmp_path, photos, make_image):
    big = make_image(tmp_path / "images" / "big.jpg", (120, 90), seed=9)
    not_image, truncated = corrupt_files(tmp_path / "images", big)
    csv = write_text(tmp_path / "c.csv", "image,caption\nimages/a.jpg,a\nimages/notes.png,b\nimages/b.png,c\nimages/truncated.jpg,d\n")
    dataset = load_caption_csv(csv, SIZE)  # existence and size pass; decoding is what fails
    with pytest.raises(DataError) as caught:
        dataset.preload(progress=False)
    assert {p.source for p in caught.value.problems} == {str(not_image), str(truncated)}
    assert all("cannot read image" in p.message for p in caught.value.problems)
    expected = dataset.images([0, 2])
    for good in (photos["a.jpg"], photos["b.png"]):
        good.unlink()  # decoded before the error: served from the cache, not the (now absent) files
    assert np.array_equal(dataset.images([0, 2]), expected)


def test_preload_skip_bad_drops_undecodable_images_and_lists_them(tmp_path, photos, make_image):
    big = make_image(tmp_path / "images" / "big.jpg", (120, 90), seed=9)
    not_image, truncated = corrupt_files(tmp_path / "images", big)
    csv = write_text(tmp_path / "c.csv", "image,caption\nimages/a.jpg,a\nimages/notes.png,b\nimages/b.png,c\n"
                     "images/truncated.jpg,d\nimages/gone.jpg,e\nimages/b.png,f\n")
    dataset = load_caption_csv(csv, SIZE, skip_bad=True)
    kept = dataset.preload(progress=False, skip_bad=True)
    assert kept.captions == ["a", "c", "f"] and kept.n_images == 2
    assert kept.group_ids.tolist() == [0, 1, 1]
    reported = [str(p) for p in kept.skipped]
    assert any("line 6" in r and "gone.jpg" in r for r in reported)  # found by the loader
    assert any(str(not_image) in r for r in reported) and any(str(truncated) in r for r in reported)  # found by decoding
    assert kept.images([0, 1]).shape == (2, SIZE, SIZE, 3)


# -- JSON formats ------------------------------------------------------------------------------------

def karpathy_file(path: Path) -> Path:
    def entry(name, split, *captions, filepath=None):
        item = {"filename": name, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}
        if filepath:
            item["filepath"] = filepath
        return item

    data = {"dataset": "toy", "images": [
        entry("a.jpg", "train", "a dog", "a brown dog"),
        entry("b.png", "restval", "a cat"),
        entry("c.png", "val", "a ball"),
        entry("d.png", "test", "a boat", "a small boat", "boat on water"),
    ]}
    data["images"][1]["sentences"].append({"tokens": ["a", "sleepy", "cat"]})  # no raw: the tokens are joined
    path.write_text(json.dumps(data))
    return path


def test_karpathy_split_selection_with_restval_in_train(tmp_path, photos):
    path = karpathy_file(tmp_path / "dataset_toy.json")
    train = load_karpathy_json(path, tmp_path / "images", "train", SIZE)
    assert train.captions == ["a dog", "a brown dog", "a cat", "a sleepy cat"]
    assert train.group_ids.tolist() == [0, 0, 1, 1] and train.name == "dataset_toy-train"
    assert load_karpathy_json(path, tmp_path / "images", "val", SIZE).captions == ["a ball"]
    test = load_karpathy_json(path, tmp_path / "images", "test", SIZE)
    assert test.n_images == 1 and len(test) == 3
    with pytest.raises(DataError, match="no images in split 'dev'"):
        load_karpathy_json(path, tmp_path / "images", "dev", SIZE)


def test_karpathy_filepath_folders(tmp_path, make_image):
    make_image(tmp_path / "coco" / "val2014" / "x.jpg")
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [{"filepath": "val2014", "filename": "x.jpg", "split": "test", "sentences": [{"raw": "a cup"}]}]}))
    assert load_karpathy_json(path, tmp_path / "coco", "test", SIZE).image_paths == [tmp_path / "coco" / "val2014" / "x.jpg"]


def test_karpathy_problems_are_collected(tmp_path, photos):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a dog"}, {"raw": " "}]},
        {"split": "train", "sentences": []},
        {"filename": "zzz.jpg", "split": "train", "sentences": [{"raw": "lost"}]},
    ]}))
    with pytest.raises(DataError) as caught:
        load_karpathy_json(path, tmp_path / "images", "train", SIZE)
    assert [p.where for p in caught.value.problems] == ["images[1]", "images[0].sentences[1]", "images[2].sentences[0]"]


def test_invalid_json_names_the_line(tmp_path):
    path = write_text(tmp_path / "broken.json", '{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(DataError, match=r"broken\.json, line 2: invalid JSON"):
        load_karpathy_json(path, tmp_path, "train", SIZE)
    with pytest.raises(DataError, match="expected a JSON object with an 'images' list"):
        load_karpathy_json(write_text(tmp_path / "list.json", "[]"), tmp_path, "train", SIZE)


def test_coco_captions(tmp_path, photos):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "c.png"}, {"id": 9, "file_name": "d.png"}],
        "annotations": [{"image_id": 3, "id": 1, "caption": "a red ball."}, {"image_id": 7, "id": 2, "caption": "a dog"},
                        {"image_id": 3, "id": 3, "caption": "a ball on a table"}],
    }))
    dataset = load_coco_captions(path, tmp_path / "images", SIZE)
    assert dataset.captions == ["a red ball.", "a dog", "a ball on a table"]
    assert dataset.group_ids.tolist() == [0, 1, 0]  # d.png has no caption, so it is not an image of the set
    assert dataset.image_paths == [photos["c.png"], photos["a.jpg"]]


def test_coco_problems_are_collected(tmp_path, photos):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"file_name": "b.png"}, {"id": 2, "file_name": "missing.jpg"}],
        "annotations": [{"image_id": 1, "caption": "ok"}, {"image_id": 5, "caption": "orphan"}, {"image_id": 2, "caption": "x"},
                        {"image_id": 1, "caption": ""}],
    }))
    with pytest.raises(DataError) as caught:
        load_coco_captions(path, tmp_path / "images", SIZE)
    assert [p.where for p in caught.value.problems] == ["images[1]", "annotations[1]", "annotations[2]", "annotations[3]"]
    assert "unknown or missing image_id 5" in str(caught.value)
    assert load_coco_captions(path, tmp_path / "images", SIZE, skip_bad=True).captions == ["ok"]
