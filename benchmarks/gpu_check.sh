#!/usr/bin/env bash
# One short GPU check for a session that is lent a device machine (about 10 minutes on one H100):
#   1. training throughput of bt2_hf's loop vs a plain fp32 loop, ResNet-50 on 32×32 (issue goal: >= 3x for BT²),
#      then the BT² stage with torch.compile and with batch 1024;
#   2. the GPU-sized series (recipes/fashion_mnist_series/series_gpu.yaml), its schedules scaled to fit
#      SERIES_BUDGET_S seconds: a probe run at 5% of the steps measures each run's images/s and the fixed costs,
#      and benchmarks/fit_series_scale.py picks the largest scale (<= 1) that fits;
#   3. the demo on CUDA at its CPU size, when time is left.
#
# Environment:
#   PYTHON          a Python with torch + transformers + accelerate (default: this checkout's .venv, set up if absent)
#   BT2_DATA_DIR    Fashion-MNIST IDX directory (default: bt2_hf's own lookup)
#   OUT             where results go (default: gpu_check_output/)
#   SERIES_BUDGET_S seconds for the series run (default 240)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_output}
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
  bash scripts/setup_env.sh
  PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data_args=()
[[ -n "${BT2_DATA_DIR:-}" ]] && data_args=(--data_dir "$BT2_DATA_DIR")
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== 1. training throughput (t=$(elapsed)s)"
timeout 240 "$PYTHON" benchmarks/train_throughput.py --backbone resnet50 --image-size 32 --batch-size 256 --steps 50 \
  2>&1 | grep -v Warning | tee "$OUT/train_throughput.txt"

# The H100 run of 2026-11-27 gave 1.01-1.23x at batch 256 (launch-bound, benchmarks/README.md): measure what should
# move it, on the BT² stage only.
echo "== 1b. BT² stage: torch.compile, and batch 1024 (t=$(elapsed)s)"
timeout 180 "$PYTHON" benchmarks/train_throughput.py --backbone resnet50 --image-size 32 --batch-size 256 --steps 50 \
  --stages bt2 --compile 2>&1 | grep -v "Warning\|Writing\|Loading" | tee "$OUT/train_throughput_compile.txt"
timeout 120 "$PYTHON" benchmarks/train_throughput.py --backbone resnet50 --image-size 32 --batch-size 1024 --steps 20 \
  --stages bt2 2>&1 | grep -v "Warning\|Writing\|Loading" | tee "$OUT/train_throughput_b1024.txt"

echo "== 2. series on the GPU (t=$(elapsed)s)"
probe_dir=$(mktemp -d)
probe_start=$(date +%s)
timeout 180 "$PYTHON" -m bt2_hf.cli.series recipes/fashion_mnist_series/series_gpu.yaml --output_dir "$probe_dir" \
  --max_steps_scale 0.05 --eval_samples 2000 --disable_tqdm "${data_args[@]}" > "$OUT/series_probe.txt" 2>&1
probe_seconds=$(( $(date +%s) - probe_start ))
fit=$("$PYTHON" benchmarks/fit_series_scale.py recipes/fashion_mnist_series/series_gpu.yaml "$probe_dir" \
  --probe-seconds "$probe_seconds" --probe-scale 0.05 --budget-seconds "${SERIES_BUDGET_S:-240}")
scale=$("$PYTHON" -c "import json, sys; print(json.loads(sys.argv[1])['scale'])" "$fit" 2>/dev/null || echo 0.2)
echo "probe: ${probe_seconds}s at scale 0.05, $fit -> series at --max_steps_scale $scale" | tee -a "$OUT/series_probe.txt"
tail -3 "$OUT/series_probe.txt"
series_start=$(date +%s)
timeout 420 "$PYTHON" -m bt2_hf.cli.series recipes/fashion_mnist_series/series_gpu.yaml \
  --output_dir runs/fashion_mnist_series_gpu --max_steps_scale "$scale" --disable_tqdm "${data_args[@]}" \
  2>&1 | grep -v Warning | tee "$OUT/series.txt" | grep -v "^20..-"
echo "series wall time: $(( $(date +%s) - series_start )) s at --max_steps_scale $scale" | tee -a "$OUT/series.txt"
cp runs/fashion_mnist_series_gpu/series_results.json "$OUT/" 2>/dev/null

left=$(( ${DEMO_DEADLINE_S:-480} - $(elapsed) ))
if (( left > 60 )); then
  echo "== 3. demo on CUDA (t=$(elapsed)s, ${left}s left)"
  demo_start=$(date +%s)
  timeout "$left" "$PYTHON" -m bt2_hf.cli.main demo --device cuda --output runs/demo_gpu \
    ${BT2_DATA_DIR:+--data-dir "$BT2_DATA_DIR"} 2>&1 | grep -v Warning | tail -40 > "$OUT/demo.txt"
  echo "demo wall time: $(( $(date +%s) - demo_start )) s" | tee -a "$OUT/demo.txt"
  cp runs/demo_gpu/results.json "$OUT/demo_results.json" 2>/dev/null
  cat "$OUT/demo.txt"
else
  echo "== 3. demo skipped (no time left)"
fi
echo "total: $(elapsed) s"
