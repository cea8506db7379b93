from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from bt2_hf.compatibility import IncompatibleModelsError, seal_entry
from bt2_hf.retrieval.index import (
    GalleryIndex,
    GalleryIndexError,
    read_embedding_shards,
    write_embedding_shards,
)

from .conftest import quantized_unit_vectors

OLD_FP, NEW_FP, OTHER_FP = "a" * 64, "b" * 64, "c" * 64


def _old_config():
    return SimpleNamespace(fingerprint=OLD_FP, embedding_dim=16, compatible_with=[], name_or_path="org/old")


def _new_config(**entry_fields):
    """A new model with a measured, passing compatibility entry for the old model (as `bt2 verify` writes it)."""
    entry = {
        "fingerprint": OLD_FP, "embedding_dim": 16, "name_or_path": "org/old", "method": "bt2", "status": "measured",
        "metrics": {"old/old": {"top1": 60.0, "mAP": 30.0}, "new/old": {"top1": 62.0, "mAP": 31.0}},
        "criterion": {"metrics": ["top1", "mAP"], "passed": True},
        "dataset": {"name": "synthetic", "split": "test", "size": 50, "sha256": "0" * 64},
        "query_fingerprint": NEW_FP,
        **entry_fields,
    }  # fmt: skip
    seal_entry(entry)
    return SimpleNamespace(fingerprint=NEW_FP, embedding_dim=64, compatible_with=[entry], name_or_path="org/new")


@pytest.fixture
def saved_index(rng, tmp_path):
    gallery = quantized_unit_vectors(rng, 50, 16)
    ids = [f"item-{i}" for i in range(50)]
    index = GalleryIndex.build(gallery, ids, encoder_fingerprint=OLD_FP, encoder_name="org/old")
    index.save(tmp_path / "gallery")
    return gallery, ids, tmp_path / "gallery"


def test_round_trip_and_manifest(saved_index):
    gallery, ids, path = saved_index
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["encoder_fingerprint"] == OLD_FP and manifest["encoder_name_or_path"] == "org/old"
    assert manifest["dimension"] == 16 and manifest["count"] == 50 and manifest["ids"] == ids
    assert manifest["index_type"] == "flat" and manifest["normalize"] is True and len(manifest["index_sha256"]) == 64
    loaded = GalleryIndex.load(path)
    result = loaded.search(gallery[:5], k=3, query_config=_old_config())
    assert [row[0] for row in result.ids] == ids[:5]
    assert result.prefix_dim == 16


def test_new_model_searches_old_gallery_through_its_prefix(saved_index, rng):
    gallery, ids, path = saved_index
    new_queries = quantized_unit_vectors(rng, 5, 64)
    new_queries[:, :16] = gallery[:5] / 2  # the old-compatible block, 1/2 of the norm
    result = GalleryIndex.load(path).search(new_queries, k=1, query_config=_new_config())
    assert [row[0] for row in result.ids] == ids[:5]
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-6)  # prefix re-normalised -> cosine 1
    assert result.admission["basis"] == "measured" and result.admission["overridden"] is False


def test_incompatible_model_is_refused_naming_both(saved_index):
    _, _, path = saved_index
    stranger = SimpleNamespace(fingerprint=OTHER_FP, embedding_dim=16, compatible_with=[], name_or_path="org/stranger")
    with pytest.raises(IncompatibleModelsError, match="org/stranger") as error:
        GalleryIndex.load(path).search(np.ones((1, 16), dtype=np.float32), query_config=stranger)
    assert "org/old" in str(error.value) and "backfill" in str(error.value)
    with pytest.raises(ValueError, match="query_config"):
        GalleryIndex.load(path).search(np.ones((1, 16), dtype=np.float32))


def test_corrupted_index_is_refused(saved_index):
    _, _, path = saved_index
    data = bytearray((path / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (path / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(GalleryIndexError, match="sha256"):
        GalleryIndex.load(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(count=49), "49 items"),
        (lambda m: m.update(dimension=32), "32-d"),
        (lambda m: m.pop("encoder_fingerprint"), "lacks"),
        (lambda m: m.update(format=99), "format"),
    ],
)
def test_mismatched_manifest_is_refused(saved_index, edit, message):
    _, _, path = saved_index
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GalleryIndexError, match=message):
        GalleryIndex.load(path)


def test_not_an_index(tmp_path):
    with pytest.raises(GalleryIndexError, match="not a bt2_hf gallery index"):
        GalleryIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / "index.faiss").write_bytes(b"")
    with pytest.raises(GalleryIndexError, match="not valid JSON"):
        GalleryIndex.load(tmp_path)


def test_shards_per_rank_and_build_from_shards(rng, tmp_path):
    gallery = quantized_unit_vectors(rng, 25, 16)
    ids = list(range(25))
    write_embedding_shards(gallery[:12], ids[:12], tmp_path, rank=0, shard_size=5)
    write_embedding_shards(gallery[12:], ids[12:], tmp_path, rank=1, shard_size=5)
    embeddings, read_ids = read_embedding_shards(tmp_path)
    np.testing.assert_array_equal(embeddings, gallery)
    assert read_ids == ids
    index = GalleryIndex.from_shards(tmp_path, encoder_fingerprint=OLD_FP, index_type="hnsw")
    assert len(index) == 25 and index.manifest["index_type"] == "hnsw"


def test_model_wrappers_use_encode_and_config(rng, tmp_path):
    gallery = quantized_unit_vectors(rng, 10, 16)

    class FakeModel:
        config = _old_config()

        def encode(self, images=None, texts=None, batch_size=64, device=None, show_progress=False):
            return gallery[np.asarray(images)]

    index = GalleryIndex.from_model(FakeModel(), list(range(10)), ids=[f"x{i}" for i in range(10)])
    assert index.manifest["encoder_fingerprint"] == OLD_FP
    assert index.search_with_model(FakeModel(), images=[3, 4], k=1).ids == [["x3"], ["x4"]]
