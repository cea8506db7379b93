"""Compatibility metadata: declaration, lineage closure, round trip through config.json, validation errors."""

from __future__ import annotations

import json

import pytest
import torch

from bt2_hf import BT2Config, BT2Model, IncompatibleModelsError, compatible_prefix, fingerprint_model
from bt2_hf.hub import (
    CompatibilityMetadataError,
    declare_compatibility,
    load_evaluation_results,
    validate_compatibility_metadata,
)

from .conftest import FAKE_DATASET, FAKE_RESULTS, SMALL_CNN, make_bt2_model, make_old_model

FP_A, FP_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _saved_config(model: BT2Model, path) -> BT2Config:
    model.save_pretrained(path)
    config = BT2Config.from_pretrained(path)
    config.name_or_path = str(path)  # as BT2Model.from_pretrained sets it (config-only loading does not)
    return config


def _entry(**overrides):
    entry = {"name_or_path": "org/old", "revision": "main", "fingerprint": FP_A, "embedding_dim": 16, "method": "bt2"}
    entry.update(overrides)
    return entry


def _bt2_config(compatible_with, **kwargs):
    return BT2Config(
        backbone_type="small_cnn",
        backbone_config=SMALL_CNN,
        head_type="basis_transformation",
        feature_dim=16,
        old_embedding_dim=16,
        extra_dim=4,
        compatible_with=compatible_with,
        **kwargs,
    )


def test_declare_and_round_trip(tmp_path, old_model, bt2_model):
    old_config = _saved_config(old_model, tmp_path / "old")
    entry = declare_compatibility(
        bt2_model.config,
        old_config,
        method="bt2",
        metrics=FAKE_RESULTS,
        dataset=FAKE_DATASET,
        name_or_path="org/old",
        revision="v1",
        query_fingerprint=fingerprint_model(bt2_model),  # what save_pretrained will record: the entry is bound to it
    )
    assert entry["embedding_dim"] == 16 and entry["fingerprint"] == old_config.fingerprint
    assert entry["status"] == "measured" and entry["dataset"] == FAKE_DATASET
    assert entry["metrics"]["new/old"] == {"top1": 61.0, "top5": 82.4, "mAP": 33.5}
    assert entry["criterion"] == {
        "rule": "M(new/old) > M(old/old)",
        "metric": "top1",
        "metrics": ["top1", "mAP"],
        "passed": True,
        "margin": {"top1": 2.7, "mAP": 2.3},
    }

    bt2_model.save_pretrained(tmp_path / "new")
    on_disk = json.loads((tmp_path / "new" / "config.json").read_text())
    for key in ("embedding_dim", "normalize", "similarity", "fingerprint", "compatible_with"):
        assert key in on_disk
    assert on_disk["compatible_with"] == [entry]
    loaded = BT2Model.from_pretrained(tmp_path / "new")
    assert loaded.config.compatible_with == [entry]
    assert compatible_prefix(loaded.config, old_config.fingerprint, 16, "org/old") == 16


def test_declare_with_loaded_model_computes_its_fingerprint(old_model, bt2_model):
    entry = declare_compatibility(bt2_model.config, old_model, method="bt2", name_or_path="org/old")
    from bt2_hf import fingerprint_model

    assert entry["fingerprint"] == fingerprint_model(old_model)
    assert "metrics" not in entry and "criterion" not in entry and entry["status"] == "declared"
    with pytest.raises(CompatibilityMetadataError, match="without the held-out data"):
        declare_compatibility(bt2_model.config, old_model, method="bt2", name_or_path="org/old", metrics=FAKE_RESULTS)


def test_lineage_closes_transitively(tmp_path):
    v1 = make_old_model(seed=0, embedding_dim=16)
    v2 = make_bt2_model(seed=1, old_dim=16, feature_dim=24, extra_dim=8)  # 32-d, first 16 compatible with v1
    v3 = make_bt2_model(seed=2, old_dim=32, feature_dim=32, extra_dim=8)  # 40-d, first 32 compatible with v2
    v1_config = _saved_config(v1, tmp_path / "v1")
    measured = {"metrics": FAKE_RESULTS, "dataset": FAKE_DATASET}
    declare_compatibility(v2.config, v1_config, method="bt2", name_or_path="org/v1", revision="r1", **measured,
                          query_fingerprint=fingerprint_model(v2))  # fmt: skip
    v2_config = _saved_config(v2, tmp_path / "v2")
    declare_compatibility(v3.config, v2_config, method="bt2", name_or_path="org/v2", revision="r2", **measured,
                          query_fingerprint=fingerprint_model(v3))  # fmt: skip

    by_name = {e["name_or_path"]: e for e in v3.config.compatible_with}
    assert set(by_name) == {"org/v1", "org/v2"}
    assert by_name["org/v2"]["embedding_dim"] == 32 and "via" not in by_name["org/v2"]
    assert by_name["org/v1"]["embedding_dim"] == 16 and by_name["org/v1"]["via"] == "org/v2"
    assert by_name["org/v1"]["fingerprint"] == v1_config.fingerprint
    assert by_name["org/v1"]["status"] == "inherited" and by_name["org/v1"]["link_passed"] is True
    assert by_name["org/v1"]["via_fingerprint"] == v2_config.fingerprint
    v3_config = _saved_config(v3, tmp_path / "v3")
    assert compatible_prefix(v3_config, v1_config.fingerprint, 16, "org/v1") == 16
    assert compatible_prefix(v3_config, v2_config.fingerprint, 32, "org/v2") == 32


def test_declaring_other_width_is_refused(tmp_path, bt2_model):
    wide_old = _saved_config(make_old_model(embedding_dim=24), tmp_path / "wide")
    with pytest.raises(IncompatibleModelsError) as error:
        declare_compatibility(bt2_model.config, wide_old, method="bt2", name_or_path="org/wide-old")
    message = str(error.value)
    assert "org/wide-old" in message and "24-d" in message and "16-d" in message
    assert "old_embedding_dim=24" in message  # says what to do
    assert bt2_model.config.compatible_with == []


def test_declaring_needs_old_fingerprint_and_method(bt2_model):
    unsaved = BT2Config(backbone_type="small_cnn", backbone_config=SMALL_CNN, embedding_dim=16)
    with pytest.raises(CompatibilityMetadataError, match="fingerprint"):
        declare_compatibility(bt2_model.config, unsaved, method="bt2", name_or_path="org/old")
    bt2_model.config.training = {}
    with pytest.raises(CompatibilityMetadataError, match="method="):
        declare_compatibility(bt2_model.config, make_old_model(), name_or_path="org/old")


@pytest.mark.parametrize(
    "entries, match",
    [
        ([{"name_or_path": "org/old", "embedding_dim": 16, "method": "bt2"}], r"lacks \['fingerprint'\]"),
        ([_entry(fingerprint="abc123")], "not 'sha256:<64 hex digits>'"),
        ([_entry(embedding_dim=32)], "32-d prefix, but the model's compatible block is only 16-d"),
        ([_entry(), _entry(name_or_path="org/other")], "repeats the fingerprint"),
        ([_entry(embedding_dim="16")], "need an int"),
        (
            [_entry(metrics={"new/old": {"top1": 50.0}, "old/old": {"top1": 60.0}}, criterion={"passed": True})],
            "says passed=True, but its metrics give top1 new/old = 50.0 vs old/old = 60.0",
        ),
        ([_entry(criterion={"passed": True, "metric": "top1"})], "lack new/old or old/old"),
        ([_entry(metrics={"new-old": {"top1": 1.0}})], "'query/gallery'"),
        (["org/old"], "not a dict"),
        ([_entry(revision=3)], "revision=3"),
        ([_entry(status="measured")], "lacks its metrics or criterion"),
        (
            [
                _entry(
                    status="measured",
                    metrics={"new/old": {"top1": 61.0}, "old/old": {"top1": 60.0}},
                    criterion={"passed": True, "metric": "top1"},
                )
            ],
            "does not name the held-out data",
        ),
        (
            [
                _entry(
                    metrics={"new/old": {"top1": 61.0, "mAP": 20.0}, "old/old": {"top1": 60.0, "mAP": 30.0}},
                    criterion={"passed": True, "metrics": ["top1", "mAP"]},
                )
            ],
            "must hold for every judged metric",
        ),
        ([_entry(status="guessed")], "status='guessed'"),
    ],
)
def test_validation_errors(entries, match):
    with pytest.raises(CompatibilityMetadataError, match=match):
        _bt2_config(entries)


def test_validation_of_own_fingerprint_and_self_reference():
    with pytest.raises(CompatibilityMetadataError, match="re-save"):
        _bt2_config([], fingerprint="md5:0000")
    with pytest.raises(CompatibilityMetadataError, match="lists the model itself"):
        _bt2_config([_entry()], fingerprint=FP_A)


def test_bad_metadata_is_refused_when_read(tmp_path, bt2_model):
    bt2_model.save_pretrained(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    data = json.loads(config_path.read_text())
    data["compatible_with"] = [_entry(embedding_dim=64)]
    config_path.write_text(json.dumps(data))
    with pytest.raises(CompatibilityMetadataError, match="64-d prefix"):
        BT2Model.from_pretrained(tmp_path / "ckpt")


def test_valid_metadata_passes():
    config = _bt2_config(
        [
            _entry(
                metrics={"old/old": {"top1": 50.0}, "new/old": {"top1": 55.0}},
                criterion={"rule": "M(new/old) > M(old/old)", "metric": "top1", "passed": True},
                status="measured",
                dataset={"name": "d", "split": "test", "size": 10, "sha256": "0" * 64},
            ),
            _entry(name_or_path="org/older", fingerprint=FP_B, embedding_dim=8, via="org/old"),
        ]
    )
    validate_compatibility_metadata(config)


def test_load_evaluation_results_layouts(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(FAKE_RESULTS))
    from_file = load_evaluation_results(path)
    assert from_file == {
        "old/old": {"top1": 58.3, "top5": 80.1, "mAP": 31.2},
        "new/old": {"top1": 61.0, "top5": 82.4, "mAP": 33.5},
        "new/new": {"top1": 70.2, "top5": 88.1, "mAP": 40.9},
    }
    # The evaluator's PairReport.to_dict(): fractions, lower-case "map".
    report = {"results": {"old/old": {"top1": 0.5, "map": 0.25}, "new/old": {"top1": 0.625, "map": 0.5}}}
    assert load_evaluation_results(report) == {
        "old/old": {"top1": 50.0, "mAP": 25.0},
        "new/old": {"top1": 62.5, "mAP": 50.0},
    }
    per_pair = {"old/old": {"top1": 40}, "new/old": {"top1": 45}}
    assert load_evaluation_results(per_pair)["new/old"] == {"top1": 45.0}
    assert load_evaluation_results(per_pair, unit="fraction")["new/old"] == {"top1": 4500.0}
    # A private layout (the demo's old {"methods": ...} file) is not a results schema: refused, with the expected one.
    with pytest.raises(ValueError, match="PairReport.to_dict"):
        load_evaluation_results({"methods": {"bt2": {"old/old": {"top1": 1}}}})
    with pytest.raises(FileNotFoundError):
        load_evaluation_results(tmp_path / "missing.json")


def test_compatible_prefix_refusal_names_both_models_and_lineage(tmp_path, old_model, bt2_model):
    old_config = _saved_config(old_model, tmp_path / "old")
    declare_compatibility(
        bt2_model.config,
        old_config,
        method="bt2",
        name_or_path="org/old",
        metrics=FAKE_RESULTS,
        dataset=FAKE_DATASET,
        query_fingerprint=fingerprint_model(bt2_model),
    )
    new_config = _saved_config(bt2_model, tmp_path / "new")
    with pytest.raises(IncompatibleModelsError) as error:
        compatible_prefix(new_config, FP_B, 16, "org/stranger")
    message = str(error.value)
    assert "org/stranger" in message and str(tmp_path / "new") in message and "org/old" in message
    assert "backfill" in message and f"bt2 verify {tmp_path / 'new'} --old org/stranger" in message
    # A bare-hex fingerprint (as some manifests store it) matches the prefixed one.
    assert compatible_prefix(new_config, old_config.fingerprint.removeprefix("sha256:"), 16, "org/old") == 16


def test_fine_tuned_copy_of_the_old_checkpoint_drops_the_stale_fingerprint(tmp_path, old_model):
    old_model.save_pretrained(tmp_path / "old")
    new = BT2Model.from_pretrained(tmp_path / "old")  # starts from the old weights, then would be fine-tuned
    assert new.config.fingerprint == old_model.config.fingerprint
    declare_compatibility(new.config, old_model, method="bct", name_or_path="org/old")
    assert new.config.fingerprint is None
    with pytest.raises(CompatibilityMetadataError, match="lists the model itself"):
        new.save_pretrained(tmp_path / "untrained")  # not trained yet: it *is* the old model; nothing is written
    assert not (tmp_path / "untrained" / "config.json").exists()
    with torch.no_grad():
        next(iter(new.parameters())).view(-1)[0] += 0.1  # stands in for fine-tuning
    new.save_pretrained(tmp_path / "new")  # the fingerprint is recomputed here
    saved = BT2Config.from_pretrained(tmp_path / "new")
    assert saved.fingerprint not in (None, old_model.config.fingerprint)
