#!/usr/bin/env bash
# Set up, then run the example pipeline on the embedded model (first run converts it, ~30 s).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
decodekit run examples/pipelines/chat.yaml --prompt "${1:-Give me three tips for writing clear Python code.}"
