#!/usr/bin/env bash
# Runs every line of runs.txt (name, then harness flags), two at a time, logs under logs/.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p logs
root=$(git rev-parse --show-toplevel)
py=${PYTHON:-$root/.venv/bin/python}
while read -r name flags; do
  echo "cd $root && $py docs/results/intervention-ceiling/harness.py $flags > docs/results/intervention-ceiling/logs/$name.log 2>&1"
done < runs.txt | xargs -P "${JOBS:-2}" -I{} bash -c "{}"
