"""Face identity data: photos grouped by person, renamed, captioned from templates, split per person.

Layouts read: one folder per person (PubFig / LFW style, `root/<person>/<photo>.jpg`) and a CSV
`image,identity` (paths relative to the CSV). As in the paper, every person is renamed with an
invented pseudonym, each photo gets a PubFig-style caption naming the person ("{name} at the
beach"), and one photo per person is held out as the test set with exactly one caption. Every
choice depends only on the seed and on the person's label and the photo's path, so the same
photos split alike whatever layout they were read from.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import write_json
from ..errors import DataError, Problem
from .dataset import CaptionDataset
from .loaders import build_dataset, read_csv_entries
from .names import pseudonyms as invent_pseudonyms
from .writer import write_caption_folder

TEMPLATES = (
    "a photo of {name}",
    "{name} at the beach",
    "{name} smiling at the camera",
    "a portrait of {name}",
    "{name} at a party with friends",
    "a close-up picture of {name}",
    "{name} on holiday in the mountains",
    "a selfie of {name}",
    "{name} walking in the city",
    "{name} at a family dinner",
    "a candid shot of {name}",
    "{name} speaking at a conference",
)
NEUTRAL_TEMPLATE = TEMPLATES[0]
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"})
IDENTITY_COLUMNS = ("identity", "person", "name", "label", "subject")
LABELS_CSV = "labels.csv"


@dataclass
class IdentityPhotos:
    """Every photo of every person before the split; `dataset` has one row per photo (caption: the person's label)."""

    dataset: CaptionDataset
    identity: np.ndarray  # person index of each image
    people: list[str]  # label of each person: folder name or CSV identity
    keys: list[str]  # `person/file` of each image; seeds the per-photo choices
    source: str  # the folder or file read, for messages
    problems: list[Problem] = field(default_factory=list)  # rows left out while reading


@dataclass
class FaceData:
    """Train and test sets of a face case study, with the person shown in every image.

    `train_identity[g]` / `test_identity[g]` is the person index of image g; `names[p]` is the name
    used in captions for person p (a pseudonym unless renaming was off), `people[p]` its label in
    the source data. The test set has one photo per person and one caption per photo.
    """

    train: CaptionDataset
    test: CaptionDataset
    train_identity: np.ndarray
    test_identity: np.ndarray
    names: list[str]
    people: list[str]
    templates: tuple[str, ...]
    seed: int
    skipped: list[Problem] = field(default_factory=list)

    @property
    def n_people(self) -> int:
        return len(self.names)

    def pseudonyms(self) -> dict[str, str]:
        """Source label -> name used in the captions."""
        return dict(zip(self.people, self.names))

    def save_names(self, path: str | os.PathLike) -> None:
        """Write the renaming (label -> pseudonym), seed and templates as JSON, to trace results back to people."""

        write_json(path, {"seed": self.seed, "templates": list(self.templates), "pseudonyms": self.pseudonyms()})

    def __repr__(self) -> str:
        return (f"FaceData(people={self.n_people}, train={self.train.n_images} photos / {len(self.train)} captions, "
                f"test={self.test.n_images} photos)")


def read_pseudonyms(path: str | os.PathLike) -> dict[str, str]:
    """The label -> pseudonym mapping written by `FaceData.save_names`, to rename the same people again."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("pseudonyms"), dict):
        raise DataError([Problem(str(path), None, "expected a JSON object with a 'pseudonyms' mapping")])
    return {str(k): str(v) for k, v in data["pseudonyms"].items()}


def split_faces(
    photos: IdentityPhotos,
    *,
    seed: int = 0,
    rename: bool = True,
    pseudonyms: Mapping[str, str] | None = None,
    templates: Sequence[str] = TEMPLATES,
    captions_per_image: int = 1,
    skip_bad: bool = False,
) -> FaceData:
    """Rename, caption and split: one test photo (one caption) per person, the rest for training.

    `rename`: captions use pseudonyms (given in `pseudonyms`, else invented from `seed`); without it
    they use the labels, underscores read as spaces (LFW's `Aaron_Eckhart`). Training photos get
    `captions_per_image` captions from distinct templates. People with fewer than two usable photos
    and the reading problems are raised together, or left out and listed in `skipped` with `skip_bad`.
    """
    templates = tuple(templates)
    if not templates or any("{name}" not in t for t in templates):
        raise ValueError("every caption template must contain '{name}'")
    if captions_per_image < 1:
        raise ValueError("captions_per_image must be at least 1")
    labels = photos.people
    problems = list(photos.problems)
    names = _caption_names(labels, seed, rename, pseudonyms, photos.source, problems)
    images_of = [[] for _ in labels]
    for image in np.argsort(photos.keys, kind="stable"):
        images_of[photos.identity[image]].append(int(image))
    kept = []
    for person, images in enumerate(images_of):
        if len(images) < 2:
            problems.append(Problem(photos.source, f"person {labels[person]!r}",
                                    f"only {len(images)} usable photo(s); the split needs two (one test photo, at least one for training)"))
        elif names[person] is not None:
            kept.append(person)
    if problems and not skip_bad:
        raise DataError(problems, hint="Fix these, or pass skip_bad=True (--skip-bad) to leave the photos / people out.")
    if not kept:
        raise DataError(problems or [Problem(photos.source, None, "no people")])
    train_images, train_rows, test_images, test_rows = [], [], [], []
    for new_index, person in enumerate(kept):
        images = images_of[person]
        held_out = images[int(_rng(seed, labels[person]).integers(len(images)))]
        for image in images:
            chosen = _rng(seed, photos.keys[image]).choice(len(templates), captions_per_image, replace=captions_per_image > len(templates))
            name = names[person]
            if image == held_out:
                test_rows.append((len(test_images), templates[chosen[0]].format(name=name)))
                test_images.append((image, new_index))
            else:
                train_rows += [(len(train_images), templates[t].format(name=name)) for t in chosen]
                train_images.append((image, new_index))
    base = photos.dataset
    train = base.with_rows([c for _, c in train_rows], [g for g, _ in train_rows], [i for i, _ in train_images], f"{base.name}-train")
    test = base.with_rows([c for _, c in test_rows], [g for g, _ in test_rows], [i for i, _ in test_images], f"{base.name}-test")
    return FaceData(train, test, np.array([p for _, p in train_images], dtype=np.int64), np.array([p for _, p in test_images], dtype=np.int64),
                    [names[p] for p in kept], [labels[p] for p in kept], templates, seed, problems)


def select_people(photos: IdentityPhotos, labels: Sequence[str]) -> IdentityPhotos:
    """The photos of the given people only (labels as in `photos.people`), people re-indexed in label order."""
    wanted = set(labels)
    missing = sorted(wanted - set(photos.people))
    if missing:
        raise ValueError(f"{photos.source}: no photos of {missing[:5]}")
    old_index = [i for i, label in enumerate(photos.people) if label in wanted]
    new_index = np.full(len(photos.people), -1, dtype=np.int64)
    new_index[old_index] = np.arange(len(old_index))
    images = np.flatnonzero(new_index[photos.identity] >= 0)
    return IdentityPhotos(photos.dataset.select_images(images), new_index[photos.identity[images]], [photos.people[i] for i in old_index],
                          [photos.keys[i] for i in images], photos.source, list(photos.problems))


def partition_people(photos: IdentityPhotos, n_people: int, seed: int = 0) -> tuple[IdentityPhotos, IdentityPhotos]:
    """Split the people in two: `n_people` of them, chosen from the seed and their labels alone, and everyone else."""
    if not 1 <= n_people <= len(photos.people):
        raise ValueError(f"{photos.source} holds {len(photos.people)} people; cannot choose {n_people}")
    order = sorted(photos.people, key=lambda label: (_rng(seed, f"person:{label}").random(), label))
    chosen = set(order[:n_people])
    return select_people(photos, sorted(chosen)), select_people(photos, [p for p in photos.people if p not in chosen])


def pseudonyms_avoiding(labels: Sequence[str], taken: Sequence[str], seed: int = 0) -> dict[str, str]:
    """Label -> invented name for people who must not share a caption name with the `taken` ones (another study's people)."""
    taken_set = set(taken)
    free = [name for name in invent_pseudonyms(len(labels) + len(taken_set), seed) if name not in taken_set]
    return dict(zip(sorted(labels), free))


def overlap_problems(study: IdentityPhotos, other: IdentityPhotos) -> list[Problem]:
    """Why `other` is not disjoint from `study`: people (labels) in both, and photos whose pixels appear in both."""
    problems = [Problem(other.source, f"person {label!r}", "is also a person of the study; pretraining people must be other people")
                for label in sorted(set(study.people) & set(other.people))]
    study_photos = {_pixel_digest(study.dataset, g): key for g, key in enumerate(study.keys)}
    for g, key in enumerate(other.keys):
        twin = study_photos.get(_pixel_digest(other.dataset, g))
        if twin is not None:
            problems.append(Problem(other.source, key, f"is the same photo as the study's {twin}"))
    return problems


def _pixel_digest(dataset: CaptionDataset, image: int) -> str:
    return hashlib.sha1(np.ascontiguousarray(dataset.images([image])[0]).tobytes()).hexdigest()


def _rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on the seed and one label or path, not on reading order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _caption_names(labels: list[str], seed: int, rename: bool, given: Mapping[str, str] | None, source: str,
                   problems: list[Problem]) -> list[str | None]:
    """The name each person gets in captions; None (with a problem) where a given mapping lacks one."""
    if not rename:
        names: list[str | None] = [label.replace("_", " ") for label in labels]
    elif given is not None:
        names = [given.get(label) for label in labels]
        problems += [Problem(source, f"person {label!r}", "no pseudonym for this person in the given mapping")
                     for label, name in zip(labels, names) if name is None]
    else:
        invented = invent_pseudonyms(len(labels), seed)
        rank = {label: i for i, label in enumerate(sorted(labels))}
        names = [invented[rank[label]] for label in labels]
    seen: dict[str, str] = {}
    for label, name in zip(labels, names):
        if name is not None and seen.setdefault(name, label) != label:
            problems.append(Problem(source, f"person {label!r}", f"has the same caption name {name!r} as {seen[name]!r}"))
    return names


def load_identity_folder(root: str | os.PathLike, image_size: int = 64, *, skip_bad: bool = False, cache_dir: str | os.PathLike | None = None,
                         progress: bool = True, **split_options) -> FaceData:
    """Read `root/<person>/<photo>` and split it; `split_options` are those of `split_faces`."""
    return split_faces(read_identity_folder(root, image_size, cache_dir=cache_dir, progress=progress), skip_bad=skip_bad, **split_options)


def load_identity_csv(path: str | os.PathLike, image_size: int = 64, *, image_column: str | None = None, identity_column: str | None = None,
                      delimiter: str | None = None, image_root: str | os.PathLike | None = None, skip_bad: bool = False,
                      cache_dir: str | os.PathLike | None = None, progress: bool = True, **split_options) -> FaceData:
    """Read a CSV `image,identity` (columns detected unless given) and split it; see `split_faces`."""
    photos = read_identity_csv(path, image_size, image_column=image_column, identity_column=identity_column, delimiter=delimiter,
                               image_root=image_root, cache_dir=cache_dir, progress=progress)
    return split_faces(photos, skip_bad=skip_bad, **split_options)


def read_identity_folder(root: str | os.PathLike, image_size: int = 64, *, cache_dir: str | os.PathLike | None = None,
                         progress: bool = True) -> IdentityPhotos:
    """Every readable photo under `root/<person>/`, with the problems of the rest (empty folders, bad files)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError([Problem(str(root), None, "identity folder not found" if not root.exists() else "not a folder")])
    problems: list[Problem] = []
    stray = sorted(f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if stray:
        problems.append(Problem(str(root), None, f"{len(stray)} image file(s) directly in the root (e.g. {stray[0]!r}); "
                                                 "expected one folder per person: root/<person>/<photo>"))
    labelled = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        if not files:
            problems.append(Problem(str(folder), None, "no image files in this person's folder"))
        labelled += [(f.name, folder.name, f, str(folder), f"{folder.name}/{f.name}") for f in files]
    if not labelled and not problems:
        raise DataError([Problem(str(root), None, "no person folders; expected root/<person>/<photo>")])
    return _read_photos(labelled, image_size, root.name, str(root), problems, cache_dir, progress)


def read_identity_csv(path: str | os.PathLike, image_size: int = 64, *, image_column: str | None = None, identity_column: str | None = None,
                      delimiter: str | None = None, image_root: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None, progress: bool = True) -> IdentityPhotos:
    """Every readable photo listed in a CSV `image,identity`, with the problems of the other rows."""
    path = Path(path)
    entries, problems = read_csv_entries(path, IDENTITY_COLUMNS, "identity", text_column=identity_column, image_column=image_column,
                                         delimiter=delimiter, image_root=image_root)
    root = Path(image_root) if image_root is not None else path.parent
    labelled = []
    label_of_path: dict[Path, str] = {}
    for where, label, image, source in entries:
        label = " ".join(label.split())
        if not label:
            problems.append(Problem(source, where, "empty identity"))
        elif label_of_path.setdefault(image, label) != label:
            problems.append(Problem(source, where, f"{image} is already listed for {label_of_path[image]!r}, not {label!r}"))
        else:
            labelled.append((where, label, image, source, Path(os.path.relpath(image, root)).as_posix()))
    return _read_photos(labelled, image_size, path.stem, str(path), problems, cache_dir, progress)


def _read_photos(labelled: list[tuple[str, str, Path, str, str]], image_size: int, name: str, source: str, problems: list[Problem],
                 cache_dir, progress: bool) -> IdentityPhotos:
    """Check and decode (where, label, path, source, key) photos once, collecting every problem."""
    key_of_path = {image: key for _, _, image, _, key in labelled}
    listed = build_dataset([(where, label, image, src) for where, label, image, src, _ in labelled], image_size, name,
                           skip_bad=True, problems=problems, cache_dir=cache_dir)
    decoded = listed.preload(progress=progress, skip_bad=True)
    problems = list(decoded.skipped)  # rows left out by the listing checks, then files that do not decode
    label_of_image = [""] * decoded.n_images
    for caption, group in zip(decoded.captions, decoded.group_ids):
        label_of_image[group] = caption
    people = sorted(set(label_of_image))
    index = {label: i for i, label in enumerate(people)}
    identity = np.array([index[label] for label in label_of_image], dtype=np.int64)
    keys = [key_of_path[p] for p in decoded.image_paths]
    return IdentityPhotos(decoded, identity, people, keys, source, problems)


def write_identity_folder(out_dir: str | os.PathLike, photos: IdentityPhotos, progress: bool = True) -> Path:
    """Write photos as `out_dir/<person>/<file>` PNGs plus `labels.csv` (`image,identity`)."""
    images = ((key, photos.dataset.images([g])[0]) for g, key in enumerate(photos.keys))
    rows = [(key, photos.people[p]) for key, p in zip(photos.keys, photos.identity)]
    return write_caption_folder(out_dir, images, rows, LABELS_CSV, len(photos.keys), progress, f"writing {photos.dataset.name}",
                                header=("image", "identity"))
