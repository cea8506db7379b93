"""``bt2 embed``: embed a dataset with a model into resumable shards with ids and a manifest.

Examples::

    bt2 embed --model old_model/ --data /usr/share/datasets/fashion-mnist --split all --output gallery_embeddings/
    accelerate launch --num_processes 2 -m bt2_hf.cli.embed --model old_model/ --data images/ --output emb/

Rerunning the same command after an interruption keeps the finished shards and embeds the rest.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

EXAMPLES = """\
bt2 embed --model bt2_demo_output/models/old --data /usr/share/datasets/fashion-mnist --split test --output emb_old
bt2 embed --model runs/old --data my_photos/ --output emb_photos               # an imagefolder
bt2 embed --model runs/old --data my_photos/ --streaming --output emb_photos    # without listing it first
bt2 embed --model runs/text --data captions.jsonl --output emb_text             # .txt or .jsonl lines
bt2 embed --model runs/old --data saved_dataset/ --split test --column image --id_column id --output emb
accelerate launch -m bt2_hf.cli.embed --model runs/old --data my_photos/ --output emb   # several processes
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (or Hub id) of the encoder")
    parser.add_argument(
        "--data", required=True, help="IDX directory, save_to_disk directory, imagefolder, .txt/.jsonl"
    )
    parser.add_argument("--output", required=True, help="the embedding directory (an unfinished one is resumed)")
    parser.add_argument("--split", help="IDX: train, test or all; datasets: the split name")
    parser.add_argument("--column", help="image or text column of a datasets dataset")
    parser.add_argument("--id-column", help="id column of a datasets dataset (default: 'id' if present, else rows)")
    parser.add_argument("--streaming", action="store_true", help="stream an imagefolder instead of indexing it")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", help="cpu, cuda, … (default: the process's accelerate device)")
    parser.add_argument("--no-progress", action="store_true")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf import BT2Model
    from bt2_hf.compatibility import IncompatibleModelsError
    from bt2_hf.galleries import EmbeddingDirectoryError, GallerySourceError, embed_dataset

    try:
        model = BT2Model.from_pretrained(args.model)
        result = embed_dataset(
            model, args.data, args.output, split=args.split, column=args.column, id_column=args.id_column,
            streaming=args.streaming, dtype=args.dtype, shard_size=args.shard_size, batch_size=args.batch_size,
            device=args.device, show_progress=not args.no_progress,
        )  # fmt: skip
    except (
        EmbeddingDirectoryError,
        GallerySourceError,
        IncompatibleModelsError,
        ValueError,
        FileNotFoundError,
    ) as error:
        print(f"bt2 embed: {error}", file=sys.stderr)
        return 2
    manifest = result.manifest
    rate = manifest.get("items_per_second")
    print(json.dumps({"output": args.output, "count": manifest["count"], "dimension": manifest["dimension"],
                      "dtype": manifest["dtype"], "items_per_second": round(rate, 1) if rate else None}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
