"""The settings of ``bt2 text-upgrade`` (:class:`TextUpgradeSettings`), in a module that imports nothing heavy, so that
the command's ``--help`` shows its defaults without importing torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "bt2_hf", "embeddings")


@dataclass
class TextUpgradeSettings:
    """Everything a run of the text upgrade (all-MiniLM-L6-v2 → all-mpnet-base-v2 on the WordNet reverse dictionary)
    depends on (the flags of ``bt2 text-upgrade``).

    Args:
        output_dir (`str`): where ``results.json``, ``results.md`` and ``text_upgrade.png`` go (built in a staging
            folder and swapped in).
        new_model (`str`): the new encoder's local folder (all-mpnet-base-v2, assembled by the recipe's set-up).
        old_model (`str`, *optional*): the old encoder's local folder (default: the packaged all-MiniLM-L6-v2).
        wordnet_dir (`str`, *optional*): the WordNet database folder (default: Debian's ``/usr/share/wordnet``).
        num_documents (`int`): documents in the corpus (every query's document plus distractors).
        train_queries, validation_queries, test_queries (`int`): queries per split.
        split_seed (`int`): the hash seed of the splits.
        seeds (`list[int]`): the seeds of everything trained (the residual MLP adapter; BT²/BCT heads).
        cache_dir (`str`): where the embeddings are cached (keyed by encoder fingerprint and texts).
        batch_size (`int`): texts per forward pass when embedding.
        k (`int`): the cut-off of Recall@K, MRR@K, nDCG@K.
        ranks (`list[int]`): candidate ranks of the low-rank affine adapter (chosen on validation).
        fit_on (`list[str]`): candidate training pairs of the adapters, chosen on validation: ``queries`` (the new and
            old embeddings of the training glosses) and ``queries+documents`` (also of their documents).
        mlp_hidden_dim, mlp_epochs (`int`): the residual MLP adapter's width and epochs.
        head_steps (`int`): optimisation steps of the BT² / BCT heads (when that trainer is available).
        backfill (`bool`): compute the backfill curves (slot rule) on the test split.
        overwrite (`bool`): replace an existing ``output_dir``.
    """

    output_dir: str
    new_model: str | None = None
    old_model: str | None = None
    wordnet_dir: str | None = None
    num_documents: int = 6000
    train_queries: int = 3000
    validation_queries: int = 500
    test_queries: int = 1000
    split_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    cache_dir: str = DEFAULT_CACHE_DIR
    batch_size: int = 32
    k: int = 10
    ranks: list[int] = field(default_factory=lambda: [64, 128, 256, 384])
    fit_on: list[str] = field(default_factory=lambda: ["queries", "queries+documents"])
    mlp_hidden_dim: int = 256
    mlp_epochs: int = 30
    head_steps: int = 500
    backfill: bool = True
    overwrite: bool = False
