"""The mixed-gallery rules on the text upgrade (MiniLM corpus, MPNet queries), nDCG@10 along the backfill.

    python benchmarks/backfill_rules_text.py --output benchmarks/backfill_rules_text.json

The image demo's comparison (``backfill_curves.py``) on the recipe's second data set: the WordNet reverse dictionary
of ``recipes/minilm_to_mpnet`` (test split: 1,000 queries, 6,000 documents, one relevant document each), the corpus
embedded by all-MiniLM-L6-v2 and re-embedded, a fraction β at a time, by the new side. Two query models, each with
an old-space side and a new-space side:

- ``procrustes``: MPNet queries mapped into MiniLM's space by the Procrustes adapter fitted on the training split's
  glosses and their documents (the recipe's validation choice); new/new = MPNet → MPNet;
- ``bt2``: the BT² head on the frozen MPNet (``train_retrieval_head``, the recipe's settings, seed 0); its first
  384 dims search MiniLM's vectors, its full embedding searches the corpus re-embedded through the same head.

For each order (``random``, seed 0; ``priority``: the label-free order of the galleries, documents farthest from the
k-means centres of the MiniLM corpus first) and each rule (``calibrated``, ``slots``, ``naive``, ``adaptive``,
``compatible``: for
Procrustes the re-embedded documents' compatible vectors are the adapter's map of their MPNet vectors, for BT² the
head's first 384 dims; ranked as defined on both orders, although the galleries apply it to random orders only),
prints nDCG@10 at
β = 0, 0.1, …, 1, the area along β and the lowest point minus new → old (β = 0), ranked by
:func:`bt2_hf.galleries.mixed.top_k_under_rule`. Embeddings come from the recipe's cache (no encoder runs after
``run.sh``); the head trains in about a minute of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ORDERS = ("random", "priority")
RULES = ("calibrated", "slots", "naive", "compatible", "adaptive")
K = 10


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def load_embeddings(new_model: str, cache_dir: str, split: str):
    """The data, the qrels of ``split`` as corpus rows, and both encoders' pooled features (from the cache)."""
    from bt2_hf.backbones.sentence_encoder import SentenceEncoder
    from bt2_hf.data.wordnet_reverse_dictionary import load_wordnet_reverse_dictionary
    from bt2_hf.experiments.embedding_cache import embed_texts_cached
    from bt2_hf.experiments.text_upgrade import default_old_model_path

    data = load_wordnet_reverse_dictionary()  # the recipe's defaults: the splits of `bt2 text-upgrade`
    doc_rows = {doc_id: row for row, doc_id in enumerate(data["corpus"]["doc_id"])}
    relevant = {name: [[doc_rows[doc] for doc in docs] for docs in data[name]["relevant_doc_ids"]]
                for name in ("train", split)}  # fmt: skip
    cache = Path(os.path.expanduser(cache_dir))
    features = {}
    for side, path in (("old", default_old_model_path()), ("new", new_model)):
        encoder = SentenceEncoder.from_pretrained(path)
        for name in ("corpus", "train", split):
            cached = embed_texts_cached(encoder, data[name]["text"], cache, normalize=False)
            print(
                f"{side} {name}: {len(cached.embeddings)} texts {'from the cache' if cached.from_cache else 'embedded'}"
            )
            features[side, name] = cached.embeddings
        features[side, "encoder"] = encoder
    return relevant, features


def query_models(features, relevant, split: str, head_steps: int, seed: int) -> dict[str, dict]:
    """Each query model's old-space queries, new queries and new corpus (unit rows), and its fit seconds."""
    from bt2_hf.adapters import fit_adapter
    from bt2_hf.methods.retrieval import RetrievalHeadConfig
    from bt2_hf.training.retrieval_head import head_embeddings, train_retrieval_head

    old = {name: unit(features["old", name]) for name in ("corpus", "train", split)}
    new = {name: unit(features["new", name]) for name in ("corpus", "train", split)}
    train_docs = np.asarray([rows[0] for rows in relevant["train"]])
    models = {}
    start = time.perf_counter()
    adapter = fit_adapter("procrustes", np.concatenate([new["train"], new["corpus"][train_docs]]),
                          np.concatenate([old["train"], old["corpus"][train_docs]]))  # fmt: skip
    # The compatible rule's vectors of re-embedded documents in MiniLM's space: the adapter's map of their MPNet ones.
    models["procrustes"] = {"old_space": adapter.apply(new[split]), "new": new[split], "new_corpus": new["corpus"],
                            "compatible_corpus": adapter.apply(new["corpus"]),
                            "fit_seconds": time.perf_counter() - start}  # fmt: skip
    result = train_retrieval_head(
        str(features["new", "encoder"].path),
        query_features=features["new", "train"],
        document_features=features["new", "corpus"][train_docs],
        old_document_embeddings=old["corpus"][train_docs],
        pairs=np.stack([np.arange(len(train_docs)), np.arange(len(train_docs))], axis=1),
        old_query_embeddings=old["train"],
        config=RetrievalHeadConfig(method="bt2"),
        steps=head_steps,
        seed=seed,
        old_model=str(features["old", "encoder"].path),
        old_model_fingerprint=features["old", "encoder"].fingerprint,
    )
    queries = head_embeddings(result.model, features["new", split])
    prefix = result.model.config.compatible_dim
    models["bt2"] = {"old_space": queries[:, :prefix], "new": queries,
                     "new_corpus": head_embeddings(result.model, features["new", "corpus"]),
                     "fit_seconds": result.train_seconds}  # fmt: skip
    return models, old


def curves(model: dict, old_corpus: np.ndarray, relevant, orders: dict, betas) -> dict:
    """nDCG@10 (percent) along β for every order and rule, with the area and the lowest point minus β = 0."""
    from bt2_hf.experiments.text_upgrade_metrics import metrics_at_k
    from bt2_hf.galleries.mixed import top_k_under_rule

    out = {}
    for order_name, order in orders.items():
        values = {rule: [] for rule in RULES}
        for beta in betas:
            use_new = np.zeros(len(old_corpus), dtype=bool)
            use_new[order[: int(np.floor(beta * len(old_corpus)))]] = True
            for rule in RULES:
                rows = top_k_under_rule(model["old_space"], old_corpus, model["new"], model["new_corpus"], use_new, K,
                                        rule=rule, compatible_gallery=model.get("compatible_corpus"),
                                        random_order=order_name == "random")  # fmt: skip
                values[rule].append(100.0 * metrics_at_k(rows, relevant, K)[f"ndcg@{K}"])
        for rule, curve in values.items():
            out[f"{order_name}/{rule}"] = {"order": order_name, "rule": rule, "betas": list(betas), f"ndcg@{K}": curve,
                                           "area": float(np.trapezoid(curve, betas)),
                                           "least_minus_new_old": min(curve) - curve[0]}  # fmt: skip
    return out


def main() -> None:
    from bt2_hf.experiments.text_upgrade_settings import DEFAULT_CACHE_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new_model", default="~/.cache/bt2_hf/models/all-mpnet-base-v2")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--split", default="test", help="test (report) or validation")
    parser.add_argument("--head_steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the BT² head's seed and the random order's")
    parser.add_argument("--output", help="JSON file for the curves")
    args = parser.parse_args()

    from bt2_hf.retrieval.backfill import backfill_order
    from bt2_hf.utils.io import atomic_write_text

    started = time.perf_counter()
    relevant, features = load_embeddings(os.path.expanduser(args.new_model), args.cache_dir, args.split)
    models, old = query_models(features, relevant, args.split, args.head_steps, args.seed)
    orders = {name: backfill_order(old["corpus"], None, name, args.seed) for name in ORDERS}
    betas = [round(float(b), 1) for b in np.linspace(0.0, 1.0, 11)]
    from bt2_hf.experiments.text_upgrade_metrics import retrieval_metrics

    old_old = 100.0 * retrieval_metrics(old[args.split], old["corpus"], relevant[args.split], K)[f"ndcg@{K}"]
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "split": args.split,
               "queries": len(relevant[args.split]), "documents": len(old["corpus"]), "old_old": old_old,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip(), "models": {}}  # fmt: skip
    print(f"{len(relevant[args.split])} queries ({args.split}), {len(old['corpus'])} documents; nDCG@{K} % at β = 0, "
          f"0.1, …, 1; old/old (MiniLM → MiniLM) {old_old:.2f}")  # fmt: skip
    print("| query model | order | rule | nDCG@10 along β | area | least − new→old |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        measured = curves(model, old["corpus"], relevant[args.split], orders, betas)
        results["models"][name] = {"fit_seconds": model["fit_seconds"], "curves": measured}
        for curve in measured.values():
            values = " ".join(f"{v:.1f}" for v in curve[f"ndcg@{K}"])
            print(f"| {name} | {curve['order']} | {curve['rule']} | {values} | {curve['area']:.2f} | "
                  f"{curve['least_minus_new_old']:+.2f} |")  # fmt: skip
    results["seconds"] = time.perf_counter() - started
    print(f"{results['seconds']:.0f} s")
    if args.output:
        atomic_write_text(Path(args.output), json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
