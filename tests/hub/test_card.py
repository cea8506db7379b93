"""Model cards rendered from the metadata: YAML keys, sections, model-index, refresh that keeps user sections, CLI."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard, metadata_load

from bt2_hf import BT2Config, BT2Model, fingerprint_model
from bt2_hf.cli.card import main as card_main
from bt2_hf.hub import create_or_update_model_card, declare_compatibility, render_model_card

from .conftest import FAKE_DATASET, FAKE_RESULTS


@pytest.fixture
def declared_pair(tmp_path, old_model, bt2_model):
    """An old model and a BT² model declared compatible with it (with fake metrics), both saved."""
    old_model.save_pretrained(tmp_path / "old")
    declare_compatibility(
        bt2_model.config,
        old_model,
        method="bt2",
        metrics=FAKE_RESULTS,
        dataset=FAKE_DATASET,
        name_or_path="org/tiny-old",
        revision="0123456789abcdef0123456789abcdef01234567",
        query_fingerprint=fingerprint_model(bt2_model),  # bound to the model saved below, as bt2 verify binds it
    )
    bt2_model.save_pretrained(tmp_path / "new")
    return tmp_path / "old", tmp_path / "new"


def test_card_yaml_and_sections(declared_pair):
    _, new_dir = declared_pair
    config = BT2Config.from_pretrained(new_dir)
    card = render_model_card(config, repo_id="org/tiny-bt2")
    data = card.data.to_dict()
    assert data["library_name"] == "bt2_hf"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert {"bt2_hf", "bt2", "backward-compatible-embeddings", "compatible-with-org-tiny-old"} <= set(data["tags"])
    assert "base_model" not in data  # the small CNN started from scratch
    bt2 = data["bt2"]
    assert bt2["fingerprint"] == config.fingerprint and bt2["embedding_dim"] == 20 and bt2["compatible_dim"] == 16
    assert bt2["compatible_with"][0]["name_or_path"] == "org/tiny-old"
    assert bt2["compatible_with"][0]["criterion"]["passed"] is True
    text = card.text
    for heading in ("## Compatible with", "## Compatibility results", "## How to use", "## Training", "## Citation"):
        assert heading in text
    passing = "✅ pass: top-1 ✅ 61.00 > 58.30, margin +2.70; mAP ✅ 33.50 > 31.20, margin +2.30"
    assert f"| new → old | 61.00 | 82.40 | 33.50 | {passing} |" in text
    assert "| old → old | 58.30 | 80.10 | 31.20 |" in text
    assert "`org/tiny-old` | `0123456789` |" in text and "| ✅ compatible |" in text
    assert 'AutoModel.from_pretrained("org/tiny-bt2")' in text and "import bt2_hf" in text
    assert "prefix_dim=prefix_dim" in text
    assert "| learning_rate | 0.01 |" in text
    assert "arXiv" in text and "2211.03989" in text and "2003.11942" in text
    assert "Shrivastava" in text and "Soatto" in text


def test_model_index_parses_with_huggingface_hub(tmp_path, declared_pair):
    _, new_dir = declared_pair
    path = create_or_update_model_card(new_dir, repo_id="org/tiny-bt2")
    assert path == new_dir / "README.md"
    card = ModelCard.load(path)
    results = {r.metric_name: r for r in card.data.eval_results}
    assert results["top-1 new→old"].metric_value == 61.0
    assert results["top-1 old→old"].metric_value == 58.3
    assert results["mAP new→new"].metric_value == 40.9
    assert results["top-1 new→old"].dataset_name == "synthetic"
    assert results["top-1 new→old"].task_type == "image-feature-extraction"
    assert results["top-1 new→old"].dataset_args == {
        "old_model": "org/tiny-old@0123456789abcdef0123456789abcdef01234567"
    }
    meta = metadata_load(path)
    assert meta["model-index"][0]["name"] == "org/tiny-bt2"
    assert meta["library_name"] == "bt2_hf" and "bt2" in meta


def test_card_metrics_override_and_text_pipeline_tag(tmp_path, tiny_backbones):
    backbone_type, backbone_config, _ = tiny_backbones["bert"]
    text_config = BT2Config(
        backbone_type=backbone_type, backbone_config=backbone_config, embedding_dim=16, base_model="org/minilm"
    )
    card = render_model_card(text_config, repo_id="org/text")
    assert card.data.pipeline_tag == "feature-extraction"
    assert card.data.base_model == "org/minilm"
    assert "No older model is declared" in card.text
    assert "model-index" not in card.data.to_dict()
    with pytest.raises(ValueError, match="declares no older model"):
        render_model_card(text_config, metrics=FAKE_RESULTS)


def test_refresh_keeps_user_sections(declared_pair):
    _, new_dir = declared_pair
    path = create_or_update_model_card(new_dir, repo_id="org/tiny-bt2")
    card = ModelCard.load(path)
    card.data.license = "apache-2.0"
    card.data.tags = [*card.data.tags, "my-own-tag"]
    text = str(card).replace(
        "<!-- bt2_hf:begin usage -->",
        "## Our deployment notes\n\nServed behind the search API.\n\n<!-- bt2_hf:begin usage -->",
    )
    text += "\n## Limitations\n\nTrained on synthetic data only.\n"
    path.write_text(text)

    better = json.loads(json.dumps(FAKE_RESULTS))
    better["results"]["new/old"]["top1"] = 65.5
    create_or_update_model_card(new_dir, repo_id="org/tiny-bt2", metrics=better)
    refreshed = path.read_text()
    assert "## Our deployment notes\n\nServed behind the search API." in refreshed
    assert "## Limitations\n\nTrained on synthetic data only." in refreshed
    assert refreshed.index("## Our deployment notes") < refreshed.index("## How to use")
    assert "65.50" in refreshed and "✅ pass: top-1 ✅ 65.50 > 58.30, margin +7.20" in refreshed
    assert refreshed.count("## Compatibility results") == 1 and refreshed.count("## Citation") == 1
    data = ModelCard.load(path).data
    assert data.license == "apache-2.0" and "my-own-tag" in data.tags and "bt2_hf" in data.tags
    assert {r.metric_name: r.metric_value for r in data.eval_results}["top-1 new→old"] == 65.5


def test_failed_criterion_is_shown(declared_pair):
    _, new_dir = declared_pair
    worse = json.loads(json.dumps(FAKE_RESULTS))
    worse["results"]["new/old"]["top1"] = 50.0
    card = render_model_card(BT2Config.from_pretrained(new_dir), repo_id="org/x", metrics=worse)
    assert "❌ fail: top-1 ❌ 50.00 ≤ 58.30, margin -8.30; mAP ✅ 33.50 > 31.20, margin +2.30" in card.text


def test_lineage_entries_are_listed(tmp_path, declared_pair):
    _, new_dir = declared_pair
    v2 = BT2Model.from_pretrained(new_dir)
    from .conftest import make_bt2_model

    v3 = make_bt2_model(seed=3, old_dim=20, feature_dim=20, extra_dim=4)
    declare_compatibility(v3.config, v2, method="bt2", name_or_path="org/tiny-bt2", revision="main")
    card = render_model_card(v3.config, repo_id="org/tiny-v3")
    assert "through `org/tiny-bt2` (lineage; measured link)" in card.text
    assert "| `org/tiny-old` |" in card.text and "| 16 |" in card.text and "| 20 |" in card.text


def test_card_cli(tmp_path, declared_pair, capsys):
    _, new_dir = declared_pair
    results = tmp_path / "results.json"
    results.write_text(json.dumps(FAKE_RESULTS))
    output = tmp_path / "CARD.md"
    assert card_main([str(new_dir), "--results", str(results), "--output", str(output), "--repo-id", "org/cli"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert ModelCard.load(output).data.library_name == "bt2_hf"
    assert card_main([str(tmp_path / "nowhere")]) == 1
    assert "no config.json" in capsys.readouterr().err
    # Through the `bt2` dispatcher too.
    from bt2_hf.cli.main import main as bt2_main

    assert bt2_main(["card", str(new_dir), "--output", str(tmp_path / "CARD2.md")]) == 0
    assert (tmp_path / "CARD2.md").is_file()
