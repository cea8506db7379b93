"""Faiss galleries on disk: index types, manifest, exact IVF-PQ re-ranking, CLI build from a model, search refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.cli.index import main as index_main
from bt2_hf.compatibility import IncompatibleModelsError
from bt2_hf.galleries import FaissGallery, GalleryError, embed_dataset, open_source, search_gallery

OLD = "sha256:" + "a" * 64
ENCODER = {"fingerprint": OLD, "name_or_path": "org/old", "embedding_dim": 16}


class Config:
    def __init__(self, fingerprint, embedding_dim, compatible_with=()):
        self.fingerprint, self.embedding_dim, self.name_or_path = fingerprint, embedding_dim, "q"
        self.compatible_with = list(compatible_with)


def clustered(count, dim=16, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, count)] + 0.35 * rng.normal(size=(count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq", "hnsw"])
def test_index_types_agree_with_exact_search(tmp_path, index_type):
    vectors = clustered(3000)
    ids = [f"item-{i}" for i in range(3000)]
    gallery = FaissGallery.build(tmp_path / "g", vectors, ids, encoder=ENCODER, index_type=index_type)
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["count"] == 3000 and manifest["dimension"] == 16 and manifest["index"]["type"] == index_type
    assert manifest["encoder"] == ENCODER and manifest["backfill"] is None
    queries = vectors[:50]
    result = search_gallery(FaissGallery.open(tmp_path / "g"), queries, k=10, query_config=Config(OLD, 16))
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.rows.tolist(), exact.tolist())])
    assert recall >= (1.0 if index_type == "flat" else 0.9)
    assert result.ids[0][0] == "item-0"
    # Every returned score is the exact cosine (IVF-PQ re-scores its candidates from the vectors on disk).
    np.testing.assert_allclose(result.scores, np.take_along_axis(queries @ vectors.T, result.rows, 1), atol=1e-5)
    assert (np.diff(result.scores, axis=1) <= 1e-7).all()
    if index_type == "ivfpq":
        params = manifest["index"]["params"]
        assert params["pq_m"] == 2 and params["rerank"] == 1000 and gallery.index.code_size == 2


def test_corrupted_or_inconsistent_gallery_is_refused(tmp_path):
    FaissGallery.build(tmp_path / "g", clustered(100), encoder=ENCODER)
    with pytest.raises(FileExistsError):
        FaissGallery.build(tmp_path / "g", clustered(100), encoder=ENCODER)
    data = bytearray((tmp_path / "g" / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "g" / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="does not match the sha256"):
        FaissGallery.open(tmp_path / "g")
    with pytest.raises(GalleryError, match="ids must be unique"):
        FaissGallery.build(tmp_path / "h", clustered(3), ["a", "a", "b"], encoder=ENCODER)
    assert not (tmp_path / "h").exists()
    with pytest.raises(GalleryError, match="not a gallery"):
        FaissGallery.open(tmp_path / "nothing")


def test_query_model_prefix_and_refusal(tmp_path):
    vectors = clustered(200)
    gallery = FaissGallery.build(tmp_path / "g", vectors, encoder=ENCODER)
    new = Config("sha256:" + "b" * 64, 24, [{"fingerprint": OLD, "embedding_dim": 16, "name_or_path": "org/old"}])
    queries = np.concatenate([vectors[:5] * 0.6, np.full((5, 8), 0.2, np.float32)], axis=1)
    result = search_gallery(gallery, queries, k=1, query_config=new, allow_unmeasured=True)
    assert result.prefix_dim == 16 and [row[0] for row in result.ids] == [0, 1, 2, 3, 4]
    # The override is recorded in the result.
    assert result.admission["overridden"] is True and result.admission["prefix_dim"] == 16
    with pytest.raises(IncompatibleModelsError, match="may not search"):
        search_gallery(gallery, queries, k=1, query_config=Config("sha256:" + "c" * 64, 24))


def test_cli_build_from_model_and_data_removes_the_embeddings_it_made_for_itself(saved_models, idx_dir, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    """Without --embeddings_output the embeddings are made in a temporary folder only to build the gallery (which
    copies the vectors): removed afterwards, after a failure too, so that building never fills the disk."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert index_main(["build", "--model", str(saved_models["old"]), "--data", str(idx_dir), "--split", "all",
                       "--output", str(tmp_path / "g")]) == 0  # fmt: skip
    assert FaissGallery.open(tmp_path / "g").manifest["count"] == 180
    assert list(scratch.iterdir()) == []
    # a build that fails after embedding (IVF-PQ cannot train its codebooks on 180 vectors) leaves nothing either
    assert index_main(["build", "--model", str(saved_models["old"]), "--data", str(idx_dir), "--split", "all",
                       "--index-type", "ivfpq", "--output", str(tmp_path / "g2")]) != 0  # fmt: skip
    assert not (tmp_path / "g2").exists() and list(scratch.iterdir()) == []


def test_cli_build_from_model_and_data_then_search_with_query_model(saved_models, idx_dir, tmp_path, capsys):
    assert index_main(["build", "--model", str(saved_models["old"]), "--data", str(idx_dir), "--split", "all",
                       "--index-type", "hnsw", "--output", str(tmp_path / "g"), "--embeddings-output",
                       str(tmp_path / "emb")]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    old = BT2Model.from_pretrained(saved_models["old"])
    assert manifest["encoder"]["fingerprint"] == old.config.fingerprint and manifest["count"] == 180
    assert manifest["dataset"]["hash"] == open_source(idx_dir, split="all").fingerprint()
    # The same gallery from the embedding directory, as IVF-Flat.
    assert index_main(["build", "--embedding-dir", str(tmp_path / "emb"), "--index-type", "ivf", "--nlist", "4",
                       "--output", str(tmp_path / "g2")]) == 0  # fmt: skip
    capsys.readouterr()
    hits = tmp_path / "hits.json"
    assert index_main(["search", "--index", str(tmp_path / "g"), "--query-model", str(saved_models["new"]),
                       "--query-data", str(idx_dir), "--split", "test", "--limit", "4", "-k", "3", "--allow-unmeasured", "--output",
                       str(hits)]) == 0  # fmt: skip
    output = json.loads(hits.read_text())
    assert output["prefix_dim"] == 8 and len(output["results"]) == 4 and len(output["results"][0]["ids"]) == 3
    assert index_main(["search", "--index", str(tmp_path / "g"), "--query-model", str(saved_models["other"]),
                       "--query-data", str(idx_dir), "--limit", "2"]) == 2  # fmt: skip
    assert "may not search the gallery" in capsys.readouterr().err


def test_gallery_from_embedding_directory_keeps_vectors(saved_models, idx_dir, tmp_path):
    model = BT2Model.from_pretrained(saved_models["old"])
    embeddings = embed_dataset(model, idx_dir, tmp_path / "emb", dtype="float32", shard_size=50, show_progress=False)
    gallery = FaissGallery.from_embeddings(tmp_path / "g", embeddings)
    np.testing.assert_allclose(np.asarray(gallery.vectors), embeddings.vectors(), atol=1e-6)
    assert gallery.ids_of(np.arange(3)) == [0, 1, 2] and gallery.manifest["dtype"] == "float32"


def test_a_kept_admission_follows_the_config_and_the_manifest(tmp_path):
    """Admissions are kept between searches; a config changed in place, or a new policy, is decided again."""
    from bt2_hf.compatibility import AdmissionPolicy

    vectors = clustered(200)
    gallery = FaissGallery.build(tmp_path / "g", vectors, encoder=ENCODER)
    new = Config("sha256:" + "b" * 64, 24, [{"fingerprint": OLD, "embedding_dim": 16, "name_or_path": "org/old"}])
    first = gallery.admit(new, allow_unmeasured=True)
    assert first.prefix_dim == 16 and first.overridden
    assert gallery.admit(new, allow_unmeasured=True) is first  # kept
    with pytest.raises(IncompatibleModelsError):
        gallery.admit(new)  # another question (no override): decided, and refused
    new.compatible_with[0]["embedding_dim"] = 12  # the same list, edited in place: a width the gallery does not hold
    with pytest.raises(IncompatibleModelsError, match="at 12 dims"):
        gallery.admit(new, allow_unmeasured=True)
    new.compatible_with.clear()
    with pytest.raises(IncompatibleModelsError):
        gallery.admit(new, allow_unmeasured=True)
    new.compatible_with.append({"fingerprint": OLD, "embedding_dim": 16, "name_or_path": "org/old"})
    assert gallery.admit(new, allow_unmeasured=True).prefix_dim == 16
    gallery.set_policy(AdmissionPolicy(require_gate=True))  # the owner's word changes the manifest
    with pytest.raises(IncompatibleModelsError):
        gallery.admit(new, allow_unmeasured=True)


def test_one_query_sort_matches_the_general_sort_with_ties_and_missing_rows():
    """The served single-query path of the candidates' sort against the full lexsort, on ties and -1 rows."""
    from bt2_hf.galleries.faiss_store import _sort

    rng = np.random.default_rng(0)
    for trial in range(200):
        width = int(rng.integers(1, 40))
        scores = rng.integers(0, 5, size=(1, width)).astype(np.float32)  # many ties
        rows = rng.permutation(1000)[:width][None, :].astype(np.int64)
        rows[0, rng.random(width) < 0.2] = -1
        depth = int(rng.integers(1, width + 1))
        # reference: every candidate sorted by (-score, row), -1 rows (score -inf) last
        keyed = [(-(s if r >= 0 else -np.inf), r if r >= 0 else 10**18, s if r >= 0 else -np.inf, r)
                 for s, r in zip(scores[0], rows[0])]  # fmt: skip
        expected = sorted(keyed)[:depth]
        got_scores, got_rows = _sort(scores, rows, depth)
        assert got_rows[0].tolist() == [item[3] for item in expected], trial
        assert got_scores[0].tolist() == [item[2] for item in expected], trial


def test_a_search_setting_applies_to_its_own_search_only(tmp_path):
    """nprobe given to one search does not stay on the index for the next (settings travel with each search)."""
    vectors = clustered(4000, clusters=200)
    gallery = FaissGallery.build(tmp_path / "g", vectors, encoder=ENCODER, index_type="ivf", nlist=64)
    queries = clustered(50, clusters=200, seed=3)
    before = gallery.search_encoder_space(queries, 10)[1]
    narrow = gallery.search_encoder_space(queries, 10, nprobe=1)[1]
    assert (narrow != before).any()  # one list of 64 misses neighbours the manifest's nprobe finds
    assert (gallery.search_encoder_space(queries, 10)[1] == before).all()
