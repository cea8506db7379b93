"""Model cards generated from a config's compatibility metadata (DESIGN §3.4, style-anchors §7.8).

The card is rendered from ``model_card_template.md`` with :class:`huggingface_hub.ModelCard`:

- YAML: ``library_name: bt2_hf``, ``tags``, ``pipeline_tag`` (``image-feature-extraction`` / ``feature-extraction``),
  ``base_model`` when the backbone started from a checkpoint, a ``bt2`` block mirroring ``config.json``'s
  compatibility metadata, and ``model-index`` results named by direction (``"top-1 new→old"``).
- Body: "Compatible with", the compatibility table, usage, training settings and citations, each between
  ``<!-- bt2_hf:begin <section> -->`` and ``<!-- bt2_hf:end -->``. Refreshing a card replaces only those blocks and the
  YAML keys bt2_hf owns; the rest of an existing README (the user's own sections, license, datasets…) is kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..compatibility import CRITERION_RULE, PAIR_ORDER, criterion_outcome, judged_metrics, load_evaluation_results
from ..fingerprint import short_fingerprint
from ..utils.io import atomic_write_text
from ..utils.repo_id import hub_id_or_none

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
README_NAME = "README.md"
BEGIN_MARKER = "<!-- bt2_hf:begin {name} -->"
END_MARKER = "<!-- bt2_hf:end -->"
_SECTION = re.compile(r"<!-- bt2_hf:begin (?P<name>[\w.-]+) -->.*?<!-- bt2_hf:end -->", re.DOTALL)
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
# YAML keys a refresh may overwrite; any other key of an existing card (license, datasets, language…) is kept.
_GENERATED_KEYS = (
    "library_name", "pipeline_tag", "base_model", "base_model_relation", "bt2", "model-index", "model_name"
)  # fmt: skip
# A card must state a license; "other" (see the card's text) until the user gives one (--license / license=).
DEFAULT_LICENSE = "other"
_METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "top10": "top-10", "mAP": "mAP", "mAP@R": "mAP@R"}
_METRIC_ORDER = ("top1", "top5", "top10", "mAP", "mAP@R")
_METHOD_LABELS = {
    "bt2": "BT² (Backward-compatible Training with Basis Transformation)",
    "bct": "BCT (influence loss)",
    "independent": "independent training (no backward-compatibility objective)",
    "post_hoc_adapter": "a post-hoc adapter (the new model unchanged, its embeddings mapped into the old space)",
}
_VERDICT_LABELS = {"compatible": "✅ compatible", "failed": "❌ not compatible", "not measured": "not measured"}
_PAIR_LABELS = {"old/old": "old → old", "new/old": "new → old", "new/new": "new → new", "indep/indep": "indep → indep"}


def pipeline_tag_for(config: Any) -> str:
    """``image-feature-extraction`` for image towers, ``feature-extraction`` for text towers."""
    return "image-feature-extraction" if config.modality == "image" else "feature-extraction"


def _metric_label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric)


def _pair_label(pair: str) -> str:
    return _PAIR_LABELS.get(pair, pair.replace("/", " → "))


def _ordered_metrics(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    names = {name for values in metrics.values() for name in values}
    return [m for m in _METRIC_ORDER if m in names] + sorted(names - set(_METRIC_ORDER))


def _ordered_pairs(metrics: Mapping[str, Any]) -> list[str]:
    return [p for p in PAIR_ORDER if p in metrics] + sorted(p for p in metrics if p not in PAIR_ORDER)


def _entries_with_card_metrics(config: Any, metrics: Any, method: str | None) -> list[dict[str, Any]]:
    """``config.compatible_with`` with ``metrics`` (if given) applied to the primary entry: the last direct one."""
    entries = [dict(e) for e in config.compatible_with]
    if metrics is None:
        return entries
    direct = [i for i, e in enumerate(entries) if not e.get("via")]
    if not direct:
        raise ValueError(
            "Metrics were given for the card, but the model declares no older model to compare with: declare one with "
            "bt2_hf.hub.declare_compatibility(config, old_model, ...) first."
        )
    primary = entries[direct[-1]]
    parsed = load_evaluation_results(metrics)
    primary["metrics"] = {pair: parsed[pair] for pair in _ordered_pairs(parsed)}
    outcome = criterion_outcome(parsed, judged_metrics(primary.get("criterion") or {"metrics": ["top1", "mAP"]}))
    if outcome is not None:
        primary["criterion"] = outcome
    else:
        primary.pop("criterion", None)
    return entries


def _dataset_name(config: Any, metrics: Any) -> str | None:
    if isinstance(metrics, (str, os.PathLike)):
        try:
            metrics = json.loads(Path(metrics).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = None
    if isinstance(metrics, Mapping) and isinstance(metrics.get("dataset"), str):
        return metrics["dataset"]
    measured = [e["dataset"] for e in config.compatible_with if isinstance(e.get("dataset"), Mapping)]
    if measured:  # the held-out data `bt2 verify` measured on
        return str(measured[-1].get("name"))
    dataset = (getattr(config, "training", None) or {}).get("dataset")
    if isinstance(dataset, Mapping):
        dataset = dataset.get("name") or dataset.get("path")
    return str(dataset) if dataset else None


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        # Four significant digits: keeps learning rates such as 0.001 readable (a fixed 2 decimals printed 0.00).
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, sort_keys=True)}`"
    return str(value).replace("|", "\\|")


def _metric_outcomes(entry: Mapping[str, Any]) -> list[tuple[str, bool, float, float, float]]:
    """``(label, passed, new→old, old→old, margin)`` for each metric the entry's criterion judged."""
    outcomes = []
    for metric in judged_metrics(entry["criterion"]):
        new_old = float(entry["metrics"]["new/old"][metric])
        old_old = float(entry["metrics"]["old/old"][metric])
        outcomes.append((_metric_label(metric), new_old > old_old, new_old, old_old, new_old - old_old))
    return outcomes


def _criterion_text(entry: Mapping[str, Any]) -> str:
    """The criterion's verdict, then each judged metric's own outcome and margin (a failing entry may fail on one)."""
    criterion = entry.get("criterion")
    if not criterion:
        return "—"
    verdict = "✅ pass" if criterion["passed"] else "❌ fail"
    parts = [
        f"{label} {'✅' if passed else '❌'} {new_old:.2f} {'>' if passed else '≤'} {old_old:.2f}, margin {margin:+.2f}"
        for label, passed, new_old, old_old, margin in _metric_outcomes(entry)
    ]
    return f"{verdict}: {'; '.join(parts)}"


def entry_verdict(entry: Mapping[str, Any], entries: list[Mapping[str, Any]] | None = None) -> str:
    """What a card may say about one ``compatible_with`` entry: ``"compatible"``, ``"failed"`` or ``"not measured"``.

    Only a measured entry whose criterion passed (or a lineage entry whose every link passed) is ``"compatible"``; the
    card makes compatible claims for those alone.

    Args:
        entry (`dict`): the entry.
        entries (`list[dict]`, *optional*): all the model's entries (to follow a lineage entry's first link).
    """
    if entry.get("via"):
        first_link = next(
            (e for e in entries or [] if not e.get("via") and e.get("fingerprint") == entry.get("via_fingerprint")),
            None,
        )
        link_ok = first_link is not None and entry_verdict(first_link) == "compatible"
        return "compatible" if entry.get("link_passed") and link_ok else "not measured"
    criterion = entry.get("criterion")
    if entry.get("status") != "measured" or criterion is None:
        return "not measured"
    return "compatible" if criterion["passed"] else "failed"


def _old_model_label(entry: Mapping[str, Any]) -> str:
    """The old model as a reader can reach it: its local copy too when the entry names a repo not pushed yet."""
    name = f"`{entry['name_or_path']}`"
    if entry.get("local_path"):
        name += f" (not yet pushed; local copy `{entry['local_path']}`)"
    return name


def _how(entry: Mapping[str, Any], entries: list[Mapping[str, Any]] | None = None) -> str:
    if entry.get("via"):
        link = "measured link" if entry.get("link_passed") else "link not measured"
        return f"through `{entry['via']}` (lineage; {link})"
    criterion = entry.get("criterion")
    if entry.get("status") != "measured" or criterion is None:
        return "declared; not measured with `bt2 verify` (galleries refuse it without allow_unmeasured)"
    dataset = entry.get("dataset") or {}
    where = f"measured on {dataset.get('name')}:{dataset.get('split')} ({dataset.get('size')} items)"
    if criterion["passed"]:
        return f"{where}; criterion passed on every judged metric"
    outcomes = ", ".join(
        f"{label} {'passes' if passed else 'FAILS'} ({margin:+.2f})" for label, passed, _, _, margin in
        _metric_outcomes(entry)
    )  # fmt: skip
    return f"{where}; criterion FAILED: {outcomes}"


def adapter_summary(config: Any, entries: list[Mapping[str, Any]] | None = None) -> dict[str, Any] | None:
    """What a card says about an adapted query model (``config.adapter``), or ``None`` for other models.

    Its compatibility with the target model is read from the model's ``compatible_with`` entry for it (measured,
    passing / failing, or not measured), never from the adapter's existence.
    """
    block = getattr(config, "adapter", None)
    if not block:
        return None
    base, target, fitted = block["base_model"], block["target_model"], dict(block.get("fitted_on") or {})
    entries = list(entries if entries is not None else getattr(config, "compatible_with", None) or [])
    entry = next((e for e in entries if e.get("fingerprint") == target["fingerprint"] and not e.get("via")), None)
    verdict = entry_verdict(entry, entries) if entry is not None else "not measured"
    if verdict == "compatible":
        compatibility = f"measured compatible: {_how(entry, entries)} ({_criterion_text(entry)})"
    elif verdict == "failed":
        compatibility = f"measured NOT compatible: {_how(entry, entries)} ({_criterion_text(entry)})"
    else:
        compatibility = (
            "not measured: galleries refuse this model until `bt2 verify` measures it against the old model"
        )
    return {
        "kind": block["kind"],
        "base": base.get("name_or_path") or "(unnamed)",
        "base_fingerprint": short_fingerprint(base.get("fingerprint")),
        "base_dim": base.get("embedding_dim"),
        "target": target.get("name_or_path") or "(unnamed)",
        "target_fingerprint": short_fingerprint(target.get("fingerprint")),
        "target_dim": target.get("embedding_dim"),
        "data": f"{fitted.get('name')}:{fitted.get('split')}" if fitted.get("name") else "(not recorded)",
        "num_pairs": fitted.get("num_pairs", "(not recorded)"),
        "data_sha256": str(fitted.get("sha256") or "")[:12] or "(not recorded)",
        "train_mean_cosine": fitted.get("train_mean_cosine"),
        "compatibility": compatibility,
    }


def build_card_data(
    config: Any,
    *,
    repo_id: str | None = None,
    metrics: Any = None,
    method: str | None = None,
    dataset: str | None = None,
    license: str | None = None,  # noqa: A002 - the model-card key
    tags: list[str] | None = None,
) -> tuple[ModelCardData, list[dict[str, Any]]]:
    """The card's YAML metadata and the compatibility entries (with card metrics applied) it was built from.

    Args:
        config (`BT2Config`): the model's config (after ``save_pretrained``, so it has its fingerprint).
        repo_id (`str`, *optional*): the Hub id, used as ``model_name``.
        metrics (`dict`, `str` or `os.PathLike`, *optional*): evaluation results (see
            :func:`~bt2_hf.hub.load_evaluation_results`) for the primary (last direct) ``compatible_with`` entry;
            they override the metrics stored in the config for the card only.
        method (`str`, *optional*): unused; results come in the one schema (``PairReport.to_dict()``).
        dataset (`str`, *optional*): the evaluation dataset's name; defaults to ``results["dataset"]`` or
            ``config.training["dataset"]``.
        license (`str`, *optional*): the card's ``license``.
        tags (`list[str]`, *optional*): extra tags.
    """
    entries = [_ordered_entry(e) for e in _entries_with_card_metrics(config, metrics, method)]
    dataset = dataset or _dataset_name(config, metrics)
    model_name = repo_id or getattr(config, "name_or_path", None) or "bt2_hf-model"
    methods = sorted(
        {e["method"] for e in entries} | ({config.training["method"]} if "method" in config.training else set())
    )
    all_tags = ["bt2_hf", "backward-compatible-embeddings", "embeddings", "retrieval", *methods]
    all_tags += [f"compatible-with-{_slug(e['name_or_path'])}" for e in entries]
    all_tags += list(tags or [])
    pipeline_tag = pipeline_tag_for(config)
    eval_results = []
    evaluated = [e for e in entries if e.get("metrics")]
    for entry in evaluated:
        gallery = entry["name_or_path"] + (f"@{entry['revision']}" if entry.get("revision") else "")
        suffix = f" vs {entry['name_or_path']}" if len(evaluated) > 1 else ""
        for pair in _ordered_pairs(entry["metrics"]):
            query_model, gallery_model = pair.split("/")
            for metric in _ordered_metrics({pair: entry["metrics"][pair]}):
                value = entry["metrics"][pair][metric]
                eval_results.append(
                    EvalResult(
                        task_type=pipeline_tag,
                        task_name="Backward-compatible retrieval",
                        dataset_type=dataset or "custom",
                        dataset_name=dataset or "custom evaluation set",
                        dataset_args={"old_model": gallery},
                        metric_type=metric,
                        metric_value=round(float(value), 4),
                        metric_name=f"{_metric_label(metric)} {query_model}→{gallery_model}{suffix}",
                    )
                )
    bt2_block: dict[str, Any] = {
        "embedding_dim": config.embedding_dim,
        "compatible_dim": config.compatible_dim,
        "normalize": config.normalize,
        "similarity": config.similarity,
        "fingerprint": config.fingerprint,
        "compatible_with": entries,
    }
    if getattr(config, "adapter", None):
        bt2_block["adapter"] = {
            key: config.adapter[key] for key in ("kind", "base_model", "target_model", "fitted_on")
        }
    # The Hub accepts only repo ids in base_model and datasets: a local start or data set goes to the bt2 block.
    base_model = hub_id_or_none(getattr(config, "base_model", None))
    init_from = (getattr(config, "training", None) or {}).get("init_from")
    if init_from and hub_id_or_none(init_from) is None:
        bt2_block["init_from"] = str(init_from)
    dataset_id = hub_id_or_none(dataset)
    if dataset and dataset_id is None:
        bt2_block["dataset"] = str(dataset)
    card_data = ModelCardData(
        library_name="bt2_hf",
        license=license or DEFAULT_LICENSE,
        tags=list(dict.fromkeys(all_tags)),
        pipeline_tag=pipeline_tag,
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        datasets=[dataset_id] if dataset_id else None,
        model_name=model_name,
        eval_results=eval_results or None,
        bt2=bt2_block,
    )
    return card_data, entries


_ENTRY_KEY_ORDER = (
    "name_or_path",
    "revision",
    "fingerprint",
    "embedding_dim",
    "method",
    "via",
    "criterion",
    "metrics",
)


def _ordered_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry with its keys in reading order (YAML keeps insertion order) and its metrics ordered too."""
    ordered = {k: entry[k] for k in _ENTRY_KEY_ORDER if k in entry}
    ordered.update({k: v for k, v in entry.items() if k not in ordered})
    if isinstance(ordered.get("metrics"), Mapping):
        ordered["metrics"] = {
            pair: {m: ordered["metrics"][pair][m] for m in _ordered_metrics({pair: ordered["metrics"][pair]})}
            for pair in _ordered_pairs(ordered["metrics"])
        }
    return ordered


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")


def _versions() -> dict[str, str]:
    import huggingface_hub
    import torch
    import transformers

    try:
        from .. import __version__ as bt2_version
    except ImportError:  # partially initialised package (card rendered during import): not fatal
        bt2_version = "unknown"
    return {
        "bt2_hf": bt2_version,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "huggingface_hub": huggingface_hub.__version__,
    }


def render_model_card(
    config: Any,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    metrics: Any = None,
    method: str | None = None,
    dataset: str | None = None,
    license: str | None = None,  # noqa: A002 - the model-card key
    tags: list[str] | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Render a fresh model card from a config's compatibility metadata.

    Args:
        config (`BT2Config`): the model's config, as saved (with ``fingerprint``).
        repo_id (`str`, *optional*): the Hub id shown in the usage snippet; defaults to ``config.name_or_path``.
        revision (`str`, *optional*): a revision to show in the usage snippet.
        metrics (`dict`, `str` or `os.PathLike`, *optional*): evaluation results for the primary compatibility entry
            (see :func:`build_card_data`).
        method (`str`, *optional*): unused; results come in the one schema (``PairReport.to_dict()``).
        dataset (`str`, *optional*): the evaluation dataset's name.
        license (`str`, *optional*): the card's license.
        tags (`list[str]`, *optional*): extra tags.
        template_path (`str` or `os.PathLike`, *optional*): a Jinja template to use instead of the packaged one.

    Returns:
        `huggingface_hub.ModelCard`.

    Example:

    ```python
    >>> from bt2_hf import BT2Config
    >>> from bt2_hf.hub import render_model_card
    >>> card = render_model_card(BT2Config(embedding_dim=16), repo_id="org/model")
    >>> card.data.library_name, card.data.pipeline_tag
    ('bt2_hf', 'image-feature-extraction')

    ```
    """
    card_data, entries = build_card_data(
        config, repo_id=repo_id, metrics=metrics, method=method, dataset=dataset, license=license, tags=tags
    )
    repo_id = repo_id or getattr(config, "name_or_path", None) or "path/to/checkpoint"
    dataset = dataset or _dataset_name(config, metrics)
    rows_entries = []
    for entry in entries:
        revision_value = entry.get("revision")
        rows_entries.append(
            {
                **entry,
                "revision_label": (
                    f"`{revision_value[:10]}`"
                    if revision_value and _SHA1.match(revision_value)
                    else (f"`{revision_value}`" if revision_value else "—")
                ),
                "short_fingerprint": short_fingerprint(entry.get("fingerprint")),
                "how": _how(entry, entries),
                "label": _old_model_label(entry),
                "verdict": _VERDICT_LABELS[entry_verdict(entry, entries)],
            }
        )
    compatible = [e for e in entries if entry_verdict(e, entries) == "compatible"]
    failed = [e for e in entries if entry_verdict(e, entries) == "failed"]
    unmeasured = [e for e in entries if entry_verdict(e, entries) == "not measured"]
    evaluated = []
    for entry in entries:
        if not entry.get("metrics"):
            continue
        metric_names = _ordered_metrics(entry["metrics"])
        rows = []
        for pair in _ordered_pairs(entry["metrics"]):
            values = [f"{entry['metrics'][pair][m]:.2f}" if m in entry["metrics"][pair] else "—" for m in metric_names]
            rows.append(
                {
                    "label": _pair_label(pair),
                    "values": values,
                    "criterion": _criterion_text(entry) if pair == "new/old" else "",
                }
            )
        evaluated.append(
            {
                "name_or_path": entry["name_or_path"],
                "dataset": dataset,
                "metric_names": [{"name": m, "label": _metric_label(m)} for m in metric_names],
                "rows": rows,
            }
        )
    training = dict(getattr(config, "training", None) or {})
    method_name = training.get("method") or (entries[-1]["method"] if entries else None)
    prefixes = sorted({e["embedding_dim"] for e in compatible})
    template_kwargs = {
        "model_name": repo_id,
        "repo_id": repo_id,
        "revision": revision,
        "modality": config.modality,
        "method": method_name,
        "method_label": _METHOD_LABELS.get(str(method_name).lower(), method_name),
        "embedding_dim": config.embedding_dim,
        "compatible_dim": config.compatible_dim,
        "similarity": config.similarity,
        "backbone_type": config.backbone_type,
        "head_type": config.head_type,
        "base_model": hub_id_or_none(getattr(config, "base_model", None))
        or (getattr(config, "training", None) or {}).get("init_from"),
        "fingerprint": config.fingerprint or "(not saved yet)",
        "article": "An" if str(config.modality)[:1].lower() in "aeiou" else "A",
        "entries": rows_entries,
        "compatible": [_old_model_label(e) for e in compatible],
        "failed": [f"{_old_model_label(e)} ({_how(e, entries)})" for e in failed],
        "unmeasured": [_old_model_label(e) for e in unmeasured],
        "evaluated": evaluated,
        "criterion_rule": CRITERION_RULE,
        "encode_argument": "images=images" if config.modality == "image" else 'texts=["a query"]',
        "first_prefix": prefixes[-1] if prefixes else config.compatible_dim,
        "training_rows": [(key, _format_value(value)) for key, value in sorted(training.items())],
        "versions": _versions(),
        "adapter": adapter_summary(config, entries),
    }
    path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    try:
        return ModelCard.from_template(card_data, template_path=str(path), **template_kwargs)
    except ImportError as error:  # huggingface_hub renders with Jinja, an optional dependency of its own
        raise ImportError("Rendering a bt2_hf model card needs jinja2: pip install jinja2") from error


# A pipeline's own section (the demo's verdict, a series step): <!-- bt2_<pipeline>:begin <name> --> … :end -->.
_PIPELINE_SECTION = re.compile(
    r"<!-- bt2_(?P<pipeline>(?!hf:)\w+):begin (?P<name>[\w.-]+) -->.*?<!-- bt2_(?P=pipeline):end -->\n?", re.DOTALL
)
_PIPELINE_ANCHOR = BEGIN_MARKER.format(name="compatible-with")


def carry_pipeline_sections(source: str, target: str) -> str:
    """``target`` with every pipeline section of ``source`` (``<!-- bt2_<pipeline>:begin <name> -->`` blocks).

    A section ``target`` already has is replaced; another goes after the summary (before "Compatible with"), where
    pipelines put them. Used when a card is rebuilt from another copy (the Hub's) so a pipeline's verdict survives.

    Args:
        source (`str`): the card that holds the pipeline's sections (a checkpoint folder's README.md).
        target (`str`): the card to carry them into.
    """
    for match in _PIPELINE_SECTION.finditer(source):
        block = match.group(0) if match.group(0).endswith("\n") else match.group(0) + "\n"
        same = re.compile(
            re.escape(f"<!-- bt2_{match.group('pipeline')}:begin {match.group('name')} -->")
            + r".*?"
            + re.escape(f"<!-- bt2_{match.group('pipeline')}:end -->")
            + r"\n?",
            re.DOTALL,
        )
        if same.search(target):
            target = same.sub(lambda _m, block=block: block, target, count=1)
        elif _PIPELINE_ANCHOR in target:
            target = target.replace(_PIPELINE_ANCHOR, block + "\n" + _PIPELINE_ANCHOR, 1)
        else:
            target = target.rstrip("\n") + "\n\n" + block
    return target


def _sections(text: str) -> dict[str, str]:
    return {match.group("name"): match.group(0) for match in _SECTION.finditer(text)}


def merge_model_card(existing: ModelCard | str, generated: ModelCard) -> ModelCard:
    """Refresh an existing card with a generated one, keeping what the user wrote.

    Generated sections (between ``<!-- bt2_hf:begin <name> -->`` and ``<!-- bt2_hf:end -->``) replace the blocks of the
    same name; generated sections the existing card lacks are appended; everything outside the markers is kept.
    In the YAML, the keys bt2_hf owns (``library_name``, ``pipeline_tag``, ``base_model``, ``bt2``, ``model-index``)
    are replaced, tags are merged, and other keys (``license``, ``datasets``…) are kept.

    Args:
        existing (`ModelCard` or `str`): the current card (or README text).
        generated (`ModelCard`): a card from :func:`render_model_card`.
    """
    existing = existing if isinstance(existing, ModelCard) else ModelCard(existing)
    old_meta = existing.data.to_dict()
    new_meta = generated.data.to_dict()
    merged = {k: v for k, v in old_meta.items() if k not in _GENERATED_KEYS or k in new_meta}
    for key, value in new_meta.items():
        if key == "tags":
            merged["tags"] = list(dict.fromkeys([*(old_meta.get("tags") or []), *(value or [])]))
        elif key in ("license", "datasets") and (value is None or value == DEFAULT_LICENSE) and old_meta.get(key):
            continue  # the user's own license / data sets win over the generated defaults
        else:
            merged[key] = value
    merged = {k: v for k, v in merged.items() if v is not None}
    body = existing.text
    new_sections = _sections(generated.text)
    old_sections = _sections(body)
    for name, block in new_sections.items():
        if name in old_sections:
            # A function replacement keeps backslashes in the block literal.
            body = re.sub(re.escape(old_sections[name]), lambda _m, block=block: block, body, count=1)
        else:
            body = body.rstrip("\n") + "\n\n" + block + "\n"
    data = ModelCardData(**_card_data_kwargs(merged))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body if body.startswith(chr(10)) else chr(10) + body}")


def _card_data_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """``ModelCardData`` keyword arguments from a card's YAML dict (``model-index`` → ``eval_results``)."""
    from huggingface_hub.repocard_data import model_index_to_eval_results

    meta = dict(meta)
    model_index = meta.pop("model-index", None)
    if model_index:
        model_name, eval_results = model_index_to_eval_results(model_index)
        meta["model_name"] = meta.get("model_name") or model_name
        meta["eval_results"] = eval_results
    return meta


def create_or_update_model_card(
    checkpoint_dir: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    config: Any = None,
    **render_kwargs: Any,
) -> Path:
    """Write (or refresh) the README.md card of a saved checkpoint from its ``config.json``.

    Args:
        checkpoint_dir (`str` or `os.PathLike`): a directory written by ``BT2Model.save_pretrained``.
        output (`str` or `os.PathLike`, *optional*): where to write the card; defaults to
            ``<checkpoint_dir>/README.md``. An existing file there is refreshed with :func:`merge_model_card`; a card
            written elsewhere keeps the sections of the checkpoint's own README.md (a pipeline's verdict, user notes).
        config (`BT2Config`, *optional*): the config to render from; defaults to the checkpoint's ``config.json``.
        render_kwargs: passed to :func:`render_model_card` (``repo_id``, ``metrics``, ``method``, ``dataset`` …).

    Returns:
        `pathlib.Path`: the card's path.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if config is None:
        from ..configuration_bt2 import BT2Config

        if not (checkpoint_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{checkpoint_dir} has no config.json: pass a directory written by BT2Model.save_pretrained."
            )
        config = BT2Config.from_pretrained(checkpoint_dir)
    generated = render_model_card(config, **render_kwargs)
    own_card = checkpoint_dir / README_NAME
    output = Path(output) if output is not None else own_card
    if output.is_file():
        existing = output.read_text(encoding="utf-8")
        if own_card.is_file() and output.resolve() != own_card.resolve():
            # a card written elsewhere still carries what the pipeline wrote on the checkpoint's own card
            existing = carry_pipeline_sections(own_card.read_text(encoding="utf-8"), existing)
        card = merge_model_card(existing, generated)
        logger.info("Refreshed the generated sections of %s (user sections kept).", output)
    elif own_card.is_file():
        # a new card elsewhere starts from the checkpoint's own: its pipeline and user sections are kept
        card = merge_model_card(own_card.read_text(encoding="utf-8"), generated)
    else:
        card = generated
    atomic_write_text(output, str(card))
    return output
