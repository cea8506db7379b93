"""The gallery's gate: `bt2 gallery admit` measures a candidate on the gallery's own probe set with the library's
evaluator and the owner's policy (both in the manifest), logs the result, and searches follow the log. A compatible
model is admitted; an independent model and a forged copy (config edited to claim compatibility, hash recomputed)
are refused, whatever their configs say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bt2_hf import BT2Model, IncompatibleModelsError
from bt2_hf.cli.gallery import main as gallery_main
from bt2_hf.cli.index import main as index_main
from bt2_hf.compatibility import seal_entry
from bt2_hf.galleries import FaissGallery, open_source
from bt2_hf.galleries.embed import encode_items
from bt2_hf.training import BT2TrainingArguments, DataArguments, ModelArguments, train

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}


def _fit(root: Path, data, name: str, seed: int, steps: int) -> Path:
    args = BT2TrainingArguments(
        output_dir=str(root / name), method="independent", per_device_train_batch_size=32, max_steps=steps,
        logging_steps=steps, disable_tqdm=True, learning_rate=1e-2, data_on_device=True, seed=seed,
    )  # fmt: skip
    return Path(train(ModelArguments(backbone_config=CNN, embedding_dim=16, logit_scale=16.0), DataArguments(), args,
                      train_data=data))  # fmt: skip


def _pooled(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**model.processor(images, return_tensors="pt")).pooler_output


def _widened(old: BT2Model, extra: int = 8) -> BT2Model:
    """A BT²-shaped new model: the old model's backbone and projection in its first dims, ``extra`` more dims. Its
    prefix searches the old gallery exactly as the old model does (new→old = old→old): compatible by construction."""
    config = old.config.to_dict()
    config.update(embedding_dim=old.config.embedding_dim + extra, compatible_dim=old.config.embedding_dim,
                  fingerprint=None, compatible_with=[], training={"method": "bt2"})  # fmt: skip
    new = BT2Model(type(old.config).from_dict(config)).eval()
    new.backbone.load_state_dict(old.backbone.state_dict())
    with torch.no_grad():
        new.head.projection.weight[: old.config.embedding_dim].copy_(old.head.projection.weight)
        new.head.projection.bias[: old.config.embedding_dim].copy_(old.head.projection.bias)
    return new


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An old model, a new model compatible with it by construction (BT²-shaped: the old embedding in its first dims),
    an independent model, and a texture data set (120 held-out test images); bt2 verify measured the new model."""
    from bt2_hf.data import load_fashion_mnist
    from bt2_hf.verify import verify_compatibility
    from tests.demo.synthetic import write_texture_idx

    root = tmp_path_factory.mktemp("gate")
    bands = write_texture_idx(root / "textures")  # stripes: classes a small CNN tells apart after a few steps
    train = load_fashion_mnist(bands, "train")
    old = BT2Model.from_pretrained(_fit(root, train, "old", seed=42, steps=6))
    _widened(old).save_pretrained(root / "bct")
    _fit(root, train, "independent", seed=7, steps=40)
    # bt2 verify's entry for the new model (new→old = old→old: it passes a "no worse" policy, the test galleries');
    # what a forger copies into another model's config.
    result = verify_compatibility(root / "bct", root / "old", str(bands), split="test", dataset_name="textures",
                                  update_card=False)  # fmt: skip
    assert result.entry["metrics"]["new/old"] == result.entry["metrics"]["old/old"]
    return {"old": root / "old", "bct": root / "bct", "independent": root / "independent", "bands": bands,
            "entry": result.entry}  # fmt: skip


@pytest.fixture
def gallery(models, tmp_path, capsys):
    """A gallery of the old model's train-split vectors with a probe set from the test split, built by the CLI; its
    owner's policy: a query model must do no worse than the old model's own queries (margin > -0.01 points)."""
    directory = tmp_path / "gallery"
    assert index_main(["build", "--model", str(models["old"]), "--data", str(models["bands"]), "--split", "train",
                       "--output", str(directory), "--probe_from", str(models["bands"]), "--probe_split", "test",
                       "--probe_size", "100", "--min_size", "50", "--min_margin", "-0.01"]) == 0  # fmt: skip
    capsys.readouterr()
    return directory


def _forged_copy(models, tmp_path) -> Path:
    """The independent model with the BCT model's passing entry pasted into its config, bound to the independent
    model's own fingerprint and re-sealed: the forgery a content hash cannot catch."""
    forged = Path(shutil.copytree(models["independent"], tmp_path / "forged"))
    config = json.loads((forged / "config.json").read_text())
    entry = json.loads(json.dumps(models["entry"]))
    entry["query_fingerprint"] = config["fingerprint"]
    for metric in ("top1", "top5", "mAP"):  # numbers that pass any policy
        entry["metrics"]["new/old"][metric] = entry["metrics"]["old/old"][metric] + 5.0
    entry["criterion"].update(passed=True, margin={m: 5.0 for m in entry["criterion"]["metrics"]})
    config["compatible_with"] = [seal_entry(entry)]
    (forged / "config.json").write_text(json.dumps(config, indent=2))
    return forged


def _search(directory, model, bands, capsys) -> tuple[int, str]:
    code = index_main(["search", "--index", str(directory), "--query_model", str(model), "--query_data", str(bands),
                       "--split", "test", "--limit", "3", "-k", "2"])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_gallery_keeps_its_probe_set_and_policy(gallery, models):
    opened = FaissGallery.open(gallery)
    manifest = opened.manifest
    assert manifest["probe"]["size"] == 100 and manifest["probe"]["num_classes"] == 10
    assert manifest["policy"] == {"required_metrics": ["top1", "mAP"], "min_margin": -0.01, "min_size": 50,
                                  "require_gate": False}  # fmt: skip
    probe = opened.probe()
    source = open_source(models["bands"], split="test")
    assert probe["images"].dtype == np.uint8 and len(probe["labels"]) == 100
    assert np.bincount(probe["labels"]).tolist() == [10] * 10  # class-balanced
    held_out = {image.tobytes() for image in source.items(0, len(source)).numpy()}
    assert all(image.tobytes() in held_out for image in probe["images"])  # sampled from the test split
    # the stored embeddings are the old model's own, of the stored items
    old = BT2Model.from_pretrained(models["old"])
    expected = encode_items(old, torch.from_numpy(probe["images"]), 64)
    np.testing.assert_allclose(probe["embeddings"], expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               atol=1e-5)  # fmt: skip
    assert any(name.startswith("probe/") for name in manifest["files"])  # hashed like every data file


def test_admit_a_compatible_model_and_search_with_it(gallery, models, capsys):
    # Before the gate, the BCT model is admitted only on its config's measured entry.
    code, output = _search(gallery, models["bct"], models["bands"], capsys)
    assert code == 0 and '"basis": "measured"' in output, output

    assert gallery_main(["admit", str(gallery), str(models["bct"])]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passed"] is True and result["size"] == 100 and result["prefix_dim"] == 16, result
    assert all(margin > -0.01 for margin in result["margin"].values())
    log = FaissGallery.open(gallery).admissions
    bct = BT2Model.from_pretrained(models["bct"])
    assert len(log) == 1 and log[0]["query_fingerprint"] == bct.verified_fingerprint()
    assert set(log[0]["metrics"]) == {"old/old", "new/old"} and log[0]["policy"]["min_size"] == 50

    code, output = _search(gallery, models["bct"], models["bands"], capsys)
    assert code == 0 and '"basis": "gallery_measured"' in output
    # Even with its config's entry removed, the gallery's own measurement admits it.
    stripped = BT2Model.from_pretrained(models["bct"])
    stripped.config.compatible_with = []
    assert FaissGallery.open(gallery).admit(stripped.config).basis == "gallery_measured"


def test_admit_refuses_a_forged_copy_and_an_independent_model(gallery, models, tmp_path, capsys):
    forged = _forged_copy(models, tmp_path)
    # The forgery fools the config check (the known limit of a content hash) ...
    code, output = _search(gallery, forged, models["bands"], capsys)
    assert code == 0 and '"basis": "measured"' in output, output
    # ... but not a measurement the gallery makes itself; from then on its searches are refused.
    assert gallery_main(["admit", str(gallery), str(forged)]) == 1
    assert "REFUSED" in capsys.readouterr().err
    code, output = _search(gallery, forged, models["bands"], capsys)
    assert code == 2 and "the gallery measured it" in output and "Whatever the model's config claims" in output
    with pytest.raises(IncompatibleModelsError, match="the gallery measured it"):
        FaissGallery.open(gallery).admit(BT2Model.from_pretrained(forged).config, allow_unmeasured=True)

    assert gallery_main(["admit", str(gallery), str(models["independent"])]) == 1
    assert "REFUSED" in capsys.readouterr().err
    code, output = _search(gallery, models["independent"], models["bands"], capsys)
    assert code == 2 and "the gallery measured it" in output and "FAILED" in output
    log = FaissGallery.open(gallery).admissions
    assert [entry["passed"] for entry in log] == [False, False]


def test_a_gate_only_policy_trusts_no_config(gallery, models, tmp_path, capsys):
    assert gallery_main(["policy", str(gallery), "--require_gate", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["require_gate"] is True
    forged = _forged_copy(models, tmp_path)
    for model in (forged, models["bct"]):  # neither has been measured at this gate
        code, output = _search(gallery, model, models["bands"], capsys)
        assert code == 2 and f"bt2 gallery admit {gallery}" in output
    assert gallery_main(["admit", str(gallery), str(models["bct"])]) == 0
    capsys.readouterr()
    assert _search(gallery, models["bct"], models["bands"], capsys)[0] == 0


def test_admit_without_a_probe_set_names_the_fix(models, tmp_path, capsys):
    assert index_main(["build", "--model", str(models["old"]), "--data", str(models["bands"]), "--split", "test",
                       "--output", str(tmp_path / "plain")]) == 0  # fmt: skip
    assert gallery_main(["admit", str(tmp_path / "plain"), str(models["bct"])]) == 2
    assert "--probe_from" in capsys.readouterr().err


def test_a_backfill_is_admitted_by_the_same_rule_as_a_search(gallery, models, tmp_path, capsys):
    """The gallery's own measurement decides for a backfill as for a search: a model refused at the gate cannot
    backfill (whatever its config says), and one admitted there can, even when its config entry would fail."""
    from bt2_hf.cli.backfill import main as backfill_main

    def backfill(model) -> int:
        return backfill_main(["--index", str(gallery), "--model", str(model), "--data", str(models["bands"]),
                              "--split", "train", "--fraction", "0.1", "--no_progress"])  # fmt: skip

    forged = _forged_copy(models, tmp_path)
    assert gallery_main(["admit", str(gallery), str(forged)]) == 1
    capsys.readouterr()
    assert backfill(forged) == 2
    assert "the gallery measured it" in capsys.readouterr().err
    assert FaissGallery.open(gallery).backfill_state is None  # nothing was started

    assert gallery_main(["policy", str(gallery), "--require_gate", "true"]) == 0
    assert gallery_main(["admit", str(gallery), str(models["bct"])]) == 0
    capsys.readouterr()
    assert backfill(models["bct"]) == 0
    assert FaissGallery.open(gallery).backfill_state["done"] > 0
