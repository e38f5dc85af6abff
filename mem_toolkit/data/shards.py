"""webdataset shards: tar files of samples (`KEY.jpg` + `KEY.txt` or `KEY.json`), read into a CaptionDataset and written.

Read with the standard library's `tarfile`, not the `webdataset` package: the toolkit needs random
access (each image's byte offset, so that images are decoded once into the memory-mapped image cache
and the protection loop can read any image at any time) and every problem of every shard collected
with its shard and key, whereas webdataset streams samples and stops (or silently skips) at an error.
Shards are plain (uncompressed) tar files, as img2dataset and webdataset write them.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from ..atomic import atomic_write
from ..errors import DataError, Problem
from .dataset import CaptionDataset
from .images import ShardMember
from .loaders import collected_dataset

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule: the key ends at the file name's first dot
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Expand `{00000..00099}` ranges (zero padding kept) and `{a,b}` lists, as webdataset and bash do."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[:match.start()], match.group(1), pattern[match.end():]
    numbers = _RANGE.fullmatch(body)
    if numbers:
        first, last = numbers.groups()
        width = max(len(first), len(last)) if first.lstrip("-").startswith("0") or last.lstrip("-").startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        options = [f"{n:0{width}d}" for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]
    rest = expand_braces(tail)
    return [head + option + end for option in options for end in rest]


def shard_paths(spec: str | os.PathLike) -> list[Path]:
    """The shards a spec names: a brace pattern (`shards/{00000..00099}.tar`), a glob, or a folder of `*.tar`."""
    spec = str(spec)
    if os.path.isdir(spec):
        return sorted(Path(spec).glob("*.tar"))
    paths: list[Path] = []
    for name in expand_braces(spec):
        paths.extend(Path(p) for p in (sorted(glob.glob(name)) if glob.has_magic(name) else [name]))
    return paths


@dataclass
class ShardSample:
    """One sample of a shard: its key and the tar member of each extension."""

    shard: Path
    key: str
    members: dict[str, tarfile.TarInfo]

    def image(self) -> ShardMember | None:
        """The sample's image (the first of jpg, jpeg, png, webp it has), or None."""
        ext = next((e for e in IMAGE_EXTENSIONS if e in self.members), None)
        if ext is None:
            return None
        member = self.members[ext]
        return ShardMember(self.shard, self.key, member.offset_data, member.size)


def read_shard(path: Path) -> tuple[list[ShardSample], dict[str, bytes], list[Problem]]:
    """Samples of one shard (in shard order), the bytes of its text members, and every problem found in it.

    A truncated or damaged tar keeps the samples that lie wholly before the damage; the damage
    itself is a problem, and so is the sample it cuts.
    """
    source = str(path)
    if not path.is_file():
        return [], {}, [Problem(source, None, "shard not found")]
    size = path.stat().st_size
    samples: dict[str, ShardSample] = {}
    texts: dict[str, bytes] = {}
    problems: list[Problem] = []
    with open(path, "rb") as handle:
        if handle.read(2) == b"\x1f\x8b":
            return [], {}, [Problem(source, None, "the shard is gzip-compressed; use plain .tar shards (as img2dataset writes them)")]
        handle.seek(0)
        try:
            tar = tarfile.open(fileobj=handle, mode="r:")
        except tarfile.TarError as error:
            return [], {}, [Problem(source, None, f"truncated, damaged or not a tar file ({error})")]
        members, damage = _members(tar)
        cut = False
        for member in members:
            match = _MEMBER_NAME.match(member.name)
            if not member.isfile() or match is None:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if member.offset_data + member.size > size:
                present = max(0, size - member.offset_data)
                problems.append(Problem(source, f"key {key}", f"truncated tar: {member.name} is cut off ({present} of {member.size} bytes present)"))
                samples.pop(key, None)
                cut = True
                continue
            sample = samples.setdefault(key, ShardSample(path, key, {}))
            if ext in sample.members:
                problems.append(Problem(source, f"key {key}", f"{member.name} appears twice in the shard"))
            sample.members[ext] = member
            if ext in ("txt", "json"):
                texts[member.name] = tar.extractfile(member).read()
        end = tar.offset
        handle.seek(end)
        complete = handle.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)
    if not cut and (damage or not complete):
        after = f" after {members[-1].name}" if members else ""
        problems.append(Problem(source, None, f"truncated or damaged tar: no valid header or end-of-archive marker at byte {end}{after}"
                                              + (f" ({damage})" if damage else "")))
    return list(samples.values()), texts, problems


def _members(tar: tarfile.TarFile) -> tuple[list[tarfile.TarInfo], str | None]:
    """The members up to the first damage, and the damage (None for a whole archive)."""
    members = []
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as error:
            return members, str(error)
        if member is None:
            return members, None
        members.append(member)


def sample_captions(sample: ShardSample, texts: dict[str, bytes]) -> tuple[list[str], str | None]:
    """The captions of a sample (its `.txt`, else its `.json`: `{"caption": ...}`, `{"captions": [...]}` or a list) or what is wrong."""
    if "txt" in sample.members:
        name = sample.members["txt"].name
        try:
            caption = texts[name].decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return [], f"{name} is not valid UTF-8 text ({error.reason} at byte {error.start})"
        return ([" ".join(caption.split())], None) if caption.strip() else ([], f"empty caption in {name}")
    if "json" not in sample.members:
        return [], "no caption (.txt or .json)"
    name = sample.members["json"].name
    try:
        data = json.loads(texts[name].decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return [], f"{name} is not valid JSON ({error})"
    if isinstance(data, dict):
        data = data.get("captions", [data["caption"]] if "caption" in data else None)
    if not isinstance(data, list) or not data:
        return [], f"{name} holds no caption (expected {{\"caption\": ...}}, {{\"captions\": [...]}} or a list of captions)"
    if not all(isinstance(c, str) and c.strip() for c in data):
        return [], f"{name} has an empty or non-text caption"
    return [" ".join(c.split()) for c in data], None


def load_shards(
    spec: str | os.PathLike,
    image_size: int = 224,
    *,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> CaptionDataset:
    """Read webdataset shards (a brace pattern, glob or folder) into a dataset whose images are decoded once, on `preload`.

    Each sample is one image (its key kept as the image key) with one row per caption. Every
    problem of every shard (missing or truncated shard, a sample without image or caption, a key in
    two shards) is collected and raised together unless `skip_bad`; undecodable images are reported
    by `preload`, naming shard and key.
    """
    paths = shard_paths(spec)
    if not paths:
        raise DataError([Problem(str(spec), None, "no shards match this pattern")])
    captions: list[str] = []
    group_ids: list[int] = []
    keys: list[str] = []
    images: list[ShardMember] = []
    shard_of_key: dict[str, Path] = {}
    problems: list[Problem] = []
    for path in paths:
        samples, texts, shard_problems = read_shard(path)
        problems.extend(shard_problems)
        for sample in samples:
            where = f"key {sample.key}"
            image = sample.image()
            texts_of_sample, message = sample_captions(sample, texts)
            if sample.key in shard_of_key:
                message = f"the key is already used in {shard_of_key[sample.key]}"
            elif image is None:
                message = f"no image ({', '.join(IMAGE_EXTENSIONS)})"
            elif image.size == 0:
                message = "the image is empty (0 bytes)"
            if message:
                problems.append(Problem(str(path), where, message))
                continue
            shard_of_key[sample.key] = path
            for caption in texts_of_sample:
                captions.append(caption)
                group_ids.append(len(keys))
            keys.append(sample.key)
            images.append(image)
    label = name or Path(str(spec)).stem.split("{")[0].rstrip("-_.") or "shards"
    return collected_dataset(captions, group_ids, keys, images, image_size, label, skip_bad, problems, cache_dir)


def write_shards(
    out_dir: str | os.PathLike,
    samples: Iterable[tuple[str, dict[str, bytes]]],
    samples_per_shard: int = 1000,
    prefix: str = "shard-",
) -> list[Path]:
    """Write (key, {extension: bytes}) samples into `out_dir/shard-00000.tar`, ... ; each shard is written atomically.

    Earlier shards of the same name pattern that this call does not rewrite are removed, so the
    folder holds exactly what was written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    iterator: Iterator = iter(samples)
    written: list[Path] = []
    while True:
        chunk = list(islice(iterator, samples_per_shard))
        if not chunk:
            break
        path = out_dir / f"{prefix}{len(written):05d}.tar"
        atomic_write(path, lambda tmp, chunk=chunk: _write_tar(tmp, chunk))
        written.append(path)
    for old in out_dir.glob(f"{prefix}[0-9][0-9][0-9][0-9][0-9].tar"):
        if old not in written:
            old.unlink()
    return written


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """One plain tar of the given samples, members in key order as webdataset expects (fixed mtime: reproducible bytes)."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))


def shard_pattern(paths: list[Path]) -> str:
    """The brace pattern naming written shards (`out/shard-{00000..00009}.tar`), as `--train-data` takes it."""
    if len(paths) == 1:
        return str(paths[0])
    stem = paths[0].name[:-len("00000.tar")]
    return str(paths[0].parent / f"{stem}{{00000..{len(paths) - 1:05d}}}.tar")
