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
