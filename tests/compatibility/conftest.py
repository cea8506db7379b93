"""Fixtures of the compatibility tests: a Fashion-MNIST-shaped IDX data set and tiny models trained by the real
trainer (an old model, and a BCT model trained against it but never verified)."""

from __future__ import annotations

import pytest

from bt2_hf.data import load_fashion_mnist
from bt2_hf.training import BT2TrainingArguments, DataArguments, ModelArguments, train
from tests.conftest import write_fashion_like_idx

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}


def quick_args(output_dir, method: str) -> BT2TrainingArguments:
    return BT2TrainingArguments(
        output_dir=str(output_dir), method=method, per_device_train_batch_size=32, max_steps=12, logging_steps=4,
        disable_tqdm=True, learning_rate=1e-2, data_on_device=True,
    )  # fmt: skip


@pytest.fixture(scope="session")
def bands_dir(tmp_path_factory):
    """10 classes of 28×28 images (a bright band per class); test split: 12 images a class."""
    return write_fashion_like_idx(tmp_path_factory.mktemp("bands"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, bands_dir):
    """``{"old": dir, "bct": dir}``: a 16-d old model and a BCT model trained against it (not verified)."""
    root = tmp_path_factory.mktemp("trained")
    data = load_fashion_mnist(bands_dir, "train")
    old = train(ModelArguments(backbone_config=CNN, embedding_dim=16, logit_scale=16.0), DataArguments(),
                quick_args(root / "old", "independent"), train_data=data)  # fmt: skip
    bct = train(ModelArguments(backbone_config=CNN, embedding_dim=16, logit_scale=16.0, old_model=str(old)), DataArguments(),
                quick_args(root / "bct", "bct"), train_data=data)  # fmt: skip
    return {"old": str(old), "bct": str(bct)}
