"""``bt2 text-tower``: the Fashion-MNIST class-level text-tower experiment (a BT² text tower searching an old image
gallery; see :mod:`bt2_hf.experiments.text_tower`)."""

from __future__ import annotations

import argparse
import json
import sys

from ._output import configure_logging

EXAMPLES = """\
bt2 text-tower --output_dir runs/text_tower
bt2 text-tower --output_dir runs/text_tower --old_model runs/old --new_image_model runs/new
"""


def build_parser(prog: str = "bt2 text-tower") -> argparse.ArgumentParser:
    from ._flags import snake_case_flags, with_examples

    defaults = _defaults()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train and evaluate a BT² text tower that searches an old image gallery (Fashion-MNIST).",
    )
    add = parser.add_argument
    add("--output_dir", required=True)
    add("--data_dir", default=None, help="Fashion-MNIST IDX directory (default: Debian's).")
    add("--text_model", default=None, help="Local text checkpoint (default: packaged MiniLM).")
    add("--old_model", default=None, help="An existing old image model (else one is trained).")
    add("--new_image_model", default=None, help="An existing new image model (else trained).")
    add("--old_dim", type=int, default=defaults.old_dim, help="Width of the old image model (d_old).")
    add("--new_dim", type=int, default=defaults.new_dim, help="Width of the new image model and φ'_text (D).")
    add("--extra_dim", type=int, default=defaults.extra_dim, help="k of the BT² text tower.")
    add("--image_steps", type=int, default=defaults.image_steps, help="Optimizer steps of each image model.")
    add("--image_train_samples", type=int, default=defaults.image_train_samples,
        help="Training images (class-balanced).")  # fmt: skip
    add("--image_batch_size", type=int, default=defaults.image_batch_size)
    add("--text_steps", type=int, default=defaults.text_steps, help="Optimizer steps of each text tower.")
    add("--text_batch_size", type=int, default=defaults.text_batch_size)
    add("--text_finetune_backbone", action="store_true",
        help="Fine-tune the text encoder too (GPU); by default only the heads train on its frozen features (CPU).")  # fmt: skip
    add("--text_head_learning_rate", type=float, default=defaults.text_head_learning_rate,
        help="Of the text towers' heads.")  # fmt: skip
    add("--text_learning_rate", type=float, default=defaults.text_learning_rate,
        help="Of the text encoder, with --text_finetune_backbone.")  # fmt: skip
    add("--gallery_size", type=int, default=None, help="Test images in the gallery (default all).")
    add("--seed", type=int, default=defaults.seed)
    add("--disable_tqdm", action="store_true")
    add("--retrain_changed", action="store_true",
        help="Retrain a step whose saved model in OUTPUT_DIR was trained with other settings (default: refuse it, "
        "naming the settings); a step with the same settings is always reused.")  # fmt: skip
    return with_examples(snake_case_flags(parser), EXAMPLES)


def _defaults():
    from ..experiments.text_tower_settings import TextTowerSettings

    return TextTowerSettings(output_dir="")


def main(argv: list[str] | None = None, prog: str = "bt2 text-tower") -> int:
    args = build_parser(prog).parse_args(argv)  # before the heavy imports: --help answers at once
    import torch

    from ..experiments.text_tower import TextTowerSettings, run_text_tower

    configure_logging(format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    results = run_text_tower(TextTowerSettings(**vars(args)))
    print(json.dumps({"text_to_image": results["text_to_image"], "criterion": results["criterion"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
