"""``bt2 embed`` throughput against the bare forward pass of the same model on the same batches.

    python benchmarks/embed_throughput.py                  # Fashion-MNIST train + test (70k), the demo's old CNN
    python benchmarks/embed_throughput.py --limit 20000    # fewer images

The model is the demo's old CNN architecture (``small_cnn`` widths 16/32/64, 64-d) with random weights: speed does
not depend on the weights. "Bare forward" is ``model(pixel_values=...)`` over batches already preprocessed in
memory; ``embed_dataset`` reads the IDX images, preprocesses, runs the model and writes fp16 shards with ids and a
manifest. The goal is a ratio of at least 0.8 (the input pipeline is never the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two measurements this many times")
    args = parser.parse_args()

    from bt2_hf import BT2Config, BT2Model
    from bt2_hf.galleries import TensorSource, embed_dataset, open_source

    torch.manual_seed(0)
    config = BT2Config(backbone_type="small_cnn", backbone_config={"num_channels": 1, "widths": [16, 32, 64],
                       "image_size": 28}, embedding_dim=64)  # fmt: skip
    model = BT2Model(config).eval()
    source = open_source(args.data, split="all")
    images = source.items(0, args.limit or len(source))
    data = TensorSource(images, source.ids(0, len(images)), fingerprint=source.fingerprint())
    batches = [model.processor(images[i : i + args.batch_size])["pixel_values"]
               for i in range(0, len(images), args.batch_size)]  # fmt: skip
    bare, embed = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        with torch.no_grad():
            for pixel_values in batches:
                model(pixel_values=pixel_values)
        bare.append(len(images) / (time.perf_counter() - started))
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            embed_dataset(model, data, Path(tmp) / "emb", batch_size=args.batch_size, show_progress=False)
            embed.append(len(images) / (time.perf_counter() - started))
    figures = {"images": len(images), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
               "bare_forward_images_per_s": round(max(bare)), "embed_images_per_s": round(max(embed)),
               "ratio": round(max(embed) / max(bare), 3)}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
