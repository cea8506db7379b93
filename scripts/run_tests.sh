#!/usr/bin/env bash
# Fresh-machine test command: set up the environment, then run the whole test suite (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
set +e
python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when no test was collected: that is a failure for us, never a silent success.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
