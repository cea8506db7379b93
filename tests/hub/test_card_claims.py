"""Cards say exactly what was measured: compatible claims only for passing entries, each metric's outcome and margin
for a failing one, no backward-compatible claim for old or independent models, and pipeline sections that survive
`bt2 card` and `bt2 push`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import HfApi

from bt2_hf import BT2Config, fingerprint_model
from bt2_hf.cli.card import main as card_main
from bt2_hf.cli.push import main as push_main
from bt2_hf.experiments.cards import CardSection, write_pipeline_card
from bt2_hf.hub import declare_compatibility, render_model_card

from .conftest import FAKE_DATASET, FAKE_RESULTS, make_bt2_model, make_old_model

CLAIMS = ("need no re-embedding", "Measured compatible with", "| ✅ compatible |", "Search an old gallery")
SECTION = CardSection(
    pipeline="demo", name="verdict", heading="Demo verdict", text="**Demo verdict:** do not upgrade."
)


def _measured(new, old, results, old_name="org/old", local_path=None):
    declare_compatibility(new.config, old, method="bt2", metrics=results, dataset=FAKE_DATASET, name_or_path=old_name,
                          query_fingerprint=fingerprint_model(new), local_path=local_path)  # fmt: skip


def test_a_failing_entry_makes_no_compatible_claim_and_shows_each_metric(tmp_path):
    new, old = make_bt2_model(), make_old_model()
    worse = json.loads(json.dumps(FAKE_RESULTS))
    worse["results"]["new/old"]["top1"] = 50.0  # top-1 fails, mAP still passes
    _measured(new, old, worse)
    new.save_pretrained(tmp_path / "new")
    text = render_model_card(BT2Config.from_pretrained(tmp_path / "new"), repo_id="org/new").text
    for claim in CLAIMS:
        assert claim not in text
    assert not re.search(r"\b(a|an) backward-compatible", text, re.IGNORECASE)
    assert "**Not compatible** with `org/old`" in text and "❌ not compatible" in text
    assert "❌ fail: top-1 ❌ 50.00 ≤ 58.30, margin -8.30; mAP ✅ 33.50 > 31.20, margin +2.30" in text
    assert "criterion FAILED: top-1 FAILS (-8.30), mAP passes (+2.30)" in text
    assert "Compatible prefix" not in text


def test_a_passing_entry_is_claimed(tmp_path):
    new, old = make_bt2_model(), make_old_model()
    _measured(new, old, FAKE_RESULTS, old_name="org/old", local_path="runs/old")
    text = render_model_card(new.config, repo_id="org/new").text
    assert "A backward-compatible image embedding model" in text and "✅ compatible" in text
    assert "`org/old` (not yet pushed; local copy `runs/old`)" in text
    assert "✅ pass: top-1 ✅ 61.00 > 58.30, margin +2.70; mAP ✅ 33.50 > 31.20, margin +2.30" in text


def test_old_and_independent_models_are_not_called_backward_compatible():
    for model in (make_old_model(), make_bt2_model()):
        model.config.training = {"method": "independent"}
        model.config.compatible_with = []
        text = render_model_card(model.config, repo_id="org/m").text
        assert not re.search(r"\b(a|an) backward-compatible", text, re.IGNORECASE)
        assert "independent training (no backward-compatibility objective)" in text
        for claim in CLAIMS:
            assert claim not in text


def _pipeline_checkpoint(tmp_path: Path) -> Path:
    new, old = make_bt2_model(), make_old_model()
    _measured(new, old, FAKE_RESULTS)
    new.save_pretrained(tmp_path / "ckpt")
    write_pipeline_card(tmp_path / "ckpt", repo_id="org/new", section=SECTION)
    return tmp_path / "ckpt"


def test_bt2_card_keeps_the_pipeline_section(tmp_path):
    checkpoint = _pipeline_checkpoint(tmp_path)
    assert card_main([str(checkpoint)]) == 0
    assert card_main([str(checkpoint), "--output", str(tmp_path / "elsewhere.md")]) == 0
    for card in (checkpoint / "README.md", tmp_path / "elsewhere.md"):
        text = card.read_text()
        assert text.count("## Demo verdict") == 1 and "do not upgrade" in text
        assert text.index("## Demo verdict") < text.index("## Compatible with")


def test_push_keeps_the_pipeline_section(hub, tmp_path):
    checkpoint = _pipeline_checkpoint(tmp_path)
    api = HfApi(endpoint=hub.url, token=hub.token)
    for _ in range(2):  # the first push (no card on the Hub) and a second one (refreshing the Hub's card)
        assert push_main([str(checkpoint), "bt2-tester/with-verdict", "--token", hub.token]) == 0
        card = Path(api.hf_hub_download("bt2-tester/with-verdict", "README.md", cache_dir=hub.cache_dir)).read_text()
        assert card.count("## Demo verdict") == 1 and "do not upgrade" in card
