"""bt2 gallery alias | cutover | rollback on a folder of galleries, and what the served name resolves to."""

from __future__ import annotations

import json

import numpy as np

from bt2_hf import BT2Model
from bt2_hf.cli.main import main
from bt2_hf.galleries import FaissGallery, backfill
from bt2_hf.galleries.aliases import GalleryRoot


def run(capsys, *argv):
    code = main(["gallery", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cutover_and_rollback_switch_the_alias_and_are_recorded(gallery_root, serving_models, serving_data, capsys):
    root = GalleryRoot(gallery_root)
    code, _, err = run(capsys, "cutover", gallery_root, "products")
    assert code == 2 and "backfilled 0/200" in err and "finish the backfill" in err
    new = BT2Model.from_pretrained(serving_models["new"])
    gallery = FaissGallery.open(gallery_root / "products_v1")
    backfill(gallery, new, str(serving_data), fraction=1.0, batch_size=64, show_progress=False)

    code, out, _ = run(capsys, "cutover", gallery_root, "products")
    entry = json.loads(out)
    assert code == 0 and entry["action"] == "cutover" and entry["from"] == "products_v1"
    assert root.resolve("products")[1] == gallery_root / entry["to"]
    finalised = FaissGallery.open(gallery_root / entry["to"])
    assert finalised.encoder["fingerprint"] == new.config.fingerprint and finalised.backfill_state is None
    np.testing.assert_allclose(
        finalised.vectors_at(np.arange(200)), gallery.backfill_vectors(np.arange(200)), atol=1e-6
    )
    # The old gallery is left as it was (its backfill included): the rollback target.
    assert FaissGallery.open(gallery_root / "products_v1").backfill_state["done"] == 200

    code, out, _ = run(capsys, "rollback", gallery_root, "products")
    assert code == 0 and json.loads(out)["to"] == "products_v1"
    assert root.resolve("products")[1] == gallery_root / "products_v1"
    assert [e["action"] for e in root.history("products")] == ["create", "cutover", "rollback"]
    code, _, err = run(capsys, "alias", gallery_root, "../up", "products_v1")
    assert code == 2 and "Invalid gallery name" in err
    code, _, err = run(capsys, "alias", gallery_root, "products", "products_v1")
    assert code == 2 and "exists" in err


def test_milvus_cutover_and_rollback_switch_a_collection_alias(serving_models, serving_data, tmp_path, capsys):
    import pytest

    pytest.importorskip("milvus_lite")
    from bt2_hf.galleries import open_source
    from bt2_hf.galleries.aliases import MilvusAliases
    from bt2_hf.galleries.milvus_store import MilvusGallery

    old, new = BT2Model.from_pretrained(serving_models["old"]), BT2Model.from_pretrained(serving_models["new"])
    source = open_source(serving_data, split="train")
    images = source.items(0, 60)
    uri = str(tmp_path / "galleries.db")
    from bt2_hf.galleries import model_identity

    gallery = MilvusGallery.build(uri, "products_v1", old.encode(images=images).numpy(), list(range(60)),
                                  encoder=model_identity(old))  # fmt: skip
    assert run(capsys, "alias", uri, "products", "products_v1")[0] == 0
    code, _, err = run(capsys, "cutover", uri, "products")
    assert code == 2 and "backfilled 0/60" in err
    new_vectors = new.encode(images=images).numpy()
    backfill(gallery, embed_rows=lambda rows: new_vectors[rows], identity=model_identity(new), query_config=new.config,
             fraction=1.0, batch_size=32, show_progress=False)  # fmt: skip

    code, out, _ = run(capsys, "cutover", uri, "products")
    entry = json.loads(out)
    assert code == 0 and entry["from"] == "products_v1" and entry["to"].startswith("products_v1__")
    aliases = MilvusAliases(uri)
    assert aliases.resolve("products") == entry["to"]
    served = MilvusGallery.open(uri, aliases.resolve("products"))
    assert served.encoder["fingerprint"] == new.config.fingerprint
    found = served.search(new_vectors[:3], k=1, query_config=new.config)
    assert [ids[0] for ids in found.ids] == [0, 1, 2]
    code, out, _ = run(capsys, "rollback", uri, "products")
    assert code == 0 and aliases.resolve("products") == "products_v1"
    assert [e["action"] for e in aliases.record("products")["history"]] == ["create", "cutover", "rollback"]
    assert aliases.record("products")["standby"] == entry["to"]


def test_served_models_get_half_the_cores_unless_told_otherwise(capsys):
    from bt2_hf.cli.serve import main, model_threads

    assert [model_threads(None, cores) for cores in (1, 2, 3, 16)] == [1, 1, 1, 8]
    assert model_threads(3, 16) == 3 and model_threads(0, 16) is None
    assert main(["nowhere", "--model-threads", "-1"]) == 2
    assert "--model_threads must be 0 or more" in capsys.readouterr().err
