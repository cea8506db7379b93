#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv in .venv and install bt2_hf with everything the demo and tests need.
# Idempotent: a second run only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[dev]"
# System packages the tests and recipes read, from Debian (never a browser or data download of their own):
# chromium + chromium-driver for the web-page tests, wordnet-base for the text retrieval set.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=""
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v chromedriver >/dev/null || missing="$missing chromium-driver"
  [ -d /usr/share/wordnet ] || missing="$missing wordnet-base"
  if [ -n "$missing" ]; then
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
  fi
fi
