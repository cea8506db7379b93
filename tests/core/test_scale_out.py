"""Scale-out hooks: FSDP's unsplittable layers come from the backbone, gradient checkpointing, full-state saves."""

from __future__ import annotations

import pytest
import torch

from bt2_hf import BT2Config, BT2Model, fingerprint_state_dict
from tests.conftest import TINY_BACKBONES, tiny_inputs

EXPECTED_NO_SPLIT = {
    "vit": {"ViTEmbeddings", "ViTLayer"},
    "bert": {"BertEmbeddings", "BertLayer"},
    "open_clip_vision": {"ResidualAttentionBlock"},
    "small_cnn": set(),
}


def build(name: str, seed: int = 0) -> BT2Model:
    torch.manual_seed(seed)
    backbone_type, backbone_config, _ = TINY_BACKBONES[name]
    config = BT2Config(backbone_type=backbone_type, backbone_config=backbone_config, head_type="basis_transformation",
                       feature_dim=16, old_embedding_dim=8, extra_dim=4, num_classes=3)  # fmt: skip
    return BT2Model(config)


@pytest.mark.parametrize("name", list(EXPECTED_NO_SPLIT))
def test_no_split_modules_come_from_the_backbone(name):
    assert set(build(name)._no_split_modules) == EXPECTED_NO_SPLIT[name]


def _gradients(model: BT2Model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model(**inputs, labels=torch.tensor([0, 1, 2]))
    (out.loss + out.embeddings.pow(3).sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["vit", "bert", "open_clip_vision"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model = build(name).train()
    for module in model.modules():  # dropout draws other masks when recomputing: compare without it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_probs_dropout_prob", "hidden_dropout_prob", "attention_dropout"):
        if hasattr(getattr(model.backbone, "model", None), "config") and hasattr(model.backbone.model.config, key):
            setattr(model.backbone.model.config, key, 0.0)
    inputs = tiny_inputs(name)
    plain = _gradients(model, inputs)
    model.gradient_checkpointing_enable()
    if name != "open_clip_vision":
        assert model.is_gradient_checkpointing
    checkpointed = _gradients(model, inputs)
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


def test_gradient_checkpointing_on_a_backbone_without_layers_explains():
    with pytest.raises(ValueError, match="no layers to checkpoint"):
        build("small_cnn").gradient_checkpointing_enable()


def test_save_fingerprints_the_state_dict_it_writes(tmp_path):
    model = build("vit").eval()
    full = {k: v.clone() for k, v in model.state_dict().items()}  # what accelerator.get_state_dict returns
    model.save_pretrained(tmp_path, state_dict=full)
    # The fingerprint is that of the tensors as written (transformers' serialised names) and the processor.
    from bt2_hf.fingerprint import combine_fingerprint, fingerprint_safetensors_files

    written = fingerprint_safetensors_files([tmp_path / "model.safetensors"])
    assert model.config.fingerprint == combine_fingerprint(written, model.processor)
    assert fingerprint_state_dict(full) != written  # ViT tensors are renamed on save: the files are the reference
    reloaded = BT2Model.from_pretrained(tmp_path)  # fingerprint verified against the stored weights
    assert reloaded.verified_fingerprint() == model.config.fingerprint
    torch.testing.assert_close(reloaded(**tiny_inputs("vit")).embeddings, model(**tiny_inputs("vit")).embeddings)
