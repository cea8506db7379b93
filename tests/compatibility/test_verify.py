"""`bt2 verify` measures with the real evaluator, records a measured entry, and galleries admit only what passed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import bt2_hf
from bt2_hf import BT2Config, BT2Model, IncompatibleModelsError
from bt2_hf.cli.main import main as bt2_main
from bt2_hf.data import load_fashion_mnist
from bt2_hf.galleries import FaissGallery, model_identity
from bt2_hf.hub import resolve_query_model
from bt2_hf.verify import dataset_fingerprint, verify_compatibility

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}


def brute_force_metrics(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out top-1, top-5 and mAP (percent) by direct numpy: prefix at the narrower width, re-normalised,
    cosine; equal scores are one group: ranked by gallery row for top-k, and one precision-recall point for AP
    (scikit-learn's convention)."""
    width = min(query.shape[1], gallery.shape[1])
    query = query[:, :width] / np.linalg.norm(query[:, :width], axis=1, keepdims=True)
    gallery = gallery[:, :width] / np.linalg.norm(gallery[:, :width], axis=1, keepdims=True)
    scores = query.astype(np.float64) @ gallery.astype(np.float64).T
    top1, top5, average_precisions = [], [], []
    for row in range(len(labels)):
        others = np.array([j for j in range(len(labels)) if j != row])
        order = others[np.argsort(-scores[row, others], kind="stable")]
        relevant = labels[order] == labels[row]
        top1.append(relevant[0])
        top5.append(relevant[:5].any())
        ranked_scores = scores[row, order]
        group_ends = np.flatnonzero(np.append(ranked_scores[1:] != ranked_scores[:-1], True))
        hits = np.cumsum(relevant)[group_ends]
        new_hits = np.diff(np.concatenate([[0], hits]))
        precision = hits / (group_ends + 1)
        average_precisions.append((new_hits * precision).sum() / relevant.sum())
    return {"top1": 100 * np.mean(top1), "top5": 100 * np.mean(top5), "mAP": 100 * np.mean(average_precisions)}


def spread_model(images: torch.Tensor, seed: int, base: torch.Tensor | None = None, noise: float = 0.0):
    """A real tiny model whose embeddings spread over the sphere: its projection is centred on ``images``' pooled
    features (a freshly initialised CNN gives embeddings within 0.2° of each other, where float rounding decides
    rankings). ``base`` + ``noise`` gives a related model (same backbone with the same ``seed``, a perturbed
    projection: a plausible new model of the same space)."""
    torch.manual_seed(seed)
    config = BT2Config(backbone_type="small_cnn", backbone_config=CNN, embedding_dim=16, num_classes=10,
                       training={"method": "bct"})  # fmt: skip
    model = BT2Model(config).eval()
    with torch.no_grad():
        pooled = model(**model.processor(images, return_tensors="pt")).pooler_output
        perturbation = torch.randn(base.shape, generator=torch.Generator().manual_seed(99)) if base is not None else 0
        weight = torch.randn(16, pooled.shape[1]) if base is None else base + noise * perturbation
        model.head.projection.weight.copy_(weight / pooled.std(0).clamp_min(1e-6))
        model.head.projection.bias.copy_(-(model.head.projection.weight @ pooled.mean(0)))
    return model, weight


def _embed(path, images) -> np.ndarray:
    return BT2Model.from_pretrained(path).encode(images=images, batch_size=64).numpy()


def _old_gallery(old_dir, images, directory) -> FaissGallery:
    old = BT2Model.from_pretrained(old_dir)
    encoder = dict(model_identity(old), name_or_path=str(old_dir))
    return FaissGallery.build(directory, old.encode(images=images).numpy(), encoder=encoder)


def test_verify_writes_a_measured_entry(tmp_path, bands_dir):
    test = load_fashion_mnist(bands_dir, "test")
    old_model, weight = spread_model(test.images, seed=0)
    new_model, _ = spread_model(test.images, seed=0, base=weight, noise=0.5)
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_model.save_pretrained(old_dir)
    new_model.save_pretrained(new_dir)
    before = json.loads((new_dir / "config.json").read_text())
    assert before["compatible_with"] == []

    result = verify_compatibility(new_dir, old_dir, str(bands_dir), split="test", dataset_name="bands")

    labels = test.labels.numpy()
    old, new = _embed(old_dir, test.images), _embed(new_dir, test.images)
    cosines = (old @ old.T)[~np.eye(len(old), dtype=bool)]
    assert cosines.max() - cosines.min() > 0.5  # well spread: no ranking decided by float rounding
    expected = {
        "old/old": brute_force_metrics(old, old, labels),
        "new/old": brute_force_metrics(new, old, labels),
        "new/new": brute_force_metrics(new, new, labels),
    }
    entry = result.entry
    assert entry["status"] == "measured" and entry["method"] == "bct" and entry["embedding_dim"] == 16
    assert entry["fingerprint"] == BT2Model.from_pretrained(old_dir).config.fingerprint
    assert entry["dataset"] == {
        "name": "bands", "split": "test", "size": 120, "sha256": dataset_fingerprint(test.images, test.labels)
    }  # fmt: skip
    assert entry["bt2_hf_version"] == bt2_hf.__version__ and entry["date"].startswith("20")
    assert list(entry["metrics"]) == ["old/old", "new/old", "new/new"]
    for pair, values in expected.items():
        for metric, value in values.items():
            assert entry["metrics"][pair][metric] == pytest.approx(value, abs=1e-3), (pair, metric)
    margins = {m: expected["new/old"][m] - expected["old/old"][m] for m in ("top1", "mAP")}
    assert entry["criterion"]["margin"] == pytest.approx(margins, abs=1e-3)
    assert entry["criterion"]["passed"] is all(v > 0 for v in margins.values())
    assert result.passed is entry["criterion"]["passed"]

    # Written into config.json (nothing else changed), the weights still verify, the card says what was measured.
    after = json.loads((new_dir / "config.json").read_text())
    assert after["compatible_with"] == [entry] and result.written_to == new_dir / "config.json"
    assert {k: v for k, v in after.items() if k != "compatible_with"} == {
        k: v for k, v in before.items() if k != "compatible_with"
    }
    reloaded = BT2Model.from_pretrained(new_dir)  # recomputes and checks the fingerprint
    assert reloaded.config.fingerprint == before["fingerprint"] and reloaded.config.compatible_with == [entry]
    assert "measured on bands:test (120 items)" in (new_dir / "README.md").read_text()

    gallery = _old_gallery(old_dir, test.images, tmp_path / "gallery")
    if result.passed:
        assert gallery.search(new[:3], k=1, query_config=reloaded.config).admission["basis"] == "measured"
    else:
        with pytest.raises(IncompatibleModelsError, match="FAILED"):
            gallery.search(new[:3], k=1, query_config=reloaded.config, allow_unmeasured=True)


def test_trained_but_unverified_model_is_refused_and_accepted_with_the_override(trained, bands_dir, caplog,
                                                                                tmp_path):  # fmt: skip
    bct = BT2Model.from_pretrained(trained["bct"])
    old_fingerprint = BT2Model.from_pretrained(trained["old"]).config.fingerprint
    assert bct.config.compatible_with == []
    assert bct.config.training["trained_against"] == {
        "name_or_path": trained["old"], "revision": None, "fingerprint": old_fingerprint, "prefix_dim": 16
    }  # fmt: skip
    test = load_fashion_mnist(bands_dir, "test")
    gallery = _old_gallery(trained["old"], test.images, tmp_path / "gallery")
    queries = bct.encode(images=test.images[:4]).numpy()

    with pytest.raises(IncompatibleModelsError) as error:
        gallery.search(queries, k=3, query_config=bct.config)
    message = str(error.value)
    assert trained["bct"] in message and trained["old"] in message and "never measured" in message
    assert f"bt2 verify {trained['bct']} --old {trained['old']} --data" in message
    with pytest.raises(IncompatibleModelsError, match="bt2 verify"):
        resolve_query_model(gallery, [trained["bct"]], local_files_only=True)

    with caplog.at_level(logging.WARNING, logger="bt2_hf.compatibility.admission"):
        result = gallery.search(queries, k=3, query_config=bct.config, allow_unmeasured=True)
    assert result.prefix_dim == 16 and len(result.ids[0]) == 3
    assert result.admission["overridden"] is True and result.admission["basis"] == "unmeasured_override"
    assert result.admission["entry"]["trained_against"]["fingerprint"] == old_fingerprint
    assert any("allow_unmeasured" in record.message for record in caplog.records)
    model, prefix = resolve_query_model(gallery, [trained["bct"]], local_files_only=True, allow_unmeasured=True)
    assert prefix == 16 and model.config.fingerprint == bct.config.fingerprint


def test_failing_criterion_is_recorded_and_refused(tmp_path, trained, bands_dir, capsys):
    # A "new" model whose embeddings equal the old model's (only its unused classifier differs): new→old ties
    # old→old exactly, and the strict criterion fails with a zero margin.
    twin = BT2Model.from_pretrained(trained["old"])
    with torch.no_grad():
        twin.head.classifier.weight.mul_(-1.0)
    twin.config.training = {**twin.config.training, "method": "bct"}
    twin.save_pretrained(tmp_path / "twin")
    report_path = tmp_path / "verify.json"

    status = bt2_main(["verify", str(tmp_path / "twin"), "--old", trained["old"], "--data", str(bands_dir),
                       "--split", "test", "--dataset_name", "bands", "--output", str(report_path)])  # fmt: skip
    assert status == 1  # recorded, and the exit status says it failed
    assert "FAILED" in capsys.readouterr().out
    entry = BT2Model.from_pretrained(tmp_path / "twin").config.compatible_with[0]
    assert entry["status"] == "measured" and entry["criterion"]["passed"] is False
    assert entry["criterion"]["margin"] == {"top1": 0.0, "mAP": 0.0}
    assert entry["metrics"]["new/old"] == entry["metrics"]["old/old"]
    saved = json.loads(report_path.read_text())
    assert saved["entry"] == entry and set(saved["report"]["results"]) == {"old/old", "new/old", "new/new"}
    assert saved["report"]["compatible"] is False

    test = load_fashion_mnist(bands_dir, "test")
    gallery = _old_gallery(trained["old"], test.images, tmp_path / "gallery")
    for allow_unmeasured in (False, True):  # measured and failed: the override does not apply
        with pytest.raises(IncompatibleModelsError) as error:
            gallery.search(test.images[:1].flatten(1)[:, :16].float(), query_config=entry_config(tmp_path / "twin"),
                           allow_unmeasured=allow_unmeasured)  # fmt: skip
        assert "FAILED" in str(error.value) and "top1 new→old" in str(error.value)


def entry_config(path):
    return BT2Model.config_class.from_pretrained(path)


def test_verify_refuses_bad_input_clearly(tmp_path, trained, bands_dir, capsys):
    assert bt2_main(["verify", trained["bct"], "--old", trained["old"], "--data", str(tmp_path / "none")]) == 2
    assert "bt2 verify:" in capsys.readouterr().err


def test_a_second_verification_reuses_the_old_side_only_when_it_is_the_same(tmp_path, bands_dir):
    test = load_fashion_mnist(bands_dir, "test")
    old_model, weight = spread_model(test.images, seed=0)
    paths = {"old": tmp_path / "old", "a": tmp_path / "a", "b": tmp_path / "b"}
    old_model.save_pretrained(paths["old"])
    for name, noise in (("a", 0.3), ("b", 0.6)):
        spread_model(test.images, seed=0, base=weight, noise=noise)[0].save_pretrained(paths[name])
    kwargs = {"split": "test", "dataset_name": "bands", "write": False}
    first = verify_compatibility(paths["a"], paths["old"], test, **kwargs)
    alone = verify_compatibility(paths["b"], paths["old"], test, **kwargs)
    reused = verify_compatibility(paths["b"], paths["old"], test, reuse_old_from=first, **kwargs)
    assert reused.entry["metrics"] == alone.entry["metrics"]
    assert reused.entry["criterion"] == alone.entry["criterion"]
    assert reused.embeddings["old"] is first.embeddings["old"]

    # another split, another old model or other metrics: refused, naming what differs
    with pytest.raises(ValueError, match="the split differs"):
        verify_compatibility(paths["b"], paths["old"], test.take_per_class(5, seed=0), reuse_old_from=first, **kwargs)
    with pytest.raises(ValueError, match="the old model differs"):
        verify_compatibility(paths["b"], paths["a"], test, reuse_old_from=first, **kwargs)
    with pytest.raises(ValueError, match="the metrics differ"):
        verify_compatibility(paths["b"], paths["old"], test, metrics=("top1", "map"), reuse_old_from=first, **kwargs)
