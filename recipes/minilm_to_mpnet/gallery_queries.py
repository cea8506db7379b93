"""The test queries of the retrieval set as a .jsonl file for `bt2 index search`, and the nDCG@10 of its hits.

Usage (from the repository root)::

    python recipes/minilm_to_mpnet/gallery_queries.py export runs/gallery/wordnet_rd runs/gallery/test_queries.jsonl
    bt2 index search --index runs/gallery/gallery --query_model MODEL --query_data runs/gallery/test_queries.jsonl \\
        -k 10 --output hits.json
    python recipes/minilm_to_mpnet/gallery_queries.py score runs/gallery/wordnet_rd hits.json

``score`` prints Recall@10, MRR@10 and nDCG@10 (percent, binary relevance: each query has one relevant document)
of what the gallery returned, ranked by whatever rule the search used.
"""

from __future__ import annotations

import json
import math
import sys


def export(data_dir: str, output: str, split: str = "test") -> None:
    from datasets import load_from_disk

    from bt2_hf.utils.io import atomic_write_text

    data = load_from_disk(data_dir)
    wanted = {row["query_id"] for row in data[f"qrels_{split}"] if row["score"] > 0}
    rows = [{"id": row["id"], "text": row["text"]} for row in data["queries"] if row["id"] in wanted]
    atomic_write_text(output, "".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} {split} queries → {output}")


def score(data_dir: str, hits_file: str, split: str = "test", k: int = 10) -> None:
    from datasets import load_from_disk

    data = load_from_disk(data_dir)
    relevant: dict[str, set[str]] = {}
    for row in data[f"qrels_{split}"]:
        if row["score"] > 0:
            relevant.setdefault(row["query_id"], set()).add(row["corpus_id"])
    with open(hits_file) as handle:
        results = json.load(handle)["results"]
    recall = mrr = ndcg = 0.0
    for result in results:
        wanted, ranked = relevant[str(result["query"])], [str(i) for i in result["ids"][:k]]
        found = [rank for rank, doc in enumerate(ranked) if doc in wanted]
        recall += len(found) / len(wanted)
        mrr += 1.0 / (found[0] + 1) if found else 0.0
        ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(wanted), k)))
        ndcg += sum(1.0 / math.log2(rank + 2) for rank in found) / ideal
    n = len(results)
    print(
        f"{n} queries: Recall@{k} {100 * recall / n:.2f}  MRR@{k} {100 * mrr / n:.2f}  nDCG@{k} {100 * ndcg / n:.2f}"
    )


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"export": export, "score": score}[command](*arguments)
