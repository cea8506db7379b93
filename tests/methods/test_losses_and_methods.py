"""The loss functions and the methods' loss hooks against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from bt2_hf import BT2Output
from bt2_hf.losses import classification_loss, cosine_matching_loss, influence_loss, prototype_logits
from bt2_hf.methods import BCTConfig, BT2MethodConfig, get_method, list_methods


def unit(rows):
    tensor = torch.tensor(rows, dtype=torch.float32)
    return tensor / tensor.norm(dim=1, keepdim=True)


def test_registry_lists_the_three_methods_with_metadata():
    assert {"independent", "bct", "bt2"} <= set(list_methods())
    bt2 = get_method("bt2")
    assert bt2.requires == ("old", "independent")
    assert bt2.paper["arxiv_id"] == "2211.03989" and "@inproceedings" in bt2.paper["citation"]
    assert get_method("bct").requires == ("old",)
    assert get_method("independent").requires == ()
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="old_match_weight must be >= 0"):
        BT2MethodConfig(old_match_weight=-1)


def test_defaults_follow_the_paper():
    config = BT2MethodConfig()
    assert (config.influence_weight, config.old_match_weight, config.new_match_weight) == (10.0, 5.0, 1.0)
    assert config.label_smoothing == 0.0
    assert BCTConfig().influence_weight == 10.0 and BCTConfig().label_smoothing == 0.1


def test_bt2_loss_equals_hand_computation():
    # A fixed batch of 2 samples, 3 classes, d_old = 2, feature dim 2.
    compatible = unit([[3.0, 4.0], [1.0, 0.0]])  # b̂
    features = unit([[0.0, 1.0], [1.0, 1.0]])  # f̂
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    prototypes = torch.tensor([[0.6, 0.2], [0.0, 0.9], [-0.5, 0.1]])  # W_o: not unit rows
    old_targets = unit([[1.0, 1.0], [0.0, 1.0]])
    new_targets = unit([[0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    outputs = BT2Output(
        embeddings=torch.zeros(2, 3), compatible_embeddings=compatible, features=features, logits=logits
    )
    method = get_method("bt2", {"influence_weight": 10.0, "old_match_weight": 5.0, "new_match_weight": 1.0})
    method.prepare(prototypes)
    losses = method.compute_loss(outputs, {"old": old_targets, "independent": new_targets}, labels)

    def ce(row, label):
        return -(row[label] - math.log(sum(math.exp(v) for v in row)))

    b = compatible.tolist()
    w = prototypes.tolist()
    scores = [[sum(bi * wi for bi, wi in zip(b[i], w[c])) for c in range(3)] for i in range(2)]
    expected_cls = (ce(logits[0].tolist(), 0) + ce(logits[1].tolist(), 1)) / 2
    expected_inf = 10 * (ce(scores[0], 0) + ce(scores[1], 1)) / 2
    cos_old = [sum(x * y for x, y in zip(b[i], old_targets[i].tolist())) for i in range(2)]
    cos_new = [sum(x * y for x, y in zip(features[i].tolist(), new_targets[i].tolist())) for i in range(2)]
    expected_old = 5 * (1 - sum(cos_old) / 2)
    expected_new = 1 * (1 - sum(cos_new) / 2)
    assert set(losses) == {"classification_loss", "influence_loss", "old_match_loss", "new_match_loss"}
    assert losses["classification_loss"].item() == pytest.approx(expected_cls, abs=1e-6)
    assert losses["influence_loss"].item() == pytest.approx(expected_inf, abs=1e-5)
    assert losses["old_match_loss"].item() == pytest.approx(expected_old, abs=1e-6)
    assert losses["new_match_loss"].item() == pytest.approx(expected_new, abs=1e-6)


def test_bt2_ancestor_prefixes_get_their_own_influence_and_match_losses():
    # d_old = 3 whose first 2 dims are an older version's space (a series step v2 -> v3).
    compatible = unit([[3.0, 4.0, 12.0], [1.0, 0.0, 1.0]])
    old_targets = unit([[6.0, 8.0, -1.0], [0.0, 2.0, 1.0]])
    prototypes = torch.tensor([[0.6, 0.2, 0.3], [0.0, 0.9, -0.2]])
    labels = torch.tensor([0, 1])
    outputs = BT2Output(
        embeddings=torch.zeros(2, 4), compatible_embeddings=compatible, features=unit([[1.0], [1.0]]),
        logits=torch.zeros(2, 2),
    )  # fmt: skip
    config = {"influence_weight": 2.0, "old_match_weight": 3.0, "influence_scale": 4.0, "ancestor_prefix_dims": [2]}
    method = get_method("bt2", config)
    method.prepare(prototypes)
    losses = method.compute_loss(outputs, {"old": old_targets, "independent": unit([[1.0], [1.0]])}, labels)

    prefix = [[0.6, 0.8], [1.0, 0.0]]  # b̂[:2] re-normalised (by hand)
    # φ_old[:2] re-normalised is [[0.6, 0.8], [0.0, 1.0]]: sample 0 matches exactly, sample 1 is orthogonal
    assert losses["ancestor_match_loss"].item() == pytest.approx(3.0 * (1 - (1.0 + 0.0) / 2), abs=1e-6)
    w = [[0.6, 0.2], [0.0, 0.9]]
    scores = [[4.0 * sum(a * b for a, b in zip(prefix[i], w[c])) for c in range(2)] for i in range(2)]
    ce = [math.log(sum(math.exp(v) for v in scores[i])) - scores[i][label] for i, label in enumerate([0, 1])]
    assert losses["ancestor_influence_loss"].item() == pytest.approx(2.0 * sum(ce) / 2, abs=1e-5)

    without = get_method("bt2", {**config, "ancestor_prefix_dims": []})
    without.prepare(prototypes)
    plain = without.compute_loss(outputs, {"old": old_targets, "independent": unit([[1.0], [1.0]])}, labels)
    assert "ancestor_match_loss" not in plain  # a two-model update is unchanged
    for key in plain:
        assert plain[key].item() == pytest.approx(losses[key].item())

    with pytest.raises(ValueError, match="distinct positive"):
        BT2MethodConfig(ancestor_prefix_dims=[2, 2])
    with pytest.raises(ValueError, match="not shorter than the old model's 3-d"):
        get_method("bt2", {"ancestor_prefix_dims": [3]}).build_config_overrides({"old": 3, "independent": 2}, None)


def test_bct_influence_uses_only_the_old_prefix_of_a_wider_embedding():
    embeddings = unit([[1.0, 2.0, 5.0], [2.0, -1.0, 7.0]])  # 3-d new, 2-d old
    prototypes = torch.tensor([[0.5, 0.5], [-0.5, 0.2]])
    padded = torch.cat([prototypes, torch.zeros(2, 1)], dim=1)  # BCT's zero-padded W_o
    labels = torch.tensor([1, 0])
    expected = F.cross_entropy(embeddings @ padded.T, labels, label_smoothing=0.1)
    assert influence_loss(embeddings, prototypes, labels, 0.1).item() == pytest.approx(expected.item(), abs=1e-6)
    method = get_method("bct")
    method.prepare(prototypes)
    logits = torch.randn(2, 2)
    losses = method.compute_loss(BT2Output(embeddings=embeddings, logits=logits), {}, labels)
    assert losses["influence_loss"].item() == pytest.approx(10 * expected.item(), abs=1e-5)
    assert losses["classification_loss"].item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item(), abs=1e-6
    )


def test_loss_helpers_check_shapes_and_are_float32():
    with pytest.raises(ValueError, match="at least as wide"):
        prototype_logits(torch.randn(2, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="Cannot match"):
        cosine_matching_loss(torch.randn(2, 3), torch.randn(2, 4))
    x = unit([[1.0, 0.0]]).bfloat16()
    assert cosine_matching_loss(x, x).dtype == torch.float32
    assert cosine_matching_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert classification_loss(torch.zeros(1, 4).half(), torch.tensor([0])).item() == pytest.approx(math.log(4))


def test_method_needs_prototypes():
    with pytest.raises(ValueError, match="prototypes"):
        get_method("bt2").prepare(None)


def test_influence_scale_is_an_inverse_temperature():
    embeddings = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    prototypes = torch.randn(3, 4) * 0.3
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = torch.nn.functional.cross_entropy(8.0 * embeddings @ prototypes.T, labels)
    assert torch.allclose(influence_loss(embeddings, prototypes, labels, scale=8.0), expected)


@pytest.mark.parametrize(
    ("method", "config", "message"),
    [
        ("bt2", {"feature_scale": 0.0}, "feature_scale must be positive"),
        ("bt2", {"extra_dim": -1}, "extra_dim must be >= 0"),
        ("bt2", {"influence_scale": 0.0}, "influence_scale must be positive"),
        ("bct", {"influence_scale": -1.0}, "influence_scale must be positive"),
        ("bct", {"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ("independent", {"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 1\)"),
        ("bt2", {"new_match_weight": -0.5}, "new_match_weight must be >= 0"),
        ("bct", {"influence_weight": -0.5}, "influence_weight must be >= 0"),
    ],
)
def test_bad_method_configs_are_refused(method, config, message):
    with pytest.raises(ValueError, match=message):
        get_method(method, config)


def test_boundary_method_configs_are_accepted():
    config = get_method("bt2", {"label_smoothing": 0.0, "old_match_weight": 0.0, "extra_dim": 0}).config
    assert (config.label_smoothing, config.old_match_weight, config.extra_dim) == (0.0, 0.0, 0)


def test_only_the_prototype_methods_need_prototypes():
    for name in ("bt2", "bct"):
        with pytest.raises(ValueError, match=f"Method '{name}' needs the old model's class prototypes"):
            get_method(name).prepare(None)
    independent = get_method("independent")
    independent.prepare(None)
    assert independent.prototypes is None


def test_head_overrides_of_each_method():
    assert get_method("bct").build_config_overrides({"old": 16}, None) == {
        "head_type": "linear", "embedding_dim": 16, "compatible_dim": 16,
    }  # fmt: skip
    assert get_method("bct").build_config_overrides({"old": 16}, 24)["embedding_dim"] == 24
    with pytest.raises(ValueError, match=r"BCT needs an embedding at least as wide as the old model's \(16\)"):
        get_method("bct").build_config_overrides({"old": 16}, 8)
    assert get_method("bt2", {"extra_dim": 8}).build_config_overrides({"old": 16, "independent": 24}, None) == {
        "head_type": "basis_transformation", "feature_dim": 24, "old_embedding_dim": 16, "extra_dim": 8,
        "feature_scale": 2.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="independent model's width \\+ extra_dim = 24 \\+ 8"):
        get_method("bt2", {"extra_dim": 8}).build_config_overrides({"old": 16, "independent": 24}, 30)


def _smoothed_cross_entropy(logits, labels, smoothing):
    """Hand-written label-smoothed cross-entropy: target (1 − ε) on the label plus ε / C on every class."""
    total = 0.0
    for row, label in zip(logits, labels):
        log_z = math.log(sum(math.exp(v) for v in row))
        total -= sum(((1 - smoothing) * (c == label) + smoothing / len(row)) * (v - log_z) for c, v in enumerate(row))
    return total / len(labels)


@pytest.mark.parametrize("method", ["independent", "bct", "bt2"])
def test_every_method_applies_its_label_smoothing_to_the_classification_loss(method):
    logits = [[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]]
    labels = [2, 1]
    outputs = BT2Output(
        embeddings=unit([[1.0, 2.0, 2.0], [2.0, 1.0, 2.0]]), compatible_embeddings=unit([[1.0, 2.0], [2.0, 1.0]]),
        features=unit([[1.0, 0.0], [0.0, 1.0]]), logits=torch.tensor(logits),
    )  # fmt: skip
    instance = get_method(method, {"label_smoothing": 0.3})
    instance.prepare(torch.tensor([[0.5, 0.5], [-0.5, 0.2], [0.1, 0.9]]) if instance.uses_prototypes else None)
    targets = {"old": unit([[1.0, 1.0], [1.0, -1.0]]), "independent": unit([[1.0, 1.0], [1.0, -1.0]])}
    losses = instance.compute_loss(outputs, targets, torch.tensor(labels))
    expected = _smoothed_cross_entropy(logits, labels, 0.3)
    assert losses["classification_loss"].item() == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(_smoothed_cross_entropy(logits, labels, 0.0), abs=1e-3)


def test_cosine_matching_normalises_both_sides():
    predictions = torch.tensor([[3.0, 4.0], [0.0, -2.0]])  # norms 5 and 2
    targets = torch.tensor([[8.0, 6.0], [1.0, 0.0]])  # norms 10 and 1
    # cosines: (24 + 24) / 50 = 0.96 and 0 → loss 1 − 0.48
    assert cosine_matching_loss(predictions, targets).item() == pytest.approx(0.52, abs=1e-6)


def test_bt2_pair_image_old_contrastive_term_is_off_by_default_and_weighted_when_on():
    from types import SimpleNamespace

    from bt2_hf.losses import contrastive_loss

    generator = torch.Generator().manual_seed(0)

    def tower():
        return SimpleNamespace(embeddings=torch.randn(6, 12, generator=generator),
                               compatible_embeddings=torch.randn(6, 8, generator=generator),
                               features=torch.randn(6, 10, generator=generator), logits=None)  # fmt: skip

    outputs = SimpleNamespace(image=tower(), text=tower())
    targets = {"old": torch.randn(6, 8, generator=generator), "independent_image": torch.randn(6, 10, generator=generator),
               "independent_text": torch.randn(6, 10, generator=generator)}  # fmt: skip
    default = get_method("bt2_pair").compute_loss(outputs, targets, None)
    assert "image_old_contrastive_loss" not in default
    weighted = get_method("bt2_pair", {"image_old_contrastive_weight": 2.0}).compute_loss(outputs, targets, None)
    expected = 2.0 * contrastive_loss(outputs.image.compatible_embeddings, targets["old"], temperature=0.05)
    torch.testing.assert_close(weighted["image_old_contrastive_loss"], expected)
    # every other term is unchanged
    assert {k: v for k, v in weighted.items() if k != "image_old_contrastive_loss"}.keys() == default.keys()
    for key in default:
        torch.testing.assert_close(weighted[key], default[key])


def test_class_contrastive_loss_equals_a_plain_loop_and_rewards_class_order():
    from bt2_hf.losses import class_contrastive_loss

    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    q, k = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    expected = 0.0
    for i in range(7):
        scores = [math.exp(float(q[i] @ k[j]) / 0.2) for j in range(7)]
        expected -= math.log(sum(s for j, s in enumerate(scores) if labels[j] == labels[i]) / sum(scores))
    assert float(class_contrastive_loss(queries, keys, labels, temperature=0.2)) == pytest.approx(
        expected / 7, rel=1e-5
    )
    # queries at their class's keys score lower than the same queries shuffled across classes
    centres = F.normalize(torch.randn(3, 5, generator=generator), dim=-1)
    ordered = class_contrastive_loss(centres[labels], centres[labels], labels)
    shuffled = class_contrastive_loss(centres[labels.roll(2)], centres[labels], labels)
    assert float(ordered) < float(shuffled)
    with pytest.raises(ValueError, match="temperature"):
        class_contrastive_loss(queries, keys, labels, temperature=0)


def test_bt2_adds_the_old_class_contrastive_term_only_when_weighted():
    method = get_method("bt2", {"old_class_contrastive_weight": 0.5})
    off = get_method("bt2")
    generator = torch.Generator().manual_seed(1)
    prototypes = F.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    method.prepare(prototypes)
    off.prepare(prototypes)
    outputs = BT2Output(
        embeddings=F.normalize(torch.randn(6, 6, generator=generator), dim=-1),
        compatible_embeddings=F.normalize(torch.randn(6, 4, generator=generator), dim=-1),
        features=F.normalize(torch.randn(6, 5, generator=generator), dim=-1),
        logits=torch.randn(6, 3, generator=generator),
    )
    targets = {"old": torch.randn(6, 4, generator=generator), "independent": torch.randn(6, 5, generator=generator)}
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    from bt2_hf.losses import class_contrastive_loss

    losses = method.compute_loss(outputs, targets, labels)
    expected = 0.5 * class_contrastive_loss(outputs.compatible_embeddings, targets["old"], labels, 0.1)
    torch.testing.assert_close(losses["old_class_contrastive_loss"], expected)
    assert "old_class_contrastive_loss" not in off.compute_loss(outputs, targets, labels)


def test_class_contrastive_loss_against_a_labelled_bank_equals_a_plain_loop():
    from bt2_hf.losses import class_contrastive_loss

    generator = torch.Generator().manual_seed(3)
    queries, bank = torch.randn(4, 5, generator=generator), torch.randn(9, 5, generator=generator)
    labels, bank_labels = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 2])
    q, k = F.normalize(queries, dim=-1), F.normalize(bank, dim=-1)
    expected = 0.0
    for i in range(4):
        scores = [math.exp(float(q[i] @ k[j]) / 0.05) for j in range(9)]
        expected -= math.log(sum(s for j, s in enumerate(scores) if bank_labels[j] == labels[i]) / sum(scores))
    loss = class_contrastive_loss(queries, bank, labels, temperature=0.05, key_labels=bank_labels)
    assert float(loss) == pytest.approx(expected / 4, rel=1e-5)
    with pytest.raises(ValueError, match="one label each"):
        class_contrastive_loss(queries, bank, labels, key_labels=bank_labels[:5])


def test_class_neighbour_means_equal_a_brute_force_search():
    from bt2_hf.methods.bt2 import class_neighbour_means

    generator = torch.Generator().manual_seed(4)
    table, labels = torch.randn(23, 6, generator=generator), torch.randint(0, 3, (23,), generator=generator)
    unit = F.normalize(table, dim=-1)
    result = class_neighbour_means(table, labels, num_neighbours=4, chunk_size=5)
    for row in range(23):
        same = [j for j in range(23) if labels[j] == labels[row]]
        nearest = sorted(same, key=lambda j: -float(unit[row] @ unit[j]))[:4]
        torch.testing.assert_close(result[row], F.normalize(unit[nearest].mean(0), dim=0))
    torch.testing.assert_close(class_neighbour_means(table, labels, 1), unit)  # itself is its nearest
    with pytest.raises(ValueError, match="num_neighbours"):
        class_neighbour_means(table, labels, 0)


def test_bt2_prepares_its_targets_from_the_stored_table_without_changing_it():
    table = torch.randn(12, 4, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(12) % 3
    before = table.clone()
    smoothed = get_method("bt2", {"old_match_target": "class_neighbours", "old_match_neighbours": 3})
    tables = smoothed.prepare_targets({"old": table, "independent": table}, labels)
    assert tables["independent"] is table and not torch.equal(tables["old"], F.normalize(table, dim=-1))
    torch.testing.assert_close(table, before)  # the stored table may be shared through the feature cache
    bank = get_method("bt2", {"old_class_contrastive_weight": 1.0, "old_class_contrastive_keys": "training_set"})
    assert bank.prepare_targets({"old": table}, labels)["old"] is table
    bank.prepare(F.normalize(torch.randn(3, 4), dim=-1))
    outputs = BT2Output(
        embeddings=F.normalize(torch.randn(5, 6), dim=-1), compatible_embeddings=F.normalize(torch.randn(5, 4), dim=-1),
        features=F.normalize(torch.randn(5, 5), dim=-1), logits=torch.randn(5, 3),
    )  # fmt: skip
    batch_labels = torch.tensor([0, 1, 2, 0, 1])
    from bt2_hf.losses import class_contrastive_loss

    losses = bank.compute_loss(outputs, {"old": table[:5], "independent": torch.randn(5, 5)}, batch_labels)
    expected = class_contrastive_loss(outputs.compatible_embeddings, table, batch_labels, 0.1, key_labels=labels)
    torch.testing.assert_close(losses["old_class_contrastive_loss"], expected)
    for settings, message in (({"old_match_target": "class_neighbours"}, "precomputed"),
                              ({"old_class_contrastive_weight": 1.0, "old_class_contrastive_keys": "training_set"},
                               "precomputed")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            get_method("bt2", settings).prepare_targets({}, labels)
    with pytest.raises(ValueError, match="old_match_target"):
        get_method("bt2", {"old_match_target": "nearest"})
