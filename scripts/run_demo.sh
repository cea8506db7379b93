#!/usr/bin/env bash
# Fresh-machine demo command: set up the environment, fetch Fashion-MNIST from Debian if missing, run `bt2 demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${BT2_DATA_DIR:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set BT2_DATA_DIR to a directory" >&2
    echo "holding the four IDX files (train/t10k images/labels)." >&2
  fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
exec bt2 demo ${BT2_DATA_DIR:+--data-dir "$BT2_DATA_DIR"} "$@"
