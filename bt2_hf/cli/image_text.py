"""``bt2 image-text``: the image–text experiment on the procedural scenes (old CNN gallery; new text + ViT pair; baselines)."""

from __future__ import annotations

import argparse
import json
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


EXAMPLES = """\
bt2 image-text --output_dir runs/image_text
bt2 image-text --output_dir /tmp/image_text_smoke --scenes_preset tiny --steps 20
"""


def build_parser() -> argparse.ArgumentParser:
    from ..experiments.image_text_settings import ImageTextSettings

    defaults = ImageTextSettings(output_dir="")
    parser = argparse.ArgumentParser(
        prog="bt2 image-text",
        description="Train an old CNN on the scenes, then (per seed, same step budget) the independent text + image "
        "pair, a BCT text tower and a BT² pair, fit post-hoc maps (least squares, Procrustes) from the independent "
        "pair into the old space, and measure text → old images, text → new images and new image → old images at "
        "instance level on validation and test. Writes results.json, results.md and image_text.png.",
    )
    add = parser.add_argument
    add("--output_dir", required=True, help="Where models, data and results go.")
    add("--data_dir", default=None, help="A saved scenes folder (default: generate into OUTPUT_DIR/data).")
    add("--scenes_preset", choices=("default", "tiny"), default=defaults.scenes_preset)
    for name in ("num_train", "num_validation", "num_test"):
        add(f"--{name}", type=int, default=None, help="Override the preset's split size.")
    add("--scenes_seed", type=int, default=defaults.scenes_seed)
    add("--old_widths", type=int, nargs="+", default=defaults.old_widths, help="The old CNN's channel widths.")
    add("--old_dim", type=int, default=defaults.old_dim, help="The old embedding width d_old.")
    add("--old_steps", type=int, default=defaults.old_steps)
    add("--old_batch_size", type=int, default=defaults.old_batch_size)
    add("--new_dim", type=int, default=defaults.new_dim, help="The independent pair's embedding width.")
    add("--extra_dim", type=int, default=defaults.extra_dim, help="BT²'s extra dimensions k.")
    add("--steps", type=int, default=defaults.steps, help="Optimizer steps of every new model (the same budget).")
    add("--batch_size", type=int, default=defaults.batch_size)
    add("--learning_rate", type=float, default=defaults.learning_rate, help="Backbones' peak rate.")
    add("--head_learning_rate", type=float, default=defaults.head_learning_rate, help="Heads' peak rate.")
    add("--warmup_steps", type=int, default=defaults.warmup_steps)
    add("--augment_padding", type=int, default=defaults.augment_padding)
    add("--image_backbone_config", type=_json_object, default=defaults.image_backbone_config,
        help="The ViT image tower's config (JSON).")  # fmt: skip
    add("--text_backbone_type", default=defaults.text_backbone_type, help="hf_text or open_clip_text.")
    add("--text_backbone_config", type=_json_object, default=None,
        help="Build the text tower from this config instead of the packaged MiniLM (JSON).")  # fmt: skip
    add("--text_init_from", default=None, help="A local pretrained text checkpoint (default: the packaged MiniLM).")
    add("--tokenizer", default=None, help="Tokenizer folder of a text tower built from a config.")
    add("--max_text_length", type=int, default=defaults.max_text_length)
    add("--finetune_text_backbone", dest="freeze_text_backbone", action="store_false",
        help="Fine-tune the text encoder too (a GPU run); by default it stays frozen and its head trains (CPU).")  # fmt: skip
    add("--contrastive_temperature", type=float, default=defaults.contrastive_temperature)
    add("--method_config", type=_json_object, default={}, help="bt2_pair settings, e.g. '{\"old_match_weight\": 5}'.")
    add("--train_with_labels", action="store_true",
        help="Give the new models the old model's classes (main objects): influence through W_o, classifiers.")  # fmt: skip
    add("--ridge", type=float, default=defaults.ridge, help="Penalty of the least-squares map.")
    add("--seed", type=int, default=0, help="The first training seed.")
    add("--seeds", type=int, default=1, help="Run this many seeds (seed, seed+1, …) and report mean ± sd.")
    add("--show_progress", action="store_true", help="Progress bars while training.")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the heavy imports: --help answers at once
    from ..experiments.image_text import ImageTextSettings, run_image_text
    from ..experiments.report import image_text_goal_lines, image_text_table

    configure_logging(format="%(asctime)s %(name)s: %(message)s")
    values = vars(args)
    seed, seeds, show = values.pop("seed"), values.pop("seeds"), values.pop("show_progress")
    if seeds < 1:
        print("bt2 image-text: --seeds must be at least 1.", file=sys.stderr)
        return 2
    settings = ImageTextSettings(**values, seeds=list(range(seed, seed + seeds)), disable_tqdm=not show)
    results = run_image_text(settings)
    from rich.console import Console

    console = Console()
    console.print(image_text_table(results))
    for line in image_text_goal_lines(results):
        console.print(line)
    print(f"results: {settings.output_dir}/results.json, results.md, image_text.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
