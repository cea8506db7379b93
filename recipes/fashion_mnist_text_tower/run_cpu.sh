#!/usr/bin/env bash
# BT² text tower (MiniLM) against an old small-CNN image gallery on Fashion-MNIST, on CPU. Run from the repository root.
set -euo pipefail
OUT=${1:-runs/fashion_mnist_text_tower}
bt2 text-tower --output_dir "$OUT"
# The same numbers from the saved checkpoints, with the stand-alone evaluator:
python -m bt2_hf.cli.eval_text --text_models "$OUT/text_bt2" "$OUT/text_independent" \
    --gallery_models "$OUT/old_image" --output "$OUT/eval_old_gallery.json"
python -m bt2_hf.cli.eval_text --text_models "$OUT/text_bt2" "$OUT/text_independent" --output_kind features \
    --gallery_models "$OUT/new_image" --output "$OUT/eval_new_gallery_features.json"
