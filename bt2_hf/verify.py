"""Measure whether a new model may search an old model's galleries, and record the measurement in its config.

Two kinds of held-out data: labelled classes (:func:`verify_compatibility`) and retrieval sets of queries,
documents and relevance judgements (:func:`verify_retrieval_set`: Recall@10, MRR@10, nDCG@10); both write the same
measured entry.

:func:`verify_compatibility` is the only writer of ``"measured"`` compatibility entries (pipelines such as the demo
and ``bt2 series`` call it). It embeds a named held-out split with the old, the new (and optionally an independently
trained) model, evaluates old→old, new→old and new→new with the one evaluator (:mod:`bt2_hf.retrieval`, query =
gallery = the split, leave-one-out, cosine on the old-width prefix, re-normalised), judges the criterion
``M(new→old) > M(old→old)`` on every judged metric, and writes the entry (data set name, split, size and content hash;
metrics; criterion and margin; date; bt2_hf version) into the new model's ``config.json``. A failing criterion is
recorded as failing, and galleries refuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .compatibility import DEFAULT_CRITERION_METRICS, declare_compatibility
from .fingerprint import fingerprint_model
from .utils.io import atomic_write_json, final_location

logger = logging.getLogger(__name__)

DEFAULT_VERIFY_METRICS = ("top1", "top5", "map")


@dataclass
class VerificationResult:
    """What :func:`verify_compatibility` measured and recorded.

    Args:
        entry (`dict`): the ``compatible_with`` entry written for the old model (``status="measured"``).
        report (`PairReport`): the evaluator's report (fractions); ``report.to_dict()`` is the one results schema.
        dataset (`dict`): ``{"name", "split", "size", "sha256"}`` (plus ``max_per_class`` / ``seed`` if subsampled).
        new_name (`str`), old_name (`str`): the models, as recorded.
        written_to (`Path`, *optional*): the ``config.json`` that was rewritten, if any.
        embeddings (`dict[str, np.ndarray]`): ``"old"``, ``"new"`` (and ``"independent"``) embeddings of the split,
            for callers that plot or search them without embedding again.
        labels (`np.ndarray`): the split's labels, in the embeddings' order.
    """

    entry: dict[str, Any]
    report: Any
    dataset: dict[str, Any]
    new_name: str
    old_name: str
    written_to: Path | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """Whether the criterion held on every judged metric."""
        return bool(self.entry["criterion"]["passed"])

    @property
    def margin(self) -> dict[str, float]:
        """``M(new→old) − M(old→old)`` per judged metric, in percentage points."""
        return dict(self.entry["criterion"]["margin"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the models, the data set, the recorded entry and ``report.to_dict()``."""
        return {"new": self.new_name, "old": self.old_name, "dataset": self.dataset, "entry": self.entry,
                "report": self.report.to_dict()}  # fmt: skip


def dataset_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 over the split's shapes, dtypes and bytes (images then labels): the same items in the same order give
    the same hash, whatever file they were read from."""
    digest = hashlib.sha256()
    for name, tensor in (("images", images), ("labels", labels)):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _load_model(model_or_path: Any, role: str):
    from .modeling_bt2 import BT2Model

    if hasattr(model_or_path, "config") and hasattr(model_or_path, "state_dict"):
        return model_or_path, None
    path = str(model_or_path)
    try:
        return BT2Model.from_pretrained(path), path  # verifies the weights against their fingerprint
    except OSError as error:
        raise OSError(f"Cannot load the {role} model {path!r}: {error}") from error


def _load_split(data: Any, split: str, data_dir: str | None, dataset_name: str | None):
    """(ImageClassificationData, name) for a data spec or already loaded data."""
    from .data import ImageClassificationData, load_image_classification

    if isinstance(data, ImageClassificationData):
        return data, dataset_name or (data.source if data.source != "in-memory" else None)
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(
            f"data must be a dataset name, a directory or an ImageClassificationData, got {type(data).__name__}."
        )
    spec = str(data)
    loaded = load_image_classification(spec, split, data_dir=data_dir)
    name = dataset_name or (Path(spec).name if Path(spec).expanduser().is_dir() else spec)
    return loaded, name


def _write_entry(checkpoint_dir: Path, config: Any) -> Path:
    """Rewrite only ``compatible_with`` in ``config.json`` (atomically): the weights, their fingerprint and every other
    key stay as they are, so the checkpoint still loads and verifies."""
    path = checkpoint_dir / "config.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("fingerprint") != config.fingerprint:
        raise ValueError(
            f"{path} changed while it was verified (fingerprint {raw.get('fingerprint')} vs {config.fingerprint}); "
            "run bt2 verify again."
        )
    raw["compatible_with"] = config.compatible_with
    atomic_write_json(path, raw)
    return path


def _declare_measured(
    new_model, old_model, report, method, dataset, old_revision, old_name, criterion_metrics, replaced, old_local
) -> dict[str, Any]:
    """Write the measured entry into ``new_model.config`` (both verifications: labelled classes and retrieval sets)."""
    return declare_compatibility(
        new_model.config,
        # The fingerprint galleries record is config.fingerprint (verified by from_pretrained); only a model that was
        # never saved has none, and then it is computed from the weights.
        old_model.config if old_model.config.fingerprint else old_model,
        method=method,
        metrics=report.to_dict(),
        dataset=dataset,
        revision=old_revision,
        name_or_path=old_name,
        criterion_metrics=criterion_metrics,
        # the verified fingerprint of the weights measured (a never-saved model: of its state now)
        query_fingerprint=fingerprint_model(new_model),
        replaced=replaced,
        local_path=old_local,
    )


def _names_and_replacement(new, new_path, new_model, old, old_path, old_model, old_name, dataset, replace, write):
    """The names a measured entry records (the old model's local folder where it will live, never inside a staging
    folder about to be renamed), and the measured entry it replaces (refused unless ``replace``)."""
    old_local = final_location(old_path) if old_path is not None and Path(old_path).is_dir() else None
    old_name = old_name or old_local or (str(old) if old_path is not None else None) or old_model.config.name_or_path
    old_fingerprint = old_model.config.fingerprint or fingerprint_model(old_model)
    replaced = _check_replacement(new_model.config, old_fingerprint, dataset, replace) if write else None
    new_name = str(new) if new_path is not None else (new_model.config.name_or_path or "<new model>")
    return old_local, old_name, new_name, replaced


def _write_measured(new_path, new_model, write: bool, update_card: bool, repo_id: str | None) -> Path | None:
    """Write the new model's config (with its measured entry) and refresh its card, when it is a local checkpoint."""
    if write and new_path is not None and (Path(new_path) / "config.json").is_file():
        written_to = _write_entry(Path(new_path), new_model.config)
        if update_card:
            from .hub.card import create_or_update_model_card

            create_or_update_model_card(new_path, repo_id=repo_id or new_model.config.name_or_path or None)
        return written_to
    if write and new_path is not None:
        logger.warning("%s is not a local checkpoint directory: the entry was not written to disk.", new_path)
    return None


def _verification_split(data, split: str, data_dir, dataset_name, max_per_class, seed: int):
    """The held-out split in memory (a per-class subsample when asked) and the dataset record of the entry."""
    split_data, name = _load_split(data, split, data_dir, dataset_name)
    if max_per_class is not None:
        split_data = split_data.take_each_class(max_per_class, seed=seed)
    if split_data.images is None:
        raise ValueError("bt2 verify needs the split in memory (load_image_classification(..., in_memory=True)).")
    if len(split_data) < 2:
        raise ValueError(f"The {split!r} split has {len(split_data)} items; retrieval needs at least two.")
    dataset = {
        "name": name or "unnamed",
        "split": split,
        "size": len(split_data),
        "sha256": dataset_fingerprint(split_data.images, split_data.labels),
    }
    if max_per_class is not None:
        dataset.update(max_per_class=int(max_per_class), seed=int(seed))
    return split_data, dataset


def verify_compatibility(
    new: Any,
    old: Any,
    data: Any,
    independent: Any = None,
    *,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    metrics: Sequence[str] = DEFAULT_VERIFY_METRICS,
    criterion_metrics: Sequence[str] = DEFAULT_CRITERION_METRICS,
    old_name: str | None = None,
    old_revision: str | None = None,
    method: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    write: bool = True,
    update_card: bool = True,
    repo_id: str | None = None,
    reuse_old_from: VerificationResult | None = None,
    replace: bool = False,
) -> VerificationResult:
    """Measure old→old, new→old and new→new on a held-out split, judge the criterion and record the entry.

    Args:
        new (`str`, `os.PathLike` or `BT2Model`): the new (query) model: a saved checkpoint directory (its
            ``config.json`` is rewritten with the entry and its card refreshed), a Hub id, or a loaded model (only
            its in-memory ``config`` gets the entry; save it yourself).
        old (`str`, `os.PathLike` or `BT2Model`): the old model whose galleries the new one should search.
        data (`str`, `os.PathLike` or `ImageClassificationData`): the held-out data: a dataset name
            (``"fashion_mnist"``), a directory (IDX files, ``save_to_disk`` output or an imagefolder), a Hub
            dataset id, or an already loaded split (then give ``dataset_name`` and ``split``).
        independent (`str`, `os.PathLike` or `BT2Model`, *optional*): an independently trained new model; adds
            indep→indep, the update gain and the compatibility tax to the report.
        split (`str`, *optional*, defaults to `"test"`): the held-out split's name (recorded). Never verify on the
            split the models were trained on.
        data_dir (`str`, *optional*): directory of the Fashion-MNIST IDX files when ``data="fashion_mnist"``.
        dataset_name (`str`, *optional*): the name recorded; defaults to ``data`` (or the directory's name).
        max_per_class (`int`, *optional*): evaluate on at most this many items of each class (drawn with ``seed``);
            the hash and size recorded are those of the subset.
        seed (`int`, *optional*, defaults to 0): seed of the subsample.
        metrics (`Sequence[str]`, *optional*, defaults to ``("top1", "top5", "map")``): evaluator metric names.
        criterion_metrics (`Sequence[str]`, *optional*, defaults to ``("top1", "mAP")``): the criterion must hold on
            every one of them.
        old_name (`str`, *optional*): the old model's name to record (its Hub id); defaults to ``old`` as given or
            its ``config.name_or_path``.
        old_revision (`str`, *optional*): the old model's Hub revision to record.
        method (`str`, *optional*): how the new model was trained; defaults to ``config.training["method"]``.
        batch_size (`int`, *optional*, defaults to 256): images per forward pass.
        device (`str` or `torch.device`, *optional*): where to embed; defaults to CUDA when available.
        write (`bool`, *optional*, defaults to `True`): write the entry into ``<new>/config.json`` when ``new`` is
            a checkpoint directory.
        update_card (`bool`, *optional*, defaults to `True`): refresh ``<new>/README.md`` from the new metadata.
        repo_id (`str`, *optional*): the new model's Hub id for the card (defaults to its recorded name).
        reuse_old_from (:class:`VerificationResult`, *optional*): an earlier verification of another new model against
            the same old model on the same split; its old embeddings and old→old results are reused instead of
            measured again (pipelines that verify several candidates). Checked, not trusted: the old model's
            fingerprint, the split's content hash and the metrics must be the same, or a `ValueError` says which
            differs.
        replace (`bool`, *optional*, defaults to `False`): let this measurement replace an existing measured entry
            for the same old model that used more items or another split (recorded in the entry as ``replaced``).
            Without it such a replacement is refused before anything is embedded: a smaller measurement never
            silently overrides a larger one.

    Returns:
        :class:`VerificationResult`: ``.entry`` (recorded), ``.passed``, ``.margin``, ``.report`` (a ``PairReport``),
        ``.embeddings`` and ``.labels``.

    Raises:
        `bt2_hf.IncompatibleModelsError`: the old model's width is not the new model's compatible prefix.
        `ValueError`: the split is empty or not in memory, or the models are text models.

    Example:

    ```python
    >>> from bt2_hf.verify import verify_compatibility
    >>> result = verify_compatibility("out/bt2", "out/old", "fashion_mnist", split="test")  # doctest: +SKIP
    >>> result.passed, result.margin  # doctest: +SKIP
    (True, {'top1': 1.3, 'mAP': 0.8})
    ```
    """
    from .retrieval.compatibility import compare_models
    from .retrieval.evaluator import RetrievalEvaluator

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    new_model, new_path = _load_model(new, "new")
    old_model, old_path = _load_model(old, "old")
    independent_model = _load_model(independent, "independent")[0] if independent is not None else None
    for role, model in (("new", new_model), ("old", old_model), ("independent", independent_model)):
        if model is not None and model.config.modality != "image":
            raise ValueError(
                f"The {role} model encodes {model.config.modality}; bt2 verify measures image models on an image "
                "split. For a text tower use `bt2 eval-text`."
            )
    split_data, dataset = _verification_split(data, split, data_dir, dataset_name, max_per_class, seed)

    old_local, old_name, new_name, replaced = _names_and_replacement(
        new, new_path, new_model, old, old_path, old_model, old_name, dataset, replace, write
    )

    def embed(model) -> np.ndarray:
        model.to(device).eval()
        return model.encode(images=split_data.images, batch_size=batch_size, device=device).numpy()

    known_results = {}
    if reuse_old_from is not None:
        _check_reusable(reuse_old_from, old_model, dataset, metrics)
        embeddings = {"old": reuse_old_from.embeddings["old"]}
        known_results["old/old"] = reuse_old_from.report.results["old/old"]
    else:
        embeddings = {"old": embed(old_model)}
    embeddings["new"] = embed(new_model)
    if independent_model is not None:
        embeddings["independent"] = embed(independent_model)
    labels = split_data.labels.numpy()
    evaluator = RetrievalEvaluator(metrics=metrics)
    report = compare_models(
        embeddings["old"], embeddings["new"], labels, independent=embeddings.get("independent"), evaluator=evaluator,
        known_results=known_results,
    )  # fmt: skip
    entry = _declare_measured(new_model, old_model, report, method, dataset, old_revision, old_name,
                              criterion_metrics, replaced, old_local)  # fmt: skip
    written_to = _write_measured(new_path, new_model, write, update_card, repo_id)
    if not write:
        logger.info("Not written (write=False): %s's config.json is unchanged.", new_name)
    outcome = entry["criterion"]
    logger.info(
        "%s → %s on %s:%s (%d items): criterion %s (margin %s).",
        new_name, old_name, dataset["name"], split, dataset["size"], "passed" if outcome["passed"] else "FAILED",
        ", ".join(f"{m} {v:+.2f}" for m, v in outcome["margin"].items()),
    )  # fmt: skip
    return VerificationResult(
        entry=entry, report=report, dataset=dataset, new_name=new_name, old_name=old_name, written_to=written_to,
        embeddings=embeddings, labels=labels,
    )  # fmt: skip


def _check_replacement(
    new_config: Any, old_fingerprint: str, dataset: dict[str, Any], replace: bool
) -> dict[str, Any] | None:
    """Refuse to replace a measured entry with one on fewer items or another split, unless ``replace``; return what
    is replaced (recorded in the new entry) when it is."""
    from .compatibility import entry_status, same_fingerprint

    existing = next(
        (e for e in new_config.compatible_with or [] if same_fingerprint(e.get("fingerprint"), old_fingerprint)), None
    )
    if existing is None or entry_status(existing) != "measured":
        return None
    before = existing.get("dataset") or {}
    smaller = not isinstance(before.get("size"), int) or dataset["size"] < before["size"]
    other_split = (before.get("name"), before.get("split")) != (dataset["name"], dataset["split"])
    if not (smaller or other_split):
        return None
    described = f"{before.get('name')}:{before.get('split')} ({before.get('size')} items)"
    if not replace:
        raise ValueError(
            f"{new_config.name_or_path or 'The new model'} already records a measurement against this old model on "
            f"{described}; this one is on {dataset['name']}:{dataset['split']} ({dataset['size']} items). A measured "
            "entry is replaced only by one on at least as many items of the same split: measure on the whole split "
            "(without --max_per_class), or pass --replace (replace=True) to replace it anyway (recorded in the entry)."
        )
    logger.warning("Replacing the measurement on %s with one on %d items (--replace).", described, dataset["size"])
    return {"dataset": dict(before), "date": existing.get("date"), "entry_sha256": existing.get("entry_sha256")}


def _check_reusable(
    prior: VerificationResult, old_model: Any, dataset: dict[str, Any], metrics: Sequence[str]
) -> None:
    """Refuse to reuse an earlier verification's old side unless it measured the same old model on the same items."""
    from .compatibility import same_fingerprint
    from .fingerprint import fingerprint_model

    old_fingerprint = old_model.config.fingerprint or fingerprint_model(old_model)
    problems = []
    if not same_fingerprint(prior.entry["fingerprint"], old_fingerprint):
        problems.append(f"the old model differs ({prior.entry['fingerprint']} vs {old_fingerprint})")
    if prior.dataset.get("sha256") != dataset["sha256"]:
        problems.append(
            f"the split differs (sha256 {prior.dataset.get('sha256', '?')[:12]} vs {dataset['sha256'][:12]})"
        )
    if set(prior.report.results["old/old"].metrics) != set(metrics):
        problems.append(f"the metrics differ ({sorted(prior.report.results['old/old'].metrics)} vs {sorted(metrics)})")
    if "old" not in prior.embeddings:
        problems.append("it kept no old embeddings")
    if problems:
        raise ValueError(
            "Cannot reuse the earlier verification's old→old: " + "; ".join(problems) + ". Verify without "
            "reuse_old_from."
        )


def summary_lines(result: VerificationResult) -> list[str]:
    """Readable lines of a verification: the three settings, the criterion and its margin."""
    metrics = result.entry["metrics"]
    names = list(next(iter(metrics.values())))
    dataset = result.dataset
    counted = (f"{dataset['size']} queries, {dataset['num_documents']} documents" if dataset.get("kind") == "retrieval_set"
               else f"{dataset['size']} items")  # fmt: skip
    lines = [f"{result.new_name} → {result.old_name} on {dataset['name']}:{dataset['split']} "
             f"({counted}, sha256 {dataset['sha256'][:12]})"]  # fmt: skip
    lines.append(f"{'query → gallery':<18}" + "".join(f"{n:>10}" for n in names))
    for pair, values in metrics.items():
        label = pair.replace("/", " → ")
        lines.append(f"{label:<18}" + "".join(f"{values.get(n, float('nan')):>10.2f}" for n in names))
    criterion = result.entry["criterion"]
    verdict = "PASSED" if criterion["passed"] else "FAILED"
    margins = ", ".join(f"{m} {v:+.2f}" for m, v in criterion["margin"].items())
    lines.append(f"criterion {criterion['rule']}: {verdict} (margin {margins} points)")
    return lines


# ----------------------------------------------------------------------------------------- retrieval sets (qrels)

RETRIEVAL_CUTOFF = 10
DEFAULT_RETRIEVAL_CRITERION = ("recall@10", "mrr@10", "ndcg@10")


@dataclass
class RetrievalSetReport:
    """Instance-level results of ``old/old``, ``new/old`` (and ``new/new``) on a retrieval set, in the one results
    schema (:meth:`to_dict`: ``{"results": {"old/old": {metric: fraction}, …}}``).

    Args:
        results (`dict[str, dict[str, float]]`): per ``query/document`` pair: ``recall@K`` (the fraction of each
            query's relevant documents in its first K, averaged: BEIR's Recall@K), ``mrr@K``, ``ndcg@K``, ``top1``
            (the first document is relevant) and ``mAP`` (full ranking), as fractions.
        num_queries (`int`), num_documents (`int`): what was evaluated.
    """

    results: dict[str, dict[str, float]]
    num_queries: int
    num_documents: int

    def to_dict(self) -> dict[str, Any]:
        return {"results": self.results, "num_queries": self.num_queries, "num_documents": self.num_documents}


def retrieval_set_metrics(
    query_embeddings: Any, document_embeddings: Any, relevance: Any, gains: Any = None, cutoff: int = RETRIEVAL_CUTOFF
) -> dict[str, float]:
    """The metrics of one (query encoder, document encoder) pair on a retrieval set, as fractions.

    Scores are the protocol's cosine (the wider side cut to the narrower width, re-normalised); every query ranks
    the whole corpus (ties by corpus order) through :func:`bt2_hf.retrieval.instance_metrics.instance_retrieval_metrics`.

    Args:
        query_embeddings (`np.ndarray` of shape `(Q, d)`), document_embeddings (`np.ndarray` of shape `(D, d')`).
        relevance (`np.ndarray` of `bool` `(Q, D)` or `Callable`): the judgements (every query has a relevant one).
        gains (`np.ndarray` or `Callable`, *optional*): graded relevance for nDCG (default: 1 per relevant document).
        cutoff (`int`, *optional*, defaults to 10): K of ``recall@K``, ``mrr@K`` and ``ndcg@K``.

    Returns:
        `dict[str, float]`: ``recall@K``, ``mrr@K``, ``ndcg@K``, ``top1``, ``mAP``.
    """
    from .retrieval.instance_metrics import instance_retrieval_metrics

    result = instance_retrieval_metrics(
        relevance=relevance, gains=gains, query_embeddings=query_embeddings, gallery_embeddings=document_embeddings,
        ks=(1,), cutoffs=(cutoff,), no_relevant="error",
    )  # fmt: skip
    return {
        f"recall@{cutoff}": result.recall_of_relevant[cutoff],
        f"mrr@{cutoff}": result.mrr[cutoff],
        f"ndcg@{cutoff}": result.ndcg[cutoff],
        "top1": result.recall[1],
        "mAP": result.mean_average_precision,
    }


def _check_retrieval_set_roles(new_model, old_model, old_query_model, new_document_model, documents_are: str) -> None:
    """Each model embeds what its role needs (queries are texts; documents are the set's kind), and the new model's
    compatible prefix is the old model's width."""
    for role, model, wanted in (("new", new_model, "text"), ("old query", old_query_model, "text"),
                                ("old", old_model, documents_are),
                                ("new document", new_document_model, documents_are)):  # fmt: skip
        if model is not None and model.config.modality != wanted:
            hint = " Pass the old system's text encoder as --old_query." if role == "old query" else ""
            raise ValueError(
                f"The {role} model encodes {model.config.modality}s but must embed the retrieval set's "
                f"{'queries (texts)' if wanted == 'text' and role != 'old' else documents_are + 's'}.{hint}"
            )
    new_prefix, old_dim = int(new_model.config.compatible_dim), int(old_model.config.embedding_dim)
    if new_prefix != old_dim:
        from .compatibility import IncompatibleModelsError

        raise IncompatibleModelsError(
            f"The new model's compatible prefix is {new_prefix}-d but the old model embeds {old_dim}-d vectors: they "
            "cannot be compared. Verify the new model against the old model it was trained (or adapted, bt2 adapt) "
            "against."
        )


def verify_retrieval_set(
    new: Any,
    old: Any,
    data: Any,
    *,
    old_query: Any = None,
    new_document: Any = None,
    split: str = "test",
    dataset_name: str | None = None,
    max_queries: int | None = None,
    seed: int = 0,
    cutoff: int = RETRIEVAL_CUTOFF,
    criterion_metrics: Sequence[str] = DEFAULT_RETRIEVAL_CRITERION,
    old_name: str | None = None,
    old_revision: str | None = None,
    method: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    write: bool = True,
    update_card: bool = True,
    repo_id: str | None = None,
    replace: bool = False,
) -> VerificationResult:
    """Measure a query model on a retrieval set (queries, documents, qrels) against an old model's documents, judge
    ``M(new→old) > M(old→old)`` and record the measured entry, exactly as :func:`verify_compatibility` does for
    labelled classes.

    The old model embeds the documents (the old gallery). ``old/old``: the old system's queries (``old_query``,
    default the old model) against them; ``new/old``: the new model's queries against them; ``new/new``: the new
    model's queries against the new system's documents (``new_document``, default the new model when it encodes the
    documents' modality; otherwise not measured). Text → text: ``new`` and ``old`` are text models. Caption → image:
    ``old`` is the old image model, ``old_query`` the old system's text tower, ``new`` a text tower (e.g. trained or
    adapted into the old image space) and ``new_document`` optionally the new image tower.

    Args:
        new (`str`, `os.PathLike` or `BT2Model`): the new query model (a checkpoint directory gets the entry in its
            ``config.json`` and a refreshed card); an adapted query model (``bt2 adapt``) is measured on its
            adapted embeddings.
        old (`str`, `os.PathLike` or `BT2Model`): the old model that embeds the documents (the entry names it).
        data (`str`, `os.PathLike` or `RetrievalSet`): a retrieval set folder (JSONL files or a ``save_to_disk``
            DatasetDict, see :mod:`bt2_hf.data.retrieval_sets`) or a loaded :class:`RetrievalSet`.
        old_query (*optional*): the old system's query encoder when it is not ``old`` (caption → image).
        new_document (*optional*): the new system's document encoder, for ``new/new``.
        split (`str`, *optional*, defaults to `"test"`): the qrels' split (held out: never the one the adapter or
            model was fitted on).
        dataset_name (`str`, *optional*): the name recorded (default: the folder's name).
        max_queries (`int`, *optional*), seed (`int`, *optional*, defaults to 0): evaluate a seeded subset of queries
            (recorded); the whole corpus is always searched.
        cutoff (`int`, *optional*, defaults to 10): K of Recall@K, MRR@K and nDCG@K.
        criterion_metrics (`Sequence[str]`, *optional*, defaults to ``("recall@10", "mrr@10", "ndcg@10")``): the
            criterion must hold on every one (``top1`` and ``mAP`` are recorded too: a gallery's policy may judge
            those).
        old_name, old_revision, method, batch_size, device, write, update_card, repo_id, replace: as in
            :func:`verify_compatibility`.

    Returns:
        :class:`VerificationResult` (``report`` is a :class:`RetrievalSetReport`; ``embeddings`` has
        ``old_query``, ``old_document``, ``new_query`` and maybe ``new_document``).

    Example:

    ```python
    >>> from bt2_hf.verify import verify_retrieval_set
    >>> result = verify_retrieval_set("runs/mpnet-adapted", "runs/minilm", "wordnet_rd/", split="test")  # doctest: +SKIP
    >>> result.passed, result.margin  # doctest: +SKIP
    (True, {'recall@10': 4.1, 'mrr@10': 2.9, 'ndcg@10': 3.2})
    ```
    """
    from .data.retrieval_sets import RetrievalSet, load_retrieval_set

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    new_model, new_path = _load_model(new, "new")
    old_model, old_path = _load_model(old, "old")
    old_query_model = _load_model(old_query, "old query")[0] if old_query is not None else old_model
    new_document_model = _load_model(new_document, "new document")[0] if new_document is not None else None
    if isinstance(data, RetrievalSet):
        retrieval_set = data
    else:
        retrieval_set = load_retrieval_set(data, split, dataset_name=dataset_name, max_queries=max_queries, seed=seed)
    documents_are = retrieval_set.document_modality
    if new_document_model is None and new_model.config.modality == documents_are:
        new_document_model = new_model
    _check_retrieval_set_roles(new_model, old_model, old_query_model, new_document_model, documents_are)
    dataset = {
        "name": dataset_name or retrieval_set.name,
        "split": split,
        "size": len(retrieval_set.queries),
        "sha256": retrieval_set.content_sha256(),
        "kind": "retrieval_set",
        "num_documents": len(retrieval_set.documents),
        "documents": documents_are,
    }
    if max_queries is not None:
        dataset.update(max_queries=int(max_queries), seed=int(seed))
    old_local, old_name, new_name, replaced = _names_and_replacement(
        new, new_path, new_model, old, old_path, old_model, old_name, dataset, replace, write
    )

    documents = retrieval_set.load_documents()

    def embed(model, items, modality) -> np.ndarray:
        model.to(device).eval()
        argument = {"images": items} if modality == "image" else {"texts": items}
        return model.encode(**argument, batch_size=batch_size, device=device).numpy()

    embeddings = {
        "old_query": embed(old_query_model, retrieval_set.queries, "text"),
        "old_document": embed(old_model, documents, documents_are),
        "new_query": embed(new_model, retrieval_set.queries, "text"),
    }
    if new_document_model is not None:
        embeddings["new_document"] = embed(new_document_model, documents, documents_are)
    relevance, gains = retrieval_set.relevance()
    pairs = {"old/old": ("old_query", "old_document"), "new/old": ("new_query", "old_document"),
             "new/new": ("new_query", "new_document")}  # fmt: skip
    results = {
        pair: retrieval_set_metrics(embeddings[query], embeddings[document], relevance, gains, cutoff)
        for pair, (query, document) in pairs.items()
        if document in embeddings
    }
    report = RetrievalSetReport(results, len(retrieval_set.queries), len(retrieval_set.documents))
    entry = _declare_measured(new_model, old_model, report, method, dataset, old_revision, old_name,
                              criterion_metrics, replaced, old_local)  # fmt: skip
    if entry.get("criterion") is None:
        raise ValueError(
            f"None of the criterion metrics {list(criterion_metrics)} was measured; choose among "
            f"{sorted(next(iter(results.values())))}."
        )
    written_to = _write_measured(new_path, new_model, write, update_card, repo_id)
    outcome = entry["criterion"]
    logger.info(
        "%s → %s on the retrieval set %s:%s (%d queries, %d documents): criterion %s (margin %s).",
        new_name, old_name, dataset["name"], split, dataset["size"], dataset["num_documents"],
        "passed" if outcome["passed"] else "FAILED", ", ".join(f"{m} {v:+.2f}" for m, v in outcome["margin"].items()),
    )  # fmt: skip
    return VerificationResult(
        entry=entry, report=report, dataset=dataset, new_name=new_name, old_name=old_name, written_to=written_to,
        embeddings=embeddings,
    )  # fmt: skip
