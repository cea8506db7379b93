"""Series of BT² updates: dimension plan, lineage prefixes, the matrix (tiny, offline, synthetic images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bt2_hf import BT2Model
from bt2_hf.data import ImageClassificationData
from bt2_hf.experiments.series import SeriesVersion, format_matrix, plan_series, run_series
from bt2_hf.retrieval.compatibility import compatibility_matrix

CNN = {"num_channels": 1, "widths": [4, 8], "image_size": 12}


def tiny_versions(steps: int = 2) -> list[SeriesVersion]:
    common = dict(backbone_type="small_cnn", backbone_config=CNN, max_steps=steps, batch_size=16)
    return [
        SeriesVersion("v1", feature_dim=8, class_subset="0-1", **common),
        SeriesVersion("v2", feature_dim=8, extra_dim=4, **common),  # 12-d, prefix 8 = v1
        SeriesVersion("v3", feature_dim=10, extra_dim=6, **common),  # 16-d, prefix 12 = v2, 8 = v1
    ]


def synthetic_data(n: int, seed: int) -> ImageClassificationData:
    """Three classes of 12×12 images told apart by which third of the image is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 1, 12, 12), generator=generator, dtype=torch.uint8)
    for c in range(3):
        images[labels == c, :, 4 * c : 4 * c + 4, :] += 150
    return ImageClassificationData(images=images, labels=labels, class_names=["a", "b", "c"])


def test_plan_records_every_prefix_and_rejects_impossible_steps():
    plan = plan_series(tiny_versions())
    assert [p["embedding_dim"] for p in plan] == [8, 12, 16]
    assert [p["compatible_dim"] for p in plan] == [8, 8, 12]
    assert plan[2]["prefixes"] == {"v1": 8, "v2": 12}
    too_narrow = tiny_versions()
    too_narrow[2].extra_dim = 2  # 10 + 2 = 12 = v2's width: nothing left for new information
    with pytest.raises(ValueError, match="extra_dim >= 3"):
        plan_series(too_narrow)
    subset_step = tiny_versions()
    subset_step[1].class_subset = "0-1"
    with pytest.raises(ValueError, match="every class"):
        plan_series(subset_step)
    with pytest.raises(ValueError, match=r"'v2': unknown key\(s\) \['init_from_independant'\]; valid keys are"):
        SeriesVersion.from_dict({"name": "v2", "backbone_type": "small_cnn", "backbone_config": CNN, "feature_dim": 8,
                                 "init_from_independant": True})  # fmt: skip
    with pytest.raises(ValueError, match=r"'v2': missing required key\(s\) \['feature_dim'\]"):
        SeriesVersion.from_dict({"name": "v2", "backbone_type": "small_cnn", "backbone_config": CNN})
    twice = tiny_versions()
    twice[2].method_config = {"extra_dim": 9}  # also a version field: refused before anything trains
    with pytest.raises(ValueError, match=r"v3: set \['extra_dim'\] as version fields"):
        plan_series(twice)


def test_matrix_ac_aa_on_known_embeddings():
    labels = np.array([0, 0, 1, 1])
    v1 = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.2, 0.8]], dtype=np.float32)
    v2 = np.concatenate([v1, np.ones((4, 1), dtype=np.float32)], axis=1)  # v1 block + 1 extra dim
    matrix = compatibility_matrix([v1, v2], labels, metrics=["top1"])
    assert matrix.values["top1"][1, 0] == 1.0 and np.isnan(matrix.values["top1"][0, 1])
    # C[1][0] = C[0][0] = 1: a tie is not an improvement, so AC = 0 (strict criterion).
    assert matrix.average_compatibility("top1") == 0.0
    assert matrix.average_accuracy("top1") == pytest.approx(np.mean([1.0, 1.0, matrix.values["top1"][1, 1]]))


@pytest.mark.slow
def test_run_series_trains_records_lineage_and_matrix(tmp_path):
    versions = tiny_versions()
    versions[1].method_config = {"old_match_weight": 7.0}
    versions[2].init_from_independent = True
    result = run_series(
        versions,
        tmp_path,
        train_data=synthetic_data(48, seed=0),
        eval_data=synthetic_data(30, seed=1),
        disable_tqdm=True,
    )
    assert set(result.model_dirs) == {"v1", "v2", "v3"}
    assert result.model_dirs["v1"] == result.independent_dirs["v1"]  # v1 is its own independent model
    v2 = BT2Model.from_pretrained(result.model_dirs["v2"])
    v3 = BT2Model.from_pretrained(result.model_dirs["v3"])  # fingerprint still verifies after the re-save
    assert (v2.config.embedding_dim, v2.config.compatible_dim) == (12, 8)
    v2_method = v2.config.training["method_config"]
    assert (v2_method["old_match_weight"], v2_method["extra_dim"]) == (7.0, 4)  # method_config reached the step
    assert v3.config.training["method_config"]["old_match_weight"] == 5.0  # v3 kept the default
    # v3 trains its prefix for v1 (8 dims of v2's 12) directly as well; v2 has no ancestor beyond v1
    assert (v2_method["ancestor_prefix_dims"], v3.config.training["method_config"]["ancestor_prefix_dims"]) == (
        [],
        [8],
    )
    assert (v3.config.embedding_dim, v3.config.compatible_dim) == (16, 12)
    v1_fingerprint = BT2Model.from_pretrained(result.model_dirs["v1"]).config.fingerprint
    prefixes = {entry["fingerprint"]: entry["embedding_dim"] for entry in v3.config.compatible_with}
    assert prefixes == {v2.config.fingerprint: 12, v1_fingerprint: 8}  # closed transitively: v1 via v2
    via = {entry["fingerprint"]: entry.get("via") for entry in v3.config.compatible_with}
    assert via[v1_fingerprint] == result.model_dirs["v2"]
    direct = next(e for e in v3.config.compatible_with if e["fingerprint"] == v2.config.fingerprint)
    assert direct["method"] == "bt2" and set(direct["metrics"]) == {"old/old", "new/old", "new/new"}

    top1 = np.array(result.matrix["matrix"]["top1"], dtype=float)
    assert top1.shape == (3, 3) and np.isnan(top1[0, 2]) and not np.isnan(top1[2, 0])
    assert 0.0 <= result.matrix["AC"]["top1"] <= 1.0
    assert set(result.self_retrieval["v3"]) == {"model", "independent", "tax"}
    saved = json.loads((tmp_path / "series_results.json").read_text())
    assert saved["plan"][2]["prefixes"] == {"v1": 8, "v2": 12}
    assert "AC = " in format_matrix(result)


@pytest.mark.slow
def test_rerun_reuses_identical_versions_and_refuses_changed_ones(tmp_path):
    train_data, eval_data = synthetic_data(48, seed=0), synthetic_data(30, seed=1)
    kwargs = dict(train_data=train_data, eval_data=eval_data, disable_tqdm=True)
    first = run_series(tiny_versions(), tmp_path, **kwargs)
    fingerprints = {n: BT2Model.from_pretrained(p).config.fingerprint for n, p in first.model_dirs.items()}
    again = run_series(tiny_versions(), tmp_path, **kwargs)  # same file: nothing retrained
    assert {n: BT2Model.from_pretrained(p).config.fingerprint for n, p in again.model_dirs.items()} == fingerprints

    changed = tiny_versions()
    changed[2].max_steps = 3
    with pytest.raises(
        ValueError, match=r"v3-independent holds a model trained with other settings.*max_steps: saved 2"
    ):
        run_series(changed, tmp_path, **kwargs)
    changed = tiny_versions()
    changed[1].method_config = {"old_match_weight": 1.0}  # only the BT² step of v2 differs
    with pytest.raises(ValueError, match=r"v2 holds .*method_config.old_match_weight: saved 5.0, asked 1.0"):
        run_series(changed, tmp_path, **kwargs)
