"""The empirical compatibility criterion and the one results schema it reads (field.md §4).

The criterion (Shen et al.): queries of the new model searched in the old gallery must beat the old model's own
queries, ``M(new/old) > M(old/old)``, strictly, for every judged metric (top-1 and mAP by default). Its margin is
``M(new/old) − M(old/old)`` in percentage points, per metric.

Results come in one schema everywhere: the ``to_dict()`` of :class:`bt2_hf.retrieval.compatibility.PairReport`
(``{"results": {"old/old": {...}, "new/old": {...}, "new/new": {...}}, ...}``, fractions as the evaluator returns
them), or the bare per-pair dict ``{"old/old": {...}, ...}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import CRITERION_RULE, PAIR_ORDER

DEFAULT_CRITERION_METRICS = ("top1", "mAP")
# Canonical spellings of metric names: the evaluator writes lower case ("map"), metadata and cards "mAP".
_METRIC_ALIASES = {"map": "mAP", "map@r": "mAP@R", "top-1": "top1", "top-5": "top5", "r@1": "recall@1"}


def canonical_metric(name: str) -> str:
    """``"map"`` → ``"mAP"``, ``"map@r"`` → ``"mAP@R"``, ``"top-1"`` → ``"top1"``; other names unchanged."""
    return _METRIC_ALIASES.get(name.lower(), name)


def ordered_pairs(metrics: Mapping[str, Any]) -> list[str]:
    """The ``query/gallery`` keys of ``metrics``: old/old, new/old, new/new, indep/indep first, then the rest."""
    return [p for p in PAIR_ORDER if p in metrics] + sorted(p for p in metrics if p not in PAIR_ORDER)


def load_evaluation_results(
    results: str | os.PathLike | Mapping[str, Any], unit: str = "auto"
) -> dict[str, dict[str, float]]:
    """Read evaluation results into ``{"<query>/<gallery>": {metric: percent}}`` with canonical metric names.

    Accepted: the ``to_dict()`` of :class:`~bt2_hf.retrieval.compatibility.PairReport` (its ``"results"``, the one
    results schema of bt2_hf, written by ``bt2 verify``, ``bt2 eval`` and the demo), or a bare per-pair dict
    ``{"old/old": {...}, "new/old": {...}, "new/new": {...}}``, as a dict or a JSON file.

    Args:
        results (`str`, `os.PathLike` or `dict`): a JSON file or its parsed content.
        unit (`str`, *optional*, defaults to `"auto"`): ``"percent"``, ``"fraction"`` (multiplied by 100) or
            ``"auto"`` (fraction when every value is within [0, 1], which is what the bt2_hf evaluator returns).

    Returns:
        `dict[str, dict[str, float]]`: metrics in percent, metric names ``top1``, ``top5``, ``mAP``, ``mAP@R`` ….
    """
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"No evaluation results at {path}; pass a PairReport JSON (bt2 verify).") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(results, Mapping):
        raise ValueError(f"Evaluation results must be a JSON object, got {type(results).__name__}.")
    pairs = results["results"] if isinstance(results.get("results"), Mapping) else results
    parsed: dict[str, dict[str, float]] = {}
    for pair, values in pairs.items():
        if not isinstance(pair, str) or pair.count("/") != 1 or not isinstance(values, Mapping):
            continue  # other keys of a report ("criterion", "flips", …) are not pair results
        numbers = {
            canonical_metric(k): float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            parsed[pair] = numbers
    if not parsed:
        raise ValueError(
            "No '<query>/<gallery>' results found; expected a PairReport.to_dict() "
            '({"results": {"old/old": {...}, "new/old": {...}, "new/new": {...}}}) or the per-pair dict itself.'
        )
    if unit not in ("auto", "percent", "fraction"):
        raise ValueError(f"unit must be 'auto', 'percent' or 'fraction', got {unit!r}.")
    values = [v for metrics in parsed.values() for v in metrics.values()]
    if unit == "fraction" or (unit == "auto" and all(0.0 <= v <= 1.0 for v in values)):
        parsed = {pair: {k: round(100.0 * v, 4) for k, v in m.items()} for pair, m in parsed.items()}
    return {pair: parsed[pair] for pair in ordered_pairs(parsed)}


def criterion_outcome(
    metrics: Mapping[str, Mapping[str, float]], judged: str | Sequence[str] = DEFAULT_CRITERION_METRICS
) -> dict[str, Any] | None:
    """The criterion ``M(new/old) > M(old/old)`` (strict, every judged metric) with its margins, or ``None``.

    Args:
        metrics (`dict`): ``{"<query>/<gallery>": {metric: value}}`` (percent).
        judged (`str` or `Sequence[str]`, *optional*, defaults to ``("top1", "mAP")``): the metrics judged; those
            missing from the results are skipped.

    Returns:
        `dict` or `None`: ``{"rule", "metric", "metrics", "passed", "margin"}`` (``metric``: the first judged one;
        ``margin``: new/old − old/old per metric, in points); ``None`` when no judged metric was measured.

    >>> criterion_outcome({"old/old": {"top1": 60.0, "mAP": 30.0}, "new/old": {"top1": 61.5, "mAP": 29.0}})
    {'rule': 'M(new/old) > M(old/old)', 'metric': 'top1', 'metrics': ['top1', 'mAP'], 'passed': False, 'margin': {'top1': 1.5, 'mAP': -1.0}}
    """
    judged = [judged] if isinstance(judged, str) else list(judged)
    holds, margin = [], {}
    for metric in map(canonical_metric, judged):
        try:
            new_old, old_old = float(metrics["new/old"][metric]), float(metrics["old/old"][metric])
        except KeyError:
            continue
        holds.append(new_old > old_old)  # judged on the raw values: a rounded margin of 0.0 may still pass
        margin[metric] = round(new_old - old_old, 4)
    if not margin:
        return None
    return {"rule": CRITERION_RULE, "metric": next(iter(margin)), "metrics": list(margin), "passed": all(holds),
            "margin": margin}  # fmt: skip
