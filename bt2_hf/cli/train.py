"""``bt2 train --config recipe.yaml [--key value ...]``: train an image tower (old / independent / BCT / BT²) or a
text tower on image–text data (``--method independent_text | bct_text | bt2_text``) or an image–text pair
(``--method clip | bt2_pair``: two towers, saved as ``output_dir/image_tower`` and ``output_dir/text_tower``).

The recipe is a flat YAML file whose keys are the fields of :class:`~bt2_hf.training.ModelArguments`,
:class:`~bt2_hf.training.DataArguments`, :class:`~bt2_hf.training.BT2TrainingArguments` and the chosen method's
config dataclass; command-line flags override it (the TrlParser pattern). Run ``bt2 train --method bt2 --help`` for
every flag with its help. Works under ``accelerate launch -m bt2_hf.cli.train`` and ``torchrun -m bt2_hf.cli.train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ._output import configure_logging

logger = logging.getLogger(__name__)


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Recipe {path} not found.")
    with open(file, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must be a mapping of argument names to values.")
    return values


def build_parser(method_name: str):
    """An ``HfArgumentParser`` over the run arguments and the config dataclass of ``method_name``."""
    from transformers import HfArgumentParser

    from ..methods import get_method_class
    from ..training import BT2TrainingArguments, DataArguments, ModelArguments

    method_class = get_method_class(method_name)
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, BT2TrainingArguments, method_class.config_class),
        prog="bt2 train",
        description="Train a backward-compatible embedding model. Options may also come from --config recipe.yaml.",
    )
    parser.add_argument("--config", default=None, help="A recipe YAML whose keys are the options below.")
    return parser


# The methods `bt2 train --method` accepts (tests check this list against the registry in bt2_hf.methods).
METHOD_NAMES = ("independent", "bct", "bt2", "independent_text", "bct_text", "bt2_text", "clip", "bt2_pair")

OVERVIEW = f"""usage: bt2 train --config RECIPE.yaml [--option value ...]
       bt2 train --method METHOD --output_dir DIR [--option value ...]
       bt2 train --method METHOD --help

Train a backward-compatible embedding model. A recipe is a flat YAML file whose keys are the options of
`bt2 train --method METHOD --help`; options given on the command line override it.

METHOD (default: the recipe's `method`, else independent): {", ".join(METHOD_NAMES)}.

Examples:
  bt2 train --config recipes/fashion_mnist_cnn_to_vit/old.yaml
  bt2 train --config recipes/fashion_mnist_cnn_to_vit/bt2.yaml --max_steps 200 --output_dir runs/bt2
  accelerate launch -m bt2_hf.cli.train --config recipes/fashion_mnist_cnn_to_vit/bt2.yaml
  bt2 train --config recipes/fashion_mnist_cnn_to_vit/bt2.yaml --resume_from_checkpoint latest
  bt2 train --method bt2 --help          # every option of one method, with its help and default
"""


def parse_args(argv: list[str] | None = None):
    """Parse ``argv`` (YAML recipe + overrides) into ``(model_args, data_args, training_args, method_config)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(argv)
    values = _read_yaml(known.config) if known.config else {}
    method_name = known.method or values.get("method") or "independent"
    parser = build_parser(method_name)
    dests = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(dests))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} in {known.config}; see `bt2 train --method {method_name} --help`."
        )
    defaults = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)) and key == "backbone_config":
            value = json.dumps(value)  # the dataclass field takes JSON, as on the command line
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)  # e.g. class_subset: [0, 1, 2]
        defaults[key] = value
        dests[key].required = False
    parser.set_defaults(**defaults)
    model_args, data_args, training_args, method_config, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args, method_config


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bt2 train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv) and not any(a.split("=")[0] in {"--method", "--config"} for a in argv):
        print(OVERVIEW)  # the full option list needs transformers' TrainingArguments: `--method X --help` shows it
        return 0
    from ..training import train

    configure_logging(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_args, data_args, training_args, method_config = parse_args(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"bt2 train: {error}", file=sys.stderr)
        return 2
    logger.info("Method %s: %s", training_args.method, dataclasses.asdict(method_config))
    from ..errors import BT2InputError
    from ..fingerprint import FingerprintMismatchError

    try:
        path = train(model_args, data_args, training_args, method_config)
    except FloatingPointError as error:  # diverged: the step and the loss term, nothing non-finite saved
        print(f"bt2 train: {error}", file=sys.stderr)
        return 1
    except (BT2InputError, FingerprintMismatchError, FileExistsError) as error:  # a bad input file or directory
        print(f"bt2 train: {error}", file=sys.stderr)
        return 2
    _card_and_push(Path(path), training_args)
    logger.info("Done: %s", path)
    return 0


def _card_and_push(path: Path, training_args) -> None:
    """The model card next to the trained model, and the push when asked (main process only)."""
    from accelerate import PartialState

    from ..training.towers import TOWER_DIRS, is_pair_directory

    # a pair is two models, each with its card (and pushed as <repo>-image_tower, <repo>-text_tower)
    models = [path / folder for folder in TOWER_DIRS.values()] if is_pair_directory(path) else [path]
    if not PartialState().is_main_process or not all((model / "config.json").is_file() for model in models):
        return  # another process, or a run stopped early (its checkpoints are no models yet)
    from ..hub import create_or_update_model_card, push_to_hub
    from ..modeling_bt2 import BT2Model

    for model in models:
        create_or_update_model_card(model)
        logger.info("Wrote the model card %s", model / "README.md")
        if training_args.push_to_hub:
            repo_id = training_args.hub_model_id or path.name
            repo_id = repo_id if model == path else f"{repo_id}-{model.name}"
            info = push_to_hub(BT2Model.from_pretrained(model), repo_id)
            logger.info("Pushed %s to %s at commit %s", model, repo_id, info.oid)


if __name__ == "__main__":
    sys.exit(main())
