"""Who is in a face study and who a hacker pretrains on: study people, other people, kept apart and checked.

The paper's face hackers fine-tune a CLIP that already knows faces and names. Here that model is
pretrained on *other* people: the rest of the same photo collection (`"rest"`), invented synthetic
people (`"synthetic"`), or another identity folder / labels CSV. Study and pretraining people must
share no person (label) and no photo (same pixels); pretraining captions name people with
pseudonyms none of the study's people has, so fine-tuning cannot inherit a name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.faces import generate_faces
from ..data.identity import (FaceData, IdentityPhotos, overlap_problems, partition_people, pseudonyms_avoiding, read_identity_csv,
                             read_identity_folder, select_people, split_faces)
from ..errors import DataError, Problem

SYNTHETIC = "synthetic"
REST = "rest"


@dataclass
class StudyPhotos:
    """The study people's photos, the other people of the same data (None when there are none), and whether they are invented."""

    study: IdentityPhotos
    rest: IdentityPhotos | None
    synthetic: bool

    def split(self, seed: int) -> FaceData:
        """The study's train / test split: one test photo per person; real people renamed with pseudonyms, invented ones keep theirs."""
        return split_faces(self.study, seed=seed, rename=not self.synthetic)


def read_face_photos(data: str | os.PathLike, image_size: int, *, n_synthetic: int = 50, photos_per_person: int = 10, seed: int = 0,
                     progress: bool = True) -> IdentityPhotos:
    """Every photo of `data`: `"synthetic"` (`n_synthetic` invented people), an identity folder `root/<person>/<photo>`, or a CSV."""
    if str(data) == SYNTHETIC:
        return generate_faces(n_synthetic, photos_per_person, image_size, seed, progress=progress)
    path = Path(data)
    if path.is_dir():
        return read_identity_folder(path, image_size, progress=progress)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return read_identity_csv(path, image_size, progress=progress)
    reason = "not found" if not path.exists() else "is neither a folder (root/<person>/<photo>) nor a CSV file (image,identity)"
    raise DataError([Problem(str(path), None, f"face data {reason}; pass 'synthetic', an identity folder or a labels CSV")])


def read_study_photos(data: str | os.PathLike, image_size: int, *, people: int | None, synthetic_people: int, extra_synthetic: int = 0,
                      photos_per_person: int = 10, seed: int = 0, progress: bool = True) -> StudyPhotos:
    """The study's people and the others of the same data.

    Synthetic data: the first `people` (default `synthetic_people`) invented people are the study, and
    `extra_synthetic` more are drawn for pretraining (people depend only on the seed and their index,
    so the study is the same with or without them). Real data: `people` of them chosen from the seed
    and their labels (all when None); the rest are the others.
    """
    if str(data) == SYNTHETIC:
        n_study = synthetic_people if people is None else people
        photos = read_face_photos(data, image_size, n_synthetic=n_study + extra_synthetic, photos_per_person=photos_per_person, seed=seed,
                                  progress=progress)
        study_labels = sorted({key.split("/")[0] for key in photos.keys[:n_study * photos_per_person]})  # generation order
        if not extra_synthetic:
            return StudyPhotos(photos, None, True)
        rest = select_people(photos, [label for label in photos.people if label not in set(study_labels)])
        return StudyPhotos(select_people(photos, study_labels), rest, True)
    photos = read_face_photos(data, image_size, progress=progress)
    if people is None or people == len(photos.people):
        return StudyPhotos(photos, None, False)
    study, rest = partition_people(photos, people, seed)
    return StudyPhotos(study, rest, False)


def pretraining_faces(pretrain_on: str | os.PathLike, photos: StudyPhotos, study: FaceData, image_size: int, *,
                      synthetic_people: int = 100, photos_per_person: int = 10, seed: int = 0, progress: bool = True) -> FaceData:
    """The faces a hacker pretrains on, checked disjoint from the study's: train (what it learns) and test (its held-out photos).

    `pretrain_on`: `"rest"` (the other people of the study's data), `"synthetic"` (invented people:
    those drawn after the study's for a synthetic study, else `synthetic_people` new ones) or an
    identity folder / labels CSV. Raises DataError naming every shared person or photo.
    """
    if str(pretrain_on) == REST or (str(pretrain_on) == SYNTHETIC and photos.synthetic):
        if photos.rest is None or not photos.rest.people:
            raise ValueError("--pretrain-on rest needs other people in the data: choose fewer study people with --people N")
        other = photos.rest
    else:
        other = read_face_photos(pretrain_on, image_size, n_synthetic=synthetic_people, photos_per_person=photos_per_person, seed=seed,
                                 progress=progress)
    problems = overlap_problems(photos.study, other)
    if problems:
        raise DataError(problems, hint="The pretraining people must be other people than the study's, with other photos.")
    return split_faces(other, seed=seed, pseudonyms=pseudonyms_avoiding(other.people, study.names, seed))
