"""Galleries in Milvus (milvus-lite, a local file): same manifest, same refusals, same results as faiss."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.cli.index import main as index_main
from bt2_hf.compatibility import IncompatibleModelsError
from bt2_hf.galleries import FaissGallery, backfill, open_source, search_gallery

from .conftest import PYTHON, REPO, subprocess_env

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


def test_milvus_gallery_matches_faiss_and_refuses_the_same_models(saved_models, idx_dir, embeddings, tmp_path):
    from bt2_hf.galleries.milvus_store import MANIFEST_KEY, MilvusGallery

    milvus = MilvusGallery.from_embeddings(str(tmp_path / "g.db"), "fashion", embeddings)
    faiss_gallery = FaissGallery.from_embeddings(tmp_path / "faiss", embeddings, dtype="float32")
    properties = milvus.client.describe_collection("fashion")["properties"]
    manifest = json.loads(properties[MANIFEST_KEY])
    assert manifest["encoder"] == embeddings.manifest["model"] and manifest["count"] == 180
    assert manifest["store"] == "milvus" and manifest["index"]["milvus_index"] == "FLAT"

    old = BT2Model.from_pretrained(saved_models["old"])
    new = BT2Model.from_pretrained(saved_models["new"])
    queries = open_source(idx_dir, split="test").items(0, 10)
    for model in (old, new):
        embedded = model.encode(images=queries).numpy()
        a = search_gallery(milvus, embedded, k=5, query_config=model.config, allow_unmeasured=True)
        b = search_gallery(faiss_gallery, embedded, k=5, query_config=model.config, allow_unmeasured=True)
        assert a.ids == b.ids and a.prefix_dim == b.prefix_dim
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    other = BT2Model.from_pretrained(saved_models["other"])
    for store in (milvus, faiss_gallery):
        with pytest.raises(IncompatibleModelsError, match="may not search"):
            search_gallery(store, other.encode(images=queries).numpy(), k=5, query_config=other.config)
        with pytest.raises(IncompatibleModelsError):
            backfill(store, other, idx_dir, split="all", fraction=0.5, show_progress=False)

    # The same backfill on both stores gives the same mixed-gallery results.
    for store in (milvus, faiss_gallery):
        state = backfill(
            store, new, idx_dir, split="all", fraction=0.5, batch_size=25, show_progress=False, allow_unmeasured=True
        )
        assert state["done"] == 90
    reopened = MilvusGallery.open(str(tmp_path / "g.db"), "fashion")
    assert reopened.backfill_state["done"] == 90
    np.testing.assert_array_equal(reopened.backfill_order(), faiss_gallery.backfill_order())
    embedded = new.encode(images=queries).numpy()
    a = search_gallery(reopened, embedded, k=5, query_config=new.config, allow_unmeasured=True)
    b = search_gallery(faiss_gallery, embedded, k=5, query_config=new.config, allow_unmeasured=True)
    assert a.ids == b.ids and a.backfilled.tolist() == b.backfilled.tolist() and a.backfilled.any()


def test_milvus_cli_build_and_search(saved_models, idx_dir, embeddings, tmp_path, capsys):
    uri = str(tmp_path / "cli.db")
    assert index_main(["build", "--embedding-dir", str(embeddings.directory), "--index-type", "hnsw", "--output",
                       uri, "--collection", "items"]) == 0  # fmt: skip
    capsys.readouterr()
    assert index_main(["search", "--index", uri, "--collection", "items", "--query-model", str(saved_models["new"]),
                       "--query-data", str(idx_dir), "--limit", "3", "-k", "2", "--allow-unmeasured"]) == 0  # fmt: skip
    output = json.loads(capsys.readouterr().out)
    assert output["prefix_dim"] == 8 and [len(hit["ids"]) for hit in output["results"]] == [2, 2, 2]
    assert index_main(["search", "--index", uri, "--collection", "items", "--query-model",
                       str(saved_models["other"]), "--query-data", str(idx_dir), "--limit", "2"]) == 2  # fmt: skip
    assert "may not search" in capsys.readouterr().err


def test_milvus_build_and_backfill_print_no_traceback(saved_models, idx_dir, embeddings, tmp_path):
    # milvus-lite's gRPC server logs a NotImplementedError traceback for each call it lacks (AllocTimestamp, which
    # pymilvus makes to wait for an index), once a command has configured logging: a successful build must not.
    uri = str(tmp_path / "quiet.db")
    commands = [
        ["index", "build", "--embedding-dir", str(embeddings.directory), "--index-type", "hnsw", "--output", uri,
         "--collection", "items"],
        ["backfill", "--index", uri, "--collection", "items", "--model", str(saved_models["new"]), "--data",
         str(idx_dir), "--split", "all", "--fraction", "1", "--allow-unmeasured", "--finalize", "--no-progress"],
    ]  # fmt: skip
    for command in commands:
        completed = subprocess.run([PYTHON, "-m", "bt2_hf.cli.main", *command], env=subprocess_env(), cwd=REPO,
                                   capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert "Traceback" not in completed.stderr and "NotImplementedError" not in completed.stderr, completed.stderr
