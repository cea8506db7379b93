"""One gallery format: `bt2 embed` output feeds `bt2 index build`; results name their items; former-format galleries
are refused naming `bt2 gallery upgrade`, which converts them; `bt2 gallery check` finds a flipped byte; a backfill
on a gallery built as the demo builds it resumes in its recorded order."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.cli.backfill import main as backfill_main
from bt2_hf.cli.embed import main as embed_main
from bt2_hf.cli.gallery import main as gallery_main
from bt2_hf.cli.index import main as index_main
from bt2_hf.compatibility import LegacyGalleryError, load_gallery_manifest
from bt2_hf.galleries import FaissGallery, model_identity, open_source
from bt2_hf.galleries.faiss_store import LegacyGalleryFormatError
from bt2_hf.galleries.gate import sample_probe
from bt2_hf.retrieval.knn import import_faiss


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_embed_output_feeds_index_build_and_results_carry_ids_and_labels(saved_models, idx_dir, tmp_path, capsys):
    embeddings, gallery = tmp_path / "emb", tmp_path / "gallery"
    assert embed_main(["--model", str(saved_models["old"]), "--data", str(idx_dir), "--split", "all",
                       "--output", str(embeddings), "--no_progress"]) == 0  # fmt: skip
    # What `bt2 embed --output emb` wrote is what `bt2 index build --embedding_dir emb` (or `--shards emb`) reads.
    assert index_main(["build", "--shards", str(embeddings), "--output", str(gallery)]) == 0
    built = _json_lines(capsys.readouterr().out)[-1]
    assert built["count"] == 180 and built["labels"] is True
    source = open_source(idx_dir, split="all")
    opened = FaissGallery.open(gallery)
    assert opened.ids_of(np.arange(3)) == ["train/0", "train/1", "train/2"]
    assert opened.labels_of(np.array([0, 150])) == [int(source.labels()[0]), int(source.labels()[150])]

    search = ["search", "--index", str(gallery), "--query_model", str(saved_models["old"]), "--query_data",
              str(idx_dir), "--split", "test", "--limit", "2", "-k", "3"]  # fmt: skip
    assert index_main(search) == 0
    output = _json_lines(capsys.readouterr().out)[-1]
    first = output["results"][0]
    assert first["query"] == 0 and len(first["items"]) == 3
    hit = first["items"][0]
    assert hit["id"] == "test/0" and hit["row"] == 150 and hit["label"] == int(source.labels()[150])  # itself
    assert set(hit) == {"id", "row", "score", "backfilled", "label"}
    assert index_main([*search, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "rank  score" in table and "label" in table and "test/0" in table


def test_search_results_carry_file_paths_and_class_names(saved_models, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("bag", "shoe"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png"
            )
    from bt2_hf.galleries import embed_dataset

    model = BT2Model.from_pretrained(saved_models["old"])
    embedded = embed_dataset(model, tmp_path / "images", tmp_path / "emb", show_progress=False)
    gallery = FaissGallery.from_embeddings(tmp_path / "gallery", embedded)
    query = Image.open(tmp_path / "images" / "shoe" / "1.png")
    result = gallery.search_with_model(model, images=[query], k=2)
    hit = result.hits()[0][0]
    assert hit["path"].endswith("shoe/1.png") and hit["label"] == "shoe"
    assert result.paths[0][0] == hit["path"] and result.labels[0][0] == "shoe"


def _legacy_gallery(directory, vectors, ids, fingerprint, index_type="flat"):
    """A gallery exactly as the former ``GalleryIndex.save`` wrote it: index.faiss + a manifest holding the ids."""
    faiss = import_faiss()
    if index_type == "flat":
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], 8, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    data = faiss.serialize_index(index).tobytes()
    directory.mkdir()
    (directory / "index.faiss").write_bytes(data)
    manifest = {"format": 1, "bt2_hf_version": "0.1.0", "encoder_fingerprint": fingerprint,
                "encoder_name_or_path": "org/old", "dimension": vectors.shape[1], "normalize": True,
                "similarity": "cosine", "count": len(vectors), "ids": ids, "index_type": index_type,
                "index_file": "index.faiss", "index_sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_former_format_is_refused_naming_the_upgrade_which_makes_it_open(saved_models, idx_dir, tmp_path, capsys,
                                                                        index_type):  # fmt: skip
    old = BT2Model.from_pretrained(saved_models["old"])
    images = open_source(idx_dir, split="test").items(0, 30)
    vectors = old.encode(images=images).numpy()
    legacy = tmp_path / "gallery_old"
    _legacy_gallery(legacy, vectors, list(range(30)), old.config.fingerprint, index_type)

    with pytest.raises(LegacyGalleryFormatError, match=f"bt2 gallery upgrade {legacy}"):
        FaissGallery.open(legacy)
    with pytest.raises(LegacyGalleryError, match="bt2 gallery upgrade"):
        load_gallery_manifest(legacy)
    assert index_main(["search", "--index", str(legacy), "--query_model", str(saved_models["old"]), "--query_data",
                       str(idx_dir), "--split", "test", "--limit", "1"]) == 2  # fmt: skip
    assert f"bt2 gallery upgrade {legacy}" in capsys.readouterr().err
    assert backfill_main(["--index", str(legacy), "--model", str(saved_models["new"]), "--data", str(idx_dir),
                          "--split", "test", "--fraction", "0.5", "--allow_unmeasured"]) == 2  # fmt: skip
    assert "bt2 gallery upgrade" in capsys.readouterr().err

    assert gallery_main(["upgrade", str(legacy)]) == 0
    upgraded = FaissGallery.open(legacy)
    assert upgraded.encoder["fingerprint"] == old.config.fingerprint and upgraded.encoder["name_or_path"] == "org/old"
    assert upgraded.ids_of(np.arange(30)) == list(range(30)) and upgraded.manifest["index"]["type"] == index_type
    np.testing.assert_allclose(upgraded.vectors_at(np.arange(30)), vectors / np.linalg.norm(vectors, axis=1)[:, None],
                               atol=1e-6)  # fmt: skip
    assert upgraded.search_with_model(old, images=images[:2], k=1).ids == [[0], [1]]
    assert gallery_main(["upgrade", str(legacy)]) == 2  # nothing to upgrade twice
    assert "already in the current gallery format" in capsys.readouterr().err


def _demo_format_gallery(directory, old_dir, idx_dir, rows):
    """A gallery built the way the demo builds `gallery_old`: ids = rows of the test split, labels, a probe set."""
    old = BT2Model.from_pretrained(old_dir)
    source = open_source(idx_dir, split="test")
    images, labels = source.take(rows), source.labels()[rows]
    vectors = old.encode(images=images).numpy()
    return FaissGallery.build(
        directory, vectors, ids=[int(r) for r in rows], labels=labels, label_names=[f"c{i}" for i in range(10)],
        encoder=dict(model_identity(old), name_or_path="org/old"), dataset={"name": "tiny", "split": "test"},
        probe=sample_probe(images, labels, vectors, 12, seed=0, description={"dataset": "tiny", "split": "test"}),
    )  # fmt: skip


def test_backfill_on_a_demo_format_gallery_resumes_in_its_recorded_order(saved_models, idx_dir, tmp_path, capsys):
    gallery = tmp_path / "gallery_old"
    rows = np.arange(3, 27)  # a subset of the split, as the demo's small runs take: ids are the split's rows
    _demo_format_gallery(gallery, saved_models["old"], idx_dir, rows)
    backfill = ["--index", str(gallery), "--model", str(saved_models["new"]), "--data", str(idx_dir), "--split",
                "test", "--allow_unmeasured", "--batch_size", "4", "--no_progress"]  # fmt: skip
    assert backfill_main([*backfill, "--fraction", "0.5", "--order", "priority", "--seed", "3"]) == 0
    state = FaissGallery.open(gallery).backfill_state
    assert (state["order"], state["seed"], state["done"]) == ("priority", 3, 12)
    recorded_order = np.load(gallery / "backfill" / "order.npy")

    # The backfill re-embedded the right images: the gallery's ids are mapped to the split's rows.
    new = BT2Model.from_pretrained(saved_models["new"])
    done_rows = recorded_order[:12]
    expected = new.encode(images=open_source(idx_dir, split="test").take(rows[done_rows])).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(FaissGallery.open(gallery).backfill_vectors(done_rows), expected, atol=1e-5)

    # Resuming needs no --order: the recorded order goes on; another explicit order is refused with the fix.
    assert backfill_main([*backfill, "--fraction", "1.0", "--order", "random"]) == 2
    assert "leave --order and --seed out" in capsys.readouterr().err
    assert backfill_main([*backfill, "--fraction", "1.0"]) == 0
    state = FaissGallery.open(gallery).backfill_state
    assert (state["order"], state["seed"], state["done"]) == ("priority", 3, 24)
    np.testing.assert_array_equal(np.load(gallery / "backfill" / "order.npy"), recorded_order)


def test_gallery_check_finds_a_flipped_byte(saved_models, idx_dir, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    _demo_format_gallery(gallery, saved_models["old"], idx_dir, np.arange(30))
    assert gallery_main(["check", str(gallery)]) == 0
    assert _json_lines(capsys.readouterr().out)[-1]["intact"] is True
    for name in ("vectors.npy", "labels.npy", "probe/items.npy"):
        path = gallery / name
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[-1] ^= 0x01  # same size: only the hash can tell
        path.write_bytes(bytes(flipped))
        assert gallery_main(["check", str(gallery)]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and "sha256" in err and "Rebuild" in err
        path.write_bytes(original)
    assert gallery_main(["check", str(gallery)]) == 0
