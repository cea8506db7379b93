#!/usr/bin/env bash
# One short GPU check for a session that is lent a device machine (about 6 minutes on one H100):
#   1. training throughput of bt2_hf's loop vs a plain fp32 loop, ResNet-50 on 32×32 (issue goal: >= 3x for BT²);
#   2. the demo end to end on CUDA at its CPU size (numbers comparable with the README's CPU table).
# Results go to ${OUT:-gpu_check_output}/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_output}
mkdir -p "$OUT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python benchmarks/train_throughput.py --backbone resnet50 --image-size 32 --batch-size 256 --steps 50 \
  2>&1 | tee "$OUT/train_throughput.txt"
# The demo reads Fashion-MNIST from BT2_DATA_DIR (copy the four IDX files next to the checkout if the device has none).
start=$(date +%s)
bt2 demo --device cuda --output "$OUT/demo" ${BT2_DATA_DIR:+--data-dir "$BT2_DATA_DIR"} 2>&1 | tail -40 | tee "$OUT/demo.txt"
echo "demo wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/demo.txt"
