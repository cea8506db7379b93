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
