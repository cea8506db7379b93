"""The fingerprint is checked on every load and at every gallery, and covers the preprocessing (issue 11, repro 2, 9)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bt2_hf import BT2Model, FingerprintMismatchError
from bt2_hf.errors import BT2InputError
from bt2_hf.fingerprint import UnverifiedWeightsError, fingerprint_model, fingerprint_state_dict
from bt2_hf.galleries import FaissGallery

from .conftest import tiny_model

IMAGES = [np.full((28, 28), v, dtype=np.uint8) for v in (0, 60, 120, 180, 240)]


def _zero_a_weight(path):
    weights = load_file(path / "model.safetensors")
    name = max(weights, key=lambda k: weights[k].numel())  # the biggest tensor
    weights[name] = torch.zeros_like(weights[name])
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "load_kwargs", [{}, {"dtype": torch.float32}, {"dtype": torch.bfloat16}, {"dtype": "auto"}, {"device_map": "cpu"}]
)
def test_corrupted_weights_are_refused_whatever_dtype_or_device_map(saved_model, load_kwargs):
    _zero_a_weight(saved_model)
    with pytest.raises(FingerprintMismatchError, match="model\\*.safetensors"):
        BT2Model.from_pretrained(saved_model, **load_kwargs)


def test_a_cast_load_is_verified_and_keeps_the_saved_fingerprint(saved_model):
    recorded = json.loads((saved_model / "config.json").read_text())["fingerprint"]
    model = BT2Model.from_pretrained(saved_model, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.verified_fingerprint() == recorded == fingerprint_model(model)


def test_checkpoint_without_fingerprint_needs_explicit_trust(saved_model):
    config = json.loads((saved_model / "config.json").read_text())
    del config["fingerprint"]
    (saved_model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnverifiedWeightsError, match="trust_unverified_weights=True"):
        BT2Model.from_pretrained(saved_model)
    with pytest.warns(UserWarning, match="unverified"):
        model = BT2Model.from_pretrained(saved_model, trust_unverified_weights=True)
    assert model.verified_fingerprint() is None


def test_truncated_safetensors_names_the_file(saved_model):
    weights = saved_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BT2InputError, match="model.safetensors") as error:
        BT2Model.from_pretrained(saved_model)
    assert str(weights) in str(error.value) and "truncated" in str(error.value)


def test_gallery_refuses_a_model_changed_in_memory(saved_model, tmp_path):
    model = BT2Model.from_pretrained(saved_model)
    gallery = FaissGallery.from_model(tmp_path / "gallery", model, IMAGES)
    assert gallery.encoder["fingerprint"] == model.config.fingerprint
    assert gallery.search_with_model(model, images=IMAGES[:1], k=1).ids == [[0]]
    with torch.no_grad():
        next(model.parameters()).zero_()  # config.fingerprint still names the saved weights
    with pytest.raises(FingerprintMismatchError, match="changed in memory"):
        gallery.search_with_model(model, images=IMAGES[:1], k=1)
    with pytest.raises(FingerprintMismatchError, match="changed in memory"):
        FaissGallery.from_model(tmp_path / "other", model, IMAGES)
    # Saved, it is another model with another fingerprint, which the old gallery refuses as incompatible.
    model.save_pretrained(tmp_path / "edited")
    edited = BT2Model.from_pretrained(tmp_path / "edited")
    assert edited.config.fingerprint != gallery.encoder["fingerprint"]
    with pytest.raises(ValueError, match="may not search"):
        gallery.search_with_model(edited, images=IMAGES[:1], k=1)


def test_a_model_loaded_unverified_cannot_search_a_gallery(saved_model, tmp_path):
    gallery = FaissGallery.from_model(tmp_path / "gallery", BT2Model.from_pretrained(saved_model), IMAGES)
    with pytest.warns(UserWarning, match="verify_fingerprint=False"):
        unverified = BT2Model.from_pretrained(saved_model, verify_fingerprint=False)
    with pytest.raises(FingerprintMismatchError):
        gallery.search_with_model(unverified, images=IMAGES[:1], k=1)


def test_fingerprint_covers_the_preprocessing(tmp_path):
    tiny_model(image_mean=0.2, image_std=0.3).save_pretrained(tmp_path / "custom")
    tiny_model().save_pretrained(tmp_path / "default")
    custom = json.loads((tmp_path / "custom" / "config.json").read_text())["fingerprint"]
    default = json.loads((tmp_path / "default" / "config.json").read_text())["fingerprint"]
    assert custom != default  # same weights, another processor: another model
    loaded = BT2Model.from_pretrained(tmp_path / "custom")
    assert loaded.processor.image_mean == [0.2] and loaded.config.fingerprint == custom

    # A processor file edited (or lost) after saving is refused like edited weights.
    processor_file = tmp_path / "custom" / "preprocessor_config.json"
    processor = json.loads(processor_file.read_text())
    processor_file.write_text(json.dumps({**processor, "image_mean": [0.5]}))
    with pytest.raises(FingerprintMismatchError, match="preprocessor_config.json"):
        BT2Model.from_pretrained(tmp_path / "custom")
    processor_file.unlink()  # falls back to the default processor: not the saved model either
    with pytest.raises(FingerprintMismatchError):
        BT2Model.from_pretrained(tmp_path / "custom")


def test_weights_only_fingerprint_of_older_checkpoints_loads_with_a_warning(saved_model):
    config = json.loads((saved_model / "config.json").read_text())
    config["fingerprint"] = fingerprint_state_dict(load_file(saved_model / "model.safetensors"))
    (saved_model / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="weights only"):
        model = BT2Model.from_pretrained(saved_model)
    assert model.verified_fingerprint() == config["fingerprint"]
