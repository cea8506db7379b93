"""A series re-run with one version changed: ``retrain_changed`` retrains that version and every version trained
against it, and reuses the rest (the reference fingerprints in ``config.training`` say which)."""

from __future__ import annotations

import json

import pytest

from bt2_hf.cli.series import build_parser
from bt2_hf.experiments.series import SeriesVersion, run_series
from tests.experiments.test_stages import CNN, three_bands


def versions(v2_old_match_weight: float = 5.0) -> list[SeriesVersion]:
    common = dict(backbone_type="small_cnn", backbone_config=CNN, max_steps=2, batch_size=16)
    return [
        SeriesVersion("v1", feature_dim=8, class_subset="0-1", **common),
        SeriesVersion(
            "v2", feature_dim=8, extra_dim=4, method_config={"old_match_weight": v2_old_match_weight}, **common
        ),  # fmt: skip
        SeriesVersion("v3", feature_dim=10, extra_dim=6, **common),
    ]


def run_ids(root) -> dict[str, str]:
    return {p.name: json.loads((p / "run.json").read_text())["run_id"] for p in sorted(root.iterdir()) if p.is_dir()}


@pytest.mark.slow
def test_retrain_changed_retrains_the_changed_version_and_its_dependants_only(tmp_path):
    kwargs = dict(train_data=three_bands(48, seed=0), eval_data=three_bands(30, seed=1), disable_tqdm=True)
    run_series(versions(), tmp_path, **kwargs)
    before = run_ids(tmp_path)
    assert set(before) == {"v1", "v2-independent", "v2", "v3-independent", "v3"}
    result = run_series(versions(v2_old_match_weight=7.0), tmp_path, retrain_changed=True, **kwargs)
    after = run_ids(tmp_path)
    reused = {name for name in before if after[name] == before[name]}
    # v2 changed; v3 was trained against the old v2, so it is retrained too; the independent twins and v1 are not
    assert reused == {"v1", "v2-independent", "v3-independent"}
    assert result.lineage["v3"][0]["status"] == "measured"
    card = (tmp_path / "v3" / "README.md").read_text()
    assert card.count("<!-- bt2_series:begin role -->") == 1
    assert "**v3** is version 3 of the series v1 → v2 → v3: a BT² step on v2, 16-d" in card


def test_cli_flag_has_both_spellings():
    parser = build_parser()
    assert parser.parse_args(["f.yaml", "--retrain_changed"]).retrain_changed
    assert parser.parse_args(["f.yaml", "--retrain-changed"]).retrain_changed
