#!/usr/bin/env bash
# One command on a CUDA machine: CUDA-marked tests, paper Table 4 on this card, the JPEG vs packed input
# pipeline with on-device augmentation, and a one-trial ViT-S sweep on a packed synthetic set (use_gpu, bf16).
# Writes one JSON file (bench/results/gpu_check-<host>-<time>.json, or --out FILE) and exits non-zero on
# any failure. `--cpu`: the same steps with the micro model on the CPU. Steps: bench/gpu_check.py.
#   bash bench/gpu_check.sh [--cpu] [--out FILE] [--address RAY_ADDRESS] [--steps tests,speedup,data,sweep]
# Python: $OBJMAE_PYTHON, else ./.venv/bin/python, else python3 (no network needed; nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${OBJMAE_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
