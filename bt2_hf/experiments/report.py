"""Tables and summaries of the experiments' results, built once here and printed by ``cli/``.

Each function reads a ``results.json``-shaped dict (what the runner wrote) and returns a ``rich`` table or plain lines:
the demo's per-run and over-seeds tables and its update-gain and verdict lines, and the image–text runner's test
table. Nothing here trains or measures.
"""

from __future__ import annotations

import math
from typing import Any

from .demo import ADAPTER_ROWS, JUDGED_METRICS, PAIRS, _method


def _in_stage_order(names) -> list[str]:
    """Methods in the order they are trained (results.json sorts its keys)."""
    order = ["independent", "independent_continued", "bct", "bt2", *ADAPTER_ROWS]
    return sorted(names, key=lambda name: order.index(name) if name in order else len(order))


def _format_gain(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.1f}%"


def results_table(results: dict[str, Any]):
    """A rich table of one run's numbers (query/gallery rows per method, criterion, tax, verdict)."""
    from rich.table import Table

    table = Table(
        title=f"{results['dataset']} retrieval, {results['num_queries']} queries, leave-one-out (%), seed "
        f"{results['seed']}"
    )
    for column in ("method", "steps", "query/gallery", "top-1", "top-5", "mAP", "new/old > old/old", "tax (top-1)"):
        left = column in ("method", "query/gallery")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for method in _in_stage_order(results["methods"]):
        pairs = results["methods"][method]
        for pair in PAIRS:
            values = pairs[pair]
            criterion = tax = ""
            if pair == "new/old":
                outcome = results["criterion"][method]
                criterion = " ".join(f"{k}:{'✓' if outcome[k] else '✗'}" for k in JUDGED_METRICS)
            if pair == "new/new":
                tax = f"{results['compatibility_tax'][method]['top1']:+.2f}"
            # the pair, not the model names: the method column names the model (an adapter's new/new is its
            # independent model re-embedding the gallery: no map is applied)
            table.add_row(
                method if pair == "old/old" else "",
                str(results["total_steps"][method]) if pair == "old/old" else "",
                pair,
                f"{values['top1']:.2f}",
                f"{values['top5']:.2f}",
                f"{values['mAP']:.2f}",
                criterion,
                tax,
            )
        table.add_section()
    return table


def seeds_table(results: dict[str, Any]):
    """A rich table of mean ± sd over seeds (only when more than one seed ran)."""
    from rich.table import Table

    summary = results["seeds"]
    table = Table(title=f"{results['dataset']}: mean ± sd over seeds {summary['seeds']} (%)")
    for column in ("method", "query/gallery", "top-1", "mAP", "criterion holds (top-1, mAP)", "tax (top-1)"):
        table.add_column(column, justify="left" if column in ("method", "query/gallery") else "right")
    for method in _in_stage_order(summary["methods"]):
        pairs = summary["methods"][method]
        for pair in PAIRS:
            values = pairs[pair]
            holds = summary["criterion_holds"][method]
            tax = summary["compatibility_tax"][method]["top1"]
            table.add_row(
                method if pair == "old/old" else "",
                pair,
                f"{values['top1']['mean']:.2f} ± {values['top1']['sd']:.2f}",
                f"{values['mAP']['mean']:.2f} ± {values['mAP']['sd']:.2f}",
                f"{holds['top1']}/{len(summary['seeds'])}, {holds['mAP']}/{len(summary['seeds'])}"
                if pair == "new/old"
                else "",
                f"{tax['mean']:+.2f} ± {tax['sd']:.2f}" if pair == "new/new" else "",
            )
        table.add_section()
    return table


def _gain_points(results: dict[str, Any], method: str, metric: str) -> str:
    """The points behind a defined update gain: a ratio over a small possible gain (a new model barely better than
    the old one) is large whatever its sign, so the line says what it divides."""
    if results["update_gain"][method][metric] is None:
        return ""
    pairs = results["methods"][method]
    old_old = pairs["old/old"][metric]
    # the independent model the gain divides by: the method's reference stage, whose new/new is its indep/indep
    independent = results["methods"][results["references"][method]]["new/new"][metric]
    return (f" (new → old {pairs['new/old'][metric] - old_old:+.2f} points of the {independent - old_old:+.2f} the "
            "independent model gains)")  # fmt: skip


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The update gains (or why they are n/a) and the verdicts, one line each; the last line is the final verdict."""
    lines = []
    # An independent model's "update gain" is its own cross-model score against itself: not a figure to act on.
    methods = [m for m in _in_stage_order(results["update_gain"]) if _method(m) != "independent"]
    for method in methods:
        gains, notes = results["update_gain"][method], results["update_gain_note"].get(method, {})
        parts = [f"{metric} {_format_gain(gains[metric])}{_gain_points(results, method, metric)}"
                 for metric in JUDGED_METRICS]  # fmt: skip
        reason = f" ({notes['top1']})" if "top1" in notes else ""
        lines.append(f"Update gain of {method}: {', '.join(parts)}{reason}")
    for method in methods:
        lines.append(f"Verdict for {method}: {results['verdict'][method]['message']}")
    lines.append(f"Verdict (BT², {results['dataset']}): {results['final_verdict']['message']}.")
    return lines


def image_text_table(results: dict[str, Any]):
    """The image–text runner's test table (rich): one row per method and search, mean ± sd over seeds."""
    from rich.table import Table

    from .image_text import TABLE_HEADER, table_rows

    table = Table(title=f"Image–text compatibility on the scenes test split ({len(results['per_seed'])} seed(s), %)")
    for column in TABLE_HEADER:
        table.add_column(column)
    for row in table_rows(results):
        table.add_row(*row)
    return table


def image_text_goal_lines(results: dict[str, Any]) -> list[str]:
    """One line per goal of the image–text runner: met or not."""
    from .image_text import goal_verdict

    return [f"{goal}: {goal_verdict(outcome['met'])}" for goal, outcome in results["goals"].items()]
