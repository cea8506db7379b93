"""``bt2 train``: YAML recipe + command-line overrides, parsed into the dataclasses, then trained."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import synthetic_data

from bt2_hf.cli.train import main, parse_args


def _recipe(tmp_path, method: str = "bt2", **extra) -> str:
    lines = [
        "# Model",
        "backbone_type: small_cnn",
        "backbone_config: {num_channels: 1, widths: [8, 16], image_size: 28}",
        "embedding_dim: 16",
        "# Method",
        f"method: {method}",
    ]
    lines += ["old_match_weight: 3.0"] if method == "bt2" else []
    lines += [
        "# Data",
        f"dataset: {tmp_path / 'imagefolder'}",
        "class_subset: [0, 1]",
        "# Training",
        f"output_dir: {tmp_path / 'out'}",
        "max_steps: 2",
    ] + [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_yaml_and_overrides_fill_the_dataclasses(tmp_path):
    model_args, data_args, training_args, method_config = parse_args(
        ["--config", _recipe(tmp_path), "--old_match_weight", "7", "--max_steps", "5"]
    )
    assert model_args.backbone_config == {"num_channels": 1, "widths": [8, 16], "image_size": 28}
    assert data_args.class_subset == "0,1"
    assert training_args.method == "bt2" and training_args.max_steps == 5
    assert method_config.old_match_weight == 7.0 and method_config.influence_weight == 10.0


def test_unknown_yaml_key_is_refused(tmp_path, capsys):
    assert main(["--config", _recipe(tmp_path, lambda_1=1)]) == 2
    assert "Unknown option(s) ['lambda_1']" in capsys.readouterr().err


def test_cli_trains_from_an_imagefolder(tmp_path):
    pytest.importorskip("datasets")
    from PIL import Image

    images, labels = synthetic_data(n=32)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "imagefolder" / f"class_{label.item()}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    status = main(["--config", _recipe(tmp_path, method="independent"), "--per_device_train_batch_size", "8",
                   "--num_channels", "1", "--disable_tqdm", "true", "--logging_steps", "1"])  # fmt: skip
    assert status == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["training"]["method"] == "independent" and config["training"]["class_subset"] == [0, 1]
    assert config["training"]["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert (
        torch.tensor([e["loss"] for e in json.loads((tmp_path / "out" / "training_log.json").read_text())])
        .isfinite()
        .all()
    )
