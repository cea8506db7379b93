"""``bt2 series``: train and evaluate a series of BT² updates (v1 → v2 → v3) from a YAML or JSON file.

The file lists the versions (fields of :class:`bt2_hf.experiments.series.SeriesVersion`) and optional run settings::

    output_dir: runs/series
    eval_samples: 10000
    mixed_precision: bf16      # optional; for a GPU
    versions:
      - {name: v1, backbone_type: small_cnn, backbone_config: {widths: [16, 32, 64]}, feature_dim: 32, class_subset: "0-4"}
      - {name: v2, backbone_type: hf_vision, backbone_config: {model_type: resnet, ...}, feature_dim: 48, extra_dim: 16,
         init_from_independent: true, method_config: {old_match_weight: 5.0}}

Each version's BT² step also trains its prefixes for every older version (``match_ancestors``, on by default).
Command-line flags override the file's run settings. ``--max_steps_scale`` multiplies every version's steps (GPU
sizing: the same file, longer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

EXAMPLES = """\
bt2 series recipes/fashion_mnist_series/series_cpu.yaml --output_dir runs/series
bt2 series recipes/fashion_mnist_series/series_cpu.yaml --output_dir runs/series --max_steps_scale 0.1   # quick
bt2 series recipes/fashion_mnist_series/series_cpu.yaml --output_dir runs/series --retrain_changed
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 series", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML or JSON file with `versions:` (and optional run settings).")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--data_dir", default=None, help="Fashion-MNIST IDX directory.")
    parser.add_argument("--eval_samples", type=int, default=None, help="Class-balanced test images to evaluate on.")
    parser.add_argument("--max_steps_scale", type=float, default=1.0, help="Multiply every version's max_steps.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Override every version's sample count.")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no_reuse", action="store_true", help="Retrain versions whose output already exists.")
    parser.add_argument(
        "--retrain_changed", action="store_true",
        help="Retrain only the versions whose saved settings differ from the file (default: refuse them, naming the "
        "settings), and those trained against a retrained version.",
    )  # fmt: skip
    parser.add_argument("--disable_tqdm", action="store_true")
    parser.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
        help="Autocast for every training run (bf16 on a GPU); default: the file's mixed_precision, else accelerate's.",
    )  # fmt: skip
    return with_examples(snake_case_flags(parser), EXAMPLES)


def load_series_file(path: str | Path) -> dict:
    """Read the series file (YAML when PyYAML is installed, else JSON)."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the heavy imports: --help answers at once
    from bt2_hf.experiments.series import SeriesVersion, format_matrix, run_series

    configure_logging(format="%(asctime)s %(name)s: %(message)s")
    spec = load_series_file(args.config)
    versions = []
    for item in spec["versions"]:
        version = SeriesVersion.from_dict(item)
        version.max_steps = max(1, int(round(version.max_steps * args.max_steps_scale)))
        if args.max_train_samples is not None:
            version.max_train_samples = args.max_train_samples
        versions.append(version)
    output_dir = args.output_dir or spec.get("output_dir")
    if not output_dir:
        raise SystemExit("bt2 series: give --output_dir (or output_dir: in the file).")
    result = run_series(
        versions,
        output_dir,
        data_dir=args.data_dir or spec.get("data_dir"),
        eval_samples=args.eval_samples if args.eval_samples is not None else spec.get("eval_samples"),
        seed=args.seed if args.seed is not None else int(spec.get("seed", 0)),
        reuse=not args.no_reuse,
        retrain_changed=args.retrain_changed,
        disable_tqdm=args.disable_tqdm,
        mixed_precision=args.mixed_precision or spec.get("mixed_precision"),
    )
    for metric in result.matrix["matrix"]:
        print(format_matrix(result, metric))
    for name, entry in result.self_retrieval.items():
        if "independent" in entry:
            print(
                f"{name}: self top1 {100 * entry['model']['top1']:.1f} vs independent "
                f"{100 * entry['independent']['top1']:.1f} (tax {100 * entry['tax']['top1']:+.1f} points)"
            )
    print(f"results: {Path(output_dir) / 'series_results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
