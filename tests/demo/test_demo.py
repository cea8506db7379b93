"""A tiny `bt2 demo` on synthetic Fashion-MNIST-shaped IDX files: output files, their schema, and the notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoModel

import bt2_hf
from bt2_hf.cli.demo import main as demo_main
from bt2_hf.demo import METHODS, PAIRS, DemoSize, run_demo
from bt2_hf.retrieval.index import GalleryIndex
from tests.conftest import write_fashion_like_idx

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    return write_fashion_like_idx(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory, fashion_dir) -> Path:
    output = tmp_path_factory.mktemp("demo") / "out"
    run_demo(output, data_dir=fashion_dir, device="cpu", size=DemoSize.tiny())
    return output


def test_results_json_schema(demo_output):
    results = json.loads((demo_output / "results.json").read_text())
    assert set(results["methods"]) == set(METHODS)
    for method in METHODS:
        for pair in PAIRS:
            values = results["methods"][method][pair]
            assert set(values) == {"top1", "top5", "mAP"}
            assert all(0.0 <= v <= 100.0 for v in values.values())
            assert values["top5"] >= values["top1"]
        assert isinstance(results["criterion"][method]["top1"], bool)
        expected = results["methods"][method]["new/old"]["top1"] > results["methods"][method]["old/old"]["top1"]
        assert results["criterion"][method]["top1"] == expected
    # The old/old row is the same old model for every method.
    assert len({json.dumps(results["methods"][m]["old/old"]) for m in METHODS}) == 1
    assert results["num_queries"] == 120
    assert results["dims"] == {"old": 16, "independent": 16, "bct": 16, "bt2": 20}
    curve = results["backfill"]["random"]
    assert curve["betas"][0] == 0.0 and curve["betas"][-1] == 1.0
    # β = 0 is new/old and β = 1 is new/new.
    assert curve["top1"][0] == pytest.approx(results["methods"]["bt2"]["new/old"]["top1"], abs=0.01)
    assert curve["top1"][-1] == pytest.approx(results["methods"]["bt2"]["new/new"]["top1"], abs=0.01)


def test_plots_and_checkpoints(demo_output):
    for name in ("compatibility_table.png", "backfill_curve.png", "retrieval_grid.png"):
        data = (demo_output / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    old = AutoModel.from_pretrained(demo_output / "models" / "old")
    for name in ("old", *METHODS):
        directory = demo_output / "models" / name
        model = AutoModel.from_pretrained(directory)
        assert isinstance(model, bt2_hf.BT2Model)
        card = (directory / "README.md").read_text()
        assert "library_name: bt2_hf" in card
    bt2 = AutoModel.from_pretrained(demo_output / "models" / "bt2")
    entry = bt2.config.compatible_with[0]
    assert entry["fingerprint"] == old.config.fingerprint
    assert entry["embedding_dim"] == 16
    assert "Compatible with" in (demo_output / "models" / "bt2" / "README.md").read_text()
    gallery = GalleryIndex.load(demo_output / "gallery_old")
    assert gallery.prefix_for(bt2.config) == 16
    with pytest.raises(bt2_hf.IncompatibleModelsError):
        gallery.prefix_for(AutoModel.from_pretrained(demo_output / "models" / "independent").config)


def test_missing_data_gives_instructions_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    status = demo_main(["--tiny", "--data-dir", str(tmp_path / "nowhere"), "--output", str(output)])
    assert status == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out
    assert not output.exists() or not any(output.rglob("*.json"))


def test_quickstart_notebook_executes(demo_output, fashion_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("BT2_DEMO_DIR", str(demo_output))
    monkeypatch.setenv("BT2_DATA_DIR", str(fashion_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(demo_output.parent)}}
    )
    client.execute(env=dict(os.environ))
    outputs = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "prefix used: 16" in outputs
    assert "refused:" in outputs
