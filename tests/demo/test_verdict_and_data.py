"""The demo's verdict and update gain (pure functions, exact values) and its data sources (no training)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bt2_hf.errors import BT2InputError
from bt2_hf.experiments.demo import DemoSize, _patch_size, verdict
from bt2_hf.experiments.demo_data import dataset_slug, load_demo_data, split_off
from bt2_hf.retrieval.compatibility import update_gain_or_reason
from tests.demo.synthetic import CLASS_NAMES, write_idx, write_texture_idx


def _metrics(old_old, new_old, new_new):
    return {
        "old/old": {"top1": old_old[0], "mAP": old_old[1]},
        "new/old": {"top1": new_old[0], "mAP": new_old[1]},
        "new/new": {"top1": new_new[0], "mAP": new_new[1]},
    }


def test_update_gain_is_na_without_an_improvement():
    """The one definition (retrieval/compatibility.py), which the demo and every report use."""
    assert update_gain_or_reason(0.60, 0.50, 0.70) == (0.5, None)
    # independent 59.3 < old 68.3 once gave "+722 %" from a negative denominator.
    gain, reason = update_gain_or_reason(0.444, 0.683, 0.593)
    assert gain is None
    assert reason == (
        "n/a: the independent new model is no better than the old one (59.30 ≤ 68.30), so there is no improvement "
        "to carry over"
    )
    assert update_gain_or_reason(0.70, 0.683, 0.683)[0] is None  # a zero denominator too


def test_verdicts():
    independent = {"top1": 78.0, "mAP": 68.0}
    compatible = verdict(_metrics((70.0, 41.0), (71.5, 52.25), (78.5, 70.0)), independent, "bt2")
    assert compatible == {
        "status": "compatible",
        "message": "compatible: new → old beats old → old by top-1 +1.50 points, mAP +11.25 points; its queries may "
        "search the old gallery",
        "judged_on": "top1",
    }
    failing = verdict(_metrics((70.97, 41.79), (70.59, 52.49), (78.45, 70.6)), independent, "bt2")
    assert failing["status"] == "not_compatible"
    assert failing["judged_on"] == "top1"
    assert failing["message"].startswith("not compatible: new → old top-1 70.59 ≤ old → old 70.97;")
    on_map = verdict(_metrics((70.0, 52.0), (71.0, 50.0), (78.0, 70.0)), independent, "bct")
    assert (on_map["status"], on_map["judged_on"]) == ("not_compatible", "mAP")
    # The run: the independent ViT (59.3) weaker than the old CNN (68.3).
    weaker = verdict(_metrics((68.3, 40.0), (44.4, 30.0), (60.0, 50.0)), {"top1": 59.3, "mAP": 50.0}, "bt2")
    assert weaker == {
        "status": "do_not_upgrade",
        "message": "the new model is not better than the old one on this data: do not upgrade (new/new top-1 59.30 ≤ "
        "old/old 68.30)",
        "judged_on": "top1",
    }
    # An independent model is never compatible, whatever the numbers.
    assert verdict(_metrics((50.0, 40.0), (60.0, 45.0), (78.0, 68.0)), independent, "independent")["status"] == (
        "not_compatible"
    )


def test_patch_size_fits_the_image():
    assert _patch_size(28, 7) == 7
    assert _patch_size(32, 7) == 8
    assert _patch_size(16, 7) == 4


def test_demo_size_checks_its_budget():
    with pytest.raises(ValueError, match="new_steps must be positive"):
        DemoSize(new_steps=0)
    with pytest.raises(ValueError, match="train_fraction"):
        DemoSize(train_fraction=0.0)


def test_idx_directory_names_and_class_names(tmp_path):
    data = load_demo_data(write_texture_idx(tmp_path / "Textures Ten"))
    assert (data.name, data.slug) == ("Textures Ten", "textures-ten")
    assert data.train.class_names == list(CLASS_NAMES)
    assert (len(data.train), len(data.test), data.test_split) == (400, 120, "test")
    # Without class_names.txt an IDX set (MNIST, KMNIST …) has only class ids; the name can be given.
    plain = load_demo_data(write_texture_idx(tmp_path / "plain", class_names=False), dataset_name="My digits")
    assert plain.train.class_names == [str(i) for i in range(10)]
    assert plain.slug == "my-digits"


def test_imagefolder_without_test_split_holds_out_a_fifth(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(10):
            pixels = rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    data = load_demo_data(root)
    assert data.name == "pets"
    assert data.train.class_names == ["cat", "dog"]
    assert (data.num_channels, data.image_size) == (3, 12)
    assert (len(data.train), len(data.test)) == (16, 4)
    assert data.test_split.startswith("held out: 20% of train")
    assert np.bincount(data.test.labels.numpy()).tolist() == [2, 2]


def test_saved_dataset_with_class_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})

    def split(count):
        images = [Image.fromarray(rng.integers(0, 255, size=(8, 8), dtype=np.uint8)) for _ in range(count)]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(count)]}, features=features)

    datasets.DatasetDict({"train": split(9), "test": split(6)}).save_to_disk(str(tmp_path / "letters"))
    data = load_demo_data(tmp_path / "letters")
    assert (data.name, data.train.class_names, data.test_split) == ("letters", ["a", "b", "c"], "test")
    assert (data.num_channels, len(data.train), len(data.test)) == (1, 9, 6)


def test_split_off_is_disjoint_and_class_balanced(tmp_path):
    data = load_demo_data(write_texture_idx(tmp_path / "t"))
    rest, held = split_off(data.train, 0.25, seed=3)
    assert (len(rest), len(held)) == (300, 100)
    assert np.bincount(held.labels.numpy()).tolist() == [10] * 10
    rows = {tuple(image.flatten().tolist()) for image in held.images}
    assert not rows & {tuple(image.flatten().tolist()) for image in rest.images}


def test_dataset_slug_refuses_a_name_without_letters():
    assert dataset_slug("Fashion-MNIST") == "fashion-mnist"
    with pytest.raises(ValueError, match="--dataset_name"):
        dataset_slug("***")


def test_idx_set_with_more_classes_and_another_size(tmp_path):
    directory = tmp_path / "glyphs"
    directory.mkdir()
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 12
    write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 255, size=(24, 16, 16)))
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels)
    (directory / "class_names.txt").write_text("\n".join(f"glyph {i}" for i in range(12)), encoding="utf-8")
    data = load_demo_data(directory)
    assert (data.train.num_classes, data.image_size, data.num_channels) == (12, 16, 1)
    assert data.train.class_names[11] == "glyph 11"
    assert len(data.train) + len(data.test) == 24  # no t10k files: a fifth held out as the test split
    # A label beyond the names is refused, naming the file.
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.where(labels == 11, 12, labels))
    with pytest.raises(BT2InputError, match="train-labels-idx1-ubyte.gz.*label 12 at row 11"):
        load_demo_data(directory)


def test_bt2_matches_its_feature_only_when_it_trains_from_scratch():
    """Fine-tuning the independent model, f starts as its embedding and is not matched to it; from scratch, BT² keeps
    the research code's new-match weight; an explicit weight wins either way."""
    from bt2_hf.experiments.demo import _method_config

    assert _method_config("bt2", DemoSize())["new_match_weight"] == 0.0
    assert _method_config("bt2", DemoSize(start_from_independent=False))["new_match_weight"] == 1.0
    assert (
        _method_config("bt2", DemoSize(new_match_weight=0.5, start_from_independent=False))["new_match_weight"] == 0.5
    )
    assert DemoSize.full().new_match_weight == 1.0
