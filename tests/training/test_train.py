"""Every method trains through the one accelerate loop; references stay frozen; bad inputs fail cleanly; resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import CNN, quick_args

from bt2_hf import BT2Model
from bt2_hf.training import DataArguments, EmptyClassError, ModelArguments, train

EXPECTED_TERMS = {
    "independent": {"classification_loss"},
    "bct": {"classification_loss", "influence_loss"},
    "bt2": {"classification_loss", "influence_loss", "old_match_loss", "new_match_loss"},
}


def _state(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("method", ["independent", "bct", "bt2"])
def test_every_method_trains_and_keeps_references_frozen(tmp_path, data, references, method, monkeypatch):
    from bt2_hf.training import references as references_module

    loaded = {}
    original_load = references_module.FrozenReference.load.__func__

    def spy(cls, name, *args, **kwargs):
        ref = original_load(cls, name, *args, **kwargs)
        loaded[name] = (ref, {k: v.clone() for k, v in ref.model.state_dict().items()})
        return ref

    monkeypatch.setattr(references_module.FrozenReference, "load", classmethod(spy))
    # The same seed gives the same initial weights: an untrained twin (0 steps of learning rate) is the baseline.
    model_args = ModelArguments(
        backbone_config=CNN,
        old_model=references["old"] if method != "independent" else None,
        independent_model=references["independent"] if method == "bt2" else None,
    )
    method_config = {"extra_dim": 8} if method == "bt2" else None
    start = train(model_args, DataArguments(), quick_args(tmp_path / "start", method, learning_rate=0.0),
                  method_config, train_data=data)  # fmt: skip
    out = train(model_args, DataArguments(), quick_args(tmp_path / "out", method), method_config, train_data=data)

    before, after = _state(start), _state(out)
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert any("backbone" in k for k in changed) and any("head" in k for k in changed)

    assert set(loaded) == set({"independent": (), "bct": ("old",), "bt2": ("old", "independent")}[method])
    for name, (ref, snapshot) in loaded.items():
        assert not ref.model.training, f"{name} reference left eval mode"
        assert not any(p.requires_grad for p in ref.model.parameters())
        for key, value in ref.model.state_dict().items():
            assert torch.equal(value, snapshot[key]), f"{name} reference changed: {key}"

    history = json.loads((out / "training_log.json").read_text())
    assert [entry["step"] for entry in history] == [1, 2, 3]
    for entry in history:
        terms = {k for k in entry if k.endswith("_loss")}
        assert terms == EXPECTED_TERMS[method]
        assert all(torch.isfinite(torch.tensor(entry[k])) for k in terms | {"loss"})
    assert (out / "training_log.csv").read_text().startswith(("classification_loss", "epoch", "step", "learning"))

    model = BT2Model.from_pretrained(out)  # fingerprint verified
    training = model.config.training
    assert training["method"] == method and training["method_config"]
    assert (out / "preprocessor_config.json").is_file()
    assert model.config.compatible_with == []  # training never claims compatibility: `bt2 verify` measures it
    if method == "independent":
        assert training["trained_against"] is None
    else:
        old = BT2Model.from_pretrained(references["old"])
        assert training["trained_against"] == {
            "name_or_path": references["old"], "revision": None, "fingerprint": old.config.fingerprint,
            "prefix_dim": 16,
        }  # fmt: skip
        assert training["references"]["old"]["name_or_path"] == references["old"]
        assert model.config.compatible_dim == 16
    if method == "bt2":
        assert model.config.head_type == "basis_transformation"
        assert model.config.embedding_dim == 24 + 8 and model.config.feature_dim == 24


def test_old_model_records_its_class_subset(references):
    old = BT2Model.from_pretrained(references["old"])
    assert old.config.training["class_subset"] == [0, 1]
    assert old.config.num_classes == 4  # the label space is kept, as in the research code


def test_empty_class_in_prototypes_is_an_error_and_writes_nothing(tmp_path, data, references):
    out = tmp_path / "bct"
    with pytest.raises(EmptyClassError, match=r"Class 3 \(3\) has no training sample"):
        train(ModelArguments(backbone_config=CNN, old_model=references["old"]), DataArguments(class_subset="0-2"),
              quick_args(out, "bct"), train_data=data)  # fmt: skip
    assert not out.exists()


def test_old_checkpoint_of_the_wrong_width_is_an_error_and_writes_nothing(tmp_path, data, references):
    out = tmp_path / "bt2"
    with pytest.raises(ValueError, match="has 16-d embeddings, but old_embedding_dim=32"):
        train(
            ModelArguments(backbone_config=CNN, old_model=references["old"], old_embedding_dim=32,
                           independent_model=references["independent"]),
            DataArguments(), quick_args(out, "bt2"), {"extra_dim": 8}, train_data=data,
        )  # fmt: skip
    with pytest.raises(ValueError, match="at least as wide as the old model's"):
        train(ModelArguments(backbone_config=CNN, old_model=references["old"], embedding_dim=8), DataArguments(),
              quick_args(out, "bct"), train_data=data)  # fmt: skip
    assert not out.exists()


def test_missing_data_and_missing_references_are_clear_errors(tmp_path, data):
    out = tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        train(ModelArguments(backbone_config=CNN), DataArguments(data_dir=str(tmp_path / "nowhere")),
              quick_args(out, "independent"))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(ModelArguments(backbone_config=CNN), DataArguments(dataset=str(tmp_path / "missing")),
              quick_args(out, "independent"))  # fmt: skip
    with pytest.raises(ValueError, match="needs the frozen old and independent model"):
        train(ModelArguments(backbone_config=CNN), DataArguments(), quick_args(out, "bt2"), train_data=data)
    with pytest.raises(FileNotFoundError, match="not a saved bt2_hf model"):
        train(ModelArguments(backbone_config=CNN, old_model=str(tmp_path)), DataArguments(),
              quick_args(out, "bct"), train_data=data)  # fmt: skip
    assert not out.exists()


def test_non_empty_output_dir_is_refused(tmp_path, data):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        train(
            ModelArguments(backbone_config=CNN), DataArguments(), quick_args(tmp_path, "independent"), train_data=data
        )


def test_stop_then_resume_gives_the_same_weights_as_one_run(tmp_path, data, references):
    model_args = ModelArguments(
        backbone_config=CNN, old_model=references["old"], independent_model=references["independent"]
    )
    common = dict(max_steps=8, gradient_accumulation_steps=2, per_device_train_batch_size=8, lr_scheduler_type="cosine",
                  warmup_steps=2)  # fmt: skip
    # 96 samples / batch 8 / accumulation 2 = 6 steps per epoch: stopping at 3 is mid-epoch, 8 crosses an epoch.
    straight = train(model_args, DataArguments(), quick_args(tmp_path / "a", "bt2", **common), {"extra_dim": 8},
                     train_data=data)  # fmt: skip
    interrupted = tmp_path / "b"
    train(model_args, DataArguments(), quick_args(interrupted, "bt2", stop_after_steps=3, **common), {"extra_dim": 8},
          train_data=data)  # fmt: skip
    assert (interrupted / "checkpoints" / "checkpoint-3").is_dir()
    assert not (interrupted / "model.safetensors").exists()
    train(model_args, DataArguments(), quick_args(interrupted, "bt2", resume_from_checkpoint="latest", **common),
          {"extra_dim": 8}, train_data=data)  # fmt: skip
    a, b = _state(straight), _state(interrupted)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    log_a = json.loads((straight / "training_log.json").read_text())
    log_b = json.loads((interrupted / "training_log.json").read_text())
    assert [e["step"] for e in log_b] == list(range(1, 9))
    for x, y in zip(log_a, log_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
    assert not any(p.name.startswith(".tmp") for p in (interrupted / "checkpoints").iterdir())


def test_precomputed_targets_and_mixed_precision_run(tmp_path, data, references):
    out = train(
        ModelArguments(backbone_config=CNN, old_model=references["old"], independent_model=references["independent"]),
        DataArguments(),
        quick_args(tmp_path / "pre", "bt2", reference_targets="precomputed", mixed_precision="bf16", save_steps=2),
        {"extra_dim": 8},
        train_data=data,
    )
    history = json.loads((out / "training_log.json").read_text())
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-2"]


def _forward(path, images: torch.Tensor, *, train_mode: bool):
    """A saved model's outputs on uint8 images, preprocessed here from its processor's settings (float64 numpy)."""
    model = BT2Model.from_pretrained(path).train(train_mode)
    processor = model.processor
    assert tuple(processor.image_size) == tuple(images.shape[-2:])
    mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        out = model(pixel_values=(images.float() / 255.0 - mean) / std)
    return {k: getattr(out, k).double().numpy() for k in ("embeddings", "compatible_embeddings", "features", "logits")}


def _cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full(logits.shape, smoothing / logits.shape[1])
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    return float(-(target * log_p).sum(axis=1).mean())


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _one_full_batch_step(tmp_path, data, references, method, method_config, **overrides):
    """One optimizer step at learning rate 0 on one batch holding the whole (un-augmented) training set: the logged
    losses are those of the saved weights on exactly these images."""
    images, labels = data
    model_args = ModelArguments(
        backbone_config=CNN,
        old_model=references["old"] if method != "independent" else None,
        independent_model=references["independent"] if method == "bt2" else None,
    )
    out = train(
        model_args,
        DataArguments(augment_padding=0, horizontal_flip=False),
        quick_args(tmp_path / method, method, max_steps=1, learning_rate=0.0, weight_decay=0.0,
                   per_device_train_batch_size=len(labels), **overrides),
        method_config,
        train_data=data,
    )  # fmt: skip
    (entry,) = json.loads((out / "training_log.json").read_text())
    return out, entry


def _class_means(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """W_o: the mean of each class's embeddings (rows in class order), in float64."""
    return np.stack([embeddings[labels == c].mean(axis=0) for c in range(int(labels.max()) + 1)])


@pytest.mark.parametrize("reference_targets", ["online", "precomputed"])
def test_bt2_loss_terms_against_an_independent_computation(tmp_path, data, references, reference_targets):
    """Each logged term, recomputed in float64 from the saved weights, the frozen references' embeddings of the same
    images (the precomputed table must hold exactly those) and W_o as a NumPy class mean of the old embeddings."""
    images, labels = data
    weights = {"extra_dim": 8, "influence_weight": 3.0, "old_match_weight": 2.0, "new_match_weight": 0.5,
               "influence_scale": 4.0}  # fmt: skip
    out, entry = _one_full_batch_step(tmp_path, data, references, "bt2", weights, reference_targets=reference_targets)
    y = labels.numpy()
    old = _forward(references["old"], images, train_mode=False)["embeddings"]
    independent = _forward(references["independent"], images, train_mode=False)["embeddings"]
    new = _forward(out, images, train_mode=True)  # training mode: batch-norm statistics of this very batch
    prototypes = _class_means(old, y)
    b_hat, f_hat = new["compatible_embeddings"], new["features"]
    expected = {
        "classification_loss": _cross_entropy(new["logits"], y),
        "influence_loss": 3.0 * _cross_entropy(4.0 * b_hat @ prototypes.T, y),
        "old_match_loss": 2.0 * (1.0 - np.mean(np.sum(_unit(b_hat) * _unit(old), axis=1))),
        "new_match_loss": 0.5 * (1.0 - np.mean(np.sum(_unit(f_hat) * _unit(independent), axis=1))),
    }
    for key, value in expected.items():
        assert entry[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert entry["loss"] == pytest.approx(sum(expected.values()), rel=1e-4)


def test_bct_loss_terms_against_an_independent_computation(tmp_path, data, references):
    """BCT: label-smoothed cross-entropies; the influence logits use the un-renormalised 16-d prefix of a wider
    embedding against W_o (BCT's zero-padded prototypes)."""
    images, labels = data
    out, entry = _one_full_batch_step(
        tmp_path,
        data,
        references,
        "bct",
        {"influence_weight": 2.5, "label_smoothing": 0.2},
        reference_targets="online",
    )
    y = labels.numpy()
    prototypes = _class_means(_forward(references["old"], images, train_mode=False)["embeddings"], y)
    new = _forward(out, images, train_mode=True)
    assert new["embeddings"].shape[1] == 16  # BCT defaults to the old width
    expected_classification = _cross_entropy(new["logits"], y, 0.2)
    expected_influence = 2.5 * _cross_entropy(new["embeddings"][:, :16] @ prototypes.T, y, 0.2)
    assert entry["classification_loss"] == pytest.approx(expected_classification, rel=1e-4)
    assert entry["influence_loss"] == pytest.approx(expected_influence, rel=1e-4)
    assert entry["loss"] == pytest.approx(expected_classification + expected_influence, rel=1e-4)


def test_prototypes_are_numpy_class_means_of_the_old_embeddings(references, data):
    """compute_class_means over batches of the frozen old model against a NumPy mean of one separate pass."""
    from bt2_hf.training import FrozenReference, compute_class_means

    images, labels = data
    old = FrozenReference.load("old", references["old"])
    batches = ((images[i : i + 10].float() / 255.0, labels[i : i + 10]) for i in range(0, len(labels), 10))
    prototypes = compute_class_means(batches, 4, old.embed, old.embedding_dim)
    expected = _class_means(_forward(references["old"], images, train_mode=False)["embeddings"], labels.numpy())
    np.testing.assert_allclose(prototypes.double().numpy(), expected, rtol=0, atol=1e-6)
    assert not np.allclose(np.linalg.norm(expected, axis=1), 1.0)  # means of unit vectors: not re-normalised


def test_eval_hook_is_called_per_epoch_and_logged(tmp_path, data):
    calls = []

    def eval_fn(model, accelerator, epoch):
        calls.append((epoch, model.training))
        return {"top1": 0.5}

    out = train(ModelArguments(backbone_config=CNN, embedding_dim=8), DataArguments(),
                quick_args(tmp_path / "e", "independent", max_steps=-1, num_train_epochs=2, logging_steps=100),
                train_data=data, eval_fn=eval_fn)  # fmt: skip
    assert calls == [(1, False), (2, False)]
    history = json.loads((out / "training_log.json").read_text())
    assert [e["eval_top1"] for e in history if "eval_top1" in e] == [0.5, 0.5]


@pytest.mark.parametrize("independent_nonlinearity", ["none", "relu"])
def test_bt2_feature_inherits_the_independent_models_nonlinearity(
    tmp_path, data, references, independent_nonlinearity
):
    """f is matched to the independent embedding, so it must be able to take the same signs."""
    independent = references["independent"]
    if independent_nonlinearity == "relu":
        independent = str(
            train(
                ModelArguments(backbone_config=CNN, embedding_dim=24, head_nonlinearity="relu"),
                DataArguments(),
                quick_args(tmp_path / "independent_relu", "independent"),
                train_data=data,
            )
        )
    out = train(
        ModelArguments(backbone_config=CNN, old_model=references["old"], independent_model=independent),
        DataArguments(),
        quick_args(tmp_path / "bt2", "bt2"),
        {"extra_dim": 8},
        train_data=data,
    )
    model = BT2Model.from_pretrained(out)
    assert model.config.head_nonlinearity == independent_nonlinearity
    features = model(pixel_values=torch.randn(4, 1, 28, 28)).features
    assert bool((features < 0).any()) == (independent_nonlinearity == "none")


def test_bt2_can_start_from_its_independent_model(tmp_path, data, references):
    """init_from_independent: backbone, f's projection rows and classifier start as the independent model's."""
    out = train(
        ModelArguments(
            backbone_config=CNN, old_model=references["old"], independent_model=references["independent"],
            init_from_independent=True,
        ),
        DataArguments(),
        quick_args(tmp_path / "bt2", "bt2", max_steps=1, learning_rate=0.0, weight_decay=0.0),
        {"extra_dim": 8},
        train_data=data,
    )  # fmt: skip
    model = BT2Model.from_pretrained(out)
    twin = BT2Model.from_pretrained(references["independent"])
    twin_parameters = dict(twin.backbone.named_parameters())
    for name, value in model.backbone.named_parameters():  # lr 0: the copied weights are still there
        torch.testing.assert_close(value, twin_parameters[name], rtol=0, atol=0)
    torch.testing.assert_close(model.head.projection.weight[:24], twin.head.projection.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.head.classifier.weight, twin.head.classifier.weight, rtol=0, atol=0)
    assert model.config.training["init_from_independent"] is True

    with pytest.raises(ValueError, match="same architecture|does not fit this backbone_config"):
        train(
            ModelArguments(
                backbone_config={**CNN, "widths": [4, 8]}, old_model=references["old"],
                independent_model=references["independent"], init_from_independent=True,
            ),
            DataArguments(),
            quick_args(tmp_path / "mismatch", "bt2"),
            {"extra_dim": 8},
            train_data=data,
        )  # fmt: skip
    assert not (tmp_path / "mismatch").exists() or not any((tmp_path / "mismatch").iterdir())
    with pytest.raises(ValueError, match="needs the independent model to start from"):
        train(
            ModelArguments(backbone_config=CNN, old_model=references["old"], init_from_independent=True),
            DataArguments(),
            quick_args(tmp_path / "bct", "bct"),
            train_data=data,
        )


def test_bct_can_start_from_the_independent_model_of_its_width(tmp_path, data, references):
    common = dict(backbone_config=CNN, old_model=references["old"], independent_model=references["independent"],
                  init_from_independent=True)  # fmt: skip
    # BCT's embedding is the old width (16) by default; the independent model's is 24: no whole-head copy possible.
    with pytest.raises(ValueError, match="independent embedding has 24 dims, this model's embedding 16"):
        train(ModelArguments(**common), DataArguments(), quick_args(tmp_path / "narrow", "bct"), train_data=data)
    out = train(
        ModelArguments(**common, embedding_dim=24),  # wider than the old model: the first 16 dims are compatible
        DataArguments(),
        quick_args(tmp_path / "bct", "bct", max_steps=1, learning_rate=0.0, weight_decay=0.0),
        train_data=data,
    )
    model, twin = BT2Model.from_pretrained(out), BT2Model.from_pretrained(references["independent"])
    assert model.config.training["started_from"] == references["independent"]
    torch.testing.assert_close(model.head.projection.weight, twin.head.projection.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.head.classifier.weight, twin.head.classifier.weight, rtol=0, atol=0)
    twin_parameters = dict(twin.backbone.named_parameters())
    for name, value in model.backbone.named_parameters():
        torch.testing.assert_close(value, twin_parameters[name], rtol=0, atol=0)
