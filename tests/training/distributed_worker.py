"""Run by ``torchrun`` from test_distributed.py: trains BT² with a tiny ViT on synthetic data in every process."""

from __future__ import annotations

import json
import sys

from training_helpers import quick_args, synthetic_data

from bt2_hf.training import DataArguments, ModelArguments, train

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    train(
        ModelArguments(**spec["model"]),
        DataArguments(),
        quick_args(spec["output_dir"], spec["method"], **spec["training"]),
        spec.get("method_config"),
        train_data=synthetic_data(channels=3, size=32),
    )
