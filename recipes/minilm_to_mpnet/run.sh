#!/usr/bin/env bash
# MiniLM → MPNet on the WordNet reverse dictionary: old/old, re-embed, three adapters, BCT/BT² heads; one command.
# Run from the repository root. Usage: recipes/minilm_to_mpnet/run.sh [OUTPUT_DIR] [extra bt2 text-upgrade flags]
set -euo pipefail
OUT=${1:-runs/minilm_to_mpnet}
shift || true
MODEL_DIR=${BT2_HF_MPNET_DIR:-$HOME/.cache/bt2_hf/models/all-mpnet-base-v2}
recipes/minilm_to_mpnet/setup.sh "$MODEL_DIR"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -m bt2_hf.cli.main text-upgrade --new_model "$MODEL_DIR" --output_dir "$OUT" --overwrite "$@"
