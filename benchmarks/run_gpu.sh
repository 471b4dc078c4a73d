#!/usr/bin/env bash
# The checks that need a GPU: the CUDA exactness tests, then the benchmarks whose figures differ
# most between a CPU and a GPU (host overhead, speculative decoding, guidance), each on CUDA.
# Results go to docs/results/<name>_cuda.md (or to the folder given as the first argument);
# `python benchmarks/collect.py` puts them next to the CPU figures in docs/benchmarks.md.
#
#   bash benchmarks/run_gpu.sh [results-folder]
#
# float32 for the speculative and guidance runs, so that their "same tokens" columns test exactness
# (in bf16 a pass over several draft tokens may round differently from a one-token pass); the
# overhead run uses bf16, the default dtype on a GPU, and checks it against HF in the same dtype.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export DECODEKIT_RESULTS_DIR=${1:-docs/results}
mkdir -p "$DECODEKIT_RESULTS_DIR"
status=0
"$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider || status=1
"$PY" benchmarks/overhead.py --device cuda --dtype bfloat16 || status=1
"$PY" benchmarks/speculative.py --device cuda --dtype float32 --rounds 2 --truncated-draft 10 || status=1
"$PY" benchmarks/guidance.py --device cuda --dtype float32 || status=1
exit $status
