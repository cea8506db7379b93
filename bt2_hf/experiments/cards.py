"""The model cards a pipeline writes: the library's generated card, plus one section of the pipeline's own.

Every pipeline writes a card the same way (:func:`write_pipeline_card`): the card generated from the checkpoint's
``config.json`` (:func:`bt2_hf.hub.card.create_or_update_model_card`, which keeps what a user wrote), and a section
that says what the pipeline found (the demo's verdict, a version's place in a series), between markers of its own
(``<!-- bt2_<pipeline>:begin <name> -->`` … ``<!-- bt2_<pipeline>:end -->``) right after the card's summary, so a
re-run replaces it instead of adding another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text

# The generated section the pipeline's section goes before (right after the summary).
_ANCHOR = "<!-- bt2_hf:begin compatible-with -->"


@dataclass(frozen=True)
class CardSection:
    """A pipeline's own section of a model card.

    Args:
        pipeline (`str`): the pipeline's name in the markers (``"demo"``, ``"series"``).
        name (`str`): the section's name in the markers (``"verdict"``).
        heading (`str`): its Markdown heading (``"Demo verdict"``).
        text (`str`): its Markdown body.
    """

    pipeline: str
    name: str
    heading: str
    text: str

    def block(self) -> str:
        return (
            f"<!-- bt2_{self.pipeline}:begin {self.name} -->\n## {self.heading}\n\n{self.text}\n"
            f"<!-- bt2_{self.pipeline}:end -->\n"
        )

    def pattern(self) -> re.Pattern[str]:
        """The section as already written (to replace it)."""
        begin = re.escape(f"<!-- bt2_{self.pipeline}:begin {self.name} -->")
        end = re.escape(f"<!-- bt2_{self.pipeline}:end -->")
        return re.compile(f"{begin}.*?{end}\n?", re.DOTALL)


def add_card_section(card_path: str | Path, section: CardSection) -> Path:
    """Put ``section`` on the card at ``card_path`` (replacing an earlier one of the same name), after its summary."""
    card_path = Path(card_path)
    card = section.pattern().sub("", card_path.read_text(encoding="utf-8"))
    block = section.block()
    card = card.replace(_ANCHOR, block + "\n" + _ANCHOR, 1) if _ANCHOR in card else card.rstrip("\n") + "\n\n" + block
    atomic_write_text(card_path, card)
    return card_path


def write_pipeline_card(
    checkpoint_dir: str | Path,
    *,
    repo_id: str | None = None,
    metrics: Any = None,
    method: str | None = None,
    dataset: str | None = None,
    section: CardSection | None = None,
) -> Path:
    """Write (or refresh) a checkpoint's ``README.md`` card, with the pipeline's own section.

    Args:
        checkpoint_dir (`str` or `Path`): a directory written by ``BT2Model.save_pretrained``.
        repo_id (`str`, *optional*): the Hub id the card names (defaults to the config's ``name_or_path``).
        metrics (*optional*): measured old/old, new/old, new/new metrics for the card's results table.
        method (`str`, *optional*): the method those metrics were measured for.
        dataset (`str`, *optional*): the data set's name.
        section (:class:`CardSection`, *optional*): the pipeline's own section.

    Returns:
        `Path`: the card.
    """
    from ..hub.card import create_or_update_model_card

    card = create_or_update_model_card(checkpoint_dir, repo_id=repo_id, metrics=metrics, method=method,
                                       dataset=dataset)  # fmt: skip
    if section is not None:
        add_card_section(card, section)
    return card
