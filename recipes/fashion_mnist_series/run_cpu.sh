#!/usr/bin/env bash
# Series v1 (small CNN) → v2 (ResNet) → v3 (wider ResNet) on Fashion-MNIST, on CPU. Run from the repository root.
set -euo pipefail
OUT=${1:-runs/fashion_mnist_series}
python -m bt2_hf.cli.series recipes/fashion_mnist_series/series_cpu.yaml --output_dir "$OUT"
