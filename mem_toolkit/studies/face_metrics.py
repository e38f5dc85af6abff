"""Face case study metrics: N x N retrieval of the test photos, and naming each test face among all people.

Retrieval reuses `retrieval_metrics` (one caption per test photo; image->text and text->image are
computed separately, unlike the official code whose t2i is a copy of i2t). Identification ranks
every person's name for each test face, using the text features of a neutral template ("a photo
of {name}"), averaged over templates when several are given, as CLIP zero-shot classifiers do.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.identity import NEUTRAL_TEMPLATE, FaceData
from ..evaluate import encode_dataset
from ..metrics import hits_at, random_guess_metrics, recall_at, retrieval_hits, retrieval_metrics
from ..models import ClipModel

TOP_KS = (1, 5)


def _identification_ranks(image_features, name_features, identity) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For each face: how many names score strictly above its true name, how many tie with it; and the number of names."""
    image_features = torch.as_tensor(image_features).float().cpu()
    name_features = torch.as_tensor(name_features).float().cpu()
    identity = torch.as_tensor(np.asarray(identity), dtype=torch.long)
    if len(identity) != len(image_features):
        raise ValueError("identity must have one entry per face")
    n_people = len(name_features)
    if len(identity) and (identity.min() < 0 or identity.max() >= n_people):
        raise ValueError("an identity points outside the list of names")
    scores = image_features @ name_features.T
    positive = scores.gather(1, identity[:, None])
    above = (scores > positive).sum(1).double()
    tied = (scores == positive).sum(1).double() - 1  # other names scoring exactly as the true one
    return above, tied, n_people


def identification_metrics(image_features, name_features, identity, ks: Sequence[int] = TOP_KS) -> dict[str, float]:
    """Top-k accuracy (percent) and mean rank of each face's true name among all names, with chance values.

    `identity[i]` is the row of `name_features` that face i shows. Ties are broken at random in
    expectation (a model whose features collapse scores chance, not 100 %).
    """
    above, tied, n_people = _identification_ranks(image_features, name_features, identity)
    out = {}
    for k in ks:
        out[f"top{k}"] = recall_at(above, tied, k)
    out["mean_rank"] = float((above + 1 + tied / 2).mean())
    for k in ks:
        out[f"chance_top{k}"] = 100.0 * min(k, n_people) / n_people
    out["chance_mean_rank"] = (n_people + 1) / 2
    out["n_people"] = n_people
    out["n_faces"] = len(above)
    return out


def identification_hits(image_features, name_features, identity, ks: Sequence[int] = TOP_KS) -> dict[str, list[float]]:
    """Per face, the probability that its true name is among the top k (what top-k averages), for intervals over test faces."""
    above, tied, _ = _identification_ranks(image_features, name_features, identity)
    return {f"top{k}": hits_at(above, tied, k).tolist() for k in ks}


@torch.no_grad()
def name_features(model: ClipModel, names: Sequence[str], templates: Sequence[str] = (NEUTRAL_TEMPLATE,),
                  batch_size: int = 256) -> torch.Tensor:
    """Unit-norm text feature of every name: the mean over `templates` of the template's text, re-normalised."""
    was_training = model.training
    model.eval()
    per_template = []
    for template in templates:
        texts = [template.format(name=name) for name in names]
        per_template.append(torch.cat([model.encode_text(model.tokenizer(texts[s:s + batch_size], model.context_length)).float().cpu()
                                       for s in range(0, len(texts), batch_size)]))
    model.train(was_training)
    return F.normalize(torch.stack(per_template).sum(0), dim=-1)


def identify(model: ClipModel, face_data: FaceData, templates: Sequence[str] = (NEUTRAL_TEMPLATE,), batch_size: int = 256) -> dict[str, float]:
    """Name each clean test face among all people: top-1 / top-5 accuracy and mean rank, beside chance."""
    image_features, _ = encode_dataset(model, face_data.test, batch_size)
    return identification_metrics(image_features, name_features(model, face_data.names, templates, batch_size), face_data.test_identity)


def evaluate_faces(model: ClipModel, face_data: FaceData, templates: Sequence[str] = (NEUTRAL_TEMPLATE,),
                   batch_size: int = 256) -> dict[str, dict]:
    """Retrieval of the test photos (N x N, with the random-guess values) and identification, in one pass, with the
    per-face hits (`per_face`) behind them."""
    test = face_data.test
    if len(test) != test.n_images:
        raise ValueError(f"the face test set needs one caption per photo; it has {len(test)} captions for {test.n_images} photos")
    image_features, text_features = encode_dataset(model, test, batch_size)
    names = name_features(model, face_data.names, templates, batch_size)
    return {
        "retrieval": retrieval_metrics(image_features, text_features, test.group_ids),
        "retrieval_random": random_guess_metrics(np.ones(test.n_images, dtype=np.int64)),
        "identification": identification_metrics(image_features, names, face_data.test_identity),
        # per test face (one caption each), the hits behind every figure above: intervals resample them
        "per_face": identification_hits(image_features, names, face_data.test_identity)
                    | retrieval_hits(image_features, text_features, test.group_ids, ks=TOP_KS),
    }
