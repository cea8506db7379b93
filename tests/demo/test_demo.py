"""A tiny `bt2 demo` on a synthetic texture set named "textures-ten": output files, their schema, the data set's name
everywhere, the verdicts, the update gain's n/a, and the notebook."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModel

import bt2_hf
from bt2_hf.cli.demo import build_parser
from bt2_hf.cli.demo import main as demo_main
from bt2_hf.experiments.demo import (
    ADAPTER_ROWS,
    JUDGED_METRICS,
    METHODS,
    PAIRS,
    DemoSize,
    run_demo,
    summarize_seeds,
)
from bt2_hf.experiments.report import results_table, summary_lines
from bt2_hf.galleries import FaissGallery
from tests.demo.synthetic import CLASS_NAMES, write_texture_idx

REPO = Path(__file__).resolve().parents[2]
NAME = "textures-ten"


@pytest.fixture(scope="module")
def textures_dir(tmp_path_factory) -> Path:
    return write_texture_idx(tmp_path_factory.mktemp("data") / NAME)


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory, textures_dir) -> Path:
    output = tmp_path_factory.mktemp("demo") / "out"
    size = replace(DemoSize.tiny(), baselines=True)
    run_demo(output, data_dir=textures_dir, device="cpu", size=size)
    return output


@pytest.fixture(scope="module")
def weak_new_output(tmp_path_factory, textures_dir) -> Path:
    """The old CNN trained 30 steps (it separates the textures), the new ViTs a single step: the new model is weaker."""
    output = tmp_path_factory.mktemp("weak") / "out"
    size = replace(DemoSize.tiny(), old_steps=30, new_steps=1, learning_rate=3e-3, backfill_points=2, baselines=True)
    run_demo(output, data_dir=textures_dir, device="cpu", size=size)
    return output


@pytest.mark.slow
def test_results_json_schema(demo_output):
    results = json.loads((demo_output / "results.json").read_text())
    assert set(results["methods"]) == {*METHODS, "independent_continued", *ADAPTER_ROWS}
    for method in METHODS:
        for pair in PAIRS:
            values = results["methods"][method][pair]
            assert set(values) == {"top1", "top5", "mAP"}
            assert all(0.0 <= v <= 100.0 for v in values.values())
            assert values["top5"] >= values["top1"]
        for metric in JUDGED_METRICS:
            expected = results["methods"][method]["new/old"][metric] > results["methods"][method]["old/old"][metric]
            assert results["criterion"][method][metric] == expected
        # The one results schema: PairReport.to_dict, in fractions.
        report = results["reports"][method]
        assert report["results"]["new/old"]["top1"] == pytest.approx(
            results["methods"][method]["new/old"]["top1"] / 100, abs=5e-5
        )
    # The old/old row is the same old model for every method.
    assert len({json.dumps(results["methods"][m]["old/old"]) for m in METHODS}) == 1
    assert results["num_queries"] == 120
    assert results["dims"] == {
        "old": 16, "independent": 16, "bct": 16, "bt2": 20,
        "independent_continued": 16, **dict.fromkeys(ADAPTER_ROWS, 16),
    }  # fmt: skip
    curve = results["backfill"]["random"]
    assert curve["betas"][0] == 0.0 and curve["betas"][-1] == 1.0
    # β = 0 is new/old and β = 1 is new/new.
    assert curve["top1"][0] == pytest.approx(results["methods"]["bt2"]["new/old"]["top1"], abs=0.01)
    assert curve["top1"][-1] == pytest.approx(results["methods"]["bt2"]["new/new"]["top1"], abs=0.01)
    for curve in results["backfill"].values():  # both orders, the slot rule and naive scoring from the same β grid
        assert curve["rule"] == "slots" and len(curve["top1_naive"]) == len(curve["top1"]) == len(curve["betas"])
        assert curve["top1_naive"][0] == curve["top1"][0] and curve["top1_naive"][-1] == curve["top1"][-1]
        assert curve["least_minus_new_old"] == pytest.approx(min(curve["top1"]) - curve["top1"][0], abs=0.01)
    assert set(results["backfill"]) == {"random", "centroid-distance"}
    assert results["final_verdict"] == results["verdict"]["bt2"]
    assert results["seeds"]["seeds"] == [0]


@pytest.mark.slow
def test_budgets_are_optimizer_steps_and_equal(demo_output):
    """BCT and BT² fine-tune the independent model (6 steps) for finetune_steps (4) more; their twin trains as many
    more steps without compatibility terms, and their tax (and the adapters, fitted on the twin) is measured
    against it."""
    results = json.loads((demo_output / "results.json").read_text())
    finetuned = ("independent_continued", "bct", "bt2")
    assert results["steps"] == {"old": 5, "independent": 6, **dict.fromkeys(finetuned, 4)}
    assert results["total_steps"] == {
        "old": 5, "independent": 6, **dict.fromkeys((*finetuned, *ADAPTER_ROWS), 10)
    }  # fmt: skip
    assert results["references"] == {
        "independent": "independent", **dict.fromkeys(("independent_continued", "bct", "bt2", *ADAPTER_ROWS),
                                                      "independent_continued"),
    }  # fmt: skip
    for name, steps in results["steps"].items():
        training = AutoModel.from_pretrained(demo_output / "models" / name).config.training
        assert training["steps"] == steps
        assert training["init_from_independent"] is (name in ("independent_continued", "bct", "bt2"))
    twin = results["methods"]["independent_continued"]["new/new"]["top1"]
    for name in ("bct", "bt2"):
        assert results["compatibility_tax"][name]["top1"] == round(
            twin - results["methods"][name]["new/new"]["top1"], 2
        )


@pytest.mark.slow
def test_adapter_rows_map_the_independent_model_into_the_old_space(demo_output, textures_dir):
    """The practitioner's first try, as rows: the independent model's test embeddings mapped by each post-hoc adapter
    (fitted on the training split) search the old gallery; re-embedding gives the independent model's own new/new."""
    from bt2_hf.adapters import fit_adapter
    from bt2_hf.experiments.demo import _prepare_data
    from bt2_hf.experiments.demo_data import load_demo_data
    from bt2_hf.experiments.embedding import embed_split
    from bt2_hf.retrieval import RetrievalEvaluator

    results = json.loads((demo_output / "results.json").read_text())
    size = DemoSize.tiny()
    independent = results["methods"]["independent_continued"]["new/new"]  # the adapters map the same-budget twin
    for kind in ADAPTER_ROWS:
        assert results["methods"][kind]["new/new"] == independent
        assert results["compatibility_tax"][kind] == {"top1": 0.0, "mAP": 0.0}
        assert results["verdict"][kind]["status"] in ("compatible", "not_compatible", "do_not_upgrade")
    # An independent reference: refit Procrustes from the saved models and search the old embeddings with numpy.
    data, _ = _prepare_data(load_demo_data(textures_dir), size, validation=False)
    train = data.train.take_per_class(size.adapter_train_samples, seed=0)
    models = demo_output / "models"
    procrustes = fit_adapter("procrustes", embed_split(models / "independent_continued", train.images),
                             embed_split(models / "old", train.images))  # fmt: skip
    test = data.test.take_per_class(size.eval_samples, seed=0)
    queries = procrustes.apply(embed_split(models / "independent_continued", test.images))
    gallery = embed_split(models / "old", test.images)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = queries @ gallery.T
    np.fill_diagonal(scores, -np.inf)
    labels = test.labels.numpy()
    top1 = 100 * float(np.mean(labels[scores.argmax(axis=1)] == labels))
    assert results["methods"]["procrustes"]["new/old"]["top1"] == pytest.approx(top1, abs=0.01)
    expected = RetrievalEvaluator(metrics=("top1",)).evaluate(queries, gallery, labels, labels, same_items=True)
    assert top1 == pytest.approx(100 * expected.metrics["top1"], abs=1e-6)


@pytest.mark.slow
def test_the_data_sets_name_is_everywhere(demo_output):
    results = json.loads((demo_output / "results.json").read_text())
    assert results["dataset"] == NAME
    assert results["class_names"] == list(CLASS_NAMES)
    assert results["old_classes"] == "0-4"
    texts = [p.read_text(encoding="utf-8") for p in demo_output.rglob("*") if p.suffix in (".json", ".md")]
    assert len(texts) >= 10
    assert not [t for t in texts if "fashion" in t.lower()]
    for name in ("old", *METHODS):
        card = (demo_output / "models" / name / "README.md").read_text()
        assert f"# bt2-hf-demo/{NAME}-{name}" in card
        assert AutoModel.from_pretrained(demo_output / "models" / name).config.training["dataset"] == f"{NAME}:train"
        assert f"on {NAME}" in card
    bt2 = AutoModel.from_pretrained(demo_output / "models" / "bt2").config
    assert bt2.compatible_with[0]["name_or_path"] == f"bt2-hf-demo/{NAME}-old"
    manifest = json.loads((demo_output / "gallery_old" / "manifest.json").read_text())
    assert manifest["encoder"]["name_or_path"] == f"bt2-hf-demo/{NAME}-old"
    assert results_table(results).title.startswith(f"{NAME} retrieval")
    assert summary_lines(results)[-1].startswith(f"Verdict (BT², {NAME}): ")


@pytest.mark.slow
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
        assert "## Demo verdict" in card
    # Training's unmeasured claims are replaced by what the demo measured: the independent model claims nothing.
    assert AutoModel.from_pretrained(demo_output / "models" / "independent").config.compatible_with == []
    results = json.loads((demo_output / "results.json").read_text())
    bt2 = AutoModel.from_pretrained(demo_output / "models" / "bt2")
    entry = bt2.config.compatible_with[0]
    assert entry["fingerprint"] == old.config.fingerprint
    assert entry["embedding_dim"] == 16
    # Recorded by bt2 verify: measured on the named test split with the one evaluator the demo's table comes from.
    assert entry["status"] == "measured" and entry["bt2_hf_version"] == bt2_hf.__version__
    assert entry["dataset"]["split"] == "test" and entry["dataset"]["size"] == results["num_queries"]
    for pair in ("old/old", "new/old", "new/new"):
        assert entry["metrics"][pair] == pytest.approx(results["methods"]["bt2"][pair], abs=0.006)
    # The metadata says what the verdict says.
    assert entry["criterion"]["passed"] == (results["verdict"]["bt2"]["status"] == "compatible")
    assert results["verdict"]["bt2"]["message"] in (demo_output / "models" / "bt2" / "README.md").read_text()
    gallery = FaissGallery.open(demo_output / "gallery_old")
    assert gallery.dimension == 16 and gallery.manifest["probe"]["size"] == min(500, results["num_queries"])
    assert gallery.labels_of([0])[0] in results["class_names"]


@pytest.mark.slow
def test_do_not_upgrade_when_the_new_model_is_weaker(weak_new_output):
    results = json.loads((weak_new_output / "results.json").read_text())
    old_old = results["methods"]["bt2"]["old/old"]["top1"]
    for method in METHODS:
        # each row against its own reference: the 1-step independent model, or its 2-step twin for BCT and BT²
        independent = results["methods"][results["references"][method]]["new/new"]["top1"]
        assert independent < old_old  # the premise: a step or two of the ViT is worse than the trained CNN
        outcome = results["verdict"][method]
        assert outcome["status"] == "do_not_upgrade"
        assert outcome["message"].startswith(
            "the new model is not better than the old one on this data: do not upgrade"
        )
        # No "+722 %": the update gain has no meaning without an improvement, and says why.
        assert results["update_gain"][method]["top1"] is None
        assert results["update_gain_note"][method]["top1"] == (
            f"n/a: the independent new model is no better than the old one ({independent:.2f} ≤ {old_old:.2f}), so "
            "there is no improvement to carry over"
        )
    lines = summary_lines(results)
    compatible = [method for method in METHODS if method != "independent"]  # no gain line for the reference itself
    assert lines[: len(compatible)] == [
        f"Update gain of {method}: top1 n/a, mAP n/a ({results['update_gain_note'][method]['top1']})"
        for method in compatible
    ]
    assert not any(line.startswith("Update gain of independent") for line in lines)
    assert lines[-1] == f"Verdict (BT², {NAME}): {results['verdict']['bt2']['message']}."
    card = (weak_new_output / "models" / "bt2" / "README.md").read_text()
    assert "do not upgrade" in card
    entry = AutoModel.from_pretrained(weak_new_output / "models" / "bt2").config.compatible_with[0]
    assert entry["criterion"]["passed"] is False


def test_missing_data_gives_instructions_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    status = demo_main(["--tiny", "--data-dir", str(tmp_path / "nowhere"), "--output", str(output)])
    assert status == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out
    assert not output.exists() or not any(output.rglob("*.json"))


def test_cli_options():
    parser = build_parser()
    for flag in ("--data_dir", "--data-dir"):
        assert parser.parse_args([flag, "somewhere"]).data_dir == "somewhere"
    args = parser.parse_args(["--seeds", "3", "--from_scratch", "--train_fraction", "0.125", "--new_steps", "9"])
    assert (args.seeds, args.from_scratch, args.train_fraction, args.new_steps) == (3, True, 0.125, 9)
    assert parser.parse_args(["--baselines"]).baselines and not parser.parse_args([]).baselines


@pytest.mark.slow
def test_summarize_seeds_mean_and_sample_sd(demo_output):
    first = json.loads((demo_output / "results.json").read_text())
    second = json.loads(json.dumps(first))
    second["seed"] = 1
    second["methods"]["bt2"]["new/old"]["top1"] = first["methods"]["bt2"]["new/old"]["top1"] + 2.0
    second["compatibility_tax"]["bt2"]["top1"] = first["compatibility_tax"]["bt2"]["top1"] - 1.0
    summary = summarize_seeds([first, second])
    assert summary["seeds"] == [0, 1]
    top1 = summary["methods"]["bt2"]["new/old"]["top1"]
    assert top1["mean"] == round(first["methods"]["bt2"]["new/old"]["top1"] + 1.0, 2)
    assert top1["sd"] == round(float(np.std([0.0, 2.0], ddof=1)), 2) == 1.41
    assert summary["compatibility_tax"]["bt2"]["top1"]["sd"] == 0.71
    assert summary["methods"]["bt2"]["old/old"]["top1"]["sd"] == 0.0
    assert summary["verdicts"]["bt2"] == [first["verdict"]["bt2"]["status"]] * 2


@pytest.mark.slow
def test_quickstart_notebook_executes(demo_output, textures_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("BT2_DEMO_DIR", str(demo_output))
    monkeypatch.setenv("BT2_DATA_DIR", str(textures_dir))
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


def test_a_defined_update_gain_says_what_it_divides():
    # the shape of results.json from a run where the new model is barely better than the old one (hand-made numbers)
    pairs = {"old/old": {"top1": 70.0, "mAP": 40.0}, "new/old": {"top1": 60.0, "mAP": 44.0},
             "new/new": {"top1": 71.5, "mAP": 50.0}}  # fmt: skip
    results = {
        "dataset": "hand-made",
        "methods": {"bt2": pairs, "independent": {"new/new": {"top1": 72.0, "mAP": 60.0}}},
        "references": {"bt2": "independent"},
        "compatibility_tax": {"bt2": {"top1": 0.5, "mAP": 10.0}},
        "update_gain": {"bt2": {"top1": -500.0, "mAP": 20.0}},
        "update_gain_note": {"bt2": {}},
        "verdict": {"bt2": {"message": "not compatible: …"}},
        "final_verdict": {"message": "not compatible: …"},
    }
    assert summary_lines(results)[0] == (
        "Update gain of bt2: top1 -500.0% (new → old -10.00 points of the +2.00 the independent model gains), "
        "mAP +20.0% (new → old +4.00 points of the +20.00 the independent model gains)"
    )


@pytest.mark.slow
def test_no_staging_path_in_any_card_config_or_run_record(demo_output):
    """The demo trains inside a staging folder; what it records names the models where they live after the swap."""
    written = [p for p in demo_output.rglob("*") if p.suffix in (".json", ".md")]
    assert [p for p in written if ".bt2-stage-" in p.read_text(encoding="utf-8")] == []
    bt2 = json.loads((demo_output / "models" / "bt2" / "config.json").read_text())
    assert bt2["training"]["trained_against"]["name_or_path"] == str(demo_output / "models" / "old")
    # the old model's repo id is not on the Hub yet: the entry and the card name its local copy, so commands run
    assert bt2["compatible_with"][0]["local_path"] == str(demo_output / "models" / "old")
    assert "(not yet pushed; local copy" in (demo_output / "models" / "bt2" / "README.md").read_text()


@pytest.mark.slow
def test_quickstart_notebook_runs_from_the_repository_root(demo_output, textures_dir, tmp_path, monkeypatch):
    """`jupyter execute notebooks/quickstart.ipynb` from the root: the kernel runs in notebooks/, and the notebook
    finds the demo's default output folder one level up."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "bt2_demo_output").symlink_to(demo_output, target_is_directory=True)
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.delenv("BT2_DEMO_DIR", raising=False)
    monkeypatch.setenv("BT2_DATA_DIR", str(textures_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root / "notebooks")}}
    )
    client.execute(env=dict(os.environ))
    outputs = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "prefix used: 16" in outputs or "refused:" in outputs
