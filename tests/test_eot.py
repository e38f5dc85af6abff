"""EOT for the noise step: the differentiable JPEG computes what the codec does, gradients flow, steps are seeded, MEM uses it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mem_toolkit.protect import MEM
from mem_toolkit.protect.settings import parse_settings
from mem_toolkit.protect.eot import CHROMA_TABLE, LUMA_TABLE, differentiable_jpeg, eot_transform, quantisation_table


def _pillow_jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    decoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(decoded).astype(float)


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_differentiable_jpeg_is_close_to_the_codec(tiny_shapes, quality):
    images = tiny_shapes.images(range(8))
    codec = _pillow_jpeg(images, quality)
    ours = differentiable_jpeg(_tensor(images), quality).permute(0, 2, 3, 1).numpy() * 255
    codec_change = np.abs(codec - images).mean()
    assert codec_change > 3  # JPEG does change these images...
    assert np.abs(ours - codec).mean() < 0.4 * codec_change  # ...and the simulation lands near what it makes of them
    assert np.abs(ours - codec).mean() < np.abs(ours - images).mean()


def test_quantisation_tables_scale_as_libjpeg_and_the_gradient_flows(tiny_shapes):
    assert quantisation_table(LUMA_TABLE, 50).flatten().tolist() == LUMA_TABLE
    assert quantisation_table(CHROMA_TABLE, 100).eq(1).all()
    assert quantisation_table(LUMA_TABLE, 10)[0, 0] == 80  # scale 500 %: 16 * 5
    images = _tensor(tiny_shapes.images(range(2))).requires_grad_(True)
    differentiable_jpeg(images, 75).sum().backward()
    assert images.grad.abs().mean() > 0.1


def test_eot_steps_are_seeded_and_unknown_transformations_are_refused(tiny_shapes):
    images = _tensor(tiny_shapes.images(range(4)))
    transform = eot_transform(("jpeg", "crop-flip"), (0, 1, 2))
    outputs = [transform(images, step) for step in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(outputs, [transform(images, step) for step in range(6)]))
    assert not all(torch.equal(outputs[0], other) for other in outputs[1:])
    assert all(o.shape == images.shape for o in outputs)
    assert eot_transform((), (0,)) is None
    with pytest.raises(ValueError, match="unknown EOT"):
        MEM(3, eot=["blur"])
    with pytest.raises(ValueError, match="not one string"):
        MEM(3, eot="crop-flip")


@pytest.mark.parametrize("text, expected", [("eot=crop-flip", {"eot": ("crop-flip",)}), ('eot=["crop-flip"]', {"eot": ("crop-flip",)}),
                                            ("code_ensemble=mem-tiny-vit", {"code_ensemble": ("mem-tiny-vit",)})])
def test_key_value_list_settings_give_a_tuple_of_names(text, expected):
    assert parse_settings([text]) == expected


def test_comma_separated_names_and_a_parsed_eot_reach_the_protector():
    assert parse_settings(["eot=jpeg,crop-flip"]) == {"eot": ("jpeg", "crop-flip")}
    assert MEM(3, **parse_settings(["eot=crop-flip"])).config.eot == ("crop-flip",)


def test_mem_with_eot_optimises_its_noise_through_the_transformations(tiny_shapes):
    small = tiny_shapes.select_images(range(16))
    settings = dict(rounds=1, surrogate_steps=1, pgd_steps=2, trigger_rounds=0, batch_size=16, device="cpu")
    plain = MEM(2, **settings).fit(small, progress=False)
    robust_mem = MEM(2, eot=["jpeg", "crop-flip"], **settings)
    robust = robust_mem.fit(small, progress=False)
    assert robust_mem.get_params()["eot"] == ("jpeg", "crop-flip") and list(robust.config["eot"]) == ["jpeg", "crop-flip"]
    assert np.abs(robust.noise).max() > 0 and not np.array_equal(robust.noise, plain.noise)


def test_protect_command_takes_eot_and_strip_share(tmp_path):
    from mem_toolkit.cli import main
    from mem_toolkit.protect import Protection

    assert main(["make-data", "shapes", "--out", str(tmp_path / "data"), "--n-train", "8", "--n-test", "4"]) == 0
    assert main(["--threads", "1", "protect", "--method", "mem", "--trigger-len", "2", "--rounds", "1", "--surrogate-steps", "0", "--pgd-steps", "1",
                 "--trigger-rounds", "0", "--batch-size", "8", "--eot", "jpeg", "crop-flip", "--strip-share", "0.25",
                 "--train-csv", str(tmp_path / "data" / "train.csv"), "--out", str(tmp_path / "protection")]) == 0
    config = Protection.load(tmp_path / "protection").config
    assert config["eot"] == ["jpeg", "crop-flip"] and config["strip_share"] == 0.25
