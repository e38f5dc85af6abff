"""Loaders for the standard caption layouts: CSV/TSV, Karpathy split JSON, COCO captions JSON.

Every loader checks the whole input and raises one DataError listing every problem (file, line or
entry, what is wrong) instead of stopping at the first; with `skip_bad=True` the bad rows are left
out and listed in `dataset.skipped`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from ..errors import DataError, Problem
from .dataset import CaptionDataset

IMAGE_COLUMNS = ("filepath", "images", "image", "image_path", "filename", "file_name", "path", "img")
CAPTION_COLUMNS = ("title", "caption", "captions", "text", "sentence", "raw")


def _cheap_image_problem(path: Path) -> str | None:
    """Existence and size only: the full decode happens once, in `CaptionDataset.preload`."""
    if not path.is_file():
        return f"image file not found: {path}"
    if path.stat().st_size == 0:
        return f"image file is empty (0 bytes): {path}"
    return None


def build_dataset(
    entries: Iterable[tuple[str, str, Path, str]],
    image_size: int,
    name: str,
    skip_bad: bool,
    problems: list[Problem],
    cache_dir: str | os.PathLike | None = None,
) -> CaptionDataset:
    """Turn (where, caption, image path, source) entries into a dataset, checking each one.

    Rows with the same resolved image path share a group. Problems found here are added to those
    the caller already collected; all are raised together unless `skip_bad`.
    """
    captions: list[str] = []
    group_ids: list[int] = []
    group_of_path: dict[Path, int] = {}
    checked: dict[Path, str | None] = {}
    bad: list[Problem] = []
    for where, caption, path, source in entries:
        row_problems = []
        if not caption.strip():
            row_problems.append("empty caption")
        if path not in checked:
            checked[path] = _cheap_image_problem(path)
        if checked[path]:
            row_problems.append(checked[path])
        if row_problems:
            bad.extend(Problem(source, where, message) for message in row_problems)
            continue
        if path not in group_of_path:
            group_of_path[path] = len(group_of_path)
        captions.append(" ".join(caption.split()))
        group_ids.append(group_of_path[path])
    paths = list(group_of_path)
    root = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
    keys = [os.path.relpath(p, root) for p in paths]
    return collected_dataset(captions, group_ids, keys, paths, image_size, name, skip_bad, problems + bad, cache_dir)


def collected_dataset(
    captions: list[str],
    group_ids: list[int],
    keys: list[str],
    images: list,
    image_size: int,
    name: str,
    skip_bad: bool,
    problems: list[Problem],
    cache_dir: str | os.PathLike | None = None,
) -> CaptionDataset:
    """The dataset of the good rows, after every problem of the input was collected: all raised together unless `skip_bad`.

    `images` are the image files (or shard members) of the groups; with `skip_bad` the problems
    are kept in `dataset.skipped`.
    """
    if problems and not skip_bad:
        raise DataError(problems, hint="Fix these rows, or pass skip_bad=True (--skip-bad) to leave them out.")
    if not captions:
        raise DataError(problems or [Problem(name, None, "no usable rows")])
    dataset = CaptionDataset(captions, group_ids, keys, image_size, image_paths=images, name=name, cache_dir=cache_dir)
    dataset.skipped = problems
    return dataset


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError([Problem(str(path), None, "file not found")]) from None


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 text, or one problem naming the line of the first bad byte (JSON cannot be read past it)."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError([Problem(str(path), f"line {line}", f"not valid UTF-8 text ({error.reason} at byte {error.start})")]) from None


def _read_lines(path: Path) -> tuple[str, list[Problem]]:
    """The file as UTF-8 text with every line that is not valid UTF-8 blanked and reported (line numbers kept)."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    lines = data.splitlines(keepends=True)
    problems = []
    for number, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append(Problem(str(path), f"line {number}", f"not valid UTF-8 text ({error.reason} at column {error.start + 1})"))
            lines[number - 1] = b"\n"
    return b"".join(lines).decode("utf-8-sig"), problems


def _pick_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str,
                 problems: list[Problem]) -> int:
    """Index of the named (or first known) column; a problem is added, and -1 returned, where there is none."""
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        problems.append(Problem(source, "line 1", f"missing {what} column {wanted!r}; the header has {header}"))
        return -1
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    problems.append(Problem(source, "line 1", f"no {what} column found; the header has {header}, expected one of {list(candidates)}"))
    return -1


def load_caption_csv(
    path: str | os.PathLike,
    image_size: int = 224,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    delimiter: str | None = None,
    image_root: str | os.PathLike | None = None,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> CaptionDataset:
    """Read a caption CSV/TSV (official MEM `images,caption`, open_clip `filepath,title`, ...).

    Columns and delimiter are detected unless given; relative image paths are resolved against
    `image_root` or else the CSV's own folder.
    """
    entries, problems = read_csv_entries(path, CAPTION_COLUMNS, "caption", text_column=caption_column, image_column=image_column,
                                         delimiter=delimiter, image_root=image_root)
    return build_dataset(entries, image_size, Path(path).stem, skip_bad, problems, cache_dir)


def read_csv_entries(
    path: str | os.PathLike,
    text_candidates: tuple[str, ...],
    what: str,
    *,
    text_column: str | None = None,
    image_column: str | None = None,
    delimiter: str | None = None,
    image_root: str | os.PathLike | None = None,
) -> tuple[list[tuple[str, str, Path, str]], list[Problem]]:
    """(where, text, image path, source) entries of a CSV/TSV, and the problems of its malformed lines.

    The text column is `text_column`, or else the first of `text_candidates` in the header; `what`
    names it in messages ("caption", "identity"). Header problems (with any bad-encoding lines) raise at once.
    """
    path = Path(path)
    source = str(path)
    content, problems = _read_lines(path)
    if any(problem.where == "line 1" for problem in problems):
        raise DataError(problems, hint="The header line must be readable; save the file as UTF-8.")
    if not content.strip():
        raise DataError([Problem(source, None, "the file is empty")])
    first_line = content.splitlines()[0]
    if delimiter is None:
        delimiter = "\t" if "\t" in first_line else ("," if "," in first_line else ("|" if "|" in first_line else ","))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    header = next(reader)
    header_problems: list[Problem] = []
    duplicates = [name for name, count in Counter(h.strip().lower() for h in header).items() if count > 1 and name]
    if duplicates:
        header_problems.append(Problem(source, "line 1", f"duplicate column name(s) in header: {duplicates}"))
    image_index = _pick_column(header, image_column, IMAGE_COLUMNS, "image", source, header_problems)
    text_index = _pick_column(header, text_column, text_candidates, what, source, header_problems)
    if header_problems:
        raise DataError(header_problems + problems)
    root = Path(image_root) if image_root is not None else path.parent
    entries = []
    for record in reader:
        where = f"line {reader.line_num}"
        if not any(field.strip() for field in record):
            continue
        if len(record) != len(header):
            problems.append(Problem(source, where, f"has {len(record)} fields, the header has {len(header)}"))
            continue
        image = record[image_index].strip()
        if not image:
            problems.append(Problem(source, where, "empty image path"))
            continue
        entries.append((where, record[text_index], root / image, source))
    return entries, problems


def load_karpathy_json(
    path: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str = "train",
    image_size: int = 224,
    *,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> CaptionDataset:
    """Read a Karpathy split file (`dataset_flickr8k.json` style) for one split.

    `split="train"` also takes the `restval` images, as is customary for COCO.
    """
    path = Path(path)
    source = str(path)
    data = _load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError([Problem(source, None, "expected a JSON object with an 'images' list")])
    splits = {"train", "restval"} if split == "train" else {split}
    problems: list[Problem] = []
    entries = []
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(image, dict) or "filename" not in image or "sentences" not in image:
            problems.append(Problem(source, where, "entry lacks 'filename' or 'sentences'"))
            continue
        if image.get("split") not in splits:
            continue
        file = Path(image_root) / image.get("filepath", "") / image["filename"]
        for j, sentence in enumerate(image["sentences"]):
            caption = ""
            if isinstance(sentence, dict):
                caption = sentence.get("raw") or " ".join(sentence.get("tokens", []))
            entries.append((f"{where}.sentences[{j}]", caption, file, source))
    if not entries and not problems:
        raise DataError([Problem(source, None, f"no images in split {split!r}")])
    return build_dataset(entries, image_size, f"{path.stem}-{split}", skip_bad, problems, cache_dir)


def load_coco_captions(
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    image_size: int = 224,
    *,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> CaptionDataset:
    """Read a COCO captions file (`captions_train2017.json`) with its image folder."""
    path = Path(annotations)
    source = str(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataError([Problem(source, None, "expected a JSON object with 'images' and 'annotations' lists")])
    problems: list[Problem] = []
    file_of_id = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            problems.append(Problem(source, f"images[{index}]", "entry lacks 'id' or 'file_name'"))
            continue
        file_of_id[image["id"]] = Path(image_dir) / image["file_name"]
    entries = []
    for index, note in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(note, dict) or note.get("image_id") not in file_of_id:
            problems.append(Problem(source, where, f"unknown or missing image_id {note.get('image_id') if isinstance(note, dict) else None!r}"))
            continue
        entries.append((where, str(note.get("caption") or ""), file_of_id[note["image_id"]], source))
    return build_dataset(entries, image_size, path.stem, skip_bad, problems, cache_dir)


def _load_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError([Problem(str(path), f"line {error.lineno}", f"invalid JSON ({error.msg})")]) from None
