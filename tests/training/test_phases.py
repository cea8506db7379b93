"""The trainer's phases and what they share: the feature cache of frozen models, and the method's target hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import CNN, quick_args

from bt2_hf.methods import register_method
from bt2_hf.methods.bt2 import BT2Method
from bt2_hf.training import DataArguments, ModelArguments, train
from bt2_hf.training.feature_cache import FROZEN_FEATURES, FeatureCache, content_hash


def test_feature_cache_keeps_the_most_recently_used_entries():
    cache = FeatureCache(capacity=2)
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return torch.tensor([value])

        return run

    assert cache.get_or_compute("a", compute(1)).item() == 1
    assert cache.get_or_compute("b", compute(2)).item() == 2
    assert cache.get_or_compute("a", compute(99)).item() == 1  # a hit: not recomputed, and now the newest
    cache.get_or_compute("c", compute(3))  # evicts "b", the least recently used
    assert cache.keys() == ["a", "c"] and calls == [1, 2, 3]
    with pytest.raises(ValueError, match="capacity"):
        FeatureCache(capacity=0)


def test_content_hash_tells_apart_values_shapes_and_dtypes():
    base = torch.arange(6, dtype=torch.float32)
    hashes = {
        content_hash([base]),
        content_hash([base.reshape(2, 3)]),
        content_hash([base.to(torch.float64)]),
        content_hash([base + 1]),
        content_hash([base, None]),
    }
    assert len(hashes) == 5
    assert content_hash([base.clone()]) == content_hash([base])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_stored_reference_targets_are_computed_once_and_change_nothing(tmp_path, data, references):
    """Two runs against the same old model on the same images share one stored table; the model a run trains is the
    same whether its table came from the cache or was computed."""
    FROZEN_FEATURES.clear()
    model_args = ModelArguments(backbone_config=CNN, embedding_dim=24, old_model=references["old"])
    runs = {}
    for name in ("first", "second"):
        runs[name] = train(model_args, DataArguments(), quick_args(tmp_path / name, "bct",
                           reference_targets="precomputed"), train_data=data)  # fmt: skip
    tables = [key for key in FROZEN_FEATURES.keys() if key[0] == "reference_table"]
    assert len(tables) == 1
    FROZEN_FEATURES.clear()
    fresh = train(model_args, DataArguments(), quick_args(tmp_path / "fresh", "bct", reference_targets="precomputed"),
                  train_data=data)  # fmt: skip
    for name, value in _weights(fresh).items():
        torch.testing.assert_close(_weights(runs["second"])[name], value, rtol=0, atol=0, msg=name)
    # other images: another table
    train(model_args, DataArguments(), quick_args(tmp_path / "other", "bct", reference_targets="precomputed"),
          train_data=(data[0].flip(-1), data[1]))  # fmt: skip
    assert len([key for key in FROZEN_FEATURES.keys() if key[0] == "reference_table"]) == 2


@register_method
class _NegatedTargetsBT2(BT2Method):
    """A method that changes its targets through the hook alone: BT² matching the old model's negated embedding."""

    name = "test_negated_targets_bt2"
    calls = 0

    def batch_targets(self, references, precomputed, images, rows):
        type(self).calls += 1
        return {name: -target for name, target in super().batch_targets(references, precomputed, images, rows).items()}


def test_a_method_changes_its_targets_by_overriding_one_hook(tmp_path, data, references):
    model_args = ModelArguments(backbone_config=CNN, old_model=references["old"],
                                independent_model=references["independent"])  # fmt: skip
    _NegatedTargetsBT2.calls = 0
    steps, accumulation = 3, 2
    negated = train(model_args, DataArguments(), quick_args(tmp_path / "negated", _NegatedTargetsBT2.name,
                    max_steps=steps, gradient_accumulation_steps=accumulation, per_device_train_batch_size=8),
                    train_data=data)  # fmt: skip
    assert _NegatedTargetsBT2.calls == steps * accumulation  # once per micro-batch
    plain = train(model_args, DataArguments(), quick_args(tmp_path / "plain", "bt2", max_steps=steps,
                  gradient_accumulation_steps=accumulation, per_device_train_batch_size=8),
                  train_data=data)  # fmt: skip
    config = json.loads((negated / "config.json").read_text())
    assert config["training"]["method"] == _NegatedTargetsBT2.name
    # BT²'s old-match term reads the per-row targets: the hook's targets are the ones the loss trained on
    negated_weights, plain_weights = _weights(negated), _weights(plain)
    assert set(negated_weights) == set(plain_weights)
    assert any(not torch.equal(negated_weights[name], plain_weights[name]) for name in plain_weights)


@register_method
class _StoredRolesBT2(BT2Method):
    """BT², recording which references' targets the trainer stored before training."""

    name = "test_stored_roles_bt2"
    stored: list[set[str]] = []
    embedded: list[set[str]] = []

    def batch_targets(self, references, precomputed, images, rows):
        type(self).stored.append(set(precomputed))
        targets = super().batch_targets(references, precomputed, images, rows)
        type(self).embedded.append(set(targets))
        return targets


@pytest.mark.parametrize(
    ("reference_targets", "stored"),
    [("online", set()), ("precomputed", {"old", "independent"}),
     ("old=online,independent=precomputed", {"independent"}), ("old=precomputed", {"old"})],
)  # fmt: skip
def test_reference_targets_store_the_tables_of_the_roles_they_name(tmp_path, data, references, reference_targets,
                                                                   stored):  # fmt: skip
    """One mode for every reference, or one per role (a role left out is online)."""
    model_args = ModelArguments(backbone_config=CNN, old_model=references["old"],
                                independent_model=references["independent"])  # fmt: skip
    _StoredRolesBT2.stored = []
    train(model_args, DataArguments(), quick_args(tmp_path / "run", _StoredRolesBT2.name, max_steps=2,
          reference_targets=reference_targets), train_data=data)  # fmt: skip
    assert _StoredRolesBT2.stored and all(roles == stored for roles in _StoredRolesBT2.stored)


@pytest.mark.parametrize("value", ["stored", "old=stored", "old=online,old=precomputed", "teacher=online", "old"])
def test_a_malformed_reference_targets_is_refused_with_the_accepted_forms(tmp_path, value):
    with pytest.raises(ValueError, match=r"reference_targets must be one of \['online', 'precomputed'\] or one mode"):
        quick_args(tmp_path, "bt2", reference_targets=value)


@pytest.mark.parametrize("reference_targets", ["online", "precomputed"])
def test_bt2_without_the_new_match_term_never_embeds_with_the_independent_model(tmp_path, data, references,
                                                                                reference_targets):  # fmt: skip
    """f is not matched, so the independent model only gives f's width and the starting weights: no table of its
    embeddings, no target per batch, no new-match term."""
    model_args = ModelArguments(backbone_config=CNN, old_model=references["old"], init_from_independent=True,
                                independent_model=references["independent"])  # fmt: skip
    _StoredRolesBT2.stored, _StoredRolesBT2.embedded = [], []
    out = train(model_args, DataArguments(), quick_args(tmp_path / "run", _StoredRolesBT2.name, max_steps=2,
                reference_targets=reference_targets), {"new_match_weight": 0.0}, train_data=data)  # fmt: skip
    assert _StoredRolesBT2.embedded and all(roles == {"old"} for roles in _StoredRolesBT2.embedded)
    assert all(roles == ({"old"} if reference_targets == "precomputed" else set()) for roles in _StoredRolesBT2.stored)
    entries = json.loads((out / "training_log.json").read_text())
    assert entries and all("new_match_loss" not in entry and "old_match_loss" in entry for entry in entries)


def test_a_towers_reference_takes_its_roles_mode(tmp_path):
    """A pair's frozen towers (``independent_image``, ``independent_text``) follow the mode of their role."""
    every = quick_args(tmp_path, "bt2", reference_targets="precomputed")
    assert every.reference_target_mode("independent_image") == "precomputed"
    by_role = quick_args(tmp_path, "bt2", reference_targets="independent=precomputed")
    assert [by_role.reference_target_mode(name) for name in ("independent_text", "old", "image")] == [
        "precomputed", "online", "online"
    ]  # fmt: skip
