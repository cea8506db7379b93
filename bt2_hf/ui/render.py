"""HTML fragments of the upgrade page (plain strings, every value escaped): verdicts, progress and result lists.

Kept apart from the Gradio layout so that they are built and checked without a web framework. Each result row
carries its item's id, label and score as ``data-`` attributes, which is what a browser test reads.
"""

from __future__ import annotations

from html import escape

from .view import ColumnResult, ModelVerdict

CSS = """
.bt2-list table { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.bt2-list th, .bt2-list td { padding: 2px 6px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
.bt2-list td.bt2-score { font-family: ui-monospace, monospace; text-align: right; }
.bt2-list img { width: 48px; height: 48px; image-rendering: pixelated; }
.bt2-list .bt2-message { color: #8a4b00; white-space: pre-wrap; }
.bt2-new { color: #0a6e31; font-weight: 600; }
.bt2-new-score { color: #0a6e31; font-size: 0.8em; }
.bt2-verdicts { display: flex; gap: 1em; flex-wrap: wrap; }
.bt2-verdict { flex: 1 1 20em; border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 0.8em; }
.bt2-verdict.bt2-pass { border-color: #0a6e31; }
.bt2-verdict.bt2-fail { border-color: #b00020; }
.bt2-verdict table { border-collapse: collapse; font-size: 0.9em; }
.bt2-verdict td, .bt2-verdict th { padding: 1px 8px 1px 0; }
.bt2-verdict .bt2-why { font-size: 0.85em; color: #444; overflow-wrap: anywhere; }
"""

_CARD_WORDS = {"compatible": "compatible", "failed": "NOT compatible (measured, failed)",
               "not measured": "declared, not measured"}  # fmt: skip


def _points(value: float) -> str:
    return f"{value:+.2f}"


def render_verdicts(verdicts: list[ModelVerdict]) -> str:
    """One box per model: the gallery's admission, the card's measured entry with each metric's margin, the gate."""
    boxes = []
    for verdict in verdicts:
        state = "bt2-pass" if verdict.admitted else "bt2-fail"
        lines = [f"<b>{escape(verdict.role)} model</b>: <code>{escape(verdict.name)}</code> "
                 f"({escape(verdict.modality)}, {verdict.embedding_dim}-d, fingerprint "
                 f"<code>{escape(verdict.fingerprint.removeprefix('sha256:')[:12])}</code>)"]  # fmt: skip
        heading = "searches the old gallery" if verdict.admitted else "REFUSED by the old gallery"
        lines.append(f"<div data-admitted='{str(verdict.admitted).lower()}'><b>{heading}</b></div>")
        if verdict.card is not None:
            card = _CARD_WORDS.get(verdict.card, verdict.card)
            where = f" on {escape(verdict.measured_on)}" if verdict.measured_on else ""
            lines.append(f"<div data-card='{escape(verdict.card)}'>card: <b>{escape(card)}</b>{where}</div>")
        if verdict.metrics:
            rows = "".join(
                f"<tr data-metric='{escape(row['metric'])}' data-margin='{row['margin']}'><td>{escape(row['metric'])}"
                f"</td><td>{row['new_old']:.2f}</td><td>{row['old_old']:.2f}</td><td>{_points(row['margin'])}</td></tr>"
                for row in verdict.metrics
            )
            lines.append("<table><tr><th>metric</th><th>new→old</th><th>old→old</th><th>margin</th></tr>"
                         f"{rows}</table>")  # fmt: skip
        if verdict.gate is not None:
            margins = ", ".join(f"{escape(name)} {_points(value)}" for name, value in verdict.gate["margin"].items())
            outcome = "passed" if verdict.gate["passed"] else "failed"
            lines.append(f"<div>gallery's own probe measurement ({verdict.gate['size']} items): <b>{outcome}</b>"
                         f"{' (' + margins + ')' if margins else ''}</div>")  # fmt: skip
        lines.append(f"<div class='bt2-why'>{escape(verdict.admission)}</div>")
        boxes.append(f"<div class='bt2-verdict {state}' data-role='{escape(verdict.role)}'>{''.join(lines)}</div>")
    return f"<div class='bt2-verdicts'>{''.join(boxes)}</div>"


def render_progress(progress: dict | None) -> str:
    """The backfilled copy's progress bar and counts."""
    if progress is None:
        return "<div class='bt2-progress' data-fraction=''>No backfilled gallery.</div>"
    percent = 100.0 * progress["fraction"]
    model = f" with <code>{escape(str(progress['model']))}</code>" if progress.get("model") else ""
    return (f"<div class='bt2-progress' data-done='{progress['done']}' data-count='{progress['count']}' "
            f"data-fraction='{progress['fraction']:.6f}'>Backfill: <b>{progress['done']} / {progress['count']}</b> "
            f"items re-embedded ({percent:.1f} %){model} "
            f"<progress max='{progress['count']}' value='{progress['done']}'></progress></div>")  # fmt: skip


def render_column(column: ColumnResult | None, title: str) -> str:
    """One result list: rank, the item (thumbnail or text), its label, id and score; or why there is none."""
    head = f"<h3>{escape(title)}</h3>"
    if column is None:
        return f"<div class='bt2-list' data-state='empty'>{head}<p>Type a caption or drop an image, then search.</p></div>"
    if column.message and not column.hits:
        return (f"<div class='bt2-list' data-key='{escape(column.key)}' data-state='message'>{head}"
                f"<p class='bt2-message'>{escape(column.message)}</p></div>")  # fmt: skip
    rows = []
    labelled = any(hit.get("label") is not None for hit in column.hits)  # a text gallery often has no labels
    for rank, hit in enumerate(column.hits, start=1):
        label = "" if hit.get("label") is None else str(hit["label"])
        if hit.get("image"):
            item = f"<img src='{escape(hit['image'])}' alt='{escape(label)}'>"
        else:
            item = escape(hit.get("text", ""))
        new = " <span class='bt2-new' title='re-embedded by the new model'>new</span>" if hit["backfilled"] else ""
        new_score = ""
        if hit.get("new_score") is not None:
            new_score = f"<br><span class='bt2-new-score' title='new/new cosine'>new/new {hit['new_score']:.4f}</span>"
        label_cell = f"<td>{escape(label)}{new}</td>" if labelled else ""
        id_cell = f"<td>{escape(str(hit['id']))}{'' if labelled else new}</td>"
        rows.append(
            f"<tr class='bt2-hit' data-id='{escape(str(hit['id']))}' data-label='{escape(label)}' "
            f"data-score='{hit['score']:.6f}' data-backfilled='{str(hit['backfilled']).lower()}'><td>{rank}</td>"
            f"<td>{item}</td>{label_cell}{id_cell}<td class='bt2-score'>{hit['score']:.4f}{new_score}</td></tr>"
        )
    prefix = f"<p>query prefix: {column.prefix_dim} dims</p>" if column.prefix_dim else ""
    return (f"<div class='bt2-list' data-key='{escape(column.key)}' data-state='hits'>{head}{prefix}<table>"
            f"<tr><th>#</th><th>item</th>{'<th>label</th>' if labelled else ''}<th>id</th><th>score</th></tr>"
            f"{''.join(rows)}</table></div>")  # fmt: skip
