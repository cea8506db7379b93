"""BT² models on pretrained backbones given by Hub id: through the real client, the Hub cache, and offline after."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import save_file
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from bt2_hf import BT2Model
from tests.conftest import TINY_BACKBONES

BT2_HEAD = {"head_type": "basis_transformation", "feature_dim": 16, "old_embedding_dim": 8, "extra_dim": 4}
IMAGENET_MEAN = [0.485, 0.456, 0.406]


def _upload(hub, repo_id: str, folder) -> None:
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


def _tiny_vit_checkpoint(folder) -> ViTModel:
    torch.manual_seed(3)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             image_size=32, patch_size=8), add_pooling_layer=False)  # fmt: skip
    vit.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=[0.2] * 3,
                      resample=3).save_pretrained(folder)  # fmt: skip
    return vit


def test_transformers_backbone_by_hub_id_inherits_its_processor_and_works_offline(hub, tmp_path, monkeypatch):
    vit = _tiny_vit_checkpoint(tmp_path / "vit")
    _upload(hub, "pretrained-org/tiny-vit", tmp_path / "vit")

    model = BT2Model.from_pretrained_backbone("pretrained-org/tiny-vit", "hf_vision", cache_dir=hub.cache_dir,
                                              **BT2_HEAD)  # fmt: skip
    for name, tensor in vit.state_dict().items():
        assert torch.equal(model.backbone.model.state_dict()[name], tensor), name
    processor = model.processor
    assert processor.size == {"height": 32, "width": 32} and processor.resample == "bicubic"
    assert processor.image_mean == pytest.approx(IMAGENET_MEAN) and processor.image_std == pytest.approx([0.2] * 3)
    assert processor.source.startswith("pretrained-org/tiny-vit")
    assert model.config.base_model == "pretrained-org/tiny-vit"
    assert model.config.training["init_from"] == "pretrained-org/tiny-vit"

    # The saved BT² model keeps the pretrained preprocessing.
    model.save_pretrained(tmp_path / "bt2")
    saved = json.loads((tmp_path / "bt2" / "preprocessor_config.json").read_text())
    assert saved["resample"] == "bicubic" and saved["image_mean"] == pytest.approx(IMAGENET_MEAN)

    # Offline from the cache: the same backbone again.
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = BT2Model.from_pretrained_backbone("pretrained-org/tiny-vit", "hf_vision", cache_dir=hub.cache_dir,
                                                **BT2_HEAD)  # fmt: skip
    assert torch.equal(offline.backbone.model.embeddings.patch_embeddings.projection.weight,
                       vit.embeddings.patch_embeddings.projection.weight)  # fmt: skip
    assert offline.processor.to_dict() == processor.to_dict()
    with pytest.raises(OSError):
        BT2Model.from_pretrained_backbone("pretrained-org/never-downloaded", "hf_vision", cache_dir=hub.cache_dir,
                                          **BT2_HEAD)  # fmt: skip


def test_open_clip_backbone_by_hf_hub_id_uses_its_preprocess_config(hub, tmp_path):
    model_cfg = TINY_BACKBONES["open_clip_vision"][1]["model_cfg"]
    torch.manual_seed(4)
    clip = open_clip.CLIP(**model_cfg)
    folder = tmp_path / "clip"
    folder.mkdir()
    preprocess_cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
                      "resize_mode": "shortest"}  # fmt: skip
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    )
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    _upload(hub, "pretrained-org/tiny-clip", folder)

    model = BT2Model.from_pretrained_backbone("hf-hub:pretrained-org/tiny-clip", "open_clip_vision",
                                              cache_dir=hub.cache_dir, **BT2_HEAD)  # fmt: skip
    for name, tensor in clip.visual.state_dict().items():
        assert torch.equal(model.backbone.visual.state_dict()[name], tensor), name
    processor = model.processor
    assert processor.size == {"shortest_edge": 32} and processor.crop_size == {"height": 32, "width": 32}
    assert processor.do_center_crop and processor.resample == "bicubic"
    assert processor.image_mean == pytest.approx([0.5, 0.4, 0.3])
    assert model.config.base_model == "pretrained-org/tiny-clip"
    # A wide photo is resized on its short side and centre-cropped (not squashed): only the middle survives.
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 32:64] = 255
    pixels = processor(wide, input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(pixels[0, 0], torch.full((32, 32), (1.0 - 0.5) / 0.25), atol=1e-5, rtol=0)
