#!/usr/bin/env bash
# Run every benchmark in turn and assemble docs/benchmarks.md. Each script compares its methods
# side by side in one process; run this on an otherwise idle machine.
#   bash benchmarks/run_all.sh            (about 60 minutes on 2 CPU cores; bash benchmarks/run_gpu.sh on a CUDA machine)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
python benchmarks/overhead.py --rounds 3 --new-tokens 64
python benchmarks/reductions.py
python benchmarks/attention.py
python benchmarks/speculative.py --new-tokens 96 --truncated-draft 10
python benchmarks/guidance.py --rounds 2 --new-tokens 32
python benchmarks/momentum.py --prompts 4 --max-new-tokens 128
python benchmarks/diverse_beam.py --new-tokens 16
python benchmarks/alignment.py
python benchmarks/grammar.py
python benchmarks/span.py
python benchmarks/superposed.py
python benchmarks/composition.py --rounds 3 --max-new-tokens 64
python benchmarks/collect.py
