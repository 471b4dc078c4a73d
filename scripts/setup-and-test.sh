#!/usr/bin/env bash
# Set up, then run every test: the host's, each plugin's and the example plugin's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
