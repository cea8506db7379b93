"""Choose the BT² / BCT retrieval-head settings on validation, then report test once over 3 seeds.

Embeds (or reads from ``bt2 text-upgrade``'s embedding cache) the WordNet reverse dictionary's corpus and query splits
with the old model (all-MiniLM-L6-v2, unit embeddings: the old gallery) and the new encoder (all-mpnet-base-v2,
pooled features: what the head reads). Every run trains a head with :func:`bt2_hf.training.train_retrieval_head` and scores nDCG@10 (one
relevant document per query: 1 / log2(1 + rank) when it is in the first 10). Usage::

    python scripts/text_upgrade_heads.py --select --mpnet MPNET_DIR --output validation.json
    python scripts/text_upgrade_heads.py --test --mpnet MPNET_DIR --settings chosen.json --output test.json
    python scripts/text_upgrade_heads.py --make_unlabelled UNLABELLED --mpnet MPNET_DIR   # then --unlabelled UNLABELLED
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

K = 10
SPLITS = ("train", "validation", "test")


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def ndcg_at_k(queries: np.ndarray, gallery: np.ndarray, relevant: list[list[int]], k: int = K) -> float:
    """Mean nDCG@k (binary gains) of an exact cosine search; ties go to the lower gallery row (stable sort)."""
    width = min(queries.shape[1], gallery.shape[1])
    queries, gallery = unit(queries[:, :width]), unit(gallery[:, :width])  # the prefix rule, re-normalised
    total = 0.0
    for start in range(0, len(queries), 512):
        scores = queries[start : start + 512] @ gallery.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        for row, ranked in enumerate(order):
            wanted = set(relevant[start + row])
            dcg = sum(1.0 / np.log2(rank + 2) for rank, item in enumerate(ranked) if item in wanted)
            ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(len(wanted), k)))
            total += dcg / ideal
    return 100.0 * total / len(queries)


def load(mpnet: str, cache_dir: str) -> dict:
    """The WordNet reverse dictionary (default sizes) embedded by both encoders, through the shared embedding cache
    of ``bt2 text-upgrade`` (an entry is computed once, by whichever run needs it first)."""
    from bt2_hf.backbones.sentence_encoder import SentenceEncoder
    from bt2_hf.data.wordnet_reverse_dictionary import load_wordnet_reverse_dictionary
    from bt2_hf.experiments.embedding_cache import embed_texts_cached
    from bt2_hf.experiments.text_upgrade import default_old_model_path

    data = load_wordnet_reverse_dictionary()
    rows = {doc: i for i, doc in enumerate(data["corpus"]["doc_id"])}
    arrays: dict = {"qrels": {s: [[rows[d] for d in r] for r in data[s]["relevant_doc_ids"]] for s in SPLITS}}
    for side, path in (("old", default_old_model_path()), ("new", mpnet)):
        encoder = SentenceEncoder.from_pretrained(path)
        for name in ("corpus", *SPLITS):
            features = embed_texts_cached(encoder, data[name]["text"], cache_dir, normalize=False).embeddings
            # the old gallery holds unit embeddings; the new side keeps the pooled features the head reads
            arrays[f"{side}_{name}"] = unit(features) if side == "old" else features
    return arrays


def make_unlabelled(folder: Path, mpnet: str, cache_dir: str, count: int = 6000) -> None:
    """Glosses of WordNet synsets that are no query of any split and no text of the corpus or splits, in a seeded
    hash order, embedded by both models: texts without relevance labels for the heads' match terms."""
    import hashlib

    from bt2_hf.backbones.sentence_encoder import SentenceEncoder
    from bt2_hf.data.wordnet_reverse_dictionary import load_wordnet_reverse_dictionary, read_synsets
    from bt2_hf.experiments.embedding_cache import embed_texts_cached
    from bt2_hf.experiments.text_upgrade import default_old_model_path

    data = load_wordnet_reverse_dictionary()
    queried = {q for split in SPLITS for q in data[split]["query_id"]}
    seen = {t for name in ("corpus", *SPLITS) for t in data[name]["text"]}
    synsets = [s for s in read_synsets() if s.synset_id not in queried and len(s.definition().split()) >= 2]
    synsets.sort(key=lambda s: hashlib.sha256(f"7:extra:{s.synset_id}".encode()).hexdigest())
    texts: list[str] = []
    for synset in synsets:
        text = synset.definition()
        if text not in seen and len(texts) < count:
            seen.add(text)
            texts.append(text)
    folder.mkdir(parents=True, exist_ok=True)
    for side, path in (("old", default_old_model_path()), ("new", mpnet)):
        encoder = SentenceEncoder.from_pretrained(path)
        np.save(folder / f"{side}.npy", embed_texts_cached(encoder, texts, cache_dir, normalize=False).embeddings)


def pairs_of(qrels: list[list[int]]) -> np.ndarray:
    return np.array([(q, d) for q, documents in enumerate(qrels) for d in documents])


def train_and_score(data: dict, mpnet, split: str, settings: dict, seed: int) -> dict:
    from bt2_hf.methods import RetrievalHeadConfig
    from bt2_hf.training import head_embeddings, train_retrieval_head

    settings = dict(settings)
    training = {k: settings.pop(k) for k in ("steps", "batch_size", "learning_rate") if k in settings}
    # The head sees only the training queries' documents (the rows of the corpus the pairs name).
    extra = {}
    if "unlabelled_new" in data:
        extra = {"unlabelled_features": data["unlabelled_new"], "unlabelled_old_embeddings": data["unlabelled_old"]}
    result = train_retrieval_head(
        mpnet,
        data["new_train"],
        data["new_corpus"],
        data["old_corpus"],
        pairs=pairs_of(data["qrels"]["train"]),
        old_query_embeddings=data["old_train"],
        config=RetrievalHeadConfig(**settings),
        seed=seed,
        **training,
        **extra,
    )
    model = result.model
    queries = head_embeddings(model, data[f"new_{split}"])
    corpus = head_embeddings(model, data["new_corpus"])
    relevant = data["qrels"][split]
    return {
        "new_old": ndcg_at_k(queries[:, : model.config.compatible_dim], data["old_corpus"], relevant),
        "new_new": ndcg_at_k(queries, corpus, relevant),
        "train_seconds": result.train_seconds,
    }


def baselines(data: dict, split: str) -> dict:
    relevant = data["qrels"][split]
    return {
        "old_old": ndcg_at_k(data[f"old_{split}"], data["old_corpus"], relevant),
        "mpnet_new_new": ndcg_at_k(unit(data[f"new_{split}"]), unit(data["new_corpus"]), relevant),
    }


GRID = {
    "bct": [{"method": "bct", "learning_rate": lr, "old_match_weight": w} for lr in (1e-3, 1e-2) for w in (1.0, 5.0)],
    "bt2": [
        {"method": "bt2", "learning_rate": lr, "extra_dim": k, "old_match_weight": w}
        for lr, k, w in ((1e-3, 32, 1.0), (1e-3, 384, 1.0), (1e-2, 32, 1.0))
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--select", action="store_true", help="Run the validation grid (seed 0).")
    parser.add_argument("--test", action="store_true", help="Report test over seeds 0, 1, 2 with --settings.")
    parser.add_argument("--mpnet", required=True, help="The all-mpnet-base-v2 folder.")
    parser.add_argument("--cache_dir", default="~/.cache/bt2_hf/embeddings")
    parser.add_argument("--settings", type=Path)
    parser.add_argument("--methods", default="bct,bt2")
    parser.add_argument("--grid", help="A JSON list of settings to run instead of the built-in grid.")
    parser.add_argument("--unlabelled", type=Path, help="A folder with old.npy / new.npy of unlabelled texts.")
    parser.add_argument("--make_unlabelled", type=Path, help="Embed 6000 unlabelled WordNet glosses into this folder.")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.make_unlabelled:
        return make_unlabelled(args.make_unlabelled, args.mpnet, str(Path(args.cache_dir).expanduser()))
    data = load(args.mpnet, str(Path(args.cache_dir).expanduser()))
    if args.unlabelled:  # texts without relevance labels (never evaluation queries), embedded by both models
        data["unlabelled_old"] = unit(np.load(args.unlabelled / "old.npy"))
        data["unlabelled_new"] = np.load(args.unlabelled / "new.npy")
    from bt2_hf import BT2Model

    # the frozen encoder, loaded once: every run copies its backbone under a fresh head
    encoder = BT2Model.from_pretrained_backbone(args.mpnet, "hf_text", pooling="mean", embedding_dim=8)
    if args.select:
        report = {"split": "validation", "seed": 0, **baselines(data, "validation"), "runs": []}
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}), flush=True)
        grid = json.loads(args.grid) if args.grid else [s for m in args.methods.split(",") for s in GRID[m]]
        for settings in grid:
            scores = train_and_score(data, encoder, "validation", settings, seed=0)
            report["runs"].append({"settings": settings, **scores})
            print(json.dumps(report["runs"][-1]), flush=True)
            args.output.write_text(json.dumps(report, indent=2))
    else:
        chosen = json.loads(args.settings.read_text())
        report = {"split": "test", **baselines(data, "test"), "methods": {}}
        for method, settings in chosen.items():
            runs = [train_and_score(data, encoder, "test", settings, seed) for seed in (0, 1, 2)]
            summary = {name: (float(np.mean([r[name] for r in runs])), float(np.std([r[name] for r in runs], ddof=1)))
                       for name in runs[0]}  # fmt: skip
            report["methods"][method] = {"settings": settings, "per_seed": runs, "mean_sd": summary}
            print(method, json.dumps(summary), flush=True)
            args.output.write_text(json.dumps(report, indent=2))
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


if __name__ == "__main__":
    main()
