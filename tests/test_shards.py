"""webdataset shards: reading (txt / json captions, keys, brace patterns, the decoded-once cache), bad shards, writing."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mem_toolkit.cli import main
from mem_toolkit.data.images import fit_square
from mem_toolkit.data.shards import expand_braces, load_shards, read_shard, shard_paths, shard_pattern, write_shards
from mem_toolkit.errors import DataError


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (24, 18)) -> bytes:
    """A small random image encoded as `fmt`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A shard written with tarfile directly, independent of the toolkit's writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def decoded(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return fit_square(image, size)


def test_brace_patterns_and_folders(tmp_path):
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{8..10}-{a,b}") == ["8-a", "8-b", "9-a", "9-b", "10-a", "10-b"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for name in ("b.tar", "a.tar"):
        write_tar(tmp_path / name, [("k.png", image_bytes(0)), ("k.txt", b"x")])
    assert [p.name for p in shard_paths(tmp_path)] == ["a.tar", "b.tar"]
    assert [p.name for p in shard_paths(str(tmp_path / "*.tar"))] == ["a.tar", "b.tar"]


def test_reads_txt_and_json_captions_keeping_each_sample_key(tmp_path):
    images = {key: image_bytes(i, fmt) for i, (key, fmt) in enumerate([("a", "JPEG"), ("b", "PNG"), ("c", "JPEG"), ("sub/d", "PNG"), ("e", "PNG")])}
    write_tar(tmp_path / "s-00000.tar", [
        ("a.jpg", images["a"]), ("a.txt", b"  a red   circle\n"),
        ("b.png", images["b"]), ("b.json", json.dumps({"caption": "a blue square", "url": "http://x"}).encode()),
        ("c.jpeg", images["c"]), ("c.json", json.dumps({"captions": ["one", "two"]}).encode()),
    ])
    write_tar(tmp_path / "s-00001.tar", [
        ("sub/d.png", images["sub/d"]), ("sub/d.json", json.dumps(["x y", "z", "w"]).encode()),
        ("e.png", images["e"]), ("e.txt", b"from txt"), ("e.json", json.dumps({"caption": "from json"}).encode()),  # img2dataset writes both
    ])
    dataset = load_shards(str(tmp_path / "s-{00000..00001}.tar"), 16).preload(progress=False)
    assert dataset.image_keys == ["a", "b", "c", "sub/d", "e"]
    assert dataset.captions == ["a red circle", "a blue square", "one", "two", "x y", "z", "w", "from txt"]
    assert dataset.group_ids.tolist() == [0, 1, 2, 2, 3, 3, 3, 4]
    for group, key in enumerate(dataset.image_keys):
        assert np.array_equal(dataset.images([group])[0], decoded(images[key], 16))


def test_images_are_decoded_once_into_the_memory_mapped_cache(tmp_path):
    shard = write_tar(tmp_path / "one.tar", [m for i in range(3) for m in ((f"k{i}.png", image_bytes(i)), (f"k{i}.txt", f"caption {i}".encode()))])
    first = load_shards(shard, 16, cache_dir=tmp_path / "cache")
    assert not first._loaded.any()
    first = first.preload(progress=False)
    assert isinstance(first._pixels, np.memmap)
    again = load_shards(shard, 16, cache_dir=tmp_path / "cache")
    assert again._loaded.all()  # the same rows find their decoded pixels on disk: no second decode
    assert np.array_equal(again.images([0, 1, 2]), first.images([0, 1, 2]))


def test_bad_shards_are_collected_naming_shard_and_key(tmp_path):
    good = [(f"g{i}.png", image_bytes(i)) for i in range(2)] + [(f"g{i}.txt", b"fine") for i in range(2)]
    write_tar(tmp_path / "s0.tar", good + [("nocap.png", image_bytes(5)), ("noimg.txt", b"lonely"), ("badjson.png", image_bytes(6)),
                                           ("badjson.json", b"{oops"), ("shape.png", image_bytes(7)), ("shape.json", b'{"text": "x"}')])
    whole = write_tar(tmp_path / "s1.tar", [("t0.png", image_bytes(8)), ("t0.txt", b"ok"), ("cut.png", image_bytes(9, size=(64, 64))),
                                            ("cut.txt", b"never read")]).read_bytes()
    with tarfile.open(tmp_path / "s1.tar") as tar:
        member = tar.getmember("cut.png")
    (tmp_path / "s1.tar").write_bytes(whole[:member.offset_data + member.size // 2])  # the shard ends inside cut.png
    (tmp_path / "s2.tar").write_bytes(gzip.compress(whole))
    with pytest.raises(DataError) as caught:
        load_shards(str(tmp_path / "s{0..3}.tar"), 16)
    text = str(caught.value)
    for expected in (f"{tmp_path / 's0.tar'}, key nocap: no caption", f"{tmp_path / 's0.tar'}, key noimg: no image",
                     f"{tmp_path / 's0.tar'}, key badjson: badjson.json is not valid JSON",
                     f"{tmp_path / 's0.tar'}, key shape: shape.json holds no caption",
                     f"{tmp_path / 's1.tar'}, key cut: truncated tar: cut.png is cut off",
                     f"{tmp_path / 's2.tar'}: the shard is gzip-compressed", f"{tmp_path / 's3.tar'}: shard not found"):
        assert expected in text
    kept = load_shards(str(tmp_path / "s{0..3}.tar"), 16, skip_bad=True)
    assert kept.image_keys == ["g0", "g1", "t0"] and len(kept.skipped) == 7


def test_undecodable_image_and_duplicate_key(tmp_path):
    write_tar(tmp_path / "a.tar", [("x.png", image_bytes(0)), ("x.txt", b"one"), ("broken.jpg", b"not a jpeg at all"), ("broken.txt", b"two")])
    write_tar(tmp_path / "b.tar", [("x.png", image_bytes(1)), ("x.txt", b"again"), ("y.png", image_bytes(2)), ("y.txt", b"three")])
    with pytest.raises(DataError, match="key x: the key is already used in"):
        load_shards(str(tmp_path / "{a,b}.tar"), 16)
    listed = load_shards(str(tmp_path / "{a,b}.tar"), 16, skip_bad=True)
    with pytest.raises(DataError, match=f"{tmp_path / 'a.tar'}, key broken: cannot read image"):
        listed.preload(progress=False)
    kept = listed.preload(progress=False, skip_bad=True)
    assert kept.image_keys == ["x", "y"] and kept.captions == ["one", "three"]


def test_bad_shards_at_the_command_line_exit_2_without_traceback(tmp_path, capsys):
    write_tar(tmp_path / "s.tar", [("a.png", image_bytes(0)), ("a.txt", b"fine"), ("b.png", image_bytes(1)), ("c.jpg", b"garbage"), ("c.txt", b"x")])
    args = ["train", "--train-data", str(tmp_path / "s.tar"), "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.tar'}, key b: no caption" in err and "Traceback" not in err
    assert main(args + ["--skip-bad"]) == 2  # left: one image, which no contrastive run can use
    err = capsys.readouterr().err
    assert f"skipped: {tmp_path / 's.tar'}, key b: no caption" in err
    assert f"skipped: {tmp_path / 's.tar'}, key c: cannot read image" in err
    assert "1 usable image(s) (2 bad row(s) were left out); at least 2 are needed" in err
    assert not (tmp_path / "run").exists()


def test_writer_round_trip_and_stale_shards(tmp_path):
    samples = [(f"k{i:02d}", {"png": image_bytes(i), "txt": f"caption {i}".encode()}) for i in range(5)]
    paths = write_shards(tmp_path, samples, samples_per_shard=2)
    assert [p.name for p in paths] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert shard_pattern(paths) == str(tmp_path / "shard-{00000..00002}.tar")
    dataset = load_shards(shard_pattern(paths), 16).preload(progress=False)
    assert dataset.image_keys == [key for key, _ in samples] and dataset.captions == [f"caption {i}" for i in range(5)]
    assert all(read_shard(p)[2] == [] for p in paths)
    assert [p.name for p in write_shards(tmp_path, samples[:1])] == ["shard-00000.tar"]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-00000.tar"]


def test_row_noise_exports_one_sample_per_row_with_file_name_keys(tmp_path):
    from mem_toolkit.data.shapes import make_shapes
    from mem_toolkit.protect import EM
    from mem_toolkit.protect.export import export_protection

    data = make_shapes(4, 64, seed=1)
    data.image_keys = [f"photos/img.{i}.jpg" for i in range(4)]  # as loaded from files: the extension goes, other dots become _
    protection = EM(granularity="row", eps=4, rounds=1, surrogate_steps=1, pgd_steps=1, batch_size=8).fit(data, progress=False)
    pattern = export_protection(protection, data, tmp_path / "pub", progress=False, format="webdataset", samples_per_shard=7)
    back = load_shards(pattern, 64).preload(progress=False)
    assert back.image_keys == [f"photos/img_{g}-r{row:06d}" for row, g in enumerate(data.group_ids)]
    assert back.captions == data.captions  # EM: no trigger; one caption per sample, as .txt
    assert {p.suffix for p in tmp_path.joinpath("pub").iterdir()} == {".tar"}
    clean = data.images(data.group_ids).astype(int)
    assert np.abs(back.images(range(back.n_images)).astype(int) - clean).max() <= 4
