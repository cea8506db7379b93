"""Train the recipe's BT² query model (a head on the frozen all-mpnet-base-v2) and save it as a bt2_hf checkpoint.

`bt2 text-upgrade` measures the BT² head but saves no model; the gallery path needs one on disk, so this script
trains the same head (the recipe's training split of the WordNet reverse dictionary, the default settings of
``train_retrieval_head``, seed 0) against the MiniLM checkpoint that `bt2 wrap` made, and saves it with its model
card. Embeddings come from the recipe's cache (``~/.cache/bt2_hf/embeddings``): after `run.sh` no encoder runs.

Usage (from the repository root)::

    python recipes/minilm_to_mpnet/train_bt2_query_model.py --old runs/gallery/minilm \\
        --new_model ~/.cache/bt2_hf/models/all-mpnet-base-v2 --output runs/gallery/mpnet-bt2
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from bt2_hf import BT2Model
from bt2_hf.backbones.sentence_encoder import SentenceEncoder
from bt2_hf.data.wordnet_reverse_dictionary import load_wordnet_reverse_dictionary
from bt2_hf.experiments.embedding_cache import embed_texts_cached
from bt2_hf.experiments.text_upgrade import default_old_model_path
from bt2_hf.experiments.text_upgrade_settings import DEFAULT_CACHE_DIR
from bt2_hf.hub.card import create_or_update_model_card
from bt2_hf.methods.retrieval import RetrievalHeadConfig
from bt2_hf.training.retrieval_head import train_retrieval_head
from bt2_hf.utils.io import atomic_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the wrapped MiniLM checkpoint (`bt2 wrap`): the gallery's model")
    parser.add_argument("--old_folder", help="MiniLM's sentence-transformers folder (default: the installed package)")
    parser.add_argument("--new_model", required=True, help="the all-mpnet-base-v2 folder")
    parser.add_argument("--output", required=True)
    parser.add_argument("--method", default="bt2", choices=["bt2", "bct"])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    data = load_wordnet_reverse_dictionary()  # the recipe's defaults: the same splits as `bt2 text-upgrade`
    rows = {doc_id: row for row, doc_id in enumerate(data["corpus"]["doc_id"])}
    train_docs = np.asarray([rows[docs[0]] for docs in data["train"]["relevant_doc_ids"]])
    train_texts, corpus_texts = data["train"]["text"], data["corpus"]["text"]
    cache = Path(os.path.expanduser(args.cache_dir))
    old = SentenceEncoder.from_pretrained(args.old_folder or default_old_model_path())
    new = SentenceEncoder.from_pretrained(args.new_model)

    def embed(encoder, texts, normalize=False):
        # pooled features, as `bt2 text-upgrade` caches them (the whole corpus: one cache entry)
        rows = embed_texts_cached(encoder, texts, cache, normalize=False).embeddings
        return rows / np.linalg.norm(rows, axis=1, keepdims=True) if normalize else rows

    old_model = BT2Model.from_pretrained(args.old)
    result = train_retrieval_head(
        args.new_model,
        query_features=embed(new, train_texts),
        document_features=embed(new, corpus_texts)[train_docs],
        old_document_embeddings=embed(old, corpus_texts, normalize=True)[train_docs],
        old_query_embeddings=embed(old, train_texts, normalize=True),
        config=RetrievalHeadConfig(method=args.method),
        steps=args.steps,
        seed=args.seed,
        old_model=args.old,
        old_model_fingerprint=old_model.config.fingerprint,
    )
    with atomic_directory(args.output, overwrite=args.overwrite) as staging:
        result.model.save_pretrained(staging)
        create_or_update_model_card(staging)
    config = result.model.config
    print(f"{args.method} head trained in {result.train_seconds:.1f} s on {len(train_texts)} pairs → {args.output}")
    print(f"  {config.embedding_dim}-d embedding, first {config.compatible_dim} dims compatible; {config.fingerprint}")


if __name__ == "__main__":
    main()
