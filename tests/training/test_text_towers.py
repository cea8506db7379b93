"""Text towers through the one trainer: the contrastive term, `bt2 train` on image–text data (1 vs 2 processes), resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import CNN, quick_args, synthetic_data

from bt2_hf import BT2Model
from bt2_hf.data import ImageClassificationData
from bt2_hf.data.image_text import ImageTextData, from_hf_image_text
from bt2_hf.losses import contrastive_loss
from bt2_hf.training import DataArguments, ModelArguments, train

HERE = Path(__file__).parent
REPO = HERE.parent.parent
# A 1-layer open_clip text tower built from its config; open_clip's own tokenizer needs the full vocabulary.
OPEN_CLIP_TEXT = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
}
WORDS = ["top", "middle", "lower", "bottom"]
SIZES = ["small", "large", "bright"]


def captions_for(labels: torch.Tensor) -> list[str]:
    """A caption per image: its class's band position, plus a per-row word (instance-ish detail)."""
    return [f"a {SIZES[i % 3]} band at the {WORDS[int(label)]}" for i, label in enumerate(labels)]


def image_text_data(n: int = 48, labelled: bool = True) -> ImageTextData:
    images, labels = synthetic_data(n=n)
    return ImageTextData(
        images=ImageClassificationData(labels=labels, images=images), texts=captions_for(labels), has_labels=labelled
    )


def write_image_text_dataset(path: Path, n: int = 48) -> Path:
    """A `datasets` folder (save_to_disk) with image, caption and label columns."""
    import datasets
    from PIL import Image

    images, labels = synthetic_data(n=n)
    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string"),
         "label": datasets.ClassLabel(names=WORDS)}
    )  # fmt: skip
    rows = {
        "image": [Image.fromarray(image[0].numpy()) for image in images],
        "caption": captions_for(labels),
        "label": labels.tolist(),
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A 16-d old image model, a 24-d new image model, and an independent text tower aligned with the new one."""
    root = tmp_path_factory.mktemp("towers")
    data = synthetic_data()
    old = train(ModelArguments(backbone_config=CNN, embedding_dim=16), DataArguments(),
                quick_args(root / "old", "independent"), train_data=data)  # fmt: skip
    new = train(ModelArguments(backbone_config=CNN, embedding_dim=24), DataArguments(),
                quick_args(root / "new", "independent"), train_data=data)  # fmt: skip
    independent = train(
        ModelArguments(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, image_model=str(new)),
        DataArguments(), quick_args(root / "text_independent", "independent_text"), train_data=image_text_data(),
    )  # fmt: skip
    return {"old": str(old), "new": str(new), "independent": str(independent)}


def test_contrastive_term_on_a_hand_made_batch():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    keys = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    r = 1 / math.sqrt(2)
    # cosines s_ij (rows: queries, columns: keys): [[1, r, 0], [0, r, 1], [r, 1, r]]
    query_to_key = (
        -math.log(math.e / (math.e + math.exp(r) + 1))
        - math.log(math.exp(r) / (1 + math.exp(r) + math.e))
        - math.log(math.exp(r) / (2 * math.exp(r) + math.e))
    ) / 3
    key_to_query = (  # columns of s: [1, 0, r], [r, r, 1], [0, 1, r]
        -math.log(math.e / (math.e + 1 + math.exp(r)))
        - math.log(math.exp(r) / (2 * math.exp(r) + math.e))
        - math.log(math.exp(r) / (1 + math.e + math.exp(r)))
    ) / 3
    assert contrastive_loss(queries, keys, temperature=1.0, symmetric=False).item() == pytest.approx(query_to_key)
    assert contrastive_loss(queries, keys, temperature=1.0).item() == pytest.approx((query_to_key + key_to_query) / 2)
    # the temperature divides the cosines (1 and 0 here): at 0.5 the logits are 2 and 0; norms do not matter
    pairs = 5 * torch.eye(2)
    assert contrastive_loss(pairs, pairs, temperature=0.5).item() == pytest.approx(
        -math.log(math.e**2 / (math.e**2 + 1))
    )
    with pytest.raises(ValueError, match="one shape"):
        contrastive_loss(queries, keys[:2])


def test_every_text_method_trains_and_records_what_it_trained_against(tmp_path, towers):
    common = dict(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT)
    bct = train(ModelArguments(**common, old_model=towers["old"]), DataArguments(),
                quick_args(tmp_path / "bct", "bct_text"), train_data=image_text_data())  # fmt: skip
    bt2 = train(ModelArguments(**common, old_model=towers["old"], independent_model=towers["independent"]),
                DataArguments(), quick_args(tmp_path / "bt2", "bt2_text", max_steps=2), {"extra_dim": 4},
                train_data=image_text_data())  # fmt: skip
    for path, terms in (
        (bct, {"old_match_loss", "contrastive_loss", "classification_loss", "influence_loss"}),
        (bt2, {"old_match_loss", "new_match_loss", "contrastive_loss", "classification_loss", "influence_loss"}),
    ):
        log = json.loads((path / "training_log.json").read_text())
        assert terms <= set(log[-1]), path
        model = BT2Model.from_pretrained(path)
        assert model.modality == "text" and model.config.compatible_dim == 16
        assert model.config.training["trained_against"]["prefix_dim"] == 16
        assert model.config.training["trained_against"]["name_or_path"] == towers["old"]
        assert model.encode(texts=["a small band at the top"]).shape[1] == model.config.embedding_dim
    assert BT2Model.from_pretrained(bt2).config.embedding_dim == 24 + 4  # independent text width + extra_dim
    independent = BT2Model.from_pretrained(towers["independent"])
    assert independent.config.training["method"] == "independent_text"
    assert independent.config.training["trained_against"] is None  # aligned with a new image model, not tied


def test_unlabelled_captions_and_precomputed_old_targets(tmp_path, towers):
    """No labels: no classifier, no influence; the old targets come from a column, so no image is needed."""
    data = image_text_data(labelled=False)
    old = BT2Model.from_pretrained(towers["old"])
    columns = ImageTextData(images=data.images, texts=data.texts, old_targets=old.encode(images=data.images.images),
                            has_images=False)  # fmt: skip
    path = train(ModelArguments(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT,
                                old_model=towers["old"]), DataArguments(),
                 quick_args(tmp_path / "bct", "bct_text"), train_data=columns)  # fmt: skip
    log = json.loads((path / "training_log.json").read_text())
    assert set(log[-1]) >= {"old_match_loss", "contrastive_loss"}
    assert "classification_loss" not in log[-1] and "influence_loss" not in log[-1]
    assert BT2Model.from_pretrained(path).config.num_classes == 0
    with pytest.raises(ValueError, match="image–text data"):  # the default data set has no captions
        train(ModelArguments(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"]),
              DataArguments(), quick_args(tmp_path / "x", "bct_text"))  # fmt: skip
    with pytest.raises(ValueError, match="encodes image"):  # a text method needs a text backbone
        train(ModelArguments(backbone_config=CNN, old_model=towers["old"]), DataArguments(),
              quick_args(tmp_path / "y", "bct_text"), train_data=data)  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_image_text_dataset_columns(tmp_path):
    import datasets

    path = write_image_text_dataset(tmp_path / "pairs", n=8)
    data = from_hf_image_text(datasets.load_from_disk(str(path)), num_channels=1)
    assert len(data) == 8 and data.has_labels and data.num_classes == 4
    assert data.images.images.shape == (8, 1, 28, 28)
    multi = datasets.Dataset.from_dict({"captions": [["a", "b"], ["c"]], "emb": [[1.0, 0.0], [0.0, 1.0]]})
    flat = from_hf_image_text(multi, old_target_column="emb")  # no image column: the column stands in for it
    assert flat.texts == ["a", "b", "c"] and flat.old_targets.tolist() == [[1, 0], [1, 0], [0, 1]]
    with pytest.raises(ValueError, match="caption column"):
        from_hf_image_text(datasets.Dataset.from_dict({"x": [1]}))


def _cli_args(dataset: Path, output: Path, towers, batch_size: int) -> list[str]:
    return [
        "--method", "bt2_text", "--backbone_type", "open_clip_text", "--backbone_config", json.dumps(OPEN_CLIP_TEXT),
        "--old_model", towers["old"], "--independent_model", towers["independent"], "--extra_dim", "4",
        "--dataset", str(dataset), "--num_channels", "1", "--output_dir", str(output), "--max_steps", "4",
        "--per_device_train_batch_size", str(batch_size), "--learning_rate", "1e-3", "--logging_steps", "1",
        "--disable_tqdm", "true", "--seed", "3",
    ]  # fmt: skip


@pytest.mark.multiprocess
def test_text_tower_through_bt2_train_two_processes_equal_one(tmp_path, towers):
    from training_helpers import run_two_processes

    from bt2_hf.cli.train import main

    dataset = write_image_text_dataset(tmp_path / "pairs")
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(_cli_args(dataset, single, towers, 8)) == 0
    run_two_processes(["-m", "bt2_hf.cli.train", *_cli_args(dataset, double, towers, 4)])

    log_single = json.loads((single / "training_log.json").read_text())
    log_double = json.loads((double / "training_log.json").read_text())
    assert [e["step"] for e in log_double] == [1, 2, 3, 4]
    for a, b in zip(log_single, log_double):
        for key in ("loss", "old_match_loss", "new_match_loss", "contrastive_loss", "influence_loss"):
            assert a[key] == pytest.approx(b[key], abs=2e-4), (a["step"], key)
    weights_single = load_file(str(single / "model.safetensors"))
    weights_double = load_file(str(double / "model.safetensors"))
    for key in weights_single:
        a, b = weights_single[key], weights_double[key]
        if key.endswith("attn.in_proj_bias"):
            # [query; key; value] biases. Softmax over keys ignores a shift shared by every key, so the key bias's
            # true gradient is exactly zero; Adam rescales the rounding noise it gets, which differs between 1 and 2
            # processes (the same exclusion as the image-tower test).
            width = a.shape[0] // 3
            a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=key)
    config = json.loads((double / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["method"] == "bt2_text"
    assert (double / "README.md").is_file()  # the card, as for image towers


def test_text_tower_stop_and_resume_equals_one_run(tmp_path, towers):
    model_args = dict(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"],
                      independent_model=towers["independent"])  # fmt: skip
    common = dict(max_steps=5, save_steps=2, per_device_train_batch_size=8, learning_rate=1e-3)
    whole = train(ModelArguments(**model_args), DataArguments(), quick_args(tmp_path / "whole", "bt2_text", **common),
                  {"extra_dim": 4}, train_data=image_text_data())  # fmt: skip
    interrupted = tmp_path / "interrupted"
    train(ModelArguments(**model_args), DataArguments(),
          quick_args(interrupted, "bt2_text", stop_after_steps=3, **common), {"extra_dim": 4},
          train_data=image_text_data())  # fmt: skip
    assert not (interrupted / "model.safetensors").exists()
    train(ModelArguments(**model_args), DataArguments(),
          quick_args(interrupted, "bt2_text", resume_from_checkpoint="latest", **common), {"extra_dim": 4},
          train_data=image_text_data())  # fmt: skip
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_image_text_pair_writes_two_loadable_towers_tied_to_the_old_model(tmp_path, towers):
    """`bt2 train --method clip` (the independent pair), then `--method bt2_pair` against it and the old model."""
    from bt2_hf.cli.train import main
    from bt2_hf.training.towers import BT2PairModel

    dataset = write_image_text_dataset(tmp_path / "pairs")
    pair_model = [
        "--backbone_type", "small_cnn", "--backbone_config", json.dumps(CNN), "--text_backbone_type",
        "open_clip_text", "--text_backbone_config", json.dumps(OPEN_CLIP_TEXT), "--dataset", str(dataset),
        "--num_channels", "1", "--max_steps", "3", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    clip, bt2 = tmp_path / "clip", tmp_path / "bt2"
    assert main(["--method", "clip", "--embedding_dim", "24", "--output_dir", str(clip), *pair_model]) == 0
    assert main(["--method", "bt2_pair", "--old_model", towers["old"], "--independent_model", str(clip),
                 "--extra_dim", "4", "--output_dir", str(bt2), *pair_model]) == 0  # fmt: skip
    assert json.loads((bt2 / "pair.json").read_text())["towers"] == {"image": "image_tower", "text": "text_tower"}
    with pytest.raises(ValueError, match="holds none"):  # a pair's independent reference is a saved pair
        train(ModelArguments(backbone_config=CNN, text_backbone_type="open_clip_text",
                             text_backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"],
                             independent_model=towers["independent"]),
              DataArguments(), quick_args(tmp_path / "refused", "bt2_pair"), train_data=image_text_data())  # fmt: skip
    assert not (tmp_path / "refused").exists()
    log = json.loads((bt2 / "training_log.json").read_text())
    assert {"contrastive_loss", "text_old_contrastive_loss", "image_old_match_loss", "text_old_match_loss",
            "image_new_match_loss", "text_new_match_loss", "image_influence_loss", "text_influence_loss",
            "image_classification_loss", "text_classification_loss"} <= set(log[-1])  # fmt: skip
    old_fingerprint = BT2Model.from_pretrained(towers["old"]).config.fingerprint
    loaded = {}
    for tower, folder in (("image", "image_tower"), ("text", "text_tower")):
        model = loaded[tower] = BT2Model.from_pretrained(bt2 / folder)
        assert model.modality == tower and (bt2 / folder / "README.md").is_file()
        assert model.config.embedding_dim == 24 + 4 and model.config.compatible_dim == 16
        against = model.config.training["trained_against"]
        assert against["name_or_path"] == towers["old"] and against["prefix_dim"] == 16
        assert against["fingerprint"] == old_fingerprint
        assert model.config.training["method"] == "bt2_pair" and model.config.compatible_with == []
        assert BT2Model.from_pretrained(clip / folder).config.training["trained_against"] is None
    assert loaded["image"].config.training["pair"] == {"tower": "image", "partner": "text_tower"}
    texts = loaded["text"].encode(texts=["a small band at the top", "a large band at the bottom"])
    images = loaded["image"].encode(images=synthetic_data(n=4)[0])
    assert texts.shape == (2, 28) and images.shape == (4, 28)  # one space: a caption searches the images directly
    pair = BT2PairModel.from_pretrained(bt2)
    torch.testing.assert_close(pair.text.encode(texts=["a small band at the top"]), texts[:1])


@pytest.mark.multiprocess
def test_clip_pair_two_processes_equal_one(tmp_path):
    """Both towers learn through the contrastive term: gathered with gradients, 2 × 4 rows train as 1 × 8."""
    import datasets
    from PIL import Image
    from test_distributed import VIT
    from training_helpers import run_two_processes

    from bt2_hf.cli.train import main

    images, labels = synthetic_data(n=32, channels=3, size=32)
    rows = {"image": [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images],
            "caption": captions_for(labels)}  # fmt: skip
    dataset = tmp_path / "pairs"
    datasets.Dataset.from_dict(rows).save_to_disk(str(dataset))

    def args(output: Path, batch_size: int) -> list[str]:
        return [
            "--method", "clip", "--backbone_type", "hf_vision", "--backbone_config", json.dumps(VIT),
            "--text_backbone_type", "open_clip_text", "--text_backbone_config", json.dumps(OPEN_CLIP_TEXT),
            "--embedding_dim", "16", "--dataset", str(dataset), "--output_dir", str(output), "--max_steps", "3",
            "--per_device_train_batch_size", str(batch_size), "--learning_rate", "1e-3", "--logging_steps", "1",
            "--disable_tqdm", "true",
        ]  # fmt: skip

    single, double = tmp_path / "single", tmp_path / "double"
    assert main(args(single, 8)) == 0
    run_two_processes(["-m", "bt2_hf.cli.train", *args(double, 4)])
    log_single = json.loads((single / "training_log.json").read_text())
    log_double = json.loads((double / "training_log.json").read_text())
    for a, b in zip(log_single, log_double, strict=True):
        assert a["contrastive_loss"] == pytest.approx(b["contrastive_loss"], abs=2e-4), a["step"]
    for folder in ("image_tower", "text_tower"):
        weights_single = load_file(str(single / folder / "model.safetensors"))
        weights_double = load_file(str(double / folder / "model.safetensors"))
        for key in weights_single:
            a, b = weights_single[key], weights_double[key]
            if key.endswith("attention.key.bias"):
                continue  # a zero true gradient (softmax shift), see test_distributed
            if key.endswith("attn.in_proj_bias"):  # [query; key; value]: drop the key bias, same reason
                width = a.shape[0] // 3
                a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"{folder}/{key}")


def test_precomputed_caption_targets_equal_online_ones_and_heads_get_their_own_rate(tmp_path, towers):
    """The independent text tower embeds captions (no augmentation): precomputed once or online, the same targets."""
    model_args = dict(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"],
                      independent_model=towers["independent"])  # fmt: skip
    logs = {}
    for mode, head_rate in (("online", 1e-2), ("precomputed", 1e-2), ("unchanged", 0.0)):
        path = train(ModelArguments(**model_args), DataArguments(),
                     quick_args(tmp_path / mode, "bt2_text", max_steps=1, reference_targets=mode.replace(
                         "unchanged", "online"), head_learning_rate=head_rate, learning_rate=0.0),
                     {"extra_dim": 4}, train_data=image_text_data())  # fmt: skip
        logs[mode] = json.loads((path / "training_log.json").read_text())[0]
    assert logs["online"]["new_match_loss"] == pytest.approx(logs["precomputed"]["new_match_loss"], abs=1e-6)
    # learning_rate 0 (the backbone) and head_learning_rate 1e-2: after one step only the head has moved
    initial = load_file(str(tmp_path / "unchanged" / "model.safetensors"))
    trained = load_file(str(tmp_path / "online" / "model.safetensors"))
    moved = {key for key in initial if not torch.equal(initial[key], trained[key])}
    assert moved and all(key.startswith("head.") for key in moved)
    assert "head.projection.weight" in moved
    config = json.loads((tmp_path / "online" / "config.json").read_text())
    assert config["training"]["head_learning_rate"] == 1e-2 and config["training"]["learning_rate"] == 0.0


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def test_bt2_text_loss_terms_against_an_independent_computation(tmp_path, towers):
    """One step at learning rate 0 on one batch of every (un-augmented) row: the logged terms are those of the saved
    weights, recomputed here in float64 from the three models' own outputs."""
    data = image_text_data(n=16)
    path = train(
        ModelArguments(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"],
                       independent_model=towers["independent"]),
        DataArguments(augment_padding=0, horizontal_flip=False),
        quick_args(tmp_path / "bt2", "bt2_text", max_steps=1, learning_rate=0.0, per_device_train_batch_size=16,
                   prototype_augmentation=False),
        {"extra_dim": 4}, train_data=data,
    )  # fmt: skip
    (entry,) = json.loads((path / "training_log.json").read_text())
    images, labels = data.images.images, data.images.labels.numpy()
    old_model = BT2Model.from_pretrained(towers["old"]).eval()
    mean = torch.tensor(old_model.processor.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(old_model.processor.image_std).view(1, -1, 1, 1)
    with torch.no_grad():
        old = old_model(pixel_values=(images.float() / 255.0 - mean) / std).embeddings.double().numpy()
        independent = BT2Model.from_pretrained(towers["independent"]).eval()
        target = independent(**independent.processor(data.texts)).embeddings.double().numpy()
        tower = BT2Model.from_pretrained(path).eval()
        out = tower(**tower.processor(data.texts))
    b, f, logits = (getattr(out, k).double().numpy() for k in ("compatible_embeddings", "features", "logits"))
    prototypes = np.stack([old[labels == c].mean(axis=0) for c in range(4)])  # W_o, not re-normalised
    similarity = _unit(b) @ _unit(old).T / 0.05
    own = np.arange(len(labels))
    expected = {
        "classification_loss": _cross_entropy(logits, labels),
        "influence_loss": 10.0 * _cross_entropy(b @ prototypes.T, labels),
        "old_match_loss": 5.0 * (1.0 - (_unit(b) * _unit(old)).sum(axis=1).mean()),
        "new_match_loss": 1.0 * (1.0 - (_unit(f) * _unit(target)).sum(axis=1).mean()),
        "contrastive_loss": 0.5 * (_cross_entropy(similarity, own) + _cross_entropy(similarity.T, own)),
    }
    for key, value in expected.items():
        assert entry[key] == pytest.approx(value, abs=2e-4), key
    assert entry["loss"] == pytest.approx(sum(expected.values()), abs=1e-3)


def test_lazily_decoded_images_train_as_in_memory_ones(tmp_path, towers):
    """in_memory=False decodes the paired images per batch (large sets): the same rows, the same weights."""
    import datasets

    dataset = datasets.load_from_disk(str(write_image_text_dataset(tmp_path / "pairs", n=16)))
    weights = {}
    for in_memory in (True, False):
        data = from_hf_image_text(dataset, num_channels=1, image_size=28, in_memory=in_memory)
        assert data.images.in_memory is in_memory
        path = train(ModelArguments(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT,
                                    old_model=towers["old"]), DataArguments(),
                     quick_args(tmp_path / str(in_memory), "bct_text", max_steps=2, per_device_train_batch_size=8,
                                num_workers=0), train_data=data)  # fmt: skip
        weights[in_memory] = load_file(str(path / "model.safetensors"))
    for key in weights[True]:
        torch.testing.assert_close(weights[True][key], weights[False][key], rtol=0, atol=1e-6, msg=key)


def test_bt2_train_reads_the_scenes_data_set(tmp_path, towers):
    """The procedural scenes (image + caption, no labels) train a text tower through `bt2 train` as they are."""
    from bt2_hf.cli.train import main
    from bt2_hf.experiments.scenes import generate_scenes

    generate_scenes(seed=0, preset="tiny", image_size=28, save_to=tmp_path / "scenes")
    output = tmp_path / "bct_text"
    assert main([
        "--method", "bct_text", "--backbone_type", "open_clip_text", "--backbone_config", json.dumps(OPEN_CLIP_TEXT),
        "--old_model", towers["old"], "--dataset", str(tmp_path / "scenes"), "--num_channels", "1",
        "--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "8", "--disable_tqdm", "true",
    ]) == 0  # fmt: skip
    model = BT2Model.from_pretrained(output)
    assert model.config.num_classes == 0 and model.config.training["num_train_samples"] == 48
    assert set(json.loads((output / "training_log.json").read_text())[-1]) >= {"old_match_loss", "contrastive_loss"}


@pytest.mark.parametrize("method", ["bct_text", "clip"])
def test_stored_frozen_text_features_train_as_running_the_backbone_every_step(tmp_path, towers, method):
    """A frozen text backbone's outputs, computed once per caption, give the run it gives when it runs every batch."""
    model_args = dict(text_backbone_type="open_clip_text", text_backbone_config=OPEN_CLIP_TEXT,
                      freeze_text_backbone=True)  # fmt: skip
    if method == "clip":
        model_args.update(backbone_config=CNN, embedding_dim=16)
    else:
        model_args.update(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"])
    states = {}
    for cached in (True, False):
        path = train(ModelArguments(**model_args, cache_frozen_text_features=cached), DataArguments(),
                     quick_args(tmp_path / str(cached), method, max_steps=3), train_data=image_text_data())  # fmt: skip
        weights = path / ("text_tower" if method == "clip" else "") / "model.safetensors"
        states[cached] = load_file(str(weights))
    assert set(states[True]) == set(states[False])
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, atol=2e-5, rtol=1e-4, msg=key)


def test_frozen_text_features_are_computed_once_per_encoder_and_caption_set(tmp_path, towers):
    from bt2_hf.training.feature_cache import FROZEN_FEATURES

    def text_entries():
        return [key for key in FROZEN_FEATURES.keys() if key[0] == "text_features"]

    FROZEN_FEATURES.clear()
    model_args = dict(backbone_type="open_clip_text", backbone_config=OPEN_CLIP_TEXT, old_model=towers["old"],
                      freeze_backbone=True)  # fmt: skip
    for run in ("first", "second"):  # the same encoder (built from one seed) and captions: one entry, reused
        train(ModelArguments(**model_args), DataArguments(), quick_args(tmp_path / run, "bct_text", max_steps=1),
              train_data=image_text_data())  # fmt: skip
    assert len(text_entries()) == 1
    other_captions = image_text_data()
    other_captions.texts = [f"{text} again" for text in other_captions.texts]
    train(ModelArguments(**model_args), DataArguments(), quick_args(tmp_path / "third", "bct_text", max_steps=1),
          train_data=other_captions)  # fmt: skip
    assert len(text_entries()) == 2
