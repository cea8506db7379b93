"""The procedural image–caption scenes: determinism, held-out combinations and phrasings, exact relevance."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from bt2_hf.errors import BT2InputError  # noqa: E402
from bt2_hf.experiments.scenes import (  # noqa: E402
    DEFAULT_HELD_OUT_PAIRS,
    POSITIONS,
    TEMPLATES,
    SceneConfig,
    generate_scenes,
    load_scenes,
    scene_config_of,
    scene_relevance,
)

TEST_ONLY_TEMPLATES = {t.name for t in TEMPLATES if t.test_only}


def _png_bytes(split) -> list[bytes]:
    return [row["bytes"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]


@pytest.fixture(scope="module")
def tiny():
    return generate_scenes(seed=0, preset="tiny")


def _reference_relevant(spec, objects) -> bool:
    """Brute force: some injective assignment of descriptions to objects satisfies every stated attribute."""
    if spec["count"] is not None and len(objects) != spec["count"]:
        return False
    for chosen in itertools.permutations(objects, len(spec["objects"])):
        if all(
            all(value is None or obj[name] == value for name, value in description.items())
            for description, obj in zip(spec["objects"], chosen)
        ):
            return True
    return False


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny):
    again = generate_scenes(seed=0, preset="tiny")
    other = generate_scenes(seed=1, preset="tiny")
    for split in ("train", "validation", "test"):
        assert _png_bytes(again[split]) == _png_bytes(tiny[split])
        assert again[split]["caption"] == tiny[split]["caption"]
        assert again[split]["attributes"] == tiny[split]["attributes"]
        assert again[split]["caption_attributes"] == tiny[split]["caption_attributes"]
        other_bytes = _png_bytes(other[split])
        assert sum(a != b for a, b in zip(other_bytes, _png_bytes(tiny[split]))) == len(other_bytes)
        assert other[split]["caption"] != tiny[split]["caption"]
    # Scene i depends only on (seed, split, i): a smaller set is a prefix of a larger one.
    smaller = generate_scenes(seed=0, num_train=5, num_validation=0, num_test=3)
    assert _png_bytes(smaller["train"]) == _png_bytes(tiny["train"])[:5]
    assert smaller["test"]["caption"] == tiny["test"]["caption"][:3]
    assert len(smaller["validation"]) == 0


def test_columns_images_and_settings(tiny):
    train = tiny["train"]
    assert [len(tiny[s]) for s in ("train", "validation", "test")] == [48, 16, 16]
    assert set(train.column_names) >= {"image", "caption", "attributes", "scene_id"}
    assert isinstance(train.features["image"], datasets.Image)
    image = np.asarray(train[0]["image"])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    scene_ids = [row for split in tiny.values() for row in split["scene_id"]]
    assert len(set(scene_ids)) == len(scene_ids) == 80
    json.dumps(train[0]["attributes"]), json.dumps(train[0]["caption_attributes"])
    assert scene_config_of(tiny) == SceneConfig(seed=0, num_train=48, num_validation=16, num_test=16)
    larger = generate_scenes(seed=0, num_train=2, num_validation=0, num_test=0, image_size=48)
    assert np.asarray(larger["train"][0]["image"]).shape == (48, 48, 3)
    for row in train:
        objects = row["attributes"]["objects"]
        assert 1 <= len(objects) <= 3
        positions = [obj["position"] for obj in objects]
        assert len(set(positions)) == len(positions)  # one object per grid cell
        assert positions == sorted(positions, key=POSITIONS.index)


def test_held_out_pairs_and_phrasings_never_appear_outside_test():
    scenes = generate_scenes(seed=3, num_train=400, num_validation=100, num_test=100)
    held_out = set(DEFAULT_HELD_OUT_PAIRS)
    for split in ("train", "validation"):
        rows = scenes[split]
        assert not any(rows["novel_pair"]) and not any(rows["novel_template"])
        assert not set(rows["template"]) & TEST_ONLY_TEMPLATES
        for attributes in rows["attributes"]:
            assert not {(o["shape"], o["colour"]) for o in attributes["objects"]} & held_out
        for caption in rows["caption"]:
            assert not any(f"{colour} {shape}" in caption for shape, colour in held_out)
    test = scenes["test"]
    # Both held-out kinds are drawn about half the time, and both flags are exact.
    assert 30 <= sum(test["novel_pair"]) <= 70 and 30 <= sum(test["novel_template"]) <= 70
    assert set(test["template"]) == {t.name for t in TEMPLATES}
    for row in test:
        assert row["novel_template"] == (row["template"] in TEST_ONLY_TEMPLATES)
        mentioned = {(o["shape"], o["colour"]) for o in row["caption_attributes"]["objects"]}
        assert row["novel_pair"] == bool(mentioned & held_out)
        pairs_in_image = {(o["shape"], o["colour"]) for o in row["attributes"]["objects"]}
        assert bool(pairs_in_image & held_out) == row["novel_pair"]


def test_captions_state_their_constraints_and_match_their_own_image(tiny):
    for split in tiny.values():
        relevance = scene_relevance(split["caption_attributes"], split["attributes"])
        assert relevance.diagonal().all()
        for row in split:
            caption = row["caption"]
            assert not any(f" a {vowel}" in f" {caption}" for vowel in "aeiou")  # "an orange", never "a orange"
            for description in row["caption_attributes"]["objects"]:
                assert description["shape"] in caption and description["colour"] in caption
                if description["size"] is not None:
                    assert description["size"] in caption
                if description["position"] is not None:
                    assert description["position"] in caption


def test_relevance_matches_brute_force_across_splits(tiny):
    captions = [*tiny["train"]["caption_attributes"], *tiny["test"]["caption_attributes"]]
    images = [*tiny["train"]["attributes"], *tiny["validation"]["attributes"], *tiny["test"]["attributes"]]
    relevance = scene_relevance(captions, images)
    expected = np.array([[_reference_relevant(c, i["objects"]) for i in images] for c in captions])
    np.testing.assert_array_equal(relevance, expected)
    assert relevance.sum() > len(captions)  # captions do describe other images too: retrieval has many positives


def _obj(shape, colour, size="small", position="centre"):
    return {"shape": shape, "colour": colour, "size": size, "position": position}


def test_relevance_on_hand_made_cases():
    images = [
        {"objects": [_obj("circle", "red", "large", "left")]},
        {"objects": [_obj("circle", "red", "small", "left"), _obj("square", "blue", "large", "right")]},
        {"objects": [_obj("circle", "red", position="top"), _obj("circle", "red", position="bottom")]},
        {"objects": [_obj("square", "blue"), _obj("circle", "green", position="top"), _obj("ring", "red", "large")]},
    ]
    any_size = {"size": None, "position": None}
    captions = [
        {"objects": [{"shape": "circle", "colour": "red", **any_size}], "count": None},  # "a red circle"
        {"objects": [_obj("circle", "red", "large", "left")], "count": None},  # every attribute
        {"objects": [{"shape": "circle", "colour": "red", **any_size}] * 2, "count": None},  # two distinct ones
        {"objects": [{"shape": "square", "colour": "blue", **any_size}], "count": 2},  # exactly two objects
        {"objects": [{"shape": None, "colour": "red", "size": "large", "position": None}], "count": None},
        {"objects": [{"shape": "circle", "colour": "purple"}], "count": None},  # a value no image has
        {"objects": [{"position": "left"}, {"colour": "blue"}], "count": None},  # partial keys
        {"objects": [], "count": 3},
        {"objects": [{"shape": "circle"}] * 4, "count": None},  # more descriptions than objects
    ]
    expected = [
        [1, 1, 1, 0],
        [1, 0, 0, 0],
        [0, 0, 1, 0],
        [0, 1, 0, 0],
        [1, 0, 0, 1],
        [0, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(scene_relevance(captions, images), np.array(expected, dtype=bool))
    with pytest.raises(ValueError, match="unknown attributes.*'material'"):
        scene_relevance([{"objects": [{"material": "wood"}], "count": None}], images)
    with pytest.raises(ValueError, match="'objects' list"):
        scene_relevance(captions, [["circle"]])


def test_save_and_load_round_trip(tmp_path, tiny):
    target = tmp_path / "scenes"
    written = generate_scenes(seed=0, num_train=6, num_validation=2, num_test=2, save_to=target)
    loaded = load_scenes(target)
    for split in ("train", "validation", "test"):
        assert (
            _png_bytes(loaded[split]) == _png_bytes(written[split]) == _png_bytes(tiny[split])[: len(written[split])]
        )
        assert loaded[split]["caption_attributes"] == written[split]["caption_attributes"]
    assert scene_config_of(loaded).num_train == 6
    (tmp_path / "other").mkdir()
    with pytest.raises(BT2InputError, match="not a scenes data set.*generate_scenes"):
        load_scenes(tmp_path / "other")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Unknown scenes preset"):
        generate_scenes(preset="huge")
    with pytest.raises(ValueError, match="image_size must be at least 24"):
        SceneConfig(image_size=8)
    with pytest.raises(ValueError, match="held-out pair \\('circle', 'pink'\\)"):
        SceneConfig(held_out_pairs=[("circle", "pink")])
    with pytest.raises(ValueError, match="max_objects"):
        SceneConfig(min_objects=3, max_objects=2)
