#!/usr/bin/env bash
# Fresh-machine test command: set up the environment, then run the whole test suite (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
# One pytest-xdist worker per core, each test package on one worker (its fixtures are built once); pass -n 0 to run
# in this process only.
workers=(-n auto --dist loadgroup)
for arg in "$@"; do
  case "$arg" in -n|-n*|--numprocesses*|no:xdist) workers=() ;; esac
done
set +e
python -m pytest "${workers[@]}" "$@"
status=$?
set -e
# pytest exits 5 when no test was collected: that is a failure for us, never a silent success.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
