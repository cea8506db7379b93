"""Every ``bt2`` command spells its flags in snake_case and keeps the kebab-case spelling as an alias."""

from __future__ import annotations

import argparse
import importlib

import pytest

from bt2_hf.cli.main import COMMANDS

ARGPARSE_COMMANDS = sorted({module for name, (module, *_) in COMMANDS.items() if name != "train"})


def _long_options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_parser in action.choices.values():
                yield from _long_options(sub_parser)
        else:
            yield parser, action, [o for o in action.option_strings if o.startswith("--")]


@pytest.mark.parametrize("module_name", ARGPARSE_COMMANDS)
def test_every_flag_has_both_spellings(module_name):
    parser = importlib.import_module(module_name).build_parser()
    for owner, action, options in _long_options(parser):
        for option in options:
            if "-" in option[2:] or "_" in option[2:]:
                snake, kebab = "--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")
                assert owner._option_string_actions.get(snake) is action, f"{module_name}: {option} lacks {snake}"
                assert owner._option_string_actions.get(kebab) is action, f"{module_name}: {option} lacks {kebab}"
        if any("_" in o for o in options):  # the snake_case spelling is the one --help shows first
            assert "_" in options[0] or "-" not in options[0][2:], f"{module_name}: {options}"


def test_both_spellings_parse_to_the_same_value():
    parser = importlib.import_module("bt2_hf.cli.embed").build_parser()
    base = ["--model", "m", "--data", "d", "--output", "o"]
    snake = parser.parse_args([*base, "--batch_size", "7", "--shard_size", "9"])
    kebab = parser.parse_args([*base, "--batch-size", "7", "--shard-size", "9"])
    assert (snake.batch_size, snake.shard_size) == (kebab.batch_size, kebab.shard_size) == (7, 9)


def test_index_subcommands_take_snake_case_flags_with_kebab_aliases(tmp_path):
    from bt2_hf.cli.index import build_parser

    parser = build_parser()
    for spelling in ("--embedding_dir", "--embedding-dir", "--shards"):
        args = parser.parse_args(["build", spelling, str(tmp_path), "--output", str(tmp_path / "g")])
        assert (args.command, args.embedding_dir) == ("build", str(tmp_path))


def test_run_directories_are_output_dir_everywhere():
    # bt2 demo, image-text, series and text-tower all write a run directory: one spelling for it (older ones kept)
    demo = importlib.import_module("bt2_hf.cli.demo").build_parser()
    for spelling in ("--output_dir", "--output-dir", "--output"):
        assert demo.parse_args([spelling, "runs/x"]).output == "runs/x"
    for module_name in (
        "bt2_hf.cli.image_text",
        "bt2_hf.cli.series",
        "bt2_hf.cli.text_tower",
        "bt2_hf.cli.text_upgrade",
    ):
        parser = importlib.import_module(module_name).build_parser()
        assert "--output_dir" in parser._option_string_actions, module_name
