"""The open_clip wrapper: bundled configs, seeding, pixel input, save/load without pickle, clear errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mem_toolkit.models import ClipModel, bundled_models, create_model, load_model, resolve_device


def same_weights(a: ClipModel, b: ClipModel) -> bool:
    sa, sb = a.clip.state_dict(), b.clip.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def inputs(model: ClipModel, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, model.image_size, model.image_size), dtype=torch.uint8, generator=generator)
    tokens = model.tokenizer(["a red circle", "a blue square on the left", "two stars"][:batch], model.context_length)
    return pixels, tokens


def test_bundled_configs_are_listed():
    assert {"mem-tiny-rn", "mem-tiny-vit"} <= set(bundled_models())


@pytest.mark.parametrize("name", ["mem-tiny-rn", "mem-tiny-vit"])
def test_bundled_models_build_and_encode(name):
    model = create_model(name, seed=0)
    assert model.name == name and model.image_size == 64 and model.context_length == 32
    pixels, tokens = inputs(model)
    with torch.no_grad():
        image, text, scale = model(pixels, tokens)
    assert image.shape == text.shape == (3, 128)
    assert torch.allclose(image.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature


def test_same_seed_same_weights_other_seed_other_weights():
    assert same_weights(create_model("mem-tiny-rn", seed=3), create_model("mem-tiny-rn", seed=3))
    assert not same_weights(create_model("mem-tiny-rn", seed=3), create_model("mem-tiny-rn", seed=4))


def test_uint8_and_unit_float_pixels_give_the_same_features():
    model = create_model("mem-tiny-vit", seed=0).eval()
    pixels, _ = inputs(model)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(pixels), model.encode_image(pixels.float() / 255), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = create_model("mem-tiny-rn", seed=1).eval()
    path = tmp_path / "run" / "model.safetensors"
    model.save(path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["name"] == "mem-tiny-rn" and sidecar["image_size"] == 64
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_model(path).eval()
    assert same_weights(model, loaded)
    pixels, tokens = inputs(model)
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), loaded.encode_image(pixels))
        assert torch.equal(model.encode_text(tokens), loaded.encode_text(tokens))
    by_name = create_model("mem-tiny-rn", pretrained=path, seed=99)
    assert same_weights(model, by_name)
    assert by_name.pretrained == str(path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "vit.safetensors"
    create_model("mem-tiny-vit", seed=0).save(path)
    with pytest.raises(ValueError, match="does not fit model 'mem-tiny-rn': size mismatch for visual"):
        create_model("mem-tiny-rn", pretrained=path)


def test_checkpoint_with_missing_tensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in create_model("mem-tiny-rn", seed=0).clip.state_dict().items() if k != "logit_scale"}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit model 'mem-tiny-rn': missing \['logit_scale'\]"):
        create_model("mem-tiny-rn", pretrained=tmp_path / "partial.safetensors")


def test_unknown_names_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model'.*mem-tiny-rn"):
        create_model("no-such-model")
    with pytest.raises(RuntimeError, match="'no-such-tag' is not a known tag or valid file path"):
        create_model("mem-tiny-rn", pretrained="no-such-tag")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        create_model("mem-tiny-rn", pretrained=tmp_path / "absent.safetensors")
    (tmp_path / "orphan.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"orphan\.json .*is missing"):
        load_model(tmp_path / "orphan.safetensors")


def test_logit_scale_is_clamped_at_100():
    model = create_model("mem-tiny-rn", seed=0)
    with torch.no_grad():
        model.clip.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale().item() == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        model.clip.logit_scale.fill_(-2.0)
    model.clamp_logit_scale()
    assert model.clip.logit_scale.item() == 0.0
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(20))
    model.clamp_logit_scale()
    assert model.logit_scale().item() == pytest.approx(20.0, rel=1e-5)


def test_token_embedding_is_the_text_towers():
    model = create_model("mem-tiny-rn", seed=0)
    assert model.token_embedding.weight.shape == (model.tokenizer.vocab_size, 128)
    assert model.token_embedding is model.clip.token_embedding


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
