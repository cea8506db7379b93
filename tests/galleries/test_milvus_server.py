"""Galleries on a Milvus server reached by URI (milvus-lite's gRPC server, started by the ``milvus_server`` fixture):
build, search, refusals, a backfill killed and resumed, cutover and rollback through Milvus aliases.

The answers are checked against faiss galleries of the same vectors and against the new model's own embeddings.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.cli.main import main as cli_main
from bt2_hf.compatibility import IncompatibleModelsError
from bt2_hf.galleries import FaissGallery, GalleryError, backfill, open_source, search_gallery
from bt2_hf.galleries.aliases import MilvusAliases, open_gallery_root
from bt2_hf.galleries.stores import open_gallery

from .conftest import PYTHON, REPO, free_port, subprocess_env

pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def faiss_gallery(embeddings, tmp_path_factory):
    return FaissGallery.from_embeddings(tmp_path_factory.mktemp("faiss") / "g", embeddings, dtype="float32")


def new_model_vectors(saved_models, idx_dir, ids) -> np.ndarray:
    """The new model's unit vectors of the items ``ids``, embedded here (the reference for a backfill)."""
    new = BT2Model.from_pretrained(saved_models["new"])
    source = open_source(idx_dir, split="all")
    position = {item: i for i, item in enumerate(source.ids())}
    vectors = new.encode(images=source.items(0, len(source))).numpy()
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[[position[item] for item in ids]]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
def test_server_gallery_answers_as_faiss_and_refuses_the_same_models(
    milvus_server, saved_models, idx_dir, embeddings, faiss_gallery, index_type
):
    from bt2_hf.galleries.milvus_store import MilvusGallery, is_lite

    collection = f"server_{index_type}"
    gallery = MilvusGallery.from_embeddings(milvus_server.uri, collection, embeddings, index_type=index_type)
    # milvus-lite's server says what it is: it gets milvus-lite's index (IVF_SQ8 for ivfpq), as a .db file does.
    assert is_lite(gallery.client)
    assert (
        gallery.manifest["index"]["milvus_index"] == {"flat": "FLAT", "hnsw": "HNSW", "ivfpq": "IVF_SQ8"}[index_type]
    )
    with pytest.raises(FileExistsError, match="exists"):
        MilvusGallery.from_embeddings(milvus_server.uri, collection, embeddings)

    reopened = open_gallery(milvus_server.uri, collection)  # another client, by URI only
    assert reopened.manifest == gallery.manifest and len(reopened) == 180
    queries = open_source(idx_dir, split="test").items(0, 10)
    for name in ("old", "new"):
        model = BT2Model.from_pretrained(saved_models[name])
        embedded = model.encode(images=queries).numpy()
        a = search_gallery(reopened, embedded, k=5, query_config=model.config, allow_unmeasured=True)
        b = search_gallery(faiss_gallery, embedded, k=5, query_config=model.config, allow_unmeasured=True)
        if index_type == "flat":  # exact on both sides: the same items in the same order
            assert a.ids == b.ids
        else:  # approximate (or re-scored) on 180 items: at least the best item found, with its exact score
            assert all(x[0] == y[0] for x, y in zip(a.ids, b.ids))
        np.testing.assert_allclose(a.scores[:, 0], b.scores[:, 0], atol=1e-5)
        assert a.prefix_dim == b.prefix_dim == 8
    other = BT2Model.from_pretrained(saved_models["other"])
    with pytest.raises(IncompatibleModelsError, match="may not search"):
        search_gallery(reopened, other.encode(images=queries).numpy(), k=5, query_config=other.config)
    with pytest.raises(IncompatibleModelsError):
        backfill(reopened, other, idx_dir, split="all", fraction=0.5, show_progress=False)
    assert reopened.backfill_state is None  # the refused backfill wrote nothing
    # Nothing asked the server for what milvus-lite lacks (waiting for an index asks AllocTimestamp).
    assert "NotImplementedError" not in milvus_server.log()


def test_a_server_that_does_not_answer_is_a_clear_error():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GalleryError, match=f"Cannot reach Milvus at {uri}.*start the server"):
        open_gallery(uri, "anything")
    with pytest.raises(GalleryError, match="Cannot reach Milvus"):
        open_gallery_root(uri)


@pytest.mark.slow
def test_server_backfill_killed_and_resumed_then_cutover_and_rollback(
    milvus_server, saved_models, idx_dir, embeddings, capsys
):
    from bt2_hf.galleries.milvus_store import MilvusGallery

    uri, collection = milvus_server.uri, "killed_v1"
    MilvusGallery.from_embeddings(uri, collection, embeddings)
    aliases = open_gallery_root(uri)
    assert isinstance(aliases, MilvusAliases)
    aliases.create_alias("killed", collection)
    with pytest.raises(GalleryError, match="backfilled 0/180"):
        aliases.cutover("killed")

    # The backfill runs in another process; this one reads its progress from the server meanwhile (a milvus-lite
    # file is held by one process: only a server lets a second client watch), then kills it mid-way.
    command = [PYTHON, "-m", "bt2_hf.cli.main", "backfill", "--index", uri, "--collection", collection, "--model",
               str(saved_models["new"]), "--data", str(idx_dir), "--split", "all", "--fraction", "1", "--batch-size",
               "6", "--embed-batch-size", "6", "--no-progress", "--allow-unmeasured"]  # fmt: skip
    process = subprocess.Popen(command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline, done = time.monotonic() + 120, 0
    while time.monotonic() < deadline and process.poll() is None:
        state = MilvusGallery.open(uri, collection).backfill_state
        done = state["done"] if state else 0
        if done >= 12:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read()
    gallery = MilvusGallery.open(uri, collection)
    done = gallery.backfill_state["done"]
    assert 12 <= done < 180 and done % 6 == 0  # the state after a committed batch
    rows = gallery.backfill_order()[:done]
    expected = new_model_vectors(saved_models, idx_dir, gallery.ids_of(np.arange(180)))
    np.testing.assert_allclose(gallery.backfill_vectors(rows), expected[rows], atol=1e-5)
    assert gallery.backfilled(rows).all() and not gallery.backfilled(gallery.backfill_order()[done:]).any()

    # Resumed (here, in process) at the committed batch, to the end: every row carries the new model's vector.
    new = BT2Model.from_pretrained(saved_models["new"])
    state = backfill(gallery, new, idx_dir, split="all", fraction=1.0, batch_size=30, show_progress=False,
                     allow_unmeasured=True)  # fmt: skip
    assert state["done"] == 180 and state["order"] == "random"
    np.testing.assert_allclose(gallery.backfill_vectors(np.arange(180)), expected, atol=1e-5)

    # Cutover (by the CLI, as an operator would): the alias serves a new collection finalised from the backfill; the
    # old one is kept as the standby.
    capsys.readouterr()
    assert cli_main(["gallery", "cutover", uri, "killed"]) == 0
    entry = json.loads(capsys.readouterr().out)
    target = entry["to"]
    assert entry["from"] == collection and target.startswith(f"{collection}__") and aliases.resolve("killed") == target
    assert aliases.locate("killed") == ("killed", target) and aliases.standby("killed") == collection
    served = aliases.open_store(target)
    assert served.encoder["fingerprint"] == new.config.fingerprint and served.backfill_state is None
    np.testing.assert_allclose(served.vectors_at(np.arange(180)), expected, atol=1e-5)
    queries = new.encode(images=open_source(idx_dir, split="test").items(0, 4)).numpy()
    result = search_gallery(served, queries, k=1, query_config=new.config)
    brute = (expected @ (queries / np.linalg.norm(queries, axis=1, keepdims=True)).T).argmax(axis=0)
    assert [row[0] for row in result.ids] == served.ids_of(brute)

    entry = aliases.rollback("killed")
    assert entry["to"] == collection and aliases.resolve("killed") == collection
    assert [e["action"] for e in aliases.history("killed")] == ["create", "cutover", "rollback"]
    assert aliases.cutover("killed")["to"] == target  # the standby is reused, not finalised again
    assert set(aliases.galleries()) >= {collection, target} and aliases.aliases()["killed"]["target"] == target
