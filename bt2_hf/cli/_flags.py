"""One spelling rule for every ``bt2`` flag: snake_case, with the kebab-case spelling kept as an alias.

``bt2 train`` gets both from :class:`transformers.HfArgumentParser`; the argparse commands call
:func:`snake_case_flags` on their parser, so ``--batch_size`` and ``--batch-size`` are the same option everywhere.
"""

from __future__ import annotations

import argparse


def snake_case_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every long option of ``parser`` (and of its sub-commands) both spellings: snake_case and kebab-case.

    The snake_case spelling is listed first in ``--help``; the kebab-case one keeps working as an alias. Options that
    already have both spellings are left alone.

    Args:
        parser (`argparse.ArgumentParser`): the parser, modified in place.

    Returns:
        `argparse.ArgumentParser`: the same parser.

    Example:

    ```python
    >>> parser = snake_case_flags(_demo_parser())
    >>> parser.parse_args(["--batch_size", "8"]).batch_size, parser.parse_args(["--batch-size", "8"]).batch_size
    (8, 8)
    ```
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_parser in action.choices.values():
                snake_case_flags(sub_parser)
            continue
        snake_aliases, kebab_aliases = [], []
        for option in [o for o in action.option_strings if o.startswith("--")]:
            for alias, added in (("--" + option[2:].replace("-", "_"), snake_aliases),
                                 ("--" + option[2:].replace("_", "-"), kebab_aliases)):  # fmt: skip
                if alias not in parser._option_string_actions:
                    parser._option_string_actions[alias] = action
                    added.append(alias)
        action.option_strings[:0] = snake_aliases
        action.option_strings.extend(kebab_aliases)
    return parser


def _demo_parser() -> argparse.ArgumentParser:  # for the docstring example
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int)
    return parser


class ExamplesHelpFormatter(argparse.HelpFormatter):
    """Wraps the description's prose as argparse does, but prints indented lines (examples, commands) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith("  ") for line in lines) or lines[0].rstrip().endswith(":"):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


def with_examples(parser: argparse.ArgumentParser, examples: str) -> argparse.ArgumentParser:
    """Show ``examples`` (one command a line, each with its comment) at the end of ``parser``'s ``--help``.

    Args:
        parser (`argparse.ArgumentParser`): the command's parser, modified in place.
        examples (`str`): the lines to show under "Examples:", as they should be typed.

    Returns:
        `argparse.ArgumentParser`: the same parser.
    """
    body = "\n".join("  " + line if line else "" for line in examples.strip("\n").splitlines())
    parser.epilog = f"Examples:\n{body}"
    parser.formatter_class = ExamplesHelpFormatter
    return parser


def hub_namespace(value: str) -> str:
    """An argparse ``type`` for ``--hub_namespace``: a Hub user or organisation name, else a usage error naming it."""
    from bt2_hf.utils.repo_id import validate_hub_namespace

    try:
        return validate_hub_namespace(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
