"""`bt2 eval --models`: checkpoints embed a dataset split themselves, then the pair is evaluated."""

from __future__ import annotations

import json

import numpy as np
import torch

from bt2_hf import BT2Config, BT2Model
from bt2_hf.cli import eval as eval_cli
from bt2_hf.data import load_fashion_mnist
from bt2_hf.retrieval import RetrievalEvaluator
from tests.conftest import write_fashion_like_idx

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}


def test_eval_models_embeds_the_split_and_matches_the_evaluator(tmp_path):
    data_dir = write_fashion_like_idx(tmp_path / "fashion", train_per_class=2, test_per_class=6)
    torch.manual_seed(0)
    old = BT2Model(BT2Config(backbone_config=CNN, embedding_dim=16))
    new = BT2Model(
        BT2Config(
            backbone_config=CNN, head_type="basis_transformation", feature_dim=16, old_embedding_dim=16, extra_dim=4
        )
    )
    old.save_pretrained(tmp_path / "old")
    new.save_pretrained(tmp_path / "new")

    status = eval_cli.main(
        [
            "--models", str(tmp_path / "old"), str(tmp_path / "new"),
            "--names", "old", "new",
            "--dataset", str(data_dir),
            "--split", "test",
            "--metrics", "top1,map",
            "--output-dir", str(tmp_path / "eval"),
            "--no-plots",
        ]
    )  # fmt: skip
    assert status == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())["pair"]

    # The same numbers from embeddings computed here with each model's own preprocessing.
    test = load_fashion_mnist(data_dir, "test")
    labels = test.labels.numpy()
    old_embeddings = old.encode(images=test.images).numpy()
    new_embeddings = new.encode(images=test.images).numpy()
    evaluator = RetrievalEvaluator(metrics=("top1", "map"))
    expected = {
        "old/old": evaluator.evaluate(old_embeddings, old_embeddings, labels, labels, same_items=True),
        "new/old": evaluator.evaluate(new_embeddings, old_embeddings, labels, labels, same_items=True),
        "new/new": evaluator.evaluate(new_embeddings, new_embeddings, labels, labels, same_items=True),
    }
    for pair, result in expected.items():
        for metric in ("top1", "map"):
            assert np.isclose(report["results"][pair][metric], result.metrics[metric], atol=1e-6), (pair, metric)
