"""Identification (naming a face among all people) and the N x N face retrieval, on hand-made cases and a tiny model."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mem_toolkit.data.faces import make_faces
from mem_toolkit.evaluate import encode_dataset, evaluate_retrieval
from mem_toolkit.studies.face_metrics import evaluate_faces, identification_metrics, identify, name_features
from mem_toolkit.metrics import retrieval_metrics
from mem_toolkit.models import create_model


def test_hand_made_ranks_with_a_tie():
    names = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    faces = torch.tensor([[0.8, 0.6], [0.8, 0.6], [0.0, 1.0]])
    out = identification_metrics(faces, names, [0, 1, 2], ks=(1, 2))
    # face 0: rank 1; face 1: rank 2; face 2: one name above, one tied -> rank 2 or 3 with equal odds
    assert out["top1"] == pytest.approx(100 / 3)
    assert out["top2"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)
    assert out["mean_rank"] == pytest.approx((1 + 2 + 2.5) / 3)
    assert out["chance_top1"] == pytest.approx(100 / 3) and out["chance_top2"] == pytest.approx(200 / 3)
    assert out["chance_mean_rank"] == 2 and out["n_people"] == 3 and out["n_faces"] == 3


def test_identity_features_identify_everyone():
    names = F.normalize(torch.randn(30, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    identity = np.random.default_rng(0).integers(0, 30, 90)
    out = identification_metrics(names[identity], names, identity)
    assert out["top1"] == 100 and out["top5"] == 100 and out["mean_rank"] == 1


def test_random_features_score_chance():
    generator = torch.Generator().manual_seed(1)
    names = F.normalize(torch.randn(50, 32, generator=generator), dim=-1)
    faces = F.normalize(torch.randn(5000, 32, generator=generator), dim=-1)
    identity = np.random.default_rng(1).integers(0, 50, 5000)
    out = identification_metrics(faces, names, identity)
    assert abs(out["top1"] - out["chance_top1"]) < 1.0 and out["chance_top1"] == 2
    assert abs(out["top5"] - out["chance_top5"]) < 1.5 and out["chance_top5"] == 10
    assert abs(out["mean_rank"] - out["chance_mean_rank"]) < 1.5


def test_collapsed_features_score_exactly_chance_not_perfect():
    names = torch.ones(8, 4) / 2
    out = identification_metrics(torch.ones(5, 4) / 2, names, [0, 1, 2, 3, 7])
    assert out["top1"] == pytest.approx(100 / 8) and out["top5"] == pytest.approx(500 / 8)
    assert out["mean_rank"] == pytest.approx(4.5)


def test_top_k_beyond_the_number_of_people_is_certain():
    out = identification_metrics(torch.eye(3), torch.eye(3)[[2, 1, 0]], [0, 1, 2])
    assert out["top5"] == 100 and out["chance_top5"] == 100


def test_bad_identity_is_refused():
    with pytest.raises(ValueError, match="outside"):
        identification_metrics(torch.eye(2), torch.eye(2), [0, 2])
    with pytest.raises(ValueError, match="one entry per face"):
        identification_metrics(torch.eye(2), torch.eye(2), [0])


def test_face_retrieval_directions_are_computed_separately():
    """One caption per photo: i2t ranks along rows, t2i along columns; a copy of one for the other would be wrong."""
    scores = torch.tensor([[0.9, 0.95, 0.99], [0.0, 0.5, 0.0], [0.0, 0.0, 0.1]])
    out = retrieval_metrics(scores, torch.eye(3), [0, 1, 2])  # image i . caption j = scores[i, j]
    # i2t ranks [3, 1, 1]; t2i ranks [1, 2, 2]
    assert out["i2t_R@1"] == pytest.approx(200 / 3) and out["t2i_R@1"] == pytest.approx(100 / 3)
    assert out["i2t_MeanR"] == pytest.approx(5 / 3) and out["t2i_MeanR"] == pytest.approx(5 / 3)
    generator = torch.Generator().manual_seed(3)
    images, texts = torch.randn(40, 8, generator=generator), torch.randn(40, 8, generator=generator)
    brute = images @ texts.T
    i2t = [(brute[i] > brute[i, i]).sum().item() + 1 for i in range(40)]
    t2i = [(brute[:, j] > brute[j, j]).sum().item() + 1 for j in range(40)]
    out = retrieval_metrics(images, texts, np.arange(40))
    assert out["i2t_MeanR"] == pytest.approx(np.mean(i2t)) and out["t2i_MeanR"] == pytest.approx(np.mean(t2i))
    assert i2t != t2i


@pytest.fixture(scope="module")
def tiny():
    return create_model("mem-tiny-rn", seed=0), make_faces(8, 3, 64, seed=0)


def test_identify_on_a_real_model_matches_the_features(tiny):
    model, data = tiny
    image_features, _ = encode_dataset(model, data.test)
    expected = identification_metrics(image_features, name_features(model, data.names), data.test_identity)
    assert identify(model, data) == expected
    assert expected["n_people"] == 8 and expected["n_faces"] == 8


def test_name_features_average_the_templates(tiny):
    model, data = tiny
    templates = ("a photo of {name}", "{name} at the beach")
    each = [name_features(model, data.names, (t,)) for t in templates]
    both = name_features(model, data.names, templates)
    assert torch.allclose(both, F.normalize(each[0] + each[1], dim=-1), atol=1e-6)
    assert torch.allclose(both.norm(dim=-1), torch.ones(len(data.names)), atol=1e-5)
    assert not torch.allclose(each[0], each[1])


def test_evaluate_faces_reports_retrieval_random_and_identification(tiny):
    model, data = tiny
    report = evaluate_faces(model, data)
    assert report["retrieval"] == pytest.approx(evaluate_retrieval(model, data.test).metrics)
    assert report["retrieval_random"]["t2i_R@1"] == pytest.approx(100 / 8)
    assert report["identification"] == identify(model, data)
    # the per-face hits average to the reported figures (intervals resample them), one per test face
    per_face = report["per_face"]
    assert set(per_face) == {"top1", "top5", "i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"}
    assert all(len(hits) == data.test.n_images and all(0 <= h <= 1 for h in hits) for hits in per_face.values())
    for key, hits in per_face.items():
        group = "identification" if key.startswith("top") else "retrieval"
        assert 100 * np.mean(hits) == pytest.approx(report[group][key]), key
    doubled = data.test.with_rows(data.test.captions * 2, np.concatenate([data.test.group_ids] * 2))
    with pytest.raises(ValueError, match="one caption per photo"):
        evaluate_faces(model, dataclasses.replace(data, test=doubled))
